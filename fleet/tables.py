"""Tables of the fleet pages (django-tables2). Cells read only the row and its joined
region and class, so a page of any length costs the same queries (tests/fleet/test_views.py)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from urllib.parse import urlencode

from django.contrib.humanize.templatetags.humanize import naturaltime
from django.db.models import F, QuerySet, TextChoices
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_tables2 import A, Column, Table, TemplateColumn

from fleet.choices import (
    DECISION_BADGE,
    DEPLOYMENT_BADGE,
    PRIVACY_BADGE,
    PRIVACY_HELP,
    STATUS_BADGE,
    VERSION_BADGE,
    DecisionAction,
    DeploymentState,
    Grade,
    NodeStatus,
    PolicyActorKind,
    VersionStatus,
)
from fleet.grading import format_bytes
from fleet.models import (
    DecisionLog,
    Deployment,
    DeploymentEvent,
    EnrollmentToken,
    FleetSettingChange,
    ModelVersion,
    Node,
    NodeStatusChange,
    PolicyBundleRecord,
    PolicyChange,
    TenantPolicy,
)
from fleet.models.policies import format_amount

TEMPLATE = "django_tables2/bootstrap5-responsive.html"

TOKEN_STATE_BADGE = {"usable": "success", "used": "secondary", "expired": "warning"}


def choice_badge(value: str, choices: type[TextChoices], colours: dict) -> SafeString:
    """A stored choice as a Bootstrap badge: its label, in its colour (grey for a value the
    choices do not know, shown as it is)."""
    return format_html(
        '<span class="badge text-bg-{}">{}</span>',
        colours.get(value, "secondary"),
        choices(value).label if value in choices.values else value,
    )


def status_badge(status: str) -> SafeString:
    """A node status as a Bootstrap badge, coloured by fleet.choices.STATUS_BADGE."""
    return choice_badge(status, NodeStatus, STATUS_BADGE)


def format_duration(seconds: float) -> str:
    """A duration the way people say it: "3 d 4 h", "5 h 12 min", "42 s"."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s"
    return f"{seconds} s"


def history_time(value) -> SafeString:
    """A history row's time: exact, with "3 minutes ago" on hover."""
    return format_html(
        '<span title="{}">{}</span>', naturaltime(value), value.strftime("%Y-%m-%d %H:%M:%S")
    )


def temperature(value: float, *, simulated: bool) -> SafeString:
    """A reported temperature, marked when it is an operator's simulation, not a sensor's."""
    if not simulated:
        return format_html("{} °C", f"{value:.0f}")
    return format_html(
        '{} °C <span class="badge text-bg-info" title="{}">simulated</span>',
        f"{value:.0f}",
        "An operator is simulating this node's temperature; the reading is not a sensor's.",
    )


class NumberColumn(Column):
    """A right-aligned number."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault(
            "attrs", {"td": {"class": "num text-end"}, "th": {"class": "num text-end"}}
        )
        super().__init__(*args, **kwargs)


class NodeTable(Table):
    # The list boosts its sorting and paging links into the live table (fleet/nodes.html);
    # a node's link must open its page instead.
    name = Column(
        linkify=("fleet:node", {"uid": A("uid")}),
        attrs={"td": {"class": "fw-semibold"}, "a": {"hx-boost": "false"}},
    )
    region = Column(accessor="region__code", order_by="region__code", verbose_name="Region")
    node_class = Column(
        accessor="node_class__name", order_by="node_class__name", verbose_name="Class"
    )
    status = Column(accessor="current_status", verbose_name="Status")
    last_heartbeat_at = Column(verbose_name="Last heartbeat")
    cpu_load = NumberColumn(verbose_name="CPU load")
    memory_pressure = NumberColumn(verbose_name="Memory")
    temperature_c = NumberColumn(verbose_name="Temp.")
    queue_depth = NumberColumn(verbose_name="Queue")
    models_loaded = NumberColumn(verbose_name="Models", orderable=False)
    agent_version = Column(verbose_name="Agent")

    class Meta:
        model = Node
        template_name = TEMPLATE
        fields = ()  # only the columns declared above, in that order
        attrs = {"class": "table table-sm table-hover table-fleet align-middle mb-0"}
        empty_text = "No nodes match these filters."
        order_by = ("region", "name")

    def render_status(self, value: str) -> str:
        return status_badge(value)

    def render_last_heartbeat_at(self, value) -> str:
        return format_html(
            '<span title="{}">{}</span>', value.isoformat(timespec="seconds"), naturaltime(value)
        )

    def order_last_heartbeat_at(self, queryset: QuerySet[Node], is_descending: bool):
        # Nodes that never reported sort last either way: "most recent first" should not
        # open on a page of pending nodes.
        field = F("last_heartbeat_at")
        ordering = field.desc(nulls_last=True) if is_descending else field.asc(nulls_last=True)
        return queryset.order_by(ordering, "name"), True

    def render_cpu_load(self, value: float) -> str:
        return f"{value:.2f}"

    def render_memory_pressure(self, value: float) -> str:
        return f"{value:.0%}"

    def render_temperature_c(self, record: Node, value: float) -> str:
        return temperature(value, simulated=record.temperature_simulated)

    def render_models_loaded(self, value: list) -> str:
        return str(len(value))

    def value_models_loaded(self, value: list) -> int:
        return len(value)


class EnrollmentTokenTable(Table):
    prefix = Column(verbose_name="Token", orderable=False)
    node_name = Column(verbose_name="Node name")
    region = Column(accessor="region__code", order_by="region__code", verbose_name="Region")
    node_class = Column(
        accessor="node_class__name", order_by="node_class__name", verbose_name="Class"
    )
    state = Column(empty_values=(), orderable=False)
    node = Column(verbose_name="Enrolled node", orderable=False)
    created_by = Column(accessor="created_by__username", verbose_name="Issued by")
    created_at = Column(verbose_name="Issued")
    expires_at = Column(verbose_name="Expires")

    class Meta:
        model = EnrollmentToken
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm align-middle mb-0"}
        empty_text = "No enrollment tokens issued yet."
        order_by = ("-created_at",)

    def render_prefix(self, value: str) -> str:
        return format_html("<code>{}…</code>", value)

    def render_state(self, record: EnrollmentToken) -> str:
        state = record.state
        return format_html(
            '<span class="badge text-bg-{}">{}</span>',
            TOKEN_STATE_BADGE.get(state, "secondary"),
            state,
        )

    def render_node(self, value: Node) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("fleet:node", args=[value.uid]), value.name
        )

    def render_created_at(self, value) -> str:
        return naturaltime(value)

    def render_expires_at(self, value) -> str:
        return format_html(
            '<span title="{}">{}</span>', value.isoformat(timespec="minutes"), naturaltime(value)
        )


class AttentionTable(NodeTable):
    """The home page's short list of nodes that are not online."""

    class Meta(NodeTable.Meta):
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        sequence = ("name", "region", "node_class", "status", "last_heartbeat_at")
        exclude = (
            "cpu_load",
            "memory_pressure",
            "temperature_c",
            "queue_depth",
            "models_loaded",
            "agent_version",
        )
        orderable = False
        order_by = ()  # keep the view's order: longest silent first
        empty_text = "Every node is online."


class StatusHistoryTable(Table):
    at = Column(verbose_name="When (UTC)")
    old_status = Column(verbose_name="From")
    new_status = Column(verbose_name="To")
    reason = Column()

    class Meta:
        template_name = TEMPLATE
        attrs = {"class": "table table-sm align-middle mb-0"}
        orderable = False
        empty_text = "No status changes recorded yet."

    def render_at(self, value) -> SafeString:
        return history_time(value)

    # django-tables2 hands render_* the choice's label; the badge needs the value.
    def render_old_status(self, record: NodeStatusChange) -> str:
        return status_badge(record.old_status)

    def render_new_status(self, record: NodeStatusChange) -> str:
        return status_badge(record.new_status)


# --- the model registry (fleet.registry_views) -----------------------------------------------

# Grades are sizes, not verdicts: neutral colours, darker for heavier models.
GRADE_BADGE = {Grade.TINY: "secondary", Grade.MEDIUM: "primary", Grade.LARGE: "dark"}


def version_status_badge(status: str) -> SafeString:
    """A model version's status as a badge, coloured by fleet.choices.VERSION_BADGE."""
    return choice_badge(status, VersionStatus, VERSION_BADGE)


def grade_badge(grade: str) -> SafeString:
    """A grade as a short badge ("tiny"); the full label ("Tiny (classification-sized)") is
    its tooltip. Empty until the version is graded."""
    if grade not in Grade.values:
        return format_html('<span class="text-body-secondary">{}</span>', "—")
    return format_html(
        '<span class="badge text-bg-{}" title="{}">{}</span>',
        GRADE_BADGE[grade],
        Grade(grade).label,
        grade,
    )


DRIFT_BADGE = {
    "none": "success",
    "moderate": "warning",
    "significant": "danger",
    "unknown": "light border",
}


def drift_badge(psi: float | None, threshold: float) -> SafeString:
    """A version's latest PSI against its baseline, read as none, moderate or significant
    (fleet.drift.level)."""
    from fleet.drift import level

    reading = level(psi, threshold)
    text = "PSI —, not measured" if psi is None else f"PSI {psi:.2f} · {reading}"
    return format_html(
        '<span class="badge text-bg-{}" data-drift-level="{}" title="{}">{}</span>',
        DRIFT_BADGE[reading],
        reading,
        "population stability index of the outputs against the baseline",
        text,
    )


def op_histogram_summary(histogram: dict[str, int], limit: int = 12) -> list[tuple[str, int]]:
    """The most used operators first (ties by name), at most `limit`, and the rest summed
    under "other" so the version page stays compact for graphs of hundreds of op types."""
    ranked = sorted(histogram.items(), key=lambda item: (-item[1], item[0]))
    shown, rest = ranked[:limit], ranked[limit:]
    if rest:
        shown.append((f"{len(rest)} other types", sum(count for _, count in rest)))
    return shown


class ModelVersionTable(Table):
    """Every version in the registry, one row each. `version_url(version)` gives a row's link:
    the operator pages and the tenant portal show the same table with their own pages."""

    model = Column(
        accessor="model__name",
        order_by=("model__name", "model__owner__slug", "-version"),
        verbose_name="Model",
        attrs={"td": {"class": "fw-semibold text-nowrap"}},
    )
    version = NumberColumn(order_by=("version", "model__name"))
    grade = Column()
    node_class = Column(
        accessor="node_class__name",
        order_by="node_class__name",
        verbose_name="Node class",
        attrs={"th": {"class": "text-nowrap"}},
    )
    status = Column()
    size_bytes = NumberColumn(
        verbose_name="Size",
        attrs={"td": {"class": "num text-end text-nowrap"}, "th": {"class": "num text-end"}},
    )
    sha256 = Column(verbose_name="sha256", orderable=False)
    created_at = Column(verbose_name="Uploaded", attrs={"td": {"class": "text-nowrap"}})

    class Meta:
        model = ModelVersion
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover table-fleet align-middle mb-0"}
        empty_text = "No model versions match these filters."

    def __init__(self, *args, version_url: Callable[[ModelVersion], str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.version_url = version_url

    def render_model(self, record: ModelVersion) -> SafeString:
        model = record.model
        if model.owner_id is None:
            return format_html(
                '<a hx-boost="false" href="{}">{}</a> '
                '<span class="badge rounded-pill text-bg-light border fw-normal">catalogue</span>',
                self.version_url(record),
                model.name,
            )
        return format_html(
            '<a hx-boost="false" href="{}"><span class="text-body-secondary fw-normal">{}/</span>'
            "{}</a>",
            self.version_url(record),
            model.owner.slug,
            model.name,
        )

    def render_version(self, value: int) -> str:
        return f"v{value}"

    # django-tables2 hands render_* the choice's label; the badges need the value.
    def render_grade(self, record: ModelVersion) -> SafeString:
        return grade_badge(record.grade)

    def render_status(self, record: ModelVersion) -> SafeString:
        return version_status_badge(record.status)

    def render_size_bytes(self, value: int) -> str:
        # Binary prefixes, as fleet.grading's reasons and the version page write sizes.
        return format_bytes(value)

    def render_sha256(self, value: str) -> SafeString:
        return format_html('<code title="{}">{}…</code>', value, value[:12])

    def render_created_at(self, value) -> SafeString:
        return format_html(
            '<span title="{} UTC">{}</span>', value.strftime("%Y-%m-%d %H:%M"), naturaltime(value)
        )


class OtherVersionsTable(ModelVersionTable):
    """The other versions of one model, on a version's page: newest first."""

    class Meta(ModelVersionTable.Meta):
        exclude = ("model",)
        orderable = False

    def render_version(self, record: ModelVersion) -> SafeString:
        return format_html('<a href="{}">v{}</a>', self.version_url(record), record.version)


# --- deployments (fleet.deployment_views) ----------------------------------------------------


def deployment_badge(state: str) -> SafeString:
    """A deployment's state as a badge, coloured by fleet.choices.DEPLOYMENT_BADGE."""
    return choice_badge(state, DeploymentState, DEPLOYMENT_BADGE)


def selector_summary(deployment: Deployment) -> str:
    """Which nodes a deployment takes in, as "eu-west · nano" or "all nodes". Reads the
    regions and classes through .all(), so a prefetch serves a whole list."""
    regions = ", ".join(sorted(r.code for r in deployment.regions.all()))
    classes = ", ".join(sorted(c.name for c in deployment.node_classes.all()))
    return " · ".join(part for part in (regions, classes) if part) or "all nodes"


def steps_progress(deployment: Deployment) -> SafeString:
    """The steps as one stacked bar: a segment per step, as wide as the traffic it adds,
    filled up to the current step in the state's colour."""
    colour = DEPLOYMENT_BADGE.get(deployment.state, "secondary")
    done = len(deployment.steps) if deployment.state == DeploymentState.COMPLETED else None
    reached = deployment.step_index + 1 if done is None else done
    segments = format_html_join(
        "",
        '<div class="progress" role="progressbar" style="width: {}%" aria-label="step {}: {} %" '
        'aria-valuenow="{}" aria-valuemin="0" aria-valuemax="100">'
        '<div class="progress-bar {}"></div></div>',
        (
            (
                percent - before,
                index + 1,
                percent,
                percent,
                f"bg-{colour}" if index < reached else "bg-body-secondary",
            )
            for index, (before, percent) in enumerate(pairwise([0, *deployment.steps]))
        ),
    )
    return format_html(
        '<div class="progress-stacked" style="height: .5rem" title="{}">{}</div>',
        " → ".join(f"{p} %" for p in deployment.steps),
        segments,
    )


def new_version_percent(deployment: Deployment) -> int:
    """The share of the traffic the new version takes now, in percent."""
    return round(deployment.new_share * 100)


class DeploymentTable(Table):
    """Every deployment, newest first. Cells read the row, its joined version, model, owner,
    previous version and creator, and its prefetched regions and classes."""

    model = Column(
        accessor="version__model__name",
        order_by=("version__model__name", "version__model__owner__slug"),
        verbose_name="Model",
        attrs={"td": {"class": "fw-semibold text-nowrap"}},
    )
    version = Column(
        accessor="version__version",
        order_by=("version__version",),
        verbose_name="Version",
        attrs={"td": {"class": "text-nowrap"}},
    )
    selector = Column(empty_values=(), orderable=False, verbose_name="Nodes")
    strategy = Column()
    state = Column()
    progress = Column(
        empty_values=(),
        orderable=False,
        verbose_name="New version's traffic",
        attrs={"td": {"style": "min-width: 10rem"}},
    )
    created_at = Column(verbose_name="Started", attrs={"td": {"class": "text-nowrap"}})
    created_by = Column(accessor="created_by__username", verbose_name="By")

    class Meta:
        model = Deployment
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover table-fleet align-middle mb-0"}
        empty_text = "No deployments match these filters."
        order_by = ("-created_at",)

    def render_model(self, record: Deployment) -> SafeString:
        model = record.version.model
        url = reverse("deployments:detail", args=[record.pk])
        if model.owner_id is None:
            return format_html('<a hx-boost="false" href="{}">{}</a>', url, model.name)
        return format_html(
            '<a hx-boost="false" href="{}"><span class="text-body-secondary fw-normal">{}/</span>'
            "{}</a>",
            url,
            model.owner.slug,
            model.name,
        )

    def render_version(self, record: Deployment) -> SafeString:
        if record.previous_id is None:
            return format_html(
                'v{} <span class="text-body-secondary small">first</span>', record.version.version
            )
        return format_html(
            'v{} <span class="text-body-secondary">← v{}</span>',
            record.version.version,
            record.previous.version,
        )

    def render_selector(self, record: Deployment) -> str:
        return selector_summary(record)

    def render_state(self, record: Deployment) -> SafeString:
        return deployment_badge(record.state)

    def render_progress(self, record: Deployment) -> SafeString:
        return format_html(
            '<div class="d-flex align-items-center gap-2"><span class="num text-nowrap">{} %'
            '</span><div class="flex-grow-1">{}</div></div>',
            new_version_percent(record),
            steps_progress(record),
        )

    def render_created_at(self, value) -> SafeString:
        return format_html(
            '<span title="{} UTC">{}</span>', value.strftime("%Y-%m-%d %H:%M"), naturaltime(value)
        )


class DeploymentEventTable(Table):
    """A deployment's history, newest first; rows without an actor were the rollout's own."""

    at = Column(verbose_name="When (UTC)")
    transition = Column(empty_values=(), verbose_name="From → to")
    percent = NumberColumn(verbose_name="Traffic")
    reason = Column()
    actor = Column(empty_values=(), verbose_name="Who")

    class Meta:
        template_name = TEMPLATE
        attrs = {"class": "table table-sm align-middle mb-0"}
        orderable = False
        empty_text = "No history yet."

    def render_at(self, value) -> SafeString:
        return history_time(value)

    def render_transition(self, record: DeploymentEvent) -> SafeString:
        if not record.from_state:
            return format_html("started · {}", deployment_badge(record.to_state))
        return format_html(
            "{} → {}", deployment_badge(record.from_state), deployment_badge(record.to_state)
        )

    def render_percent(self, value: int) -> str:
        return f"{value} %"

    def render_actor(self, record: DeploymentEvent) -> SafeString:
        if record.actor_id is None:
            return format_html('<span class="text-body-secondary">{}</span>', "automatic")
        return format_html("{}", record.actor.get_username())


# --- tenant policies and fleet settings (fleet.policy_views) ----------------------------------


def privacy_badge(mode: str) -> SafeString:
    return format_html(
        '<span class="badge text-bg-{}" title="{}">{}</span>',
        PRIVACY_BADGE.get(mode, "secondary"),
        PRIVACY_HELP.get(mode, ""),
        mode,
    )


def amount_with_currency(amount, currency: str) -> SafeString:
    if amount is None:
        return format_html('<span class="text-body-secondary">{}</span>', "no limit")
    return format_html("{} {}", format_amount(amount), currency)


def field_list(names: list[str]) -> SafeString:
    if not names:
        return format_html('<span class="text-body-secondary">{}</span>', "—")
    return format_html_join(" ", "<code>{}</code>", ((name,) for name in names))


class TenantPolicyTable(Table):
    """Every tenant's policy on the operator page, with the operators' own settings (fail
    closed, rate limit, residency zone) as forms in their cells. Cells read the row and its
    joined tenant and editor."""

    tenant = Column(
        accessor="tenant__slug",
        order_by="tenant__slug",
        verbose_name="Tenant",
        attrs={"td": {"class": "fw-semibold text-nowrap"}},
    )
    privacy_mode = Column(verbose_name="Privacy")
    fallback = Column()
    quality = Column(verbose_name="Quality")
    max_spend_per_session = Column(
        verbose_name="Max spend / session",
        empty_values=(),
        attrs={"td": {"class": "num text-end text-nowrap"}, "th": {"class": "num text-end"}},
    )
    sensitive_fields = Column(verbose_name="Sensitive fields", orderable=False)
    on_budget_exhausted = Column(verbose_name="Budget spent")
    fail_closed_after_s = TemplateColumn(
        template_name="fleet/policies/_fail_closed_cell.html",
        verbose_name="Fail closed after (s)",
        attrs={"td": {"style": "min-width: 11rem"}},
    )
    rate_limit_per_s = TemplateColumn(
        template_name="fleet/policies/_rate_limit_cell.html",
        verbose_name="Rate limit (/s per node)",
        attrs={"td": {"style": "min-width: 11rem"}},
    )
    residency_zone = TemplateColumn(
        template_name="fleet/policies/_residency_cell.html",
        verbose_name="Residency zone",
        attrs={"td": {"style": "min-width: 10rem"}},
    )
    revision = NumberColumn()
    updated_at = Column(verbose_name="Changed", attrs={"td": {"class": "text-nowrap"}})

    class Meta:
        model = TenantPolicy
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        empty_text = "No tenant matches these filters."
        order_by = ("tenant",)
        row_attrs = {"id": lambda record: f"tenant-{record.tenant.slug}"}

    def render_tenant(self, record: TenantPolicy) -> SafeString:
        return format_html(
            '{} <span class="small text-body-secondary fw-normal">{}</span>',
            record.tenant.slug,
            record.tenant.name,
        )

    # django-tables2 hands render_* the choice's label; the words of the policy are the values.
    def render_privacy_mode(self, record: TenantPolicy) -> SafeString:
        return privacy_badge(record.privacy_mode)

    def render_fallback(self, record: TenantPolicy) -> str:
        return record.fallback

    def render_quality(self, record: TenantPolicy) -> str:
        return record.quality

    def render_on_budget_exhausted(self, record: TenantPolicy) -> str:
        return record.on_budget_exhausted

    def render_max_spend_per_session(self, record: TenantPolicy) -> SafeString:
        return amount_with_currency(record.max_spend_per_session, record.tenant.currency)

    def render_sensitive_fields(self, value: list[str]) -> SafeString:
        return field_list(value)

    def render_revision(self, value: int) -> str:
        return f"r{value}"

    def render_updated_at(self, record: TenantPolicy) -> SafeString:
        return history_time(record.updated_at)


def policy_actor(change: PolicyChange, *, name_operators: bool) -> SafeString:
    """Who made a change: a member by name, an API key by its prefix and name, an operator
    by name on the operator's pages and as "the provider" in the tenant's portal."""
    if change.actor_kind == PolicyActorKind.API_KEY:
        label = change.api_key.name if change.api_key_id else "deleted key"
        return format_html(
            'API key <code>{}…</code> <span class="text-body-secondary">{}</span>',
            change.api_key_prefix,
            label,
        )
    if change.actor_kind == PolicyActorKind.OPERATOR:
        if name_operators and change.actor_id:
            return format_html(
                "{} <span class='badge text-bg-secondary'>operator</span>",
                change.actor.get_username(),
            )
        return format_html('<span class="text-body-secondary">{}</span>', "the provider")
    if change.actor_id is None:
        return format_html('<span class="text-body-secondary">{}</span>', "a former member")
    return format_html("{}", change.actor.get_username())


class PolicyChangeTable(Table):
    """A policy's history, newest first: in the tenant's portal (without the tenant column)
    and, across tenants, on the operator page. Rows need their actor and API key joined."""

    at = Column(verbose_name="When (UTC)")
    tenant = Column(accessor="tenant__slug", verbose_name="Tenant")
    revision = NumberColumn()
    actor = Column(empty_values=(), verbose_name="Who")
    summary = Column(verbose_name="What changed")

    class Meta:
        template_name = TEMPLATE
        attrs = {"class": "table table-sm align-middle mb-0"}
        orderable = False
        empty_text = "No changes yet: the policy has its defaults."

    def __init__(self, *args, operator_view: bool = False, **kwargs) -> None:
        if not operator_view:
            kwargs.setdefault("exclude", ("tenant",))
        super().__init__(*args, **kwargs)
        self.operator_view = operator_view

    def render_at(self, value) -> SafeString:
        return history_time(value)

    def render_revision(self, value: int) -> str:
        return f"r{value}"

    def render_actor(self, record: PolicyChange) -> SafeString:
        return policy_actor(record, name_operators=self.operator_view)

    def render_summary(self, value: str) -> SafeString:
        return format_html('<span class="font-monospace small">{}</span>', value)


class FleetSettingChangeTable(Table):
    """The operators' changes of node class thresholds and accelerator pools, newest first."""

    at = Column(verbose_name="When (UTC)")
    kind = Column(verbose_name="What")
    subject = Column(verbose_name="Of")
    actor = Column(empty_values=(), verbose_name="Who")
    summary = Column(verbose_name="What changed")

    class Meta:
        template_name = TEMPLATE
        attrs = {"class": "table table-sm align-middle mb-0"}
        orderable = False
        empty_text = "No changes yet."

    def render_at(self, value) -> SafeString:
        return history_time(value)

    def render_actor(self, record: FleetSettingChange) -> SafeString:
        if record.actor_id is None:
            return format_html('<span class="text-body-secondary">{}</span>', "seeded")
        return format_html("{}", record.actor.get_username())

    def render_summary(self, value: str) -> SafeString:
        return format_html('<span class="font-monospace small">{}</span>', value)


# --- the policy plane (fleet.bundle_views) ------------------------------------------------------

REVISION_STATE_BADGE = {"current": "success", "behind": "warning", "stale": "danger"}
REVISION_STATE_HELP = {
    "current": "enforces the newest revision",
    "behind": "has not fetched the newest revision yet (it was published moments ago)",
    "stale": "behind for longer than two heartbeats, or refusing the newest revision",
}


def revision_state(row: dict) -> str:
    """A row of fleet.policy_plane.revision_states as one word: current, behind or stale."""
    if row["stale"]:
        return "stale"
    return "behind" if row["behind"] else "current"


def revision_link(revision: int | None) -> SafeString:
    if revision is None:
        return format_html('<span class="text-body-secondary">{}</span>', "—")
    return format_html(
        '<a hx-boost="false" href="{}">r{}</a>',
        reverse("bundles:revision", args=[revision]),
        revision,
    )


class NodeRevisionTable(Table):
    """Which bundle revision each node enforces, against the newest: the rows of
    fleet.policy_plane.revision_states, each {"node", "current", "behind", "stale"}. Cells read
    the node and its joined region and class."""

    node = Column(
        accessor="node__name", verbose_name="Node", attrs={"td": {"class": "fw-semibold"}}
    )
    region = Column(accessor="node__region__code", verbose_name="Region")
    node_class = Column(accessor="node__node_class__name", verbose_name="Class")
    status = Column(accessor="node__current_status", verbose_name="Status")
    last_heartbeat_at = Column(accessor="node__last_heartbeat_at", verbose_name="Last heartbeat")
    reported = NumberColumn(
        accessor="node__bundle_revision", verbose_name="Enforces", empty_values=()
    )
    newest = NumberColumn(empty_values=(), verbose_name="Newest")
    state = Column(empty_values=(), verbose_name="")
    problem = Column(accessor="node__bundle_problem", verbose_name="Problem")

    class Meta:
        template_name = TEMPLATE
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        orderable = False
        empty_text = "No nodes enrolled yet."
        row_attrs = {
            "data-node": lambda record: record["node"].name,
            "data-revision-state": lambda record: revision_state(record),
        }

    def __init__(self, *args, latest: int | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.latest = latest

    def render_node(self, record: dict) -> SafeString:
        node = record["node"]
        return format_html('<a href="{}">{}</a>', reverse("fleet:node", args=[node.uid]), node.name)

    def render_status(self, value: str) -> SafeString:
        return status_badge(value)

    def render_last_heartbeat_at(self, value) -> SafeString:
        return format_html(
            '<span title="{}">{}</span>', value.isoformat(timespec="seconds"), naturaltime(value)
        )

    def render_reported(self, record: dict) -> SafeString:
        revision = record["node"].bundle_revision
        if revision is None:
            return format_html('<span class="text-body-secondary">{}</span>', "none")
        return revision_link(revision)

    def render_newest(self) -> SafeString:
        return revision_link(self.latest)

    def render_state(self, record: dict) -> SafeString:
        if self.latest is None:
            return format_html('<span class="text-body-secondary">{}</span>', "no bundle yet")
        state = revision_state(record)
        return format_html(
            '<span class="badge text-bg-{}" title="{}">{}</span>',
            REVISION_STATE_BADGE[state],
            REVISION_STATE_HELP[state],
            state,
        )

    def render_problem(self, value: str) -> SafeString:
        return format_html('<span class="text-danger small text-break">{}</span>', value)


class PolicyBundleRecordTable(Table):
    """Every signed revision, newest first. Reads the stored summary fields only: the
    queryset may (and should) defer the signed text."""

    revision = NumberColumn(verbose_name="Revision")
    issued_at = Column(verbose_name="Issued (UTC)")
    expires_at = Column(verbose_name="Expires (UTC)")
    key_id = Column(verbose_name="Key")
    tenant_count = NumberColumn(verbose_name="Tenants")
    size_bytes = NumberColumn(verbose_name="Size")
    reasons = Column(verbose_name="Why", orderable=False)
    changes = Column(verbose_name="What changed", orderable=False)

    # Beyond this many change lines a row shows a count; the revision's page lists them all.
    CHANGES_SHOWN = 3

    class Meta:
        model = PolicyBundleRecord
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        orderable = False
        empty_text = "No bundle has been published yet."
        row_attrs = {"data-revision": lambda record: record.revision}

    def render_revision(self, value: int) -> SafeString:
        return revision_link(value)

    def render_issued_at(self, value) -> SafeString:
        return history_time(value)

    def render_expires_at(self, value) -> SafeString:
        return history_time(value)

    def render_key_id(self, value: str) -> SafeString:
        return format_html("<code>{}</code>", value)

    def render_size_bytes(self, value: int) -> str:
        return format_bytes(value)

    def render_reasons(self, value: list[str]) -> str:
        return "; ".join(value)

    def render_changes(self, value: list[str]) -> SafeString:
        shown = value[: self.CHANGES_SHOWN]
        lines = format_html_join(
            "", '<div class="text-break">{}</div>', ((line,) for line in shown)
        )
        if len(value) > len(shown):
            lines = format_html(
                '{}<div class="text-body-secondary">… and {} more</div>',
                lines,
                len(value) - len(shown),
            )
        return format_html('<div class="font-monospace small">{}</div>', lines)


def decision_badge(action: str) -> SafeString:
    """A routing decision's action as a badge, coloured by fleet.choices.DECISION_BADGE."""
    return choice_badge(action, DecisionAction, DECISION_BADGE)


class DecisionLogTable(Table):
    """The routing decisions nodes reported, newest first. Cells read the row, its joined node
    and the name of the node it was offloaded to (`target_name`, annotated by the view); the
    links need no query (nodes by uid, bundles by revision)."""

    at = Column(verbose_name="When (UTC)", attrs={"td": {"class": "text-nowrap"}})
    node = Column(accessor="node__name", order_by="node__name", verbose_name="Node")
    tenant = Column()
    model = Column()
    action = Column()
    rule = Column()
    reason = Column(orderable=False)
    status = NumberColumn()
    served_by = Column(verbose_name="Served by")
    target = Column(verbose_name="Target")
    request_id = Column(verbose_name="Request id", orderable=False)
    bundle_revision = NumberColumn(verbose_name="Bundle")
    price = NumberColumn(verbose_name="Price")
    temperature_c = NumberColumn(verbose_name="Temp.")

    class Meta:
        model = DecisionLog
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        empty_text = "No decisions match these filters."
        order_by = ("-at",)
        row_attrs = {"data-request-id": lambda record: record.request_id}

    def render_at(self, value) -> SafeString:
        return format_html(
            '<span title="{}">{}</span>',
            naturaltime(value),
            value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        )

    def render_node(self, record: DecisionLog) -> SafeString:
        return format_html(
            '<a href="{}">{}</a>', reverse("fleet:node", args=[record.node.uid]), record.node.name
        )

    # django-tables2 hands render_* the choice's label; the badge needs the value.
    def render_action(self, record: DecisionLog) -> SafeString:
        return decision_badge(record.action)

    def render_rule(self, value: str) -> SafeString:
        return format_html("<code>{}</code>", value)

    def render_reason(self, value: str) -> SafeString:
        return format_html('<span class="small">{}</span>', value)

    def render_target(self, record: DecisionLog, value: str) -> SafeString:
        # `target_name`: the view's annotation; the uid alone when the node is gone.
        name = getattr(record, "target_name", None)
        return format_html(
            '<a href="{}" title="{}">{}</a>',
            reverse("fleet:node", args=[value]),
            value,
            name or format_html("<code>{}</code>", value),
        )

    def render_request_id(self, value: str) -> SafeString:
        return format_html(
            '<a href="?{}" title="Every decision about this request"><code>{}</code></a>',
            urlencode({"request_id": value}),
            value,
        )

    def render_bundle_revision(self, value: int) -> SafeString:
        return revision_link(value)

    def render_price(self, record: DecisionLog) -> str:
        return f"{format_amount(record.price)} {record.currency}".strip()

    def render_temperature_c(self, value: float) -> str:
        return f"{value:.1f} °C"
