"""Drift with a real agent: the node summarises each version's outputs per minute, the
console stores the windows from its heartbeats, measures the canary against the version it
replaces, and a deployment that asks for it rolls back on sustained drift.

A window closes when its minute is over, so this test waits for one minute boundary (30 s on
average, at most about 75 s)."""

import time
from datetime import timedelta

import pytest

from billing.models import ApiKey
from fleet.drift_actions import check_version
from fleet.models import DriftAlert, DriftWindow, Node
from fleet.rollout_actions import judge, promote, start_rollout
from fleet.rollouts import Gates
from tests.integration.conftest import enforced_tokens, serve_enrolled, wait_until
from tests.integration.test_rollout_e2e import infer, register, scaler

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def agent(live_server, start_process, tmp_path, eu_west, nano, settings):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"
    settings.OUTPOST_DRIFT = {"threshold": 0.25, "sustained_minutes": 1, "min_rows": 20}
    port = serve_enrolled(start_process, live_server.url, tmp_path, "fra-nano-1", eu_west, nano)
    wait_until(lambda: Node.objects.filter(status="online").exists(), timeout=30, what="online")
    return port


def ready(*sha256s):
    def check():
        rows = [r for n in Node.objects.all() for r in n.models_loaded if r["ready"]]
        return set(sha256s) <= {r["sha256"] for r in rows}

    return check


def test_a_canary_whose_outputs_drift_is_rolled_back(client, acme, agent, tmp_path):
    key = ApiKey.issue(acme, "ci")[1]
    token = enforced_tokens(acme)["acme"]
    v1 = register(client, key, scaler(tmp_path / "v1.onnx", 2.0))
    promote(start_rollout(v1, strategy="all_at_once"))
    wait_until(ready(v1.sha256), timeout=60, what="v1 served")
    v2 = register(client, key, scaler(tmp_path / "v2.onnx", -50.0))  # same signature, other range
    canary = start_rollout(
        v2, steps=[50, 100], soak_s=3600, gates=Gates(min_requests=10_000), rollback_on_drift=True
    )
    wait_until(ready(v1.sha256, v2.sha256), timeout=60, what="v1 and v2 served side by side")
    # All the traffic in one minute, with time left for it before the minute ends.
    while time.time() % 60 > 40:
        time.sleep(0.5)
    minute_started = time.time() // 60 * 60
    for i in range(300):
        assert infer(agent, f"session-{i}", value=0.5, token=token).status_code == 200
    assert time.time() - minute_started < 60, "the traffic spilled into the next minute"

    def both_reported():
        versions = set(DriftWindow.objects.values_list("version_id", flat=True))
        return {v1.pk, v2.pk} <= versions

    wait_until(both_reported, timeout=90, interval=0.5, what="the minute's windows to arrive")
    window = DriftWindow.objects.get(version=v2)
    assert window.values[0]["name"] == "y" and window.rows > 50
    assert window.values[0]["mean"] == pytest.approx(-25.0)  # -50 × 0.5

    # Judged as if the minute had settled (the check waits 15 s after a minute for late nodes).
    verdict = check_version(v2, now=window.minute + timedelta(seconds=80))
    assert verdict.sustained and verdict.latest > 1
    alert = DriftAlert.objects.get(version=v2)
    assert alert.baseline == "version 1"
    assert judge(canary).value == "roll_back"
    canary.refresh_from_db()
    assert canary.state == "rolled_back" and "outputs drift" in canary.events.first().reason
    wait_until(
        lambda: (
            not any(r["sha256"] == v2.sha256 for n in Node.objects.all() for r in n.models_loaded)
        ),
        timeout=60,
        what="v2 unloaded after the rollback",
    )
