"""The node's bundle store (inference/bundle_store.py): what it activates, what it refuses,
what survives a restart, and how old its policy is."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from inference import protocol
from inference.bundle_store import BUNDLE_FILE, BundleStore
from inference.protocol import BundleError, PolicyBundle, TenantRules, sign_bundle

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
KEY = protocol.generate_private_key()
NEXT_KEY = protocol.generate_private_key()


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def bundle(revision, *, issued=NOW, ttl=timedelta(hours=1), **fields):
    return PolicyBundle(
        revision=revision,
        issued_at=issued,
        expires_at=issued + ttl,
        tenants=[
            TenantRules(
                slug="acme",
                privacy="any",
                fallback="regional",
                quality="best_effort",
                currency="EUR",
                on_budget_exhausted="alert",
            )
        ],
        **fields,
    )


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = BundleStore(tmp_path, clock=clock)
    store.trust(KEY.public_key())
    return store


def test_it_activates_a_signed_bundle_and_keeps_it_on_disk(store, tmp_path):
    assert store.view is None and store.revision is None

    assert store.offer(sign_bundle(KEY, bundle(3))) is True

    assert store.revision == 3
    assert store.etag == '"3"'
    assert "acme" in store.view.tenants
    saved = json.loads((tmp_path / BUNDLE_FILE).read_text())
    assert saved["bundle"]["revision"] == 3
    assert (tmp_path / BUNDLE_FILE).stat().st_mode & 0o077 == 0


def test_a_restarted_node_enforces_the_bundle_it_had(store, tmp_path, clock):
    store.offer(sign_bundle(KEY, bundle(3)))

    restarted = BundleStore(tmp_path, clock=clock)
    restarted.trust(KEY.public_key())

    assert restarted.load() is True
    assert restarted.revision == 3
    assert restarted.view.revision == 3


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (
            lambda: sign_bundle(KEY, bundle(4)).model_copy(update={"bundle": bundle(5)}),
            "does not verify",
        ),
        (lambda: sign_bundle(protocol.generate_private_key(), bundle(4)), "does not trust"),
        (lambda: sign_bundle(KEY, bundle(4, issued=NOW - timedelta(hours=2))), "expired"),
        (lambda: sign_bundle(KEY, bundle(2)), "older than revision 3"),
    ],
    ids=["tampered", "foreign key", "expired", "lower revision"],
)
def test_it_refuses_a_bad_bundle_and_keeps_serving_on_its_last_good_one(store, tmp_path, make, why):
    good = sign_bundle(KEY, bundle(3))
    store.offer(good)

    with pytest.raises(BundleError, match=why):
        store.offer(make())

    assert store.signed == good
    assert why in store.problem
    assert json.loads((tmp_path / BUNDLE_FILE).read_text())["bundle"]["revision"] == 3
    # A newer good bundle clears the problem.
    store.offer(sign_bundle(KEY, bundle(6)))
    assert store.problem is None


def test_the_same_revision_again_is_no_change_but_other_content_under_it_is_refused(store):
    signed = sign_bundle(KEY, bundle(3))
    store.offer(signed)

    assert store.offer(signed) is False
    other = sign_bundle(KEY, bundle(3, revoked_tokens=["t-1"]))
    with pytest.raises(BundleError, match="never replaced by another of the same number"):
        store.offer(other)
    assert store.signed == signed


def test_a_bundle_announces_the_next_key_and_bundles_signed_with_it_are_then_accepted(store):
    foreign_before = sign_bundle(NEXT_KEY, bundle(4))
    with pytest.raises(BundleError, match="does not trust"):
        store.offer(foreign_before)

    announcing = bundle(
        4,
        trusted_keys=[
            protocol.public_key_to_b64(KEY.public_key()),
            protocol.public_key_to_b64(NEXT_KEY.public_key()),
        ],
    )
    store.offer(sign_bundle(KEY, announcing))

    assert store.offer(sign_bundle(NEXT_KEY, bundle(5))) is True
    assert store.signed.key_id == protocol.key_id(NEXT_KEY.public_key())


def test_a_saved_bundle_that_expired_while_the_node_was_down_is_not_enforced(
    store, tmp_path, clock
):
    store.offer(sign_bundle(KEY, bundle(3)))
    clock.now += 2 * 3600

    restarted = BundleStore(tmp_path, clock=clock)
    restarted.trust(KEY.public_key())

    assert restarted.load() is False
    assert restarted.view is None
    assert "expired" in restarted.problem
    assert (tmp_path / BUNDLE_FILE).exists()  # left for inspection


def test_a_corrupt_saved_bundle_is_reported_not_fatal(tmp_path, clock):
    (tmp_path / BUNDLE_FILE).write_text("{not json")
    store = BundleStore(tmp_path, clock=clock)
    store.trust(KEY.public_key())

    assert store.load() is False
    assert "is not a signed bundle" in store.problem


def test_its_age_counts_from_the_last_time_the_console_confirmed_it(store, clock):
    store.offer(sign_bundle(KEY, bundle(3)))
    clock.now += 100
    assert store.age_s() == pytest.approx(100)

    store.confirm(3)
    assert store.age_s() == 0
    clock.now += 40
    store.confirm(4)  # the console has a newer one: this is no confirmation
    assert store.age_s() == pytest.approx(40)
    assert not store.expired()
    clock.now += 3600
    assert store.expired()


def test_a_reloaded_bundle_ages_from_its_issue_until_the_console_confirms_it(
    store, tmp_path, clock
):
    store.offer(sign_bundle(KEY, bundle(3)))
    clock.now += 600
    restarted = BundleStore(tmp_path, clock=clock)
    restarted.trust(KEY.public_key())
    restarted.load()

    assert restarted.age_s() == pytest.approx(600)


def test_activation_hooks_see_each_new_bundle(tmp_path, clock):
    seen = []
    store = BundleStore(tmp_path, clock=clock, on_activate=[lambda b: seen.append(b.revision)])
    store.trust(KEY.public_key())
    store.offer(sign_bundle(KEY, bundle(1)))
    store.offer(sign_bundle(KEY, bundle(1)))
    store.offer(sign_bundle(KEY, bundle(2, revoked_tokens=["t-9"])))

    assert seen == [1, 2]


def test_a_held_store_takes_its_first_bundle_and_then_refuses_newer_ones(tmp_path, clock):
    held = BundleStore(tmp_path, clock=clock, hold=True)
    held.trust(KEY.public_key())
    assert held.offer(sign_bundle(KEY, bundle(3))) is True, "a node with none takes one"
    with pytest.raises(BundleError, match=r"held at revision 3 .*--hold-bundle.*revision 4"):
        held.offer(sign_bundle(KEY, bundle(4)))
    assert held.revision == 3
    assert "--hold-bundle" in held.problem
    assert held.offer(sign_bundle(KEY, bundle(3))) is False, "the same bundle is still confirmed"
