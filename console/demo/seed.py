"""The demo's data: who logs in, where the fleet is, what its machines cost, who the tenants are,
what inference costs (the price book), and the enrollment tokens of demo nodes that have not
joined yet.

Seeding is idempotent: it creates what is missing and never overwrites what an operator may
have changed since (a node class's cost, a tenant's name). The exceptions are the demo logins,
whose flags, groups, memberships and passwords are put back so the logins that `manage.py demo`
prints always work. A second run with nothing missing changes nothing (tests/console/
test_demo_seed.py holds it to that).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from billing.choices import MemberRole
from billing.models import ApiKey, Membership, Price, Tenant
from billing.roles import AUDITOR_GROUP, FINANCE_GROUP
from console.demo.billing_seed import seed_billing, seed_usage_history
from console.demo.compliance_seed import seed_compliance
from fleet.models import EnrollmentToken, Node, NodeClass, Region
from inference.agent import IDENTITY_FILE, IdentityError, load_identity
from inference.protocol import hash_secret

GiB = 2**30
LOOPBACK = "127.0.0.1"
FIRST_NODE_PORT = 8101


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str
    email: str
    is_staff: bool = False
    is_superuser: bool = False
    groups: tuple[str, ...] = ()
    # (tenant slug, role) pairs.
    memberships: tuple[tuple[str, str], ...] = ()


LOGINS = (
    DemoLogin(
        "operator",
        "operator",
        "operator (staff, Django admin)",
        "operator@outpost.example",
        is_staff=True,
        is_superuser=True,
    ),
    DemoLogin("finance", "finance", "finance", "finance@outpost.example", groups=(FINANCE_GROUP,)),
    DemoLogin(
        "auditor",
        "auditor",
        "auditor: compliance findings and the audit log, read-only",
        "audit@outpost.example",
        groups=(AUDITOR_GROUP,),
    ),
    DemoLogin(
        "acme",
        "acme",
        "owner of tenant acme",
        "owner@acme.example",
        memberships=(("acme", MemberRole.OWNER),),
    ),
)

REGIONS = (
    {"code": "eu-west", "name": "Frankfurt", "jurisdiction": "DE", "residency_zone": "EU"},
    {
        "code": "us-east",
        "name": "Ashburn, Virginia",
        "jurisdiction": "US-VA",
        "residency_zone": "US",
    },
)

# Where the cost figures come from: approximate 2024 list prices (EUR, without VAT) and
# wall-power figures from datasheets and published reviews, rounded. They are demo data; an
# operator edits them in the admin and seeding never puts them back.
# - nano: a fanless mini PC of the Intel NUC 13 Pro class (Core i5-1340P, 16 GB RAM, 512 GB
#   SSD), about €750, drawing ~6 W idle and ~45 W flat out at the wall; a Jetson Orin NX box
#   costs and draws about the same. Edge boxes are written off over 3 years.
# - standard: a 1U single-socket server (Dell PowerEdge R660xs / Supermicro 1U class: Xeon
#   Silver 4410Y, 12 cores, 128 GB RAM, two NVMe drives), about €6,500, ~110 W idle and ~350 W
#   at peak per the vendors' power calculators; servers are written off over 5 years.
# - accelerator: a 2U server with two NVIDIA L40S (48 GB, 350 W board power each), two Xeon
#   Silver and 512 GB RAM, about €38,000, ~300 W idle and ~1,400 W at peak; GPUs are written
#   off over 3 years because each generation makes the last one uneconomic.
# - energy: €0.25/kWh, the EU non-household price (about €0.20/kWh before VAT in 2024,
#   Eurostat nrg_pc_205) times a PUE of about 1.25 for small edge sites. The cost model keeps
#   one price per class, not per region, so the US nodes are priced the same.
# - expected utilisation: what a small provider plans for: edge boxes wait for local traffic
#   most of the day (30 %), shared servers run at half load, GPU servers are kept busy (60 %)
#   because idle GPUs are the most expensive thing in the building.
NODE_CLASSES = (
    {
        "name": "nano",
        "description": "Fanless edge box (NUC 13 Pro / Jetson Orin NX class), CPU only",
        "capex": Decimal("750.00"),
        "currency": "EUR",
        "amortisation_months": 36,
        "idle_watts": Decimal("6.0"),
        "peak_watts": Decimal("45.0"),
        "energy_price_per_kwh": Decimal("0.2500"),
        "expected_utilisation": Decimal("0.300"),
        "memory_bytes": 16 * GiB,
        "has_gpu": False,
    },
    {
        "name": "standard",
        "description": "1U single-socket server (Xeon Silver, 12 cores, 128 GB)",
        "capex": Decimal("6500.00"),
        "currency": "EUR",
        "amortisation_months": 60,
        "idle_watts": Decimal("110.0"),
        "peak_watts": Decimal("350.0"),
        "energy_price_per_kwh": Decimal("0.2500"),
        "expected_utilisation": Decimal("0.500"),
        "memory_bytes": 128 * GiB,
        "has_gpu": False,
    },
    {
        "name": "accelerator",
        "description": "2U GPU server, 2 × NVIDIA L40S 48 GB, 512 GB",
        "capex": Decimal("38000.00"),
        "currency": "EUR",
        "amortisation_months": 36,
        "idle_watts": Decimal("300.0"),
        "peak_watts": Decimal("1400.0"),
        "energy_price_per_kwh": Decimal("0.2500"),
        "expected_utilisation": Decimal("0.600"),
        "memory_bytes": 512 * GiB,
        "has_gpu": True,
    },
)

# A tenant's band, budget and tax jurisdiction are seeded in console/demo/billing_seed.py.
TENANTS = (
    {"slug": "acme", "name": "Acme Analytics", "time_zone": "Europe/Berlin", "currency": "EUR"},
    {
        "slug": "globex",
        "name": "Globex Logistics",
        "time_zone": "America/New_York",
        "currency": "USD",
    },
    {"slug": "nakamura", "name": "Nakamura Robotics", "time_zone": "Asia/Tokyo", "currency": "JPY"},
)

# The demo's price book, EUR per 1,000 inferences by (grade, serving). Illustrative figures,
# not a market survey: they keep the shape a provider would want (a large model costs ~40× a
# tiny one, like its hardware; regional serving is ~50 % dearer than local, the premium a
# quality credit returns). Operators change them at /finance/prices/.
PRICES = {
    ("tiny", "local"): Decimal("0.05"),
    ("tiny", "regional"): Decimal("0.08"),
    ("medium", "local"): Decimal("0.40"),
    ("medium", "regional"): Decimal("0.60"),
    ("large", "local"): Decimal("2.00"),
    ("large", "regional"): Decimal("3.00"),
}
PRICE_CURRENCY = "EUR"
# The same prices for tenants billed in dollars (globex) and yen (nakamura), at about $1.10
# and ¥160 to the euro, rounded: a node prices each request in its tenant's currency.
PRICES_USD = {
    ("tiny", "local"): Decimal("0.06"),
    ("tiny", "regional"): Decimal("0.09"),
    ("medium", "local"): Decimal("0.45"),
    ("medium", "regional"): Decimal("0.65"),
    ("large", "local"): Decimal("2.20"),
    ("large", "regional"): Decimal("3.30"),
}
PRICES_JPY = {
    ("tiny", "local"): Decimal("8"),
    ("tiny", "regional"): Decimal("13"),
    ("medium", "local"): Decimal("64"),
    ("medium", "regional"): Decimal("96"),
    ("large", "local"): Decimal("320"),
    ("large", "regional"): Decimal("480"),
}
# One scheduled change from the 1st of next month, so the demo shows versioning.
SCHEDULED_PRICE = (("large", "regional"), Decimal("2.70"), "demo: more regional GPU capacity")


# The order demo nodes are added in: the first four are two per region with mixed classes;
# beyond that (`manage.py demo --nodes N`) the pattern repeats.
# Two demo nodes run the way compliance must catch (console/demo/compliance_seed.py): one
# without tokenisation (nakamura declares sensitive fields), one frozen on the bundle it had
# when it started (stale policy once the freeze outlives OUTPOST_POLICY_MAX_STALENESS_S).
NODE_AGENT_FLAGS = {
    "us-east-nano-1": ("--no-tokenisation",),
    "us-east-standard-1": ("--hold-bundle",),
}
NODE_PATTERN = (
    ("eu-west", "nano"),
    ("eu-west", "accelerator"),
    ("us-east", "standard"),
    ("us-east", "nano"),
    ("eu-west", "standard"),
    ("us-east", "accelerator"),
)


# Which demo models a node of each class serves, by the grade word in the model's name: a grade
# maps to the smallest class that serves it within its SLO (DESIGN.md §3), and bigger classes
# serve the smaller grades too. Models without a grade word go everywhere.
CLASS_GRADES = {
    "nano": ("tiny",),
    "standard": ("tiny", "medium"),
    "accelerator": ("tiny", "medium", "large"),
}
ALL_GRADES = ("tiny", "medium", "large")


def class_serves(node_class: str, model_name: str) -> bool:
    grades = [g for g in ALL_GRADES if g in model_name]
    return not grades or any(g in CLASS_GRADES.get(node_class, ALL_GRADES) for g in grades)


@dataclass(frozen=True)
class DemoNode:
    name: str
    region: str
    node_class: str
    port: int

    @property
    def agent_flags(self) -> tuple[str, ...]:
        return NODE_AGENT_FLAGS.get(self.name, ())

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def demo_nodes(count: int, *, first_port: int = FIRST_NODE_PORT) -> list[DemoNode]:
    """The first `count` demo nodes, named `<region>-<class>-<n>`, on consecutive ports."""
    seen: dict[tuple[str, str], int] = {}
    nodes = []
    for i in range(count):
        region, node_class = NODE_PATTERN[i % len(NODE_PATTERN)]
        seen[region, node_class] = seen.get((region, node_class), 0) + 1
        nodes.append(
            DemoNode(
                name=f"{region}-{node_class}-{seen[region, node_class]}",
                region=region,
                node_class=node_class,
                port=first_port + i,
            )
        )
    return nodes


@dataclass
class SeedReport:
    """What a seeding run changed, in words, and the secrets the demo needs to start nodes."""

    changes: list[str] = field(default_factory=list)
    # Node name → enrollment secret for nodes that still have to enroll; None when enrolled.
    enrollment: dict[str, str | None] = field(default_factory=dict)

    def note(self, message: str) -> None:
        self.changes.append(message)


# --- the agent's state directory --------------------------------------------------------------


def agent_node_uid(state_dir: Path) -> str | None:
    """The uid of the node whose identity the agent keeps in `state_dir`, if it has a valid one."""
    try:
        identity = load_identity(state_dir)
    except IdentityError:
        return None
    return identity.node_uid if identity is not None else None


# --- seeding ----------------------------------------------------------------------------------


def seed(
    *,
    node_count: int = 4,
    state_root: Path,
    token_root: Path,
    first_port: int = FIRST_NODE_PORT,
) -> SeedReport:
    """Create the demo's accounts, fleet, tenants and prices, and make sure every demo node can start.

    `state_root/<node>` is each agent's state directory; `token_root/<node>.token` keeps the
    secret of a token issued for a node that has not enrolled yet, so that a second run (or a
    node that failed to start) reuses it instead of issuing another.
    """
    report = SeedReport()
    with transaction.atomic():
        _seed_regions(report)
        _seed_node_classes(report)
        _seed_tenants(report)
        seed_prices(report)
        users = _seed_logins(report)
        report.enrollment = _prepare_enrollment(
            demo_nodes(node_count, first_port=first_port),
            state_root=state_root,
            token_root=token_root,
            issued_by=users["operator"],
            report=report,
        )
        seed_policies(report)
        seed_billing(report)
        seed_usage_history(report)
        # After the policies: it binds acme to its zone (console/demo/compliance_seed.py).
        seed_compliance(report)
    return report


def _seed_regions(report: SeedReport) -> None:
    for spec in REGIONS:
        fields = dict(spec)
        region, created = Region.objects.get_or_create(code=fields.pop("code"), defaults=fields)
        if created:
            report.note(
                f"created region {region.code} ({region.name}, zone {region.residency_zone})"
            )


def _seed_node_classes(report: SeedReport) -> None:
    for spec in NODE_CLASSES:
        fields = dict(spec)
        node_class, created = NodeClass.objects.get_or_create(
            name=fields.pop("name"), defaults=fields
        )
        if created:
            report.note(
                f"created node class {node_class.name} "
                f"({node_class.currency} {node_class.hourly_cost:.3f}/h at expected load)"
            )


def _seed_tenants(report: SeedReport) -> None:
    for spec in TENANTS:
        fields = dict(spec)
        tenant, created = Tenant.objects.get_or_create(slug=fields.pop("slug"), defaults=fields)
        if created:
            report.note(f"created tenant {tenant.slug} ({tenant.name})")


def seed_prices(report: SeedReport, *, now: datetime | None = None) -> None:
    """The demo prices (EUR, and USD and JPY for the tenants billed in them) from just before
    last month (UTC), and the scheduled EUR change from the 1st of next month. A (grade, serving,
    currency) that already has any price is left alone: the price book is the operators' once
    it exists, and a run in a later month adds nothing."""
    now = now or timezone.now()
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    # From before last month began in any time zone: the demo's usage history of last month
    # (billing_seed.seed_usage_history) is priced too.
    since = (month_start - timedelta(days=1)).replace(day=1) - timedelta(days=2)
    (scheduled_key, scheduled_price, scheduled_note) = SCHEDULED_PRICE
    books = [(PRICE_CURRENCY, PRICES), ("USD", PRICES_USD), ("JPY", PRICES_JPY)]
    for currency, (grade, serving), per_1000 in (
        (currency, key, price) for currency, book in books for key, price in book.items()
    ):
        key = {"grade": grade, "serving": serving, "currency": currency}
        if Price.objects.filter(**key).exists():
            continue
        Price.objects.create(**key, per_1000=per_1000, effective_from=since, note="demo price")
        report.note(f"created price {grade}/{serving} {currency} {per_1000} per 1,000")
        if currency == PRICE_CURRENCY and (grade, serving) == scheduled_key:
            Price.objects.create(
                **key, per_1000=scheduled_price, effective_from=next_month, note=scheduled_note
            )
            report.note(
                f"scheduled price {grade}/{serving} {PRICE_CURRENCY} {scheduled_price} per "
                f"1,000 from {next_month:%Y-%m-%d}"
            )


def _seed_logins(report: SeedReport) -> dict[str, object]:
    User = get_user_model()
    users = {}
    for login in LOGINS:
        user, created = User.objects.get_or_create(
            username=login.username, defaults={"email": login.email}
        )
        changed = []
        for attr in ("is_staff", "is_superuser"):
            if getattr(user, attr) != getattr(login, attr):
                setattr(user, attr, getattr(login, attr))
                changed.append(attr)
        if not user.is_active:
            user.is_active = True
            changed.append("is_active")
        if not user.check_password(login.password):
            user.set_password(login.password)
            changed.append("password")
        if changed:
            user.save()
        for name in login.groups:
            group, _ = Group.objects.get_or_create(name=name)
            if not user.groups.filter(pk=group.pk).exists():
                user.groups.add(group)
                changed.append(f"group {name}")
        for slug, role in login.memberships:
            membership, made = Membership.objects.get_or_create(
                user=user, tenant=Tenant.objects.get(slug=slug), defaults={"role": role}
            )
            if not made and membership.role != role:
                membership.role = role
                membership.save(update_fields=["role"])
                made = True
            if made:
                changed.append(f"{role} of {slug}")
        if created:
            report.note(f"created login {login.username}/{login.password}: {login.role}")
        elif changed:
            report.note(f"restored login {login.username}: {', '.join(changed)}")
        users[login.username] = user
    return users


def _prepare_enrollment(
    nodes: Iterable[DemoNode],
    *,
    state_root: Path,
    token_root: Path,
    issued_by,
    report: SeedReport,
) -> dict[str, str | None]:
    """Decide for each demo node whether it starts as it is or enrolls with a token.

    The database is the truth: a node is enrolled when its row exists and its agent still holds
    the identity it got. When the two disagree (one of them was deleted by hand), the side that
    is left is cleared so the node can enroll afresh instead of failing to start.
    """
    enrollment: dict[str, str | None] = {}
    for spec in nodes:
        state_dir = state_root / spec.name
        token_file = token_root / f"{spec.name}.token"
        node = Node.objects.filter(name=spec.name).first()
        agent_uid = agent_node_uid(state_dir)
        if node is not None and agent_uid == node.uid:
            token_file.unlink(missing_ok=True)
            enrollment[spec.name] = None
            continue
        if node is not None:
            # No agent holds this node's credential any more (its state directory was removed
            # or belongs to another enrollment): the row could never heartbeat again, and it
            # holds the name the new enrollment needs.
            node.delete()
            report.note(f"removed node {spec.name}: no agent under {state_dir} is that node")
        if (state_dir / IDENTITY_FILE).exists():
            # The agent remembers a node the database does not have (the database was reset):
            # that credential is worthless, and the agent would ignore --enroll while it exists.
            shutil.rmtree(state_dir)
            report.note(f"cleared {state_dir}: the database has no such node")
        secret = _usable_token_secret(token_file, spec.name)
        if secret is None:
            _, secret = EnrollmentToken.issue(
                node_name=spec.name,
                region=Region.objects.get(code=spec.region),
                node_class=NodeClass.objects.get(name=spec.node_class),
                created_by=issued_by,
            )
            _write_secret(token_file, secret)
            report.note(
                f"issued an enrollment token for node {spec.name} ({spec.region}, {spec.node_class})"
            )
        enrollment[spec.name] = secret
    return enrollment


def _usable_token_secret(token_file: Path, node_name: str) -> str | None:
    try:
        secret = token_file.read_text().strip()
    except FileNotFoundError:
        return None
    usable = EnrollmentToken.objects.usable().filter(
        secret_hash=hash_secret(secret), node_name=node_name
    )
    return secret if usable.exists() else None


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    tmp.replace(path)


# What the generated demo models are (inference/demo_models.py), for the catalogue's pages.
DEMO_MODEL_DESCRIPTIONS = {
    "tiny-classifier": "Logistic regression on 8 features, trained with scikit-learn on "
    "synthetic data and converted to ONNX.",
    "random-mlp-medium": "A multilayer perceptron with random weights (256 → 16): a stand-in "
    "for a medium, ASR-sized workload.",
    "random-convnet-large": "A convolutional network with random weights on 3×128×128 images: "
    "a stand-in for a large, multimodal-sized workload.",
}


def register_demo_models(models_dir: Path, report: SeedReport) -> None:
    """Put the generated demo models in the catalogue; the Celery worker grades them. The same
    bytes are recognised on a second run, so nothing is registered twice."""
    from fleet.actions import register_model_version

    for name, description in DEMO_MODEL_DESCRIPTIONS.items():
        path = models_dir / f"{name}.onnx"
        if not path.exists():
            continue
        version, created = register_model_version(
            owner=None, name=name, data=path.read_bytes(), description=description
        )
        if created:
            report.note(f"registered {name} in the catalogue as version {version.version}")


TRAFFIC_KEY_NAME = "demo traffic"


def traffic_keys() -> dict[str, str]:
    """A fresh API key per demo tenant for the traffic generator (the previous run's are
    revoked): it exchanges them for ephemeral tokens and calls the nodes as the tenants."""
    keys = {}
    for tenant in Tenant.objects.filter(slug__in=[t["slug"] for t in TENANTS]).order_by("slug"):
        for old in ApiKey.objects.active().filter(tenant=tenant, name=TRAFFIC_KEY_NAME):
            old.revoke()
        keys[tenant.slug] = ApiKey.issue(tenant, TRAFFIC_KEY_NAME)[1]
    return keys


# --- tenant policies and fleet thresholds -----------------------------------------------------

# Demo thresholds per node class; operators change them on /fleet/policies/ and seeding never
# puts them back. Thermal envelopes sit a little under where such machines throttle (fanless
# boxes first). Cost ceilings, per 1,000 inferences in the class's currency (EUR), stay under
# the demo's local prices (PRICES) so that what a node serves within them keeps a margin; a
# nano node does not serve large models, so it has no ceiling for them.
NODE_CLASS_THRESHOLDS = {
    "nano": {
        "thermal_envelope_c": Decimal("70"),
        "cost_ceilings": {"tiny": "0.02", "medium": "0.20"},
    },
    "standard": {
        "thermal_envelope_c": Decimal("80"),
        "cost_ceilings": {"tiny": "0.02", "medium": "0.20", "large": "1.00"},
    },
    "accelerator": {
        "thermal_envelope_c": Decimal("85"),
        "cost_ceilings": {"tiny": "0.04", "medium": "0.30", "large": "1.50"},
    },
}

# Three different policies, so the bundle has something to say. nakamura's max spend is in
# its currency: ¥80 a session, about €0.50.
DEMO_POLICIES = {
    "acme": {"privacy_mode": "in_region", "quality": "high"},
    "globex": {"privacy_mode": "any", "on_budget_exhausted": "downgrade"},
    "nakamura": {
        "privacy_mode": "local_only",
        "fallback": "reject",
        "sensitive_fields": ["customer_id"],
        "max_spend_per_session": "80",
        "on_budget_exhausted": "block",
    },
}


def seed_policies(report: SeedReport) -> None:
    """Thresholds of the demo classes that have none, the demo tenants' policies while they
    are at their first revision (nobody changed them), and the accelerator pools. Every write
    goes through fleet.policies, so the history shows it (by no one: seeded)."""
    from fleet.choices import PolicyActorKind
    from fleet.models import TenantPolicy
    from fleet.policies import set_node_class_thresholds, update_policy

    for node_class in NodeClass.objects.filter(name__in=NODE_CLASS_THRESHOLDS):
        if node_class.thermal_envelope_c is None and not node_class.cost_ceilings:
            spec = NODE_CLASS_THRESHOLDS[node_class.name]
            set_node_class_thresholds(node_class, **spec, actor=None)
            report.note(
                f"set thresholds of node class {node_class.name}: "
                f"{spec['thermal_envelope_c']} °C, cost ceilings {spec['cost_ceilings']}"
            )
    for tenant in Tenant.objects.filter(slug__in=DEMO_POLICIES).order_by("slug"):
        if TenantPolicy.objects.for_tenant(tenant).revision == 1:
            changes = DEMO_POLICIES[tenant.slug]
            policy = update_policy(tenant, changes, actor=None, actor_kind=PolicyActorKind.OPERATOR)
            report.note(f"set the policy of {tenant.slug} (revision {policy.revision}): {changes}")
    seed_accelerator_pools(report)


def seed_accelerator_pools(report: SeedReport) -> None:
    """A pool per demo region with the region's accelerator nodes (none yet: an empty pool,
    and the region has nowhere to offload to). Nodes enroll after the first seeding, so a
    pool that no operator has changed follows the demo's accelerators on every seeding; call
    this again once they have enrolled to fill the pools at once. A pool an operator changed
    is theirs and is left alone."""
    from fleet.choices import NodeClassKind, SettingKind
    from fleet.models import AcceleratorPool, FleetSettingChange
    from fleet.policies import pool_snapshot, set_accelerator_pool

    for region in Region.objects.filter(code__in=[spec["code"] for spec in REGIONS]):
        pool = AcceleratorPool.objects.filter(region=region).first()
        operators_own = FleetSettingChange.objects.filter(
            kind=SettingKind.ACCELERATOR_POOL, subject=region.code, actor__isnull=False
        ).exists()
        if operators_own:
            continue
        before = pool_snapshot(pool)
        pool = set_accelerator_pool(
            region,
            name=pool.name if pool else f"{region.name} accelerators",
            nodes=Node.objects.filter(region=region, node_class__name=NodeClassKind.ACCELERATOR),
            actor=None,
        )
        after = pool_snapshot(pool)
        if after != before:
            report.note(
                f"accelerator pool of {region.code}: {', '.join(after['nodes']) or 'no nodes yet'}"
            )
