"""The traffic split between a model's versions (inference/routing.py): pure, so exhaustive."""

from __future__ import annotations

from collections import Counter

import pytest

from inference.routing import (
    SplitTable,
    choose_version,
    normalised_shares,
    stable_fraction,
    version_sort_key,
)

SESSIONS = [f"session-{i}" for i in range(10_000)]


def split(ready: list[tuple[str, float]], keys=SESSIONS) -> dict[str, float]:
    table = SplitTable.build(ready)
    counts = Counter(table.pick(key) for key in keys)
    return {version: count / len(keys) for version, count in counts.items()}


def test_it_sends_a_session_to_the_same_version_every_time():
    table = SplitTable.build([("1", 0.5), ("2", 0.5)])
    for key in SESSIONS[:500]:
        first = table.pick(key)
        assert all(table.pick(key) == first for _ in range(5))


def test_the_same_session_lands_on_the_same_version_whatever_order_the_console_lists():
    forward = SplitTable.build([("1", 0.3), ("2", 0.7)])
    backward = SplitTable.build([("2", 0.7), ("1", 0.3)])
    assert forward == backward
    assert all(forward.pick(k) == backward.pick(k) for k in SESSIONS[:1000])


def test_the_hash_is_stable_across_processes():
    # blake2b, not Python's salted hash(): these values must never change between releases,
    # or every session would move when nodes upgrade.
    assert stable_fraction("alice") == pytest.approx(stable_fraction("alice"))
    assert 0 <= stable_fraction("") < 1
    assert stable_fraction("alice") != stable_fraction("bob")


@pytest.mark.parametrize(
    "shares",
    [
        [("1", 0.5), ("2", 0.5)],
        [("1", 0.9), ("2", 0.1)],
        [("1", 0.95), ("2", 0.05)],
        [("1", 0.2), ("2", 0.3), ("3", 0.5)],
        [("1", 0.01), ("2", 0.99)],
    ],
)
def test_over_many_sessions_the_split_matches_the_shares_within_two_points(shares):
    observed = split(shares)
    for version, share in shares:
        assert observed.get(version, 0) == pytest.approx(share, abs=0.02), (version, observed)


def test_a_version_with_share_zero_gets_no_unversioned_traffic():
    observed = split([("1", 1.0), ("2", 0.0)])
    assert observed == {"1": 1.0}


def test_one_version_takes_everything_whatever_its_share():
    assert split([("7", 0.25)]) == {"7": 1.0}
    assert SplitTable.build([("7", 0.25)]).pick(None) == "7"


def test_shares_are_renormalised_over_the_ready_versions():
    # Console says 1: 0.6, 2: 0.3, 3: 0.1 but version 3 is not ready: 1 and 2 split 2:1.
    observed = split([("1", 0.6), ("2", 0.3)])
    assert observed["1"] == pytest.approx(2 / 3, abs=0.02)
    assert observed["2"] == pytest.approx(1 / 3, abs=0.02)
    assert normalised_shares([("1", 0.6), ("2", 0.3)]) == [
        ("1", pytest.approx(2 / 3)),
        ("2", pytest.approx(1 / 3)),
    ]


def test_when_every_ready_version_has_share_zero_they_split_equally():
    # The only version with a share is still loading: serving beats a 503.
    observed = split([("1", 0.0), ("2", 0.0)])
    assert observed["1"] == pytest.approx(0.5, abs=0.02)
    assert observed["2"] == pytest.approx(0.5, abs=0.02)


def test_no_ready_version_picks_nothing():
    assert SplitTable.build([]).pick("alice") is None
    assert choose_version([], "alice") is None


def test_without_a_key_it_draws_at_random():
    table = SplitTable.build([("1", 0.5), ("2", 0.5)])
    assert table.pick(None, rand=lambda: 0.1) == "1"
    assert table.pick(None, rand=lambda: 0.9) == "2"
    assert table.pick(None, rand=lambda: 0.999999999) == "2"


def test_the_bounds_always_end_at_one_despite_rounding():
    table = SplitTable.build([(str(i), 0.1) for i in range(10)])
    assert table.bounds[-1] == 1.0
    assert table.pick(None, rand=lambda: 0.9999999999999999) == "9"


def test_adding_a_small_canary_moves_only_a_small_share_of_sessions():
    before = SplitTable.build([("1", 1.0)])
    after = SplitTable.build([("1", 0.9), ("2", 0.1)])
    moved = sum(before.pick(k) != after.pick(k) for k in SESSIONS) / len(SESSIONS)
    assert moved == pytest.approx(0.1, abs=0.02)


def test_versions_sort_numerically():
    assert sorted(["10", "2", "b", "1", "a"], key=version_sort_key) == ["1", "2", "10", "a", "b"]
