"""The portal SLO page's figures (templates/portal/_slo_live.html), from a tenant's SLO
report (fleet/tenant_slo.py): latency percentiles per model against the band's target, the
error rate, where requests were served and why they went regional, and tokenisation.

Drawn in the style of every other chart (fleet/charts.py: its layout, palette and target
line), so the portal's charts look like the console's.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from fleet.charts import (
    COLOURS,
    chart_layout,
    say_empty,
    target_line,
    time_series_figure,
    utc_naive,
)
from fleet.tenant_slo import OFFLOAD_REASONS, UNSPECIFIED_REASON, ModelSlo, TenantSlo

# The page's charts, in the order it shows them.
SLO_CHART_TITLES = [
    ("latency", "Latency: p50 · p95 · p99"),
    ("errors", "Error rate"),
    ("serving", "Where requests were served, and why regional"),
    ("tokenised", "Requests with sensitive fields tokenised"),
]
# p95 is what the band promises: solid; the other two are drawn lighter.
PERCENTILE_DASH = {"p50": "dot", "p95": "solid", "p99": "dash"}
LOCAL_COLOUR = COLOURS[0]
REASON_COLOURS = dict(zip(OFFLOAD_REASONS, COLOURS[1:], strict=False))
EMPTY_TEXT = "No requests in this window"


def slo_figures(report: TenantSlo) -> dict[str, go.Figure]:
    return {
        "latency": latency_figure(report),
        "errors": error_rate_figure(report),
        "serving": serving_figure(report.models),
        "tokenised": tokenised_figure(report.models),
    }


def latency_figure(report: TenantSlo) -> go.Figure:
    """p50, p95 and p99 per model over time (one colour per model, one dash per percentile),
    with the band's p95 target as a line."""
    fig = go.Figure(layout=chart_layout(y_title="ms", y_format="", height=320))
    has_points = False
    highest = report.target.p95_target_ms if report.target else 0.0
    series = {name: report.series(name) for name in PERCENTILE_DASH}
    for index, row in enumerate(report.models):
        colour = COLOURS[index % len(COLOURS)]
        for name, dash in PERCENTILE_DASH.items():
            points = series[name][row.model]
            values = [value for _, value in points if value is not None]
            has_points = has_points or bool(values)
            highest = max([highest, *values])
            fig.add_trace(
                go.Scatter(
                    x=[utc_naive(at) for at, _ in points],
                    y=[None if value is None else round(value, 4) for _, value in points],
                    name=f"{row.model} {name}",
                    legendgroup=row.model,
                    mode="lines",
                    line={"color": colour, "dash": dash, "width": 2.25 if name == "p95" else 1.25},
                    connectgaps=False,
                    hovertemplate="%{y:,.3g} ms",
                )
            )
    if report.target is not None:
        target = report.target
        target_line(
            fig, target.p95_target_ms, f"{target.band} p95 target {target.p95_target_ms:g} ms"
        )
        # The target stays in view even when every model is far below it.
        fig.update_yaxes(range=[0, highest * 1.15])
    _window(fig, report)
    if not has_points:
        say_empty(fig, EMPTY_TEXT)
    return fig


def error_rate_figure(report: TenantSlo) -> go.Figure:
    series = report.series("error_rate")
    return time_series_figure(
        series,
        y_title="errors / requests",
        y_format=".1%",
        x_range=(report.scope.start, report.scope.end),
        empty_text=EMPTY_TEXT,
        empty=not report.models,
        height=260,
    )


def serving_figure(rows: Sequence[ModelSlo]) -> go.Figure:
    """Per model, the local requests and the regional ones stacked by offload reason."""
    fig = go.Figure(layout=chart_layout(y_title="requests", y_format=",.0f", height=280))
    models = [row.model for row in rows]
    fig.add_trace(_bar("local", models, [row.local for row in rows], LOCAL_COLOUR))
    reasons = [*OFFLOAD_REASONS, UNSPECIFIED_REASON]
    for reason in reasons:
        counts = [row.offload_reasons.get(reason, 0) for row in rows]
        if any(counts):
            colour = REASON_COLOURS.get(reason, COLOURS[-1])
            fig.add_trace(_bar(f"regional: {reason}", models, counts, colour))
    fig.update_layout(barmode="stack", hovermode="x unified")
    fig.update_xaxes(type="category")
    if not rows:
        say_empty(fig, EMPTY_TEXT)
    return fig


def tokenised_figure(rows: Sequence[ModelSlo]) -> go.Figure:
    """Per model, the requests whose sensitive fields were tokenised, beside all requests."""
    fig = go.Figure(layout=chart_layout(y_title="requests", y_format=",.0f", height=280))
    models = [row.model for row in rows]
    fig.add_trace(_bar("all requests", models, [row.requests for row in rows], "#adb5bd"))
    fig.add_trace(_bar("tokenised", models, [row.tokenised for row in rows], COLOURS[3]))
    fig.update_layout(barmode="group", hovermode="x unified")
    fig.update_xaxes(type="category")
    if not rows:
        say_empty(fig, EMPTY_TEXT)
    return fig


def _bar(name: str, x: list[str], y: list[int], colour: str) -> go.Bar:
    return go.Bar(
        x=x,
        y=y,
        name=name,
        marker={"color": colour},
        hovertemplate=f"{name}: %{{y:,}}<extra></extra>",
    )


def _window(fig: go.Figure, report: TenantSlo) -> None:
    # The whole window even where there is no data, so the charts side by side align.
    fig.update_xaxes(range=[utc_naive(report.scope.start), utc_naive(report.scope.end)])
    fig.update_layout(showlegend=True)
