"""Tenant tokens end to end: the SDK gets a token from the live console, a real agent enrolled
with that console checks it offline, requires one on every inference request, and refuses
forged, expired and misplaced credentials."""

from __future__ import annotations

import base64
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from billing.models import ApiKey
from billing.signing import console_private_key
from fleet.models import EnrollmentToken
from fleet.policy_plane import publish_bundle
from inference import protocol
from inference.sdk import Outpost, OutpostError
from tests.inference.harness import (
    FakeConsole,
    doubler_model,
    running_agent,
    wait_until,
)

INPUT = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
KEY_KNOWN = "checking tenant tokens against the console key"


@pytest.fixture
def models(tmp_path):
    doubler_model(tmp_path / "models" / "doubler.onnx")
    return tmp_path / "models"


@pytest.fixture
def acme_key(acme):
    return ApiKey.issue(acme, "inference client")[1]


@pytest.fixture
def enrolled_agent(live_server, models, tmp_path, eu_west, nano, acme):
    """An agent enrolled with the live console, enforcing its policy bundle (acme in it)."""
    _, secret = EnrollmentToken.issue(node_name="fra-nano-1", region=eu_west, node_class=nano)
    publish_bundle(["test"])
    with running_agent(
        models,
        tmp_path / "state",
        "--console",
        live_server.url,
        "--enroll",
        secret,
        log_path=tmp_path / "agent.log",
    ) as agent:
        wait_until(lambda: KEY_KNOWN in agent.log(), what="the agent to know the console key")
        yield agent


def infer(agent, token: str | None = None, *, authorization: str | None = None):
    if token is not None:
        authorization = f"Bearer {token}"
    headers = {"Authorization": authorization} if authorization else {}
    return agent.post("/v2/models/doubler/infer", json=INPUT, headers=headers)


def console_token(*, issued_at: datetime, ttl_s: int, signer=None, tenant: str = "acme") -> str:
    """A token in the console's name: signed by its key, or forged by `signer`."""
    key = console_private_key()
    claims = protocol.TokenClaims(
        tenant=tenant,
        scopes=["infer"],
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
        token_id=uuid.uuid4().hex,
        key_id=protocol.key_id(key.public_key()),
    )
    if signer is None:
        return protocol.issue_token(key, claims)
    payload = protocol.canonical_json(claims.model_dump(mode="json"))
    return f"opt_{b64url(payload)}.{b64url(signer.sign(payload))}"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.django_db(transaction=True)
def test_an_enrolled_agent_serves_a_token_the_console_issued_and_nothing_without_one(
    live_server, enrolled_agent, acme_key
):
    with Outpost(live_server.url, acme_key) as outpost:
        answer = outpost.token()
    assert answer.tenant == "acme"

    for _ in range(3):
        response = infer(enrolled_agent, answer.token)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2, 4, 6, 8]

    # An unmodified OIP client passes the header too.
    client = triton.InferenceServerClient(enrolled_agent.address)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32), binary_data=False)
    result = client.infer("doubler", [tensor], headers={"Authorization": f"Bearer {answer.token}"})
    np.testing.assert_array_equal(result.as_numpy("y"), [[2, 2, 2, 2]])

    # No token, no tenant: an enrolled node serves tenants only.
    refused = infer(enrolled_agent)
    assert refused.status_code == 401
    assert refused.json()["error"].startswith("this node serves tenants only")


@pytest.mark.django_db(transaction=True)
def test_an_enrolled_agent_refuses_forged_expired_and_misplaced_credentials(
    enrolled_agent, acme_key
):
    now = datetime.now(UTC).replace(microsecond=0)
    forged = console_token(issued_at=now, ttl_s=600, signer=protocol.generate_private_key())
    expired = console_token(issued_at=now - timedelta(minutes=20), ttl_s=600)

    refusals = {
        "forged": infer(enrolled_agent, forged),
        "expired": infer(enrolled_agent, expired),
        "api key": infer(enrolled_agent, acme_key),
        "garbage": infer(enrolled_agent, "opt_garbage"),
        "basic": infer(enrolled_agent, authorization="Basic YWxpY2U6c2VjcmV0"),
    }

    for name, response in refusals.items():
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
        assert response.headers["connection"] == "close", name
    messages = {name: response.json()["error"] for name, response in refusals.items()}
    assert messages["forged"].startswith("bad signature: the token was altered or not signed")
    expired_at = (now - timedelta(minutes=10)).isoformat()
    assert messages["expired"].startswith(f"the token expired at {expired_at} (")
    assert messages["api key"].startswith("this is an API key, not a token")
    assert messages["garbage"] == "malformed token: expected opt_<claims>.<signature>"
    assert messages["basic"] == "the Authorization header must be 'Bearer <token>'"

    # Counted as client errors of the model, like every other 4xx; then serving goes on.
    metrics = enrolled_agent.metrics()
    assert 'outpost_inference_requests_total{model="doubler",outcome="client_error"} 5.0' in (
        metrics
    )
    good = console_token(issued_at=now, ttl_s=600)
    assert infer(enrolled_agent, good).status_code == 200


def test_a_token_presented_while_the_node_is_still_enrolling_is_answered_503(models, tmp_path):
    console = FakeConsole()
    enroll_now = threading.Event()

    def enroll(call):
        if not enroll_now.is_set():
            return 503, {"error": "the console is starting"}
        return console.enroll_ok(call)

    console.answers[protocol.ENROLL_PATH] = enroll
    token = console.token()
    try:
        with running_agent(
            models,
            tmp_path / "state",
            "--console",
            console.url,
            "--enroll",
            "enroll-token-1234",
            log_path=tmp_path / "agent.log",
            ready=False,
        ) as agent:
            wait_until(lambda: _loaded(agent), what="the model loaded")
            waiting = infer(agent, token)
            assert waiting.status_code == 503
            assert waiting.headers["retry-after"] == "5"
            assert "still enrolling" in waiting.json()["error"]
            assert infer(agent).status_code == 401  # without a token: never served
            assert agent.get("/v2/health/ready").status_code == 503

            enroll_now.set()
            wait_until(lambda: KEY_KNOWN in agent.log(), timeout=30, what="the enrollment")
            wait_until(
                lambda: agent.get("/v2/health/ready").status_code == 200,
                timeout=30,
                what="ready once the policy bundle arrived",
            )
            assert infer(agent, token).status_code == 200
    finally:
        console.close()


def _loaded(agent) -> bool:
    try:
        return agent.get("/v2/models/doubler/ready").status_code == 200
    except httpx.HTTPError:
        return False  # not listening yet


def test_a_standalone_agent_ignores_authorization_and_says_so(models, tmp_path):
    with running_agent(models, tmp_path / "state", log_path=tmp_path / "agent.log") as agent:
        assert infer(agent, "opt_not-checked-here").status_code == 200
        assert agent.log().count("answers inference requests from this machine only") == 1


# --- the SDK's side of the exchange -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_sdk_reuses_a_fresh_token_and_asks_again_near_expiry(live_server, acme_key):
    with Outpost(live_server.url, acme_key) as outpost:
        first = outpost.fresh_token()
        assert outpost.fresh_token() == first  # 600 s left: reused
        # Asking for more validity than the token has left gets a new one.
        renewed = outpost.fresh_token(min_validity_s=600)
        short = outpost.token(ttl_s=45)

    assert renewed != first
    now = datetime.now(UTC)
    key = console_private_key().public_key()
    assert protocol.verify_token(key, renewed, now).tenant == "acme"
    claims = protocol.verify_token(key, short.token, now)
    assert claims.expires_at - claims.issued_at == timedelta(seconds=45)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_reports_the_consoles_refusals(live_server, acme, acme_key):
    with Outpost(live_server.url, acme_key) as outpost:
        with pytest.raises(OutpostError) as too_long:
            outpost.token(ttl_s=3600)
    with Outpost(live_server.url, acme_key + "x") as outpost:
        with pytest.raises(OutpostError) as unknown:
            outpost.token()

    assert too_long.value.status == 400
    assert too_long.value.message == "ttl_s must be between 30 and 600 seconds, got 3600"
    assert unknown.value.status == 401
    assert unknown.value.message == "authentication required or credential not valid"
