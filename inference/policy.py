"""The routing decision for one request: serve here, offload to the region's accelerator pool,
or refuse — a pure function of the signed bundle, the node's state and the request.

The node runs it on every request and the console's simulator runs the very same code, so
"why was this request offloaded?" has one answer. Rules, in order (the first that decides
wins, and `Decision.rule` names it):

1. `unknown_tenant` — the bundle has no policy for the tenant: 403.
2. `fail_closed` — the tenant asked to fail closed and this node's bundle is older than it
   allows: 503 with Retry-After.
3. `budget_block` — the monthly budget is spent and the tenant's action is `block`: 402.
   (`downgrade` keeps the request on this node: no offload, whatever else says.)
   A request another node offloaded here (`forwarded`) is then served here (`forwarded`) or,
   when this node does not serve the model, refused with 503: never sent on.
4. Why the request should leave this node, if it should (the offload reasons of DESIGN §3):
   `model_not_local` (the model is not served here); `thermal` (the node is over its class's
   thermal envelope, or heading there within `PREDICT_S` at the last minute's slope — the
   prediction sheds only `best_effort` traffic); `capacity` (the queue is full);
   `tenant_quality` (the tenant asks for `high` and this is not an accelerator); `cost` (this
   node's cost of the grade is over its class's ceiling).
5. With a reason, the tenant's route (already cut to its privacy and residency by the
   console, fleet/bundles.py) gives the pools to try: offload. Without a route, a *soft*
   reason (predicted heat, quality, cost) serves here anyway; a *hard* one cannot: 403 when
   the tenant's privacy is what forbids leaving (the model is elsewhere), else 503 with
   Retry-After (nothing can serve).
6. `spend_cap` — the session's spend plus this request's price (local or regional, from the
   bundle's prices in the tenant's currency) would pass the tenant's cap: 402.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from inference.protocol import PolicyBundle, PoolNode, TenantRules

# The thermal prediction looks this far ahead (issue: "predicted to be within the next 30 s").
PREDICT_S = 30.0
RETRY_AFTER_S = 5
ACCELERATOR = "accelerator"

Action = Literal["local", "offload", "refuse"]


# The three below are built for every request on a node: plain slotted classes, since a frozen
# dataclass's __init__ costs several times more (bench/policy.py, bench/node_overhead.py).
@dataclass(slots=True)
class NodeState:
    region: str
    node_class: str
    temperature_c: float | None = None
    # °C per second over the last minute (positive: heating up).
    temperature_slope: float = 0.0
    queue_depth: int = 0
    queue_limit: int = 64
    # What serving 1,000 inferences of each grade costs on this node now (fleet cost model).
    cost_per_1000: Mapping[str, Decimal] = field(default_factory=dict)
    bundle_age_s: float = 0.0


@dataclass(slots=True)
class Request:
    tenant: str
    grade: str
    # The model is loaded and ready on this node.
    local: bool = True
    # What the session has spent (or reserved) so far, in the tenant's currency.
    session_spent: Decimal = Decimal(0)
    # Another node offloaded it here: it is served here or refused, never sent on (one hop),
    # and it is priced as regional serving.
    forwarded: bool = False


@dataclass(slots=True)
class Decision:
    action: Action
    status: int
    rule: str
    reason: str
    pools: tuple[str, ...] = ()
    price: Decimal | None = None
    retry_after_s: int | None = None


# The feature (billing.FeatureBundle.features) that lets a tenant send signals in `parameters`.
FEATURE_SIGNALS = "signals"


class PolicyView:
    """A bundle indexed for the hot path: built once per activated bundle."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.revision = bundle.revision
        # The fleet's key for node-to-node forwards (protocol.forward_auth); None: not checked.
        self.forward_key: bytes | None = (
            base64.b64decode(bundle.forward_key) if bundle.forward_key else None
        )
        self.tenants: dict[str, TenantRules] = {t.slug: t for t in bundle.tenants}
        self.routes: dict[tuple[str, str], tuple[str, ...]] = {
            (r.tenant, r.region): tuple(r.pools) for r in bundle.routes
        }
        self.envelopes: dict[str, float | None] = {
            t.node_class: t.thermal_envelope_c for t in bundle.thresholds
        }
        self.ceilings: dict[str, dict[str, Decimal]] = {
            t.node_class: {g: Decimal(v) for g, v in t.cost_ceilings.items()}
            for t in bundle.thresholds
        }
        self.prices: dict[tuple[str, str, str], Decimal] = {
            (p.grade, p.serving, p.currency): Decimal(p.per_1000) / 1000 for p in bundle.prices
        }
        self.pools: dict[str, tuple[PoolNode, ...]] = {
            p.region: tuple(p.nodes) for p in bundle.pools
        }
        self.grades: dict[str, str] = {m.name: m.grade for m in bundle.models}
        # Tenants who may send personalisation signals: an add-on unlocks them
        # (TenantRules.features); a bundle that gates no features lets everyone.
        self.signals_allowed: dict[str, bool] = {
            t.slug: t.features is None or FEATURE_SIGNALS in t.features for t in bundle.tenants
        }
        self.sensitive: dict[str, frozenset[str]] = {
            t.slug: frozenset(t.sensitive_fields) for t in bundle.tenants
        }
        self.hourly_costs: dict[str, Decimal] = {
            t.node_class: Decimal(t.hourly_cost) for t in bundle.thresholds if t.hourly_cost
        }
        # Node class -> its peak power (W): the usage meter's energy estimate without RAPL.
        self.peak_watts: dict[str, float] = {
            t.node_class: t.peak_watts for t in bundle.thresholds if t.peak_watts is not None
        }

    def price(self, tenant: TenantRules, grade: str, serving: str) -> Decimal | None:
        """The price of one inference, or None when the bundle has none for it."""
        return self.prices.get((grade, serving, tenant.currency))


def offload_reason(
    view: PolicyView, tenant: TenantRules, state: NodeState, request: Request
) -> tuple[str | None, bool]:
    """(reason, hard) when the request should leave this node, else (None, False). A hard
    reason means this node cannot serve it at all."""
    if not request.local:
        return "model_not_local", True
    envelope = view.envelopes.get(state.node_class)
    if envelope is not None and state.temperature_c is not None:
        if state.temperature_c >= envelope:
            return "thermal", True
        predicted = state.temperature_c + max(state.temperature_slope, 0.0) * PREDICT_S
        if predicted >= envelope and tenant.quality == "best_effort":
            return "thermal", False
    if state.queue_depth >= state.queue_limit:
        return "capacity", True
    if tenant.quality == "high" and state.node_class != ACCELERATOR:
        return "tenant_quality", False
    ceiling = view.ceilings.get(state.node_class, {}).get(request.grade)
    cost = state.cost_per_1000.get(request.grade)
    if ceiling is not None and cost is not None and cost > ceiling:
        return "cost", False
    return None, False


def decide(view: PolicyView, state: NodeState, request: Request) -> Decision:
    tenant = view.tenants.get(request.tenant)
    if tenant is None:
        return Decision(
            "refuse",
            403,
            "unknown_tenant",
            f"no policy for tenant {request.tenant} in bundle revision {view.revision}",
        )
    if tenant.fail_closed_after_s is not None and state.bundle_age_s > tenant.fail_closed_after_s:
        return Decision(
            "refuse",
            503,
            "fail_closed",
            f"this node's policy is {state.bundle_age_s:.0f} s old; {tenant.slug} fails closed "
            f"after {tenant.fail_closed_after_s} s",
            retry_after_s=RETRY_AFTER_S,
        )
    downgraded = tenant.budget_exhausted and tenant.on_budget_exhausted == "downgrade"
    if tenant.budget_exhausted and tenant.on_budget_exhausted == "block":
        return Decision("refuse", 402, "budget_block", f"{tenant.slug}'s monthly budget is spent")

    if request.forwarded:
        if not request.local:
            return Decision(
                "refuse",
                503,
                "model_not_local",
                "offloaded here, but this pool node does not serve the model",
                retry_after_s=RETRY_AFTER_S,
            )
        return _priced(view, tenant, request, "local", "forwarded", "offloaded here: served")
    reason, hard = offload_reason(view, tenant, state, request)
    if reason is None:
        return _priced(view, tenant, request, "local", "local", "served here")
    pools = () if downgraded else view.routes.get((tenant.slug, state.region), ())
    if pools:
        return _priced(view, tenant, request, "offload", reason, reason, pools)
    if not hard:
        why = "budget downgrade" if downgraded else "no route allows it"
        return _priced(view, tenant, request, "local", reason, f"{reason}, but {why}: served here")
    if reason == "model_not_local" and (tenant.privacy != "any" or downgraded):
        return Decision(
            "refuse",
            403,
            "privacy",
            f"the model is not on this node and {tenant.slug}'s policy "
            f"({'budget downgrade' if downgraded else tenant.privacy}) forbids sending it elsewhere",
        )
    return Decision(
        "refuse",
        503,
        reason,
        f"{reason}: this node cannot serve it and no pool may take it",
        retry_after_s=RETRY_AFTER_S,
    )


def _priced(
    view: PolicyView,
    tenant: TenantRules,
    request: Request,
    action: Action,
    rule: str,
    reason: str,
    pools: tuple[str, ...] = (),
) -> Decision:
    """The decision, priced, unless its price would pass the session's cap. Built once, with
    its price: copying a frozen dataclass (dataclasses.replace) cost more than the rest of a
    decision (bench/policy.py)."""
    serving = "regional" if action == "offload" or request.forwarded else "local"
    price = view.price(tenant, request.grade, serving)
    cap = tenant.max_spend_per_session
    if price is not None and cap is not None and request.session_spent + price > Decimal(cap):
        return Decision(
            "refuse",
            402,
            "spend_cap",
            f"this session has spent {request.session_spent} of {cap} {tenant.currency}; the "
            f"next inference costs {price}",
            price=price,
        )
    return Decision(action, 200, rule, reason, pools=pools, price=price)
