"""Node credential rotation on the console: an operator asks, the heartbeat answer says so, the
node fetches its next credential, and its first use retires the old one. Also the tokenisation
report a heartbeat carries, and the drift reference a desired version carries."""

from datetime import UTC, datetime

import pytest

from billing.models import AuditEntry
from fleet.actions import request_credential_rotation
from fleet.models import Deployment, Model, ModelVersion, Node
from fleet.rollout_actions import desired_versions
from inference import protocol

SHA = "cd" * 32


def report(node, **overrides) -> dict:
    body = {
        "node_uid": node.uid,
        "agent_version": "0.1.0",
        "sent_at": datetime.now(UTC).isoformat(),
        "uptime_s": 12.5,
        "models": [],
        "cpu_load": 0.25,
        "memory_pressure": 0.4,
        "queue_depth": 0,
        "requests_total": 0,
        "errors_total": 0,
    }
    body.update(overrides)
    return body


def beat(client, node, credential: str, **overrides):
    return client.post(
        protocol.HEARTBEAT_PATH,
        report(node, **overrides),
        content_type="application/json",
        headers={"Authorization": f"Bearer {credential}"},
    )


def next_credential(client, credential: str):
    return client.post(protocol.CREDENTIAL_PATH, headers={"Authorization": f"Bearer {credential}"})


@pytest.fixture
def edge(make_node, eu_west, nano):
    return make_node("fra-nano-1", eu_west, nano)


def test_an_operator_asks_for_a_rotation_from_the_node_page(client, operator, edge, alice):
    page = operator.get(f"/fleet/nodes/{edge.uid}/")
    assert page.status_code == 200
    assert b"never rotated" in page.content and b"Rotate credential" in page.content

    response = operator.post(f"/fleet/nodes/{edge.uid}/credential/")

    assert response.status_code == 302
    assert response["Location"] == f"/fleet/nodes/{edge.uid}/#credential"
    edge.refresh_from_db()
    assert edge.credential_rotation_requested_at is not None
    assert edge.credential_rotated_at is None
    entry = AuditEntry.objects.get(action="node.credential_rotation_requested")
    assert (entry.actor, entry.category, entry.subject_id) == (alice, "access", str(edge.pk))
    page = operator.get(f"/fleet/nodes/{edge.uid}/")
    assert b"rotation waiting for the node" in page.content
    # The heartbeat answer tells the node.
    assert beat(client, edge, edge.credential).json()["rotate_credential"] is True


def test_the_heartbeat_answer_says_nothing_to_rotate_when_nobody_asked(client, edge):
    assert beat(client, edge, edge.credential).json()["rotate_credential"] is False


def test_a_second_request_while_one_waits_changes_nothing(edge, alice):
    assert request_credential_rotation(edge, actor=alice) is True
    first = edge.credential_rotation_requested_at

    assert request_credential_rotation(edge, actor=alice) is False

    edge.refresh_from_db()
    assert edge.credential_rotation_requested_at == first
    assert AuditEntry.objects.filter(action="node.credential_rotation_requested").count() == 1


def test_the_old_credential_works_until_the_new_one_is_first_used_then_only_the_new(
    client, edge, alice
):
    request_credential_rotation(edge, actor=alice)
    response = next_credential(client, edge.credential)
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    new = response.json()["credential"]
    assert new.startswith("opn_") and new != edge.credential

    # A node that crashed before saving the new one is not locked out.
    answer = beat(client, edge, edge.credential)
    assert answer.status_code == 200 and answer.json()["rotate_credential"] is True
    edge.refresh_from_db()
    assert edge.credential_rotated_at is None and edge.pending_credential_hash

    answer = beat(client, edge, new)

    assert answer.status_code == 200 and answer.json()["rotate_credential"] is False
    edge.refresh_from_db()
    assert edge.credential_hash == protocol.hash_secret(new)
    assert edge.pending_credential_hash == ""
    assert edge.credential_rotated_at is not None
    assert edge.credential_rotation_requested_at is None
    assert beat(client, edge, edge.credential).status_code == 401
    assert beat(client, edge, new).status_code == 200
    swap = AuditEntry.objects.get(action="node.credential_rotated")
    assert (swap.actor_kind, swap.actor_label) == ("node", edge.uid)


def test_a_newer_credential_replaces_one_the_node_never_used(client, edge):
    lost = next_credential(client, edge.credential).json()["credential"]
    kept = next_credential(client, edge.credential).json()["credential"]

    assert beat(client, edge, lost).status_code == 401
    assert beat(client, edge, kept).status_code == 200
    assert beat(client, edge, edge.credential).status_code == 401


def test_a_node_may_rotate_without_being_asked(client, edge):
    new = next_credential(client, edge.credential).json()["credential"]

    assert beat(client, edge, new).status_code == 200
    assert Node.objects.get(pk=edge.pk).credential_rotated_at is not None


def test_the_credential_endpoint_wants_a_node_credential(client, edge):
    assert client.post(protocol.CREDENTIAL_PATH).status_code == 401
    assert next_credential(client, "opn_not-a-credential").status_code == 401
    edge.refresh_from_db()
    assert edge.pending_credential_hash == ""


def test_only_operators_ask_for_a_rotation(client, edge, bob, carol):
    for user in (bob, carol):
        client.force_login(user)
        assert client.post(f"/fleet/nodes/{edge.uid}/credential/").status_code == 403
    client.logout()
    assert client.post(f"/fleet/nodes/{edge.uid}/credential/").status_code == 302  # to login
    edge.refresh_from_db()
    assert edge.credential_rotation_requested_at is None


def test_asking_needs_a_post(operator, edge):
    assert operator.get(f"/fleet/nodes/{edge.uid}/credential/").status_code == 405
    assert operator.post("/fleet/nodes/nd-nope/credential/").status_code == 404


# --- the tokenisation report ----------------------------------------------------------------


def test_a_heartbeat_stores_whether_the_node_tokenises_and_for_whom(client, edge):
    response = beat(
        client,
        edge,
        edge.credential,
        tokenisation_active=True,
        tokenised_tenants=["acme", "globex"],
    )

    assert response.status_code == 200
    edge.refresh_from_db()
    assert edge.tokenisation_active is True
    assert edge.tokenised_tenants == ["acme", "globex"]


def test_an_older_agents_heartbeat_without_the_report_reads_as_not_tokenising(client, edge):
    Node.objects.filter(pk=edge.pk).update(tokenisation_active=True, tokenised_tenants=["acme"])

    assert beat(client, edge, edge.credential).status_code == 200

    edge.refresh_from_db()
    assert (edge.tokenisation_active, edge.tokenised_tenants) == (False, [])


def test_a_tenant_name_too_long_for_the_report_is_refused(client, edge):
    response = beat(client, edge, edge.credential, tokenised_tenants=["x" * 51])
    assert response.status_code == 400
    assert "tokenised_tenants" in response.content.decode()


# --- the drift reference in the desired state -------------------------------------------------


@pytest.fixture
def deployed(edge, acme):
    model = Model.objects.create(owner=acme, name="scorer")
    version = ModelVersion.objects.create(
        model=model, version=1, sha256=SHA, size_bytes=100, opset=17, status="graded"
    )
    Deployment.objects.create(
        version=version, strategy="all_at_once", steps=[100], state="completed"
    )
    return version


REFERENCE = {
    "minute": "2026-11-26T12:01:00+00:00",
    "summary": {"kind": "classes", "rows": 40, "classes": [30, 10], "values": {}},
}


def test_a_desired_version_carries_the_reference_the_console_captured(edge, deployed):
    assert desired_versions(edge)[0].drift_reference is None

    ModelVersion.objects.filter(pk=deployed.pk).update(drift_reference=REFERENCE)

    [desired] = desired_versions(edge)
    assert desired.drift_reference == protocol.DriftReference(
        kind="classes", rows=40, classes=[30, 10]
    )


def test_a_stored_reference_beyond_the_wires_bounds_is_left_out_not_an_error(edge, deployed):
    summary = {**REFERENCE["summary"], "classes": [1] * (protocol.DRIFT_MAX_CLASSES + 2)}
    ModelVersion.objects.filter(pk=deployed.pk).update(
        drift_reference={**REFERENCE, "summary": summary}
    )

    [desired] = desired_versions(edge)

    assert desired.drift_reference is None
