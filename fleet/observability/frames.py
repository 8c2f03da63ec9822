"""The metrics interface's plain data: what is asked (`Scope`) and what comes back (`Frame`).

Both backends (fleet/observability/rollups.py, the console's own usage rollups, and
fleet/observability/prometheus.py, a Prometheus server scraping the agents) answer a scope
with the same frame: per group (a model, tenant, region or node class) and per time step,
the answered inferences, the errors, the latency histogram over `protocol.LATENCY_BOUNDS_S`
and the energy. Every number a chart shows — percentiles, error rate, energy per inference,
the share of answers slower than a band's target — is computed here from a frame, by the same
code whatever the backend, so the two can only differ by what they were fed.

Percentiles are interpolated inside the bucket exactly as Prometheus' `histogram_quantile`
does, so a p95 read from the rollups and one PromQL computes agree within the bucket they fall
in. (The SLA credit of billing/rating.py reads the bucket's upper bound instead: a contract
errs on the tenant's side; a chart shows the best estimate.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from inference import protocol

BOUNDS: tuple[float, ...] = tuple(protocol.LATENCY_BOUNDS_S)
BUCKETS = len(BOUNDS) + 1  # the last is +Inf

Dimension = Literal["model", "tenant", "region", "node_class", "all"]
DIMENSIONS: tuple[Dimension, ...] = ("model", "tenant", "region", "node_class", "all")
ALL = "all"  # the key of the single group when a scope is not grouped

# The time ranges the dashboards offer, and the step each is drawn at (about 60-180 points).
RANGES: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "6h": (timedelta(hours=6), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(minutes=15)),
    "7d": (timedelta(days=7), timedelta(hours=1)),
    "30d": (timedelta(days=30), timedelta(hours=6)),
}
DEFAULT_RANGE = "6h"


class ScopeError(ValueError):
    """A scope that cannot be answered (an unknown dimension, a reversed window...)."""


@dataclass(frozen=True)
class Scope:
    """What to read: a window cut into steps, grouped by one dimension, optionally filtered.

    Filters are tuples of identifiers (model names, tenant slugs, region codes, class names);
    empty means all. `start` is aligned down to the step so that refreshes reuse the buckets.
    """

    start: datetime
    end: datetime
    step: timedelta
    by: Dimension = ALL
    models: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    node_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.by not in DIMENSIONS:
            raise ScopeError(f"cannot group by {self.by!r}; choose one of {', '.join(DIMENSIONS)}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ScopeError("a scope's start and end must be aware datetimes")
        if self.step <= timedelta(0):
            raise ScopeError("the step must be positive")
        if self.end <= self.start:
            raise ScopeError("the window ends before it starts")
        object.__setattr__(self, "start", align(self.start.astimezone(UTC), self.step))
        object.__setattr__(self, "end", self.end.astimezone(UTC))

    @classmethod
    def last(cls, range_name: str, *, now: datetime, **kwargs) -> Scope:
        """The named range (RANGES) ending now."""
        try:
            span, step = RANGES[range_name]
        except KeyError:
            raise ScopeError(
                f"unknown range {range_name!r}; choose one of {', '.join(RANGES)}"
            ) from None
        return cls(start=now - span, end=now, step=step, **kwargs)

    def steps(self) -> list[datetime]:
        """The start of every step in the window."""
        moments = []
        moment = self.start
        while moment < self.end:
            moments.append(moment)
            moment += self.step
        return moments

    def bucket_of(self, moment: datetime) -> datetime:
        return self.start + self.step * ((moment - self.start) // self.step)


def align(moment: datetime, step: timedelta) -> datetime:
    """`moment` rounded down to a multiple of `step` since the epoch (UTC)."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + step * ((moment - epoch) // step)


@dataclass
class Cell:
    """One group's answers in one step (or a whole window): floats because Prometheus'
    `increase()` extrapolates."""

    count: float = 0.0  # answered successfully: the billable count
    errors: float = 0.0
    latency: list[float] = field(default_factory=lambda: [0.0] * BUCKETS)
    energy_j: float = 0.0

    def add(self, other: Cell) -> None:
        self.count += other.count
        self.errors += other.errors
        self.energy_j += other.energy_j
        for i, value in enumerate(other.latency):
            self.latency[i] += value

    @property
    def requests(self) -> float:
        return self.count + self.errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def energy_per_inference_j(self) -> float | None:
        return self.energy_j / self.requests if self.requests else None

    def quantile(self, q: float) -> float | None:
        """Seconds; None without successful answers."""
        return histogram_quantile(q, self.latency)

    def share_slower_than(self, seconds: float) -> float | None:
        """The share of successful answers slower than `seconds` (None without answers)."""
        return share_above(seconds, self.latency)


@dataclass
class Frame:
    """A scope's answer: cells per group and step. Groups without data are absent."""

    scope: Scope
    backend: str
    cells: dict[str, dict[datetime, Cell]] = field(default_factory=dict)

    def cell(self, key: str, at: datetime) -> Cell:
        row = self.cells.setdefault(key, {})
        cell = row.get(at)
        if cell is None:
            cell = row[at] = Cell()
        return cell

    def keys(self) -> list[str]:
        """Groups, busiest first (then by name), so charts give the big ones the first colours."""
        totals = {key: self.total(key).requests for key in self.cells}
        return sorted(totals, key=lambda key: (-totals[key], key))

    def total(self, key: str | None = None) -> Cell:
        """One group's cells over the whole window (every group's, when key is None)."""
        summed = Cell()
        rows = [self.cells.get(key, {})] if key is not None else self.cells.values()
        for row in rows:
            for cell in row.values():
                summed.add(cell)
        return summed

    def series(self, key: str | None, value) -> list[tuple[datetime, float | None]]:
        """`value(cell)` at every step of the window (None where the group had no answers);
        every group's cells summed per step when key is None."""
        if key is None:
            row: dict[datetime, Cell] = {}
            for cells in self.cells.values():
                for at, cell in cells.items():
                    row.setdefault(at, Cell()).add(cell)
        else:
            row = self.cells.get(key, {})
        points = []
        for at in self.scope.steps():
            cell = row.get(at)
            points.append((at, value(cell) if cell is not None and cell.requests else None))
        return points


def histogram_quantile(q: float, counts: Sequence[float]) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram over BOUNDS, as Prometheus computes it.

    Linear interpolation inside the bucket holding the rank; the first bucket starts at 0;
    a rank in the open +Inf bucket reads the highest finite bound (Prometheus' rule).
    """
    if not 0 < q < 1:
        raise ValueError("q must be between 0 and 1")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if i == len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return lower + (BOUNDS[i] - lower) * (rank - seen) / count
        seen += count
    return BOUNDS[-1]


def share_above(seconds: float, counts: Sequence[float]) -> float | None:
    """The share of a histogram's observations above `seconds`, interpolating inside the
    bucket `seconds` falls in (the same assumption as histogram_quantile: uniform inside a
    bucket). The open bucket counts as above any finite target beyond the last bound."""
    total = sum(counts)
    if total <= 0:
        return None
    below = 0.0
    for i, count in enumerate(counts):
        lower = BOUNDS[i - 1] if i else 0.0
        upper = BOUNDS[i] if i < len(BOUNDS) else math.inf
        if upper <= seconds:
            below += count
        elif lower < seconds and upper != math.inf:
            below += count * (seconds - lower) / (upper - lower)
    return max(0.0, 1.0 - below / total)


def cell_from_counts(
    count: float, errors: float, latency: Iterable[float], energy_j: float
) -> Cell:
    latency = [float(v) for v in latency]
    if len(latency) != BUCKETS:
        raise ValueError(f"a latency histogram has {BUCKETS} buckets, got {len(latency)}")
    return Cell(count=float(count), errors=float(errors), latency=latency, energy_j=energy_j)


def decumulate(cumulative: Sequence[float]) -> Iterator[float]:
    """Per-bucket counts from Prometheus' cumulative `le` buckets (clamped at 0: increase()
    extrapolates each series on its own, so neighbours can cross by a hair)."""
    previous = 0.0
    for value in cumulative:
        yield max(0.0, value - previous)
        previous = max(previous, value)
