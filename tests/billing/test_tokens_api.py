"""POST /api/v1/tokens: a tenant's API key buys a short-lived token that nodes verify offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing.models import ApiKey, Tenant
from billing.signing import console_private_key
from inference import protocol


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex")


@pytest.fixture
def acme_secret(acme):
    return ApiKey.issue(acme, "checkout service")[1]


def exchange(client, secret: str | None, body: dict | None = None):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    if body is None:  # as `curl -X POST` sends it: no body at all
        return client.generic("POST", protocol.TOKENS_PATH, b"", headers=headers)
    return client.post(protocol.TOKENS_PATH, body, content_type="application/json", headers=headers)


def console_key():
    return console_private_key().public_key()


def test_it_exchanges_an_api_key_for_a_token_that_verifies_with_the_console_key(
    client, acme, acme_secret
):
    before = datetime.now(UTC).replace(microsecond=0)
    response = exchange(client, acme_secret)

    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    answer = protocol.TokenResponse.model_validate_json(response.content)
    assert (answer.tenant, answer.scopes) == ("acme", ["infer"])
    assert answer.token.startswith("opt_")

    claims = protocol.verify_token(console_key(), answer.token, datetime.now(UTC))
    assert claims.tenant == "acme"
    assert claims.scopes == ["infer"]
    assert claims.key_id == protocol.key_id(console_key())
    assert claims.expires_at == answer.expires_at
    # Without a body the token lives OUTPOST_TOKEN_TTL_S (600 s by default).
    assert claims.expires_at - claims.issued_at == timedelta(seconds=600)
    assert before <= claims.issued_at <= datetime.now(UTC)


def test_each_exchange_issues_a_distinct_token(client, acme_secret):
    first = exchange(client, acme_secret).json()["token"]
    second = exchange(client, acme_secret).json()["token"]
    key = console_key()
    now = datetime.now(UTC)
    assert first != second
    assert (
        protocol.verify_token(key, first, now).token_id
        != protocol.verify_token(key, second, now).token_id
    )


def test_an_empty_json_object_asks_for_the_default_lifetime(client, acme_secret):
    response = exchange(client, acme_secret, {})

    assert response.status_code == 200, response.content
    claims = protocol.verify_token(console_key(), response.json()["token"], datetime.now(UTC))
    assert claims.expires_at - claims.issued_at == timedelta(seconds=600)


def test_it_issues_a_shorter_token_when_asked(client, acme_secret):
    response = exchange(client, acme_secret, {"ttl_s": 45})

    assert response.status_code == 200, response.content
    claims = protocol.verify_token(console_key(), response.json()["token"], datetime.now(UTC))
    assert claims.expires_at - claims.issued_at == timedelta(seconds=45)


def test_the_longest_lifetime_is_the_setting(client, acme_secret, settings):
    settings.OUTPOST_TOKEN_TTL_S = 120

    default = exchange(client, acme_secret).json()
    longest = exchange(client, acme_secret, {"ttl_s": 120})
    too_long = exchange(client, acme_secret, {"ttl_s": 121})

    claims = protocol.verify_token(console_key(), default["token"], datetime.now(UTC))
    assert claims.expires_at - claims.issued_at == timedelta(seconds=120)
    assert longest.status_code == 200
    assert too_long.status_code == 400
    assert too_long.json() == {"error": "ttl_s must be between 30 and 120 seconds, got 121"}


@pytest.mark.parametrize("ttl_s", [29, 0, -5, 601, 86_400])
def test_a_lifetime_out_of_range_is_refused_with_the_range(client, acme_secret, ttl_s):
    response = exchange(client, acme_secret, {"ttl_s": ttl_s})

    assert response.status_code == 400
    assert response.json() == {"error": f"ttl_s must be between 30 and 600 seconds, got {ttl_s}"}


def test_an_unknown_field_or_a_non_number_is_refused(client, acme_secret):
    typo = exchange(client, acme_secret, {"ttl": 60})
    word = exchange(client, acme_secret, {"ttl_s": "soon"})

    assert typo.status_code == 400
    assert "ttl" in typo.json()["error"]
    assert word.status_code == 400
    assert word.json()["error"].startswith("invalid request: ttl_s:")


def test_no_key_is_refused(client, acme):
    response = exchange(client, None)

    assert response.status_code == 401
    assert response.json() == {"error": "authentication required or credential not valid"}


def test_an_unknown_key_is_refused(client, acme_secret):
    assert exchange(client, acme_secret + "x").status_code == 401
    assert exchange(client, "opk_not-a-key-at-all").status_code == 401


def test_a_revoked_key_is_refused(client, acme):
    key, secret = ApiKey.issue(acme, "old")
    assert exchange(client, secret).status_code == 200
    key.revoke()

    response = exchange(client, secret)

    assert response.status_code == 401
    assert "error" in response.json()


def test_a_token_is_not_a_key_for_another_token(client, acme_secret):
    token = exchange(client, acme_secret).json()["token"]
    assert exchange(client, token).status_code == 401


def test_an_operator_session_does_not_get_a_token(operator):
    # Tokens name a tenant; an operator is none.
    assert exchange(operator, None).status_code == 401


def test_the_token_names_the_keys_own_tenant_only(client, acme, globex):
    acme_key = ApiKey.issue(acme, "acme prod")[1]
    globex_key = ApiKey.issue(globex, "globex prod")[1]
    now = datetime.now(UTC)

    acme_token = exchange(client, acme_key).json()
    globex_token = exchange(client, globex_key).json()

    assert acme_token["tenant"] == "acme"
    assert globex_token["tenant"] == "globex"
    assert protocol.verify_token(console_key(), acme_token["token"], now).tenant == "acme"
    assert protocol.verify_token(console_key(), globex_token["token"], now).tenant == "globex"


def test_the_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"][protocol.TOKENS_PATH]["post"]
    assert "TokenResponse" in str(operation["responses"]["200"])
    assert "TokenRequest" in str(operation["requestBody"])
