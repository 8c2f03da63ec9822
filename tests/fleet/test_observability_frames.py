"""The metrics interface's pure parts: scopes, percentiles as Prometheus computes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet.observability.frames import (
    BOUNDS,
    BUCKETS,
    Cell,
    Frame,
    Scope,
    ScopeError,
    align,
    decumulate,
    histogram_quantile,
    share_above,
)

NOW = datetime(2026, 12, 1, 12, 7, 30, tzinfo=UTC)


def histogram(**by_bound: float) -> list[float]:
    counts = [0.0] * BUCKETS
    for name, count in by_bound.items():
        index = len(BOUNDS) if name == "inf" else BOUNDS.index(float(name.lstrip("b")) / 1e6)
        counts[index] = count
    return counts


def test_it_interpolates_inside_the_bucket_like_histogram_quantile():
    # 10 answers between 100 µs and 250 µs: the median is halfway.
    counts = histogram(b250=10)
    assert histogram_quantile(0.5, counts) == pytest.approx(0.000175)
    assert histogram_quantile(0.9, counts) == pytest.approx(0.000235)


def test_the_first_bucket_starts_at_zero():
    assert histogram_quantile(0.5, histogram(b100=4)) == pytest.approx(0.00005)


def test_a_rank_in_the_open_bucket_reads_the_highest_finite_bound():
    counts = histogram(b1000=1, inf=99)
    assert histogram_quantile(0.95, counts) == BOUNDS[-1]


def test_it_skips_empty_buckets_between_the_ranks():
    counts = histogram(b1000=50, b100000=50)
    # rank 95 is the 45th of the 50 in (50 ms, 100 ms].
    assert histogram_quantile(0.95, counts) == pytest.approx(0.05 + 0.05 * 45 / 50)


def test_no_answers_have_no_percentile():
    assert histogram_quantile(0.95, [0.0] * BUCKETS) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.0, histogram(b100=1))


def test_the_share_above_a_target_interpolates_the_same_way():
    counts = histogram(b10000=50, b25000=50)  # 50 in (5, 10] ms, 50 in (10, 25] ms
    assert share_above(0.010, counts) == pytest.approx(0.5)
    assert share_above(0.0175, counts) == pytest.approx(0.25)
    assert share_above(0.001, counts) == pytest.approx(1.0)
    assert share_above(1.0, counts) == pytest.approx(0.0)
    assert share_above(1.0, histogram(inf=2, b100=2)) == pytest.approx(0.5)
    assert share_above(1.0, [0.0] * BUCKETS) is None


def test_a_quantile_and_the_share_above_it_are_consistent():
    counts = histogram(b1000=10, b5000=30, b25000=40, b250000=20)
    p95 = histogram_quantile(0.95, counts)
    assert share_above(p95, counts) == pytest.approx(0.05)


def test_a_scope_aligns_its_start_to_the_step_and_lists_its_steps():
    scope = Scope(start=NOW - timedelta(minutes=10), end=NOW, step=timedelta(minutes=5))
    assert scope.start == datetime(2026, 12, 1, 11, 55, tzinfo=UTC)
    assert scope.steps() == [
        datetime(2026, 12, 1, 11, 55, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 5, tzinfo=UTC),
    ]
    assert scope.bucket_of(datetime(2026, 12, 1, 12, 4, 59, tzinfo=UTC)) == scope.steps()[1]
    assert align(NOW, timedelta(hours=1)) == datetime(2026, 12, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"by": "customer"}, "cannot group by 'customer'"),
        ({"start": NOW.replace(tzinfo=None)}, "aware"),
        ({"step": timedelta(0)}, "positive"),
        ({"end": NOW - timedelta(days=1)}, "ends before it starts"),
    ],
)
def test_a_scope_says_what_is_wrong(kwargs, message):
    values = {"start": NOW - timedelta(hours=1), "end": NOW, "step": timedelta(minutes=1)}
    values.update(kwargs)
    with pytest.raises(ScopeError, match=message):
        Scope(**values)


def test_a_named_range_ends_now_and_an_unknown_one_is_refused():
    scope = Scope.last("1h", now=NOW)
    assert scope.step == timedelta(minutes=1)
    assert scope.start == datetime(2026, 12, 1, 11, 7, tzinfo=UTC)
    with pytest.raises(ScopeError, match="unknown range '2h'"):
        Scope.last("2h", now=NOW)


def test_a_frame_sums_groups_orders_them_busiest_first_and_leaves_gaps_empty():
    scope = Scope(start=NOW - timedelta(minutes=3), end=NOW, step=timedelta(minutes=1))
    frame = Frame(scope=scope, backend="test")
    first, second, third = scope.steps()[:3]
    frame.cell("small", first).add(Cell(count=1, errors=1, energy_j=2.0))
    frame.cell("big", first).add(Cell(count=10, latency=histogram(b1000=10)))
    frame.cell("big", third).add(Cell(count=10, errors=10, latency=histogram(b1000=10)))
    assert frame.keys() == ["big", "small"]
    total = frame.total()
    assert (total.count, total.errors, total.energy_j) == (21, 11, 2.0)
    assert frame.total("small").error_rate == 0.5
    assert frame.total("small").energy_per_inference_j == 1.0
    rates = frame.series("big", lambda cell: cell.error_rate)
    assert [value for _, value in rates] == [0.0, None, 0.5, None]
    counts = frame.series(None, lambda cell: cell.requests)
    assert [value for _, value in counts] == [12.0, None, 20.0, None], "every group summed"


def test_decumulate_turns_le_buckets_into_counts_and_never_goes_negative():
    assert list(decumulate([1.0, 3.0, 2.9, 6.0])) == [1.0, 2.0, 0.0, 3.0]
