"""Policy bundles between a real console (live server) and a real agent: the node pulls a new
revision from its heartbeat answer, takes a pushed one at once, refuses tampered, foreign,
expired and older bundles while it keeps serving on its last good one, and enforces the same
revision after a restart — before it has heard from its console."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from billing.signing import console_private_key
from fleet.models import Node, PolicyBundleRecord
from fleet.policies import update_policy
from fleet.policy_plane import publish_bundle, push_bundle, push_bundle_to_nodes
from fleet.tasks import push_bundle_task
from inference import protocol
from tests.integration.conftest import free_port, python, serve_enrolled, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def agent(live_server, start_process, tmp_path, eu_west, nano, settings, acme):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    port = serve_enrolled(start_process, live_server.url, tmp_path, "fra-nano-1", eu_west, nano)
    wait_until(lambda: Node.objects.filter(status="online").exists(), timeout=30, what="online")
    return port


def enforced(port: int) -> int | None:
    """The revision the agent enforces, as its /metrics say."""
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith("outpost_policy_bundle_revision "):
            return int(float(line.split()[1]))
    return None


def reported() -> int | None:
    return Node.objects.get().bundle_revision


def test_a_node_pulls_each_new_revision_from_its_heartbeat_answer(agent, acme):
    publish_bundle(["first"])
    wait_until(lambda: reported() == 1, timeout=20, what="revision 1 reported")
    assert enforced(agent) == 1

    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    publish_bundle(["policy of acme changed"])
    wait_until(lambda: reported() == 2, timeout=20, what="revision 2 reported")
    assert enforced(agent) == 2


def test_a_pushed_bundle_is_enforced_at_once(agent, acme, settings):
    # Heartbeats every 30 s from now on: only the push can deliver within the test.
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 30
    wait_until(lambda: reported() is None and enforced(agent) is None, what="no bundle yet")
    record = publish_bundle(["first"])

    assert push_bundle(Node.objects.get(), record) is True
    assert enforced(agent) == 1


def test_the_push_task_retries_an_unreachable_node_then_leaves_it_to_its_heartbeat(
    eu_west, nano, make_node, acme
):
    node = make_node("gone", eu_west, nano, status="online")
    Node.objects.filter(pk=node.pk).update(endpoint=f"http://127.0.0.1:{free_port()}")
    record = publish_bundle(["first"])

    result = push_bundle_task.apply(args=(node.pk, record.revision))

    assert result.failed()
    assert result.result.__class__.__name__ == "PushFailed"
    assert push_bundle_to_nodes(record.revision) == 1  # an online node is pushed to


def offer(port: int, signed: protocol.SignedBundle) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}{protocol.BUNDLE_PUSH_PATH}",
        content=signed.model_dump_json(),
        headers={"content-type": "application/json"},
    )


def test_bad_bundles_are_refused_and_the_node_keeps_its_last_good_one(agent, acme):
    record = publish_bundle(["first"])
    assert push_bundle(Node.objects.get(), record) is True
    good = record.bundle
    key = console_private_key()
    now = timezone.now()
    tampered = protocol.sign_bundle(key, good.model_copy(update={"revision": 7}))
    tampered = tampered.model_copy(update={"bundle": good.model_copy(update={"revision": 8})})
    cases = {
        "tampered": (tampered, "does not verify"),
        "foreign": (
            protocol.sign_bundle(
                protocol.generate_private_key(), good.model_copy(update={"revision": 9})
            ),
            "does not trust",
        ),
        "expired": (
            protocol.sign_bundle(
                key,
                good.model_copy(
                    update={
                        "revision": 10,
                        "issued_at": now - timedelta(hours=2),
                        "expires_at": now - timedelta(hours=1),
                    }
                ),
            ),
            "expired",
        ),
    }
    for name, (signed, why) in cases.items():
        response = offer(agent, signed)
        assert response.status_code == 409, name
        assert why in response.json()["error"], name
        assert enforced(agent) == 1, name
    wait_until(lambda: "expired" in Node.objects.get().bundle_problem, what="problem reported")

    newer = protocol.sign_bundle(key, good.model_copy(update={"revision": 11}))
    assert offer(agent, newer).status_code == 200
    older = protocol.sign_bundle(key, good.model_copy(update={"revision": 5}))
    response = offer(agent, older)
    assert response.status_code == 409
    assert "older than revision 11" in response.json()["error"]
    assert enforced(agent) == 11
    # The agent still serves (health) and reports.
    assert httpx.get(f"http://127.0.0.1:{agent}/v2/health/live").status_code == 200


def test_a_restarted_node_enforces_its_saved_bundle_before_it_reaches_the_console(
    agent, acme, tmp_path, start_process
):
    publish_bundle(["first"])
    wait_until(lambda: enforced(agent) == 1, what="revision 1 enforced")
    first = start_process.by_name["fra-nano-1"]
    first.terminate()
    first.wait(10)

    # Restarted against a console address where nothing listens.
    port = free_port()
    start_process(
        "fra-nano-1-again",
        [
            python(),
            "-m",
            "inference",
            "serve",
            "--models",
            str(tmp_path / "fra-nano-1" / "models"),
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "fra-nano-1" / "state"),
            "--console",
            f"http://127.0.0.1:{free_port()}",
        ],
    )
    wait_until(lambda: _live(port), timeout=30, what="the restarted agent answering")
    assert enforced(port) == 1
    assert PolicyBundleRecord.objects.latest_revision() == 1


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200
    except httpx.HTTPError:
        return False
