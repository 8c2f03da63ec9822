"""Rating a tenant's month (billing/rating.py): worked examples, then properties.

No database: rating is plain data in, plain data out. The examples rate March 2026 in Berlin
(743 hours: the clocks go forward on the 29th) in euros unless they say otherwise.
"""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.currencies import minor_unit, minor_units, quantize
from billing.rating import (
    GRADES,
    LINE_KINDS,
    OFFLOAD_REASONS,
    PROVIDER_REASONS,
    Addon,
    Adjustment,
    BandTerm,
    LateUsage,
    Prices,
    RatedInvoice,
    Usage,
    month_bounds,
    percentile_from_histogram,
    rate,
)

D = Decimal
BERLIN = "Europe/Berlin"
MARCH = month_bounds(2026, 3, BERLIN)
BOUNDS = (0.05, 0.1, 0.25)  # seconds; a fourth bucket is +Inf
PRICES = Prices(
    local={"tiny": D("0.20"), "medium": D("0.60"), "large": D("1.80")},
    regional={"tiny": D("0.35"), "medium": D("0.90"), "large": D("2.50")},
)
GOLD_OVERAGE = {"tiny": D("0.10"), "medium": D("0.40"), "large": D("1.20")}
SILVER_OVERAGE = {"tiny": D("0.15"), "medium": D("0.50"), "large": D("1.50")}


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(BERLIN))


def gold(**fields) -> BandTerm:
    return BandTerm(
        **{
            "band": "Gold",
            "monthly_fee": D("49.00"),
            "included_inferences": 1_000_000,
            "overage_per_1000": GOLD_OVERAGE,
            "p95_target_ms": 200,
            "sla_credit_percent": D("10"),
            **fields,
        }
    )


def silver(**fields) -> BandTerm:
    return BandTerm(
        **{
            "band": "Silver",
            "monthly_fee": D("19.00"),
            "included_inferences": 500_000,
            "overage_per_1000": SILVER_OVERAGE,
            "p95_target_ms": 250,
            "sla_credit_percent": D("5"),
            **fields,
        }
    )


def local(grade: str, count: int, latency: tuple[int, ...] = ()) -> Usage:
    return Usage(grade=grade, served_by="local", count=count, latency_counts=latency)


def regional(grade: str, count: int, reason: str | None, latency: tuple[int, ...] = ()) -> Usage:
    return Usage(
        grade=grade,
        served_by="regional",
        offload_reason=reason,
        count=count,
        latency_counts=latency,
    )


def rate_march(usage=(), **fields) -> RatedInvoice:
    return rate(
        **{
            "start": MARCH[0],
            "end": MARCH[1],
            "currency": "EUR",
            "usage": usage,
            "prices": PRICES,
            "quality_credit_share": D("0.5"),
            "tax_rate": D("0"),
            "tax_name": "VAT 0 % (reverse charge)",
            "bounds": BOUNDS,
            **fields,
        }
    )


def charged(invoice: RatedInvoice, *kinds: str) -> list[tuple[str, Decimal]]:
    return [(line.kind, line.amount) for line in invoice.lines if line.kind in kinds]


# --- bands, overage and local usage ---------------------------------------------------------


def test_it_charges_a_whole_month_of_a_band_in_full():
    invoice = rate_march(bands=[gold()])

    (fee,) = invoice.lines_of("band_fee")
    assert (fee.description, fee.quantity, fee.unit_price, fee.amount) == (
        "Gold latency band",
        1,
        D("49.00"),
        D("49.00"),
    )
    assert invoice.included_inferences == 1_000_000
    assert invoice.total == D("49.00")


def test_it_consumes_the_inclusion_tiny_first_then_medium_then_large():
    # 1,000,000 included: 700,000 tiny, then 300,000 of the 500,000 medium.
    usage = [local("tiny", 700_000), local("medium", 500_000), local("large", 100_000)]

    invoice = rate_march(usage, bands=[gold()])

    overage = invoice.lines_of("overage")
    assert [(line.grade, line.quantity, line.amount) for line in overage] == [
        ("medium", 200_000, D("80.00")),  # 200 × 0.40
        ("large", 100_000, D("120.00")),  # 100 × 1.20
    ]
    assert overage[0].description == "Medium inferences beyond the 1,000,000 included, per 1,000"
    assert invoice.total == D("249.00")


def test_it_charges_local_usage_at_the_price_book_without_a_band():
    invoice = rate_march([local("tiny", 12_345), local("large", 1_000)])

    assert charged(invoice, "local_usage", "overage", "band_fee") == [
        ("local_usage", D("2.47")),  # 12.345 × 0.20 = 2.469
        ("local_usage", D("1.80")),
    ]


def test_it_sums_repeated_aggregates_of_the_same_grade_and_serving():
    invoice = rate_march([local("tiny", 5_000), local("tiny", 7_345)])

    (line,) = invoice.lines_of("local_usage")
    assert (line.quantity, line.amount) == (12_345, D("2.47"))


def test_it_prorates_a_band_change_mid_month_by_its_seconds_across_the_dst_change():
    # Silver from 1 March 00:00 CET to 15 March: 336 h; Gold from then to 1 April 00:00
    # CEST: 407 h (the 29th has 23). 743 h in all.
    change = berlin(2026, 3, 15)
    bands = [silver(ends=change), gold(starts=change)]

    invoice = rate_march([local("medium", 1_000_000)], bands=bands)

    fees = invoice.lines_of("band_fee")
    assert [(fee.band, fee.quantity, fee.amount) for fee in fees] == [
        ("Silver", D("0.4522"), D("8.59")),  # 19.00 × 336/743 = 8.5922
        ("Gold", D("0.5478"), D("26.84")),  # 49.00 × 407/743 = 26.8412
    ]
    assert fees[1].description == "Gold latency band, 54.78 % of the month"
    # (500,000 × 336 + 1,000,000 × 407) / 743 = 773,889.6, rounded down.
    assert invoice.included_inferences == 773_889
    # Gold covers more of the month: its overage price, 226,111 × 0.40 = 90.4444.
    (overage,) = invoice.lines_of("overage")
    assert (overage.band, overage.quantity, overage.amount) == ("Gold", 226_111, D("90.44"))


def test_it_takes_overage_prices_and_the_sla_target_from_the_term_covering_most_of_the_month():
    change = berlin(2026, 3, 21)  # Silver has 20 days, Gold 11
    slow = (0, 0, 1_000, 0)  # p95 of 250 ms: Silver's target, missing Gold's 200 ms

    invoice = rate_march(
        [local("large", 1_000_000, slow)], bands=[silver(ends=change), gold(starts=change)]
    )

    assert invoice.included_inferences == 676_985  # (500,000 × 480 + 1,000,000 × 263) / 743
    (overage,) = invoice.lines_of("overage")
    assert (overage.band, overage.unit_price) == ("Silver", D("1.50"))
    assert invoice.lines_of("sla_credit") == ()


def test_it_charges_nothing_for_a_gap_and_ignores_a_term_outside_the_month():
    bands = [
        gold(starts=berlin(2026, 1, 1), ends=berlin(2026, 3, 1)),
        gold(starts=berlin(2026, 4, 1)),
    ]

    invoice = rate_march(bands=bands)

    assert invoice.lines == ()
    assert invoice.total == D("0.00")


def test_it_refuses_band_terms_that_overlap():
    with pytest.raises(ValueError, match="Band terms overlap"):
        rate_march(bands=[silver(ends=berlin(2026, 3, 16)), gold(starts=berlin(2026, 3, 15))])


def test_it_prorates_the_day_the_clocks_go_forward_as_twenty_three_hours():
    one_day = gold(monthly_fee=D("743.00"), starts=berlin(2026, 3, 29), ends=berlin(2026, 3, 30))

    (fee,) = rate_march(bands=[one_day]).lines_of("band_fee")

    assert fee.amount == D("23.00")


def test_it_prorates_an_addon_like_a_band():
    invoice = rate_march(
        addons=[Addon(name="Audit log export", monthly_price=D("9.90"), starts=berlin(2026, 3, 15))]
    )

    (addon,) = invoice.lines_of("addon")
    assert (addon.description, addon.amount) == (
        "Audit log export, 54.78 % of the month",
        D("5.42"),  # 9.90 × 407/743 = 5.4229
    )


# --- regional usage and quality credits -----------------------------------------------------


def test_it_charges_regional_usage_at_the_regional_price_whatever_the_band():
    invoice = rate_march([regional("medium", 10_000, None)], bands=[gold()])

    assert charged(invoice, "regional_usage", "quality_credit") == [
        ("regional_usage", D("9.00"))  # 10 × 0.90, and no credit: not an offload
    ]


@pytest.mark.parametrize("reason", PROVIDER_REASONS)
def test_it_credits_the_whole_premium_when_the_provider_chose_to_offload(reason):
    invoice = rate_march([regional("medium", 10_000, reason)], bands=[gold()])

    # Regional 0.90 against Gold's medium overage 0.40: a premium of 0.50 per 1,000.
    assert charged(invoice, "regional_usage", "quality_credit") == [
        ("regional_usage", D("9.00")),
        ("quality_credit", D("-5.00")),
    ]
    assert invoice.lines_of("quality_credit")[0].reason == reason


def test_it_credits_the_configured_share_of_the_premium_when_the_tenant_asked_for_quality():
    invoice = rate_march(
        [regional("large", 3_000, "tenant_quality")], bands=[gold()], quality_credit_share=D("0.5")
    )

    # (2.50 − 1.20) × 50 % = 0.65 per 1,000, for 3,000 inferences.
    (credit,) = invoice.lines_of("quality_credit")
    assert (credit.amount, credit.description) == (
        D("-1.95"),
        "Quality credit, large (offloaded for your quality objective): "
        "50 % of the regional premium",
    )


def test_it_measures_the_premium_against_the_price_book_when_no_band_is_active():
    invoice = rate_march([regional("medium", 10_000, "thermal")])

    assert charged(invoice, "quality_credit") == [("quality_credit", D("-3.00"))]  # 0.90 − 0.60


def test_it_gives_no_credit_when_the_regional_price_is_not_dearer():
    cheap_regional = Prices(local=PRICES.local, regional={**PRICES.regional, "tiny": D("0.05")})

    invoice = rate_march(
        [regional("tiny", 1_000, "capacity")], bands=[gold()], prices=cheap_regional
    )

    assert charged(invoice, "regional_usage", "quality_credit") == [("regional_usage", D("0.05"))]


# --- the SLA credit -------------------------------------------------------------------------


def test_it_credits_the_sla_percentage_when_the_months_p95_misses_the_target():
    # Local alone: 950 inferences, the 903rd is in the 100 ms bucket. With the regional ones,
    # 1,000 inferences and the 950th in the 250 ms bucket: Gold's 200 ms target is missed.
    usage = [
        local("tiny", 950, latency=(900, 20, 30, 0)),
        regional("tiny", 50, "thermal", latency=(0, 20, 30, 0)),
    ]

    invoice = rate_march(usage, bands=[gold()])

    assert invoice.p95_ms == 250.0
    (credit,) = invoice.lines_of("sla_credit")
    assert (credit.amount, credit.description) == (
        D("-4.90"),
        "SLA credit: measured p95 250 ms missed the Gold target of 200 ms "
        "(10 % of the Gold band fee)",
    )


def test_it_credits_the_sla_percentage_of_the_prorated_fee():
    invoice = rate_march(
        [local("tiny", 10, latency=(0, 0, 10, 0))], bands=[gold(starts=berlin(2026, 3, 15))]
    )

    assert charged(invoice, "band_fee", "sla_credit") == [
        ("band_fee", D("26.84")),
        ("sla_credit", D("-2.68")),  # 10 % of 26.84
    ]


def test_it_grants_no_sla_credit_when_the_p95_meets_the_target_exactly():
    invoice = rate_march(
        [local("tiny", 10, latency=(0, 0, 10, 0))], bands=[gold(p95_target_ms=250)]
    )

    assert invoice.p95_ms == 250.0
    assert invoice.lines_of("sla_credit") == ()


def test_it_treats_a_p95_in_the_open_bucket_as_a_miss():
    invoice = rate_march(
        [local("tiny", 10, latency=(0, 0, 0, 10))], bands=[gold(p95_target_ms=10_000)]
    )

    assert invoice.p95_ms == math.inf
    (credit,) = invoice.lines_of("sla_credit")
    assert credit.description.startswith("SLA credit: measured p95 above 250 ms missed")


def test_it_grants_no_sla_credit_without_usage():
    invoice = rate_march(bands=[gold()])

    assert invoice.p95_ms is None
    assert charged(invoice, "band_fee", "sla_credit") == [("band_fee", D("49.00"))]


# --- adjustments, tax and rounding ----------------------------------------------------------


def test_it_bills_late_usage_on_adjustment_lines_named_after_its_month():
    february = LateUsage(
        year=2026,
        month=2,
        usage=(local("tiny", 20_000), regional("medium", 1_000, "thermal")),
        prices=PRICES,
        overage_per_1000=GOLD_OVERAGE,
        included_remaining=5_000,
    )

    invoice = rate_march(adjustments=[february])

    lines = invoice.lines_of("adjustment")
    assert [(line.adjusts, line.period, line.amount) for line in lines] == [
        ("overage", "2026-02", D("1.50")),  # 15,000 beyond the 5,000 left × 0.10
        ("regional_usage", "2026-02", D("0.90")),
        ("quality_credit", "2026-02", D("-0.50")),
    ]
    assert lines[0].description == (
        "Tiny inferences beyond the 5,000 included, per 1,000 — "
        "usage of February 2026 received after its invoice was finalised"
    )
    assert invoice.total == D("1.90")


def test_it_adds_a_free_form_credit_as_an_adjustment():
    goodwill = Adjustment(description="Goodwill for the outage of 3 March", amount=D("-10"))

    invoice = rate_march(bands=[gold()], adjustments=[goodwill])

    assert charged(invoice, "adjustment") == [("adjustment", D("-10.00"))]
    assert invoice.total == D("39.00")


def test_it_taxes_the_net_of_the_lines_in_a_fixed_order():
    invoice = rate_march(
        [local("tiny", 700_000), regional("medium", 10_000, "cost")],
        bands=[gold()],
        addons=[Addon(name="Priority support", monthly_price=D("20.00"))],
        adjustments=[Adjustment(description="Onboarding", amount=D("15.00"))],
        tax_rate=D("0.19"),
        tax_name="VAT 19 %",
    )

    assert charged(invoice, *LINE_KINDS) == [
        ("band_fee", D("49.00")),
        ("regional_usage", D("9.00")),
        ("quality_credit", D("-5.00")),
        ("addon", D("20.00")),
        ("adjustment", D("15.00")),
        ("tax", D("16.72")),  # 19 % of 88.00
    ]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D("88.00"), D("16.72"), D("104.72"))


def test_it_rounds_each_line_once_and_taxes_the_sum_of_the_rounded_lines():
    # Three lines of exactly 0.005 each round to 0.01: the net is 0.03 (not 0.015), its
    # tax 0.0057 rounds to 0.01 and the total is 0.04.
    five_per_1000 = {grade: D("5") for grade in GRADES}
    prices = Prices(local=five_per_1000, regional=five_per_1000)

    invoice = rate_march(
        [local(grade, 1) for grade in GRADES],
        prices=prices,
        tax_rate=D("0.19"),
        tax_name="VAT 19 %",
    )

    assert [line.amount for line in invoice.lines] == [D("0.01")] * 3 + [D("0.01")]
    assert (invoice.subtotal, invoice.tax, invoice.total) == (D("0.03"), D("0.01"), D("0.04"))


def test_it_shows_a_reverse_charge_as_a_tax_line_of_zero():
    invoice = rate_march(bands=[gold()])

    assert charged(invoice, "tax") == [("tax", D("0.00"))]
    assert invoice.lines[-1].description == "VAT 0 % (reverse charge)"


def test_it_rounds_yen_to_whole_units():
    yen = Prices(
        local={"tiny": D("30"), "medium": D("90"), "large": D("270")},
        regional={"tiny": D("55"), "medium": D("135"), "large": D("380")},
    )

    invoice = rate_march(
        [local("tiny", 12_345)],
        currency="JPY",
        prices=yen,
        addons=[
            Addon(name="Audit log export", monthly_price=D("1500"), starts=berlin(2026, 3, 15))
        ],
        tax_rate=D("0.10"),
        tax_name="JCT 10 %",
    )

    assert charged(invoice, *LINE_KINDS) == [
        ("local_usage", D("370")),  # 370.35
        ("addon", D("822")),  # 1500 × 407/743 = 821.67
        ("tax", D("119")),  # 10 % of 1192 = 119.2
    ]
    assert invoice.total == D("1311")


def test_it_rounds_kuwaiti_dinars_to_three_places():
    dinar = Prices(local={"tiny": D("0.0123")}, regional={"tiny": D("0.02")})

    invoice = rate_march([local("tiny", 12_345)], currency="KWD", prices=dinar)

    assert charged(invoice, "local_usage") == [("local_usage", D("0.152"))]  # 0.1518435


def test_it_leaves_out_lines_of_nothing():
    invoice = rate_march([local("tiny", 0), regional("large", 0, "thermal")])

    assert invoice.lines == ()
    assert (invoice.subtotal, invoice.total) == (D("0.00"), D("0.00"))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: gold(monthly_fee=49.0), id="a band fee"),
        pytest.param(lambda: gold(overage_per_1000={"tiny": 0.1}), id="an overage price"),
        pytest.param(lambda: gold(sla_credit_percent=10.0), id="an SLA credit percentage"),
        pytest.param(lambda: Prices(local={"tiny": 0.2}, regional={}), id="a price"),
        pytest.param(lambda: Addon(name="Support", monthly_price=20.0), id="an add-on price"),
        pytest.param(lambda: Adjustment(description="Goodwill", amount=-10.0), id="adjustment"),
        pytest.param(lambda: rate_march(tax_rate=0.19), id="a tax rate"),
        pytest.param(lambda: rate_march(quality_credit_share=0.5), id="a credit share"),
        pytest.param(lambda: quantize(0.1, "EUR"), id="an amount to round"),
    ],
)
def test_it_refuses_a_float_for_money(build):
    with pytest.raises(TypeError, match="float"):
        build()


def test_it_refuses_an_unknown_currency():
    with pytest.raises(ValueError, match="Unknown currency 'XYZ'"):
        rate_march(currency="XYZ")
    with pytest.raises(ValueError, match="Unknown currency 'XAU'"):
        minor_units("XAU")  # gold has no minor unit


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        ("EUR", 2),
        ("USD", 2),
        ("GBP", 2),
        ("CHF", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("eur", 2),
    ],
)
def test_it_knows_the_minor_unit_of_a_currency(code, digits):
    assert minor_units(code) == digits


def test_it_refuses_a_naive_period():
    with pytest.raises(ValueError, match="timezone-aware"):
        rate_march(start=datetime(2026, 3, 1), end=datetime(2026, 4, 1))


# --- percentiles ----------------------------------------------------------------------------


def test_the_percentile_is_the_upper_bound_of_the_bucket_where_it_falls():
    # 100 inferences: the 95th (nearest rank) is the 5th of the 10 in the 100 ms bucket.
    assert percentile_from_histogram([80, 10, 10, 0], BOUNDS, 0.95) == 0.25
    assert percentile_from_histogram([85, 10, 5, 0], BOUNDS, 0.95) == 0.1
    assert percentile_from_histogram([0, 0, 0, 1], BOUNDS, 0.5) == math.inf
    assert percentile_from_histogram([0, 0, 0, 0], BOUNDS, 0.95) is None


def test_the_percentile_refuses_a_histogram_that_does_not_fit_its_bounds():
    with pytest.raises(ValueError, match="4 buckets, not 3"):
        percentile_from_histogram([1, 2, 3], BOUNDS, 0.95)


# --- month boundaries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "month", "zone", "start", "end", "hours"),
    [
        (2026, 3, BERLIN, datetime(2026, 2, 28, 23), datetime(2026, 3, 31, 22), 743),
        (2026, 10, BERLIN, datetime(2026, 9, 30, 22), datetime(2026, 10, 31, 23), 745),
        (2026, 3, "America/New_York", datetime(2026, 3, 1, 5), datetime(2026, 4, 1, 4), 743),
        (2026, 11, "America/New_York", datetime(2026, 11, 1, 4), datetime(2026, 12, 1, 5), 721),
        (2028, 2, BERLIN, datetime(2028, 1, 31, 23), datetime(2028, 2, 29, 23), 29 * 24),
        (2026, 12, "UTC", datetime(2026, 12, 1), datetime(2027, 1, 1), 31 * 24),
    ],
)
def test_a_month_is_the_tenants_calendar_month_in_utc(year, month, zone, start, end, hours):
    assert month_bounds(year, month, zone) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))
    assert end - start == timedelta(hours=hours)


def test_the_last_evening_of_the_31st_belongs_to_its_month():
    start, end = month_bounds(2026, 1, BERLIN)

    assert start <= berlin(2026, 1, 31, 23, 30) < end
    assert berlin(2026, 2, 1, 0, 30) >= end


def test_a_band_from_the_leap_day_is_charged_for_one_day_in_twenty_nine():
    start, end = month_bounds(2028, 2, BERLIN)

    invoice = rate_march(
        start=start, end=end, bands=[gold(monthly_fee=D("29.00"), starts=berlin(2028, 2, 29))]
    )

    assert charged(invoice, "band_fee") == [("band_fee", D("1.00"))]


def test_it_refuses_an_unknown_time_zone():
    with pytest.raises(ValueError, match="Unknown time zone 'Mars/Olympus'"):
        month_bounds(2026, 3, "Mars/Olympus")


# --- properties -----------------------------------------------------------------------------

CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY", "KRW", "KWD", "BHD", "JOD")
ZONES = (
    BERLIN,
    "America/New_York",
    "UTC",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",  # half an hour of DST
    "Pacific/Chatham",
)
ORDER = {
    "band_fee": 0,
    "overage": 1,
    "local_usage": 1,
    "regional_usage": 2,
    "quality_credit": 2,
    "sla_credit": 3,
    "addon": 4,
    "adjustment": 5,
    "tax": 6,
}
PROPERTY = settings(max_examples=150, deadline=None)


def decimals(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    """Decimals of `places` digits in [low, high]: st.decimals, but cheaper to draw."""
    scale = 10**places
    return st.integers(low * scale, high * scale).map(lambda units: D(units).scaleb(-places))


money = decimals(0, 1000, places=4)
prices_per_1000 = st.fixed_dictionaries({grade: money for grade in GRADES})
months = st.tuples(st.integers(2000, 2040), st.integers(1, 12), st.sampled_from(ZONES))


@st.composite
def usages(draw) -> Usage:
    served_by = draw(st.sampled_from(("local", "regional")))
    reason = None if served_by == "local" else draw(st.sampled_from((None, *OFFLOAD_REASONS)))
    latency = draw(st.one_of(st.just(()), st.tuples(*[st.integers(0, 10**6)] * 4)))
    return Usage(
        grade=draw(st.sampled_from(GRADES)),
        served_by=served_by,
        offload_reason=reason,
        count=draw(st.integers(0, 10**8)),
        latency_counts=latency,
    )


@st.composite
def splits(draw, start: datetime, end: datetime, max_terms: int = 6) -> list[datetime]:
    """The boundaries of a split of [start, end) into 1 to max_terms spans."""
    length = (end - start) // timedelta(microseconds=1)
    cuts = draw(st.sets(st.integers(1, length - 1), max_size=max_terms - 1))
    return [start, *(start + timedelta(microseconds=cut) for cut in sorted(cuts)), end]


@st.composite
def band_terms(draw, starts: datetime, ends: datetime) -> BandTerm:
    return BandTerm(
        band=draw(st.sampled_from(("Bronze", "Silver", "Gold"))),
        monthly_fee=draw(money),
        included_inferences=draw(st.integers(0, 10**7)),
        overage_per_1000=draw(prices_per_1000),
        p95_target_ms=draw(st.sampled_from((50, 100, 250, 1000))),
        sla_credit_percent=draw(decimals(0, 100, places=2)),
        starts=starts,
        ends=ends,
    )


@st.composite
def invoices(draw) -> RatedInvoice:
    currency = draw(st.sampled_from(CURRENCIES))
    start, end = month_bounds(*draw(months))
    edges = draw(splits(start, end))
    bands = [
        draw(band_terms(a, b))
        for a, b in zip(edges, edges[1:], strict=False)
        if draw(st.booleans())  # a term, or a gap
    ]
    addons = draw(
        st.lists(
            st.builds(
                Addon,
                name=st.just("Add-on"),
                monthly_price=money,
                starts=st.one_of(st.none(), st.sampled_from(edges)),
            ),
            max_size=2,
        )
    )
    late = st.builds(
        LateUsage,
        year=st.just(2025),
        month=st.integers(1, 12),
        usage=st.lists(usages(), max_size=4).map(tuple),
        prices=st.builds(Prices, local=prices_per_1000, regional=prices_per_1000),
        overage_per_1000=st.one_of(st.none(), prices_per_1000),
        included_remaining=st.integers(0, 10**6),
    )
    free_form = st.builds(
        Adjustment, description=st.just("Correction"), amount=decimals(-500, 500, places=3)
    )
    return rate(
        start=start,
        end=end,
        currency=currency,
        usage=draw(st.lists(usages(), max_size=10)),
        prices=Prices(local=draw(prices_per_1000), regional=draw(prices_per_1000)),
        quality_credit_share=draw(decimals(0, 1, places=2)),
        tax_rate=draw(st.integers(0, 270)) * D("0.001"),  # up to 27 %
        tax_name="Tax",
        bands=bands,
        addons=addons,
        adjustments=draw(st.lists(st.one_of(late, free_form), max_size=3)),
        bounds=BOUNDS,
    )


def half_up(value: Fraction, places: int) -> Decimal:
    """The reference rounding, on exact rationals."""
    scaled = value * 10**places
    units = math.floor(abs(scaled) + Fraction(1, 2))
    return Decimal(units if scaled >= 0 else -units).scaleb(-places)


@PROPERTY
@given(invoices())
def test_lines_always_sum_to_the_total(invoice):
    amounts = [line.amount for line in invoice.lines]
    assert sum(amounts, D(0)) == invoice.total
    assert invoice.subtotal + invoice.tax == invoice.total
    assert sum((line.amount for line in invoice.lines if line.kind != "tax"), D(0)) == (
        invoice.subtotal
    )
    assert all(line.amount or line.quantity for line in invoice.lines)


@PROPERTY
@given(invoices())
def test_every_amount_is_a_whole_number_of_minor_units(invoice):
    unit = minor_unit(invoice.currency)
    amounts = [line.amount for line in invoice.lines] + [invoice.subtotal, invoice.total]
    for amount in amounts:
        assert isinstance(amount, Decimal)
        assert amount % unit == 0
        assert amount.as_tuple().exponent == -minor_units(invoice.currency)


@PROPERTY
@given(invoices())
def test_a_credit_never_exceeds_the_charge_it_offsets(invoice):
    lines = invoice.lines
    fees = {(line.band, line.starts): line.amount for line in lines if line.kind == "band_fee"}
    for previous, line in zip(lines, lines[1:], strict=False):
        if "quality_credit" in (line.kind, line.adjusts):
            # Its charge is the line above: same grade, reason (and month, if late).
            assert "regional_usage" in (previous.kind, previous.adjusts)
            assert (previous.grade, previous.reason, previous.period) == (
                line.grade,
                line.reason,
                line.period,
            )
            assert D(0) < -line.amount <= previous.amount
        if line.kind == "sla_credit":
            assert D(0) < -line.amount <= fees[(line.band, line.starts)]


@PROPERTY
@given(invoices())
def test_lines_come_in_a_fixed_order(invoice):
    kinds = [line.kind for line in invoice.lines]
    assert set(kinds) <= set(LINE_KINDS)
    assert [ORDER[kind] for kind in kinds] == sorted(ORDER[kind] for kind in kinds)


@PROPERTY
@given(data=st.data(), month=months, currency=st.sampled_from(CURRENCIES))
def test_any_split_of_the_month_adds_up_to_the_fee_within_half_a_minor_unit_per_term(
    data, month, currency
):
    # Each of k prorated lines is off its exact share by at most half a minor unit and the
    # shares add up to the fee, so the lines are within floor(k / 2) minor units of it.
    start, end = month_bounds(*month)
    edges = data.draw(splits(start, end))
    fee = quantize(data.draw(money), currency)
    included = data.draw(st.integers(0, 10**9))
    bands = [
        gold(monthly_fee=fee, included_inferences=included, starts=a, ends=b)
        for a, b in zip(edges, edges[1:], strict=False)
    ]

    invoice = rate_march(start=start, end=end, currency=currency, bands=bands)

    terms = len(bands)
    charged_fees = sum((line.amount for line in invoice.lines_of("band_fee")), D(0))
    assert abs(charged_fees - fee) <= (terms // 2) * minor_unit(currency)
    if terms == 1:
        assert charged_fees == fee
    assert invoice.included_inferences == included  # an unchanged inclusion is never lost


@PROPERTY
@given(data=st.data(), month=months, currency=st.sampled_from(CURRENCIES))
def test_a_prorated_fee_is_its_exact_share_rounded_half_up(data, month, currency):
    # Rounding the 50-digit quotient gives what rounding the exact fraction gives.
    start, end = month_bounds(*month)
    length = (end - start) // timedelta(microseconds=1)
    first = data.draw(st.integers(0, length - 1))
    last = data.draw(st.integers(first + 1, length))
    fee = data.draw(st.decimals(0, 10**6, places=4))
    addon = Addon(
        name="Audit log export",
        monthly_price=fee,
        starts=start + timedelta(microseconds=first),
        ends=start + timedelta(microseconds=last),
    )

    lines = rate_march(start=start, end=end, currency=currency, addons=[addon]).lines_of("addon")

    amount = lines[0].amount if lines else D(0)  # a line of nothing is left out
    assert amount == half_up(Fraction(fee) * Fraction(last - first, length), minor_units(currency))


@settings(max_examples=300, deadline=None)
@given(
    amount=st.decimals(-(10**9), 10**9, places=6, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(CURRENCIES),
)
def test_quantize_rounds_half_up_to_the_currencys_minor_unit(amount, currency):
    assert quantize(amount, currency) == half_up(Fraction(amount), minor_units(currency))


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(CURRENCIES))
def test_a_float_is_never_money(value, currency):
    with pytest.raises(TypeError):
        quantize(value, currency)
    with pytest.raises(TypeError):
        Adjustment(description="Float", amount=value)


@settings(max_examples=300, deadline=None)
@given(year=st.integers(1971, 2099), month=st.integers(1, 12), zone=st.sampled_from(ZONES))
def test_a_month_runs_from_the_first_local_instant_of_the_month_to_the_next(year, month, zone):
    start, end = month_bounds(year, month, zone)
    tz = ZoneInfo(zone)
    local_start, local_end = start.astimezone(tz), end.astimezone(tz)
    just_before = (start - timedelta(microseconds=1)).astimezone(tz)
    last_instant = (end - timedelta(microseconds=1)).astimezone(tz)

    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert (local_start.year, local_start.month, local_start.day) == (year, month, 1)
    assert (just_before.month, just_before.day) != (month, 1)
    assert (last_instant.month, last_instant.day) == (month, calendar.monthrange(year, month)[1])
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    assert month_bounds(*following, zone)[0] == end
    # The wall clocks' difference, less whatever the clocks moved forward in between.
    walls = local_end.replace(tzinfo=None) - local_start.replace(tzinfo=None)
    assert end - start == walls - (local_end.utcoffset() - local_start.utcoffset())


def test_a_month_whose_midnight_never_happened_starts_when_the_clocks_jumped():
    # Kathmandu went from +5:30 to +5:45 at midnight on 1 January 1986: 00:00 became 00:15.
    start, _ = month_bounds(1986, 1, "Asia/Kathmandu")

    assert start == datetime(1985, 12, 31, 18, 30, tzinfo=UTC)
    assert start.astimezone(ZoneInfo("Asia/Kathmandu")).strftime("%H:%M") == "00:15"


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 10**6), min_size=4, max_size=4).filter(any),
    q=st.decimals(D("0.01"), 1, places=2),
)
def test_the_percentile_bucket_and_those_below_hold_at_least_q_of_the_inferences(counts, q):
    bound = percentile_from_histogram(counts, BOUNDS, q)

    edges = (*BOUNDS, math.inf)
    at_or_below = sum(count for count, edge in zip(counts, edges, strict=True) if edge <= bound)
    below = sum(count for count, edge in zip(counts, edges, strict=True) if edge < bound)
    assert at_or_below >= q * sum(counts) > below
