import django_tables2 as tables
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from billing import audit
from billing.choices import (
    AUDIT_CATEGORY_BADGE,
    PRICE_STATE_BADGE,
    ActorKind,
    AuditCategory,
    PriceState,
)
from billing.models import ApiKey, AuditEntry, Price, Tenant, format_price


class ApiKeyTable(tables.Table):
    prefix = tables.TemplateColumn("<code>{{ value }}…</code>", verbose_name="Key")
    last_used_at = tables.DateTimeColumn(verbose_name="Last used", default="never")
    revoked_at = tables.DateTimeColumn(verbose_name="Revoked", default="—")
    actions = tables.TemplateColumn(
        template_name="portal/_api_key_actions.html", verbose_name="", orderable=False
    )

    class Meta:
        model = ApiKey
        fields = ["name", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No API keys yet."


class TenantTable(tables.Table):
    name = tables.Column(verbose_name="Tenant")
    slug = tables.TemplateColumn("<code>{{ value }}</code>")
    members = tables.Column(verbose_name="Members")
    active_keys = tables.Column(verbose_name="Active API keys")

    class Meta:
        model = Tenant
        fields = ["name", "slug", "currency", "time_zone", "members", "active_keys", "created_at"]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No tenants match."


class PriceTable(tables.Table):
    """The price book's history. `current_ids` are the rows in effect now (the view has them
    already, for the grid), so a row's state costs no query."""

    grade = tables.Column()
    serving = tables.Column()
    per_1000 = tables.Column(verbose_name="Per 1,000", attrs={"td": {"class": "text-end"}})
    effective_from = tables.DateTimeColumn(verbose_name="Effective from (UTC)", format="Y-m-d H:i")
    state = tables.Column(empty_values=(), orderable=False, verbose_name="State")
    created_by = tables.Column(verbose_name="Set by", default="—")
    created_at = tables.DateTimeColumn(verbose_name="Set at (UTC)", format="Y-m-d H:i")
    note = tables.Column(default="")

    class Meta:
        model = Price
        fields = [
            "grade",
            "serving",
            "currency",
            "per_1000",
            "effective_from",
            "state",
            "created_by",
            "created_at",
            "note",
        ]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No prices match."

    def __init__(self, *args, current_ids=frozenset(), now=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current_ids = current_ids
        self.now = now or timezone.now()

    def render_per_1000(self, value) -> str:
        return format_price(value)

    def render_state(self, record: Price) -> str:
        if record.pk in self.current_ids:
            state = PriceState.IN_EFFECT
        elif record.effective_from > self.now:
            state = PriceState.SCHEDULED
        else:
            state = PriceState.SUPERSEDED
        return format_html(
            '<span class="badge text-bg-{}">{}</span>', PRICE_STATE_BADGE[state], state.label
        )


# The provider's people, as a tenant's portal names them (their usernames are the provider's).
PROVIDER_KINDS = {ActorKind.OPERATOR, ActorKind.FINANCE}
# A value longer than this is cut in the table; the CSV export has it whole.
SHOWN_VALUE_CHARS = 60


def _clipped(value: object) -> str:
    text = audit.shown(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 1] + "…"


class AuditEntryTable(tables.Table):
    """The audit log, newest first. Cells read the row and its joined tenant only, so a page
    costs the same queries however many rows it has. `portal=True`: a tenant's own log, which
    names the provider's operators and finance people as "the provider"."""

    at = tables.DateTimeColumn(verbose_name="When (UTC)", format="Y-m-d H:i:s")
    # Not the user foreign key: the label kept on the row (no query, and the name outlives
    # the user).
    actor = tables.Column(accessor="actor_label", verbose_name="Who", orderable=False)
    tenant = tables.Column(accessor="tenant__slug", verbose_name="Tenant", default="—")
    category = tables.Column(verbose_name="Category")
    action = tables.Column(verbose_name="Action")
    subject = tables.Column(empty_values=(), verbose_name="Subject", orderable=False)
    changes = tables.Column(empty_values=(), verbose_name="Before → after", orderable=False)
    note = tables.Column(default="", orderable=False)

    class Meta:
        model = AuditEntry
        fields = ["at", "actor", "tenant", "category", "action", "subject", "changes", "note"]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No audit entries match."

    def __init__(self, *args, portal: bool = False, **kwargs) -> None:
        if portal:
            kwargs.setdefault("exclude", ("tenant",))
        super().__init__(*args, **kwargs)
        self.portal = portal

    def render_actor(self, record: AuditEntry) -> SafeString:
        if self.portal and record.actor_kind in PROVIDER_KINDS:
            return format_html('<span class="text-body-secondary">{}</span>', "the provider")
        kind = ActorKind(record.actor_kind).label.lower()
        return format_html(
            '{} <span class="badge text-bg-light border">{}</span>', record.actor_label, kind
        )

    def render_tenant(self, value: str) -> SafeString:
        return format_html("<code>{}</code>", value)

    def render_category(self, value: str, record: AuditEntry) -> SafeString:
        return format_html(
            '<span class="badge text-bg-{}">{}</span>',
            AUDIT_CATEGORY_BADGE.get(record.category, "secondary"),
            AuditCategory(record.category).label,
        )

    def render_action(self, value: str) -> SafeString:
        return format_html("<code>{}</code>", value)

    def render_subject(self, record: AuditEntry) -> SafeString:
        return format_html(
            '{} <span class="text-body-secondary small">{} {}</span>',
            record.subject_label,
            record.subject_type,
            record.subject_id,
        )

    def render_changes(self, record: AuditEntry) -> SafeString:
        rows = audit.changes(record.before, record.after)
        if not rows:
            return format_html('<span class="text-body-secondary">{}</span>', "—")
        return format_html(
            '<ul class="list-unstyled small mb-0 font-monospace">{}</ul>',
            format_html_join(
                "",
                "<li>{}: <del>{}</del> → <ins>{}</ins></li>",
                ((name, _clipped(old), _clipped(new)) for name, old, new in rows),
            ),
        )
