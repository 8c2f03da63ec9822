"""A real agent process rolls console-managed model versions in and out.

The console is the fake of tests/inference/harness.py: its heartbeat replies carry the
`desired_models` a test sets, and it serves the artifacts (or tampered bytes for them).
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.inference.harness import (
    FakeConsole,
    doubler_model,
    running_agent,
    scaler_model,
    wait_until,
)

TOKEN = "enroll-token-1234"


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


@pytest.fixture
def versions(tmp_path):
    """Three versions of `scale`: each multiplies by its version number."""
    return {v: scaler_model(tmp_path / "build" / f"scale-{v}.onnx", float(v)) for v in (1, 2, 3)}


def infer(agent, path: str = "/v2/models/scale/infer", **headers) -> httpx.Response:
    return agent.post(
        path,
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]},
        headers=headers,
    )


def reported(console: FakeConsole) -> dict[str, dict]:
    return {m["version"]: m for m in console.heartbeat_models() if m["name"] == "scale"}


def ready_versions(console: FakeConsole) -> set[str]:
    return {v for v, m in reported(console).items() if m["ready"]}


def start(tmp_path, console, *args):
    (tmp_path / "models").mkdir(exist_ok=True)  # may hold local models
    return running_agent(
        tmp_path / "models",
        tmp_path / "state",
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        *args,
        log_path=tmp_path / "agent.log",
        headers=console.auth(),
    )


def test_it_downloads_two_versions_splits_traffic_and_rolls_to_a_third(tmp_path, console, versions):
    console.desired_models = [
        console.offer("scale", "1", versions[1], 0.7),
        console.offer("scale", "2", versions[2], 0.3),
    ]
    with start(tmp_path, console) as agent:
        wait_until(lambda: ready_versions(console) == {"1", "2"}, what="both versions ready")
        artifacts = sorted(p.name for p in (tmp_path / "state" / "artifacts").iterdir())
        assert artifacts == sorted(f"{d['sha256']}.onnx" for d in console.desired_models)

        # ~2,000 sessions split about 70/30, and each answer comes from the version it names.
        landed: dict[str, str] = {}
        for i in range(2000):
            response = infer(agent, **{"X-Session-Id": f"session-{i}"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["outputs"][0]["data"] == [float(body["model_version"])] * 4
            landed[f"session-{i}"] = body["model_version"]
        counts = Counter(landed.values())
        assert counts["1"] / 2000 == pytest.approx(0.7, abs=0.04), counts
        assert counts["2"] / 2000 == pytest.approx(0.3, abs=0.04), counts

        # A session stays on its version.
        for session in ("session-1", "session-2", "session-3"):
            for _ in range(10):
                version = infer(agent, **{"X-Session-Id": session}).json()["model_version"]
                assert version == landed[session]

        # An explicit version is served exactly, and the metadata lists both.
        assert infer(agent, "/v2/models/scale/versions/2/infer").json()["model_version"] == "2"
        assert agent.get("/v2/models/scale").json()["versions"] == ["1", "2"]
        assert agent.get("/v2/models/scale/versions/2/ready").status_code == 200

        # Per-version health reaches the console.
        wait_until(
            lambda: sum(m["requests_total"] for m in reported(console).values()) >= 2031,
            what="a heartbeat with the requests counted",
        )
        health = reported(console)
        assert (
            health["2"]["requests_total"]
            == counts["2"]
            + 1
            + sum(landed[s] == "2" for s in ("session-1", "session-2", "session-3")) * 10
        )
        assert health["1"]["errors_total"] == 0
        assert health["1"]["latency_p95_ms"] > 0
        assert health["1"]["problem"] is None

        # Roll to version 3 only: 1 and 2 keep answering until 3 is ready, then go.
        console.desired_models = [console.offer("scale", "3", versions[3], 1.0)]
        failures = []

        def rolled() -> bool:
            response = infer(agent)
            if response.status_code != 200:
                failures.append(response.text)
            return set(reported(console)) == {"3"} and ready_versions(console) == {"3"}

        wait_until(rolled, what="version 3 alone")
        assert failures == []
        assert infer(agent).json()["model_version"] == "3"
        gone = infer(agent, "/v2/models/scale/versions/1/infer")
        assert gone.status_code == 404
        assert "serves version 3" in gone.json()["error"]
        assert agent.get("/v2/models/scale").json()["versions"] == ["3"]


def test_it_never_serves_a_tampered_artifact_nor_one_over_its_memory_budget(
    tmp_path, console, versions
):
    good = console.offer("scale", "1", versions[1], 1.0)
    tampered = console.offer("scale", "2", versions[2], 0.0, served=versions[3].read_bytes())
    huge = {**console.offer("scale", "3", versions[3], 0.0), "size_bytes": 1 << 40}
    console.desired_models = [good, tampered, huge]
    # Local models stay as they are; a local one with a managed name yields to the console's.
    doubler_model(tmp_path / "models" / "doubler.onnx")
    scaler_model(tmp_path / "models" / "scale.onnx", 10.0)
    with start(tmp_path, console) as agent:
        wait_until(
            lambda: reported(console).get("2", {}).get("problem"), what="the mismatch reported"
        )
        wait_until(lambda: reported(console).get("1", {}).get("ready"), what="version 1 ready")
        models = reported(console)
        assert models["2"]["ready"] is False
        assert models["2"]["problem"].startswith(
            f"sha256 mismatch: expected {tampered['sha256']}, got "
        )
        assert models["3"]["ready"] is False
        assert models["3"]["problem"].startswith("does not fit the memory budget: needs 2.0 TiB")

        assert infer(agent, "/v2/models/scale/versions/2/infer").status_code == 503
        assert infer(agent, "/v2/models/scale/versions/3/infer").status_code == 503
        assert {infer(agent).json()["model_version"] for _ in range(20)} == {"1"}
        stored = {p.name for p in (tmp_path / "state" / "artifacts").iterdir()}
        assert stored == {f"{good['sha256']}.onnx"}
        assert "DOES NOT MATCH ITS SHA256" in agent.log()
        assert "is both in --models and managed by the console" in agent.log()
        assert infer(agent).json()["outputs"][0]["data"] == [1.0] * 4  # managed, not the local x10
        assert (
            agent.post(
                "/v2/models/doubler/infer",
                json={
                    "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]
                },
            ).json()["outputs"][0]["data"]
            == [2.0] * 4
        )
        names = [(m["name"], m["version"]) for m in console.heartbeat_models()]
        assert sorted(names) == [("doubler", "1"), ("scale", "1"), ("scale", "2"), ("scale", "3")]

        # It tries again later (with backoff), and still refuses the same bytes.
        attempts = lambda: sum(c.path.endswith(tampered["sha256"]) for c in console.calls)  # noqa: E731
        wait_until(lambda: attempts() >= 2, timeout=15, what="a second download attempt")
        assert reported(console)["2"]["problem"].startswith("sha256 mismatch")
