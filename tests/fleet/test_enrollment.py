from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import EnrollmentToken, Node
from inference import protocol


def enroll_body(secret, **overrides):
    body = {
        "token": secret,
        "hostname": "edge-box-1",
        "endpoint": "http://10.0.0.5:8001",
        "agent_version": "0.1.0",
    }
    body.update(overrides)
    return body


@pytest.fixture
def token(eu_west, nano, alice):
    return EnrollmentToken.issue(
        node_name="fra-nano-1", region=eu_west, node_class=nano, created_by=alice
    )


def test_it_enrolls_a_node_with_a_one_time_token(client, token):
    _, secret = token
    response = client.post(
        "/api/v1/nodes/enroll", enroll_body(secret), content_type="application/json"
    )

    assert response.status_code == 201
    reply = protocol.EnrollResponse.model_validate(response.json())
    node = Node.objects.get(uid=reply.node_uid)
    assert (node.name, node.region.code, node.node_class.name) == ("fra-nano-1", "eu-west", "nano")
    assert node.endpoint == "http://10.0.0.5:8001"
    assert Node.authenticate(reply.credential) == node
    assert reply.credential not in node.credential_hash  # stored hashed
    protocol.public_key_from_b64(reply.console_public_key)  # a real Ed25519 key


def test_it_refuses_a_token_used_twice(client, token):
    _, secret = token
    client.post("/api/v1/nodes/enroll", enroll_body(secret), content_type="application/json")
    again = client.post(
        "/api/v1/nodes/enroll", enroll_body(secret), content_type="application/json"
    )

    assert again.status_code == 400
    assert again.json() == {"error": "this enrollment token was already used"}
    assert Node.objects.count() == 1


def test_it_refuses_an_expired_token(client, token):
    row, secret = token
    EnrollmentToken.objects.filter(pk=row.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = client.post(
        "/api/v1/nodes/enroll", enroll_body(secret), content_type="application/json"
    )

    assert response.status_code == 400
    assert "expired" in response.json()["error"]
    assert not Node.objects.exists()


def test_it_refuses_an_unknown_token(client, db):
    response = client.post(
        "/api/v1/nodes/enroll", enroll_body("ope_not-a-real-token"), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json() == {"error": "unknown enrollment token"}


def test_it_says_which_field_is_wrong(client, token):
    _, secret = token
    response = client.post(
        "/api/v1/nodes/enroll", enroll_body(secret, hostname=""), content_type="application/json"
    )
    assert response.status_code == 400
    assert "hostname" in response.json()["error"]


def test_it_answers_malformed_json_with_400(client, db):
    response = client.post("/api/v1/nodes/enroll", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json()


def test_operators_create_tokens_through_the_api(client, alice, eu_west, nano):
    client.force_login(alice)
    response = client.post(
        "/api/v1/fleet/enrollment-tokens",
        {"node_name": "fra-nano-9", "region": "eu-west", "node_class": "nano"},
        content_type="application/json",
    )
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("ope_")
    assert f"--enroll {body['token']}" in body["command"]
    assert EnrollmentToken.objects.usable().filter(node_name="fra-nano-9").exists()


def test_token_creation_names_an_unknown_region(client, alice, nano):
    client.force_login(alice)
    response = client.post(
        "/api/v1/fleet/enrollment-tokens",
        {"node_name": "x", "region": "mars-1", "node_class": "nano"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json() == {"error": "region: There is no region “mars-1”."}


def test_tenant_members_cannot_create_tokens(client, carol, eu_west, nano):
    client.force_login(carol)
    response = client.post(
        "/api/v1/fleet/enrollment-tokens",
        {"node_name": "x", "region": "eu-west", "node_class": "nano"},
        content_type="application/json",
    )
    assert response.status_code == 401
    assert not EnrollmentToken.objects.exists()
