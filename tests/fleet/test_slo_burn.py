"""The SLO burn-rate math (fleet/observability/slo.py), without a database: the budget a p95
target allows, the multi-window burn rates, the projection and the status with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet.observability.frames import BOUNDS, BUCKETS, Cell, Frame, Scope
from fleet.observability.slo import (
    BUDGET,
    FAST_BURN,
    MIN_ANSWERS,
    SLOW_BURN,
    BandInfo,
    MonthClock,
    Status,
    Tally,
    TenantTarget,
    assess,
    band_burns,
    burn_rate,
    tally,
    utc_month,
)

# Ten days into a 30-day month: a third of it gone, two thirds (480 h) to come.
NOW = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)
CLOCK = MonthClock.utc(NOW)
FAST_BUCKET = BOUNDS.index(0.01)  # (5 ms, 10 ms]
SLOW_BUCKET = BOUNDS.index(0.25)  # (100 ms, 250 ms]


def cell(fast: float = 0, slow: float = 0, *, errors: float = 0) -> Cell:
    latency = [0.0] * BUCKETS
    latency[FAST_BUCKET] = fast
    latency[SLOW_BUCKET] = slow
    return Cell(count=fast + slow, errors=errors, latency=latency)


NOTHING = Tally()


def judge(month: Tally, last_1h: Tally = NOTHING, last_6h: Tally = NOTHING):
    return assess(month, last_1h, last_6h, CLOCK, target="the 100 ms target")


# --- counting ---------------------------------------------------------------------------------


def test_a_tally_counts_the_answers_slower_than_the_target():
    counted = tally(cell(fast=90, slow=10), 100)
    assert counted == Tally(answers=100, slow=10)
    assert counted.share == pytest.approx(0.10)


def test_an_answer_in_a_bucket_ending_at_the_target_meets_it():
    assert tally(cell(slow=10), 250).slow == 0
    assert tally(cell(slow=10), 100).slow == 10


def test_a_target_inside_a_bucket_counts_the_part_above_it():
    # 10 answers spread over (100, 250] ms: 175 ms sits halfway.
    assert tally(cell(slow=10), 175).slow == pytest.approx(5)


def test_errors_are_not_answers_of_the_budget():
    assert tally(cell(fast=10, errors=50), 100) == Tally(answers=10, slow=0)


def test_the_burn_rate_is_the_share_of_slow_answers_over_the_budget():
    assert BUDGET == 0.05
    assert burn_rate(Tally(answers=100, slow=5)) == pytest.approx(1.0)
    assert burn_rate(Tally(answers=50, slow=36)) == pytest.approx(14.4)
    assert burn_rate(Tally()) is None


def test_a_window_needs_as_many_answers_as_one_slow_answer_takes_to_exceed_the_budget():
    assert MIN_ANSWERS == 20
    assert Tally(answers=20, slow=0).judged
    assert not Tally(answers=19, slow=0).judged


def test_tallies_add_up():
    assert Tally(10, 1) + Tally(30, 2) == Tally(40, 3)


# --- the month --------------------------------------------------------------------------------


def test_the_month_is_the_utc_calendar_month():
    assert utc_month(datetime(2026, 11, 11, tzinfo=UTC)) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert utc_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_the_month_of_a_moment_given_in_another_zone_is_its_utc_month():
    from zoneinfo import ZoneInfo

    berlin_new_year = datetime(2027, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert utc_month(berlin_new_year)[0] == datetime(2026, 12, 1, tzinfo=UTC)


def test_the_clock_says_how_much_of_the_month_is_gone():
    assert CLOCK.elapsed == timedelta(days=10)
    assert CLOCK.remaining == timedelta(days=20)
    assert CLOCK.period == timedelta(days=30)


# --- the status -------------------------------------------------------------------------------


def test_a_month_without_answers_has_no_data():
    burn = judge(Tally())
    assert burn.status is Status.NO_DATA
    assert burn.consumed is None and burn.projected is None
    assert burn.reason == "No answers this month yet."


def test_the_budget_is_five_percent_of_the_answers_the_month_is_on_course_for():
    # 3,000 answers in 10 days: 9,000 by the month's end, 450 of which may be slow.
    burn = judge(Tally(3000, 30), last_6h=Tally(100, 1))
    assert burn.consumed == pytest.approx(30 / 450)
    # The last 6 h's 1 % over the 6,000 answers to come: 60 more slow answers.
    assert burn.projected == pytest.approx(90 / 450)
    assert burn.status is Status.MET
    assert burn.reason == (
        "7% of the month's budget spent; at the last 6 h's pace the month ends at 20% of it."
    )


def test_a_spent_budget_is_missed_even_if_every_answer_from_now_on_is_fast():
    burn = judge(Tally(3000, 451))
    assert burn.status is Status.MISSED
    assert burn.consumed > 1
    assert "451 answers this month were slower than the 100 ms target" in burn.reason
    assert "~9,000 answers" in burn.reason


def test_a_budget_spent_to_the_last_answer_is_not_missed_yet():
    burn = judge(Tally(3000, 450), last_6h=Tally(100, 0))
    assert burn.consumed == pytest.approx(1.0)
    assert burn.status is Status.MET


def test_a_fast_burn_over_the_last_hour_puts_the_month_at_risk():
    burn = judge(Tally(3000, 40), last_1h=Tally(50, 40), last_6h=Tally(100, 40))
    assert burn.burn_1h == pytest.approx(16.0)
    assert burn.burn_1h >= FAST_BURN and burn.fast_burn
    assert burn.status is Status.AT_RISK
    # (1 - 40/450) of the budget left, spent 16 times faster than the month's 720 h.
    hours = (1 - 40 / 450) * 720 / 16
    assert burn.reason == (
        "Fast burn: 16.0× the budget over the last hour (alert at 14.4×); at that pace the "
        f"month's budget is gone in ~{hours:.0f} h."
    )


def test_a_slow_burn_over_six_hours_puts_the_month_at_risk():
    burn = judge(Tally(3000, 100), last_1h=Tally(30, 3), last_6h=Tally(200, 70))
    assert burn.burn_1h == pytest.approx(2.0) and not burn.fast_burn
    assert burn.burn_6h == pytest.approx(7.0)
    assert burn.burn_6h >= SLOW_BURN and burn.slow_burn
    assert burn.status is Status.AT_RISK
    assert burn.reason.startswith("Slow burn: 7.0× the budget over the last 6 h (alert at 6×)")


def test_a_fast_burn_is_named_before_a_slow_one():
    burn = judge(Tally(3000, 100), last_1h=Tally(40, 40), last_6h=Tally(200, 80))
    assert burn.fast_burn and burn.slow_burn
    assert burn.reason.startswith("Fast burn")


def test_a_pace_that_overruns_the_budget_by_the_months_end_is_at_risk():
    # 10 % slow over the last 6 h: a burn of 2, under both alerts, yet 600 of the 6,000
    # answers to come would be slow.
    burn = judge(Tally(3000, 30), last_1h=Tally(40, 4), last_6h=Tally(200, 20))
    assert not burn.fast_burn and not burn.slow_burn
    assert burn.projected == pytest.approx(630 / 450)
    assert burn.status is Status.AT_RISK
    assert burn.reason == (
        "7% of the month's budget spent; at the last 6 h's pace the month ends at 140% of it, "
        "and its p95 would miss the 100 ms target."
    )


def test_windows_with_too_few_answers_are_not_judged():
    # Ten answers, all slow: a burn of 20, but one answer more or less would swing it.
    burn = judge(Tally(3000, 30), last_1h=Tally(10, 10), last_6h=Tally(10, 10))
    assert burn.burn_1h == pytest.approx(20.0)
    assert not burn.fast_burn and not burn.slow_burn
    # The projection falls back on the month's own share (1 %).
    assert burn.projected == pytest.approx(90 / 450)
    assert burn.status is Status.MET
    assert "at this month's pace" in burn.reason


def test_a_month_begun_a_moment_ago_still_has_a_finite_pace():
    clock = MonthClock.utc(datetime(2026, 11, 1, tzinfo=UTC))
    burn = assess(Tally(5, 0), Tally(), Tally(), clock, target="the 100 ms target")
    assert burn.status is Status.MET
    assert burn.consumed == 0


def test_the_statuses_order_from_best_to_worst():
    order = sorted(Status, key=lambda s: s.severity)
    assert order == [Status.NO_DATA, Status.MET, Status.AT_RISK, Status.MISSED]
    assert [s.badge for s in order] == ["secondary", "success", "warning", "danger"]
    assert Status.AT_RISK.label == "At risk"


# --- bands and their tenants ------------------------------------------------------------------


def frames(cells: dict[str, list[tuple[datetime, Cell]]]) -> tuple[Frame, Frame]:
    """The loader's two frames: the month in hours, the last 6 h in minutes."""
    month = Frame(
        scope=Scope(start=CLOCK.start, end=NOW, step=timedelta(hours=1), by="tenant"),
        backend="rollups",
    )
    recent = Frame(
        scope=Scope(
            start=NOW - timedelta(hours=6), end=NOW, step=timedelta(minutes=1), by="tenant"
        ),
        backend="rollups",
    )
    for key, rows in cells.items():
        for at, value in rows:
            month.cell(key, month.scope.bucket_of(at)).add(value)
            if at >= recent.scope.start:
                recent.cell(key, recent.scope.bucket_of(at)).add(value)
    return month, recent


BANDS = [
    BandInfo("gold", "Gold", (25.0,)),
    BandInfo("silver", "Silver", (100.0, 250.0)),
    BandInfo("bronze", "Bronze", (250.0,)),
]
TENANTS = [
    TenantTarget("acme", "Acme", "silver", 100.0),
    TenantTarget("globex", "Globex", "silver", 250.0),  # silver's USD terms promise less
    TenantTarget("initech", "Initech", "gold", 25.0),
]


def test_each_tenant_is_judged_against_its_own_target_and_the_band_pools_them():
    month, recent = frames(
        {
            "acme": [(NOW - timedelta(days=5), cell(slow=1000))],
            "globex": [(NOW - timedelta(days=5), cell(slow=1000))],
            "initech": [(NOW - timedelta(days=5), cell(fast=1000))],
        }
    )
    gold, silver, bronze = band_burns(BANDS, TENANTS, month, recent, CLOCK)

    acme, globex = silver.tenants
    assert acme.tenant.slug == "acme"
    assert acme.burn.month == Tally(1000, 1000)  # (100, 250] ms is over 100 ms...
    assert globex.burn.month == Tally(1000, 0)  # ...and within 250 ms
    assert acme.burn.status is Status.MISSED and globex.burn.status is Status.MET
    assert silver.burn.month == Tally(2000, 1000)
    assert silver.burn.status is Status.MISSED
    assert "their targets (100, 250 ms)" in silver.burn.reason
    assert silver.tenant_summary == "1 missed of 2 tenant(s)"
    # p95 interpolated inside (100, 250] ms, as histogram_quantile does.
    assert acme.burn.p95_ms == pytest.approx(100 + 150 * 0.95)

    assert gold.burn.status is Status.MET and gold.tenant_summary == ""
    assert gold.burn.reason.startswith("0% of the month's budget spent")
    assert bronze.burn.status is Status.NO_DATA
    assert bronze.burn.reason == "No tenant is on this band this month."
    assert bronze.tenants == []


def test_the_windows_are_the_last_hour_and_the_last_six_hours():
    month, recent = frames(
        {
            "acme": [
                (NOW - timedelta(days=3), cell(fast=1000)),
                (NOW - timedelta(hours=5), cell(fast=20, slow=20)),
                (NOW - timedelta(minutes=30), cell(fast=10, slow=30)),
            ]
        }
    )
    (silver,) = band_burns([BANDS[1]], TENANTS[:1], month, recent, CLOCK)
    burn = silver.tenants[0].burn
    assert burn.month == Tally(1080, 50)
    assert burn.last_1h == Tally(40, 30)
    assert burn.last_6h == Tally(80, 50)
    assert burn.burn_1h == pytest.approx(15.0)
    assert burn.status is Status.AT_RISK and burn.reason.startswith("Fast burn")
    assert silver.burn.last_1h == burn.last_1h


def test_a_tenant_without_answers_this_month_has_no_data_beside_the_others():
    month, recent = frames({"acme": [(NOW - timedelta(days=1), cell(fast=100))]})
    (silver,) = band_burns([BANDS[1]], TENANTS[:2], month, recent, CLOCK)
    assert [(t.tenant.slug, t.burn.status) for t in silver.tenants] == [
        ("acme", Status.MET),
        ("globex", Status.NO_DATA),
    ]
    assert silver.burn.status is Status.MET


def test_tenants_are_listed_worst_first():
    month, recent = frames(
        {
            "acme": [(NOW - timedelta(days=1), cell(fast=100))],
            "globex": [(NOW - timedelta(days=1), cell(fast=100, slow=1000))],
        }
    )
    tenants = [TENANTS[0], TenantTarget("globex", "Globex", "silver", 100.0)]
    (silver,) = band_burns([BANDS[1]], tenants, month, recent, CLOCK)
    assert [t.tenant.slug for t in silver.tenants] == ["globex", "acme"]
