"""What the operator dashboards read besides the metrics interface (fleet/dashboard_views.py):
the thermal forecast of every node, offloads from the ledger, drift per version. Each function
runs a fixed number of queries whatever the number of nodes, groups or versions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from django.db.models import Count, F, Q, Sum

from fleet import dashboard_charts as charts
from fleet.models import DriftAlert, ModelVersion, Node, NodeSample
from fleet.observability.frames import ALL, Scope
from fleet.observability.rollups import USAGE_KEYS, ledger, usage_split

REGIONAL = "regional"
UNSPECIFIED = "unspecified"
DRIFT_ALERTS_SHOWN = 20


def shown(value: float | None, pattern: str) -> str:
    """A number in `pattern`, or a dash where there is none (no answers in the range)."""
    return "—" if value is None else pattern.format(value)


def thermal_table(scope: Scope, now: datetime) -> list[dict]:
    """Every node of the scope's regions and classes with its forecast, the most urgent
    first: two queries (the nodes, and every node's readings of the forecast window)."""
    nodes = Node.objects.select_related("node_class", "region").order_by("name")
    samples = NodeSample.objects.filter(at__gte=now - charts.FORECAST_WINDOW)
    if scope.regions:
        nodes = nodes.filter(region__code__in=scope.regions)
        samples = samples.filter(node__region__code__in=scope.regions)
    if scope.node_classes:
        nodes = nodes.filter(node_class__name__in=scope.node_classes)
        samples = samples.filter(node__node_class__name__in=scope.node_classes)
    readings: dict[int, list[tuple[datetime, float | None]]] = defaultdict(list)
    for node_id, at, temperature in samples.values_list("node_id", "at", "temperature_c"):
        readings[node_id].append((at, temperature))
    rows = []
    for node in nodes:
        envelope = node.node_class.thermal_envelope_c
        forecast = charts.throttle_forecast(
            readings.get(node.pk, []), float(envelope) if envelope is not None else None, now=now
        )
        rows.append({"node": node, "forecast": forecast})
    rows.sort(key=lambda row: (row["forecast"].urgency, -(row["forecast"].temperature_c or -1e9)))
    return rows


def thermal_offloads(scope: Scope) -> dict[str, list[tuple[datetime, float | None]]]:
    """Answers offloaded for heat per region and step, from the ledger (two queries)."""
    queryset, time_field = ledger(scope)
    rows = (
        queryset.filter(served_by=REGIONAL, offload_reason="thermal")
        .values(time_field, "region")
        .annotate(n=Sum(F("count") + F("errors")))
        .order_by(time_field, "region")
    )
    counts: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        counts[row["region"]][scope.bucket_of(row[time_field])] += row["n"]
    return {
        region: [(at, values.get(at)) for at in scope.steps()]
        for region, values in sorted(counts.items())
    }


REASONS: tuple[str, ...] = (*charts.REASON_COLOURS,)


def _group_field(scope: Scope) -> list[str]:
    return [] if scope.by == ALL else [USAGE_KEYS[scope.by]]


def _group_key(row: dict, scope: Scope) -> str:
    return ALL if scope.by == ALL else row[USAGE_KEYS[scope.by]]


def offload_series(scope: Scope) -> tuple[dict[str, list], dict[str, list]]:
    """Regional answers per reason and step, and each group's offload rate per step, from one
    aggregation of the ledger (two queries)."""
    queryset, time_field = ledger(scope)
    keys = [time_field, *_group_field(scope), "served_by", "offload_reason"]
    rows = queryset.values(*keys).annotate(n=Sum(F("count") + F("errors"))).order_by(*keys)
    by_reason: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    requests: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    regional: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        at = scope.bucket_of(row[time_field])
        key = _group_key(row, scope)
        requests[key][at] += row["n"]
        if row["served_by"] == REGIONAL:
            regional[key][at] += row["n"]
            by_reason[row["offload_reason"] or UNSPECIFIED][at] += row["n"]
    steps = scope.steps()
    busiest = sorted(requests, key=lambda key: (-sum(requests[key].values()), key))
    rates = {
        key: [
            (at, regional[key].get(at, 0.0) / requests[key][at] if requests[key].get(at) else None)
            for at in steps
        ]
        for key in busiest
    }
    reasons = {
        reason: [(at, by_reason[reason].get(at)) for at in steps]
        for reason in REASONS
        if reason in by_reason
    }
    return reasons, rates


def routing_split(scope: Scope) -> list[dict]:
    """Per group over the range: requests, local and regional, the rate, and the reasons
    (usage_split: two queries)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in usage_split(scope, *_group_field(scope), "served_by", "offload_reason"):
        values = totals[_group_key(row, scope)]
        values["requests"] += row["requests"] or 0
        if row["served_by"] == REGIONAL:
            values["regional"] += row["requests"] or 0
            values[row["offload_reason"] or UNSPECIFIED] += row["requests"] or 0
    result = []
    for key, values in sorted(totals.items(), key=lambda item: (-item[1]["requests"], item[0])):
        requests = values["requests"]
        result.append(
            {
                "key": key,
                "requests": f"{requests:,.0f}",
                "local": f"{requests - values['regional']:,.0f}",
                "regional": f"{values['regional']:,.0f}",
                "rate": shown(values["regional"] / requests if requests else None, "{:.1%}"),
                "reasons": [f"{values.get(reason, 0):,.0f}" for reason in REASONS],
            }
        )
    return result


def drift_rows(scope: Scope, models: Sequence[str]) -> tuple[list[dict], list[DriftAlert]]:
    """Every version the drift check has measured, with whether its alert is open, and the
    alerts open during the range: two queries for all versions at once."""
    versions = (
        ModelVersion.objects.filter(drift_checked_at__isnull=False)
        .select_related("model__owner")
        .annotate(open_alerts=Count("drift_alerts", filter=Q(drift_alerts__closed_at__isnull=True)))
        .order_by("model__name", "version")
    )
    rows = []
    for version in versions:
        name = version.model.served_name
        if models and name not in models:
            continue
        rows.append(
            {
                "version": version,
                "label": f"{name} v{version.version}",
                "alerted": bool(version.open_alerts),
            }
        )
    alerts = (
        DriftAlert.objects.filter(Q(closed_at__isnull=True) | Q(closed_at__gte=scope.start))
        .select_related("version__model__owner")
        .order_by("-opened_at")
    )
    if models:
        alerts = [a for a in alerts if a.version.model.served_name in models]
    return rows, list(alerts[:DRIFT_ALERTS_SHOWN])
