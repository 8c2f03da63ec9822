"""A real agent batches concurrent requests and reports it in Prometheus metrics that
promtool accepts."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from inference.demo_models import random_mlp_medium
from tests.conftest import require_binary
from tests.inference.harness import add_sub_model, running_agent, save


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    add_sub_model(models / "add-sub.onnx")
    # A model slow enough (~0.2 ms) that concurrent requests queue behind each other.
    save(random_mlp_medium(width=512), models / "mlp.onnx")
    state = tmp_path_factory.mktemp("state")
    with running_agent(models, state, log_path=state / "agent.log") as running:
        yield running


def infer_json(agent, model: str, document: object) -> httpx.Response:
    return agent.post(f"/v2/models/{model}/infer", content=json.dumps(document))


def pair(a=(1, 2, 3, 4)) -> dict:
    return {"inputs": [
        {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": list(a)},
        {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [4, 3, 2, 1]},
    ]}  # fmt: skip


def batch_histogram(metrics_text: str, model: str) -> tuple[float, float]:
    values = {}
    for line in metrics_text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'outpost_inference_batch_size_{part}{{model="{model}"}}'):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def test_concurrent_requests_are_batched(agent):
    rows_before, runs_before = batch_histogram(agent.metrics(), "mlp")
    document = {
        "inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]
    }
    body = json.dumps(document)

    def call(_):
        with httpx.Client(timeout=10) as session:
            return [
                session.post(agent.url + "/v2/models/mlp/infer", content=body).status_code
                for _ in range(8)
            ]

    with ThreadPoolExecutor(24) as pool:
        statuses = [s for batch in pool.map(call, range(24)) for s in batch]
    assert set(statuses) == {200}
    rows, runs = batch_histogram(agent.metrics(), "mlp")
    assert rows - rows_before == len(statuses)
    assert runs - runs_before < len(statuses), "no two requests ever shared a run"


def test_metrics_count_requests_by_model_and_outcome(agent):
    infer_json(agent, "add-sub", pair())
    infer_json(agent, "add-sub", pair(a=(1,)))
    text = agent.metrics()
    assert agent.get("/metrics").headers["content-type"].startswith("text/plain")
    for name in (
        'outpost_inference_requests_total{model="add-sub",outcome="success"}',
        'outpost_inference_requests_total{model="add-sub",outcome="client_error"}',
        'outpost_inference_request_duration_seconds_bucket{le="0.0001",model="add-sub"}',
        'outpost_inference_queue_duration_seconds_count{model="add-sub"}',
        'outpost_inference_batch_size_count{model="add-sub"}',
        "outpost_models_loaded ",
        "outpost_inference_queue_depth ",
        "outpost_process_cpu_seconds_total ",
        "outpost_agent_info{",
    ):
        assert name in text, name
    assert "tenant" not in text and "req-" not in text


@pytest.fixture
def promtool():
    return require_binary("promtool")


def test_metrics_pass_promtool(agent, promtool):
    infer_json(agent, "add-sub", pair())
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=agent.get("/metrics").content,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
