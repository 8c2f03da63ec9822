"""Plotly figures of fleet metrics, built server-side and drawn by the vendored plotly.js.

Figures travel as JSON inside the page (`figure_json`) and console/static/console/console.js
draws them with `Plotly.react`, so a live refresh updates a chart in place. The Python side
never emits plotly's own JavaScript.

These live in fleet, not console, because the node page (fleet.views) draws them and the
import-linter layers forbid fleet from importing console; console/charts.py builds the home
page's figures from these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from django.utils.safestring import SafeString, mark_safe

from fleet import rates

if TYPE_CHECKING:
    from fleet.grading import ClassLatency

Point = tuple[datetime, float | None]

# Bootstrap 5's palette, so the charts sit well beside the badges.
COLOURS = ["#0d6efd", "#198754", "#fd7e14", "#6f42c1", "#20c997", "#d63384", "#6c757d"]
TOTAL_COLOUR = "#212529"

# Characters that could end a <script> element or open a comment inside it; the same escapes
# Django's json_script filter uses. Node and region names are operator input.
_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


def figure_json(fig: go.Figure) -> SafeString:
    """A figure as JSON that is safe inside <script type="application/json">."""
    return mark_safe(fig.to_json().translate(_SCRIPT_ESCAPES))  # noqa: S308 - escaped above


def break_gaps(points: Sequence[Point], max_gap: timedelta) -> list[Point]:
    """Insert an empty point wherever readings are further apart than `max_gap`.

    Plotly joins consecutive points with a line; across a node's silence that line would
    invent data, so a None there makes plotly leave the gap visible.
    """
    result: list[Point] = []
    previous: datetime | None = None
    for at, value in points:
        if previous is not None and at - previous > max_gap:
            result.append((previous + (at - previous) / 2, None))
        result.append((at, value))
        previous = at
    return result


def chart_step(window: timedelta, heartbeat: timedelta, max_points: int = 720) -> timedelta:
    """The resolution at which to draw `window`: every heartbeat, or coarser so that a series
    stays under `max_points` (the node page polls every few seconds; 24 h of 5 s heartbeats
    would be 17,280 points a series)."""
    return max(heartbeat, window / max_points)


def downsample(points: Sequence[Point], step: timedelta) -> list[Point]:
    """The mean of the values in each `step`-long bucket, at the bucket's start.

    Buckets are aligned to the epoch, so the points do not shift between two polls.
    Buckets with only empty values stay empty (None); buckets with no points are left out
    (break_gaps then shows the silence).
    """
    if not points:
        return []
    step_s = step.total_seconds()
    buckets: dict[float, list[float]] = {}
    for at, value in points:
        key = at.timestamp() // step_s * step_s
        values = buckets.setdefault(key, [])
        if value is not None:
            values.append(value)
    zone = points[0][0].tzinfo
    return [
        (datetime.fromtimestamp(key, tz=zone or UTC), sum(vals) / len(vals) if vals else None)
        for key, vals in buckets.items()
    ]


def time_series_figure(
    series: Mapping[str, Sequence[Point]],
    *,
    y_title: str,
    y_format: str = "",
    y_range: tuple[float, float] | None = None,
    x_range: tuple[datetime, datetime] | None = None,
    highlight: str | None = None,
    empty_text: str = "No samples in this range yet",
    empty: bool | None = None,
    height: int = 280,
) -> go.Figure:
    """One line per named series, time on x (UTC). `highlight` names a series drawn bold.

    An empty chart says `empty_text`; it is empty when no point has a value, or when `empty`
    says so (a series of zeros computed from no readings at all is no data, not zero).
    """
    fig = go.Figure(layout=chart_layout(y_title=y_title, y_format=y_format, height=height))
    colours = iter(COLOURS * 10)
    has_points = False
    for name, points in series.items():
        has_points = has_points or any(value is not None for _, value in points)
        bold = name == highlight
        fig.add_trace(
            go.Scatter(
                x=[utc_naive(at) for at, _ in points],
                # Four decimals are more than a chart shows and keep the polled JSON small.
                y=[None if value is None else round(value, 4) for _, value in points],
                name=name,
                mode="lines",
                line={
                    "width": 3 if bold else 1.75,
                    "color": TOTAL_COLOUR if bold else next(colours),
                },
                connectgaps=False,
                # plotly names the series in the unified hover box; the template is the value.
                hovertemplate=f"%{{y:{y_format or ',.2f'}}}",
            )
        )
    if y_range is not None:
        fig.update_yaxes(range=list(y_range), autorange=False)
    if x_range is not None:
        # The whole range asked for, even where there is no data: charts side by side align,
        # and a node that started reporting an hour ago does not look like it always did.
        fig.update_xaxes(range=[utc_naive(moment) for moment in x_range], autorange=False)
    fig.update_layout(showlegend=len(series) > 1)
    if empty if empty is not None else not has_points:
        say_empty(fig, empty_text)
    return fig


def say_empty(fig: go.Figure, text: str) -> None:
    """Write `text` across a chart that has nothing to draw, without axis ticks."""
    fig.add_annotation(
        text=text,
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        font={"size": 14, "color": "#6c757d"},
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)


def requests_figure(
    total: Sequence[Point],
    by_group: Mapping[str, Sequence[Point]] | None = None,
    *,
    total_name: str = "All",
    x_range: tuple[datetime, datetime] | None = None,
    empty: bool = False,
    empty_text: str = "No requests reported in this range",
    height: int = 300,
) -> go.Figure:
    """Requests per minute: the total in bold, and a line per group (e.g. region) if given."""
    series: dict[str, Sequence[Point]] = {}
    if by_group and len(by_group) > 1:
        series[total_name] = total
        series.update(sorted(by_group.items()))
    else:
        # One group is the total again; a second identical line would only add noise.
        series[total_name] = total
    return time_series_figure(
        series,
        y_title="requests / min",
        y_format=",.0f",
        highlight=total_name if len(series) > 1 else None,
        empty_text=empty_text,
        empty=empty,
        x_range=x_range,
        height=height,
    )


def chart_layout(*, y_title: str, y_format: str, height: int) -> go.Layout:
    # template "none" keeps each figure ~1 kB instead of ~7 kB of theme: pages poll often.
    return go.Layout(
        template="none",
        height=height,
        margin={"l": 56, "r": 16, "t": 28, "b": 44},
        font={"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        hovermode="x unified",
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        # A constant uirevision makes Plotly.react keep the user's zoom across refreshes.
        uirevision="keep",
        # Times are UTC (see utc_naive); the cards around the charts say so. Flat, sparse
        # ticks: rotated two-line date labels collide in a half-width card.
        xaxis={
            "type": "date",
            "tickangle": 0,
            "nticks": 7,
            "gridcolor": "#e9ecef",
            "linecolor": "#adb5bd",
        },
        yaxis={
            "title": {"text": y_title},
            "tickformat": y_format,
            "rangemode": "tozero",
            "gridcolor": "#e9ecef",
            "zerolinecolor": "#adb5bd",
        },
    )


def utc_naive(moment: datetime) -> datetime:
    # plotly.js has no time zones: it shows what it is given. The pages say the times are UTC.
    # Whole seconds: heartbeats are seconds apart, and the JSON is shorter.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0)


# The node page's charts, in the order it shows them (templates/fleet/_node_live.html).
NODE_CHART_TITLES = [
    ("cpu", "CPU load"),
    ("memory", "Memory pressure"),
    ("temperature", "Temperature"),
    ("requests", "Requests per minute"),
]

# (when, cpu_load, memory_pressure, temperature_c, requests_total): one NodeSample row.
NodeReading = tuple[datetime, float, float, float | None, int]


def node_figures(
    readings: Sequence[NodeReading],
    *,
    node_id: object,
    since: datetime,
    now: datetime,
    heartbeat: timedelta,
) -> dict[str, go.Figure]:
    """The node page's charts. `readings` are in time order and may start before `since`
    (those anchor the request counter, see fleet.rates) but are not drawn."""
    shown = [reading for reading in readings if reading[0] >= since]
    step = chart_step(now - since, heartbeat)
    # Readings further apart than a few heartbeats (or buckets) mean the node was silent.
    max_gap = max(3 * heartbeat, 1.5 * step)

    def line(index: int) -> list[Point]:
        points = [(reading[0], reading[index]) for reading in shown]
        if step > heartbeat:
            points = downsample(points, step)
        return break_gaps(points, max_gap)

    counter = [(node_id, at, total) for at, _, _, _, total in readings]
    requests = rates.observed(
        rates.requests_per_minute(counter, since, rates.last_complete_minute_end(now, heartbeat)),
        counter,
    )
    x_range = (since, now)
    return {
        "cpu": time_series_figure(
            {"CPU load": line(1)}, y_title="load / core", y_format=".2f", x_range=x_range
        ),
        "memory": time_series_figure(
            {"Memory pressure": line(2)},
            y_title="memory in use",
            y_format=".0%",
            y_range=(0, 1),
            x_range=x_range,
        ),
        "temperature": time_series_figure(
            {"Temperature": line(3)},
            y_title="°C",
            y_format=".0f",
            x_range=x_range,
            empty_text=(
                "This node reports no temperature (no sensor exposed)"
                if shown
                else "No samples in this range yet"
            ),
        ),
        # No minute covered by two readings: nothing is known, which is not zero.
        "requests": requests_figure(
            requests,
            total_name="Requests",
            x_range=x_range,
            empty=not requests,
            empty_text="Not enough heartbeats in this range to count requests",
        ),
    }


# Red for the target line: Bootstrap's danger, the colour of a missed SLO elsewhere.
TARGET_COLOUR = "#dc3545"
# Past this spread between the slowest and fastest bars (and the target), a linear axis would
# draw the fast classes as invisible slivers: the chart switches to a log axis.
_LOG_SPREAD = 50


def target_line(fig: go.Figure, y: float, label: str) -> None:
    """A dashed horizontal line across the plot at `y`, labelled at its right end."""
    fig.add_shape(
        type="line",
        xref="paper",
        x0=0,
        x1=1,
        y0=y,
        y1=y,
        line={"color": TARGET_COLOUR, "width": 1.5, "dash": "dash"},
    )
    fig.add_annotation(
        text=label,
        xref="paper",
        x=1,
        xanchor="right",
        y=y,
        yanchor="bottom",
        showarrow=False,
        font={"color": TARGET_COLOUR},
    )


def grading_figure(
    latencies: Sequence[ClassLatency], target_s: float, chosen: str | None
) -> go.Figure:
    """The model page's grading chart: p50 and p95 per node class in ms, the grade's p95
    target as a line, and the chosen class outlined and labelled (fleet.grading.verdict)."""
    fig = go.Figure(layout=chart_layout(y_title="ms", y_format="", height=280))
    names = [c.node_class for c in latencies]
    target_ms = target_s * 1000
    notes = [
        ", ".join(
            [
                "meets the target" if c.meets_target else "misses the target",
                "fits its memory" if c.fits_memory else "over its memory budget",
            ]
        )
        for c in latencies
    ]
    for label, values, colour in (
        ("p50", [c.p50_s * 1000 for c in latencies], "#9ec5fe"),
        ("p95", [c.p95_s * 1000 for c in latencies], COLOURS[0]),
    ):
        fig.add_trace(
            go.Bar(
                x=names,
                y=[round(v, 4) for v in values],
                name=label,
                customdata=notes,
                hovertemplate=f"{label} %{{y:.3g}} ms<br>%{{customdata}}<extra></extra>",
                marker={
                    "color": colour,
                    # Hatched: the class cannot hold the model, whatever its speed.
                    "pattern": {
                        "shape": ["" if c.fits_memory else "/" for c in latencies],
                        "fgcolor": "#6c757d",
                    },
                    "line": {
                        "color": [TOTAL_COLOUR if n == chosen else colour for n in names],
                        "width": [2.5 if n == chosen else 0 for n in names],
                    },
                },
            )
        )
    target_line(fig, target_ms, f"p95 target {target_ms:.3g} ms")
    fig.update_layout(barmode="group", hovermode="closest", showlegend=True)
    fig.update_xaxes(
        type="category",
        tickvals=names,
        ticktext=[f"<b>{n}</b> (chosen)" if n == chosen else n for n in names],
    )
    # The axis is set by hand so that the target line is always in view (plotly's autorange
    # follows the bars only).
    values = [target_ms] + [v for c in latencies for v in (c.p50_s * 1000, c.p95_s * 1000)]
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > _LOG_SPREAD:
        low, high = math.log10(min(positive) / 2), math.log10(max(positive) * 2)
        fig.update_yaxes(type="log", range=[low, high], title={"text": "ms (log scale)"})
    else:
        fig.update_yaxes(range=[0, max(values) * 1.15])
    if not latencies:
        fig.add_annotation(
            text="No node classes to compare",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            font={"size": 14, "color": "#6c757d"},
        )
    return fig


def drift_figure(
    points: Sequence[tuple[datetime, float | None, int]], threshold: float
) -> go.Figure:
    """A version's PSI per minute against its baseline, with the alert threshold; minutes with
    too few rows to judge are gaps (fleet.drift_actions.series)."""
    fig = go.Figure(layout=chart_layout(y_title="PSI", y_format="", height=240))
    fig.add_trace(
        go.Scatter(
            x=[utc_naive(minute) for minute, _, _ in points],
            y=[None if value is None else round(value, 4) for _, value, _ in points],
            customdata=[rows for _, _, rows in points],
            mode="lines+markers",
            name="PSI",
            line={"color": COLOURS[3]},
            connectgaps=False,
            hovertemplate="PSI %{y:.3f} over %{customdata:,} rows<extra></extra>",
        )
    )
    target_line(fig, threshold, f"alert above {threshold:g}")
    highest = max([threshold] + [v for _, v, _ in points if v is not None])
    fig.update_yaxes(range=[0, highest * 1.2])
    fig.update_layout(showlegend=False)
    return fig


def distribution_figure(labels: Sequence[str], series: Mapping[str, Sequence[float]]) -> go.Figure:
    """Shares of rows per bin (top class, or value range) for the baseline and recent
    minutes, side by side."""
    fig = go.Figure(layout=chart_layout(y_title="share of rows", y_format=".0%", height=240))
    for (name, shares), colour in zip(series.items(), ("#adb5bd", COLOURS[3]), strict=False):
        fig.add_trace(
            go.Bar(
                x=list(labels),
                y=[round(s, 4) for s in shares],
                name=name,
                marker={"color": colour},
                hovertemplate=f"{name}: %{{y:.1%}}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", hovermode="x unified")
    fig.update_xaxes(type="category")
    return fig
