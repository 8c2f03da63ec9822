"""Node credential rotation with a real console (live server) and a real agent process: an
operator asks on the node page, the agent fetches its new credential with its next heartbeat,
saves it and uses it; the old one is refused from then on, and a restarted agent uses the
saved new one."""

import json

import httpx
import pytest
from django.utils import timezone

from fleet.models import Node
from inference import protocol
from tests.integration.conftest import python, serve_enrolled, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def node_call(url: str, credential: str) -> int:
    """The status of a node-authenticated call (the bundle: 404 while none is published)."""
    headers = {"Authorization": f"Bearer {credential}"}
    return httpx.get(url + protocol.BUNDLE_PATH, headers=headers, timeout=10).status_code


def test_an_agent_takes_its_new_credential_and_the_old_one_is_refused(
    live_server, start_process, tmp_path, eu_west, nano, settings, client, alice
):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    port = serve_enrolled(start_process, live_server.url, tmp_path, "fra-nano-1", eu_west, nano)
    node = wait_until(
        lambda: Node.objects.filter(status="online").first(), timeout=30, what="the node online"
    )
    identity = tmp_path / "fra-nano-1" / "state" / "identity.json"
    old = json.loads(identity.read_text())["credential"]
    assert node.credential_hash == protocol.hash_secret(old)

    client.force_login(alice)
    assert client.post(f"/fleet/nodes/{node.uid}/credential/").status_code == 302

    rotated = wait_until(
        lambda: Node.objects.filter(pk=node.pk, credential_rotated_at__isnull=False).first(),
        timeout=20,
        what="the node to use its new credential",
    )
    new = json.loads(identity.read_text())["credential"]
    assert new != old
    assert rotated.credential_hash == protocol.hash_secret(new)
    assert rotated.pending_credential_hash == ""
    assert rotated.credential_rotation_requested_at is None
    assert identity.stat().st_mode & 0o077 == 0  # still readable by the owner only
    # It keeps heartbeating, with the new credential.
    wait_until(
        lambda: Node.objects.get(pk=node.pk).last_heartbeat_at > rotated.credential_rotated_at,
        timeout=10,
        what="heartbeats after the rotation",
    )
    assert node_call(live_server.url, old) == 401
    assert node_call(live_server.url, new) == 404  # authenticated; no bundle published yet

    agent = start_process.by_name["fra-nano-1"]
    agent.terminate()
    agent.wait(10)
    assert "REJECTED THIS NODE'S CREDENTIAL" not in agent.log_path.read_text()
    restarted_at = timezone.now()
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
            live_server.url,
        ],
    )
    wait_until(
        lambda: Node.objects.get(pk=node.pk).last_heartbeat_at > restarted_at,
        timeout=30,
        what="heartbeats of the restarted agent",
    )
    again = Node.objects.get(pk=node.pk)
    assert again.credential_hash == protocol.hash_secret(new)
    assert again.credential_rotated_at == rotated.credential_rotated_at
    assert Node.objects.count() == 1
