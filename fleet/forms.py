"""Forms of the fleet pages."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from billing import audit
from billing.choices import AuditCategory
from billing.models import Tenant
from fleet import artifacts, simulator
from fleet.actions import register_model_version
from fleet.choices import (
    BUDGET_ACTION_HELP,
    FALLBACK_HELP,
    PRIVACY_HELP,
    QUALITY_HELP,
    BudgetAction,
    Fallback,
    Grade,
    PinSide,
    PolicyActorKind,
    PrivacyMode,
    QualityObjective,
    Strategy,
    VersionStatus,
)
from fleet.grading import format_bytes
from fleet.models import (
    AcceleratorPool,
    Deployment,
    EnrollmentToken,
    ModelVersion,
    Node,
    NodeClass,
    PolicyBundleRecord,
    Region,
    TenantPolicy,
)
from fleet.models.nodes import SIMULATED_MAX_C, SIMULATED_MIN_C
from fleet.models.policies import MAX_SENSITIVE_FIELDS, TENANT_FIELDS
from fleet.policies import (
    StalePolicy,
    set_accelerator_pool,
    set_node_class_thresholds,
    update_policy,
)
from fleet.rollout_actions import RolloutError, start_rollout
from fleet.rollouts import Gates, parse_steps
from inference.protocol import SIGNAL_TYPES, PolicyBundle

# The longest an enrollment token may live: a month, as the API allows (fleet.schemas).
MAX_TOKEN_TTL_H = 24 * 30


class BootstrapForm(forms.Form):
    """Widgets carry Bootstrap 5 classes, and fields with errors are marked invalid."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field.widget, forms.CheckboxInput):
                css = "form-check-input"
            elif isinstance(field.widget, forms.Select):
                css = "form-select"
            else:
                css = "form-control"
            field.widget.attrs.setdefault("class", css)

    def full_clean(self) -> None:
        super().full_clean()
        for name in self.errors:
            if name in self.fields:
                widget = self.fields[name].widget
                widget.attrs["class"] = f"{widget.attrs.get('class', '')} is-invalid".strip()
                widget.attrs["aria-invalid"] = "true"


class EnrollForm(BootstrapForm):
    """The one place enrollment tokens are validated: the page and the API
    (fleet.api.create_enrollment_token) both go through it."""

    node_name = forms.CharField(
        max_length=100,
        label="Node name",
        help_text="How the node appears in the console, e.g. fra-edge-07. Must be unique.",
    )
    region = forms.ModelChoiceField(
        queryset=Region.objects.all(),
        to_field_name="code",
        error_messages={"invalid_choice": "There is no region “%(value)s”."},
    )
    node_class = forms.ModelChoiceField(
        queryset=NodeClass.objects.all(),
        to_field_name="name",
        label="Node class",
        error_messages={"invalid_choice": "There is no node class “%(value)s”."},
    )
    expires_in_hours = forms.IntegerField(
        min_value=1,
        max_value=MAX_TOKEN_TTL_H,
        label="Token expires in (hours)",
        help_text=f"1 to {MAX_TOKEN_TTL_H} hours. The token works once, within this time.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["expires_in_hours"].initial = settings.OUTPOST_ENROLLMENT_TOKEN_TTL_H
        self.fields["region"].empty_label = "Choose a region"
        self.fields["node_class"].empty_label = "Choose a class"

    def clean_node_name(self) -> str:
        name = self.cleaned_data["node_name"].strip()
        # Case-insensitive: "Edge-1" beside "edge-1" would be legal but only confuse people.
        clash = Node.objects.filter(name__iexact=name).values_list("name", flat=True).first()
        if clash is not None:
            raise forms.ValidationError(
                f"A node named “{clash}” is already enrolled. Choose another name."
            )
        return name

    def issue(self, *, created_by) -> tuple[EnrollmentToken, str]:
        """Issue the token; returns it and its secret, which is not stored anywhere."""
        with transaction.atomic():
            token, secret = EnrollmentToken.issue(
                node_name=self.cleaned_data["node_name"],
                region=self.cleaned_data["region"],
                node_class=self.cleaned_data["node_class"],
                created_by=created_by,
                ttl=timedelta(hours=self.cleaned_data["expires_in_hours"]),
            )
            audit.record(
                "enrollment_token.issued",
                category=AuditCategory.ACCESS,
                actor=created_by,
                subject=token,
                after={"node_name": token.node_name, "region": token.region.code,
                       "node_class": token.node_class.name, "expires_at": token.expires_at},
            )  # fmt: skip
        return token, secret


class ChartRangeForm(forms.Form):
    """The time range of the node page's charts (?range=6h)."""

    RANGES = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(hours=24)}
    DEFAULT = "1h"

    range = forms.ChoiceField(choices=[(key, key) for key in RANGES], required=False)

    @property
    def key(self) -> str:
        if self.is_valid() and self.cleaned_data["range"]:
            return self.cleaned_data["range"]
        return self.DEFAULT

    @property
    def window(self) -> timedelta:
        return self.RANGES[self.key]


# Model names as the API takes them (fleet.api.SLUG): they appear in OIP paths on the nodes.
MODEL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
_SIGNAL_PAIR = re.compile(r"^\s*([^:\s]+)\s*:\s*(\S+)\s*$")


def as_sentence(message: str) -> str:
    """fleet.artifacts' messages ("the file is empty") as a sentence for a form."""
    message = message.strip()
    if not message:
        return message
    return message[0].upper() + message[1:] + ("" if message.endswith((".", "?", "!")) else ".")


def parse_signals(text: str) -> dict[str, str] | None:
    """The upload form's signals: "tier:string, premium:bool" (commas or new lines), or the
    JSON object the API takes. Empty means "keep the model's current signals" (None).
    Raises ValidationError naming the part that does not read."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            signals = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"This is not a JSON object: {exc.msg}.") from None
    else:
        signals = {}
        for part in filter(None, (p.strip() for p in re.split(r"[,\n]", text))):
            match = _SIGNAL_PAIR.match(part)
            if match is None:
                raise forms.ValidationError(f"“{part}” should read name:type, e.g. tier:string.")
            name, kind = match.groups()
            if name in signals:
                raise forms.ValidationError(f"The signal “{name}” is named twice.")
            signals[name] = kind.lower()
    try:
        return artifacts.check_signals(signals)
    except artifacts.InvalidArtifact as exc:
        raise forms.ValidationError(as_sentence(str(exc))) from None


class ModelUploadForm(BootstrapForm):
    """Register an ONNX file as a model's next version, from the operator's registry page
    (catalogue models) or a tenant's portal (its own models). The checks of the bytes
    themselves are fleet.artifacts' (through fleet.actions.register_model_version), the same
    the API applies; their refusal is shown on the file field."""

    file = forms.FileField(
        label="ONNX file",
        help_text="An .onnx model; the bytes are checked before anything is stored.",
        widget=forms.ClearableFileInput(attrs={"accept": ".onnx,application/octet-stream"}),
    )
    name = forms.CharField(
        max_length=100,
        label="Model name",
        help_text="Lowercase letters, digits and dashes, e.g. churn-scorer. Uploading to an "
        "existing name adds its next version.",
    )
    description = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional. Replaces the model's description when given.",
    )
    signals = forms.CharField(
        required=False,
        label="Signals",
        help_text="Optional. The named fields callers may send with a request, as "
        "name:type pairs, e.g. tier:string, premium:bool. Types: "
        f"{', '.join(SIGNAL_TYPES)}. Empty keeps the model's current signals.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].widget.attrs.update(
            {"placeholder": "churn-scorer", "spellcheck": "false"}
        )
        self.fields["signals"].widget.attrs.update({"placeholder": "tier:string, premium:bool"})

    def clean_file(self):
        upload = self.cleaned_data["file"]
        # Refused before reading the file into memory; fleet.artifacts checks it again.
        if upload.size > settings.OUTPOST_MAX_MODEL_BYTES:
            raise forms.ValidationError(
                f"The file is {format_bytes(upload.size)}; models may be at most "
                f"{format_bytes(settings.OUTPOST_MAX_MODEL_BYTES)}."
            )
        return upload

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not MODEL_NAME.match(name):
            raise forms.ValidationError(
                "Use lowercase letters, digits and dashes, starting and ending with a letter "
                "or digit."
            )
        return name

    def clean_signals(self) -> dict[str, str] | None:
        return parse_signals(self.cleaned_data["signals"])

    def register(self, *, owner, uploaded_by) -> tuple[ModelVersion, bool] | None:
        """Register the upload (see register_model_version); None when the bytes are refused,
        with the reason added to the file field."""
        data = self.cleaned_data
        try:
            return register_model_version(
                owner=owner,
                name=data["name"],
                data=data["file"].read(),
                description=data["description"].strip(),
                signals=data["signals"],
                uploaded_by=uploaded_by,
            )
        except artifacts.InvalidArtifact as exc:
            self.add_error("file", as_sentence(str(exc)))
            return None


def registration_message(version: ModelVersion, created: bool) -> str:
    """What the person who uploaded hears back, on the version's page."""
    if created:
        return f"{version.model} is registered as version {version.version}; grading…"
    return f"These bytes were already version {version.version} of {version.model}."


# --- deployments (fleet.deployment_views) ------------------------------------------------------


class DeploymentForm(BootstrapForm):
    """Start rolling a graded version out, from the deployments pages. The rules of a rollout
    are fleet.rollout_actions.start_rollout's, as for the API; its refusal (a version too big
    for a class, a deployment of the model still under way) is shown on the form."""

    version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(status=VersionStatus.GRADED).select_related(
            "model__owner"
        ),
        empty_label="Choose a graded version",
        help_text="Only graded versions can be deployed.",
    )
    regions = forms.ModelMultipleChoiceField(
        queryset=Region.objects.all(),
        to_field_name="code",
        required=False,
        widget=forms.CheckboxSelectMultiple(attrs={"class": "form-check-input"}),
        help_text="None ticked: every region.",
    )
    node_classes = forms.ModelMultipleChoiceField(
        queryset=NodeClass.objects.all(),
        to_field_name="name",
        required=False,
        label="Node classes",
        widget=forms.CheckboxSelectMultiple(attrs={"class": "form-check-input"}),
        help_text="None ticked: every class.",
    )
    strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.CANARY)
    steps = forms.CharField(
        required=False,
        initial="5, 25, 100",
        help_text="Percentages of the traffic the new version takes, step by step, ending at "
        "100. A canary only.",
    )
    soak_s = forms.IntegerField(
        min_value=0,
        max_value=7 * 24 * 3600,
        initial=60,
        label="Soak (seconds)",
        help_text="How long each step runs before the health gates judge it.",
    )
    max_error_rate_increase = forms.FloatField(
        min_value=0,
        max_value=100,
        initial=2,
        label="Max error-rate increase (%)",
        help_text="Points of error rate the new version may add over the previous one.",
    )
    max_p95_ratio = forms.FloatField(
        min_value=1,
        initial=1.5,
        label="Max p95 ratio",
        help_text="How many times slower than the previous version it may be at p95.",
    )
    min_requests = forms.IntegerField(
        min_value=1,
        initial=50,
        label="Min requests",
        help_text="A step is judged once the new version has served this many requests in it.",
    )
    rollback_on_drift = forms.BooleanField(
        required=False,
        label="Roll back on drift",
        help_text="When the new version's outputs drift from the previous version's "
        "(sustained PSI above the threshold), roll back instead of only alerting. Needs a "
        "soak of a few minutes per step: drift is judged over whole minutes.",
    )

    def clean(self) -> dict:
        data = super().clean()
        if data.get("strategy") != Strategy.CANARY:
            data["steps"] = [100]
            return data
        try:
            data["steps"] = parse_steps(data.get("steps", ""))
        except ValueError as exc:
            self.add_error("steps", as_sentence(str(exc)))
        return data

    def start(self, *, acting_user) -> Deployment | None:
        """Start the rollout; None when start_rollout refuses, with its reason on the form."""
        data = self.cleaned_data
        try:
            return start_rollout(
                data["version"],
                regions=data["regions"],
                node_classes=data["node_classes"],
                strategy=data["strategy"],
                steps=data["steps"],
                soak_s=data["soak_s"],
                gates=Gates(
                    max_error_rate_increase=data["max_error_rate_increase"] / 100,
                    max_p95_ratio=data["max_p95_ratio"],
                    min_requests=data["min_requests"],
                ),
                rollback_on_drift=data["rollback_on_drift"],
                acting_user=acting_user,
            )
        except RolloutError as exc:
            # Verbatim: the message starts with the version's name ("acme/churn v2 needs …").
            self.add_error(None, str(exc))
            return None


class RollBackForm(BootstrapForm):
    """Why a deployment is rolled back by hand: the reason goes into its history."""

    reason = forms.CharField(
        max_length=300,  # DeploymentEvent.reason
        required=False,
        label="Reason",
        help_text="Kept in the deployment's history.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].widget.attrs["placeholder"] = "e.g. customer complaint"

    def reason_given(self) -> str:
        """The reason typed, or that it was rolled back by hand."""
        reason = self.cleaned_data["reason"].strip() if self.is_valid() else ""
        return reason or "rolled back by hand"


class PinForm(BootstrapForm):
    """Pin a tenant to one version of a deployment: the tenants that may call the model (its
    owner, or every tenant for a catalogue model), and the sides the deployment has."""

    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), to_field_name="slug")
    side = forms.ChoiceField(label="To", choices=PinSide.choices)

    def __init__(self, *args, deployment: Deployment, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        owner = deployment.version.model.owner
        tenants = Tenant.objects.order_by("slug")
        self.fields["tenant"].queryset = tenants.filter(pk=owner.pk) if owner else tenants
        self.fields["side"].choices = [
            (PinSide.NEW, f"v{deployment.version.version} (new)"),
            *(
                [(PinSide.OLD, f"v{deployment.previous.version} (previous)")]
                if deployment.previous_id
                else []
            ),
        ]


# --- tenant policies and fleet thresholds (fleet.policy_views) ----------------------------------
#
# These forms only parse what a browser sends; the rules are fleet.models.policies', applied by
# the actions of fleet.policies (the API's too), whose refusals are shown on the fields.


def add_validation_errors(
    form: forms.Form, exc: ValidationError, rename: dict[str, str] | None = None
) -> None:
    """Show an action's ValidationError on the form: each key on the field of that name (or
    `rename[key]`), marked invalid like BootstrapForm marks its own; the rest above the form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc.messages)
        return
    for key, messages in exc.message_dict.items():
        name = (rename or {}).get(key, key)
        if name in form.fields:
            form.add_error(name, messages)
            widget = form.fields[name].widget
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} is-invalid".strip()
            widget.attrs["aria-invalid"] = "true"
        else:
            form.add_error(None, messages)


class PolicyForm(BootstrapForm):
    """A tenant's policy, in its portal. `revision` is the one the page showed: saving over a
    change made meanwhile (by a colleague, an API key, an operator) is refused, not lost."""

    revision = forms.IntegerField(widget=forms.HiddenInput)
    privacy_mode = forms.ChoiceField(
        label="Privacy mode",
        choices=PrivacyMode.choices,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )
    fallback = forms.ChoiceField(
        label="Fallback",
        choices=Fallback.choices,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )
    quality = forms.ChoiceField(
        label="Quality objective",
        choices=QualityObjective.choices,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )
    max_spend_per_session = forms.CharField(
        required=False,
        label="Max spend per session",
        help_text="The most one session (X-Session-Id) may cost, e.g. 0.50. Empty: no limit.",
    )
    sensitive_fields = forms.CharField(
        required=False,
        label="Sensitive fields",
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="Request parameters the node tokenises before anything leaves it, e.g. "
        f"customer_id, email. Commas or spaces between them; at most {MAX_SENSITIVE_FIELDS}.",
    )
    on_budget_exhausted = forms.ChoiceField(
        label="When the monthly budget is spent",
        choices=BudgetAction.choices,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )

    # Each choice's meaning, shown under it (fleet.choices).
    CHOICE_HELP = {
        "privacy_mode": PRIVACY_HELP,
        "fallback": FALLBACK_HELP,
        "quality": QUALITY_HELP,
        "on_budget_exhausted": BUDGET_ACTION_HELP,
    }

    def __init__(self, *args, policy: TenantPolicy, **kwargs) -> None:
        values = policy.snapshot()
        kwargs.setdefault(
            "initial",
            {
                **values,
                "revision": policy.revision,
                "max_spend_per_session": values["max_spend_per_session"] or "",
                "sensitive_fields": ", ".join(values["sensitive_fields"]),
            },
        )
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.fields[
            "max_spend_per_session"
        ].label = f"Max spend per session ({policy.tenant.currency})"
        self.fields["max_spend_per_session"].widget.attrs.update(
            {"inputmode": "decimal", "placeholder": "no limit"}
        )
        self.fields["sensitive_fields"].widget.attrs["placeholder"] = "customer_id, email"

    @property
    def choice_groups(self) -> dict[str, tuple[forms.BoundField, list[tuple[object, str]]]]:
        """Each choice field with its radios and what each means, for the template."""
        return {
            name: (
                self[name],
                [(radio, helps.get(radio.data["value"], "")) for radio in self[name]],
            )
            for name, helps in self.CHOICE_HELP.items()
        }

    def clean_sensitive_fields(self) -> list[str]:
        return [
            name for name in re.split(r"[\s,;]+", self.cleaned_data["sensitive_fields"]) if name
        ]

    def save(self, *, actor) -> TenantPolicy | None:
        """Apply the edit as the member `actor`; None when refused, with the reasons on the
        form. A refusal because the policy changed meanwhile moves the form onto the current
        revision, so that saving again applies these values over it."""
        changes = {name: self.cleaned_data[name] for name in TENANT_FIELDS}
        try:
            return update_policy(
                self.policy.tenant,
                changes,
                actor=actor,
                actor_kind=PolicyActorKind.MEMBER,
                expected_revision=self.cleaned_data["revision"],
            )
        except StalePolicy as exc:
            self.data = self.data.copy()
            self.data["revision"] = str(exc.policy.revision)
            self.add_error(
                None,
                f"Someone changed the policy (now revision {exc.policy.revision}) while you "
                "were editing it. The current policy is shown; your values are still in the "
                "form: save again to apply them over it.",
            )
        except ValidationError as exc:
            add_validation_errors(self, exc)
        return None


class _OperatorPolicyFieldForm(BootstrapForm):
    """One operator-only field of a tenant's policy, saved through update_policy (which
    validates it and writes the audit row); `field` names it."""

    field: str

    def save(self, tenant: Tenant, *, actor) -> TenantPolicy | None:
        try:
            return update_policy(
                tenant,
                {self.field: self.cleaned_data[self.field]},
                actor=actor,
                actor_kind=PolicyActorKind.OPERATOR,
            )
        except ValidationError as exc:
            add_validation_errors(self, exc)
            return None


class FailClosedForm(_OperatorPolicyFieldForm):
    """An operator's per-tenant choice: nodes refuse the tenant's requests when the bundle
    they hold is older than this."""

    field = "fail_closed_after_s"
    fail_closed_after_s = forms.IntegerField(
        required=False,
        label="Fail closed after (s)",
        help_text="Empty: keep serving with an old bundle.",
    )


class RateLimitForm(_OperatorPolicyFieldForm):
    """An operator's per-tenant rate limit: each node admits at most this many of the tenant's
    requests per second, and answers 429 with Retry-After beyond it."""

    field = "rate_limit_per_s"
    rate_limit_per_s = forms.IntegerField(
        required=False,
        label="Rate limit (requests/s per node)",
        help_text="Empty: no limit.",
    )


class ResidencyZoneForm(_OperatorPolicyFieldForm):
    """An operator's binding of a tenant to a residency zone: its requests and models stay in
    the regions of that zone (routes never leave it; fleet.compliance reports what does)."""

    field = "residency_zone"
    residency_zone = forms.CharField(
        required=False,
        max_length=10,
        label="Residency zone",
        help_text="Empty: not bound to a zone.",
    )


class NodeClassThresholdsForm(BootstrapForm):
    """A node class's thermal envelope and cost ceilings per grade (fleet.policies.
    set_node_class_thresholds). Prefixed by the class, as the page shows one per class."""

    thermal_envelope_c = forms.CharField(
        required=False,
        label="Thermal envelope (°C)",
        help_text="Above it, a node of this class offloads instead of serving. Empty: no limit.",
    )

    def __init__(self, *args, node_class: NodeClass, **kwargs) -> None:
        kwargs.setdefault("prefix", f"class-{node_class.name}")
        envelope = node_class.thermal_envelope_c
        kwargs.setdefault(
            "initial",
            {
                "thermal_envelope_c": "" if envelope is None else format(envelope.normalize(), "f"),
                **{f"ceiling_{g}": node_class.cost_ceilings.get(g, "") for g in Grade.values},
            },
        )
        super().__init__(*args, **kwargs)
        self.node_class = node_class
        for grade in Grade.values:
            field = forms.CharField(
                required=False,
                label=f"Ceiling, {grade} ({node_class.currency} / 1,000)",
                widget=forms.TextInput(
                    attrs={"class": "form-control", "inputmode": "decimal", "placeholder": "none"}
                ),
            )
            self.fields[f"ceiling_{grade}"] = field
        self.fields["thermal_envelope_c"].widget.attrs.update(
            {"inputmode": "decimal", "placeholder": "no limit"}
        )

    def ceiling_fields(self) -> list[forms.BoundField]:
        return [self[f"ceiling_{grade}"] for grade in Grade.values]

    def save(self, *, actor) -> NodeClass | None:
        data = self.cleaned_data
        try:
            return set_node_class_thresholds(
                self.node_class,
                thermal_envelope_c=data["thermal_envelope_c"],
                cost_ceilings={g: data[f"ceiling_{g}"] for g in Grade.values},
                actor=actor,
            )
        except ValidationError as exc:
            add_validation_errors(
                self, exc, {f"cost_ceilings.{g}": f"ceiling_{g}" for g in Grade.values}
            )
            return None


class AcceleratorPoolForm(BootstrapForm):
    """A region's accelerator pool: its name and nodes. The boxes offered are the region's
    accelerator nodes (`candidates`); any node may be sent, and fleet.policies.
    set_accelerator_pool says why one that is not the region's accelerator is refused."""

    name = forms.CharField(max_length=100, label="Pool name")
    nodes = forms.ModelMultipleChoiceField(
        queryset=Node.objects.all(),
        to_field_name="uid",
        required=False,
        label="Nodes",
        widget=forms.CheckboxSelectMultiple(attrs={"class": "form-check-input"}),
        error_messages={"invalid_choice": "There is no node “%(value)s”."},
        help_text="The region's accelerator nodes; none ticked: the region has nowhere to "
        "offload to.",
    )

    fallback = forms.ModelChoiceField(
        queryset=Region.objects.all(),
        to_field_name="code",
        required=False,
        label="Falls back to",
        error_messages={"invalid_choice": "There is no region with that code."},
        help_text="The region whose pool takes what this one cannot, as far as each tenant's "
        "privacy and residency allow.",
    )

    def __init__(
        self,
        *args,
        region: Region,
        pool: AcceleratorPool | None,
        candidates: list[Node],
        regions: list[Region] | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("prefix", f"pool-{region.code}")
        kwargs.setdefault(
            "initial",
            {
                "name": pool.name if pool else f"{region.name} accelerators",
                "nodes": [node.uid for node in pool.nodes.all()] if pool else [],
                "fallback": pool.fallback.code if pool and pool.fallback_id else "",
            },
        )
        super().__init__(*args, **kwargs)
        self.region = region
        # What is offered, without a query: the validation reads the querysets.
        self.fields["nodes"].widget.choices = [(node.uid, node.name) for node in candidates]
        others = [r for r in regions or [] if r.pk != region.pk]
        self.fields["fallback"].widget.choices = [("", "nowhere")] + [
            (r.code, f"{r.code} (zone {r.residency_zone})") for r in others
        ]

    def save(self, *, actor) -> AcceleratorPool | None:
        try:
            return set_accelerator_pool(
                self.region,
                name=self.cleaned_data["name"],
                nodes=self.cleaned_data["nodes"],
                fallback=self.cleaned_data["fallback"],
                actor=actor,
            )
        except ValidationError as exc:
            add_validation_errors(self, exc)
            return None


# --- the policy plane (fleet.bundle_views, fleet.views, fleet.policy_views) --------------------


class ThermalSimulationForm(BootstrapForm):
    """Set or stop a node's simulated temperature, from the node page's card and from
    `POST /api/v1/fleet/nodes/{uid}/simulation`. The range is Node.simulate_temperature's."""

    temperature_c = forms.FloatField(
        required=False,
        label="Simulated temperature (°C)",
        widget=forms.NumberInput(attrs={"step": "0.5", "inputmode": "decimal"}),
        error_messages={"invalid": "Give the temperature as a number of °C, e.g. 85."},
    )
    # Set by the Stop button (and by a null temperature in the API).
    stop = forms.BooleanField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, node: Node, **kwargs) -> None:
        kwargs.setdefault("initial", {"temperature_c": node.simulated_temperature_c})
        super().__init__(*args, **kwargs)
        self.node = node
        self.fields["temperature_c"].widget.attrs.update(
            {"min": SIMULATED_MIN_C, "max": SIMULATED_MAX_C, "placeholder": "e.g. 85"}
        )

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("stop") and data.get("temperature_c") is None and not self.errors:
            self.add_error("temperature_c", "Give a temperature in °C, or stop the simulation.")
        return data

    @property
    def target(self) -> float | None:
        return None if self.cleaned_data["stop"] else self.cleaned_data["temperature_c"]

    def save(self, *, actor) -> bool | None:
        """Apply it; whether it changed anything, or None when refused (reasons on the form)."""
        try:
            with transaction.atomic():
                before = self.node.simulated_temperature_c
                changed = self.node.simulate_temperature(self.target, actor=actor)
                if changed:
                    audit.record(
                        "thermal_simulation.changed",
                        category=AuditCategory.POLICY,
                        actor=actor,
                        subject=self.node,
                        before={"simulated_temperature_c": before},
                        after={"simulated_temperature_c": self.node.simulated_temperature_c},
                    )
                return changed
        except ValidationError as exc:
            add_validation_errors(self, ValidationError({"temperature_c": exc.messages}))
            return None


class BundleCompareForm(BootstrapForm):
    """A revision page's ?against=N: the other revision to diff this one against."""

    against = forms.IntegerField(
        min_value=1,
        label="Compare with revision",
        error_messages={"invalid": "A revision is a whole number, e.g. 12."},
    )

    def clean_against(self) -> PolicyBundleRecord:
        revision = self.cleaned_data["against"]
        record = PolicyBundleRecord.objects.filter(revision=revision).first()
        if record is None:
            raise forms.ValidationError(f"There is no revision {revision}.")
        return record


MODEL_LOADED_CHOICES = [
    ("", "As the node reports"),
    ("yes", "Loaded and ready"),
    ("no", "Not loaded"),
]


class SimulatorForm(BootstrapForm):
    """What to try in the policy simulator (fleet.simulator), on its page (a GET form, so a
    scenario can be shared as a link) and in `POST /api/v1/policy/simulate`. Every node field
    left empty takes what the node last reported; `bundle` is the newest one, whose tenants
    and models the tenant and model fields suggest (any text may be tried)."""

    tenant = forms.CharField(
        max_length=50,
        help_text="A tenant's slug. One the bundle does not know is refused, as on a node.",
    )
    model = forms.CharField(
        max_length=200,
        label="Model",
        help_text="The name it is served under on the nodes (a tenant's models: tenant.name).",
    )
    node = forms.ModelChoiceField(
        queryset=Node.objects.select_related("region", "node_class").order_by(
            "region__code", "name"
        ),
        to_field_name="uid",
        empty_label="Choose a node",
        error_messages={"invalid_choice": "There is no node “%(value)s”."},
    )
    grade = forms.ChoiceField(
        required=False,
        choices=[("", "As the bundle grades the model"), *Grade.choices],
        help_text="Needed for a model the bundle does not grade.",
    )
    temperature_c = forms.FloatField(
        required=False,
        min_value=-50,
        max_value=200,
        label="Temperature (°C)",
        help_text="Empty: the node's last reported temperature.",
    )
    trend_c_per_min = forms.FloatField(
        required=False,
        min_value=-100,
        max_value=100,
        label="Temperature trend (°C per minute)",
        help_text="Rising temperatures shed best-effort traffic before the envelope is reached.",
    )
    queue_depth = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=10**6,
        label="Queue depth",
        help_text="Empty: the node's last reported queue.",
    )
    queue_limit = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**6,
        label="Queue limit",
        help_text=f"Empty: the agent's default, {simulator.DEFAULT_QUEUE_LIMIT}.",
    )
    model_loaded = forms.ChoiceField(
        required=False,
        choices=MODEL_LOADED_CHOICES,
        label="Model on this node",
        help_text="As the node reports: from the models its last heartbeat listed as ready.",
    )
    cost_per_1000 = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=21,
        decimal_places=9,
        label="Cost per 1,000 inferences",
        help_text="What serving costs this node, in its class's currency. Empty: computed from "
        "the class's hourly cost and the node's measured run time, when it has one.",
    )
    session_spent = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=21,
        decimal_places=9,
        label="Session spent so far",
        help_text="In the tenant's currency; against its max spend per session.",
    )
    bundle_age_s = forms.FloatField(
        required=False,
        min_value=0,
        max_value=10**8,
        label="Bundle age (s)",
        help_text="Since the node last knew its bundle current; against fail-closed limits.",
    )

    INITIAL = {"trend_c_per_min": 0, "session_spent": "0", "bundle_age_s": 0}

    def __init__(self, *args, bundle: PolicyBundle, **kwargs) -> None:
        kwargs["initial"] = {**self.INITIAL, **kwargs.get("initial", {})}
        super().__init__(*args, **kwargs)
        self.bundle = bundle
        self.tenant_suggestions = sorted(t.slug for t in bundle.tenants)
        self.model_suggestions = simulator.served_models(bundle)
        self.fields["node"].label_from_instance = lambda node: (
            f"{node.name} · {node.region.code} · {node.node_class.name}"
        )
        attrs = {
            "tenant": {"list": "simulator-tenants", "spellcheck": "false", "autocomplete": "off"},
            "model": {"list": "simulator-models", "spellcheck": "false", "autocomplete": "off"},
            "temperature_c": {"placeholder": "reported", "step": "any"},
            "trend_c_per_min": {"step": "any"},
            "queue_depth": {"placeholder": "reported"},
            "queue_limit": {"placeholder": str(simulator.DEFAULT_QUEUE_LIMIT)},
            "cost_per_1000": {"placeholder": "as the node computes it", "step": "any"},
            "session_spent": {"step": "any"},
            "bundle_age_s": {"step": "any"},
        }
        for name, extra in attrs.items():
            self.fields[name].widget.attrs.update(extra)

    def clean(self) -> dict:
        data = super().clean()
        model, grade = data.get("model"), data.get("grade")
        if model and not grade and simulator.grade_of(self.bundle, model) is None:
            self.add_error(
                "grade",
                f"Bundle revision {self.bundle.revision} does not grade “{model}” (no graded "
                "version is served under that name): choose the grade to try it with.",
            )
        return data

    def scenario(self) -> simulator.Scenario:
        data = self.cleaned_data
        loaded = data["model_loaded"]
        return simulator.Scenario(
            tenant=data["tenant"],
            model=data["model"],
            node=data["node"],
            grade=data["grade"] or None,
            temperature_c=data["temperature_c"],
            trend_c_per_min=data["trend_c_per_min"] or 0.0,
            queue_depth=data["queue_depth"],
            queue_limit=data["queue_limit"],
            model_loaded=None if not loaded else loaded == "yes",
            cost_per_1000=data["cost_per_1000"],
            session_spent=data["session_spent"] or Decimal(0),
            bundle_age_s=data["bundle_age_s"] or 0.0,
        )
