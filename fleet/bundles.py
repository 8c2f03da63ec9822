"""The policy bundle compiler: pure functions from plain data to a `protocol.PolicyBundle`.

What a node enforces is decided here, once, for the whole fleet: every tenant's rules, the
regions' accelerator pools, and for each (tenant, region) the pools a node of that region may
offload the tenant's requests to, in order — its own region's pool first, then the regions it
falls back to — already cut to what the tenant's privacy and residency allow, so the node's
per-request decision (inference/policy.py) never has to reason about zones.

The compiler refuses a bundle that would break a rule, and says every rule broken:
- a fallback cycle between regions, or a fallback to a region that does not exist;
- a pool listing a node of another region, or a route to a pool that does not exist or has
  no node;
- a route that takes a `local_only` tenant anywhere, an `in_region` tenant out of its region,
  or a residency-bound tenant out of its zone;
- a tenant that is `local_only` and yet falls back `regional` (contradictory);
- the same tenant or the same price twice.

The route rules are checked on the *compiled* bundle (`check_bundle`), not on the inputs, so
that a bug in the route computation cannot ship a bundle that leaks a tenant out of its zone.
Reading the inputs from the database, signing (inference.protocol.sign_bundle) and storing
the result sit on top of this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from inference.protocol import (
    ClassThresholds,
    ModelGrade,
    PolicyBundle,
    Pool,
    PoolNode,
    PriceRow,
    Route,
    TenantRules,
)

# A node keeps enforcing a bundle until it expires; the console re-issues well before that.
DEFAULT_TTL = timedelta(hours=24)


class CompileError(ValueError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class PoolMember:
    uid: str
    endpoint: str
    region: str


@dataclass(frozen=True)
class RegionSpec:
    code: str
    residency_zone: str
    # The accelerator pool of the region (may be empty).
    pool: tuple[PoolMember, ...] = ()
    # The region whose pool is tried when this one's cannot serve; None: no fallback.
    fallback: str | None = None


@dataclass(frozen=True)
class Inputs:
    tenants: Sequence[TenantRules] = ()
    regions: Sequence[RegionSpec] = ()
    prices: Sequence[PriceRow] = ()
    thresholds: Sequence[ClassThresholds] = ()
    revoked_tokens: Iterable[str] = field(default_factory=tuple)
    models: Sequence[ModelGrade] = ()
    # Console public keys (base64) nodes are to trust: the signing key and the next one.
    trusted_keys: Sequence[str] = ()
    # The fleet's key for authenticating node-to-node forwards (base64); None: none.
    forward_key: str | None = None


def fallback_chain(start: str, regions: dict[str, RegionSpec]) -> tuple[list[str], str | None]:
    """The regions tried from `start`, in order, and the problem that cut the chain short
    (a cycle or an unknown region), if any."""
    chain = [start]
    current = regions[start]
    while current.fallback is not None:
        if current.fallback not in regions:
            return chain, (
                f"region {current.code} falls back to {current.fallback!r}, which does not exist"
            )
        if current.fallback in chain:
            cycle = " → ".join([*chain[chain.index(current.fallback) :], current.fallback])
            return chain, f"fallback cycle: {cycle}"
        chain.append(current.fallback)
        current = regions[current.fallback]
    return chain, None


def allowed_pools(
    tenant: TenantRules, region: str, chain: Sequence[str], zones: dict[str, str]
) -> list[str]:
    """The part of a region's fallback chain a tenant's requests may go to."""
    if tenant.privacy == "local_only" or tenant.fallback == "reject":
        return []
    if tenant.privacy == "in_region":
        candidates = [region]
    else:
        candidates = list(chain)
    if tenant.residency_zone is not None:
        candidates = [code for code in candidates if zones.get(code) == tenant.residency_zone]
    return candidates


def compile_bundle(
    inputs: Inputs, *, revision: int, issued_at: datetime, ttl: timedelta = DEFAULT_TTL
) -> PolicyBundle:
    """The bundle for these inputs; raises CompileError listing every rule it would break."""
    problems: list[str] = []
    regions = {r.code: r for r in inputs.regions}
    zones = {r.code: r.residency_zone for r in inputs.regions}

    seen: set[str] = set()
    for tenant in inputs.tenants:
        if tenant.slug in seen:
            problems.append(f"tenant {tenant.slug} appears twice")
        seen.add(tenant.slug)
    price_keys = [(p.grade, p.serving, p.currency) for p in inputs.prices]
    for key in sorted({k for k in price_keys if price_keys.count(k) > 1}):
        problems.append(f"two prices for {key[0]} {key[1]} in {key[2]}")
    model_names = [m.name for m in inputs.models]
    for name in sorted({n for n in model_names if model_names.count(n) > 1}):
        problems.append(f"two grades for model {name}")

    pools = []
    for region in sorted(regions.values(), key=lambda r: r.code):
        for member in region.pool:
            if member.region != region.code:
                problems.append(
                    f"the pool of {region.code} lists node {member.uid} of region {member.region}"
                )
        pools.append(
            Pool(
                region=region.code,
                residency_zone=region.residency_zone,
                nodes=[PoolNode(uid=m.uid, endpoint=m.endpoint) for m in region.pool],
            )
        )

    chains: dict[str, list[str]] = {}
    for code in sorted(regions):
        chain, problem = fallback_chain(code, regions)
        if problem is not None and problem not in problems:
            problems.append(problem)
        chains[code] = chain

    serving = {r.code for r in inputs.regions if r.pool}
    routes = []
    for tenant in sorted(inputs.tenants, key=lambda t: t.slug):
        for code in sorted(regions):
            allowed = [p for p in allowed_pools(tenant, code, chains[code], zones) if p in serving]
            if allowed:
                routes.append(Route(tenant=tenant.slug, region=code, pools=allowed))

    bundle = PolicyBundle(
        revision=revision,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        tenants=sorted(inputs.tenants, key=lambda t: t.slug),
        pools=pools,
        routes=routes,
        prices=sorted(inputs.prices, key=lambda p: (p.currency, p.grade, p.serving)),
        thresholds=sorted(inputs.thresholds, key=lambda t: t.node_class),
        models=sorted(inputs.models, key=lambda m: m.name),
        revoked_tokens=sorted(set(inputs.revoked_tokens)),
        trusted_keys=list(inputs.trusted_keys),
        forward_key=inputs.forward_key,
    )
    problems += [p for p in check_bundle(bundle) if p not in problems]
    if problems:
        raise CompileError(problems)
    return bundle


def check_bundle(bundle: PolicyBundle) -> list[str]:
    """Every rule the bundle's routes break (empty: it may ship)."""
    problems = []
    tenants = {t.slug: t for t in bundle.tenants}
    pools = {p.region: p for p in bundle.pools}
    for tenant in bundle.tenants:
        if tenant.privacy == "local_only" and tenant.fallback == "regional":
            problems.append(
                f"tenant {tenant.slug} is local_only but falls back regional: a local-only "
                "tenant cannot be offloaded (its fallback must be reject)"
            )
    for route in bundle.routes:
        tenant = tenants.get(route.tenant)
        if tenant is None:
            problems.append(f"a route names tenant {route.tenant}, which the bundle lacks")
            continue
        for code in route.pools:
            pool = pools.get(code)
            if pool is None:
                problems.append(
                    f"a route of {route.tenant} goes to pool {code}, which does not exist"
                )
                continue
            if not pool.nodes:
                problems.append(f"a route of {route.tenant} goes to pool {code}, which has no node")
            if tenant.privacy == "local_only":
                problems.append(
                    f"a route takes local_only tenant {tenant.slug} from {route.region} to {code}"
                )
            elif tenant.privacy == "in_region" and code != route.region:
                problems.append(
                    f"a route takes in_region tenant {tenant.slug} from {route.region} to {code}"
                )
            if tenant.residency_zone is not None and pool.residency_zone != tenant.residency_zone:
                problems.append(
                    f"a route takes tenant {tenant.slug}, bound to zone {tenant.residency_zone}, "
                    f"to pool {code} in zone {pool.residency_zone}"
                )
    return problems


def bundle_warnings(bundle: PolicyBundle) -> list[str]:
    """What a bundle lets through but an operator should fix: requests it cannot price. A node
    states no cost for them and cannot hold their session to its spend cap."""
    priced = {(p.grade, p.serving, p.currency) for p in bundle.prices}
    grades = sorted({m.grade for m in bundle.models})
    warnings = []
    for currency in sorted({t.currency for t in bundle.tenants}):
        missing = [
            f"{grade} {serving}"
            for grade in grades
            for serving in ("local", "regional")
            if (grade, serving, currency) not in priced
        ]
        if not missing:
            continue
        capped = sorted(
            t.slug
            for t in bundle.tenants
            if t.currency == currency and t.max_spend_per_session is not None
        )
        warning = f"no {currency} price for {', '.join(missing)}: such requests state no cost"
        if capped:
            warning += f", and the spend caps of {', '.join(capped)} cannot hold them"
        warnings.append(warning)
    return warnings


def diff_bundles(old: PolicyBundle, new: PolicyBundle) -> list[str]:
    """What changed from `old` to `new`, one line per change, for people."""
    lines: list[str] = []
    lines += _diff_keyed(
        "tenant",
        {t.slug: t.model_dump() for t in old.tenants},
        {t.slug: t.model_dump() for t in new.tenants},
    )
    lines += _diff_keyed(
        "pool",
        {p.region: p.model_dump() for p in old.pools},
        {p.region: p.model_dump() for p in new.pools},
    )
    lines += _diff_keyed(
        "route",
        {f"{r.tenant} from {r.region}": {"pools": r.pools} for r in old.routes},
        {f"{r.tenant} from {r.region}": {"pools": r.pools} for r in new.routes},
    )
    lines += _diff_keyed(
        "price",
        {f"{p.grade} {p.serving} {p.currency}": {"per_1000": p.per_1000} for p in old.prices},
        {f"{p.grade} {p.serving} {p.currency}": {"per_1000": p.per_1000} for p in new.prices},
    )
    lines += _diff_keyed(
        "thresholds of",
        {t.node_class: t.model_dump() for t in old.thresholds},
        {t.node_class: t.model_dump() for t in new.thresholds},
    )
    lines += _diff_keyed(
        "model",
        {m.name: {"grade": m.grade} for m in old.models},
        {m.name: {"grade": m.grade} for m in new.models},
    )
    revoked = sorted(set(new.revoked_tokens) - set(old.revoked_tokens))
    if revoked:
        lines.append(f"tokens revoked: {', '.join(revoked)}")
    lapsed = sorted(set(old.revoked_tokens) - set(new.revoked_tokens))
    if lapsed:
        lines.append(f"revoked tokens expired, no longer listed: {len(lapsed)}")
    added_keys = [k for k in new.trusted_keys if k not in old.trusted_keys]
    dropped_keys = [k for k in old.trusted_keys if k not in new.trusted_keys]
    for key in added_keys:
        lines.append(f"console key trusted: {key}")
    for key in dropped_keys:
        lines.append(f"console key no longer trusted: {key}")
    return lines


def _diff_keyed(kind: str, old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            lines.append(f"{kind} {key} added")
        elif key not in new:
            lines.append(f"{kind} {key} removed")
        elif old[key] != new[key]:
            changes = [
                f"{name} {_show(old[key].get(name))} → {_show(new[key].get(name))}"
                for name in sorted(set(old[key]) | set(new[key]))
                if old[key].get(name) != new[key].get(name)
            ]
            lines.append(f"{kind} {key}: {'; '.join(changes)}")
    return lines


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)
