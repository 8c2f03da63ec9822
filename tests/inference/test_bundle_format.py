"""Signed policy bundles (inference/protocol.py): what a node activates and what it refuses."""

from datetime import UTC, datetime, timedelta

import pytest

from inference import protocol
from inference.protocol import BundleError, PolicyBundle, TenantRules, sign_bundle, verify_bundle

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def bundle(revision=5, **fields):
    return PolicyBundle(
        revision=revision,
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        tenants=[
            TenantRules(
                slug="acme",
                privacy="in_region",
                fallback="regional",
                quality="high",
                currency="EUR",
                max_spend_per_session="0.50",
                on_budget_exhausted="block",
            )
        ],
        **fields,
    )


KEY = protocol.generate_private_key()


def test_a_signed_bundle_verifies_and_survives_the_wire():
    signed = sign_bundle(KEY, bundle())
    received = protocol.SignedBundle.model_validate_json(signed.model_dump_json())
    assert verify_bundle(received, KEY.public_key(), now=NOW) == bundle()
    assert received.key_id == protocol.key_id(KEY.public_key())


def test_a_tampered_bundle_is_refused():
    signed = sign_bundle(KEY, bundle())
    tampered = signed.model_copy(update={"bundle": bundle().model_copy(update={"revision": 6})})
    with pytest.raises(BundleError, match="does not verify"):
        verify_bundle(tampered, KEY.public_key(), now=NOW)


def test_a_bundle_from_a_foreign_key_is_refused_and_a_trusted_next_key_accepted():
    foreign = protocol.generate_private_key()
    with pytest.raises(BundleError, match="does not trust"):
        verify_bundle(sign_bundle(foreign, bundle()), KEY.public_key(), now=NOW)
    # Rotation: a node that trusts the next key ahead accepts bundles it signs.
    trusted = {protocol.key_id(k.public_key()): k.public_key() for k in (KEY, foreign)}
    assert verify_bundle(sign_bundle(foreign, bundle()), trusted, now=NOW).revision == 5


def test_an_expired_or_older_bundle_is_refused():
    signed = sign_bundle(KEY, bundle())
    with pytest.raises(BundleError, match="expired"):
        verify_bundle(signed, KEY.public_key(), now=NOW + timedelta(hours=2))
    with pytest.raises(BundleError, match="older than revision 6"):
        verify_bundle(signed, KEY.public_key(), now=NOW, current_revision=6)
    assert verify_bundle(signed, KEY.public_key(), now=NOW, current_revision=5).revision == 5


def test_money_travels_as_decimal_strings_never_floats():
    with pytest.raises(ValueError):
        TenantRules(
            slug="a",
            privacy="any",
            fallback="regional",
            quality="high",
            currency="EUR",
            max_spend_per_session="-1",
            on_budget_exhausted="alert",
        )
    document = sign_bundle(KEY, bundle()).model_dump(mode="json")
    assert document["bundle"]["tenants"][0]["max_spend_per_session"] == "0.50"
