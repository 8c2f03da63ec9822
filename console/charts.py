"""What the home dashboard shows, from plain data: the status grid and the traffic chart.

The queries are in console.views; the per-minute math is fleet.rates; the figure style is
fleet.charts (shared with the node page). Everything here is pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime

import plotly.graph_objects as go

from fleet import rates
from fleet.charts import requests_figure
from fleet.choices import STATUS_BADGE, NodeClassKind, NodeStatus

# Worst news last would hide it; operators read left to right, healthy first, as Grafana does.
STATUS_ORDER = [NodeStatus.ONLINE, NodeStatus.DEGRADED, NodeStatus.OFFLINE, NodeStatus.PENDING]
_CLASS_ORDER = {kind: index for index, kind in enumerate(NodeClassKind.values)}


@dataclass(frozen=True)
class StatusCell:
    status: NodeStatus
    count: int

    @property
    def badge(self) -> str:
        return STATUS_BADGE[self.status]


@dataclass(frozen=True)
class MatrixRow:
    region: str
    node_class: str
    cells: list[StatusCell]
    total: int

    @property
    def node_class_label(self) -> str:
        # The label the fleet table shows too ("Nano"); the value stays in filter links.
        if self.node_class in NodeClassKind.values:
            return NodeClassKind(self.node_class).label
        return self.node_class


@dataclass(frozen=True)
class StatusMatrix:
    """Nodes counted by region × node class × status, with the totals per status."""

    rows: list[MatrixRow]
    totals: list[StatusCell]
    total: int

    @property
    def statuses(self) -> list[NodeStatus]:
        return STATUS_ORDER


def status_matrix(counts: Iterable[tuple[str, str, str, int]]) -> StatusMatrix:
    """Pivot (region, node class, status, count) rows, as one GROUP BY returns them."""
    grid: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for region, node_class, status, count in counts:
        grid[(region, node_class)][status] += count

    def order(key: tuple[str, str]) -> tuple[str, int, str]:
        region, node_class = key
        return region, _CLASS_ORDER.get(node_class, len(_CLASS_ORDER)), node_class

    rows = [
        MatrixRow(
            region=region,
            node_class=node_class,
            cells=[StatusCell(s, grid[(region, node_class)][s]) for s in STATUS_ORDER],
            total=sum(grid[(region, node_class)].values()),
        )
        for region, node_class in sorted(grid, key=order)
    ]
    totals = [
        StatusCell(s, sum(row.cells[i].count for row in rows)) for i, s in enumerate(STATUS_ORDER)
    ]
    return StatusMatrix(rows=rows, totals=totals, total=sum(row.total for row in rows))


@dataclass(frozen=True)
class Traffic:
    figure: go.Figure
    requests: float  # over the whole window
    start: datetime
    end: datetime


# (node id, region code, when, requests_total): one heartbeat sample with its node's region.
RegionSample = tuple[Hashable, str, datetime, int]


def fleet_traffic(samples: Iterable[RegionSample], start: datetime, end: datetime) -> Traffic:
    """Requests per minute across the fleet and per region, from heartbeat counter samples.

    `requests` counts every request in the window; the chart leaves out minutes no reading
    covers (see fleet.rates.observed).
    """
    readings: list[rates.Sample] = []
    by_region_readings: dict[str, list[rates.Sample]] = defaultdict(list)
    for node_id, region, at, requests_total in samples:
        readings.append((node_id, at, requests_total))
        by_region_readings[region].append((node_id, at, requests_total))

    total = rates.requests_per_minute(readings, start, end)
    shown_total = rates.observed(total, readings)
    by_region = {
        region: rates.observed(rates.requests_per_minute(rows, start, end), rows)
        for region, rows in by_region_readings.items()
    }
    figure = requests_figure(
        shown_total,
        by_region,
        x_range=(start, end),
        total_name="All regions",
        height=320,
        empty=not shown_total,
        empty_text="No node reported in this hour",
    )
    return Traffic(figure=figure, requests=rates.total(total), start=start, end=end)
