"""A real agent process speaks Open Inference Protocol v2: an unmodified tritonclient works
with every datatype, JSON or binary, and bad requests get a precise error and the right status.
(Limits and garbage: test_agent_limits.py; metrics: test_agent_metrics.py; model control:
test_agent_model_control.py.)"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from inference.demo_models import random_mlp_medium
from tests.inference.harness import (
    ONNX_TYPES,
    add_sub_model,
    fixed_model,
    identity_model,
    running_agent,
    save,
    sequence_model,
)

DTYPES = list(ONNX_TYPES)  # every OIP datatype, BYTES included


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    for dtype in DTYPES:
        identity_model(directory / f"identity-{dtype.lower()}.onnx", dtype)
    add_sub_model(directory / "add-sub.onnx")
    fixed_model(directory / "fixed.onnx")
    sequence_model(directory / "sequence.onnx")
    # A model slow enough (~0.2 ms) that concurrent requests queue behind each other.
    save(random_mlp_medium(width=512), directory / "mlp.onnx")
    (directory / "mlp.json").write_text('{"max_batch_size": 16, "max_queue_delay_ms": 2}')
    return directory


@pytest.fixture(scope="module")
def agent(models, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    with running_agent(models, state, log_path=state / "agent.log") as running:
        yield running


@pytest.fixture
def client(agent):
    return triton.InferenceServerClient(agent.address)


def infer_json(agent, model: str, document: object, **kwargs) -> httpx.Response:
    return agent.post(f"/v2/models/{model}/infer", content=json.dumps(document), **kwargs)


def pair(a=(1, 2, 3, 4), b=(4, 3, 2, 1), shape=(1, 4)) -> dict:
    return {
        "inputs": [
            {"name": "a", "shape": list(shape), "datatype": "FP32", "data": list(a)},
            {"name": "b", "shape": list(shape), "datatype": "FP32", "data": list(b)},
        ]
    }


# --- tritonclient conformance ----------------------------------------------------------------


def test_it_is_live_and_ready_and_describes_itself(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "outpost-agent"
    assert "model_repository" in metadata["extensions"]


def test_model_metadata_shows_dynamic_dimensions_as_minus_one(client):
    metadata = client.get_model_metadata("add-sub")
    assert metadata == {
        "name": "add-sub",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "b", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "sum", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "difference", "datatype": "FP32", "shape": [-1, 4]},
        ],
    }
    assert client.get_model_metadata("add-sub", model_version="1")["name"] == "add-sub"
    assert client.is_model_ready("add-sub")


def test_it_infers_json_tensors_and_returns_only_the_selected_output(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    inputs = [triton.InferInput("a", [2, 4], "FP32"), triton.InferInput("b", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=False)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    outputs = [triton.InferRequestedOutput("difference", binary_data=False)]
    result = client.infer("add-sub", inputs, outputs=outputs, request_id="req-1")
    np.testing.assert_array_equal(result.as_numpy("difference"), a - b)
    assert result.as_numpy("sum") is None
    response = result.get_response()
    assert response["id"] == "req-1"
    assert (response["model_name"], response["model_version"]) == ("add-sub", "1")


def test_it_infers_binary_tensors_as_tritonclient_sends_them_by_default(client):
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    inputs = [triton.InferInput("a", [1, 4], "FP32"), triton.InferInput("b", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer("add-sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("sum"), a * 2)
    np.testing.assert_array_equal(result.as_numpy("difference"), a * 0)


def sample(dtype: str) -> np.ndarray:
    if dtype == "BYTES":
        return np.array([["a", "b\u00e9", ""], ["x", "y", "z"]], dtype=object)
    if dtype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    numpy_type = triton.np_to_triton_dtype  # noqa: F841 - keeps the import honest
    from tritonclient.utils import triton_to_np_dtype

    kind = np.dtype(triton_to_np_dtype(dtype))
    high = 100 if kind.kind in "iu" else 1.5
    return (np.arange(6).reshape(2, 3) * high / 6).astype(kind)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_datatype_round_trips(client, dtype, binary):
    data = sample(dtype)
    tensor = triton.InferInput("x", list(data.shape), dtype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [triton.InferRequestedOutput("y", binary_data=binary)]
    result = client.infer(f"identity-{dtype.lower()}", [tensor], outputs=outputs)
    answer = result.as_numpy("y")
    if dtype == "BYTES":
        answer = np.array(
            [v.decode() if isinstance(v, bytes) else v for v in answer.ravel()], dtype=object
        ).reshape(answer.shape)
    np.testing.assert_array_equal(answer, data)
    assert result.get_output("y")["datatype"] == dtype


def test_a_model_without_a_batch_dimension_and_one_with_a_dynamic_length_both_serve(agent):
    fixed = infer_json(
        agent,
        "fixed",
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}
            ]
        },
    )
    assert fixed.json()["outputs"][0]["data"] == [2, 3, 4, 5, 6, 7]

    def total(length: int) -> float:
        document = {
            "inputs": [
                {"name": "x", "shape": [1, length], "datatype": "FP32", "data": [1] * length}
            ]
        }
        return infer_json(agent, "sequence", document).json()["outputs"][0]["data"][0]

    with ThreadPoolExecutor(8) as pool:
        lengths = [1, 5, 3, 5, 1, 9, 3, 2] * 4
        assert list(pool.map(total, lengths)) == lengths


def test_responses_say_who_served_them_and_the_agents_overhead(agent):
    response = infer_json(agent, "add-sub", pair())
    assert response.status_code == 200
    assert response.headers["x-outpost-served-by"] == "local"
    assert 0 <= float(response.headers["x-outpost-overhead-ms"]) < 1000
    assert response.json()["outputs"][0]["data"] == [5, 5, 5, 5]


def test_versioned_paths_serve_version_1_only(agent):
    assert agent.post("/v2/models/add-sub/versions/1/infer", json=pair()).status_code == 200
    assert agent.get("/v2/models/add-sub/versions/1/ready").status_code == 200
    response = agent.post("/v2/models/add-sub/versions/2/infer", json=pair())
    assert response.status_code == 404
    assert response.json() == {
        "error": "model 'add-sub' has no version '2' (this node serves version 1)"
    }


def test_the_model_configuration_reflects_the_sidecar(client):
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [256]}]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "document", "status", "message"),
    [
        ("nope", pair(), 404, "unknown model 'nope'"),
        (
            "add-sub",
            {"inputs": [{"name": "c", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]},
            400,
            "unexpected input 'c'; model 'add-sub' takes: 'a', 'b'",
        ),
        (
            "add-sub",
            {"inputs": pair()["inputs"][:1]},
            400,
            "missing input 'b' (FP32, shape [-1, 4]) for model 'add-sub'",
        ),
        (
            "add-sub",
            pair(a=(1, 2, 3), b=(1, 2, 3), shape=(1, 3)),
            400,
            "input 'a' has shape [1, 3] but model 'add-sub' expects [-1, 4] (-1 is any size)",
        ),
        (
            "add-sub",
            {"inputs": [{**pair()["inputs"][0], "datatype": "INT32"}, pair()["inputs"][1]]},
            400,
            "input 'a' has datatype INT32 but model 'add-sub' expects FP32",
        ),
        ("add-sub", pair(a=(1, 2, 3)), 400, "input 'a' has 3 values but shape [1, 4] needs 4"),
        (
            "add-sub",
            pair(a=("x", "y", "z", "w")),
            400,
            "input 'a' is FP32 but its data contains strings",
        ),
        (
            "add-sub",
            {**pair(), "outputs": [{"name": "product"}]},
            400,
            "unknown output 'product'; model 'add-sub' has: 'sum', 'difference'",
        ),
    ],
    ids=[
        "unknown-model",
        "extra-input",
        "missing-input",
        "wrong-shape",
        "wrong-datatype",
        "short-data",
        "non-numeric",
        "unknown-output",
    ],
)
def test_a_bad_request_gets_a_precise_error(agent, model, document, status, message):
    response = infer_json(agent, model, document)
    assert (response.status_code, response.json()) == (status, {"error": message})


def test_malformed_json_is_a_400(agent):
    response = agent.post("/v2/models/add-sub/infer", content=b'{"inputs": [}')
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON in request body")


def test_unknown_paths_are_404_and_wrong_methods_405(agent):
    assert agent.get("/v2/nothing").status_code == 404
    assert agent.get("/v2/models/add-sub/explain").status_code == 404
    response = agent.get("/v2/models/add-sub/infer")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert agent.post("/v2/health/ready").status_code == 405
