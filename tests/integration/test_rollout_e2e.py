"""Upload → grade → deploy to two real agents → both serve it; a canary splits traffic; a
broken version rolls itself back; a tampered artifact is refused by the node and reported."""

import hashlib
import time

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from onnx import TensorProto, helper

from billing.models import ApiKey
from fleet import artifacts
from fleet.models import ModelVersion, Node
from fleet.rollout_actions import judge, promote, start_rollout
from fleet.rollouts import Gates
from fleet.tasks import grade_version_task, push_desired_task
from tests.inference.harness import make_model, save
from tests.integration.conftest import enforced_tokens, serve_enrolled, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def scaler(path, factor: float):
    """y = factor·x over float32 [batch, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])
    return save(
        make_model([helper.make_node("Mul", ["x", "k"], ["y"])], path.stem, [x], [y], [k]), path
    ).read_bytes()


def broken(path):
    """Looks up x in a one-entry table: fine on the zeros grading runs, an out-of-range index
    on any real input, so it grades and deploys, then fails under traffic."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    table = helper.make_tensor("table", TensorProto.FLOAT, [1], [4.0])
    nodes = [
        helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "i"], ["y"]),
    ]
    return save(make_model(nodes, path.stem, [x], [y], [table]), path).read_bytes()


@pytest.fixture
def fast(settings, tmp_path):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def agents(live_server, start_process, tmp_path, eu_west, nano, standard, fast):
    ports = {
        name: serve_enrolled(start_process, live_server.url, tmp_path, name, eu_west, node_class)
        for name, node_class in (("fra-nano-1", nano), ("fra-standard-1", standard))
    }
    wait_until(
        lambda: Node.objects.filter(status="online").count() == 2,
        timeout=30,
        what="both agents online",
    )
    return ports


def register(client, key, data, name="scaler"):
    response = client.post(
        "/api/v1/models",
        {"name": name, "file": SimpleUploadedFile("m.onnx", data)},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code in (200, 201), response.content
    version = ModelVersion.objects.get(sha256=response.json()["sha256"])
    grade_version_task(version.pk)
    version.refresh_from_db()
    assert version.status == "graded", version.failure
    return version


def serving(sha256: str, *, ready: bool = True):
    def check():
        rows = [r for n in Node.objects.all() for r in n.models_loaded if r["sha256"] == sha256]
        return len(rows) == 2 and all(r["ready"] == ready for r in rows)

    return check


def infer(port, session, value=1.0, *, token):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
    response = httpx.post(
        f"http://127.0.0.1:{port}/v2/models/acme.scaler/infer",
        json=body,
        headers={"X-Session-Id": session, "Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return response


def test_a_model_goes_from_upload_to_every_selected_node_and_canaries_safely(
    client, acme, agents, tmp_path
):
    key = ApiKey.issue(acme, "ci")[1]
    token = enforced_tokens(acme)["acme"]
    v1 = register(client, key, scaler(tmp_path / "v1.onnx", 2.0))
    first = start_rollout(v1, strategy="all_at_once")
    wait_until(serving(v1.sha256), timeout=60, what="v1 served on both nodes")
    for port in agents.values():
        assert infer(port, "s", token=token).json()["outputs"][0]["data"] == [2.0] * 4
    promote(first)  # a first deployment has no previous version to be judged against

    # A canary at 50 %: sessions split between the versions, each session sticks to one.
    v2 = register(client, key, scaler(tmp_path / "v2.onnx", 3.0))
    canary = start_rollout(v2, steps=[50, 100], soak_s=0, gates=Gates(min_requests=20))
    wait_until(serving(v2.sha256), timeout=60, what="v2 served beside v1")
    port = agents["fra-nano-1"]
    outputs = [
        infer(port, f"session-{i}", token=token).json()["outputs"][0]["data"][0] for i in range(400)
    ]
    share = outputs.count(3.0) / len(outputs)
    assert 0.4 < share < 0.6, share
    assert {
        infer(port, "session-7", token=token).json()["outputs"][0]["data"][0] for _ in range(5)
    } == {outputs[7]}

    def canary_done():
        for i in range(30):  # traffic for the step being judged
            infer(port, f"more-{time.monotonic()}-{i}", token=token)
        return judge(canary).value == "complete"

    wait_until(canary_done, timeout=60, interval=0.5, what="the canary to pass 50 % and 100 %")

    # A broken version fails its gate and rolls itself back; traffic returns to v2.
    v3 = register(client, key, broken(tmp_path / "v3.onnx"))
    bad = start_rollout(v3, steps=[50, 100], soak_s=3600, gates=Gates(min_requests=20))
    wait_until(serving(v3.sha256), timeout=60, what="v3 served beside v2")
    for i in range(200):
        infer(port, f"s-{i}", token=token)
    wait_until(
        lambda: judge(bad).value == "roll_back", timeout=30, what="the broken canary to roll back"
    )
    bad.refresh_from_db()
    assert bad.state == "rolled_back"
    assert "error rate" in bad.events.first().reason
    wait_until(
        lambda: (
            not any(r["sha256"] == v3.sha256 for n in Node.objects.all() for r in n.models_loaded)
        ),
        timeout=60,
        what="v3 unloaded",
    )
    assert {
        infer(port, f"after-{i}", token=token).json()["outputs"][0]["data"][0] for i in range(20)
    } == {3.0}


def test_a_tampered_artifact_is_refused_by_the_node_and_reported(client, acme, agents, tmp_path):
    key = ApiKey.issue(acme, "ci")[1]
    token = enforced_tokens(acme)["acme"]
    version = register(client, key, scaler(tmp_path / "v1.onnx", 2.0))
    path = artifacts.path_for(version.sha256)
    path.write_bytes(scaler(tmp_path / "evil.onnx", 9.0))  # storage swapped under the console
    start_rollout(version, strategy="all_at_once")

    def reported():
        rows = [
            r for n in Node.objects.all() for r in n.models_loaded if r["sha256"] == version.sha256
        ]
        return len(rows) == 2 and all(r.get("problem") and not r["ready"] for r in rows) and rows

    rows = wait_until(reported, timeout=60, what="both nodes to report the mismatch")
    assert "sha256" in rows[0]["problem"]
    evil = hashlib.sha256(path.read_bytes()).hexdigest()
    assert infer(agents["fra-nano-1"], "s", token=token).status_code in (404, 503)
    assert evil != version.sha256


def test_a_pushed_rollout_does_not_wait_for_the_next_heartbeat(
    client, acme, agents, tmp_path, settings
):
    key = ApiKey.issue(acme, "ci")[1]
    token = enforced_tokens(acme)["acme"]
    version = register(client, key, scaler(tmp_path / "v1.onnx", 2.0))
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 300  # the next heartbeat answer is far away now
    for _ in range(2):  # let both agents hear of the long interval
        wait_until(lambda: Node.objects.filter(status="online").count() == 2, timeout=10)
        time.sleep(1.2)

    deployment = start_rollout(version, strategy="all_at_once")
    started = time.monotonic()
    taken = push_desired_task(list(deployment.nodes().values_list("pk", flat=True)))

    assert taken == 2
    for port in agents.values():
        wait_until(
            lambda p=port: infer(p, "s", token=token).status_code == 200,
            timeout=20,
            what="the pushed version",
        )
    assert time.monotonic() - started < 20
