"""The policy simulator: what a node would decide for a request, computed by the very code
every node runs on every request (inference.policy.decide) over the newest signed bundle.

An operator states a scenario — a tenant, a model, a node, and as much of the node's state as
they want to try (hotter, busier, the model gone, a session nearly spent); what they leave
unset is what the node last reported in its heartbeat, or what the node would compute from
it (the cost of serving, from its class's hourly cost and its measured run time). This
module turns that into the `NodeState` and `Request` of inference.policy and says where
each value came from, so the page can show why the decision is what it is.

Used by the simulator page (fleet.policy_views.simulator) and `POST /api/v1/policy/simulate`
(fleet.policy_api); both validate through fleet.forms.SimulatorForm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal

from fleet.models import Node
from fleet.models.policies import format_amount
from inference.enforcement import cost_per_1000
from inference.policy import PREDICT_S, Decision, NodeState, PolicyView, Request, decide
from inference.protocol import PolicyBundle, Pool, TenantRules

# What a node's queue holds before it counts as full, unless the operator says otherwise:
# the agent's own default (inference.policy.NodeState).
DEFAULT_QUEUE_LIMIT: int = next(
    f.default for f in dataclasses.fields(NodeState) if f.name == "queue_limit"
)

SET = "set"
REPORTED = "reported by the node"
DEFAULT = "default"
UNKNOWN = "unknown"

# What each rule of inference.policy means, for the page: a decision's `reason` is terse
# (nodes log millions of them), this says it in words.
RULE_MEANING = {
    "local": "Nothing asks the request to leave this node: it is served here.",
    "unknown_tenant": "The bundle has no policy for this tenant, so no node serves it.",
    "fail_closed": "The tenant asked to be refused rather than served under a policy older "
    "than its limit.",
    "budget_block": "The tenant's monthly budget is spent and its policy blocks further "
    "requests until next month.",
    "model_not_local": "The model is not loaded and ready on this node.",
    "thermal": "The node is at or over its class's thermal envelope — or, for best-effort "
    f"traffic, heading there within {PREDICT_S:g} s at its current trend.",
    "capacity": "The node's queue is full.",
    "tenant_quality": "The tenant asks for high quality and this node is not an accelerator.",
    "cost": "Serving the request here costs more than the class's ceiling for its grade.",
    "privacy": "The model is not on this node and the tenant's privacy mode (or its budget "
    "downgrade) forbids sending the request elsewhere.",
    "spend_cap": "This inference would take the session past the tenant's max spend per session.",
    "forwarded": "Another node offloaded the request here: a pool node serves it or refuses it, "
    "never sends it on.",
}


@dataclass(frozen=True)
class Scenario:
    """What to try. `None` means "as the node reported it" (or would compute it)."""

    tenant: str
    model: str
    node: Node  # with its region and class loaded
    grade: str | None = None  # None: the grade the bundle gives the model
    temperature_c: float | None = None
    trend_c_per_min: float = 0.0
    queue_depth: int | None = None
    queue_limit: int | None = None
    model_loaded: bool | None = None
    cost_per_1000: Decimal | None = None
    session_spent: Decimal = Decimal(0)
    bundle_age_s: float = 0.0


@dataclass(frozen=True)
class Input:
    """One value the decision was computed from, as the page lists them."""

    name: str
    value: str
    source: str


@dataclass(frozen=True)
class Simulation:
    revision: int
    scenario: Scenario
    state: NodeState
    request: Request
    decision: Decision
    tenant: TenantRules | None  # None: the bundle does not know the tenant
    inputs: list[Input]
    pools: list[Pool]  # the bundle's pools the decision names, in its order

    @property
    def currency(self) -> str | None:
        return self.tenant.currency if self.tenant is not None else None

    @property
    def rule_meaning(self) -> str:
        return RULE_MEANING.get(self.decision.rule, "")


# --- reading the bundle and the node -----------------------------------------------------------


def served_models(bundle: PolicyBundle) -> list[str]:
    """The model names the bundle grades: what a request can name and be priced for."""
    return sorted(m.name for m in bundle.models)


def grade_of(bundle: PolicyBundle, model: str) -> str | None:
    return next((m.grade for m in bundle.models if m.name == model), None)


def loaded_rows(node: Node, model: str) -> list[dict]:
    """The node's heartbeat rows (models_loaded) of the versions served under `model`."""
    return [row for row in node.models_loaded or [] if row.get("name") == model]


def loaded_and_ready(node: Node, model: str) -> bool:
    return any(row.get("ready") for row in loaded_rows(node, model))


def hourly_cost(bundle: PolicyBundle, node: Node) -> Decimal:
    """What an hour of the node costs, as the bundle tells nodes (ClassThresholds.hourly_cost),
    or from the class's cost model when the bundle has no figure for the class."""
    for row in bundle.thresholds:
        if row.node_class == node.node_class.name and row.hourly_cost is not None:
            return Decimal(row.hourly_cost)
    return node.node_class.hourly_cost


def measured_cost(bundle: PolicyBundle, node: Node, model: str) -> tuple[Decimal, str] | None:
    """What 1,000 inferences of `model` cost the node to serve, computed as the node does
    (inference.enforcement.cost_per_1000) from its reported batch-1 run time, and how; None
    when the node has not measured the model (it does not serve it)."""
    timed = [row for row in loaded_rows(node, model) if row.get("run_ms_batch1") is not None]
    if not timed:
        return None
    # The ready version is the one serving; any measured one is better than none.
    row = next((r for r in timed if r.get("ready")), timed[0])
    run_ms = float(row["run_ms_batch1"])
    per_hour = hourly_cost(bundle, node)
    how = (
        f"computed: {run_ms:g} ms per inference at {format_amount(per_hour)} "
        f"{node.node_class.currency} per hour"
    )
    return cost_per_1000(per_hour, run_ms / 1000), how


# --- the simulation ------------------------------------------------------------------------------


def simulate(bundle: PolicyBundle, scenario: Scenario) -> Simulation:
    """Decide the scenario's request with inference.policy.decide, as the node would under
    `bundle`. The scenario's grade must be known (given, or graded in the bundle)."""
    node = scenario.node
    grade = scenario.grade or grade_of(bundle, scenario.model)
    if grade is None:
        raise ValueError(f"bundle {bundle.revision} does not grade {scenario.model!r}: give one")
    inputs: list[Input] = []

    def note(name: str, value: str, source: str) -> None:
        inputs.append(Input(name, value, source))

    note(
        "grade",
        grade,
        SET if scenario.grade else f"graded in bundle revision {bundle.revision}",
    )
    temperature = scenario.temperature_c
    if temperature is None:
        temperature = node.temperature_c
        source = REPORTED + (" (simulated)" if node.temperature_simulated else "")
        note("temperature", _celsius(temperature), source if temperature is not None else UNKNOWN)
    else:
        note("temperature", _celsius(temperature), SET)
    trend = scenario.trend_c_per_min
    note("temperature trend", f"{trend:+g} °C per minute" if trend else "steady", _set(trend))
    queue_depth = node.queue_depth if scenario.queue_depth is None else scenario.queue_depth
    note("queue depth", str(queue_depth), REPORTED if scenario.queue_depth is None else SET)
    queue_limit = DEFAULT_QUEUE_LIMIT if scenario.queue_limit is None else scenario.queue_limit
    note("queue limit", str(queue_limit), DEFAULT if scenario.queue_limit is None else SET)
    local = scenario.model_loaded
    if local is None:
        local = loaded_and_ready(node, scenario.model)
        note("model on this node", "loaded and ready" if local else "not loaded", REPORTED)
    else:
        note("model on this node", "loaded and ready" if local else "not loaded", SET)
    costs: dict[str, Decimal] = {}
    currency = node.node_class.currency
    if scenario.cost_per_1000 is not None:
        costs[grade] = scenario.cost_per_1000
        note("cost per 1,000", f"{format_amount(costs[grade])} {currency}", SET)
    elif (measured := measured_cost(bundle, node, scenario.model)) is not None:
        costs[grade], how = measured
        note("cost per 1,000", f"{format_amount(costs[grade])} {currency}", how)
    else:
        note("cost per 1,000", "—", f"{UNKNOWN}: the node has not measured this model")
    spent = scenario.session_spent
    note("session spent", format_amount(spent), _set(spent))
    note("bundle age", f"{scenario.bundle_age_s:g} s", _set(scenario.bundle_age_s))

    state = NodeState(
        region=node.region.code,
        node_class=node.node_class.name,
        temperature_c=temperature,
        temperature_slope=scenario.trend_c_per_min / 60,
        queue_depth=queue_depth,
        queue_limit=queue_limit,
        cost_per_1000=costs,
        bundle_age_s=scenario.bundle_age_s,
    )
    request = Request(
        tenant=scenario.tenant,
        grade=grade,
        local=local,
        session_spent=scenario.session_spent,
    )
    decision = decide(PolicyView(bundle), state, request)
    pools = {pool.region: pool for pool in bundle.pools}
    return Simulation(
        revision=bundle.revision,
        scenario=scenario,
        state=state,
        request=request,
        decision=decision,
        tenant=next((t for t in bundle.tenants if t.slug == scenario.tenant), None),
        inputs=inputs,
        pools=[pools[code] for code in decision.pools if code in pools],
    )


def _set(value: object) -> str:
    """Where a value that defaults to zero came from."""
    return SET if value else DEFAULT


def _celsius(value: float | None) -> str:
    return "—" if value is None else f"{value:g} °C"
