"""The compliance checks themselves: plain functions from the fleet's facts
(fleet.compliance_context.Context) to the violations each finds, with what it found and how
to fix it, in words for the finding list and the command line. fleet.compliance registers
them with their ids and severities; none touches the database.

A violation names its subject with a key that stays the same from run to run ("node:<uid>",
"model:<pk>:region:<code>"), so fleet.compliance_actions.run_checks can tell a finding that
persists from one that is new or gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from fleet.compliance_context import (
    SERVED_WINDOW,
    Context,
    DeploymentFacts,
    ModelFacts,
    TenantFacts,
)
from fleet.models.compliance import jurisdiction_matches


@dataclass(frozen=True)
class Violation:
    """One thing a check found wrong, about one subject."""

    subject_key: str
    subject: str
    message: str
    fix: str
    tenant_id: int | None = None
    region: str = ""
    details: Mapping[str, object] = field(default_factory=dict)


def duration(seconds: float) -> str:
    """A length of time for people: "45 s", "12 min", "3 h 5 min", "2 days"."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


# --- data residency ----------------------------------------------------------------------------


def _bound(ctx: Context) -> list[TenantFacts]:
    return [t for t in ctx.tenants.values() if t.zone]


def residency_routes(ctx: Context) -> Iterator[Violation]:
    """Routes of the bundles nodes enforce (and the newest) that take a bound tenant's
    requests to a pool whose region is in another zone: the compiler never compiles one, so
    this finds bundles compiled before the binding that nodes still hold."""
    found: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for revision, bundle in sorted(ctx.bundles.items()):
        zones = {pool.region: pool.residency_zone for pool in bundle.pools}
        for route in bundle.routes:
            tenant = ctx.tenants_by_slug.get(route.tenant)
            if tenant is None or not tenant.zone:
                continue
            for pool in route.pools:
                zone = ctx.zone_of(pool) or zones.get(pool)
                if zone != tenant.zone:
                    found[(tenant.slug, route.region, pool)].append(revision)
    for (slug, region, pool), revisions in sorted(found.items()):
        tenant = ctx.tenants_by_slug[slug]
        listed = ", ".join(f"r{r}" for r in revisions)
        yield Violation(
            subject_key=f"route:{slug}:{region}:{pool}",
            subject=f"{slug}: {region} → pool {pool}",
            message=f"Bundle {listed} routes {slug}'s requests from {region} to the {pool} pool, "
            f"in zone {ctx.zone_of(pool) or 'unknown'}; {slug} is bound to zone {tenant.zone}.",
            fix="Publish a new bundle (Bundles → Publish now): the compiler cuts every route out "
            "of a tenant's zone. Nodes still enforcing the old revision are listed by the "
            "policy.stale check.",
            tenant_id=tenant.pk,
            region=region,
            details={"revisions": revisions, "pool": pool, "zone": tenant.zone},
        )


def residency_pools(ctx: Context) -> Iterator[Violation]:
    """Pools of its zone a bound tenant is routed to (in the bundles nodes enforce) that list
    a node which is, now, in a region of another zone: a node moved to another region after
    it joined a pool keeps taking the pool's traffic until a new bundle drops it. (A pool of
    another zone is residency.routes' finding.)"""
    nodes = ctx.nodes_by_uid
    found: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for revision, bundle in sorted(ctx.bundles.items()):
        members = {pool.region: [n.uid for n in pool.nodes] for pool in bundle.pools}
        for route in bundle.routes:
            tenant = ctx.tenants_by_slug.get(route.tenant)
            if tenant is None or not tenant.zone:
                continue
            for pool in route.pools:
                if ctx.zone_of(pool) != tenant.zone:
                    continue
                for uid in members.get(pool, ()):
                    node = nodes.get(uid)
                    if node is not None and ctx.zone_of(node.region) != tenant.zone:
                        found[(tenant.slug, pool, uid)].append(revision)
    for (slug, pool, uid), revisions in sorted(found.items()):
        tenant, node = ctx.tenants_by_slug[slug], nodes[uid]
        yield Violation(
            subject_key=f"pool:{slug}:{pool}:{uid}",
            subject=f"{slug}: pool {pool} → {node.name}",
            message=f"The {pool} pool {slug} is routed to lists {node.name}, which is in "
            f"{node.region} (zone {ctx.zone_of(node.region) or 'unknown'}); {slug} is bound "
            f"to zone {tenant.zone}. Bundle {', '.join(f'r{r}' for r in revisions)}.",
            fix=f"Take {node.name} out of the {pool} pool (Policies → Accelerator pools) so "
            "the next bundle drops it; a pool holds accelerators of its own region only.",
            tenant_id=tenant.pk,
            region=pool,
            details={"revisions": revisions, "node": uid, "zone": tenant.zone},
        )


def placements(ctx: Context) -> dict[tuple[int, str], list[DeploymentFacts]]:
    """Where each model is deployed: (model pk, region code) → the deployments that have
    nodes of that region serve it. Per model, region and node class the latest deployment
    whose selector takes them in decides (fleet.rollout_actions.desired_versions); it counts
    when it still serves a version."""
    classes = ctx.node_classes or ("*",)
    deciding: dict[tuple[int, str, str], DeploymentFacts] = {}
    for deployment in sorted(ctx.deployments, key=lambda d: (d.created_at, d.pk)):
        for region in deployment.regions or ctx.regions.keys():
            for node_class in deployment.node_classes or classes:
                deciding[(deployment.model_id, region, node_class)] = deployment
    placed: dict[tuple[int, str], list[DeploymentFacts]] = defaultdict(list)
    for (model_id, region, _), deployment in sorted(deciding.items()):
        if deployment.versions and deployment not in placed[(model_id, region)]:
            placed[(model_id, region)].append(deployment)
    return dict(placed)


def _deployments_said(deployments: list[DeploymentFacts]) -> str:
    return ", ".join(f"#{d.pk} (v{', v'.join(str(v) for v in d.versions)})" for d in deployments)


def residency_deployments(ctx: Context) -> Iterator[Violation]:
    """A bound tenant's own models deployed to regions of another zone: its model's bytes
    (trained on its data) leave the zone as soon as a node there downloads them."""
    bound = {t.pk: t for t in _bound(ctx)}
    for (model_id, region), deployments in sorted(placements(ctx).items()):
        model = ctx.models.get(model_id)
        tenant = bound.get(model.owner_id) if model is not None else None
        if tenant is None or ctx.zone_of(region) == tenant.zone:
            continue
        ids = ", ".join(f"#{d.pk}" for d in deployments)
        yield Violation(
            subject_key=f"model:{model_id}:region:{region}",
            subject=f"{model.served_name} in {region}",
            message=f"Deployment {_deployments_said(deployments)} puts {tenant.slug}'s model "
            f"{model.served_name} on the nodes of {region}, in zone "
            f"{ctx.zone_of(region) or 'unknown'}; {tenant.slug} is bound to zone {tenant.zone}.",
            fix=f"Roll back deployment {ids} and deploy the model again to regions of zone "
            f"{tenant.zone} only (Deployments → choose the regions).",
            tenant_id=tenant.pk,
            region=region,
            details={"deployments": [d.pk for d in deployments], "zone": tenant.zone},
        )


def residency_traffic(ctx: Context) -> Iterator[Violation]:
    """A bound tenant's requests served by nodes of another zone over the last day, as the
    usage ledger has them: whatever the routes say, this is where its data went."""
    bound = {t.pk: t for t in _bound(ctx)}
    served: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for row in ctx.served:
        tenant = bound.get(row.tenant_id)
        if tenant is not None and ctx.zone_of(row.region) != tenant.zone:
            served[(tenant.pk, row.region)][row.node_uid] = row.count
    names = {n.uid: n.name for n in ctx.nodes}
    hours = int(SERVED_WINDOW.total_seconds() // 3600)
    for (tenant_id, region), by_node in sorted(served.items()):
        tenant = bound[tenant_id]
        zone = ctx.zone_of(region)
        where = f"zone {zone}" if zone else "a region the fleet no longer has"
        nodes = ", ".join(names.get(uid, uid) for uid in sorted(by_node))
        yield Violation(
            subject_key=f"traffic:{tenant.slug}:{region}",
            subject=f"{tenant.slug} served in {region}",
            message=f"{sum(by_node.values()):,} of {tenant.slug}'s inferences were served in "
            f"{region} ({where}) in the last {hours} hours, by {nodes}; {tenant.slug} is bound "
            f"to zone {tenant.zone}.",
            fix=f"Routes never take it there (residency.routes says if one does): its clients "
            f"call nodes of {region} directly. Have {tenant.slug} call nodes of zone "
            f"{tenant.zone} only; the finding resolves a day after the last such request.",
            tenant_id=tenant.pk,
            region=region,
            details={"inferences": by_node, "zone": tenant.zone},
        )


# --- tokenisation ------------------------------------------------------------------------------


def _declaring(ctx: Context) -> list[TenantFacts]:
    return [t for t in ctx.tenants.values() if t.sensitive_fields]


def tokenisation_bundle(ctx: Context) -> Iterator[Violation]:
    """Tenants whose declared sensitive fields the newest bundle does not carry: nodes cannot
    tokenise what their bundle does not name."""
    bundle = ctx.newest_bundle
    carried = {t.slug: set(t.sensitive_fields) for t in bundle.tenants} if bundle else {}
    for tenant in _declaring(ctx):
        missing = sorted(set(tenant.sensitive_fields) - carried.get(tenant.slug, set()))
        if not missing:
            continue
        if bundle is None:
            what = "no policy bundle has been published"
        elif tenant.slug not in carried:
            what = f"bundle r{ctx.newest_revision} has no policy for {tenant.slug}"
        else:
            what = f"bundle r{ctx.newest_revision} does not carry {', '.join(missing)}"
        yield Violation(
            subject_key=f"tenant:{tenant.slug}",
            subject=tenant.slug,
            message=f"{tenant.slug} declared {', '.join(tenant.sensitive_fields)} sensitive, "
            f"but {what}: nodes do not tokenise them.",
            fix="Publish a new bundle (Bundles → Publish now); if the compiler refuses, the "
            "bundle page says which rule it breaks.",
            tenant_id=tenant.pk,
            details={"missing": missing},
        )


def tokenisation_nodes(ctx: Context) -> Iterator[Violation]:
    """Nodes that served a tenant with sensitive fields over the last day and do not report
    tokenising for it: no tokenisation key, or a bundle that does not ask them to. Nodes the
    fleet no longer has are left out: there is nothing left to fix on them."""
    declaring = {t.pk: t for t in _declaring(ctx)}
    nodes = ctx.nodes_by_uid
    seen: set[tuple[str, str]] = set()
    for row in ctx.served:
        tenant, node = declaring.get(row.tenant_id), nodes.get(row.node_uid)
        if tenant is None or node is None or (node.uid, tenant.slug) in seen:
            continue
        seen.add((node.uid, tenant.slug))
        if node.tokenisation_active and tenant.slug in node.tokenised_tenants:
            continue
        if not node.tokenisation_active:
            what = "reports no tokenisation key"
            fix = (
                f"Give {node.name} its tokenisation key: restart its agent without "
                "--no-tokenisation, with a --state-dir it can write (it keeps the key in "
                "tokenise.key there); its next heartbeat reports tokenisation active."
            )
        else:
            what = f"does not report tokenising {tenant.slug}'s fields"
            fix = (
                f"{node.name} enforces a bundle without them: get it onto the newest bundle "
                "(the policy.stale check says if it is behind)."
            )
        yield Violation(
            subject_key=f"node:{node.uid}:tenant:{tenant.slug}",
            subject=f"{node.name} for {tenant.slug}",
            message=f"{node.name} served {tenant.slug}, which declared "
            f"{', '.join(tenant.sensitive_fields)} sensitive, but {what}.",
            fix=fix,
            tenant_id=tenant.pk,
            region=node.region,
            details={"node": node.uid, "active": node.tokenisation_active},
        )


# --- export controls ---------------------------------------------------------------------------


def _forbidding(ctx: Context, model: ModelFacts | None, region: str) -> list[str]:
    """The jurisdictions of the rules that forbid the model in the region (with their notes),
    empty when none does."""
    facts = ctx.regions.get(region)
    if model is None or model.classification is None or facts is None:
        return []
    return [
        f"{rule.jurisdiction}" + (f" ({rule.note})" if rule.note else "")
        for rule in ctx.export_rules
        if rule.classification == model.classification
        and jurisdiction_matches(rule.jurisdiction, facts.jurisdiction)
    ]


def _classified(model: ModelFacts) -> str:
    name = f" ({model.classification_name})" if model.classification_name else ""
    return f"classified {model.classification}{name}"


def export_deployments(ctx: Context) -> Iterator[Violation]:
    """Models with a classification deployed to regions whose jurisdiction one of its rules
    forbids."""
    for (model_id, region), deployments in sorted(placements(ctx).items()):
        model = ctx.models.get(model_id)
        rules = _forbidding(ctx, model, region)
        if not rules:
            continue
        jurisdiction = ctx.regions[region].jurisdiction
        ids = ", ".join(f"#{d.pk}" for d in deployments)
        yield Violation(
            subject_key=f"model:{model_id}:region:{region}",
            subject=f"{model.served_name} in {region}",
            message=f"Deployment {_deployments_said(deployments)} puts {model.served_name}, "
            f"{_classified(model)}, on the nodes of {region} (jurisdiction {jurisdiction}), "
            f"where its rules forbid it: {'; '.join(rules)}.",
            fix=f"Roll back deployment {ids} and deploy the model again without {region}; if "
            "a licence now allows it, change the rule (Admin → Export classifications).",
            tenant_id=model.owner_id,
            region=region,
            details={"deployments": [d.pk for d in deployments], "rules": rules},
        )


def export_loaded(ctx: Context) -> Iterator[Violation]:
    """Nodes that report a model loaded in a region where its classification is forbidden,
    however it got there (a deployment, or the agent's own --models directory)."""
    by_name = {m.served_name: m for m in ctx.models.values()}
    for node in ctx.nodes:
        versions: dict[str, list[str]] = defaultdict(list)
        for name, version in node.models_loaded:
            versions[name].append(version)
        for name in sorted(versions):
            model = by_name.get(name)
            rules = _forbidding(ctx, model, node.region)
            if not rules:
                continue
            yield Violation(
                subject_key=f"node:{node.uid}:model:{model.pk}",
                subject=f"{name} on {node.name}",
                message=f"{node.name}, in {node.region} (jurisdiction "
                f"{ctx.regions[node.region].jurisdiction}), reports {name} "
                f"v{', v'.join(sorted(versions[name]))} loaded, {_classified(model)}, which its "
                f"rules forbid there: {'; '.join(rules)}.",
                fix=f"Unload it from {node.name}: roll back the deployment that sent it (see "
                f"export.deployments), or remove it from the agent's --models directory and "
                "restart the agent.",
                tenant_id=model.owner_id,
                region=node.region,
                details={"node": node.uid, "versions": sorted(versions[name]), "rules": rules},
            )
