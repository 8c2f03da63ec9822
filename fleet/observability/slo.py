"""The SLO burn-rate view: how fast each latency band spends the error budget of its p95 target
this month, and which bands (and tenants) are at risk.

A p95 target allows 5 % of a month's successful answers to be slower than it: that is the
error budget. Everything below is counted in answers, not in time (a request-based SLO):

- the slow answers of a window are `frames.share_above(target, histogram)` × answers, each
  tenant's answers judged against ITS band's target (the band that decides its SLA credit:
  the dominant subscription of the month, billing/invoicing.py `resolve_terms`); a band pools
  its tenants' counts;
- the burn rate of a window is its share of slow answers over the budget (5 %): at 1 the
  budget lasts exactly the month, at 14.4 two hours spend 2 % of it;
- the month is the UTC calendar month (the operators' view of the whole fleet; each tenant's
  invoice uses its own time zone's month). The month's budget is 5 % of the answers it is on
  course for: the answers so far, extrapolated at their rate to the month's end. Budget
  consumed is the slow answers so far over that budget;
- the projection adds the rest of the month at that traffic rate and the last 6 hours' share
  of slow answers (the month's, when the last 6 hours had too few answers to say);
- the status, in this order: *no data* (no answers this month); *missed*, the budget is spent
  (the month's p95 misses the target even if every answer from now on is fast, unless traffic
  grows beyond its pace); *at risk*, a fast burn (≥ 14.4 over the last hour), a slow burn
  (≥ 6 over the last 6 hours) — Google SRE's multi-window burn-rate alerts — or a projection
  over the budget; *met* otherwise. A window with fewer than 20 answers (1 / budget: fewer,
  and one slow answer is already over 5 %) is not judged on its burn rate.

The p95 a chart shows is interpolated inside its bucket (frames.histogram_quantile); the SLA
credit of billing/rating.py reads the bucket's upper bound instead, so a month whose p95 sits
just under a target here can still earn a credit there when the target is not a bucket bound.

The math is pure over plain data (tally, assess, band_burns); `load` is the one function that
reads the database, in a fixed number of queries whatever the number of bands and tenants.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from billing.invoicing import resolve_terms
from billing.models import BandTerms, LatencyBand, Subscription
from fleet.observability import usage
from fleet.observability.frames import Cell, Frame, Scope

BUDGET = 0.05  # a p95 target: 5 % of the answers may be slower
FAST_BURN = 14.4
FAST_WINDOW = timedelta(hours=1)
SLOW_BURN = 6.0
SLOW_WINDOW = timedelta(hours=6)
MIN_ANSWERS = round(1 / BUDGET)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


class Status(enum.Enum):
    """A band's or tenant's month, from best to worst; the view shows `label` in a badge of
    colour `badge`."""

    NO_DATA = "no_data"
    MET = "met"
    AT_RISK = "at_risk"
    MISSED = "missed"

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]

    @property
    def badge(self) -> str:
        return _STATUS_BADGES[self]

    @property
    def severity(self) -> int:
        return list(Status).index(self)


_STATUS_LABELS = {
    Status.NO_DATA: "No data",
    Status.MET: "Met",
    Status.AT_RISK: "At risk",
    Status.MISSED: "Missed",
}
_STATUS_BADGES = {
    Status.NO_DATA: "secondary",
    Status.MET: "success",
    Status.AT_RISK: "warning",
    Status.MISSED: "danger",
}


# --- the pure part ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """Successful answers in a window, and how many of them were slower than their target."""

    answers: float = 0.0
    slow: float = 0.0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.answers + other.answers, self.slow + other.slow)

    @property
    def share(self) -> float | None:
        return self.slow / self.answers if self.answers > 0 else None

    @property
    def judged(self) -> bool:
        """Enough answers for a burn rate to mean something."""
        return self.answers >= MIN_ANSWERS


def tally(cell: Cell, target_ms: float) -> Tally:
    """A cell's answers against a p95 target (its latency histogram: the successful answers)."""
    answers = float(sum(cell.latency))
    share = cell.share_slower_than(target_ms / 1000)
    # Rounded: share_above's 1 - below/total leaves float dust (9.999… slow answers of 10),
    # which would tip a budget spent to the last answer into "missed".
    return Tally(answers, round(answers * share, 6) if share is not None else 0.0)


def burn_rate(window: Tally) -> float | None:
    """The window's share of slow answers over the budget; None without answers."""
    share = window.share
    return None if share is None else share / BUDGET


@dataclass(frozen=True)
class MonthClock:
    """Where `now` is in its month [start, end)."""

    start: datetime
    end: datetime
    now: datetime

    @classmethod
    def utc(cls, now: datetime) -> MonthClock:
        start, end = utc_month(now)
        return cls(start=start, end=end, now=now)

    @property
    def elapsed(self) -> timedelta:
        return max(self.now - self.start, timedelta(0))

    @property
    def remaining(self) -> timedelta:
        return max(self.end - self.now, timedelta(0))

    @property
    def period(self) -> timedelta:
        return self.end - self.start


def utc_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding `now`, half-open."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    following = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return start, datetime(*following, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Burn:
    """One band's (or tenant's) month so far against its error budget."""

    month: Tally
    last_1h: Tally
    last_6h: Tally
    status: Status
    reason: str
    consumed: float | None  # of the month's budget, 1.0 = all of it
    projected: float | None  # the same at the end of the month, at the current pace
    burn_1h: float | None
    burn_6h: float | None
    p95_ms: float | None = None  # the month so far (interpolated), for reading

    @property
    def fast_burn(self) -> bool:
        return self.last_1h.judged and (self.burn_1h or 0.0) >= FAST_BURN

    @property
    def slow_burn(self) -> bool:
        return self.last_6h.judged and (self.burn_6h or 0.0) >= SLOW_BURN


def assess(
    month: Tally,
    last_1h: Tally,
    last_6h: Tally,
    clock: MonthClock,
    *,
    target: str,
    p95_ms: float | None = None,
) -> Burn:
    """The budget consumed, the burn rates, the projection and the status, with why.
    `target` names the target in the sentence ("the 100 ms target")."""
    burn_1h, burn_6h = burn_rate(last_1h), burn_rate(last_6h)
    if month.answers <= 0:
        return Burn(
            month, last_1h, last_6h, Status.NO_DATA, "No answers this month yet.",
            None, None, burn_1h, burn_6h, p95_ms,
        )  # fmt: skip

    elapsed = clock.elapsed.total_seconds()
    period = clock.period.total_seconds()
    # The answers the month is on course for: so far, at their pace until the month ends.
    # (A month begun a moment ago counts as one second in, so the pace is finite.)
    pace = month.answers / max(elapsed, 1.0)
    future_answers = pace * clock.remaining.total_seconds()
    expected = month.answers + future_answers
    budget = BUDGET * expected
    consumed = month.slow / budget
    recent = last_6h if last_6h.judged else month
    recent_share = recent.share or 0.0
    projected = (month.slow + recent_share * future_answers) / budget
    pace_name = "the last 6 h's" if last_6h.judged else "this month's"

    def hours_left(rate: float) -> str:
        # At burn rate r the budget goes r times faster than the month: (1 - consumed) of it
        # lasts (1 - consumed) × month / r.
        left = (1 - consumed) * period / rate / 3600
        return f"~{left:.0f} h" if left >= 1.5 else f"~{left * 60:.0f} min"

    if month.slow > budget:
        status = Status.MISSED
        reason = (
            f"{month.slow:,.0f} answers this month were slower than {target}: more than the 5 % "
            f"of the ~{expected:,.0f} answers the month is on course for, so its p95 misses "
            "even if every answer from now on is fast."
        )
    elif burn_1h is not None and last_1h.judged and burn_1h >= FAST_BURN:
        status = Status.AT_RISK
        reason = (
            f"Fast burn: {burn_1h:.1f}× the budget over the last hour (alert at {FAST_BURN:g}×); "
            f"at that pace the month's budget is gone in {hours_left(burn_1h)}."
        )
    elif burn_6h is not None and last_6h.judged and burn_6h >= SLOW_BURN:
        status = Status.AT_RISK
        reason = (
            f"Slow burn: {burn_6h:.1f}× the budget over the last 6 h (alert at {SLOW_BURN:g}×); "
            f"at that pace the month's budget is gone in {hours_left(burn_6h)}."
        )
    elif projected > 1:
        status = Status.AT_RISK
        reason = (
            f"{consumed:.0%} of the month's budget spent; at {pace_name} pace the month ends at "
            f"{projected:.0%} of it, and its p95 would miss {target}."
        )
    else:
        status = Status.MET
        reason = (
            f"{consumed:.0%} of the month's budget spent; at {pace_name} pace the month ends at "
            f"{projected:.0%} of it."
        )
    return Burn(
        month, last_1h, last_6h, status, reason, consumed, projected, burn_1h, burn_6h, p95_ms
    )


@dataclass(frozen=True)
class TenantTarget:
    """A tenant, the band that decides its month, and that band's p95 target in its currency."""

    slug: str
    name: str
    band: str  # the band's slug
    target_ms: float


@dataclass(frozen=True)
class BandInfo:
    slug: str
    name: str
    targets_ms: tuple[float, ...]  # its terms' p95 targets in effect now, one per currency


@dataclass(frozen=True)
class TenantBurn:
    tenant: TenantTarget
    burn: Burn


@dataclass(frozen=True)
class BandBurn:
    band: BandInfo
    burn: Burn
    tenants: list[TenantBurn] = field(default_factory=list)

    @property
    def tenants_by_status(self) -> dict[Status, int]:
        counts: dict[Status, int] = defaultdict(int)
        for row in self.tenants:
            counts[row.burn.status] += 1
        return dict(counts)

    @property
    def tenant_summary(self) -> str:
        """E.g. "1 missed, 2 at risk of 5 tenant(s)"; empty when every tenant meets its target."""
        counts = self.tenants_by_status
        parts = [
            f"{counts[status]} {status.label.lower()}"
            for status in (Status.MISSED, Status.AT_RISK)
            if counts.get(status)
        ]
        if not parts:
            return ""
        return f"{', '.join(parts)} of {len(self.tenants)} tenant(s)"


def window_cell(frame: Frame, key: str, since: datetime) -> Cell:
    """One group's cells from `since` (a step start) to the frame's end."""
    summed = Cell()
    for at, cell in frame.cells.get(key, {}).items():
        if at >= since:
            summed.add(cell)
    return summed


def band_burns(
    bands: Sequence[BandInfo],
    tenants: Iterable[TenantTarget],
    month: Frame,
    recent: Frame,
    clock: MonthClock,
) -> list[BandBurn]:
    """Every band's burn, pooled over its tenants, and each tenant's within it, worst first.
    `month` and `recent` are frames grouped by tenant slug: the month so far, and at least
    the last 6 hours in steps that divide an hour (the 1 h window starts on a step)."""
    last_1h_from = recent.scope.bucket_of(clock.now - FAST_WINDOW)
    last_6h_from = recent.scope.bucket_of(clock.now - SLOW_WINDOW)
    by_band: dict[str, list[TenantBurn]] = defaultdict(list)
    pooled: dict[str, list[Cell]] = defaultdict(list)
    for tenant in tenants:
        month_cell = month.total(tenant.slug)
        windows = [
            tally(window_cell(recent, tenant.slug, since), tenant.target_ms)
            for since in (last_1h_from, last_6h_from)
        ]
        burn = assess(
            tally(month_cell, tenant.target_ms),
            *windows,
            clock,
            target=f"its {tenant.target_ms:g} ms target",
            p95_ms=_ms(month_cell.quantile(0.95)),
        )
        by_band[tenant.band].append(TenantBurn(tenant, burn))
        pooled[tenant.band].append(month_cell)

    result = []
    for band in bands:
        rows = by_band.get(band.slug, [])
        month_tally, last_1h, last_6h = Tally(), Tally(), Tally()
        for row in rows:
            month_tally += row.burn.month
            last_1h += row.burn.last_1h
            last_6h += row.burn.last_6h
        histogram = Cell()
        for cell in pooled.get(band.slug, []):
            histogram.add(cell)
        if rows:
            burn = assess(
                month_tally, last_1h, last_6h, clock,
                target=_targets_text(rows), p95_ms=_ms(histogram.quantile(0.95)),
            )  # fmt: skip
        else:
            burn = Burn(
                month_tally, last_1h, last_6h, Status.NO_DATA,
                "No tenant is on this band this month.", None, None, None, None,
            )  # fmt: skip
        rows.sort(key=lambda row: (-row.burn.status.severity, -(row.burn.consumed or 0.0)))
        result.append(BandBurn(band, burn, rows))
    return result


def _targets_text(rows: Sequence[TenantBurn]) -> str:
    targets = sorted({row.tenant.target_ms for row in rows})
    if len(targets) == 1:
        return f"the {targets[0]:g} ms target"
    return "their targets (" + ", ".join(f"{t:g}" for t in targets) + " ms)"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# --- the loader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SloReport:
    clock: MonthClock
    bands: list[BandBurn]
    backend: str
    notice: str

    @property
    def at_risk(self) -> list[BandBurn]:
        return [b for b in self.bands if b.burn.status in (Status.AT_RISK, Status.MISSED)]


def load(
    now: datetime,
    *,
    models: tuple[str, ...] = (),
    tenants: tuple[str, ...] = (),
    regions: tuple[str, ...] = (),
    node_classes: tuple[str, ...] = (),
) -> SloReport:
    """Every band's burn this UTC month up to `now`, the usage narrowed by the filters
    (a tenant filter also keeps only that tenant's band rows). Seven queries: the band terms,
    the bands, the subscriptions, and two reads of the metrics interface (two queries each)."""
    clock = MonthClock.utc(now)
    filters = {
        "models": models,
        "tenants": tenants,
        "regions": regions,
        "node_classes": node_classes,
    }
    terms = list(BandTerms.objects.filter(effective_from__lt=clock.end).order_by("-effective_from"))
    targets = tenant_targets(clock, terms, tenants)
    bands = band_infos(now, terms)
    # The month in hours (the hourly rollups) and the last 6 h in minutes (the ledger), so
    # the 1 h window is exact. Grouped by tenant: always the console's rollups (Prometheus
    # has no tenant label).
    month = usage(
        Scope(
            start=clock.start, end=max(now, clock.start + MINUTE), step=HOUR, by="tenant",
            **filters,
        )
    )  # fmt: skip
    recent = usage(Scope(start=now - SLOW_WINDOW, end=now, step=MINUTE, by="tenant", **filters))
    if tenants:
        kept = {t.band for t in targets}
        bands = [band for band in bands if band.slug in kept]
    return SloReport(
        clock=clock,
        bands=band_burns(bands, targets, month.frame, recent.frame, clock),
        backend=month.frame.backend,
        notice=month.notice or recent.notice,
    )


def band_infos(now: datetime, terms: Iterable[BandTerms]) -> list[BandInfo]:
    """Every band with the p95 targets of its `terms` in effect at `now` (one query)."""
    latest: dict[tuple[int, str], BandTerms] = {}
    for row in terms:
        key = (row.band_id, row.currency)
        if row.effective_from <= now and (
            key not in latest or row.effective_from > latest[key].effective_from
        ):
            latest[key] = row
    per_band: dict[int, set[float]] = defaultdict(set)
    for (band_id, _), row in latest.items():
        per_band[band_id].add(row.p95_target_ms)
    return [
        BandInfo(slug=band.slug, name=band.name, targets_ms=tuple(sorted(per_band[band.pk])))
        for band in LatencyBand.objects.order_by("position", "name")
    ]


def tenant_targets(
    clock: MonthClock, terms: Iterable[BandTerms], tenants: tuple[str, ...] = ()
) -> list[TenantTarget]:
    """Each tenant with a band this month: the band and target that decide its SLA credit
    (`resolve_terms`' dominant term over the UTC month), from the band `terms` and one query
    (the subscriptions)."""
    subscriptions = (
        Subscription.objects.overlapping(clock.start, clock.end)
        .select_related("band", "tenant")
        .order_by("tenant_id", "starts_at", "pk")
    )
    if tenants:
        subscriptions = subscriptions.filter(tenant__slug__in=tenants)
    by_tenant: dict[int, list[Subscription]] = defaultdict(list)
    for sub in subscriptions:
        by_tenant[sub.tenant_id].append(sub)
    newest_first: dict[tuple[int, str], list[BandTerms]] = defaultdict(list)
    for row in sorted(terms, key=lambda row: row.effective_from, reverse=True):
        newest_first[(row.band_id, row.currency)].append(row)

    def terms_at(sub: Subscription, at: datetime) -> BandTerms | None:
        # The newest terms in effect at `at` (LatencyBand.terms_at over the fetched rows).
        for row in newest_first.get((sub.band_id, sub.tenant.currency), ()):
            if row.effective_from <= at:
                return row
        return None

    result = []
    for subs in by_tenant.values():
        tenant = subs[0].tenant
        month = resolve_terms(
            tenant, clock.start, clock.end,
            subscriptions=subs, band_terms_at=terms_at,
            activations=(), addon_price_at=lambda activation, at: None, tax=None,
        )  # fmt: skip
        if month.p95_target_ms is None:
            continue  # no terms in its currency: no target to hold it to
        # resolve_terms names the dominant band; the latest of the tenant's subscriptions to
        # a band of that name is the one it means.
        band = next(s.band for s in reversed(subs) if s.band.name == month.band_label)
        result.append(
            TenantTarget(
                slug=tenant.slug, name=tenant.name, band=band.slug, target_ms=month.p95_target_ms
            )
        )
    return sorted(result, key=lambda t: t.slug)
