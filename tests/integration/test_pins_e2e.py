"""Per-tenant pins with a real agent: during a 50 % canary, a tenant pinned to the previous
version (known by the ephemeral token the console issued it) always gets the previous
version, whatever its sessions; moving the pin moves it; others follow the split."""

import httpx
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from billing.models import Tenant
from fleet.models import ModelVersion, Node
from fleet.rollout_actions import pin, promote, start_rollout, unpin
from fleet.tasks import grade_version_task
from tests.integration.conftest import enforced_tokens, serve_enrolled, wait_until
from tests.integration.test_rollout_e2e import scaler

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def port(live_server, start_process, tmp_path, eu_west, nano, settings):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"
    port = serve_enrolled(start_process, live_server.url, tmp_path, "fra-nano-1", eu_west, nano)
    wait_until(lambda: Node.objects.filter(status="online").exists(), timeout=30, what="online")
    return port


def answers(port, sessions, token):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
    values = set()
    for session in sessions:
        headers = {"X-Session-Id": session, "Authorization": f"Bearer {token}"}
        response = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/scaler/infer", json=body, headers=headers
        )
        assert response.status_code == 200, response.text
        values.add(response.json()["outputs"][0]["data"][0])
    return values


def register(operator, data):
    """A catalogue model (an operator's upload), so any tenant may be pinned to it."""
    response = operator.post(
        "/api/v1/models", {"name": "scaler", "file": SimpleUploadedFile("m.onnx", data)}
    )
    assert response.status_code in (200, 201), response.content
    version = ModelVersion.objects.get(sha256=response.json()["sha256"])
    grade_version_task(version.pk)
    version.refresh_from_db()
    return version


def test_a_pinned_tenant_stays_on_its_version_whatever_the_split(operator, port, tmp_path):
    v1 = register(operator, scaler(tmp_path / "v1.onnx", 2.0))
    promote(start_rollout(v1, strategy="all_at_once"))
    v2 = register(operator, scaler(tmp_path / "v2.onnx", 3.0))
    canary = start_rollout(v2, steps=[50, 100], soak_s=3600)
    tokens = enforced_tokens("acme", "globex")
    acme, token, others = Tenant.objects.get(slug="acme"), tokens["acme"], tokens["globex"]
    sessions = [f"s-{i}" for i in range(60)]

    def both_ready():
        rows = [r for n in Node.objects.all() for r in n.models_loaded if r["ready"]]
        return {v1.sha256, v2.sha256} <= {r["sha256"] for r in rows}

    wait_until(both_ready, timeout=60, what="v1 and v2 ready on the node")
    assert answers(port, sessions, others) == {2.0, 3.0}  # a 50 % split by session
    pin(canary, acme, "old")
    wait_until(lambda: answers(port, sessions, token) == {2.0}, timeout=30, what="acme on v1")
    assert answers(port, sessions, others) == {2.0, 3.0}  # everyone else still splits

    pin(canary, acme, "new")
    wait_until(lambda: answers(port, sessions, token) == {3.0}, timeout=30, what="acme on v2")
    unpin(canary, acme)
    wait_until(lambda: answers(port, sessions, token) == {2.0, 3.0}, timeout=30, what="split")
