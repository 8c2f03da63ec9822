"""Tenant policies and the operator's thresholds: what the policy bundle compiler reads.

A tenant's policy (privacy, fallback, quality objective, spend, sensitive fields, what a spent
budget does) is one `TenantPolicy` row; every change of it is a `PolicyChange` row written in
the same transaction by fleet.policies.update_policy, the only writer. The operators' settings
are per node class (fleet.models.nodes.NodeClass: thermal envelope, cost ceilings per grade)
and per region (`AcceleratorPool`); their changes are `FleetSettingChange` rows.

The rules of a valid policy are `clean_policy`, a plain function over plain values, so the
portal's form, the API and the model's `clean()` apply exactly the same ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models import ApiKey, Tenant
from fleet.choices import (
    BudgetAction,
    Fallback,
    Grade,
    NodeClassKind,
    PolicyActorKind,
    PrivacyMode,
    QualityObjective,
    SettingKind,
)

# The OIP `parameters` names a tenant may have tokenised: identifiers, as most SDKs name them.
SENSITIVE_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_SENSITIVE_FIELDS = 50
# Max spend per session, in the tenant's currency: sub-cent caps are meaningful (an inference
# costs a fraction of a cent), so four places, as TenantPolicy.max_spend_per_session stores.
SPEND_PLACES = 4
SPEND_LIMIT = Decimal(10) ** 8
# Fail closed: shorter than a minute would refuse traffic between two ordinary bundle pushes.
FAIL_CLOSED_MIN_S = 60
FAIL_CLOSED_MAX_S = 30 * 24 * 3600
# Requests per second one node admits for a tenant (inference.enforcement.RateLimiter); above
# the maximum it is a typo, not a limit: no node serves that many.
RATE_LIMIT_MIN_PER_S = 1
RATE_LIMIT_MAX_PER_S = 100_000
# As long as Region.residency_zone may be.
RESIDENCY_ZONE_MAX = 10
# A node class's thermal envelope, °C: outside this range it is a typo, not a limit.
THERMAL_MIN_C = Decimal(20)
THERMAL_MAX_C = Decimal(130)
# Cost ceilings per 1,000 inferences, in the node class's currency.
CEILING_PLACES = 6
CEILING_LIMIT = Decimal(10) ** 6

# What a tenant edits (portal, API); what only an operator sets.
TENANT_FIELDS = (
    "privacy_mode",
    "fallback",
    "quality",
    "max_spend_per_session",
    "sensitive_fields",
    "on_budget_exhausted",
)
OPERATOR_FIELDS = ("fail_closed_after_s", "rate_limit_per_s", "residency_zone")
POLICY_FIELDS = TENANT_FIELDS + OPERATOR_FIELDS

POLICY_DEFAULTS: dict[str, object] = {
    "privacy_mode": PrivacyMode.ANY,
    "fallback": Fallback.REGIONAL,
    "quality": QualityObjective.BEST_EFFORT,
    "max_spend_per_session": None,
    "sensitive_fields": [],
    "on_budget_exhausted": BudgetAction.ALERT,
    "fail_closed_after_s": None,
    "rate_limit_per_s": None,
    "residency_zone": "",
}

LOCAL_ONLY_CANNOT_OFFLOAD = (
    "A local-only tenant cannot be offloaded: privacy mode local_only with fallback regional "
    "is contradictory. Choose the fallback reject, or another privacy mode."
)


# --- the rules, as pure functions ------------------------------------------------------------


def _shown(value: object) -> str:
    """A value as the person or program wrote it, for a message."""
    if isinstance(value, str):
        return f"“{value}”"
    return json.dumps(value, default=str)


def _choice(value: object, choices: type[models.TextChoices], what: str) -> str:
    if isinstance(value, str) and value in choices.values:
        return value
    options = list(choices.values)
    listed = ", ".join(options[:-1]) + f" or {options[-1]}"
    raise ValidationError(f"{_shown(value)} is not a {what}: choose {listed}.")


def parse_decimal(value: object, *, places: int, limit: Decimal, example: str) -> Decimal | None:
    """A non-negative amount from a form's text or a JSON number or string; None when empty.
    JSON numbers arrive as floats: their shortest repr is what the program wrote (0.5, not the
    binary fraction)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValidationError(f"{_shown(value)} is not an amount: write it like {example}.")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValidationError(
            f"{_shown(value)} is not an amount: write it like {example}."
        ) from None
    if not amount.is_finite():
        raise ValidationError(f"{_shown(value)} is not an amount: write it like {example}.")
    if amount < 0:
        raise ValidationError(f"{text} is negative; an amount is 0 or more.")
    if amount.is_zero():
        return Decimal(0)  # not -0
    if -amount.normalize().as_tuple().exponent > places:  # 72.50 has one place that counts
        raise ValidationError(f"{text} has more than {places} decimal places.")
    if amount >= limit:
        raise ValidationError(f"{text} is too large: at most {limit - 1:,}.")
    return amount


def format_amount(amount: Decimal | None) -> str | None:
    """An amount as the bundle, the API and the history write it: no trailing zeros beyond
    the cents ("0.50", "0.0025", "80.00")."""
    if amount is None:
        return None
    whole, _, fraction = format(amount.normalize(), "f").partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _sensitive_fields(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValidationError('Give a list of field names, e.g. ["customer_id", "email"].')
    problems = []
    bad = [
        name for name in value if not (isinstance(name, str) and SENSITIVE_FIELD_NAME.match(name))
    ]
    for name in bad[:5]:
        problems.append(
            f"{_shown(name)} is not a field name: letters, digits and underscores, not starting "
            "with a digit, at most 64 characters."
        )
    if len(bad) > 5:
        problems.append(f"… and {len(bad) - 5} more names like these.")
    names = [name for name in value if isinstance(name, str)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"“{name}” is named more than once.")
    if len(value) > MAX_SENSITIVE_FIELDS:
        problems.append(f"At most {MAX_SENSITIVE_FIELDS} sensitive fields; {len(value)} given.")
    if problems:
        raise ValidationError(problems)
    # A set, in effect: kept sorted so that the bundle is canonical and reordering is no change.
    return sorted(names)


def _fail_closed_after_s(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{_shown(value)} is not a whole number of seconds.")
    if value < FAIL_CLOSED_MIN_S:
        raise ValidationError(
            f"At least {FAIL_CLOSED_MIN_S} seconds: a shorter staleness would refuse traffic "
            "between two ordinary bundle pushes. Leave it empty to never fail closed."
        )
    if value > FAIL_CLOSED_MAX_S:
        raise ValidationError(f"At most {FAIL_CLOSED_MAX_S} seconds (30 days).")
    return value


def _rate_limit_per_s(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{_shown(value)} is not a whole number of requests per second.")
    if value < RATE_LIMIT_MIN_PER_S:
        raise ValidationError(
            f"At least {RATE_LIMIT_MIN_PER_S} request per second; leave it empty for no limit."
        )
    if value > RATE_LIMIT_MAX_PER_S:
        raise ValidationError(
            f"At most {RATE_LIMIT_MAX_PER_S} requests per second; leave it empty for no limit."
        )
    return value


def _residency_zone(value: object, zones: Collection[str] | None) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{_shown(value)} is not a residency zone: give a code like EU.")
    zone = value.strip()
    if len(zone) > RESIDENCY_ZONE_MAX:
        raise ValidationError(f"At most {RESIDENCY_ZONE_MAX} characters, as regions write zones.")
    if zone and zones is not None and zone not in zones:
        known = sorted(zones)
        choose = f"choose {', '.join(known)}, or" if known else "no region has a zone yet:"
        raise ValidationError(
            f"No region is in zone {_shown(zone)}: {choose} leave it empty for no binding."
        )
    return zone


def clean_policy(
    values: Mapping[str, object], *, zones: Collection[str] | None = None
) -> dict[str, object]:
    """Check a whole policy (a value for every name in POLICY_FIELDS) and return it cleaned:
    choices as their values, the max spend as a Decimal or None, the sensitive fields as a
    sorted list, the residency zone as a string ("" when not bound). Raises ValidationError
    with the messages per field; the one rule across fields (local_only never falls back to
    regional) is reported on `fallback`. `zones` are the regions' residency zones: given, a
    binding must name one of them (the form and the API pass them; a model's clean() cannot)."""
    cleaners = {
        "privacy_mode": lambda v: _choice(v, PrivacyMode, "privacy mode"),
        "fallback": lambda v: _choice(v, Fallback, "fallback"),
        "quality": lambda v: _choice(v, QualityObjective, "quality objective"),
        "max_spend_per_session": lambda v: parse_decimal(
            v, places=SPEND_PLACES, limit=SPEND_LIMIT, example="0.50"
        ),
        "sensitive_fields": _sensitive_fields,
        "on_budget_exhausted": lambda v: _choice(v, BudgetAction, "budget action"),
        "fail_closed_after_s": _fail_closed_after_s,
        "rate_limit_per_s": _rate_limit_per_s,
        "residency_zone": lambda v: _residency_zone(v, zones),
    }
    cleaned: dict[str, object] = {}
    errors: dict[str, list[str]] = {}
    for name, clean in cleaners.items():
        try:
            cleaned[name] = clean(values[name])
        except ValidationError as exc:
            errors[name] = exc.messages
    if (
        cleaned.get("privacy_mode") == PrivacyMode.LOCAL_ONLY
        and cleaned.get("fallback") == Fallback.REGIONAL
    ):
        errors.setdefault("fallback", []).append(LOCAL_ONLY_CANNOT_OFFLOAD)
    if errors:
        raise ValidationError(errors)
    return cleaned


def summarise_change(before: Mapping[str, object], after: Mapping[str, object]) -> str:
    """What changed between two snapshots, in a line:
    "privacy_mode any → in_region; max_spend_per_session — → 0.50; sensitive_fields +email"."""

    def shown(value: object) -> str:
        return "—" if value is None or value in ("", [], {}) else str(value)

    parts = []
    for name in dict.fromkeys([*before, *after]):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list):
            changes = [f"+{x}" for x in new if x not in old] + [
                f"−{x}" for x in old if x not in new
            ]
            parts.append(f"{name} {' '.join(changes)}")
        elif isinstance(old, dict) or isinstance(new, dict):
            old, new = old or {}, new or {}
            for key in dict.fromkeys([*old, *new]):
                if old.get(key) != new.get(key):
                    parts.append(f"{name}.{key} {shown(old.get(key))} → {shown(new.get(key))}")
        else:
            parts.append(f"{name} {shown(old)} → {shown(new)}")
    return "; ".join(parts)


def clean_thermal_envelope(value: object) -> Decimal | None:
    """A node class's thermal envelope in °C, one decimal; None (empty) means no limit."""
    temperature = parse_decimal(value, places=1, limit=Decimal(1000), example="80")
    if temperature is not None and not THERMAL_MIN_C <= temperature <= THERMAL_MAX_C:
        raise ValidationError(
            f"{format(temperature, 'f')} °C is outside {THERMAL_MIN_C}–{THERMAL_MAX_C} °C; leave "
            "it empty for no limit."
        )
    return temperature


def clean_cost_ceilings(value: object) -> dict[str, str]:
    """A node class's cost ceilings: grade → the most 1,000 inferences of that grade may cost
    to serve on the class, as decimal strings ({"tiny": "0.05"}). A grade left out, or given
    as null or "", has no ceiling. Raises ValidationError with messages per grade."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError('Cost ceilings are grade → amount, e.g. {"tiny": "0.05"}.')
    errors: dict[str, list[str]] = {}
    amounts: dict[str, Decimal] = {}
    for grade, amount in value.items():
        if grade not in Grade.values:
            errors[str(grade)] = [f"{_shown(grade)} is not a grade: tiny, medium or large."]
            continue
        try:
            parsed = parse_decimal(
                amount, places=CEILING_PLACES, limit=CEILING_LIMIT, example="0.05"
            )
        except ValidationError as exc:
            errors[grade] = exc.messages
            continue
        if parsed is not None:
            amounts[grade] = parsed
    if errors:
        raise ValidationError(errors)
    return {grade: format_amount(amounts[grade]) for grade in Grade.values if grade in amounts}


def pool_node_problems(region_code: str, nodes: Iterable) -> list[str]:
    """Why nodes cannot be in a region's accelerator pool: each must be an accelerator node
    of that region. Reads `node.region` and `node.node_class`: select them with the nodes."""
    problems = []
    for node in nodes:
        if node.node_class.name != NodeClassKind.ACCELERATOR:
            problems.append(
                f"{node.name} is a {node.node_class.name} node; a pool takes accelerator "
                "nodes only."
            )
        elif node.region.code != region_code:
            problems.append(
                f"{node.name} is in {node.region.code}; the {region_code} pool takes "
                f"{region_code}'s accelerators only."
            )
    return problems


# --- the models -------------------------------------------------------------------------------


class TenantPolicyQuerySet(models.QuerySet["TenantPolicy"]):
    def for_tenant(self, tenant: Tenant) -> TenantPolicy:
        """The tenant's policy, created with the defaults the first time it is asked for."""
        return self.get_or_create(tenant=tenant)[0]

    def create_missing(self) -> int:
        """Give every tenant without a policy its default one, in one insert; how many."""
        missing = list(Tenant.objects.filter(policy__isnull=True).values_list("pk", flat=True))
        if missing:
            self.bulk_create([TenantPolicy(tenant_id=pk) for pk in missing], ignore_conflicts=True)
        return len(missing)


class TenantPolicy(models.Model):
    """How a tenant's requests are routed and limited; compiled into the policy bundle.

    Change it through fleet.policies.update_policy only: it validates, bumps `revision` and
    writes the PolicyChange in the same transaction.
    """

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="policy")
    privacy_mode = models.CharField(
        max_length=12, choices=PrivacyMode.choices, default=PrivacyMode.ANY
    )
    fallback = models.CharField(max_length=10, choices=Fallback.choices, default=Fallback.REGIONAL)
    quality = models.CharField(
        max_length=12,
        choices=QualityObjective.choices,
        default=QualityObjective.BEST_EFFORT,
        verbose_name="quality objective",
    )
    max_spend_per_session = models.DecimalField(
        max_digits=12,
        decimal_places=SPEND_PLACES,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="In the tenant's currency; empty for no limit",
    )
    sensitive_fields = models.JSONField(
        default=list, blank=True, help_text="OIP parameter names the node tokenises"
    )
    on_budget_exhausted = models.CharField(
        max_length=10, choices=BudgetAction.choices, default=BudgetAction.ALERT
    )
    # Operators only: nodes refuse this tenant's requests when the bundle they hold is older.
    fail_closed_after_s = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(FAIL_CLOSED_MIN_S), MaxValueValidator(FAIL_CLOSED_MAX_S)],
        verbose_name="fail closed after (s)",
    )
    # Operators only: each node admits at most this many of the tenant's requests per second
    # and answers 429 with Retry-After beyond it. Empty: no limit.
    rate_limit_per_s = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(RATE_LIMIT_MIN_PER_S),
            MaxValueValidator(RATE_LIMIT_MAX_PER_S),
        ],
        verbose_name="rate limit (requests/s per node)",
    )
    # Operators only: the residency zone (a Region.residency_zone, e.g. EU) the tenant's
    # requests and models must stay in; routes out of it are never compiled (fleet.bundles)
    # and fleet.compliance reports anything else that leaves it. Empty: not bound.
    residency_zone = models.CharField(
        max_length=RESIDENCY_ZONE_MAX,
        blank=True,
        default="",
        help_text="Empty: not bound to a zone",
    )
    revision = models.PositiveIntegerField(default=1, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = TenantPolicyQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__slug"]
        verbose_name_plural = "tenant policies"
        constraints = [
            models.CheckConstraint(
                condition=~Q(privacy_mode=PrivacyMode.LOCAL_ONLY, fallback=Fallback.REGIONAL),
                name="local_only_never_offloaded",
            ),
            models.CheckConstraint(
                condition=Q(max_spend_per_session__isnull=True) | Q(max_spend_per_session__gte=0),
                name="max_spend_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug} policy r{self.revision}"

    def values(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in POLICY_FIELDS}

    def snapshot(self) -> dict[str, object]:
        """The policy as JSON-safe values: the history's before/after, the API's answer."""
        values = self.values()
        values["max_spend_per_session"] = format_amount(self.max_spend_per_session)
        values["sensitive_fields"] = list(self.sensitive_fields)
        return values

    def clean(self) -> None:
        clean_policy(self.values())


class PolicyChange(models.Model):
    """Append-only history of a tenant's policy: one row per change, with the whole policy
    before and after it. Written by fleet.policies.update_policy only."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    revision = models.PositiveIntegerField(help_text="The policy's revision after this change")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_kind = models.CharField(max_length=10, choices=PolicyActorKind.choices)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The key's visible prefix, kept should the key row ever be deleted.
    api_key_prefix = models.CharField(max_length=12, blank=True)
    before = models.JSONField()
    after = models.JSONField()
    summary = models.TextField()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["tenant", "-at"])]

    def __str__(self) -> str:
        return f"{self.tenant_id} r{self.revision}: {self.summary}"


class AcceleratorPool(models.Model):
    """A region's accelerator nodes that take the requests other nodes of the region offload
    (fallback `regional`, quality `high`). One pool per region; a pool without nodes means
    the region has nowhere to offload to."""

    region = models.OneToOneField(
        "fleet.Region", on_delete=models.CASCADE, related_name="accelerator_pool"
    )
    name = models.CharField(max_length=100)
    nodes = models.ManyToManyField(
        "fleet.Node",
        blank=True,
        related_name="accelerator_pools",
        limit_choices_to={"node_class__name": NodeClassKind.ACCELERATOR},
        help_text="Accelerator nodes of the pool's region",
    )
    # Where a request goes when this pool cannot take it: the next region's pool, as far as
    # the tenant's privacy and residency allow (fleet.bundles cuts the chain per tenant).
    fallback = models.ForeignKey(
        "fleet.Region",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The region whose pool takes what this one cannot; empty: none",
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["region__code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.region})"


class FleetSettingChange(models.Model):
    """Append-only history of the operators' fleet settings: a node class's thresholds, a
    region's accelerator pool (fleet.policies writes them) or a node's simulated temperature
    (Node.simulate_temperature), before and after."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    kind = models.CharField(max_length=20, choices=SettingKind.choices)
    subject = models.CharField(
        max_length=100, help_text="The node class, the pool's region or the node"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    before = models.JSONField()
    after = models.JSONField()
    summary = models.TextField()

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.summary}"
