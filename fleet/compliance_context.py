"""What the compliance checks read, loaded at once: plain, frozen facts about tenants, regions,
nodes, pools, models, deployments, export rules, recent traffic, API keys and policy bundles.

`load_context` reads them with a fixed number of queries whatever the size of the fleet (one
or two per kind), so a run costs the same for ten nodes or a thousand; the checks
(fleet.compliance) are plain functions over the result and never touch the database, so each
is tested on facts written in the test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from django.conf import settings
from django.db.models import Prefetch, Sum

from billing.models import ApiKey, Tenant, UsageRecord
from fleet.choices import DeploymentState, NodeStatus, PinSide
from fleet.models import (
    AcceleratorPool,
    Deployment,
    ExportRule,
    Model,
    Node,
    NodeClass,
    PolicyBundleRecord,
    Region,
)
from fleet.models.policies import POLICY_DEFAULTS
from inference.protocol import PolicyBundle, TenantRules

# What "the nodes that serve a tenant" and "traffic served" look back over.
SERVED_WINDOW = timedelta(days=1)
# Node statuses whose reports are current: an offline node's last report is history.
REPORTING = (NodeStatus.ONLINE, NodeStatus.DEGRADED)


@dataclass(frozen=True)
class Thresholds:
    """The settings the checks measure against (console/settings.py, docs/compliance.md)."""

    policy_max_staleness_s: int = 600
    api_key_rotation_days: int = 90
    node_credential_rotation_days: int = 90
    require_node_tls: bool = False

    @classmethod
    def from_settings(cls) -> Thresholds:
        return cls(
            policy_max_staleness_s=settings.OUTPOST_POLICY_MAX_STALENESS_S,
            api_key_rotation_days=settings.OUTPOST_API_KEY_ROTATION_DAYS,
            node_credential_rotation_days=settings.OUTPOST_NODE_CREDENTIAL_ROTATION_DAYS,
            require_node_tls=settings.OUTPOST_REQUIRE_NODE_TLS,
        )


@dataclass(frozen=True)
class TenantFacts:
    pk: int
    slug: str
    # The routing part of its policy, as the compiler reads it (residency_zone None: unbound).
    rules: TenantRules

    @property
    def zone(self) -> str | None:
        return self.rules.residency_zone

    @property
    def sensitive_fields(self) -> list[str]:
        return self.rules.sensitive_fields


@dataclass(frozen=True)
class RegionFacts:
    code: str
    jurisdiction: str
    zone: str


@dataclass(frozen=True)
class NodeFacts:
    uid: str
    name: str
    region: str
    status: str
    endpoint: str
    enrolled_at: datetime
    credential_rotated_at: datetime | None = None
    bundle_revision: int | None = None
    bundle_problem: str = ""
    tokenisation_active: bool = False
    tokenised_tenants: frozenset[str] = frozenset()
    # (served model name, version) of what it reports loaded.
    models_loaded: tuple[tuple[str, str], ...] = ()

    @property
    def reporting(self) -> bool:
        return self.status in REPORTING


@dataclass(frozen=True)
class PoolFacts:
    region: str
    members: tuple[str, ...] = ()  # node uids
    fallback: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    pk: int
    served_name: str
    owner_id: int | None = None
    classification: str | None = None  # ExportClassification.code
    classification_name: str = ""


@dataclass(frozen=True)
class DeploymentFacts:
    pk: int
    model_id: int
    created_at: datetime
    # Region codes and class names of its selector; empty: every one.
    regions: frozenset[str] = frozenset()
    node_classes: frozenset[str] = frozenset()
    # The versions it has nodes serve (new and previous, by traffic share or pins); empty
    # when it serves nothing (a first deployment rolled back).
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ExportRuleFacts:
    classification: str
    jurisdiction: str
    note: str = ""


@dataclass(frozen=True)
class ServedFacts:
    """A tenant's successful inferences on one node over SERVED_WINDOW, as the usage ledger
    has them (region is the node's region when it uploaded)."""

    tenant_id: int
    region: str
    node_uid: str
    count: int


@dataclass(frozen=True)
class ApiKeyFacts:
    pk: int
    tenant_id: int
    prefix: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Context:
    now: datetime
    thresholds: Thresholds = field(default_factory=Thresholds)
    tenants: Mapping[int, TenantFacts] = field(default_factory=dict)
    regions: Mapping[str, RegionFacts] = field(default_factory=dict)
    node_classes: tuple[str, ...] = ()
    nodes: tuple[NodeFacts, ...] = ()
    pools: Mapping[str, PoolFacts] = field(default_factory=dict)
    models: Mapping[int, ModelFacts] = field(default_factory=dict)
    deployments: tuple[DeploymentFacts, ...] = ()
    export_rules: tuple[ExportRuleFacts, ...] = ()
    served: tuple[ServedFacts, ...] = ()
    # Active API keys created before the rotation period began.
    api_keys: tuple[ApiKeyFacts, ...] = ()
    # The newest signed bundle and those reporting nodes enforce, by revision.
    newest_revision: int | None = None
    bundles: Mapping[int, PolicyBundle] = field(default_factory=dict)
    # (revision, issued_at) of every revision newer than the oldest one a node enforces.
    revisions: tuple[tuple[int, datetime], ...] = ()

    @property
    def newest_bundle(self) -> PolicyBundle | None:
        return self.bundles.get(self.newest_revision) if self.newest_revision else None

    @cached_property
    def tenants_by_slug(self) -> dict[str, TenantFacts]:
        return {t.slug: t for t in self.tenants.values()}

    @cached_property
    def nodes_by_uid(self) -> dict[str, NodeFacts]:
        return {n.uid: n for n in self.nodes}

    def zone_of(self, region: str) -> str | None:
        facts = self.regions.get(region)
        return facts.zone if facts is not None else None


# --- loading -----------------------------------------------------------------------------------


def load_context(now: datetime, thresholds: Thresholds | None = None) -> Context:
    """Everything the checks read, as of `now`, in a fixed number of queries."""
    thresholds = thresholds or Thresholds.from_settings()
    tenants = _tenants()
    nodes = _nodes(now)
    newest, bundles, revisions = _bundles(nodes)
    watched = [t.pk for t in tenants.values() if t.zone or t.sensitive_fields]
    return Context(
        now=now,
        thresholds=thresholds,
        tenants=tenants,
        regions={
            r.code: RegionFacts(code=r.code, jurisdiction=r.jurisdiction, zone=r.residency_zone)
            for r in Region.objects.all()
        },
        node_classes=tuple(NodeClass.objects.values_list("name", flat=True)),
        nodes=nodes,
        pools=_pools(),
        models=_models(),
        deployments=_deployments(),
        export_rules=tuple(
            ExportRuleFacts(classification=c, jurisdiction=j, note=n)
            for c, j, n in ExportRule.objects.values_list(
                "classification__code", "jurisdiction", "note"
            )
        ),
        served=_served(watched, since=now - SERVED_WINDOW) if watched else (),
        api_keys=_api_keys(now - timedelta(days=thresholds.api_key_rotation_days)),
        newest_revision=newest,
        bundles=bundles,
        revisions=revisions,
    )


def _tenants() -> dict[int, TenantFacts]:
    facts = {}
    for tenant in Tenant.objects.select_related("policy").order_by("slug"):
        policy = getattr(tenant, "policy", None)
        values = policy.values() if policy is not None else dict(POLICY_DEFAULTS)
        rules = TenantRules(
            slug=tenant.slug,
            privacy=values["privacy_mode"],
            fallback=values["fallback"],
            quality=values["quality"],
            currency=tenant.currency,
            sensitive_fields=list(values["sensitive_fields"]),
            on_budget_exhausted=values["on_budget_exhausted"],
            residency_zone=values["residency_zone"] or None,
        )
        facts[tenant.pk] = TenantFacts(pk=tenant.pk, slug=tenant.slug, rules=rules)
    return facts


def _nodes(now: datetime) -> tuple[NodeFacts, ...]:
    nodes = Node.objects.with_status(now).select_related("region").order_by("name")
    return tuple(
        NodeFacts(
            uid=node.uid,
            name=node.name,
            region=node.region.code,
            status=node.current_status,
            endpoint=node.endpoint,
            enrolled_at=node.enrolled_at,
            credential_rotated_at=node.credential_rotated_at,
            bundle_revision=node.bundle_revision,
            bundle_problem=node.bundle_problem,
            tokenisation_active=node.tokenisation_active,
            tokenised_tenants=frozenset(node.tokenised_tenants or ()),
            models_loaded=tuple(
                (str(m.get("name", "")), str(m.get("version", "")))
                for m in node.models_loaded or ()
                if isinstance(m, dict)
            ),
        )
        for node in nodes
    )


def _bundles(
    nodes: tuple[NodeFacts, ...],
) -> tuple[int | None, dict[int, PolicyBundle], tuple[tuple[int, datetime], ...]]:
    """The newest revision, the bundles that matter (the newest and those reporting nodes
    enforce), and the revisions since the oldest any node enforces (when each began)."""
    reporting = [n for n in nodes if n.reporting]
    enforced = {n.bundle_revision for n in reporting if n.bundle_revision is not None}
    revisions_qs = PolicyBundleRecord.objects.order_by("revision")
    if reporting and all(n.bundle_revision is not None for n in reporting):
        # A node enforcing no bundle needs the first revision; otherwise the older ones
        # never matter.
        revisions_qs = revisions_qs.filter(revision__gt=min(enforced))
    revisions = tuple(revisions_qs.values_list("revision", "issued_at"))
    newest = PolicyBundleRecord.objects.latest_revision()
    wanted = enforced | ({newest} if newest is not None else set())
    bundles = {
        record.revision: record.bundle
        for record in PolicyBundleRecord.objects.filter(revision__in=wanted).only(
            "revision", "signed"
        )
    }
    return newest, bundles, revisions


def _pools() -> dict[str, PoolFacts]:
    members = Prefetch("nodes", queryset=Node.objects.only("uid").order_by("uid"))
    pools = AcceleratorPool.objects.select_related("region", "fallback").prefetch_related(members)
    return {
        pool.region.code: PoolFacts(
            region=pool.region.code,
            members=tuple(node.uid for node in pool.nodes.all()),
            fallback=pool.fallback.code if pool.fallback_id else None,
        )
        for pool in pools
    }


def _models() -> dict[int, ModelFacts]:
    models = Model.objects.select_related("owner", "export_classification")
    return {
        m.pk: ModelFacts(
            pk=m.pk,
            served_name=m.served_name,
            owner_id=m.owner_id,
            classification=m.export_classification.code if m.export_classification_id else None,
            classification_name=m.export_classification.name if m.export_classification_id else "",
        )
        for m in models
    }


def _deployments() -> tuple[DeploymentFacts, ...]:
    deployments = (
        Deployment.objects.select_related("version", "previous")
        .prefetch_related("regions", "node_classes", "pins")
        .order_by("created_at", "pk")
    )
    return tuple(
        DeploymentFacts(
            pk=d.pk,
            model_id=d.version.model_id,
            created_at=d.created_at,
            regions=frozenset(r.code for r in d.regions.all()),
            node_classes=frozenset(c.name for c in d.node_classes.all()),
            versions=_served_versions(d),
        )
        for d in deployments
    )


def _served_versions(deployment: Deployment) -> tuple[int, ...]:
    """The versions a deployment has its nodes serve: as fleet.rollout_actions.
    desired_versions decides them (traffic share, or tenants pinned to a side)."""
    share = deployment.new_share
    sides = {pin.side for pin in deployment.pins.all()}
    served = []
    rolled_back = deployment.state == DeploymentState.ROLLED_BACK
    if share > 0 or (PinSide.NEW in sides and not rolled_back):
        served.append(deployment.version.version)
    if deployment.previous is not None and (share < 1 or PinSide.OLD in sides):
        served.append(deployment.previous.version)
    return tuple(served)


def _served(tenant_ids: list[int], *, since: datetime) -> tuple[ServedFacts, ...]:
    rows = (
        UsageRecord.objects.filter(tenant_id__in=tenant_ids, minute__gte=since, count__gt=0)
        .values("tenant_id", "region", "node_uid")
        .annotate(total=Sum("count"))
        .order_by("tenant_id", "region", "node_uid")
    )
    return tuple(
        ServedFacts(
            tenant_id=row["tenant_id"],
            region=row["region"],
            node_uid=row["node_uid"],
            count=row["total"],
        )
        for row in rows
    )


def _api_keys(created_before: datetime) -> tuple[ApiKeyFacts, ...]:
    keys = ApiKey.objects.active().filter(created_at__lt=created_before).order_by("created_at")
    return tuple(
        ApiKeyFacts(pk=pk, tenant_id=tenant_id, prefix=prefix, name=name, created_at=created_at)
        for pk, tenant_id, prefix, name, created_at in keys.values_list(
            "pk", "tenant_id", "prefix", "name", "created_at"
        )
    )
