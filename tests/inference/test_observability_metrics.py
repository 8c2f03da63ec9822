"""The agent's observability metrics (inference/metrics.py): memory pressure, temperature (real
or simulated), energy of the node and of its inferences, the versions it holds, their drift
against the console's reference, and whether it tokenises.

The pure parts first (the energy counter, the recent windows, the drift gauge); then a real
enrolled agent process against the fake console (tests/inference/harness.py), scraped and
parsed with prometheus_client's own parser. The drift test waits for one minute boundary
(a window closes when its minute is over): 30 s on average, at most about 65 s.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet import drift as console_drift
from inference import protocol
from inference.datatypes import BY_OIP
from inference.drift import DRIFT_RECENT_WINDOWS, OutputSketch, Summary, merge, summary_psi
from inference.metrics import AgentMetrics, NodeEnergy
from inference.specs import ModelSpec, TensorSpec
from inference.usage import read_rapl
from tests.conftest import require_binary
from tests.inference.harness import TESTER, FakeConsole, doubler_model, running_agent, wait_until

MINUTE = protocol.DRIFT_WINDOW_S
T0 = 1_700_000_040.0  # the start of a minute


# --- the node's energy counter ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_rapl_the_energy_is_idle_power_over_time_plus_the_rest_over_model_runs():
    clock, busy = Clock(), [0.0]
    energy = NodeEnergy(
        busy_s=lambda: busy[0], power_model=lambda: (4.0, 10.0), read=lambda: None, clock=clock
    )
    clock.now += 10  # 10 s, 2 s of them running models
    busy[0] = 2.0
    assert energy.advance() == pytest.approx(4.0 * 10 + 6.0 * 2)
    clock.now += 1  # concurrent runs cannot draw more than the peak
    busy[0] = 5.0
    assert energy.advance() == pytest.approx(52.0 + 10.0)


def test_with_rapl_the_energy_is_the_counters_and_never_goes_back_when_one_is_lost():
    clock, readings = Clock(), [((1_000_000, 10**12),)]
    energy = NodeEnergy(
        busy_s=lambda: 0.0, power_model=lambda: (4.0, 10.0), read=lambda: readings[0], clock=clock
    )
    clock.now += 2
    readings[0] = ((3_500_000, 10**12),)
    assert energy.advance() == pytest.approx(2.5)
    clock.now += 1
    readings[0] = None  # RAPL unreadable for a moment: the power model covers the interval
    assert energy.advance() == pytest.approx(2.5 + 4.0)


def test_without_rapl_or_power_model_the_energy_stays_where_it_is():
    clock = Clock()
    energy = NodeEnergy(
        busy_s=lambda: 0.0, power_model=lambda: None, read=lambda: None, clock=clock
    )
    clock.now += 60
    assert energy.advance() == 0.0


# --- recent windows and the drift gauge ----------------------------------------------------------


def doubler_spec() -> ModelSpec:
    fp32 = BY_OIP["FP32"]
    return ModelSpec(
        "doubler", "1", (TensorSpec("x", fp32, (-1, 4)),), (TensorSpec("y", fp32, (-1, 4)),), True
    )


def test_the_recent_windows_are_kept_after_the_console_acknowledged_them():
    sketch = OutputSketch(doubler_spec())
    for minute in range(DRIFT_RECENT_WINDOWS + 2):
        sketch.observe([np.full((1, 4), minute, dtype=np.float32)], 1, now=T0 + minute * MINUTE)
    sketch.ack(sketch.pending(now=T0 + 99 * MINUTE))

    recent = sketch.recent(now=T0 + 99 * MINUTE)

    assert sketch.pending(now=T0 + 99 * MINUTE) == []
    assert len(recent) == DRIFT_RECENT_WINDOWS
    assert recent[-1].minute.timestamp() == T0 + (DRIFT_RECENT_WINDOWS + 1) * MINUTE


def test_the_drift_gauge_compares_the_recent_windows_with_the_reference():
    metrics = AgentMetrics()
    health = metrics.health("doubler", "1")
    health.outputs = sketch = OutputSketch(doubler_spec())
    now = time.time()
    sketch.observe([np.full((30, 4), 5.0, dtype=np.float32)], 30, now=now - MINUTE)
    small = {"name": "y", "mean": 0.02, "histogram": [0] * 11 + [120] + [0] * 8}
    reference = merge([{"rows": 30, "values": [small]}])
    assert metrics.drift_psi() == []  # no reference yet

    metrics.drift_references = {("doubler", "1"): reference}

    [(model, version, value)] = metrics.drift_psi()
    assert (model, version) == ("doubler", "1")
    assert value == pytest.approx(summary_psi(reference, merge(sketch.recent())))
    assert value > 1


# --- a real agent, scraped ------------------------------------------------------------------------

IDLE_W, PEAK_W = 4.0, 10.0
SIMULATED_C = 90.0
# Outputs y = 2x of these inputs land in four value bins.
INPUT = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 1, 2, 4]}]}
# The reference saw small values only: the doubler's outputs drift far from it.
REFERENCE = Summary(
    kind="values", rows=50, values={"y": ([0] * 11 + [200] + [0] * 8, 1.0, 50)}
).to_json()


def bundle() -> protocol.PolicyBundle:
    now = datetime.now(UTC)
    return protocol.PolicyBundle(
        revision=2,
        issued_at=now,
        expires_at=now + timedelta(hours=6),
        tenants=[
            protocol.TenantRules(
                slug=TESTER,
                privacy="any",
                fallback="reject",
                quality="best_effort",
                currency="EUR",
                on_budget_exhausted="alert",
                sensitive_fields=["customer"],
            ),
            protocol.TenantRules(
                slug="plain",
                privacy="any",
                fallback="reject",
                quality="best_effort",
                currency="EUR",
                on_budget_exhausted="alert",
            ),
        ],
        thresholds=[
            protocol.ClassThresholds(node_class="nano", idle_watts=IDLE_W, peak_watts=PEAK_W)
        ],
    )


@pytest.fixture(scope="module")
def console():
    fake = FakeConsole()
    fake.publish(bundle())
    yield fake
    fake.close()


def serves_version_1(agent) -> bool:
    try:
        return agent.post("/v2/models/doubler/versions/1/infer", json=INPUT).status_code == 200
    except httpx.HTTPError:  # not listening yet
        return False


@pytest.fixture(scope="module")
def agent(tmp_path_factory, console):
    root = tmp_path_factory.mktemp("observability")
    (root / "models").mkdir()
    good = console.offer("doubler", "1", doubler_model(root / "v1.onnx"), 1.0)
    good["drift_reference"] = REFERENCE
    # Version 2's download does not match its sha256: held, never ready.
    bad = console.offer("doubler", "2", doubler_model(root / "v2.onnx", width=3), 0.0, served=b"x")
    console.desired_models = [good, bad]
    with running_agent(
        root / "models",
        root / "state",
        "--console",
        console.url,
        "--enroll",
        "enroll-token-1234",
        "--usage-window-s",
        "1",
        log_path=root / "agent.log",
        headers=console.auth(),
        ready=False,
    ) as running:
        wait_until(lambda: serves_version_1(running), timeout=30, what="version 1 served")
        yield running


class Scrape:
    """One `/metrics` answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        # Family name -> its samples as (sample name, labels, value).
        self.families = {
            family.name: [(s.name, s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(text)
        }

    def value(self, sample: str, **labels: str) -> float:
        for samples in self.families.values():
            for name, sample_labels, value in samples:
                if name == sample and sample_labels == labels:
                    return value
        raise AssertionError(f"no sample {sample}{labels} in /metrics")


def scrape(agent) -> Scrape:
    response = agent.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def infer(agent, n: int = 1) -> None:
    for _ in range(n):
        assert agent.post("/v2/models/doubler/versions/1/infer", json=INPUT).status_code == 200


def test_memory_pressure_is_the_machines_share_in_use(agent):
    [(_, labels, pressure)] = scrape(agent).families["outpost_node_memory_pressure"]
    assert labels == {}
    assert 0 < pressure <= 1
    assert pressure == pytest.approx(psutil.virtual_memory().percent / 100, abs=0.1)


def test_each_version_held_is_listed_ready_or_not(agent):
    wait_until(
        lambda: len(scrape(agent).families["outpost_model_loaded"]) == 2, what="both versions held"
    )
    families = scrape(agent)
    assert families.value("outpost_model_loaded", model="doubler", version="1") == 1
    assert families.value("outpost_model_loaded", model="doubler", version="2") == 0
    assert families.value("outpost_models_loaded") == 1  # the existing gauge, unchanged


def test_the_node_reports_and_exposes_that_it_tokenises_the_tenants_that_ask(agent, console):
    assert scrape(agent).value("outpost_tokenisation_active") == 1

    def reported():
        beats = console.calls_to(protocol.HEARTBEAT_PATH)
        return beats and beats[-1].body.get("tokenised_tenants") == [TESTER] and beats[-1].body

    body = wait_until(reported, what="a heartbeat with the enforced bundle's tenants")
    assert body["tokenisation_active"] is True


def test_the_node_energy_grows_by_idle_power_and_model_runs(agent):
    assert read_rapl() is None, "this machine has RAPL: the power model is not what counts"
    started = time.monotonic()
    before = scrape(agent)
    after_first = time.monotonic()
    infer(agent, 200)
    time.sleep(0.5)
    start_second = time.monotonic()
    after = scrape(agent)
    ended = time.monotonic()

    joules = after.value("outpost_node_energy_joules_total") - before.value(
        "outpost_node_energy_joules_total"
    )
    run_sum = "outpost_inference_run_duration_seconds_sum"
    run = after.value(run_sum, model="doubler") - before.value(run_sum, model="doubler")
    assert run > 0
    busy = (PEAK_W - IDLE_W) * run
    assert IDLE_W * (start_second - after_first) + busy <= joules
    assert joules <= IDLE_W * (ended - started) + busy


def test_the_inference_energy_is_what_the_usage_records_carried(agent, console):
    infer(agent, 50)

    def settled():
        families = scrape(agent)
        return families.value("outpost_usage_batches_pending") == 0 and families

    time.sleep(1.5)  # the window of the last answers closes and is folded
    families = wait_until(settled, what="every usage batch acknowledged")
    records = [r for r in console.usage_records() if r["model"] == "doubler"]
    assert records and all(r["energy_j"] > 0 for r in records)
    exposed = families.value("outpost_inference_energy_joules_total", model="doubler")
    assert exposed == pytest.approx(sum(r["energy_j"] for r in records), rel=1e-9)


def test_the_temperature_follows_the_consoles_simulation(agent, console):
    simulated = console.answers[protocol.HEARTBEAT_PATH]

    def heartbeat(call):
        status, reply = simulated(call)
        return status, {**reply, "simulated_temperature_c": SIMULATED_C}

    families = scrape(agent)
    assert families.value("outpost_node_temperature_simulated") == 0
    console.answers[protocol.HEARTBEAT_PATH] = heartbeat
    try:
        first = wait_until(
            lambda: (
                (families := scrape(agent)).value("outpost_node_temperature_simulated") == 1
                and families.value("outpost_node_temperature_celsius")
            ),
            what="the simulation to start",
        )
        time.sleep(2.5)
        second = scrape(agent).value("outpost_node_temperature_celsius")
    finally:
        console.answers[protocol.HEARTBEAT_PATH] = simulated
    # It heats at 1 °C/s from ambient toward the simulated value.
    assert first < second < SIMULATED_C
    assert second - first == pytest.approx(2.5, abs=1.5)


def test_the_drift_gauge_is_the_consoles_psi_of_the_same_windows(agent, console):
    # Traffic now, then the end of its minute: the window closes and is reported.
    infer(agent, 40)
    minute = int(time.time() // MINUTE)
    wait_until(lambda: time.time() // MINUTE > minute, timeout=MINUTE + 5, what="the minute end")

    def reported_windows():
        windows = {}
        for call in console.calls_to(protocol.HEARTBEAT_PATH):
            for model in call.body["models"]:
                if (model["name"], model["version"]) == ("doubler", "1"):
                    for window in model["outputs"]:
                        windows[window["minute"]] = window
        latest = max((datetime.fromisoformat(m) for m in windows), default=None)
        return latest is not None and latest.timestamp() // MINUTE == minute and windows

    windows = wait_until(reported_windows, timeout=15, what="the minute's window reported")
    families = scrape(agent)

    recent = [windows[m] for m in sorted(windows)][-DRIFT_RECENT_WINDOWS:]
    expected = console_drift.summary_psi(
        console_drift.Summary.from_json(REFERENCE), console_drift.merge(recent)
    )
    gauge = families.value("outpost_model_drift_psi", model="doubler", version="1")
    assert gauge == pytest.approx(expected, rel=1e-9)
    assert gauge > 1  # far from the reference
    # Version 2 has no reference (and no outputs): no series.
    assert [s for s in families.families["outpost_model_drift_psi"] if s[1]["version"] == "2"] == []


def test_no_new_label_names_a_tenant(agent):
    text = agent.get("/metrics").text
    assert TESTER not in text and "plain" not in text
    families = scrape(agent).families
    for name in (
        "outpost_node_memory_pressure",
        "outpost_node_temperature_simulated",
        "outpost_node_energy_joules",
        "outpost_inference_energy_joules",
        "outpost_model_loaded",
        "outpost_model_drift_psi",
        "outpost_tokenisation_active",
    ):
        assert name in families, name
        for _, labels, _ in families[name]:
            assert set(labels) <= {"model", "version"}, (name, labels)


def test_an_enrolled_agents_metrics_pass_promtool(agent):
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=agent.get("/metrics").content,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
