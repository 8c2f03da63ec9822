"""The demo's data: who logs in, where the fleet is, what its machines cost, who the tenants are,
and the enrollment tokens of demo nodes that have not joined yet.

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
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from billing.choices import MemberRole
from billing.models import ApiKey, Membership, Tenant
from billing.roles import FINANCE_GROUP
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

# Latency bands come with billing; until then a tenant is its name, time zone and currency.
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

# The order demo nodes are added in: the first four are two per region with mixed classes;
# beyond that (`manage.py demo --nodes N`) the pattern repeats.
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
    """Create the demo's accounts, fleet and tenants, and make sure every demo node can start.

    `state_root/<node>` is each agent's state directory; `token_root/<node>.token` keeps the
    secret of a token issued for a node that has not enrolled yet, so that a second run (or a
    node that failed to start) reuses it instead of issuing another.
    """
    report = SeedReport()
    with transaction.atomic():
        _seed_regions(report)
        _seed_node_classes(report)
        _seed_tenants(report)
        users = _seed_logins(report)
        report.enrollment = _prepare_enrollment(
            demo_nodes(node_count, first_port=first_port),
            state_root=state_root,
            token_root=token_root,
            issued_by=users["operator"],
            report=report,
        )
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
