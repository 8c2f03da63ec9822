"""Rating: one tenant's month of usage and its price data in, invoice lines out.

Pure Python over frozen dataclasses (STYLE item 6): no Django, no database, so the billing
run, the console's simulators and the tests call the same `rate()`. The billing run aggregates
usage in SQL first; `rate()` takes per-tenant aggregates (one `Usage` per grade, serving and
offload reason; repeats are summed) and does no per-record work. The rules, DESIGN §6, and
the choices made where it is silent:

- Money is Decimal (a float is refused with TypeError), computed at 50 significant digits
  and rounded once per line, half-up, to the currency's minor unit (`billing.currencies`).
  The subtotal is the sum of the rounded lines, tax is rounded from the rounded subtotal, and
  the total is exactly the sum of all lines. A negative subtotal gets a negative tax.
- Band fee: a term covering the whole period is charged in full; otherwise it is prorated by
  the exact share of the period's time it covers (to the microsecond, so a 743-hour DST
  month prorates by 743 hours). Terms are clipped to the period and may not overlap; a gap
  is simply not charged. Each term is one line, so k terms of one band may differ from the
  monthly fee by at most floor(k/2) minor units (each line is off by at most half a unit).
- Included inferences: sum over terms of included × covered share, rounded down once (so an
  unchanged inclusion split across terms is never lost). With any term in the month, ALL the
  month's local usage counts against it (usage is aggregated per month, not per term),
  consumed in grade order tiny, medium, large — a fixed order that does not depend on
  prices. Beyond it, overage per 1,000 at the prices of the *dominant* term, the one covering
  the most of the period (on a tie, the later one); its p95 target decides the SLA credit.
- Without a band term, local usage pays the price book's local price per 1,000 by grade.
- Regional usage pays the price book's regional price, one line per grade and offload
  reason, each followed by its quality credit: the premium (regional price minus the local
  rate that would have applied — the dominant band's overage price, else the price book's
  local price — never below zero) times 100 % for provider-chosen reasons and
  `quality_credit_share` for `tenant_quality`. Regional usage without a reason was not an
  offload: no credit. A credit line offsets the charge line just above it and, rounded the
  same way from a smaller exact amount, never exceeds it.
- SLA credit: the measured p95 is the upper bound of the histogram bucket holding the
  nearest-rank 95th percentile of ALL the month's usage (local and regional); the +Inf
  bucket always misses. If it is above the target (equal meets it), each band fee line gets
  a credit of its own term's `sla_credit_percent` of the amount charged. No latency data, no
  SLA credit.
- Late usage (`LateUsage`) is priced like usage, with the price book and band overage
  prices of its own month and the inclusion that month left unused, on lines of kind
  `adjustment` (`adjusts` names the kind priced). The SLA credit of a finalised month is not
  reopened. `Adjustment` is a free-form amount.
- Lines come in a fixed order: band fees, overage or local usage, regional usage with its
  credits (grade, then reason), SLA credits, add-ons, adjustments (as given), tax. A line
  whose amount and quantity are both zero is left out, and so is a credit of zero.
- Usage lines carry the price per 1,000 as `unit_price`; prorated lines carry the covered
  share of the period (4 decimals, for reading; the amount uses the exact share).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.currencies import minor_units, quantize

# The same words as billing.choices.PriceGrade/Serving and inference.protocol's OffloadReason
# (this module imports neither: no Django, no pydantic).
GRADES = ("tiny", "medium", "large")
LOCAL, REGIONAL = "local", "regional"
SERVINGS = (LOCAL, REGIONAL)
TENANT_QUALITY = "tenant_quality"
PROVIDER_REASONS = ("model_not_local", "thermal", "cost", "capacity")
OFFLOAD_REASONS = (TENANT_QUALITY, *PROVIDER_REASONS)
# In the order they appear on an invoice (overage and local usage never both).
LINE_KINDS = (
    "band_fee",
    "overage",
    "local_usage",
    "regional_usage",
    "quality_credit",
    "sla_credit",
    "addon",
    "adjustment",
    "tax",
)
SLA_PERCENTILE = Decimal("0.95")

# Enough digits that rounding a computed amount to its minor unit is the exact rational
# rounding: a prorated fee is fee × µs / µs-in-month (denominator < 10^13), so a value that is
# not a tie is at least ~10^-16 away from one, far above the 10^-40 a 50-digit amount loses.
_PRECISION = 50
_THOUSAND = Decimal(1000)
_HUNDRED = Decimal(100)
_ONE_MICROSECOND = timedelta(microseconds=1)
_SHARE_PLACES = Decimal("0.0001")
_MONTHS = tuple(
    "January February March April May June July August September October November December".split()
)
_REASON_PHRASES = {
    None: "served regionally",
    "tenant_quality": "offloaded for your quality objective",
    "model_not_local": "offloaded: model not on the local node",
    "thermal": "offloaded: local node too hot",
    "cost": "offloaded: cheaper to serve regionally",
    "capacity": "offloaded: local node at capacity",
}


# --- checks on the way in -------------------------------------------------------------------


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, float):
        raise TypeError(
            f"{what} must be a Decimal, not a float ({value!r}): a float cannot hold cents exactly"
        )
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__} ({value!r})")
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, not {value}")
    return value


def _non_negative(value: object, what: str) -> Decimal:
    amount = _decimal(value, what)
    if amount < 0:
        raise ValueError(f"{what} cannot be negative ({amount})")
    return amount


def _bounded(value: object, what: str, upper: Decimal) -> Decimal:
    amount = _non_negative(value, what)
    if amount > upper:
        raise ValueError(f"{what} must be between 0 and {upper} ({amount})")
    return amount


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} ({value!r})")
    if value < 0:
        raise ValueError(f"{what} cannot be negative ({value})")
    return value


def _aware(value: object, what: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware ({value.isoformat()})")


def _price_table(value: Mapping[str, Decimal], what: str) -> Mapping[str, Decimal]:
    table = dict(value)
    for grade, price in table.items():
        if grade not in GRADES:
            raise ValueError(f"{what}: unknown grade {grade!r} (one of {', '.join(GRADES)})")
        _non_negative(price, f"{what}[{grade!r}]")
    return MappingProxyType(table)


def _set(instance: object, name: str, value: object) -> None:
    # A frozen dataclass normalising its own field in __post_init__.
    object.__setattr__(instance, name, value)


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Billable inferences of one grade and serving (and offload reason) in the period,
    with their latency histogram (counts per bucket of `rate(bounds=...)`, then +Inf; empty
    when unknown)."""

    grade: str
    served_by: str
    count: int
    offload_reason: str | None = None
    latency_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.grade not in GRADES:
            raise ValueError(f"Unknown grade {self.grade!r} (one of {', '.join(GRADES)})")
        if self.served_by not in SERVINGS:
            raise ValueError(f"Unknown serving {self.served_by!r} (local or regional)")
        if self.offload_reason is not None:
            if self.offload_reason not in OFFLOAD_REASONS:
                raise ValueError(
                    f"Unknown offload reason {self.offload_reason!r} "
                    f"(one of {', '.join(OFFLOAD_REASONS)})"
                )
            if self.served_by == LOCAL:
                raise ValueError("Local usage has no offload reason")
        _count(self.count, "Usage.count")
        counts = tuple(self.latency_counts)
        for bucket in counts:
            _count(bucket, "Usage.latency_counts")
        _set(self, "latency_counts", counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prices:
    """The price book in effect for the month: price per 1,000 inferences by grade."""

    local: Mapping[str, Decimal]
    regional: Mapping[str, Decimal]

    def __post_init__(self) -> None:
        _set(self, "local", _price_table(self.local, "Prices.local"))
        _set(self, "regional", _price_table(self.regional, "Prices.regional"))

    def per_1000(self, grade: str, serving: str) -> Decimal:
        if serving not in SERVINGS:
            raise ValueError(f"Unknown serving {serving!r} (local or regional)")
        table = self.local if serving == LOCAL else self.regional
        try:
            return table[grade]
        except KeyError:
            raise ValueError(f"The price book has no {serving} price for {grade!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class BandTerm:
    """A latency band subscribed for part (or all) of the month. `starts`/`ends` are
    half-open and clipped to the period; None means the period's own start/end.
    `sla_credit_percent` is a percentage (10 = 10 % of the fee charged for the term)."""

    band: str
    monthly_fee: Decimal
    included_inferences: int
    overage_per_1000: Mapping[str, Decimal]
    p95_target_ms: float
    sla_credit_percent: Decimal
    starts: datetime | None = None
    ends: datetime | None = None

    def __post_init__(self) -> None:
        _non_negative(self.monthly_fee, "BandTerm.monthly_fee")
        _count(self.included_inferences, "BandTerm.included_inferences")
        _set(
            self,
            "overage_per_1000",
            _price_table(self.overage_per_1000, "BandTerm.overage_per_1000"),
        )
        target = self.p95_target_ms
        if isinstance(target, bool) or not isinstance(target, int | float | Decimal):
            raise TypeError(f"BandTerm.p95_target_ms must be a number, not {target!r}")
        if not 0 < target < math.inf:
            raise ValueError(f"BandTerm.p95_target_ms must be positive ({target})")
        _set(self, "p95_target_ms", float(target))
        _bounded(self.sla_credit_percent, "BandTerm.sla_credit_percent", _HUNDRED)
        _optional_span(self.starts, self.ends, "BandTerm")


@dataclass(frozen=True, slots=True, kw_only=True)
class Addon:
    """A feature bundle active for part (or all) of the month, prorated like a band."""

    name: str
    monthly_price: Decimal
    starts: datetime | None = None
    ends: datetime | None = None

    def __post_init__(self) -> None:
        _non_negative(self.monthly_price, "Addon.monthly_price")
        _optional_span(self.starts, self.ends, "Addon")


@dataclass(frozen=True, slots=True, kw_only=True)
class LateUsage:
    """Usage of an earlier month whose invoice is already finalised, priced with that
    month's price book, its dominant band's overage prices (None: it had no band) and the
    inclusion its invoice left unused."""

    year: int
    month: int
    usage: tuple[Usage, ...]
    prices: Prices
    overage_per_1000: Mapping[str, Decimal] | None = None
    included_remaining: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"LateUsage.month must be 1 to 12 ({self.month})")
        _set(self, "usage", tuple(self.usage))
        if self.overage_per_1000 is not None:
            _set(
                self,
                "overage_per_1000",
                _price_table(self.overage_per_1000, "LateUsage.overage_per_1000"),
            )
        _count(self.included_remaining, "LateUsage.included_remaining")

    @property
    def period(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def description(self) -> str:
        month = f"{_MONTHS[self.month - 1]} {self.year}"
        return f"usage of {month} received after its invoice was finalised"


@dataclass(frozen=True, slots=True, kw_only=True)
class Adjustment:
    """A free-form charge (positive) or credit (negative)."""

    description: str
    amount: Decimal

    def __post_init__(self) -> None:
        _decimal(self.amount, "Adjustment.amount")


def _optional_span(starts: datetime | None, ends: datetime | None, what: str) -> None:
    if starts is not None:
        _aware(starts, f"{what}.starts")
    if ends is not None:
        _aware(ends, f"{what}.ends")
    if starts is not None and ends is not None and ends.astimezone(UTC) < starts.astimezone(UTC):
        raise ValueError(f"{what} ends before it starts ({starts} to {ends})")


# --- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceLine:
    """One line; `amount` is rounded to the currency's minor unit, credits negative. Usage
    lines (overage, local/regional usage, quality credit) count inferences and price them
    per 1,000; prorated lines (band fee, add-on) give the share of the period covered;
    SLA credit and tax give the amount they are a percentage of."""

    kind: str
    description: str
    quantity: int | Decimal
    unit_price: Decimal | None
    amount: Decimal
    grade: str | None = None
    serving: str | None = None
    reason: str | None = None
    band: str | None = None
    starts: datetime | None = None
    ends: datetime | None = None
    # For an `adjustment` of late usage: the kind of line it prices, and its month (YYYY-MM).
    adjusts: str | None = None
    period: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RatedInvoice:
    currency: str
    start: datetime
    end: datetime
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    # Measured p95 in milliseconds (math.inf: slower than the last bucket); None: no data.
    p95_ms: float | None
    included_inferences: int

    def lines_of(self, kind: str) -> tuple[InvoiceLine, ...]:
        return tuple(line for line in self.lines if line.kind == kind)


# --- the pieces -----------------------------------------------------------------------------


def month_bounds(year: int, month: int, tz_name: str) -> tuple[datetime, datetime]:
    """The half-open month `[start, end)` in the IANA zone `tz_name`, as aware UTC datetimes.
    A month with a DST change is an hour shorter or longer. Where local midnight does not
    exist (a zone that springs forward at 00:00) the month starts at the first instant that
    does; where it happens twice, at the first."""
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1 to 12 ({month})")
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"Unknown time zone {tz_name!r} (an IANA name, e.g. Europe/Berlin)"
        ) from None
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    start = datetime(year, month, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(*following, 1, tzinfo=zone).astimezone(UTC)
    return start, end


def percentile_from_histogram(
    counts: Sequence[int], bounds: Sequence[float], q: float | Decimal
) -> float | None:
    """The upper bound of the bucket holding the nearest-rank `q` percentile (0 < q <= 1):
    the first bucket whose running count reaches ceil(q × total). `counts` has one bucket per
    bound and a last +Inf bucket; the answer is in the bounds' unit, math.inf for the last
    bucket, None for an empty histogram."""
    if len(counts) != len(bounds) + 1:
        raise ValueError(
            f"A histogram over {len(bounds)} bounds has {len(bounds) + 1} buckets, "
            f"not {len(counts)}"
        )
    if any(later <= earlier for earlier, later in zip(bounds, bounds[1:], strict=False)):
        raise ValueError("Histogram bounds must increase")
    share = Decimal(repr(q)) if isinstance(q, float) else Decimal(q)
    if not 0 < share <= 1:
        raise ValueError(f"q must be in (0, 1] ({q})")
    if any(count < 0 for count in counts):
        raise ValueError("Histogram counts cannot be negative")
    total = sum(counts)
    if not total:
        return None
    rank = math.ceil(share * total)
    running = 0
    for count, bound in zip(counts, (*bounds, math.inf), strict=True):
        running += count
        if running >= rank:
            return float(bound)
    raise AssertionError("unreachable: the running count ends at the total")


def _micros(span: timedelta) -> int:
    return span // _ONE_MICROSECOND


def _share_quantity(covered: int, period: int) -> Decimal:
    if covered == period:
        return Decimal(1)
    return (Decimal(covered) / period).quantize(_SHARE_PLACES)


def _share_phrase(covered: int, period: int) -> str:
    return f"{(Decimal(covered) * 100 / period).quantize(Decimal('0.01'))} % of the month"


def _ms(seconds: float) -> float:
    # 0.1 s is 100 ms, not 100.00000000000001.
    return seconds if math.isinf(seconds) else float(Decimal(repr(seconds)) * _THOUSAND)


@dataclass(frozen=True, slots=True)
class _Term:
    term: BandTerm
    starts: datetime
    ends: datetime
    covered: int  # microseconds


def _clip(
    starts: datetime | None, ends: datetime | None, start: datetime, end: datetime
) -> tuple[datetime, datetime]:
    # In UTC: Python compares and subtracts two datetimes of the same zone by their wall
    # clocks, so a Berlin 29 March would last 24 hours instead of 23.
    starts = start if starts is None else starts.astimezone(UTC)
    ends = end if ends is None else ends.astimezone(UTC)
    return max(starts, start), min(ends, end)


def _terms(bands: Iterable[BandTerm], start: datetime, end: datetime) -> list[_Term]:
    terms = []
    for band in bands:
        if not isinstance(band, BandTerm):
            raise TypeError(f"bands takes BandTerm, not {type(band).__name__}")
        starts, ends = _clip(band.starts, band.ends, start, end)
        if starts < ends:
            terms.append(_Term(band, starts, ends, _micros(ends - starts)))
    terms.sort(key=lambda t: t.starts)
    for earlier, later in zip(terms, terms[1:], strict=False):
        if later.starts < earlier.ends:
            raise ValueError(
                f"Band terms overlap: {earlier.term.band} until {earlier.ends.isoformat()}, "
                f"{later.term.band} from {later.starts.isoformat()}"
            )
    return terms


def _merge(usage: Iterable[Usage]) -> dict[tuple[str, str, str | None], int]:
    counts: dict[tuple[str, str, str | None], int] = {}
    for row in usage:
        if not isinstance(row, Usage):
            raise TypeError(f"usage takes Usage, not {type(row).__name__}")
        key = (row.grade, row.served_by, row.offload_reason)
        counts[key] = counts.get(key, 0) + row.count
    return counts


def _measured_p95_ms(usage: Sequence[Usage], bounds: Sequence[float]) -> float | None:
    histograms = [row.latency_counts for row in usage if row.latency_counts]
    if not histograms:
        return None
    width = len(bounds) + 1
    for histogram in histograms:
        if len(histogram) != width:
            raise ValueError(
                f"A latency histogram has {len(histogram)} buckets; the bounds give {width}"
            )
    summed = [sum(bucket) for bucket in zip(*histograms, strict=True)]
    p95 = percentile_from_histogram(summed, bounds, SLA_PERCENTILE)
    return None if p95 is None else _ms(p95)


def _per_1000(table: Mapping[str, Decimal], grade: str, what: str) -> Decimal:
    try:
        return table[grade]
    except KeyError:
        raise ValueError(f"{what} has no price for {grade!r}") from None


def _usage_lines(
    counts: Mapping[tuple[str, str, str | None], int],
    *,
    prices: Prices,
    overage: Mapping[str, Decimal] | None,
    band: str | None,
    included: int,
    quality_credit_share: Decimal,
    currency: str,
) -> list[InvoiceLine]:
    """Overage (with a band) or local usage (without), then regional usage and credits."""
    lines: list[InvoiceLine] = []
    overage_of = f"The {band} band's overage" if band else "The band's overage"
    remaining = included
    for grade in GRADES:
        served = counts.get((grade, LOCAL, None), 0)
        if overage is None:
            if served:
                price = prices.per_1000(grade, LOCAL)
                lines.append(
                    InvoiceLine(
                        kind="local_usage",
                        description=f"{grade.capitalize()} inferences served locally, per 1,000",
                        quantity=served,
                        unit_price=price,
                        amount=quantize(served * price / _THOUSAND, currency),
                        grade=grade,
                        serving=LOCAL,
                    )
                )
            continue
        covered = min(served, remaining)
        remaining -= covered
        beyond = served - covered
        if beyond:
            price = _per_1000(overage, grade, overage_of)
            inclusion = f"the {included:,} included" if included else "the band's inclusion"
            lines.append(
                InvoiceLine(
                    kind="overage",
                    description=f"{grade.capitalize()} inferences beyond {inclusion}, per 1,000",
                    quantity=beyond,
                    unit_price=price,
                    amount=quantize(beyond * price / _THOUSAND, currency),
                    grade=grade,
                    serving=LOCAL,
                    band=band,
                )
            )
    for grade in GRADES:
        for reason in (None, *OFFLOAD_REASONS):
            served = counts.get((grade, REGIONAL, reason), 0)
            if not served:
                continue
            regional = prices.per_1000(grade, REGIONAL)
            phrase = _REASON_PHRASES[reason]
            lines.append(
                InvoiceLine(
                    kind="regional_usage",
                    description=f"{grade.capitalize()} inferences {phrase}, per 1,000",
                    quantity=served,
                    unit_price=regional,
                    amount=quantize(served * regional / _THOUSAND, currency),
                    grade=grade,
                    serving=REGIONAL,
                    reason=reason,
                )
            )
            if reason is None:
                continue
            if overage is not None:
                local = _per_1000(overage, grade, overage_of)
            else:
                local = prices.per_1000(grade, LOCAL)
            share = quality_credit_share if reason == TENANT_QUALITY else Decimal(1)
            credit = max(regional - local, Decimal(0)) * share
            amount = quantize(-(served * credit / _THOUSAND), currency)
            if amount:
                lines.append(
                    InvoiceLine(
                        kind="quality_credit",
                        description=(
                            f"Quality credit, {grade} ({phrase}): "
                            f"{(share * 100).normalize():f} % of the regional premium"
                        ),
                        quantity=served,
                        unit_price=-credit,
                        amount=amount,
                        grade=grade,
                        serving=REGIONAL,
                        reason=reason,
                    )
                )
    return lines


def _prorated_line(
    kind: str,
    name: str,
    monthly: Decimal,
    starts: datetime,
    ends: datetime,
    period: int,
    currency: str,
    band: str | None = None,
) -> InvoiceLine:
    covered = _micros(ends - starts)
    whole = covered == period
    return InvoiceLine(
        kind=kind,
        description=name if whole else f"{name}, {_share_phrase(covered, period)}",
        quantity=_share_quantity(covered, period),
        unit_price=monthly,
        amount=quantize(monthly if whole else monthly * covered / period, currency),
        band=band,
        starts=starts,
        ends=ends,
    )


def _sla_credits(
    terms: Sequence[_Term],
    fees: Sequence[InvoiceLine],
    dominant: BandTerm,
    p95_ms: float,
    bounds: Sequence[float],
    currency: str,
) -> list[InvoiceLine]:
    """Each term's share of its own band fee line, the month's p95 having missed the target."""
    if not math.isinf(p95_ms):
        measured = f"{p95_ms:g} ms"
    else:
        measured = f"above {_ms(bounds[-1]):g} ms" if bounds else "above every bucket"
    credits = []
    for t, fee in zip(terms, fees, strict=True):
        percent = t.term.sla_credit_percent
        amount = quantize(-(fee.amount * percent / _HUNDRED), currency)
        if amount:
            credits.append(
                InvoiceLine(
                    kind="sla_credit",
                    description=(
                        f"SLA credit: measured p95 {measured} missed the {dominant.band} "
                        f"target of {dominant.p95_target_ms:g} ms "
                        f"({percent.normalize():f} % of the {t.term.band} band fee)"
                    ),
                    quantity=fee.amount,
                    unit_price=-percent / _HUNDRED,
                    amount=amount,
                    band=t.term.band,
                    starts=t.starts,
                    ends=t.ends,
                )
            )
    return credits


def _addon_lines(
    addons: Iterable[Addon], start: datetime, end: datetime, currency: str
) -> list[InvoiceLine]:
    lines = []
    period = _micros(end - start)
    for addon in addons:
        if not isinstance(addon, Addon):
            raise TypeError(f"addons takes Addon, not {type(addon).__name__}")
        starts, ends = _clip(addon.starts, addon.ends, start, end)
        if starts < ends:
            line = _prorated_line(
                "addon", addon.name, addon.monthly_price, starts, ends, period, currency
            )
            lines.append(line)
    return lines


def _adjustment_lines(
    adjustments: Iterable[LateUsage | Adjustment], quality_credit_share: Decimal, currency: str
) -> list[InvoiceLine]:
    lines: list[InvoiceLine] = []
    for adjustment in adjustments:
        if isinstance(adjustment, LateUsage):
            late = _usage_lines(
                _merge(adjustment.usage),
                prices=adjustment.prices,
                overage=adjustment.overage_per_1000,
                band=None,
                included=adjustment.included_remaining,
                quality_credit_share=quality_credit_share,
                currency=currency,
            )
            lines += [
                replace(
                    line,
                    kind="adjustment",
                    description=f"{line.description} — {adjustment.description}",
                    adjusts=line.kind,
                    period=adjustment.period,
                )
                for line in late
            ]
        elif isinstance(adjustment, Adjustment):
            lines.append(
                InvoiceLine(
                    kind="adjustment",
                    description=adjustment.description,
                    quantity=1,
                    unit_price=adjustment.amount,
                    amount=quantize(adjustment.amount, currency),
                )
            )
        else:
            raise TypeError(
                f"adjustments takes LateUsage or Adjustment, not {type(adjustment).__name__}"
            )
    return lines


# --- rating ---------------------------------------------------------------------------------


def rate(
    *,
    start: datetime,
    end: datetime,
    currency: str,
    usage: Sequence[Usage],
    prices: Prices,
    quality_credit_share: Decimal,
    tax_rate: Decimal,
    tax_name: str,
    bands: Sequence[BandTerm] = (),
    addons: Sequence[Addon] = (),
    adjustments: Sequence[LateUsage | Adjustment] = (),
    bounds: Sequence[float] = (),
) -> RatedInvoice:
    """Rate one tenant's period `[start, end)` (see `month_bounds`) into invoice lines.

    `usage` is the period's aggregates; `bounds` the latency bucket bounds in seconds of their
    histograms (inference.protocol.LATENCY_BOUNDS_S); `quality_credit_share` (0 to 1) the
    share of the premium returned for `tenant_quality` offloads; `tax_rate` (0.19 for 19 %,
    0 for reverse charge) applies to the subtotal of the rounded lines."""
    _aware(start, "start")
    _aware(end, "end")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if not start < end:
        raise ValueError(f"The period must end after it starts ({start} to {end})")
    minor_units(currency)
    credit_share = _bounded(quality_credit_share, "quality_credit_share", Decimal(1))
    _non_negative(tax_rate, "tax_rate")
    usage = tuple(usage)
    with localcontext() as context:
        context.prec = _PRECISION
        period = _micros(end - start)
        terms = _terms(bands, start, end)
        dominant = max(terms, key=lambda t: (t.covered, t.starts)).term if terms else None
        included = sum(t.term.included_inferences * t.covered for t in terms) // period
        fees = [
            _prorated_line(
                "band_fee",
                f"{t.term.band} latency band",
                t.term.monthly_fee,
                t.starts,
                t.ends,
                period,
                currency,
                band=t.term.band,
            )
            for t in terms
        ]
        lines = [
            *fees,
            *_usage_lines(
                _merge(usage),
                prices=prices,
                overage=dominant.overage_per_1000 if dominant else None,
                band=dominant.band if dominant else None,
                included=included,
                quality_credit_share=credit_share,
                currency=currency,
            ),
        ]
        p95_ms = _measured_p95_ms(usage, bounds)
        if dominant is not None and p95_ms is not None and p95_ms > dominant.p95_target_ms:
            lines += _sla_credits(terms, fees, dominant, p95_ms, bounds, currency)
        lines += _addon_lines(addons, start, end, currency)
        lines += _adjustment_lines(adjustments, credit_share, currency)

        lines = [line for line in lines if line.amount or line.quantity]
        subtotal = quantize(sum((line.amount for line in lines), Decimal(0)), currency)
        tax = quantize(subtotal * tax_rate, currency)
        if subtotal or tax:
            lines.append(
                InvoiceLine(
                    kind="tax",
                    description=tax_name,
                    quantity=subtotal,
                    unit_price=tax_rate,
                    amount=tax,
                )
            )
    return RatedInvoice(
        currency=currency.upper(),
        start=start,
        end=end,
        lines=tuple(lines),
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        p95_ms=p95_ms,
        included_inferences=included,
    )
