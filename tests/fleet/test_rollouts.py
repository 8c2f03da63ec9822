"""The pure rollout decisions: steps, health gates, what to do next."""

from datetime import UTC, datetime, timedelta

import pytest

from fleet.rollouts import (
    Decision,
    GateResult,
    Gates,
    VersionHealth,
    check_gates,
    decide,
    parse_steps,
    signature_problems,
    step_health,
    totals,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
GATES = Gates(max_error_rate_increase=0.02, max_p95_ratio=1.5, min_requests=50)


def test_steps_are_increasing_percentages_ending_at_100():
    assert parse_steps("5, 25, 100") == [5, 25, 100]
    assert parse_steps("100") == [100]
    for bad, message in [
        ("5, 25", "last step"),
        ("25, 5, 100", "increase"),
        ("0, 100", "increase"),
        ("five", "whole percentages"),
        ("", "last step"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_steps(bad)


def test_too_little_traffic_is_not_judged_yet():
    result = check_gates(VersionHealth(requests=10), VersionHealth(requests=1000), GATES)
    assert result == GateResult(True, False, "10 of 50 requests so far")


def test_a_version_that_fails_more_than_allowed_fails_the_gate_and_says_by_how_much():
    result = check_gates(
        VersionHealth(requests=100, errors=10), VersionHealth(requests=1000, errors=10), GATES
    )
    assert not result.passed and result.judged
    assert "error rate 10.0% against 1.0%" in result.reason


def test_a_slower_version_fails_the_latency_gate():
    result = check_gates(
        VersionHealth(requests=100, p95_ms=31), VersionHealth(requests=100, p95_ms=20), GATES
    )
    assert not result.passed
    assert "p95 31.0 ms against 20.0 ms" in result.reason


def test_a_first_deployment_is_judged_on_its_own_error_rate():
    assert check_gates(VersionHealth(requests=100, errors=1), None, GATES).passed
    assert not check_gates(VersionHealth(requests=100, errors=5), None, GATES).passed


def judged(passed=True):
    return GateResult(passed, True, "ok" if passed else "bad")


@pytest.mark.parametrize(
    ("elapsed_s", "gate", "last", "expected"),
    [
        (10, judged(), False, Decision.WAIT),
        (61, judged(), False, Decision.ADVANCE),
        (61, judged(), True, Decision.COMPLETE),
        (61, GateResult(True, False, "3 of 50"), False, Decision.WAIT),
        (10, judged(False), False, Decision.ROLL_BACK),
        (61, judged(False), True, Decision.ROLL_BACK),
    ],
)
def test_what_a_rolling_deployment_does_next(elapsed_s, gate, last, expected):
    decision, reason = decide(
        now=NOW,
        step_started_at=NOW - timedelta(seconds=elapsed_s),
        soak=timedelta(seconds=60),
        is_last_step=last,
        gate=gate,
    )
    assert decision == expected
    assert reason


def test_step_health_counts_only_what_happened_since_the_step_began():
    reports = [
        {"sha256": "new", "requests_total": 120, "errors_total": 3, "latency_p95_ms": 12.0},
        {"sha256": "new", "requests_total": 80, "errors_total": 1, "latency_p95_ms": 18.0},
        {"sha256": "old", "requests_total": 900, "errors_total": 9},
    ]
    baseline = {"new": {"requests": 50, "errors": 2}}

    assert step_health(reports, baseline, "new") == VersionHealth(150, 2, 18.0)
    assert totals(reports) == {
        "new": {"requests": 200, "errors": 4},
        "old": {"requests": 900, "errors": 9},
    }


def test_a_restarted_agent_never_makes_counts_negative():
    reports = [{"sha256": "new", "requests_total": 5, "errors_total": 0}]
    assert step_health(reports, {"new": {"requests": 500, "errors": 9}}, "new") == VersionHealth(
        0, 0, None
    )


def tensor(name, datatype="FLOAT", shape=(-1, 4)):
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def test_a_compatible_signature_has_no_problems():
    old = {"inputs": [tensor("x")], "outputs": [tensor("y"), tensor("p")]}
    new = {
        "inputs": [tensor("x", shape=(8, 4))],
        "outputs": [tensor("p"), tensor("y"), tensor("z")],
    }
    assert signature_problems(new, old) == []


def test_a_signature_that_would_break_clients_says_how():
    old = {"inputs": [tensor("x")], "outputs": [tensor("y"), tensor("p")]}
    new = {
        "inputs": [tensor("x", "DOUBLE"), tensor("mask")],
        "outputs": [tensor("y", "INT64")],
    }
    assert signature_problems(new, old) == [
        "input 'x' is DOUBLE, was FLOAT",
        "input 'mask' is new: clients do not send it",
        "output 'y' is INT64, was FLOAT",
        "output 'p' is gone: clients may ask for it",
    ]
    wider = {"inputs": [tensor("x", shape=(-1, 8))], "outputs": old["outputs"]}
    assert signature_problems(wider, old) == ["input 'x' has shape [-1, 8], was [-1, 4]"]
