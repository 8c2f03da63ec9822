"""A tenant's SLOs per model over a window: the numbers `GET /api/v1/slo` answers
(fleet/slo_api.py) and the portal's SLO page shows (fleet/slo_views.py), built by one function
so that the two can never disagree.

Everything is read through the metrics interface (fleet/observability) with the tenant in the
scope, which makes it answer from the console's rollups: Prometheus has no tenant label, and a
tenant must only ever see its own traffic. The percentiles, error rates and energy per
inference are the interface's (fleet/observability/frames.py, interpolated like Prometheus'
histogram_quantile); the local/regional split, the offload reasons and the tokenisation counts
come from the ledger split (`usage_split`). The band's p95 target is the one of the band the
tenant is on at the end of the window: the page answers "am I meeting what I buy now".

A fixed number of queries whatever the number of models or the window.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

from django.utils import timezone

from billing.models import Subscription, Tenant
from fleet.observability import Answer, usage
from fleet.observability.frames import DEFAULT_RANGE, RANGES, Cell, Frame, Scope
from fleet.observability.rollups import usage_split
from inference import protocol

WINDOWS: tuple[str, ...] = tuple(RANGES)
DEFAULT_WINDOW = DEFAULT_RANGE
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
METRICS: tuple[str, ...] = ("p50", "p95", "p99", "error_rate", "requests")
DEFAULT_METRIC = "p95"
OFFLOAD_REASONS: tuple[str, ...] = get_args(protocol.OffloadReason)
# A regional record without a reason (an older agent): counted, under this name.
UNSPECIFIED_REASON = "unspecified"
# The names models are served under (usage records carry them): catalogue names, and a
# tenant's own as "<tenant>.<model>". Anything else cannot name a model of the ledger.
MODEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")
MAX_MODELS = 20

Point = tuple[datetime, float | None]


class SloError(ValueError):
    """A window, model or metric that cannot be asked for; the message says which and why."""


@dataclass(frozen=True)
class BandTarget:
    band: str
    p95_target_ms: float


@dataclass(frozen=True)
class ModelSlo:
    """One model's (or all models') numbers over the window."""

    model: str
    requests: int
    successful: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    # Against the band's p95 target; None without a band or without successful answers.
    meets_p95_target: bool | None
    slower_than_target: float | None  # the share of successful answers slower than the target
    local: int
    regional: int
    offload_reasons: dict[str, int]  # regional requests per reason, most first
    tokenised: int  # requests whose sensitive fields the node tokenised
    energy_j: float
    energy_per_inference_j: float | None


@dataclass(frozen=True)
class TenantSlo:
    tenant: str
    window: str
    scope: Scope
    target: BandTarget | None
    models: list[ModelSlo]
    total: ModelSlo
    frame: Frame = field(repr=False)
    notice: str = ""

    def series(self, metric: str) -> dict[str, list[Point]]:
        """`metric` at every step of the window, per model (busiest first)."""
        value = _metric(metric)
        return {
            row.model: _points(self.frame.series(row.model, value), metric) for row in self.models
        }

    def total_series(self, metric: str) -> list[Point]:
        """`metric` at every step over all the models together."""
        return _points(self.frame.series(None, _metric(metric)), metric)


def tenant_slo(
    tenant: Tenant,
    window: str = DEFAULT_WINDOW,
    models: Iterable[str] = (),
    *,
    now: datetime | None = None,
) -> TenantSlo:
    """The tenant's SLOs per model over the named window ending now, optionally only for
    `models` (a model the tenant never used, or another tenant's, simply has no numbers)."""
    now = now or timezone.now()
    scope = Scope.last(
        clean_window(window),
        now=now,
        by="model",
        tenants=(tenant.slug,),
        models=clean_models(models),
    )
    answer: Answer = usage(scope)
    splits = _splits(usage_split(scope, "model", "served_by", "offload_reason"))
    target = band_target(tenant, now)
    frame = answer.frame
    names = frame.keys() + sorted(set(splits) - set(frame.cells))
    rows = [
        _model_slo(name, frame.total(name), splits.get(name, _Split()), target) for name in names
    ]
    everything = _Split()
    for split in splits.values():
        everything.add(split)
    return TenantSlo(
        tenant=tenant.slug,
        window=window,
        scope=scope,
        target=target,
        models=rows,
        total=_model_slo("all", frame.total(), everything, target),
        frame=frame,
        notice=answer.notice,
    )


def band_target(tenant: Tenant, at: datetime) -> BandTarget | None:
    """The band the tenant is on at `at` and its p95 target in the tenant's currency."""
    subscription = (
        Subscription.objects.filter(tenant=tenant).current(at).select_related("band").first()
    )
    if subscription is None:
        return None
    terms = subscription.band.terms_at(tenant.currency, at)
    if terms is None:
        return None
    return BandTarget(band=subscription.band.name, p95_target_ms=terms.p95_target_ms)


def clean_window(window: str) -> str:
    if window not in RANGES:
        raise SloError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    return window


def clean_models(models: Iterable[str]) -> tuple[str, ...]:
    """Model names as given (duplicates dropped), refusing what cannot be a served name."""
    names = tuple(dict.fromkeys(m.strip() for m in models if m and m.strip()))
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            raise SloError(
                f"model must be a served model name (letters, digits, '.', '-' and '_', at most "
                f"200 characters), not {name[:60]!r}"
            )
    if len(names) > MAX_MODELS:
        raise SloError(f"ask for at most {MAX_MODELS} models at once, not {len(names)}")
    return names


def clean_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SloError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    return metric


# --- the per-model numbers ----------------------------------------------------------------------


@dataclass
class _Split:
    """One model's requests by serving and offload reason, and its tokenised requests."""

    local: int = 0
    regional: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokenised: int = 0

    def add(self, other: _Split) -> None:
        self.local += other.local
        self.regional += other.regional
        self.tokenised += other.tokenised
        for reason, count in other.reasons.items():
            self.reasons[reason] += count


def _splits(rows: Iterable[dict]) -> dict[str, _Split]:
    splits: dict[str, _Split] = defaultdict(_Split)
    for row in rows:
        split = splits[row["model"]]
        requests = int(row["requests"] or 0)
        split.tokenised += int(row["tokenised_total"] or 0)
        if row["served_by"] == "regional":
            split.regional += requests
            split.reasons[row["offload_reason"] or UNSPECIFIED_REASON] += requests
        else:
            split.local += requests
    return splits


def _model_slo(name: str, cell: Cell, split: _Split, target: BandTarget | None) -> ModelSlo:
    p95_ms = _ms(cell.quantile(0.95))
    meets = None
    slower = None
    if target is not None and p95_ms is not None:
        meets = p95_ms <= target.p95_target_ms
        slower = cell.share_slower_than(target.p95_target_ms / 1000)
    return ModelSlo(
        model=name,
        requests=round(cell.requests),
        successful=round(cell.count),
        errors=round(cell.errors),
        error_rate=cell.error_rate,
        p50_ms=_ms(cell.quantile(0.50)),
        p95_ms=p95_ms,
        p99_ms=_ms(cell.quantile(0.99)),
        meets_p95_target=meets,
        slower_than_target=slower,
        local=split.local,
        regional=split.regional,
        offload_reasons=dict(sorted(split.reasons.items(), key=lambda item: (-item[1], item[0]))),
        tokenised=split.tokenised,
        energy_j=cell.energy_j,
        energy_per_inference_j=cell.energy_per_inference_j,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _metric(metric: str) -> Callable[[Cell], float | None]:
    clean_metric(metric)
    if metric in PERCENTILES:
        q = PERCENTILES[metric]
        return lambda cell: _ms(cell.quantile(q))
    if metric == "error_rate":
        return lambda cell: cell.error_rate
    return lambda cell: cell.requests


def _points(points: list[Point], metric: str) -> list[Point]:
    # A step without requests had none: zero requests, but no percentile or error rate.
    if metric == "requests":
        return [(at, value or 0.0) for at, value in points]
    return points
