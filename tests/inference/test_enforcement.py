"""The node's enforcement building blocks (inference/enforcement.py): spend reservations per
session, rate limits, tokenisation of sensitive inputs, the thermal trend and its simulation,
decision sampling, sticky pool routing and the cost of serving."""

import asyncio
import hashlib
import hmac
import math
import stat
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from inference import protocol
from inference.codec import parse_infer_body
from inference.enforcement import (
    DecisionSampler,
    RateLimiter,
    SimulatedThermometer,
    SpendLedger,
    ThermalTrend,
    Tokeniser,
    cost_per_1000,
    load_or_create_key,
    pick_pool_node,
)
from inference.policy import NodeState, PolicyView, Request, decide, offload_reason
from inference.protocol import (
    ClassThresholds,
    DecisionRecord,
    PolicyBundle,
    PoolNode,
    PriceRow,
    TenantRules,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


# --- SpendLedger ---------------------------------------------------------------------------


def test_a_reservation_counts_as_spent_before_it_is_settled():
    ledger = SpendLedger()
    ledger.reserve("acme", "s1", Decimal("0.25"))
    assert ledger.spent("acme", "s1") == Decimal("0.25")
    assert ledger.spent("acme", "s2") == 0
    assert ledger.spent("globex", "s1") == 0


def test_a_charged_reservation_stays_spent_and_a_released_one_is_given_back():
    ledger = SpendLedger()
    charged = ledger.reserve("acme", "s1", Decimal("0.25"))
    released = ledger.reserve("acme", "s1", Decimal("0.10"))
    assert ledger.spent("acme", "s1") == Decimal("0.35")
    ledger.settle(charged, charged=True)
    ledger.settle(released, charged=False)
    assert ledger.spent("acme", "s1") == Decimal("0.25")
    assert not charged.pending and not released.pending


def test_settling_twice_changes_nothing():
    ledger = SpendLedger()
    reservation = ledger.reserve("acme", "s1", Decimal("0.25"))
    ledger.settle(reservation, charged=True)
    ledger.settle(reservation, charged=True)
    ledger.settle(reservation, charged=False)
    assert ledger.spent("acme", "s1") == Decimal("0.25")
    released = ledger.reserve("acme", "s2", Decimal("0.5"))
    ledger.settle(released, charged=False)
    ledger.settle(released, charged=True)
    assert ledger.spent("acme", "s2") == 0


def test_money_stays_decimal_and_exact():
    ledger = SpendLedger()
    for _ in range(10):
        ledger.settle(ledger.reserve("acme", "s1", Decimal("0.1")), charged=True)
    spent = ledger.spent("acme", "s1")
    assert isinstance(spent, Decimal) and spent == Decimal("1.0")


def test_a_negative_reservation_is_refused():
    with pytest.raises(ValueError, match="negative"):
        SpendLedger().reserve("acme", "s1", Decimal("-0.01"))


def test_try_reserve_refuses_what_would_pass_the_cap():
    ledger = SpendLedger()
    cap = Decimal("1.00")
    assert ledger.try_reserve("acme", "s1", Decimal("0.60"), cap) is not None
    assert ledger.try_reserve("acme", "s1", Decimal("0.40"), cap) is not None  # exactly the cap
    assert ledger.try_reserve("acme", "s1", Decimal("0.01"), cap) is None
    assert ledger.spent("acme", "s1") == cap
    assert ledger.try_reserve("acme", "s1", Decimal("5"), None) is not None  # no cap


def test_a_released_reservation_makes_room_under_the_cap_again():
    ledger = SpendLedger()
    cap = Decimal("1.00")
    held = ledger.try_reserve("acme", "s1", Decimal("1.00"), cap)
    assert ledger.try_reserve("acme", "s1", Decimal("0.50"), cap) is None
    ledger.settle(held, charged=False)
    assert ledger.try_reserve("acme", "s1", Decimal("0.50"), cap) is not None


def test_the_least_recently_used_session_is_forgotten_beyond_max_sessions():
    ledger = SpendLedger(max_sessions=2)
    ledger.reserve("acme", "a", Decimal("1"))
    ledger.reserve("acme", "b", Decimal("2"))
    ledger.spent("acme", "a")  # a is used again: b is now the least recent
    ledger.reserve("acme", "c", Decimal("3"))
    assert len(ledger) == 2
    assert ledger.spent("acme", "a") == Decimal("1")
    assert ledger.spent("acme", "b") == 0
    assert ledger.spent("acme", "c") == Decimal("3")


def test_reading_an_unknown_session_does_not_track_it():
    ledger = SpendLedger(max_sessions=2)
    ledger.reserve("acme", "a", Decimal("1"))
    for i in range(10):
        assert ledger.spent("acme", f"x{i}") == 0
    assert len(ledger) == 1 and ledger.spent("acme", "a") == Decimal("1")


def test_an_idle_session_is_forgotten_after_the_ttl():
    clock = FakeClock()
    ledger = SpendLedger(idle_ttl_s=3600, clock=clock)
    ledger.settle(ledger.reserve("acme", "idle", Decimal("1")), charged=True)
    ledger.settle(ledger.reserve("acme", "busy", Decimal("1")), charged=True)
    clock.now += 3000
    assert ledger.spent("acme", "busy") == Decimal("1")  # touched: its idle time restarts
    clock.now += 601
    assert ledger.spent("acme", "idle") == 0
    assert ledger.spent("acme", "busy") == Decimal("1")


def test_idle_sessions_are_swept_when_new_ones_arrive():
    clock = FakeClock()
    ledger = SpendLedger(idle_ttl_s=10, clock=clock)
    for i in range(5):
        ledger.reserve("acme", f"old{i}", Decimal("1"))
    clock.now += 11
    ledger.reserve("acme", "new", Decimal("1"))
    assert len(ledger) == 1


def test_settling_a_forgotten_session_is_harmless_and_does_not_bring_it_back():
    ledger = SpendLedger(max_sessions=1)
    reservation = ledger.reserve("acme", "a", Decimal("1"))
    ledger.reserve("acme", "b", Decimal("1"))  # a is forgotten
    ledger.settle(reservation, charged=True)
    assert ledger.spent("acme", "a") == 0
    assert len(ledger) == 1 and ledger.spent("acme", "b") == Decimal("1")


def test_64_concurrent_tasks_never_charge_past_the_cap():
    ledger = SpendLedger()
    price, cap = Decimal("0.0003"), Decimal("0.0100")
    charged: list[Decimal] = []

    refused = 0

    async def one_request(wave, i):
        nonlocal refused
        reservation = ledger.try_reserve("acme", "s1", price, cap)
        if reservation is None:
            refused += 1
            return
        await asyncio.sleep(0)  # the inference: every other task runs meanwhile
        failed = wave == 0 and i % 7 == 0
        ledger.settle(reservation, charged=not failed)
        if not failed:
            charged.append(price)

    async def main():
        for wave in range(3):  # what the first wave released lets the next ones in
            await asyncio.gather(*(one_request(wave, i) for i in range(64)))

    asyncio.run(main())
    total = sum(charged, Decimal(0))
    assert total <= cap
    assert total == ledger.spent("acme", "s1")
    assert cap - total < price  # the cap was used up, not merely respected
    assert refused == 3 * 64 - len(charged) - 5  # 5 of the first wave failed


def test_64_concurrent_requests_checked_by_the_policy_overshoot_by_at_most_one_price():
    """The agent's own path: policy.decide sees session_spent, then reserve, with no await
    between them."""
    cap = "0.0010"
    view = PolicyView(
        PolicyBundle(
            revision=1,
            issued_at=NOW,
            expires_at=NOW + timedelta(hours=1),
            tenants=[
                TenantRules(
                    slug="acme",
                    privacy="any",
                    fallback="regional",
                    quality="best_effort",
                    currency="EUR",
                    on_budget_exhausted="alert",
                    max_spend_per_session=cap,
                )
            ],
            prices=[PriceRow(grade="tiny", serving="local", currency="EUR", per_1000="0.30")],
        )
    )
    state = NodeState(region="eu-west", node_class="nano")
    ledger = SpendLedger()
    outcomes = Counter()

    async def one_request():
        request = Request(tenant="acme", grade="tiny", session_spent=ledger.spent("acme", "s1"))
        decision = decide(view, state, request)
        outcomes[decision.rule] += 1
        if decision.action != "local":
            return
        reservation = ledger.reserve("acme", "s1", decision.price)
        await asyncio.sleep(0)
        ledger.settle(reservation, charged=True)

    async def main():
        await asyncio.gather(*(one_request() for _ in range(64)))

    asyncio.run(main())
    price = Decimal("0.0003")
    assert ledger.spent("acme", "s1") <= Decimal(cap) + price
    assert ledger.spent("acme", "s1") == 3 * price
    assert outcomes == {"local": 3, "spend_cap": 61}


def test_64_threads_never_charge_past_the_cap():
    ledger = SpendLedger()
    price, cap = Decimal("0.0007"), Decimal("0.1000")
    start = threading.Barrier(64)
    charged = []
    charged_lock = threading.Lock()

    def worker():
        start.wait()
        for _ in range(20):
            reservation = ledger.try_reserve("acme", "s1", price, cap)
            if reservation is None:
                continue
            time.sleep(0.0002)  # the inference: other threads reserve meanwhile
            ledger.settle(reservation, charged=True)
            with charged_lock:
                charged.append(price)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker) for _ in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    total = sum(charged, Decimal(0))
    assert total <= cap
    assert total == ledger.spent("acme", "s1") == price * int(cap / price)


# --- RateLimiter -------------------------------------------------------------------------


def test_a_full_bucket_admits_a_burst_of_one_seconds_worth_then_says_how_long_to_wait():
    limiter = RateLimiter()
    assert [limiter.check("acme", 4, now=0.0) for _ in range(4)] == [None] * 4
    wait = limiter.check("acme", 4, now=0.0)
    assert wait == pytest.approx(0.25)
    assert math.ceil(wait) == 1  # the Retry-After header


def test_the_bucket_refills_continuously():
    limiter = RateLimiter()
    for _ in range(2):
        limiter.check("acme", 2, now=10.0)
    assert limiter.check("acme", 2, now=10.2) == pytest.approx(0.3)  # 0.4 token there
    assert limiter.check("acme", 2, now=10.5) is None  # one token after half a second
    assert limiter.check("acme", 2, now=10.5) == pytest.approx(0.5)


def test_the_bucket_never_holds_more_than_one_seconds_worth():
    limiter = RateLimiter()
    limiter.check("acme", 3, now=0.0)
    admitted = [limiter.check("acme", 3, now=3600.0) for _ in range(5)]
    assert admitted[:3] == [None, None, None] and admitted[3] is not None


def test_a_steady_sender_at_the_limit_is_never_refused():
    limiter = RateLimiter()
    assert all(limiter.check("acme", 10, now=i * 0.1) is None for i in range(200))


def test_tenants_have_their_own_buckets_and_no_rate_means_no_limit():
    limiter = RateLimiter()
    assert limiter.check("acme", 1, now=0.0) is None
    assert limiter.check("acme", 1, now=0.0) is not None
    assert limiter.check("globex", 1, now=0.0) is None
    assert all(limiter.check("initech", None, now=0.0) is None for _ in range(1000))
    assert len(limiter) == 2


def test_a_lower_rate_from_a_new_bundle_applies_at_once():
    limiter = RateLimiter()
    limiter.check("acme", 100, now=0.0)  # 99 tokens left
    assert limiter.check("acme", 2, now=0.0) is None
    assert limiter.check("acme", 2, now=0.0) is None
    assert limiter.check("acme", 2, now=0.0) is not None


def test_the_limiter_uses_its_clock_when_no_time_is_given():
    clock = FakeClock(50.0)
    limiter = RateLimiter(clock=clock)
    assert limiter.check("acme", 1) is None
    assert limiter.check("acme", 1) == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.check("acme", 1) is None


def test_the_least_recently_used_tenant_is_forgotten_beyond_max_tenants():
    limiter = RateLimiter(max_tenants=2)
    limiter.check("a", 1, now=0.0)
    limiter.check("b", 1, now=0.0)
    limiter.check("a", 1, now=0.0)  # a used again (refused): b is the least recent
    limiter.check("c", 1, now=0.0)
    assert len(limiter) == 2
    assert limiter.check("b", 1, now=0.0) is None  # forgotten: a fresh, full bucket
    assert limiter.check("c", 1, now=0.0) is not None  # c is still tracked and empty


# --- Tokeniser -----------------------------------------------------------------------------


def test_a_token_is_the_documented_keyed_hash():
    tokeniser = Tokeniser(KEY)
    expected = hmac.new(KEY, b'acme\x1fcustomer_id\x1f"C-1001"', hashlib.sha256).hexdigest()
    assert tokeniser.token("acme", "customer_id", "C-1001") == "tok_" + expected[:32]


def test_tokens_are_stable_and_distinct_per_tenant_field_value_and_key():
    tokeniser = Tokeniser(KEY)
    token = tokeniser.token("acme", "customer_id", "C-1001")
    assert token == Tokeniser(KEY).token("acme", "customer_id", "C-1001")
    others = {
        tokeniser.token("globex", "customer_id", "C-1001"),
        tokeniser.token("acme", "account", "C-1001"),
        tokeniser.token("acme", "customer_id", "C-1002"),
        tokeniser.token("acme", "customer_id", 1001),
        Tokeniser(b"k" * 32).token("acme", "customer_id", "C-1001"),
    }
    assert token not in others and len(others) == 5


def test_structured_values_are_hashed_in_canonical_form():
    tokeniser = Tokeniser(KEY)
    assert tokeniser.token("acme", "f", {"a": 1, "b": 2}) == tokeniser.token(
        "acme", "f", {"b": 2, "a": 1}
    )


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Tokeniser(b"x" * 31)


def test_scrub_replaces_only_the_named_fields_present_and_leaves_the_input_alone():
    tokeniser = Tokeniser(KEY)
    params = {"customer_id": "C-1001", "amount": 12.5, "email": None}
    scrubbed = tokeniser.scrub(params, ["customer_id", "email", "missing"], "acme")
    assert scrubbed == {
        "customer_id": tokeniser.token("acme", "customer_id", "C-1001"),
        "amount": 12.5,
        "email": None,
    }
    assert params["customer_id"] == "C-1001"
    assert "missing" not in scrubbed
    unchanged = tokeniser.scrub(params, ["other"], "acme")
    assert unchanged == params and unchanged is not params


def test_scrub_does_not_tokenise_a_token_twice():
    tokeniser = Tokeniser(KEY)
    once = tokeniser.scrub({"customer_id": "C-1001"}, ["customer_id"], "acme")
    assert tokeniser.scrub(once, ["customer_id"], "acme") == once
    # Something that merely starts like a token is still tokenised.
    almost = {"customer_id": "tok_not-a-token"}
    assert tokeniser.scrub(almost, ["customer_id"], "acme") != almost


def infer_doc(**parameters):
    doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.5]}]}
    if parameters:
        doc["parameters"] = parameters
    return doc


def test_a_json_body_is_rewritten_with_its_sensitive_fields_tokenised():
    tokeniser = Tokeniser(KEY)
    body = orjson.dumps(infer_doc(customer_id="C-1001", region="eu"))
    new, json_length = tokeniser.rewrite_infer_body(body, None, ["customer_id"], "acme")
    assert json_length is None
    doc = orjson.loads(new)
    assert doc["parameters"] == {
        "customer_id": tokeniser.token("acme", "customer_id", "C-1001"),
        "region": "eu",
    }
    assert doc["inputs"] == infer_doc()["inputs"]


def test_a_binary_body_keeps_its_tensor_bytes_and_gets_the_new_header_length():
    tokeniser = Tokeniser(KEY)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ],
            "parameters": {"customer_id": "C-1"},
        }
    )
    tensor = bytes([0, 0, 128, 63, 0, 0, 32, 64]) + b"{not json}"
    body = header + tensor
    new, json_length = tokeniser.rewrite_infer_body(body, len(header), ["customer_id"], "acme")
    assert json_length != len(header)  # the token is longer than the id
    assert new[json_length:] == tensor
    parsed = parse_infer_body(new, json_length)
    assert parsed.doc["parameters"]["customer_id"] == tokeniser.token("acme", "customer_id", "C-1")
    assert parsed.doc["inputs"][0]["parameters"] == {"binary_data_size": 8}
    assert bytes(parsed.binary) == tensor


@pytest.mark.parametrize(
    "body, json_length",
    [
        (orjson.dumps(infer_doc(region="eu")), None),  # no sensitive field
        (orjson.dumps(infer_doc()), None),  # no parameters
        (orjson.dumps(infer_doc(customer_id=None)), None),  # nothing to hide
        (b"{not json", None),
        (b"[1, 2]", None),  # not an object
        (orjson.dumps({"inputs": [], "parameters": ["customer_id"]}), None),
        (orjson.dumps(infer_doc(customer_id="C-1")) + b"\x00\x01", 1000),  # too long a header
        (orjson.dumps(infer_doc(customer_id="C-1")) + b"\x00\x01", 5),  # header cut mid-JSON
    ],
)
def test_a_body_with_nothing_to_tokenise_is_returned_as_it_is(body, json_length):
    tokeniser = Tokeniser(KEY)
    new, new_length = tokeniser.rewrite_infer_body(body, json_length, ["customer_id"], "acme")
    assert new is body and new_length == json_length


def test_a_body_already_tokenised_upstream_is_forwarded_as_it_is():
    tokeniser = Tokeniser(KEY)
    body = orjson.dumps(infer_doc(customer_id="C-1001"))
    once, _ = tokeniser.rewrite_infer_body(body, None, ["customer_id"], "acme")
    twice, _ = Tokeniser(b"k" * 32).rewrite_infer_body(once, None, ["customer_id"], "acme")
    assert twice is once


def test_a_parsed_document_can_be_passed_in_and_is_not_modified():
    tokeniser = Tokeniser(KEY)
    body = orjson.dumps(infer_doc(customer_id="C-1001"))
    doc = orjson.loads(body)
    new, _ = tokeniser.rewrite_infer_body(body, None, ["customer_id"], "acme", doc=doc)
    assert orjson.loads(new)["parameters"]["customer_id"].startswith("tok_")
    assert doc["parameters"]["customer_id"] == "C-1001"


def test_a_key_is_created_once_private_and_then_read_back(tmp_path):
    path = tmp_path / "state" / "tokenisation.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["tokenisation.key"]  # no temp files
    assert load_or_create_key(tmp_path / "other.key") != key


def test_a_truncated_key_file_is_an_error_not_a_weak_key(tmp_path):
    path = tmp_path / "tokenisation.key"
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="5 bytes"):
        load_or_create_key(path)


# --- ThermalTrend --------------------------------------------------------------------------


def test_the_slope_of_a_ramp_is_its_rate():
    trend = ThermalTrend()
    for t in range(0, 60, 5):
        trend.add(100.0 + t, 50.0 + 0.5 * t)
    assert trend.slope() == pytest.approx(0.5)
    assert trend.latest == pytest.approx(50.0 + 0.5 * 55)


def test_a_cooling_node_has_a_negative_slope():
    trend = ThermalTrend()
    for t in range(30):
        trend.add(float(t), 80.0 - 2.0 * t)
    assert trend.slope() == pytest.approx(-2.0)


def test_noise_around_a_ramp_does_not_swing_the_slope():
    trend = ThermalTrend()
    for t in range(60):
        trend.add(float(t), 40.0 + 0.2 * t + (1.5 if t % 2 else -1.5))
    assert trend.slope() == pytest.approx(0.2, abs=0.01)


def test_only_the_last_minute_counts():
    trend = ThermalTrend()
    for t in range(0, 120):
        trend.add(float(t), 60.0 if t < 59 else 70.0 - 0.1 * (t - 59))
    # The flat first minute and the step are gone: only the last minute's fall (59..119 s).
    assert trend.slope() == pytest.approx(-0.1)
    assert len(trend) == 61


def test_the_slope_is_zero_with_fewer_than_two_readings_or_no_time_between_them():
    trend = ThermalTrend()
    assert trend.slope() == 0.0 and trend.latest is None
    trend.add(10.0, 50.0)
    assert trend.slope() == 0.0
    trend.add(10.0, 90.0)
    assert trend.slope() == 0.0
    trend.add(11.0, 91.0)
    assert trend.slope() > 0


def test_readings_are_bounded():
    trend = ThermalTrend(max_samples=10)
    for i in range(1000):
        trend.add(i * 0.01, 50.0 + i * 0.01)
    assert len(trend) == 10
    assert trend.slope() == pytest.approx(1.0)


# --- SimulatedThermometer ------------------------------------------------------------------


def test_a_simulated_temperature_ramps_up_holds_cools_back_and_hands_over_to_the_sensors():
    thermo = SimulatedThermometer()
    assert thermo.read(0.0) is None and not thermo.active
    thermo.set_target(80.0, 0.0)
    assert thermo.active
    assert thermo.read(0.0) == 45.0
    assert thermo.read(10.0) == pytest.approx(55.0)
    assert thermo.read(35.0) == pytest.approx(80.0)
    assert thermo.read(100.0) == pytest.approx(80.0)  # holds at the target
    thermo.set_target(None, 100.0)
    assert thermo.active
    assert thermo.read(110.0) == pytest.approx(70.0)
    assert thermo.read(134.0) == pytest.approx(46.0)
    assert thermo.read(135.0) is None  # back at ambient: the real sensors again
    assert not thermo.active
    assert thermo.read(200.0) is None


def test_a_new_target_applies_from_where_the_reading_is():
    thermo = SimulatedThermometer(rate_c_per_s=2.0)
    thermo.set_target(90.0, 0.0)
    thermo.set_target(50.0, 10.0)  # reached 65 by then: cool toward 50
    assert thermo.read(12.0) == pytest.approx(61.0)
    assert thermo.read(60.0) == pytest.approx(50.0)


def test_a_target_below_ambient_warms_back_once_cleared():
    thermo = SimulatedThermometer(ambient_c=45.0)
    thermo.set_target(30.0, 0.0)
    assert thermo.read(20.0) == pytest.approx(30.0)
    thermo.set_target(None, 20.0)
    assert thermo.read(30.0) == pytest.approx(40.0)
    assert thermo.read(35.0) is None


def test_clearing_a_target_at_ambient_ends_the_simulation_at_once():
    thermo = SimulatedThermometer()
    thermo.set_target(45.0, 0.0)
    thermo.set_target(None, 1.0)
    assert not thermo.active and thermo.read(1.0) is None
    thermo.set_target(None, 2.0)  # clearing nothing is harmless
    assert not thermo.active


def test_the_simulated_ramp_fires_the_predictive_rule_before_the_envelope():
    view = PolicyView(
        PolicyBundle(
            revision=1,
            issued_at=NOW,
            expires_at=NOW + timedelta(hours=1),
            thresholds=[ClassThresholds(node_class="nano", thermal_envelope_c=70.0)],
        )
    )
    tenant = TenantRules(
        slug="acme",
        privacy="any",
        fallback="regional",
        quality="best_effort",
        currency="EUR",
        on_budget_exhausted="alert",
    )
    thermo, trend = SimulatedThermometer(), ThermalTrend()
    thermo.set_target(90.0, 0.0)
    for t in range(0, 11, 2):
        trend.add(float(t), thermo.read(float(t)))
    assert trend.latest == pytest.approx(55.0) and trend.slope() == pytest.approx(1.0)
    state = NodeState(
        region="eu-west",
        node_class="nano",
        temperature_c=trend.latest,
        temperature_slope=trend.slope(),
    )
    assert offload_reason(view, tenant, state, Request(tenant="acme", grade="tiny")) == (
        "thermal",
        False,  # predicted, not yet over the envelope
    )


# --- DecisionSampler -----------------------------------------------------------------------


def decision(action, request_id="r", **fields):
    return DecisionRecord(
        request_id=request_id,
        at=NOW,
        tenant="acme",
        model="m",
        action=action,
        rule={"local": "local", "offload": "thermal", "refuse": "spend_cap"}[action],
        reason="why",
        status={"local": 200, "offload": 200, "refuse": 402}[action],
        **fields,
    )


def test_every_refusal_and_offload_is_kept_and_one_local_decision_in_n():
    sampler = DecisionSampler(local_every=5)
    for i in range(12):
        sampler.record(decision("local", f"l{i}"))
    sampler.record(decision("offload", "o"))
    sampler.record(decision("refuse", "x"))
    assert [r.request_id for r in sampler.pending()] == ["l0", "l5", "l10", "o", "x"]


def test_the_default_sample_is_the_protocols():
    sampler = DecisionSampler()
    for i in range(protocol.DECISIONS_LOCAL_SAMPLE * 3):
        sampler.record(decision("local", f"l{i}"))
    assert len(sampler.pending()) == 3


def test_wants_advances_the_counter_and_record_keeps_what_it_was_asked_for():
    sampler = DecisionSampler(local_every=3)
    answers = [sampler.wants("local") for _ in range(7)]
    assert answers == [True, False, False, True, False, False, True]
    assert sampler.wants("offload") and sampler.wants("refuse")
    for i, wanted in enumerate(answers):
        if wanted:
            sampler.record(decision("local", f"l{i}"))
    assert [r.request_id for r in sampler.pending()] == ["l0", "l3", "l6"]
    # The grants were used up: a record on its own samples again (8th local: not kept).
    sampler.record(decision("local", "l7"))
    assert len(sampler.pending()) == 3


def test_pending_is_a_copy():
    sampler = DecisionSampler()
    sampler.record(decision("refuse"))
    sampler.pending().clear()
    assert len(sampler.pending()) == 1


def test_ack_removes_exactly_what_was_sent():
    sampler = DecisionSampler()
    sampler.record(decision("refuse", "a"))
    sampler.record(decision("refuse", "b"))
    sent = sampler.pending()
    sampler.record(decision("refuse", "a"))  # equal to a sent one, but recorded since
    sampler.ack(sent)
    [left] = sampler.pending()
    assert left.request_id == "a" and left is not sent[0]
    sampler.ack(sent)  # a repeated acknowledgement removes nothing more
    assert len(sampler.pending()) == 1


def test_pending_records_are_bounded_and_the_dropped_counted():
    sampler = DecisionSampler(max_pending=3)
    for i in range(5):
        sampler.record(decision("offload", f"o{i}"))
    assert [r.request_id for r in sampler.pending()] == ["o2", "o3", "o4"]
    assert sampler.dropped == 2


def test_an_ack_after_older_records_were_dropped_still_removes_the_sent_ones():
    sampler = DecisionSampler(max_pending=3)
    for i in range(3):
        sampler.record(decision("refuse", f"r{i}"))
    sent = sampler.pending()
    sampler.record(decision("refuse", "r3"))  # r0 dropped while the heartbeat was out
    sampler.ack(sent)
    assert [r.request_id for r in sampler.pending()] == ["r3"]


# --- pick_pool_node ------------------------------------------------------------------------


def pool(n):
    return [PoolNode(uid=f"node-{i}", endpoint=f"http://10.0.0.{i}:8000") for i in range(n)]


SESSIONS = [f"session-{i}" for i in range(1000)]


def test_a_session_always_lands_on_the_same_pool_node():
    nodes = pool(4)
    first = [pick_pool_node(nodes, s, f"req-{i}").uid for i, s in enumerate(SESSIONS)]
    again = [pick_pool_node(nodes, s, "another-request").uid for s in SESSIONS]
    assert first == again
    assert pick_pool_node(list(reversed(nodes)), "session-1", None).uid == first[1]


def test_sessions_spread_over_the_pool():
    counts = Counter(pick_pool_node(pool(4), s, None).uid for s in SESSIONS)
    assert len(counts) == 4 and min(counts.values()) > 180


def test_removing_a_node_moves_only_its_sessions():
    nodes = pool(5)
    before = {s: pick_pool_node(nodes, s, None).uid for s in SESSIONS}
    after = {s: pick_pool_node(nodes[:2] + nodes[3:], s, None).uid for s in SESSIONS}
    moved = {s for s in SESSIONS if before[s] != after[s]}
    assert moved == {s for s in SESSIONS if before[s] == "node-2"}
    assert 130 < len(moved) < 270  # about 1/5 of 1000


def test_adding_a_node_moves_about_one_in_n_sessions_all_to_it():
    nodes = pool(5)
    before = {s: pick_pool_node(nodes, s, None).uid for s in SESSIONS}
    grown = [*nodes, PoolNode(uid="node-new", endpoint="http://10.0.0.9:8000")]
    after = {s: pick_pool_node(grown, s, None).uid for s in SESSIONS}
    moved = [s for s in SESSIONS if before[s] != after[s]]
    assert {after[s] for s in moved} == {"node-new"}
    assert 110 < len(moved) < 230  # about 1/6 of 1000


def test_without_a_session_the_request_id_picks_and_without_either_the_first_node():
    nodes = pool(4)
    assert pick_pool_node(nodes, None, "req-7") == pick_pool_node(nodes, "req-7", None)
    by_request = {pick_pool_node(nodes, None, f"req-{i}").uid for i in range(100)}
    assert len(by_request) == 4
    assert pick_pool_node(nodes, None, None) is nodes[0]


def test_an_empty_pool_is_an_error():
    with pytest.raises(ValueError, match="no nodes"):
        pick_pool_node([], "s", None)


# --- cost_per_1000 -------------------------------------------------------------------------


def test_the_cost_of_1000_inferences_is_the_hourly_cost_spread_over_their_run_time():
    # 0.36 per hour, 10 ms each: 1000 take 10 s, a 360th of an hour.
    assert cost_per_1000(Decimal("0.36"), 0.01) == Decimal("0.001000000")


def test_the_cost_is_rounded_half_up_to_nine_places_from_the_measured_float():
    # 1 per hour, 1.8 ns: exactly 0.0000000005 per 1000, which rounds up — the float's
    # binary expansion (1.79999…e-9) would give 0.00000000049999… and round down.
    assert cost_per_1000(Decimal("1"), 1.8e-9) == Decimal("0.000000001")
    assert cost_per_1000(Decimal("1"), 1.7e-9) == Decimal("0.000000000")
    result = cost_per_1000(Decimal("2.50"), 0.123)
    assert result == Decimal("0.085416667") and result.as_tuple().exponent == -9


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf])
def test_a_run_time_that_is_no_duration_is_refused(seconds):
    with pytest.raises(ValueError, match="seconds per inference"):
        cost_per_1000(Decimal("1"), seconds)
