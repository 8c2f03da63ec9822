"""Requests per minute from heartbeat counters (fleet.rates): plain data, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.rates import (
    counter_increase,
    floor_minute,
    last_complete_minute_end,
    minutes_between,
    observed,
    requests_per_minute,
    total,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def counts(series) -> list[float]:
    return [round(count, 6) for _, count in series]


# --- the building blocks ---------------------------------------------------------------------


def test_floor_minute_drops_seconds_and_keeps_the_time_zone():
    assert floor_minute(at(3, 59.9)) == at(3)
    assert floor_minute(at(3)).tzinfo is UTC


def test_minutes_between_is_half_open_and_starts_on_a_whole_minute():
    assert minutes_between(at(0, 30), at(3)) == [at(0), at(1), at(2)]
    assert minutes_between(at(0), at(0)) == []


def test_the_last_complete_minute_waits_for_its_closing_heartbeat():
    assert last_complete_minute_end(at(5, 3), timedelta(seconds=5)) == at(4)
    assert last_complete_minute_end(at(5, 6), timedelta(seconds=5)) == at(5)


def test_a_counter_that_grows_increases_by_the_difference():
    assert counter_increase(100, 130) == 30
    assert counter_increase(100, 100) == 0


def test_a_counter_that_drops_was_reset_and_counts_from_zero():
    assert counter_increase(5_000, 40) == 40
    assert counter_increase(5_000, 0) == 0


# --- one node -------------------------------------------------------------------------------


def test_it_counts_the_increase_within_each_minute():
    samples = [("a", at(0), 0), ("a", at(1), 60), ("a", at(2), 180)]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [60, 120]


def test_it_spreads_an_interval_over_the_minutes_it_spans():
    # 100 requests between 12:00:30 and 12:01:20: 30 s in the first minute, 20 s in the second.
    samples = [("a", at(0, 30), 0), ("a", at(1, 20), 100)]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [60, 40]


def test_it_handles_a_counter_reset_as_a_restart():
    samples = [("a", at(0), 0), ("a", at(1), 500), ("a", at(2), 20), ("a", at(3), 50)]
    assert counts(requests_per_minute(samples, at(0), at(3))) == [500, 20, 30]


def test_a_reset_to_zero_counts_nothing_rather_than_a_negative_number():
    samples = [("a", at(0), 0), ("a", at(1), 900), ("a", at(2), 0)]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [900, 0]


def test_it_averages_over_a_gap_instead_of_spiking_when_the_node_comes_back():
    # The node was silent for four minutes, then reported 400 more requests.
    samples = [("a", at(0), 1_000), ("a", at(4), 1_400)]
    assert counts(requests_per_minute(samples, at(0), at(4))) == [100, 100, 100, 100]


def test_minutes_without_any_reading_count_zero():
    samples = [("a", at(0), 0), ("a", at(1), 10)]
    assert counts(requests_per_minute(samples, at(0), at(4))) == [10, 0, 0, 0]


def test_a_single_reading_anchors_the_counter_but_counts_nothing():
    assert counts(requests_per_minute([("a", at(1), 7_000)], at(0), at(3))) == [0, 0, 0]


def test_it_needs_no_particular_order():
    samples = [("a", at(2), 180), ("a", at(0), 0), ("a", at(1), 60)]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [60, 120]


def test_two_readings_at_the_same_instant_belong_to_that_minute():
    samples = [("a", at(1, 10), 0), ("a", at(1, 10), 5)]
    assert counts(requests_per_minute(samples, at(0), at(3))) == [0, 5, 0]


def test_readings_before_the_window_complete_its_first_minute():
    # The reading at 11:59:50 is outside the window; its interval's part in 12:00 counts.
    samples = [("a", at(-1, 50), 0), ("a", at(0, 10), 20)]
    assert counts(requests_per_minute(samples, at(0), at(1))) == [10]


def test_readings_after_the_window_complete_its_last_minute():
    samples = [("a", at(0, 50), 0), ("a", at(1, 10), 20)]
    assert counts(requests_per_minute(samples, at(0), at(1))) == [10]


def test_a_gap_of_days_only_counts_its_share_inside_the_window():
    samples = [("a", at(-2 * 24 * 60), 0), ("a", at(2), 2 * 24 * 60 + 2)]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [1, 1]


def test_an_empty_window_has_no_minutes():
    assert requests_per_minute([("a", at(0), 0), ("a", at(1), 5)], at(1), at(1)) == []


def test_it_labels_each_count_with_the_start_of_its_minute():
    series = requests_per_minute([], at(0, 30), at(2))
    assert [minute for minute, _ in series] == [at(0), at(1)]


# --- several nodes --------------------------------------------------------------------------


def test_it_sums_nodes_and_keeps_their_counters_apart():
    samples = [
        ("a", at(0), 100),
        ("b", at(0), 9_000),
        ("a", at(1), 160),
        ("b", at(1), 9_010),
        ("a", at(2), 220),
        ("b", at(2), 3),  # b restarted
    ]
    assert counts(requests_per_minute(samples, at(0), at(2))) == [70, 63]


def test_a_node_that_joins_late_only_counts_from_its_second_reading():
    samples = [("a", at(0), 0), ("a", at(3), 30), ("b", at(2), 50), ("b", at(3), 80)]
    assert counts(requests_per_minute(samples, at(0), at(3))) == [10, 10, 40]


def test_observed_keeps_only_the_minutes_the_readings_fully_cover():
    samples = [("a", at(2, 10), 0), ("a", at(3), 60), ("a", at(5, 30), 210)]
    series = requests_per_minute(samples, at(0), at(7))

    assert [minute for minute, _ in observed(series, samples)] == [at(3), at(4)]
    assert counts(observed(series, samples)) == [60, 60]


def test_observed_spans_every_node_together():
    samples = [("a", at(0), 0), ("a", at(2), 20), ("b", at(1), 0), ("b", at(4), 30)]
    series = requests_per_minute(samples, at(0), at(6))

    assert [minute for minute, _ in observed(series, samples)] == [at(0), at(1), at(2), at(3)]


def test_nothing_observed_without_readings():
    assert observed(requests_per_minute([], at(0), at(3)), []) == []


def test_total_adds_up_a_series():
    assert total([(at(0), 1.5), (at(1), 2.5)]) == 4


# --- properties -----------------------------------------------------------------------------

readings = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=0, max_value=10 * 60),  # seconds after T0
        st.integers(min_value=0, max_value=10_000),
    ),
    max_size=40,
)


def _as_samples(rows):
    return [(node, T0 + timedelta(seconds=offset), value) for node, offset, value in rows]


def _expected_total(samples) -> int:
    by_node: dict[str, list] = {}
    for node, moment, value in samples:
        by_node.setdefault(node, []).append((moment, value))
    increase = 0
    for rows in by_node.values():
        rows.sort(key=lambda row: row[0])
        increase += sum(counter_increase(a[1], b[1]) for a, b in zip(rows, rows[1:], strict=False))
    return increase


@settings(max_examples=300, deadline=None)
@given(readings)
def test_every_request_is_counted_once_when_the_window_covers_all_readings(rows):
    samples = _as_samples(rows)
    series = requests_per_minute(samples, at(0), at(11))
    # Stable sorting keeps equal timestamps in input order, like the function does.
    assert total(series) == pytest.approx(_expected_total(samples))
    assert all(count >= 0 for _, count in series)


@settings(max_examples=300, deadline=None)
@given(readings, st.integers(min_value=0, max_value=10), st.integers(min_value=0, max_value=10))
def test_a_window_never_counts_more_than_the_whole_and_splits_additively(rows, cut_a, cut_b):
    samples = _as_samples(rows)
    lo, hi = sorted((cut_a, cut_b))
    whole = requests_per_minute(samples, at(0), at(11))
    left = requests_per_minute(samples, at(0), at(lo))
    right = requests_per_minute(samples, at(lo), at(11))
    middle = requests_per_minute(samples, at(lo), at(hi))
    assert total(left) + total(right) == pytest.approx(total(whole))
    assert total(middle) <= total(whole) + 1e-6
