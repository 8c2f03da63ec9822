"""Usage metering end to end: real agent processes bill the fake console (a real HTTP server,
tests/inference/harness.py) once for every answer their clients got, through retries, repeats,
`kill -9` in the middle of traffic and in the middle of an upload, and an offload.

Windows are one or two seconds (the agent's hidden --usage-window-s), not a minute.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from inference import protocol
from inference.usage import parse_segment
from inference.usage_spool import JOURNAL_DIR, segment_ids, segment_path
from tests.inference.harness import (
    TESTER,
    FakeConsole,
    doubler_model,
    running_agent,
    wait_until,
)

TOKEN = "enroll-token-1234"
INPUT = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
BAD_INPUT = {"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


@pytest.fixture
def models(tmp_path):
    doubler_model(tmp_path / "models" / "doubler.onnx")
    return tmp_path / "models"


def bundle(revision: int = 2, **fields) -> protocol.PolicyBundle:
    """TESTER's bundle, with the doubler graded `medium` and a power model for nano nodes."""
    now = datetime.now(UTC)
    values = {
        "revision": revision,
        "issued_at": now,
        "expires_at": now + timedelta(hours=6),
        "tenants": [
            protocol.TenantRules(
                slug=TESTER,
                privacy="any",
                fallback="regional",
                quality="best_effort",
                currency="EUR",
                on_budget_exhausted="alert",
                sensitive_fields=["customer"],
            )
        ],
        "models": [protocol.ModelGrade(name="doubler", grade="medium")],
        "thresholds": [
            protocol.ClassThresholds(node_class="nano", peak_watts=10.0),
            protocol.ClassThresholds(node_class="accelerator", peak_watts=300.0),
        ],
    }
    values.update(fields)
    return protocol.PolicyBundle(**values)


def start(models, state, console, log_path, *extra: str, window_s: int = 1):
    return running_agent(
        models,
        state,
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        "--usage-window-s",
        str(window_s),
        *extra,
        log_path=log_path,
        headers=console.auth(),
    )


def infer(agent, body=INPUT, model="doubler", **headers) -> httpx.Response:
    return agent.post(f"/v2/models/{model}/infer", json=body, headers=headers)


def metric(agent, name: str) -> float:
    for line in agent.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_the_console_is_billed_once_for_every_answer_the_client_got(models, tmp_path, console):
    console.publish(bundle())
    with start(models, tmp_path / "state", console, tmp_path / "agent.log") as agent:
        ok = sum(infer(agent).status_code == 200 for _ in range(40))
        bad = [infer(agent, BAD_INPUT).status_code for _ in range(3)]
        assert infer(agent, model="nothing").status_code == 404  # no model: nothing to bill
        assert (ok, bad) == (40, [400, 400, 400])

        wait_until(lambda: console.billed() == 40, timeout=15, what="40 inferences billed")
        wait_until(
            lambda: metric(agent, "outpost_usage_batches_pending") == 0, what="nothing pending"
        )
        assert metric(agent, "outpost_usage_journal_lines_total") == 43
        uploaded = metric(agent, "outpost_usage_batches_uploaded_total")
        assert uploaded == len(console.usage) >= 1
        assert metric(agent, "outpost_usage_oldest_pending_age_seconds") == 0
        time.sleep(2.5)  # two more windows: nothing is billed again
        assert console.billed() == 40

    records = console.usage_records()
    assert sum(r["errors"] for r in records) == 3
    for r in records:
        assert (r["tenant"], r["model"], r["version"], r["grade"]) == (
            TESTER,
            "doubler",
            "1",
            "medium",
        )
        assert (r["served_by"], r["offload_reason"], r["tokenised"]) == ("local", None, 0)
        assert sum(r["latency_counts"]) == r["count"]
        assert r["count"] == 0 or 0 < r["latency_sum_s"] < r["count"]
        assert r["energy_j"] > 0  # RAPL if readable, else run time x the class's 10 W
        assert datetime.fromisoformat(r["minute"]).microsecond == 0
    seqs = sorted(seq for _, seq in console.usage)
    assert seqs == list(range(1, len(seqs) + 1))
    # One record per key and window.
    assert len({r["minute"] for r in records}) == len(records)


def test_failed_uploads_are_retried_and_a_repeated_batch_is_not_counted_twice(
    models, tmp_path, console
):
    console.usage_script = ["503", "stored-drop"]
    with start(models, tmp_path / "state", console, tmp_path / "agent.log") as agent:
        for _ in range(10):
            assert infer(agent).status_code == 200
        wait_until(
            lambda: ("node-0001", 1, "duplicate") in console.usage_outcomes,
            timeout=20,
            what="the repeat of batch 1 acknowledged as a duplicate",
        )
        wait_until(lambda: console.billed() == 10, timeout=15, what="10 inferences billed")
        wait_until(
            lambda: metric(agent, "outpost_usage_batches_pending") == 0, what="nothing pending"
        )
        assert metric(agent, "outpost_usage_upload_failures_total") >= 2
    assert console.billed() == 10
    assert "uploading batch 1" in agent.log()


class Traffic:
    """Clients sending requests, one at a time each, with their own request ids; they note
    which requests were answered 200 and which got no answer or another one."""

    def __init__(self, agent, clients: int = 6) -> None:
        self.url = agent.url
        self.headers = dict(agent.client.headers)
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=5, headers=self.headers) as client:
            i = 0
            while not self.stop.is_set():
                request_id = f"c{n}-{i}"
                i += 1
                try:
                    response = client.post(
                        f"{self.url}/v2/models/doubler/infer",
                        json=INPUT,
                        headers={"x-request-id": request_id},
                    )
                except httpx.HTTPError:
                    self.failed.append(request_id)
                    return  # the agent is gone
                (self.ok if response.status_code == 200 else self.failed).append(request_id)


def journaled_ids(state) -> set[str]:
    directory = state / JOURNAL_DIR
    ids: set[str] = set()
    for segment in segment_ids(directory):
        ids.update(
            parse_segment(segment_path(directory, segment).read_bytes(), keep_ids=True).request_ids
        )
    return ids


def test_kill_9_in_the_middle_of_traffic_loses_nothing_and_counts_nothing_twice(
    models, tmp_path, console
):
    state = tmp_path / "state"
    window = 2
    with start(models, state, console, tmp_path / "first.log", window_s=window) as agent:
        with Traffic(agent) as traffic:
            # Killed mid-window, well away from the fold just after each boundary.
            wait_until(lambda: len(traffic.ok) > 300, timeout=20, what="traffic")
            wait_until(lambda: 0.9 < time.time() % window < 1.1, what="the middle of a window")
            agent.process.kill()
            agent.process.wait(10)
    # What the dead agent's journal holds of the requests whose answer the client never got:
    # written before the answer, so billed although the client may not have it. Those the
    # client got are billed for certain; the test checks it adds up to exactly that.
    unanswered = set(traffic.failed)
    journaled = journaled_ids(state)
    assert journaled, "the kill should leave unfolded lines in the journal"
    billed_unanswered = unanswered & journaled
    assert len(unanswered) <= len(traffic.threads)
    expected = len(traffic.ok) + len(billed_unanswered)

    with start(models, state, console, tmp_path / "second.log", window_s=window) as agent:
        for _ in range(20):
            assert infer(agent).status_code == 200
        expected += 20
        wait_until(
            lambda: console.billed() == expected,
            timeout=20,
            what=f"{expected} inferences billed",
        )
        time.sleep(2 * window)  # two more windows: nothing is billed again
        assert console.billed() == expected
        assert "replayed" in agent.log()
    outcomes = {outcome for _, _, outcome in console.usage_outcomes}
    assert "conflict" not in outcomes


def test_kill_9_while_the_console_holds_an_upload_bills_it_once_after_the_restart(
    models, tmp_path, console
):
    state = tmp_path / "state"
    console.usage_hold = hold = threading.Event()
    with start(models, state, console, tmp_path / "first.log") as agent:
        for _ in range(10):
            assert infer(agent).status_code == 200
        assert console.usage_received.wait(15), "no upload reached the console"
        # The console has stored the batch; its answer is held, and the agent dies first.
        agent.process.kill()
        agent.process.wait(10)
    console.usage_hold = None
    hold.set()
    (held,) = {seq for _, seq, _ in console.usage_outcomes}

    with start(models, state, console, tmp_path / "second.log") as agent:
        for _ in range(5):
            assert infer(agent).status_code == 200
        wait_until(lambda: console.billed() == 15, timeout=20, what="15 inferences billed")
        wait_until(
            lambda: ("node-0001", held, "duplicate") in console.usage_outcomes,
            timeout=10,
            what="the held batch offered again, as a duplicate",
        )
        wait_until(
            lambda: metric(agent, "outpost_usage_batches_pending") == 0, what="nothing pending"
        )
    assert console.billed() == 15
    assert "conflict" not in {outcome for _, _, outcome in console.usage_outcomes}


def test_an_offload_is_billed_once_at_the_pool_as_regional_with_its_reason(tmp_path, console):
    doubler_model(tmp_path / "edge-models" / "doubler.onnx")
    doubler_model(tmp_path / "pool-models" / "doubler.onnx")
    doubler_model(tmp_path / "pool-models" / "big.onnx")
    console.enrollments = {
        "edge-token": {"node_uid": "node-edge", "name": "fra-nano-1", "credential": "opn_edge"},
        "pool-token": {
            "node_uid": "node-pool",
            "name": "fra-gpu-1",
            "node_class": "accelerator",
            "credential": "opn_pool",
        },
    }

    def agent(name: str):
        return running_agent(
            tmp_path / f"{name}-models",
            tmp_path / f"{name}-state",
            "--console",
            console.url,
            "--enroll",
            f"{name}-token",
            "--usage-window-s",
            "1",
            log_path=tmp_path / f"{name}.log",
            headers=console.auth(),
        )

    with agent("pool") as pool:
        console.publish(
            bundle(
                pools=[
                    protocol.Pool(
                        region="eu-west",
                        residency_zone="EU",
                        nodes=[protocol.PoolNode(uid="node-pool", endpoint=pool.url)],
                    )
                ],
                routes=[protocol.Route(tenant=TESTER, region="eu-west", pools=["eu-west"])],
                models=[
                    protocol.ModelGrade(name="doubler", grade="tiny"),
                    protocol.ModelGrade(name="big", grade="medium"),
                ],
            )
        )
        with agent("edge") as edge:
            wait_until(
                lambda: metric(pool, "outpost_policy_bundle_revision") == 2,
                what="the pool on the bundle that names it",
            )
            body = {**INPUT, "parameters": {"customer": "alice"}}
            for i in range(3):
                answer = infer(edge, body, model="big", **{"x-request-id": f"big-{i}"})
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-outpost-served-by"] == "regional"
                assert answer.headers["x-outpost-offload-reason"] == "model_not_local"
            for _ in range(2):
                assert infer(edge).headers["x-outpost-served-by"] == "local"

            wait_until(
                lambda: console.billed("node-pool") == 3 and console.billed("node-edge") == 2,
                timeout=15,
                what="the pool billing the offloads, the edge its own",
            )
            time.sleep(2.5)  # two more windows: the edge never bills the forward
            assert console.billed("node-edge", model="big") == 0

    (regional,) = console.usage_records("node-pool")
    assert (regional["model"], regional["grade"], regional["served_by"]) == (
        "big",
        "medium",
        "regional",
    )
    assert (regional["offload_reason"], regional["count"], regional["tokenised"]) == (
        "model_not_local",
        3,
        3,
    )
    assert regional["energy_j"] > 0
    assert {(r["model"], r["served_by"]) for r in console.usage_records("node-edge")} == {
        ("doubler", "local")
    }
    assert console.billed() == 5


def test_a_standalone_agent_meters_nothing(models, tmp_path):
    with running_agent(models, tmp_path / "state", log_path=tmp_path / "agent.log") as agent:
        assert infer(agent).status_code == 200
        assert "outpost_usage_" not in agent.metrics()
    assert not (tmp_path / "state" / JOURNAL_DIR).exists()
