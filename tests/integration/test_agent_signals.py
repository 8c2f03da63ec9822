"""A real agent process enforces the signal schema the console sends with a version.

The console is the fake of tests/inference/harness.py: its heartbeat replies carry versions of
`acme.churn` with a `signals` schema; the agent must accept requests whose `parameters` keep
to it and answer every other one with a 400 that says what is wrong, to plain HTTP clients and
to an unmodified tritonclient alike. Local models (no schema) accept any parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inference.routing import choose_version
from tests.inference.harness import (
    FakeConsole,
    doubler_model,
    running_agent,
    scaler_model,
    wait_until,
)

TOKEN = "enroll-token-1234"
MODEL = "acme.churn"
SCHEMA = {"tier": "string", "visits": "int"}


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


def offer(console: FakeConsole, path, version: str, share: float, signals: dict) -> dict:
    return {**console.offer(MODEL, version, path, share), "signals": signals}


def start(tmp_path, console):
    return running_agent(
        tmp_path / "models",
        tmp_path / "state",
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        log_path=tmp_path / "agent.log",
        headers=console.auth(),
    )


def ready_versions(console: FakeConsole) -> set[str]:
    return {m["version"] for m in console.heartbeat_models() if m["name"] == MODEL and m["ready"]}


def infer(agent, parameters: dict | None, model: str = MODEL, version: str | None = None, **kw):
    document: dict = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]
    }
    if parameters is not None:
        document["parameters"] = parameters
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return agent.post(path, json=document, **kw)


def test_a_version_with_signals_accepts_good_ones_and_refuses_bad_ones_with_a_400(
    tmp_path, console
):
    doubler_model(tmp_path / "models" / "plain.onnx")  # a local model: no schema
    churn = scaler_model(tmp_path / "build" / "churn-1.onnx", 1.0)
    console.desired_models = [offer(console, churn, "1", 1.0, SCHEMA)]
    with start(tmp_path, console) as agent:
        wait_until(lambda: ready_versions(console) == {"1"}, what="version 1 ready")

        # Good signals, some of them, none, nulls, and what tritonclient adds by itself.
        for parameters in (
            {"tier": "gold", "visits": 3},
            {"visits": 0},
            None,
            {"tier": None},
            {"tier": "free", "binary_data_output": False, "sequence_id": 9, "priority": 1},
        ):
            response = infer(agent, parameters)
            assert response.status_code == 200, (parameters, response.text)
            assert response.json()["outputs"][0]["data"] == [1.0] * 4

        wrong = infer(agent, {"tier": "gold", "visits": "many"})
        assert wrong.status_code == 400
        assert wrong.json() == {
            "error": "signal 'visits' must be an int (the model 'acme.churn' declares it so), "
            'got "many"'
        }
        assert infer(agent, {"visits": True}).json()["error"].endswith("got true")
        unknown = infer(agent, {"tierr": "gold"}, version="1")
        assert unknown.status_code == 400
        assert unknown.json() == {
            "error": "unknown signal 'tierr'; model 'acme.churn' accepts: 'tier' (string), "
            "'visits' (int)"
        }

        # A model without a schema takes any parameters, as before.
        plain = infer(agent, {"tierr": [1], "visits": "many"}, model="plain")
        assert plain.status_code == 200, plain.text

        # An unmodified tritonclient, its signals in `parameters=`, its token in `headers=`.
        client = triton.InferenceServerClient(agent.address)
        auth = console.auth()
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result = client.infer(MODEL, [x], parameters={"tier": "gold", "visits": 2}, headers=auth)
        np.testing.assert_array_equal(result.as_numpy("y"), np.ones((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [x], parameters={"tier": 3}, headers=auth)
        assert caught.value.status() == "400"
        assert caught.value.message() == (
            "signal 'tier' must be a string (the model 'acme.churn' declares it so), got 3"
        )
        with pytest.raises(InferenceServerException, match="unknown signal 'vists'"):
            client.infer(MODEL, [x], parameters={"vists": 2}, headers=auth)


@pytest.fixture
def two_schemas(tmp_path, console):
    """Versions 1 and 2 of acme.churn, half the traffic each, declaring `tier` differently.
    (The console sends one schema per model; a node can still hold versions loaded under
    different ones.)"""
    (tmp_path / "models").mkdir()
    one = scaler_model(tmp_path / "build" / "churn-1.onnx", 1.0)
    two = scaler_model(tmp_path / "build" / "churn-2.onnx", 2.0)
    console.desired_models = [
        offer(console, one, "1", 0.5, {"tier": "string"}),
        offer(console, two, "2", 0.5, {"tier": "int"}),
    ]
    with start(tmp_path, console) as agent:
        wait_until(lambda: ready_versions(console) == {"1", "2"}, what="both versions ready")
        yield agent


def expected_version(key: str) -> str:
    return choose_version([("1", 0.5), ("2", 0.5)], key)


def check_landed(response, version: str) -> None:
    """{"tier": "gold"} keeps to version 1's schema and breaks version 2's."""
    if version == "1":
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == (
            "signal 'tier' must be an int (the model 'acme.churn' declares it so), got \"gold\""
        )


def test_each_version_is_held_to_its_own_schema(two_schemas):
    agent = two_schemas
    assert infer(agent, {"tier": "gold"}, version="1").status_code == 200
    assert "must be an int" in infer(agent, {"tier": "gold"}, version="2").json()["error"]
    assert infer(agent, {"tier": 3}, version="2").status_code == 200
    assert "must be a string" in infer(agent, {"tier": 3}, version="1").json()["error"]

    # A session lands on one version, and that version checks its signals.
    sessions = [f"session-{i}" for i in range(20)]
    assert {expected_version(s) for s in sessions} == {"1", "2"}
    for session in sessions:
        response = infer(agent, {"tier": "gold"}, headers={"X-Session-Id": session})
        check_landed(response, expected_version(session))


def test_a_request_split_by_its_id_is_checked_by_the_version_it_lands_on(two_schemas):
    agent = two_schemas
    ids = [f"req-{i}" for i in range(20)]
    assert {expected_version(i) for i in ids} == {"1", "2"}
    for request_id in ids:
        response = agent.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "id": request_id,
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}],
                "parameters": {"tier": "gold"},
            },
        )
        check_landed(response, expected_version(request_id))


def test_signals_need_the_add_on_that_unlocks_them_when_the_console_gates_features(
    tmp_path, console
):
    from tests.inference.harness import tester_bundle

    (tmp_path / "models").mkdir()
    churn = scaler_model(tmp_path / "build" / "churn-1.onnx", 1.0)
    console.desired_models = [offer(console, churn, "1", 1.0, SCHEMA)]
    locked = tester_bundle(revision=2)
    console.publish(
        locked.model_copy(
            update={"tenants": [locked.tenants[0].model_copy(update={"features": []})]}
        )
    )
    with start(tmp_path, console) as agent:
        wait_until(lambda: ready_versions(console) == {"1"}, what="version 1 ready")
        wait_until(
            lambda: infer(agent, {"tier": "gold"}, headers=console.auth()).status_code == 403,
            what="the locked bundle to be enforced",
        )
        refused = infer(agent, {"tier": "gold"}, headers=console.auth())
        assert "personalisation signals are an add-on" in refused.json()["error"]
        assert infer(agent, None, headers=console.auth()).status_code == 200

        unlocked = tester_bundle(revision=3)
        console.publish(
            unlocked.model_copy(
                update={
                    "tenants": [unlocked.tenants[0].model_copy(update={"features": ["signals"]})]
                }
            )
        )
        wait_until(
            lambda: infer(agent, {"tier": "gold"}, headers=console.auth()).status_code == 200,
            what="the add-on to unlock signals",
        )
