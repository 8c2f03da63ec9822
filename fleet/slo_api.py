"""A tenant's SLOs over /api/v1 with its API key: `GET /api/v1/slo` (per model over a window)
and `GET /api/v1/slo/series` (one metric per model at the window's step).

Authenticated and scoped like /api/v1/usage (billing/account_api.py): the key names the
tenant, there is no tenant in the address, and every number comes from that tenant's own
ledger (fleet/tenant_slo.py). A model filter naming another tenant's model answers with no
rows, exactly as a model nobody has, so the API never tells whether it exists.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from billing.auth import ApiKeyAuth
from fleet.tenant_slo import (
    DEFAULT_METRIC,
    DEFAULT_WINDOW,
    ModelSlo,
    SloError,
    TenantSlo,
    tenant_slo,
)
from inference import protocol

slo_router = Router(tags=["slo"], auth=ApiKeyAuth())

Window = Literal["1h", "6h", "24h", "7d", "30d"]
Metric = Literal["p50", "p95", "p99", "error_rate", "requests"]
MODEL_HELP = "Only these models (repeat the parameter for several); default: every model"


class ModelSloOut(Schema):
    model: str = Field(description='The served model name; "all" for the totals')
    requests: int = Field(description="Successful answers and errors")
    successful: int
    errors: int
    error_rate: float | None = Field(description="errors / requests; null without requests")
    p50_ms: float | None
    p95_ms: float | None = Field(
        description="Interpolated inside the histogram bucket, as Prometheus' histogram_quantile "
        "does; null without successful answers"
    )
    p99_ms: float | None
    meets_p95_target: bool | None = Field(description="null without a band or without answers")
    slower_than_target: float | None = Field(
        description="The share of successful answers slower than the band's p95 target"
    )
    local: int = Field(description="Requests served on the node that received them")
    regional: int = Field(description="Requests offloaded to the region's accelerator pool")
    offload_reasons: dict[str, int] = Field(description="Regional requests per offload reason")
    tokenised: int = Field(description="Requests whose sensitive fields were tokenised")
    energy_j: float
    energy_per_inference_j: float | None


class SloOut(Schema):
    tenant: str
    window: Window
    start: datetime = Field(description="The window's start, aligned to its step (UTC)")
    end: datetime
    step_s: int
    band: str | None = Field(description="The latency band the tenant is on now")
    p95_target_ms: float | None
    source: str = Field(description="Where the numbers come from: the console's rollups")
    notice: str
    models: list[ModelSloOut] = Field(description="Busiest first")
    total: ModelSloOut


class PointOut(Schema):
    at: datetime = Field(description="The start of the step (UTC)")
    value: float | None = Field(description="null where the step had no answers to measure")


class ModelSeriesOut(Schema):
    model: str
    points: list[PointOut]


class SeriesOut(Schema):
    tenant: str
    window: Window
    metric: Metric
    unit: str
    start: datetime
    end: datetime
    step_s: int
    band: str | None
    p95_target_ms: float | None
    models: list[ModelSeriesOut] = Field(description="Busiest first")
    total: list[PointOut] = Field(description="All the models together")


UNITS = {"p50": "ms", "p95": "ms", "p99": "ms", "error_rate": "ratio", "requests": "per step"}


@slo_router.get(
    "",
    response={200: SloOut, 400: protocol.ErrorBody, 401: protocol.ErrorBody},
    summary="The key's tenant's SLOs per model over a window: latency, errors, serving, "
    "tokenisation and energy, against its band's p95 target",
)
def get_slo(
    request: HttpRequest,
    window: Window = DEFAULT_WINDOW,
    model: list[str] = Query(default_factory=list, description=MODEL_HELP),  # noqa: B008
):
    report = _report(request, window, model)
    return SloOut(
        **_header(report),
        source=report.frame.backend,
        notice=report.notice,
        models=[_model(row) for row in report.models],
        total=_model(report.total),
    )


@slo_router.get(
    "/series",
    response={200: SeriesOut, 400: protocol.ErrorBody, 401: protocol.ErrorBody},
    summary="One SLO metric of the key's tenant per model at every step of a window",
)
def get_series(
    request: HttpRequest,
    window: Window = DEFAULT_WINDOW,
    metric: Metric = DEFAULT_METRIC,
    model: list[str] = Query(default_factory=list, description=MODEL_HELP),  # noqa: B008
):
    report = _report(request, window, model)
    return SeriesOut(
        **_header(report),
        metric=metric,
        unit=UNITS[metric],
        models=[
            ModelSeriesOut(model=name, points=_points(points))
            for name, points in report.series(metric).items()
        ],
        total=_points(report.total_series(metric)),
    )


def _report(request: HttpRequest, window: str, models: list[str]) -> TenantSlo:
    try:
        return tenant_slo(request.auth.tenant, window, models)
    except SloError as exc:
        raise HttpError(400, str(exc)) from None


def _header(report: TenantSlo) -> dict:
    return {
        "tenant": report.tenant,
        "window": report.window,
        "start": report.scope.start,
        "end": report.scope.end,
        "step_s": int(report.scope.step.total_seconds()),
        "band": report.target.band if report.target else None,
        "p95_target_ms": report.target.p95_target_ms if report.target else None,
    }


def _model(row: ModelSlo) -> ModelSloOut:
    return ModelSloOut(**row.__dict__)


def _points(points) -> list[PointOut]:
    return [PointOut(at=at, value=value) for at, value in points]
