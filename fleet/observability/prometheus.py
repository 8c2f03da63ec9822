"""The metrics backend for production: a Prometheus server scraping every agent.

The console writes the scrape targets (fleet/observability/targets.py) with the labels
`node`, `region` and `node_class`; the agents label their series by `model`
(inference/metrics.py). A scope becomes range queries of `increase()` over one step, so each
point is the step that ends at it — the same buckets the rollups cut — and the answer is the
same `Frame` the rollups give: the percentiles are then computed by the same code
(fleet/observability/frames.py), not by PromQL's histogram_quantile.

Prometheus has no tenant label (agents never label by tenant: unbounded cardinality), so a
scope grouped or filtered by tenant is answered by the rollups (fleet/observability/__init__.py).
Read with prometheus-api-client; an unreachable server raises MetricsUnavailable, and the
dashboards fall back to the rollups with a notice.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from fleet.observability.frames import ALL, BOUNDS, BUCKETS, Frame, Scope, decumulate

NAME = "prometheus"
TIMEOUT_S = 5
# One quick retry of a refused connection or a 502-504; the client's default (several, with
# backoff) held a page for seconds per query when Prometheus was down.
RETRY = Retry(total=1, backoff_factor=0.1, status_forcelist=(502, 503, 504))

# The label of each dimension on the agents' series (model) or their scrape targets (the rest).
LABELS = {"model": "model", "region": "region", "node_class": "node_class", "node": "node"}
GAUGES = {
    "memory_pressure": "outpost_node_memory_pressure",
    "temperature": "outpost_node_temperature_celsius",
}
DURATION = "outpost_inference_request_duration_seconds_bucket"
REQUESTS = "outpost_inference_requests_total"
ENERGY = "outpost_inference_energy_joules_total"


class MetricsUnavailable(RuntimeError):
    """The metrics store did not answer; says which and why."""


class PrometheusBackend:
    name = NAME

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.client = PrometheusConnect(url=url, disable_ssl=False, timeout=timeout_s, retry=RETRY)

    def supports(self, scope: Scope) -> bool:
        return scope.by != "tenant" and not scope.tenants

    def usage(self, scope: Scope) -> Frame:
        if not self.supports(scope):
            raise MetricsUnavailable("Prometheus has no tenant label; read tenants from rollups")
        frame = Frame(scope=scope, backend=self.name)
        by = _by(scope.by)
        selector = _selector(scope)
        window = _duration(scope.step)

        buckets = self._range(f"sum by (le{by}) (increase({DURATION}{selector}[{window}]))", scope)
        cumulative: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0.0] * BUCKETS)
        for labels, at, value in buckets:
            index = _bucket_index(labels.get("le", ""))
            if index is not None:
                cumulative[(_key(labels, scope), at)][index] = value
        for (key, at), counts in cumulative.items():
            frame.cell(key, at).latency = list(decumulate(counts))

        outcomes = self._range(
            f"sum by (outcome{by}) (increase({REQUESTS}{selector}[{window}]))", scope
        )
        for labels, at, value in outcomes:
            cell = frame.cell(_key(labels, scope), at)
            if labels.get("outcome") == "success":
                cell.count += value
            else:
                cell.errors += value

        group = "" if scope.by == ALL else LABELS[scope.by]
        energy = self._range(
            f"sum by ({group}) (increase({ENERGY}{selector}[{window}]))",
            scope,
            shift=energy_shift(scope.step),
        )
        for labels, at, value in energy:
            frame.cell(_key(labels, scope), at).energy_j += value
        return frame

    def gauge(
        self, scope: Scope, gauge: str, by: str
    ) -> dict[str, list[tuple[datetime, float | None]]]:
        metric = GAUGES[gauge]
        label = LABELS[by]
        query = (
            f"avg by ({label}) (avg_over_time({metric}{_selector(scope, usage=False)}"
            f"[{_duration(scope.step)}]))"
        )
        values: dict[str, dict[datetime, float]] = defaultdict(dict)
        for labels, at, value in self._range(query, scope):
            values[labels.get(label, "")][at] = value
        return {
            key: [(at, points.get(at)) for at in scope.steps()]
            for key, points in sorted(values.items())
        }

    def _range(self, query: str, scope: Scope, *, shift: timedelta = timedelta(0)):
        """(labels, start of the step, value) for every point of a range query whose points
        sit at the END of each step of the scope (later by `shift`)."""
        try:
            result = self.client.custom_query_range(
                query,
                start_time=scope.start + scope.step + shift,
                end_time=scope.end + shift,
                step=_duration(scope.step),
            )
        except (PrometheusApiClientException, requests.RequestException, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} did not answer: {exc}") from exc
        for series in result:
            labels = series.get("metric", {})
            for timestamp, raw in series.get("values", []):
                value = float(raw)
                if value != value:  # NaN: no samples in the step
                    continue
                at = datetime.fromtimestamp(float(timestamp), tz=UTC) - scope.step - shift
                yield labels, at, value


def energy_shift(step: timedelta) -> timedelta:
    """How much later than the step's end its energy is read.

    A node adds a minute's energy to its counter when it folds the minute into usage records,
    a second after the minute ends (inference/usage_meter.py), so the counter jumps right after
    each step boundary. increase() over windows that end on the boundaries would put every jump
    between the last sample of one window and the first of the next, where no window sees it;
    windows shifted by half a step (at most 30 s, two scrapes of Prometheus' default 15 s) hold
    each jump with a sample on both sides, and give the step the energy of its own minutes."""
    return min(step / 2, timedelta(seconds=30))


def _by(dimension: str) -> str:
    return "" if dimension == ALL else f", {LABELS[dimension]}"


def _key(labels: dict, scope: Scope) -> str:
    return ALL if scope.by == ALL else labels.get(LABELS[scope.by], "")


def _selector(scope: Scope, *, usage: bool = True) -> str:
    matchers = []
    for label, values in (
        ("model", scope.models if usage else ()),
        ("region", scope.regions),
        ("node_class", scope.node_classes),
    ):
        if values:
            alternatives = "|".join(re.escape(v) for v in values)
            matchers.append(f'{label}=~"{_escape(alternatives)}"')
    return "{" + ",".join(matchers) + "}" if matchers else ""


def _escape(value: str) -> str:
    """A PromQL string literal's content (backslashes and double quotes escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _duration(step: timedelta) -> str:
    return f"{int(step.total_seconds())}s"


_LE = {repr(float(b)): i for i, b in enumerate(BOUNDS)}


def _bucket_index(le: str) -> int | None:
    if le == "+Inf":
        return len(BOUNDS)
    try:
        return _LE.get(repr(float(le)))
    except ValueError:
        return None
