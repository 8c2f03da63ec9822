"""The node's policy gate (inference/gate.py) without a network: what it decides from the
active bundle and the node's state, and what it settles afterwards."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from inference import protocol
from inference.bundle_store import BundleStore
from inference.enforcement import Tokeniser
from inference.gate import PolicyGate
from inference.metrics import AgentMetrics
from inference.protocol import (
    ClassThresholds,
    ModelGrade,
    PolicyBundle,
    Pool,
    PoolNode,
    PriceRow,
    Route,
    TenantRules,
    sign_bundle,
)

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
KEY = protocol.generate_private_key()


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def rules(slug, **fields):
    values = {
        "privacy": "any",
        "fallback": "regional",
        "quality": "best_effort",
        "currency": "EUR",
        "on_budget_exhausted": "alert",
    }
    values.update(fields)
    return TenantRules(slug=slug, **values)


def bundle(*tenants, revision=1, ttl=timedelta(hours=1), forward_key=None):
    return PolicyBundle(
        forward_key=forward_key,
        revision=revision,
        issued_at=NOW,
        expires_at=NOW + ttl,
        tenants=list(tenants),
        pools=[
            Pool(
                region="eu-west",
                residency_zone="EU",
                nodes=[PoolNode(uid="gpu", endpoint="http://gpu")],
            )
        ],
        routes=[Route(tenant=t.slug, region="eu-west", pools=["eu-west"]) for t in tenants],
        prices=[
            PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="1"),
            PriceRow(grade="tiny", serving="regional", currency="EUR", per_1000="3"),
        ],
        thresholds=[
            ClassThresholds(
                node_class="nano",
                thermal_envelope_c=70,
                cost_ceilings={"tiny": "0.5"},
                hourly_cost="0.036",
            )
        ],
        models=[ModelGrade(name="doubler", grade="tiny")],
    )


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def gate(tmp_path, clock):
    store = BundleStore(None, clock=clock)
    store.trust(KEY.public_key())
    gate = PolicyGate(
        store,
        AgentMetrics(),
        queue_depth=lambda: 0,
        run_seconds=lambda: {"doubler": 0.0001},
        tokeniser=Tokeniser(b"k" * 32),
        clock=clock,
    )
    gate.bind_identity(
        protocol.EnrollResponse(
            node_uid="edge",
            name="fra-nano-1",
            region="eu-west",
            node_class="nano",
            credential="opn_x",
            console_public_key=protocol.public_key_to_b64(KEY.public_key()),
            heartbeat_interval_s=1,
        )
    )
    return gate


def activate(gate, *tenants, **fields):
    gate.bundles.offer(sign_bundle(KEY, bundle(*tenants, **fields)))
    gate.tick(None)


def admit(gate, tenant="acme", model="doubler", local=True, **headers):
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return gate.admit(tenant, model, local, raw)


def test_without_a_bundle_every_request_is_refused_with_503_and_retry_after(gate):
    decision = admit(gate).decision
    assert (decision.status, decision.rule, decision.retry_after_s) == (503, "no_policy", 5)


def test_an_expired_bundle_is_enforced_no_more(gate, clock):
    activate(gate, rules("acme"))
    assert admit(gate).decision.action == "local"
    clock.now += 3601
    decision = admit(gate).decision
    assert (decision.status, decision.rule) == (503, "policy_expired")


def test_a_local_answer_is_priced_in_the_tenants_currency_and_carries_its_request_id(gate):
    activate(gate, rules("acme"))
    admission = admit(gate, x_request_id="req-7")
    assert admission.decision.price == Decimal("0.001")
    assert dict(admission.headers()) == {
        b"x-request-id": b"req-7",
        b"x-outpost-cost": b"0.001 EUR",
    }


def test_a_session_is_charged_once_served_and_released_when_not(gate):
    activate(gate, rules("acme", max_spend_per_session="0.002"))
    served = admit(gate, x_session_id="s")
    failed = admit(gate, x_session_id="s")
    refused = admit(gate, x_session_id="s")
    assert refused.decision.status == 402  # two reserved: the cap is reached

    gate.settle(served, 200)
    gate.settle(failed, 500)
    assert gate.ledger.spent("acme", "s") == Decimal("0.001")
    assert admit(gate, x_session_id="s").decision.action == "local"


def test_beyond_its_rate_limit_a_tenant_gets_429(gate):
    activate(gate, rules("acme", rate_limit_per_s=2))
    statuses = [admit(gate).decision.status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert admit(gate, "acme", x_outpost_forwarded_by="edge-2").decision.status == 200


def test_a_tenant_that_fails_closed_is_refused_once_the_bundle_is_unconfirmed_too_long(gate, clock):
    activate(gate, rules("acme", fail_closed_after_s=60))
    clock.now += 50
    gate.bundles.confirm(1)  # the console says it is still the newest
    clock.now += 50
    assert admit(gate).decision.action == "local"
    clock.now += 20
    decision = admit(gate).decision
    assert (decision.status, decision.rule) == (503, "fail_closed")


def test_a_hot_node_offloads_and_its_simulated_heat_is_what_it_reads(gate, clock):
    activate(gate, rules("acme"))
    gate.simulate(90.0)
    for _ in range(30):  # 45 °C up at 1 °C/s, a reading a second
        clock.now += 1
        gate.tick(None)
    assert gate.temperature_simulated and gate.temperature_c == pytest.approx(75)
    decision = admit(gate).decision
    assert (decision.action, decision.rule, decision.pools) == ("offload", "thermal", ("eu-west",))
    assert decision.price == Decimal("0.003")  # the regional price


def test_cost_per_inference_comes_from_the_class_hourly_cost_and_the_measured_run(gate):
    activate(gate, rules("acme"))
    # 0.036 an hour × 0.1 ms per inference × 1,000 = 0.000001 per 1,000: under the ceiling.
    assert gate.model_costs == {"doubler": {"tiny": Decimal("0.000001000")}}
    gate.run_seconds = lambda: {"doubler": 100.0}  # 100 s an inference: 1.0 per 1,000
    gate.tick(None)
    assert admit(gate).decision.rule == "cost"


def test_a_forwarded_request_is_served_here_priced_regionally_never_sent_on(gate, clock):
    activate(gate, rules("acme"))
    gate.simulate(200.0)
    for _ in range(60):
        clock.now += 1
        gate.tick(None)
    forwarded = admit(gate, x_outpost_forwarded_by="edge-2").decision
    assert (forwarded.action, forwarded.rule, forwarded.price) == (
        "local",
        "forwarded",
        Decimal("0.003"),
    )
    missing = admit(gate, local=False, x_outpost_forwarded_by="edge-2").decision
    assert (missing.status, missing.rule) == (503, "model_not_local")


def test_it_knows_only_the_models_the_console_grades(gate):
    assert not gate.knows("doubler")
    activate(gate, rules("acme"))
    assert gate.knows("doubler") and not gate.knows("mystery")


def test_settling_counts_every_decision_and_samples_refusals(gate):
    activate(gate, rules("acme"))
    refused = admit(gate, "stranger", x_request_id="req-x")
    gate.settle(refused, refused.decision.status)
    gate.settle(admit(gate), 200)

    assert gate.metrics.decisions == {("refuse", "unknown_tenant"): 1, ("local", "local"): 1}
    pending = gate.sampler.pending()
    assert pending[0].request_id == "req-x"
    assert (pending[0].status, pending[0].bundle_revision) == (403, 1)


def test_every_request_offloaded_here_is_logged_so_a_lookup_finds_both_hops(gate):
    activate(gate, rules("acme"))
    for i in range(30):
        admission = admit(gate, x_outpost_forwarded_by="edge-2", x_request_id=f"req-{i}")
        gate.settle(admission, 200)
    for _ in range(30):
        gate.settle(admit(gate), 200)

    kept = gate.sampler.pending()
    assert [r.request_id for r in kept[:30]] == [f"req-{i}" for i in range(30)]
    assert {(r.rule, r.served_by) for r in kept[:30]} == {("forwarded", "regional")}
    assert len(kept) == 30 + 2  # local decisions: one in twenty


def test_a_forwarded_request_knows_why_it_was_offloaded_if_the_reason_is_one_we_know(gate):
    activate(gate, rules("acme"))
    forwarded = admit(gate, x_outpost_forwarded_by="edge-2", x_outpost_offload_reason="thermal")
    assert (forwarded.offload_reason, forwarded.grade) == ("thermal", "tiny")
    made_up = admit(gate, x_outpost_forwarded_by="edge-2", x_outpost_offload_reason="cheaper")
    assert made_up.offload_reason is None
    # Only the second hop of an offload has a reason: a client's header is ignored.
    assert admit(gate, x_outpost_offload_reason="thermal").offload_reason is None


def test_an_offload_tells_the_pool_node_why_so_it_bills_the_reason(gate):
    seen = []

    def pool(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"outputs": []})

    gate.client = httpx.AsyncClient(transport=httpx.MockTransport(pool))
    activate(gate, rules("acme"))
    admission = admit(gate, local=False, x_request_id="req-1")
    assert (admission.decision.action, admission.decision.rule) == ("offload", "model_not_local")

    answer = asyncio.run(gate.forward(admission, "/v2/models/doubler/infer", b"{}", []))
    assert (answer.status, answer.target) == (200, "gpu")
    assert seen[0][protocol.OFFLOAD_REASON_HEADER] == "model_not_local"
    assert seen[0]["x-outpost-forwarded-by"] == "edge"


FORWARD_KEY = b"f" * 32


def test_a_pool_node_serves_as_forwarded_only_what_a_fleet_node_proves_it_forwarded(gate, clock):
    import base64

    activate(gate, rules("acme"), forward_key=base64.b64encode(FORWARD_KEY).decode())
    proof = protocol.forward_auth(FORWARD_KEY, "edge-2", "req-9", clock())

    genuine = admit(
        gate, x_request_id="req-9", x_outpost_forwarded_by="edge-2", x_outpost_forward_auth=proof
    )
    claimed = admit(gate, x_request_id="req-9", x_outpost_forwarded_by="edge-2")
    replayed = admit(
        gate, x_request_id="req-10", x_outpost_forwarded_by="edge-2", x_outpost_forward_auth=proof
    )
    clock.now += protocol.FORWARD_AUTH_MAX_AGE_S + 1
    stale = admit(
        gate, x_request_id="req-9", x_outpost_forwarded_by="edge-2", x_outpost_forward_auth=proof
    )

    assert (genuine.forwarded, genuine.decision.rule) == (True, "forwarded")
    for refused in (claimed, replayed, stale):
        assert (refused.forwarded, refused.decision.status) == (False, 403)
        assert refused.decision.rule == "forward_unauthenticated"


def test_an_offload_carries_the_fleets_proof(gate, clock):
    import base64

    seen = []

    def pool(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"outputs": []})

    gate.client = httpx.AsyncClient(transport=httpx.MockTransport(pool))
    activate(gate, rules("acme"), forward_key=base64.b64encode(FORWARD_KEY).decode())
    admission = admit(gate, local=False, x_request_id="req-1")

    asyncio.run(gate.forward(admission, "/v2/models/doubler/infer", b"{}", []))

    proof = seen[0][protocol.FORWARD_AUTH_HEADER]
    assert protocol.forward_auth_valid(FORWARD_KEY, "edge", "req-1", proof, clock())
