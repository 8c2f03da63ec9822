"""Ephemeral tenant tokens: the format (inference/protocol.py) and the node's verifier with its
cache (inference/tokens.py). Pure: real Ed25519 keys, no network, a clock the test moves."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from inference import protocol
from inference.protocol import TokenClaims, TokenError, issue_token, verify_token
from inference.tokens import InsufficientScope, NotReady, TokenVerifier, rejection

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def console_key():
    return protocol.generate_private_key()


@pytest.fixture(scope="module")
def other_key():
    return protocol.generate_private_key()


def claims_for(key, *, tenant="acme", issued_at=NOW, ttl_s=600, scopes=("infer",), **fields):
    return TokenClaims(
        tenant=tenant,
        scopes=list(scopes),
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
        token_id=fields.pop("token_id", "tok-0001"),
        key_id=protocol.key_id(key.public_key()),
        **fields,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assemble(payload: bytes, signature: bytes) -> str:
    """A token from raw parts, as a forger would write one."""
    return f"opt_{b64url(payload)}.{b64url(signature)}"


def signed(key, document: dict) -> str:
    """Any document, signed by `key` as the console signs claims."""
    payload = protocol.canonical_json(document)
    return assemble(payload, key.sign(payload))


def refusal(keys, token: str, now: datetime = NOW) -> str:
    with pytest.raises(TokenError) as caught:
        verify_token(keys, token, now)
    return caught.value.message


# --- the format ---------------------------------------------------------------------------------


def test_a_token_round_trips_to_its_claims(console_key):
    claims = claims_for(console_key)
    token = issue_token(console_key, claims)

    assert token.startswith("opt_")
    assert "=" not in token and "+" not in token and "/" not in token
    assert verify_token(console_key.public_key(), token, NOW) == claims
    by_kid = {protocol.key_id(console_key.public_key()): console_key.public_key()}
    assert verify_token(by_kid, token, NOW + timedelta(seconds=599)) == claims


def test_the_claims_are_canonical_json_anyone_can_read(console_key):
    token = issue_token(console_key, claims_for(console_key))
    encoded = token.removeprefix("opt_").split(".")[0]
    payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))

    document = orjson.loads(payload)
    assert payload == protocol.canonical_json(document)
    assert document["tenant"] == "acme"
    assert document["expires_at"] == "2026-03-01T12:10:00Z"


def test_during_a_key_rotation_both_keys_are_trusted(console_key, other_key):
    keys = {protocol.key_id(k.public_key()): k.public_key() for k in (console_key, other_key)}
    old = issue_token(console_key, claims_for(console_key, tenant="acme"))
    new = issue_token(other_key, claims_for(other_key, tenant="globex"))

    assert verify_token(keys, old, NOW).tenant == "acme"
    assert verify_token(keys, new, NOW).tenant == "globex"


def test_it_refuses_to_issue_claims_that_name_another_key(console_key, other_key):
    with pytest.raises(ValueError, match="the claims name key"):
        issue_token(console_key, claims_for(other_key))


def test_it_refuses_to_issue_a_token_that_expires_before_it_is_issued(console_key):
    with pytest.raises(ValueError, match="expire after it is issued"):
        issue_token(console_key, claims_for(console_key, ttl_s=0))


def test_altered_claims_break_the_signature(console_key):
    token = issue_token(console_key, claims_for(console_key, tenant="acme"))
    encoded, signature = token.removeprefix("opt_").split(".")
    payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    altered = payload.replace(b'"acme"', b'"evil"')
    assert altered != payload

    message = refusal(console_key.public_key(), f"opt_{b64url(altered)}.{signature}")
    assert message.startswith("bad signature: the token was altered or not signed")


def test_an_altered_signature_is_refused(console_key):
    token = issue_token(console_key, claims_for(console_key))
    encoded, signature = token.removeprefix("opt_").split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01

    message = refusal(console_key.public_key(), f"opt_{encoded}.{b64url(bytes(raw))}")
    assert message.startswith("bad signature")


def test_a_token_signed_by_another_key_under_the_consoles_key_id_is_refused(console_key, other_key):
    # The forger names the console's key but signs with its own.
    forged = signed(other_key, claims_for(console_key).model_dump(mode="json"))

    message = refusal(console_key.public_key(), forged)
    kid = protocol.key_id(console_key.public_key())
    assert message == (
        f"bad signature: the token was altered or not signed by the console's key {kid}"
    )


def test_a_token_of_an_unknown_key_is_refused_with_the_keys_trusted(console_key, other_key):
    token = issue_token(other_key, claims_for(other_key))
    trusted = protocol.key_id(console_key.public_key())

    message = refusal(console_key.public_key(), token)
    assert message == (
        f"the token is signed by key {protocol.key_id(other_key.public_key())}, which this "
        f"node does not know (it trusts: {trusted})"
    )
    assert "(it trusts: none yet)" in refusal({}, token)


def test_an_expired_token_is_refused_saying_when_it_expired(console_key):
    token = issue_token(console_key, claims_for(console_key, ttl_s=600))

    at_expiry = refusal(console_key.public_key(), token, NOW + timedelta(seconds=600))
    later = refusal(console_key.public_key(), token, NOW + timedelta(seconds=725))

    assert at_expiry == (
        "the token expired at 2026-03-01T12:10:00+00:00 (0 s ago); "
        "get a new one from /api/v1/tokens"
    )
    assert "expired at 2026-03-01T12:10:00+00:00 (125 s ago)" in later


def test_a_token_from_the_near_future_is_accepted_within_the_clock_skew(console_key):
    token = issue_token(console_key, claims_for(console_key, issued_at=NOW + timedelta(seconds=30)))
    assert verify_token(console_key.public_key(), token, NOW).tenant == "acme"


def test_a_token_from_further_in_the_future_is_not_valid_yet(console_key):
    token = issue_token(console_key, claims_for(console_key, issued_at=NOW + timedelta(seconds=90)))

    message = refusal(console_key.public_key(), token)
    assert message == (
        "the token is not valid yet: issued at 2026-03-01T12:01:30+00:00, 90 s ahead of this "
        "node's clock (more than the 30 s allowed for clock skew); check the clocks of the "
        "console and the node"
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "malformed token: a token starts with 'opt_'"),
        ("Bearer opt_abc.def", "malformed token: a token starts with 'opt_'"),
        ("opk_abcdefgh", "malformed token: a token starts with 'opt_'"),
        ("opt_abcdef", "malformed token: expected opt_<claims>.<signature>"),
        ("opt_.abcdef", "malformed token: expected opt_<claims>.<signature>"),
        ("opt_abcdef.", "malformed token: expected opt_<claims>.<signature>"),
        ("opt_e30.abc.def", "malformed token: the signature is not base64url"),
        ("opt_e30=.AAAA", "malformed token: the claims are not base64url"),
        ("opt_e3+.AAAA", "malformed token: the claims are not base64url"),
        ("opt_é30.AAAA", "malformed token: the claims are not base64url"),
        ("opt_e30.AA!A", "malformed token: the signature is not base64url"),
        ("opt_e30.AAAA", "malformed token: the signature is not 64 bytes (Ed25519)"),
        ("opt_" + "A" * 5000 + ".AAAA", "malformed token: longer than 4096 characters"),
    ],
)
def test_a_malformed_token_is_refused_saying_what_is_wrong(console_key, token, message):
    assert refusal(console_key.public_key(), token) == message


def test_claims_that_are_not_json_are_refused(console_key):
    token = assemble(b"tenant=acme", console_key.sign(b"tenant=acme"))
    assert refusal(console_key.public_key(), token) == "malformed token: the claims are not JSON"


def test_claims_that_are_not_an_object_are_refused(console_key):
    token = signed(console_key, ["acme"])  # type: ignore[arg-type]
    assert refusal(console_key.public_key(), token) == (
        "malformed token: the claims are not a JSON object"
    )


def test_claims_with_missing_or_wrong_fields_are_refused_naming_them(console_key):
    document = claims_for(console_key).model_dump(mode="json")
    del document["tenant"]
    document["expires_at"] = "tomorrow"

    message = refusal(console_key.public_key(), signed(console_key, document))
    assert message.startswith("malformed token: ")
    assert "tenant: Field required" in message
    assert "expires_at: Input should be a valid datetime" in message


def test_claims_with_an_unknown_field_are_refused(console_key):
    document = {**claims_for(console_key).model_dump(mode="json"), "admin": True}
    message = refusal(console_key.public_key(), signed(console_key, document))
    assert message == "malformed token: admin: Extra inputs are not permitted"


# --- the node's verifier -------------------------------------------------------------------


class Clock:
    """time.time() as the test says."""

    def __init__(self, at: datetime = NOW) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


def headers(token: str, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"node"), *extra, (b"authorization", f"Bearer {token}".encode())]


def token_for(key, tenant="acme", **fields) -> str:
    return issue_token(key, claims_for(key, tenant=tenant, **fields))


def test_without_an_authorization_header_there_is_no_tenant(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    assert verifier.tenant([(b"host", b"node"), (b"x-session-id", b"s1")]) is None
    assert verifier.tenant([]) is None
    assert verifier.verifications == 0


def test_it_names_the_tenant_and_verifies_each_token_once(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    acme = token_for(console_key, "acme", token_id="tok-acme")
    globex = token_for(console_key, "globex", token_id="tok-globex")

    assert verifier.tenant(headers(acme)) == "acme"
    assert verifier.verifications == 1
    for _ in range(100):
        assert verifier.tenant(headers(acme)) == "acme"
    assert verifier.verifications == 1

    assert verifier.tenant(headers(globex)) == "globex"
    assert verifier.tenant(headers(globex)) == "globex"
    assert verifier.verifications == 2
    assert len(verifier) == 2


def test_the_bearer_scheme_is_case_insensitive(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    token = token_for(console_key)
    assert verifier.tenant([(b"authorization", f"bearer {token}".encode())]) == "acme"


def test_a_cached_token_still_expires(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    token = token_for(console_key, ttl_s=60)
    assert verifier.tenant(headers(token)) == "acme"

    clock.advance(59.5)
    assert verifier.tenant(headers(token)) == "acme"
    clock.advance(0.5)
    with pytest.raises(TokenError) as caught:
        verifier.tenant(headers(token))

    assert caught.value.message == (
        "the token expired at 2026-03-01T12:01:00+00:00 (0 s ago); "
        "get a new one from /api/v1/tokens"
    )
    assert len(verifier) == 0  # dropped from the cache
    with pytest.raises(TokenError, match="expired at"):
        verifier.tenant(headers(token))
    assert verifier.verifications == 2  # the second refusal verified again, then refused


def test_the_cache_keeps_the_most_recently_used_tokens(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], max_entries=2, clock=clock)
    first, second, third = (token_for(console_key, token_id=f"tok-000{i}") for i in (1, 2, 3))

    verifier.tenant(headers(first))
    verifier.tenant(headers(second))
    verifier.tenant(headers(first))  # now the most recent: `second` goes first
    verifier.tenant(headers(third))
    assert (len(verifier), verifier.verifications) == (2, 3)

    verifier.tenant(headers(first))
    verifier.tenant(headers(third))
    assert verifier.verifications == 3  # both still cached
    verifier.tenant(headers(second))
    assert verifier.verifications == 4  # evicted, so verified again
    assert len(verifier) == 2


def test_a_refused_token_is_not_cached(console_key, other_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    forged = signed(other_key, claims_for(console_key).model_dump(mode="json"))

    for _ in range(2):
        with pytest.raises(TokenError, match="bad signature"):
            verifier.tenant(headers(forged))
    assert len(verifier) == 0


def test_before_it_knows_the_console_key_a_token_is_answered_not_ready(console_key, clock):
    verifier = TokenVerifier(clock=clock)
    token = token_for(console_key)
    assert not verifier.ready
    assert verifier.tenant([(b"host", b"node")]) is None  # no token: nothing to check

    with pytest.raises(NotReady) as caught:
        verifier.tenant(headers(token))
    assert "still enrolling" in caught.value.message
    assert rejection(caught.value) == (503, ((b"retry-after", b"5"),))

    assert verifier.trust(console_key.public_key()) == protocol.key_id(console_key.public_key())
    assert verifier.ready
    assert verifier.tenant(headers(token)) == "acme"


def test_an_authorization_header_that_is_not_a_bearer_token_is_refused(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    for value in (b"Basic YWxpY2U6c2VjcmV0", b"Bearer", b"Bearer   ", b"opt_abc.def"):
        with pytest.raises(TokenError) as caught:
            verifier.tenant([(b"authorization", value)])
        assert caught.value.message == "the Authorization header must be 'Bearer <token>'"
        assert rejection(caught.value) == (
            401,
            ((b"www-authenticate", b'Bearer error="invalid_token"'),),
        )


def test_an_api_key_sent_to_a_node_is_refused_with_what_to_do(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    with pytest.raises(TokenError) as caught:
        verifier.tenant([(b"authorization", b"Bearer opk_abcdefghijkl")])
    assert caught.value.message == (
        "this is an API key, not a token: exchange it for one at the console's "
        "/api/v1/tokens and send the token; API keys never go to nodes"
    )


def test_a_token_without_the_infer_scope_is_forbidden(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    token = token_for(console_key, scopes=("usage:read",))

    with pytest.raises(InsufficientScope) as caught:
        verifier.tenant(headers(token))

    assert caught.value.message == "the token allows usage:read, not infer"
    assert rejection(caught.value) == (
        403,
        ((b"www-authenticate", b'Bearer error="insufficient_scope", scope="infer"'),),
    )
    assert len(verifier) == 0


def test_a_bad_token_is_refused_with_an_invalid_token_challenge(console_key, clock):
    verifier = TokenVerifier([console_key.public_key()], clock=clock)
    with pytest.raises(TokenError) as caught:
        verifier.tenant(headers("opt_nonsense"))
    status, extra = rejection(caught.value)
    assert status == 401
    assert extra == ((b"www-authenticate", b'Bearer error="invalid_token"'),)


def test_the_cache_needs_room_for_one_token():
    with pytest.raises(ValueError, match="max_entries"):
        TokenVerifier(max_entries=0)
