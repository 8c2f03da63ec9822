"""A real agent process enrolls with a live console, heartbeats, serves, restarts without
re-enrolling, and goes offline when stopped."""

import hashlib

import numpy as np
import pytest
import tritonclient.http as triton
from django.utils import timezone

from fleet.models import EnrollmentToken, Node
from fleet.tasks import detect_status_flips_task
from tests.inference.harness import doubler_model
from tests.integration.conftest import enforced_tokens, free_port, python, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_heartbeats(settings):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    settings.OUTPOST_NODE_ONLINE_AFTER_S = 3
    settings.OUTPOST_NODE_OFFLINE_AFTER_S = 6


def test_an_agent_enrolls_heartbeats_serves_and_goes_offline(
    live_server, start_process, tmp_path, eu_west, nano, fast_heartbeats
):
    models = tmp_path / "models"
    models.mkdir()
    sha = hashlib.sha256(doubler_model(models / "doubler.onnx").read_bytes()).hexdigest()
    _, secret = EnrollmentToken.issue(node_name="fra-nano-1", region=eu_west, node_class=nano)
    port = free_port()
    args = [
        python(),
        "-m",
        "inference",
        "serve",
        "--models",
        str(models),
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--console",
        live_server.url,
        "--enroll",
        secret,
    ]

    agent = start_process("agent", args)
    node = wait_until(
        lambda: Node.objects.filter(name="fra-nano-1", status="online").first(),
        timeout=30,
        what="the agent to enroll and report online",
    )
    assert node.endpoint == f"http://127.0.0.1:{port}"
    [loaded] = node.models_loaded
    assert {k: loaded[k] for k in ("name", "version", "sha256", "ready")} == {
        "name": "doubler",
        "version": "1",
        "sha256": sha,
        "ready": True,
    }

    token = enforced_tokens("acme")["acme"]
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = triton.InferInput("x", [2, 4], "FP32")
    request.set_data_from_numpy(batch, binary_data=False)
    result = client.infer("doubler", [request], headers={"Authorization": f"Bearer {token}"})
    np.testing.assert_array_equal(result.as_numpy("y"), batch * 2)
    wait_until(
        lambda: Node.objects.get(pk=node.pk).requests_total >= 1,
        timeout=15,
        what="the request count in a heartbeat",
    )

    # A restart reuses the identity in --state-dir: the spent token is not presented again.
    agent.terminate()
    agent.wait(10)
    restarted_at = timezone.now()
    agent = start_process("agent-again", args)
    wait_until(
        lambda: Node.objects.get(pk=node.pk).last_heartbeat_at > restarted_at,
        timeout=30,
        what="heartbeats after the restart",
    )
    assert Node.objects.count() == 1

    agent.terminate()
    agent.wait(10)

    def seen_offline():
        detect_status_flips_task()  # what beat runs every few seconds in production
        return Node.objects.get(pk=node.pk).status == "offline"

    wait_until(seen_offline, timeout=20, interval=0.5, what="the node to be seen offline")
    history = list(node.status_changes.order_by("at").values_list("new_status", flat=True))
    # The first heartbeat may come while the model is still loading: degraded, then online.
    assert "online" in history and history[-1] == "offline"
