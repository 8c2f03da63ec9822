"""The operator dashboards' figures (fleet/dashboard_views.py), built server-side from the
metrics interface's frames (fleet/observability) and drawn by console.js like every other
chart: fleet/charts.py's layout, palette and JSON.

Target lines (a band's p95 target, a class's thermal envelope) are drawn as dashed traces
rather than shapes, so they are named in the legend and kept in view by plotly's autorange,
on a log axis too. A chart whose values and targets span more than `LOG_SPREAD` switches to a
log axis: a 250 ms target beside 1 ms answers would otherwise flatten every line to zero.

Also here: the thermal forecast the resources page draws (`throttle_forecast`), pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import plotly.graph_objects as go

from fleet.charts import (
    COLOURS,
    TARGET_COLOUR,
    chart_layout,
    say_empty,
    time_series_figure,
    utc_naive,
)
from fleet.observability.frames import Cell, Frame
from inference.enforcement import ThermalTrend
from inference.policy import PREDICT_S

Point = tuple[datetime, float | None]
Series = Mapping[str, Sequence[Point]]

# Lines a chart draws at most: the busiest groups (Frame.keys()); the filters narrow the rest.
MAX_LINES = 10
LOG_SPREAD = 50
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
TARGET_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
REASON_COLOURS = {
    "thermal": "#dc3545",
    "capacity": COLOURS[2],
    "model_not_local": COLOURS[0],
    "tenant_quality": COLOURS[3],
    "cost": COLOURS[1],
    "unspecified": COLOURS[6],
}


@dataclass(frozen=True)
class Target:
    """A horizontal line: a band's p95 target, a class's thermal envelope."""

    label: str
    value: float


def frame_series(frame: Frame, value: Callable[[Cell], float | None]) -> dict[str, list[Point]]:
    """`value` of each of the busiest groups' cells at every step of the frame's window."""
    return {key: frame.series(key, value) for key in frame.keys()[:MAX_LINES]}


def _window(frame: Frame) -> tuple[datetime, datetime]:
    return frame.scope.start, frame.scope.end


def percentile_figure(
    frame: Frame, q: float, *, targets: Sequence[Target] = (), height: int = 300
) -> go.Figure:
    """The q-quantile of each group's latency per step, in ms, with the targets as lines."""

    def quantile_ms(cell: Cell) -> float | None:
        seconds = cell.quantile(q)
        return None if seconds is None else seconds * 1000

    series = frame_series(frame, quantile_ms)
    fig = time_series_figure(
        series,
        y_title="ms",
        y_format=",.3g",
        x_range=_window(frame),
        empty_text="No answers in this range",
        height=height,
    )
    add_targets(fig, targets, _window(frame), unit="ms")
    _fit_axis(fig, [v for points in series.values() for _, v in points], targets, title="ms")
    return fig


def error_rate_figure(frame: Frame) -> go.Figure:
    """Tail errors: the share of each group's requests that failed, per step."""
    return time_series_figure(
        frame_series(frame, lambda cell: cell.error_rate),
        y_title="errors / requests",
        y_format=".1%",
        x_range=_window(frame),
        empty_text="No requests in this range",
    )


def requests_figure(frame: Frame) -> go.Figure:
    """Requests (answers and errors) per minute of each group."""
    per_minute = frame.scope.step / timedelta(minutes=1)
    return time_series_figure(
        frame_series(frame, lambda cell: cell.requests / per_minute),
        y_title="requests / min",
        y_format=",.1f",
        x_range=_window(frame),
        empty_text="No requests in this range",
    )


def energy_figure(frame: Frame) -> go.Figure:
    """Joules per inference (answers and errors) of each group, per step."""
    return time_series_figure(
        frame_series(frame, lambda cell: cell.energy_per_inference_j),
        y_title="J / inference",
        y_format=",.3g",
        x_range=_window(frame),
        empty_text="No requests in this range",
    )


def gauge_figure(
    series: Series,
    *,
    window: tuple[datetime, datetime],
    y_title: str,
    y_format: str,
    y_range: tuple[float, float] | None = None,
    targets: Sequence[Target] = (),
    unit: str = "",
) -> go.Figure:
    """A node gauge per group (fleet.observability.gauge): the first MAX_LINES groups in the
    order given, with optional target lines."""
    shown = dict(list(series.items())[:MAX_LINES])
    fig = time_series_figure(
        shown,
        y_title=y_title,
        y_format=y_format,
        y_range=y_range,
        x_range=window,
        empty_text="No heartbeats in this range",
    )
    add_targets(fig, targets, window, unit=unit)
    return fig


def counts_figure(
    series: Series, *, window: tuple[datetime, datetime], step: timedelta, colours=None
) -> go.Figure:
    """Counts per step (e.g. regional answers per offload reason) as stacked bars, per
    minute so that the ranges read alike."""
    per_minute = step / timedelta(minutes=1)
    fig = go.Figure(layout=chart_layout(y_title="answers / min", y_format=",.1f", height=300))
    palette = iter(COLOURS * 10)
    has_points = False
    for name, points in series.items():
        values = [None if v is None else round(v / per_minute, 4) for _, v in points]
        has_points = has_points or any(values)
        fig.add_trace(
            go.Bar(
                x=[utc_naive(at) for at, _ in points],
                y=values,
                name=name,
                marker={"color": (colours or {}).get(name) or next(palette)},
                hovertemplate="%{y:,.1f}",
            )
        )
    fig.update_layout(barmode="stack", showlegend=True, bargap=0.1)
    fig.update_xaxes(range=[utc_naive(moment) for moment in window], autorange=False)
    if not has_points:
        say_empty(fig, "No offloads in this range")
    return fig


def drift_versions_figure(rows: Sequence[tuple[str, float | None, bool]], threshold: float):
    """Each version's latest PSI (fleet.drift_actions.check_version), red when its drift alert
    is open, with the alert threshold; versions never measured are left out."""
    measured = [(label, psi, alerted) for label, psi, alerted in rows if psi is not None]
    fig = go.Figure(layout=chart_layout(y_title="PSI", y_format="", height=300))
    fig.add_trace(
        go.Bar(
            x=[label for label, _, _ in measured],
            y=[round(psi, 4) for _, psi, _ in measured],
            marker={"color": [TARGET_COLOUR if a else COLOURS[3] for _, _, a in measured]},
            customdata=["drift alert open" if a else "no open alert" for _, _, a in measured],
            hovertemplate="PSI %{y:.3f} · %{customdata}<extra></extra>",
            name="latest PSI",
        )
    )
    fig.add_hline(
        y=threshold,
        line={"color": TARGET_COLOUR, "width": 1.5, "dash": "dash"},
        annotation={"text": f"alert above {threshold:g}", "font": {"color": TARGET_COLOUR}},
        annotation_position="top right",
    )
    highest = max([threshold] + [psi for _, psi, _ in measured])
    fig.update_yaxes(range=[0, highest * 1.2])
    fig.update_xaxes(type="category")
    fig.update_layout(showlegend=False, hovermode="closest")
    if not measured:
        say_empty(fig, "No version has been measured for drift yet")
    return fig


def add_targets(
    fig: go.Figure, targets: Sequence[Target], window: tuple[datetime, datetime], *, unit: str
) -> None:
    """Each target as a dashed red line across the window, labelled at its right end."""
    start, end = (utc_naive(moment) for moment in window)
    for target, dash in zip(targets, TARGET_DASHES * 10, strict=False):
        fig.add_trace(
            go.Scatter(
                x=[start, end],
                y=[target.value, target.value],
                mode="lines+text",
                text=["", target.label],
                textposition="top left",
                textfont={"color": TARGET_COLOUR, "size": 11},
                line={"color": TARGET_COLOUR, "width": 1.5, "dash": dash},
                name=target.label,
                hovertemplate=f"{target.label}<extra></extra>",
                showlegend=False,
            )
        )
    if targets:
        fig.update_layout(showlegend=True)


def _fit_axis(
    fig: go.Figure, values: Sequence[float | None], targets: Sequence[Target], *, title: str
) -> None:
    """A log axis when the values and targets span more than LOG_SPREAD."""
    positive = [v for v in values if v is not None and v > 0] + [
        t.value for t in targets if t.value > 0
    ]
    if positive and max(positive) / min(positive) > LOG_SPREAD:
        low, high = math.log10(min(positive) / 2), math.log10(max(positive) * 2)
        fig.update_yaxes(
            type="log", range=[low, high], autorange=False, title={"text": f"{title} (log scale)"}
        )


# --- thermal forecast -------------------------------------------------------------------------

# The readings the trend is fitted on. The node's own predictive rule uses its last minute
# (inference/enforcement.py ThermalTrend); the console sees a heartbeat every few seconds, so
# two minutes hold enough readings for a steady slope.
FORECAST_WINDOW = timedelta(minutes=2)
# Further ahead than this, a linear trend says little: "not within the hour".
FORECAST_HORIZON = timedelta(hours=1)


@dataclass(frozen=True)
class Forecast:
    """A node's temperature now, its trend, and when it reaches its class's envelope."""

    temperature_c: float | None
    envelope_c: float | None
    slope_c_per_min: float | None
    minutes_to_envelope: float | None
    # "throttling", "shedding", "heating", "steady", "no_envelope", "no_sensor" or "silent"
    state: str
    text: str

    @property
    def label(self) -> str:
        return self.state.replace("_", " ").capitalize()

    @property
    def badge(self) -> str:
        return {
            "throttling": "danger",
            "shedding": "warning",
            "heating": "warning",
        }.get(self.state, "light")

    @property
    def urgency(self) -> float:
        """Sorts the thermal table: throttling first, then the soonest to throttle."""
        if self.state == "throttling":
            return -1.0
        if self.minutes_to_envelope is not None:
            return self.minutes_to_envelope
        return math.inf


def throttle_forecast(
    readings: Sequence[tuple[datetime, float | None]], envelope_c: float | None, *, now: datetime
) -> Forecast:
    """Where a node's temperature is heading: a least-squares line through its heartbeats'
    readings of the last FORECAST_WINDOW (the same fit as the node's ThermalTrend; None where
    a heartbeat carried no temperature), extrapolated to its envelope. At or over the envelope
    the node offloads everything (`thermal`); within the node's own prediction horizon
    (inference.policy.PREDICT_S) it already sheds best-effort traffic."""
    heard = [(at, t) for at, t in readings if at >= now - FORECAST_WINDOW]
    if not heard:
        minutes = FORECAST_WINDOW.total_seconds() / 60
        return Forecast(
            None, envelope_c, None, None, "silent", f"No heartbeat in the last {minutes:g} min."
        )
    recent = [(at, t) for at, t in heard if t is not None]
    if not recent:
        return Forecast(
            None, envelope_c, None, None, "no_sensor",
            "Reports no temperature (no sensor exposed).",
        )  # fmt: skip
    trend = ThermalTrend(window_s=FORECAST_WINDOW.total_seconds(), max_samples=len(recent))
    for at, temperature in sorted(recent):
        trend.add(at.timestamp(), temperature)
    latest = trend.latest
    slope = trend.slope() * 60
    if envelope_c is None:
        return Forecast(latest, None, slope, None, "no_envelope", "Its class has no envelope.")
    if latest >= envelope_c:
        return Forecast(
            latest, envelope_c, slope, 0.0, "throttling",
            f"Over its {envelope_c:g} °C envelope: offloading its traffic now.",
        )  # fmt: skip
    if slope <= 0:
        return Forecast(
            latest, envelope_c, slope, None, "steady",
            f"{envelope_c - latest:.0f} °C under its envelope and not heating.",
        )  # fmt: skip
    minutes = (envelope_c - latest) / slope
    if minutes * 60 <= PREDICT_S:
        return Forecast(
            latest, envelope_c, slope, minutes, "shedding",
            f"Reaches {envelope_c:g} °C within {PREDICT_S:g} s: shedding best-effort traffic.",
        )  # fmt: skip
    if timedelta(minutes=minutes) > FORECAST_HORIZON:
        return Forecast(
            latest, envelope_c, slope, minutes, "steady",
            f"Heating {slope:.2g} °C/min: not at its envelope within the hour.",
        )  # fmt: skip
    return Forecast(
        latest, envelope_c, slope, minutes, "heating",
        f"Throttles in ~{max(minutes, 1):.0f} min at {slope:.2g} °C/min.",
    )  # fmt: skip
