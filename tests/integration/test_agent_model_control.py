"""Triton's model repository extension on a real agent: index, load, unload, readiness, and
who may use them."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.inference.harness import add_sub_model, fixed_model, running_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    add_sub_model(models / "add-sub.onnx")
    fixed_model(models / "fixed.onnx")
    state = tmp_path_factory.mktemp("state")
    with running_agent(models, state, log_path=state / "agent.log") as running:
        yield running


@pytest.fixture
def client(agent):
    return triton.InferenceServerClient(agent.address)


def infer_json(agent, model: str, document: object) -> httpx.Response:
    return agent.post(f"/v2/models/{model}/infer", content=json.dumps(document))


def test_models_can_be_unloaded_and_loaded_again_from_loopback(client, agent):
    index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert index["fixed"] == "READY"

    client.unload_model("fixed")
    assert not client.is_model_ready("fixed")
    response = infer_json(agent, "fixed", {"inputs": []})
    assert (response.status_code, response.json()) == (404, {"error": "unknown model 'fixed'"})
    unloaded = [m for m in client.get_model_repository_index() if m["name"] == "fixed"]
    assert unloaded == [
        {"name": "fixed", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    assert client.is_server_ready(), "an unloaded model does not make the node unready"

    client.load_model("fixed")
    assert client.is_model_ready("fixed")
    with pytest.raises(InferenceServerException, match="no model file 'nope.onnx'"):
        client.load_model("nope")


def test_a_model_that_fails_to_load_keeps_the_node_unready_until_unloaded(tmp_path):
    models = tmp_path / "models"
    add_sub_model(models / "good.onnx")
    (models / "broken.onnx").write_bytes(b"this is not onnx")
    with running_agent(
        models, tmp_path / "state", log_path=tmp_path / "agent.log", ready=False
    ) as agent:
        client = triton.InferenceServerClient(agent.address)
        time.sleep(1)
        assert client.is_server_live()
        assert not client.is_server_ready()
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["good"]["state"] == "READY"
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "could not load broken.onnx" in index["broken"]["reason"]
        client.unload_model("broken")
        assert client.is_server_ready()


def test_with_an_admin_token_model_control_needs_it(tmp_path):
    models = tmp_path / "models"
    add_sub_model(models / "m.onnx")
    with running_agent(
        models,
        tmp_path / "state",
        log_path=tmp_path / "agent.log",
        env={"OUTPOST_NODE_ADMIN_TOKEN": "s3cret"},
    ) as agent:
        assert agent.post("/v2/repository/index").status_code == 401
        wrong = agent.post("/v2/repository/index", headers={"authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()) == (403, {"error": "the admin token is not valid"})
        right = agent.post("/v2/repository/index", headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert [m["name"] for m in right.json()] == ["m"]


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_without_an_admin_token_model_control_is_refused_from_other_machines(tmp_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    models = tmp_path / "models"
    add_sub_model(models / "m.onnx")
    with running_agent(
        models, tmp_path / "state", "--host", "0.0.0.0", log_path=tmp_path / "agent.log"
    ) as agent:
        port = agent.address.rsplit(":", 1)[1]
        response = httpx.post(f"http://{address}:{port}/v2/repository/models/m/unload")
        assert response.status_code == 403
        assert "only allowed from this machine" in response.json()["error"]
        assert httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").status_code == 200
