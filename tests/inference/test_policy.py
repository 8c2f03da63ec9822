"""The per-request routing decision (inference/policy.py): each rule, in order, with the
reason it gives."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from inference.policy import NodeState, PolicyView, Request, decide
from inference.protocol import ClassThresholds, PolicyBundle, PriceRow, Route, TenantRules

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def rules(slug="acme", **fields):
    base = {
        "privacy": "any",
        "fallback": "regional",
        "quality": "best_effort",
        "currency": "EUR",
        "on_budget_exhausted": "alert",
    }
    return TenantRules(slug=slug, **{**base, **fields})


def view(*tenants, routes=None):
    tenants = tenants or (rules(),)
    return PolicyView(
        PolicyBundle(
            revision=3,
            issued_at=NOW,
            expires_at=NOW + timedelta(hours=1),
            tenants=list(tenants),
            routes=routes
            if routes is not None
            else [Route(tenant=t.slug, region="eu-west", pools=["eu-west"]) for t in tenants],
            prices=[
                PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.10"),
                PriceRow(grade="tiny", serving="regional", currency="EUR", per_1000="0.30"),
            ],
            thresholds=[
                ClassThresholds(
                    node_class="nano", thermal_envelope_c=70.0, cost_ceilings={"tiny": "0.05"}
                )
            ],
        )
    )


NANO = NodeState(region="eu-west", node_class="nano", temperature_c=50.0, queue_limit=8)
TINY = Request(tenant="acme", grade="tiny")


def test_a_healthy_node_serves_locally_at_the_local_price():
    decision = decide(view(), NANO, TINY)
    assert (decision.action, decision.status, decision.rule) == ("local", 200, "local")
    assert decision.price == Decimal("0.0001")


def test_an_unknown_tenant_is_refused():
    decision = decide(view(), NANO, Request(tenant="ghost", grade="tiny"))
    assert (decision.status, decision.rule) == (403, "unknown_tenant")
    assert "revision 3" in decision.reason


def test_a_tenant_that_fails_closed_is_refused_on_a_stale_bundle():
    v = view(rules(fail_closed_after_s=60))
    stale = NodeState(region="eu-west", node_class="nano", bundle_age_s=61)
    decision = decide(v, stale, TINY)
    assert (decision.status, decision.rule, decision.retry_after_s) == (503, "fail_closed", 5)
    assert decide(v, NANO, TINY).action == "local"


def test_an_exhausted_budget_blocks_or_downgrades():
    assert (
        decide(view(rules(budget_exhausted=True, on_budget_exhausted="block")), NANO, TINY).status
        == 402
    )
    downgraded = view(rules(budget_exhausted=True, on_budget_exhausted="downgrade", quality="high"))
    decision = decide(downgraded, NANO, TINY)
    assert decision.action == "local" and "budget downgrade" in decision.reason


@pytest.mark.parametrize(
    ("state", "request_", "rule"),
    [
        (NANO, Request(tenant="acme", grade="tiny", local=False), "model_not_local"),
        (NodeState(region="eu-west", node_class="nano", temperature_c=71.0), TINY, "thermal"),
        (
            NodeState(region="eu-west", node_class="nano", queue_depth=8, queue_limit=8),
            TINY,
            "capacity",
        ),
        (
            NodeState(region="eu-west", node_class="nano", cost_per_1000={"tiny": Decimal("0.06")}),
            TINY,
            "cost",
        ),
    ],
)
def test_each_reason_offloads_to_the_route_at_the_regional_price(state, request_, rule):
    decision = decide(view(), state, request_)
    assert (decision.action, decision.rule, decision.pools) == ("offload", rule, ("eu-west",))
    assert decision.price == Decimal("0.0003")


def test_predicted_heat_sheds_best_effort_traffic_first():
    heating = NodeState(
        region="eu-west", node_class="nano", temperature_c=65.0, temperature_slope=0.2
    )
    assert decide(view(), heating, TINY).rule == "thermal"  # 65 + 0.2 × 30 = 71 ≥ 70
    careful = view(rules(quality="high"))
    on_accelerator = NodeState(
        region="eu-west", node_class="accelerator", temperature_c=65.0, temperature_slope=0.2
    )
    assert decide(careful, on_accelerator, TINY).action == "local"  # high quality is not shed
    cooling = NodeState(
        region="eu-west", node_class="nano", temperature_c=65.0, temperature_slope=-0.5
    )
    assert decide(view(), cooling, TINY).action == "local"


def test_quality_high_leaves_a_nano_node_but_not_an_accelerator():
    v = view(rules(quality="high"))
    assert decide(v, NANO, TINY).rule == "tenant_quality"
    accelerator = NodeState(region="eu-west", node_class="accelerator")
    assert decide(v, accelerator, TINY).action == "local"


def test_without_a_route_soft_reasons_serve_here_and_hard_ones_are_refused():
    no_routes = view(rules(quality="high"), routes=[])
    decision = decide(no_routes, NANO, TINY)
    assert decision.action == "local" and "no route allows it" in decision.reason
    hot = NodeState(region="eu-west", node_class="nano", temperature_c=80.0)
    decision = decide(no_routes, hot, TINY)
    assert (decision.status, decision.rule, decision.retry_after_s) == (503, "thermal", 5)


def test_privacy_that_forbids_leaving_is_a_403_when_the_model_is_elsewhere():
    local_only = view(rules(privacy="local_only", fallback="reject"), routes=[])
    decision = decide(local_only, NANO, Request(tenant="acme", grade="tiny", local=False))
    assert (decision.status, decision.rule) == (403, "privacy")
    assert "local_only" in decision.reason


def test_the_spend_cap_refuses_the_request_that_would_pass_it():
    capped = view(rules(max_spend_per_session="0.0010"))
    under = Request(tenant="acme", grade="tiny", session_spent=Decimal("0.0009"))
    over = Request(tenant="acme", grade="tiny", session_spent=Decimal("0.00095"))
    assert decide(capped, NANO, under).action == "local"  # 0.0009 + 0.0001 = the cap exactly
    decision = decide(capped, NANO, over)
    assert (decision.status, decision.rule) == (402, "spend_cap")
