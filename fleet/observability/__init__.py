"""One metrics interface, two backends: the console's own rollups, or Prometheus.

`usage(scope)` and `gauge(scope, name, by)` answer from Prometheus when `PROMETHEUS_URL` is set
and the scope is one Prometheus can answer (no tenant grouping or filter: the agents never label
by tenant), else from the rollups. Both return the same shapes (fleet/observability/frames.py),
so the dashboards, the SLO view and the tenant API draw the same charts from either. When
Prometheus does not answer, the answer comes from the rollups and says why (`Answer.notice`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from fleet.observability.frames import Frame, Scope, ScopeError
from fleet.observability.prometheus import MetricsUnavailable, PrometheusBackend
from fleet.observability.rollups import RollupBackend

__all__ = [
    "Answer",
    "MetricsUnavailable",
    "Scope",
    "ScopeError",
    "backend_for",
    "gauge",
    "usage",
]

log = logging.getLogger(__name__)

# After Prometheus fails to answer, this process reads the rollups for this long before
# asking it again, so a page of several charts waits for one timeout, not one per chart.
COOL_DOWN_S = 30.0
_failed: dict[str, tuple[float, str]] = {}  # url -> (monotonic time of the failure, why)


@dataclass(frozen=True)
class Answer:
    frame: Frame
    notice: str = ""


def backend_for(scope: Scope) -> PrometheusBackend | RollupBackend:
    url = getattr(settings, "PROMETHEUS_URL", None)
    if url:
        prometheus = PrometheusBackend(url)
        if prometheus.supports(scope):
            return prometheus
    return RollupBackend()


def _recent_failure(backend) -> str | None:
    if not isinstance(backend, PrometheusBackend):
        return None
    failed = _failed.get(backend.url)
    if failed is None or time.monotonic() - failed[0] > COOL_DOWN_S:
        _failed.pop(backend.url, None)
        return None
    return failed[1]


def _answer(scope: Scope, read, fallback, fallback_name: str):
    """`read(backend)` from the scope's backend, or `fallback()` with a notice saying why."""
    backend = backend_for(scope)
    why = _recent_failure(backend)
    if why is None:
        try:
            return read(backend), ""
        except MetricsUnavailable as exc:
            why = str(exc)
            _failed[backend.url] = (time.monotonic(), why)
            log.warning("%s; answering from %s", why, fallback_name)
    return fallback(), f"{why}. Showing {fallback_name}."


def usage(scope: Scope) -> Answer:
    frame, notice = _answer(
        scope,
        lambda backend: backend.usage(scope),
        lambda: RollupBackend().usage(scope),
        "the console's rollups",
    )
    return Answer(frame, notice)


def gauge(
    scope: Scope, name: str, by: str
) -> tuple[dict[str, list[tuple[datetime, float | None]]], str]:
    """A node gauge per group and step, and a notice when Prometheus failed."""
    return _answer(
        scope,
        lambda backend: backend.gauge(scope, name, by),
        lambda: RollupBackend().gauge(scope, name, by),
        "heartbeat samples",
    )
