"""The metrics backend that needs nothing: the console's own usage ledger and heartbeat samples.

Usage comes from billing's ledger: per-minute records (`UsageRecord`) for steps under an hour,
the hourly rollups (`UsageHourly`, refreshed every few seconds by billing's rollup task) for an
hour and more. Both are read through their (tenant, time) index — the filter names the
tenants explicitly (their ids, or a join on the slugs asked for), so PostgreSQL walks the index
once per tenant instead of scanning the ledger — and summed in SQL per step and group (PostgreSQL's date_bin; elsewhere per minute or
hour, the steps cut in Python).
Node gauges (memory pressure, temperature) are the heartbeat samples averaged per minute.

Every read is a fixed number of queries whatever the fleet, tenants or window.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import (
    Avg,
    BigIntegerField,
    Count,
    DateTimeField,
    DurationField,
    F,
    Func,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import Cast, TruncMinute

from billing.models import Tenant, UsageHourly, UsageRecord
from billing.models.usage import LATENCY_COLUMNS
from fleet.models import NodeSample
from fleet.observability.frames import ALL, Frame, Scope

NAME = "rollups"
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The usage ledger's column for each dimension.
USAGE_KEYS = {
    "model": "model",
    "tenant": "tenant__slug",
    "region": "region",
    "node_class": "node_class",
}
# A heartbeat sample's, through its node.
NODE_KEYS = {
    "region": "node__region__code",
    "node_class": "node__node_class__name",
    "node": "node__name",
}
GAUGES = {"memory_pressure": "memory_pressure", "temperature": "temperature_c"}


class RollupBackend:
    name = NAME

    def usage(self, scope: Scope) -> Frame:
        """Answers, errors, latency and energy per group and step."""
        queryset, time_field = ledger(scope)
        key = F(USAGE_KEYS[scope.by]) if scope.by != ALL else Value(ALL)
        sums = [
            Cast(Sum(name), BigIntegerField()) for name in ("count", "errors", *LATENCY_COLUMNS)
        ]
        rows = (
            queryset.values(at=_bucket(time_field, scope), key=key)
            .annotate(j=Sum("energy_j"), **{f"s{i}": total for i, total in enumerate(sums)})
            .order_by()
            .values_list("at", "key", "j", *(f"s{i}" for i in range(len(sums))))
        )
        frame = Frame(scope=scope, backend=self.name)
        # A row per (bucket, group): added in place, no object per row (bench/observability.py).
        for at, group, joules, count, errors, *latency in rows:
            cell = frame.cell(group, scope.bucket_of(at))
            cell.count += count
            cell.errors += errors
            cell.energy_j += joules or 0.0
            histogram = cell.latency
            for i, value in enumerate(latency):
                histogram[i] += value
        return frame

    def gauge(
        self, scope: Scope, gauge: str, by: str
    ) -> dict[str, list[tuple[datetime, float | None]]]:
        """The mean of a node gauge per group (region, node class or node) and step."""
        column = GAUGES[gauge]
        key_field = NODE_KEYS[by]
        queryset = NodeSample.objects.filter(at__gte=scope.start, at__lt=scope.end)
        if scope.regions:
            queryset = queryset.filter(node__region__code__in=scope.regions)
        if scope.node_classes:
            queryset = queryset.filter(node__node_class__name__in=scope.node_classes)
        rows = (
            queryset.exclude(**{f"{column}__isnull": True})
            .annotate(minute=TruncMinute("at"))
            .values("minute", key_field)
            .annotate(mean=Avg(column), samples=Count("pk"))
            .order_by("minute", key_field)
        )
        sums: dict[str, dict[datetime, list[float]]] = defaultdict(
            lambda: defaultdict(lambda: [0.0, 0])
        )
        for row in rows:
            slot = sums[row[key_field]][scope.bucket_of(row["minute"])]
            slot[0] += row["mean"] * row["samples"]
            slot[1] += row["samples"]
        return {
            key: [
                (at, slots[at][0] / slots[at][1] if at in slots else None) for at in scope.steps()
            ]
            for key, slots in sorted(sums.items())
        }


def _bucket(time_field: str, scope: Scope):
    """The SQL for the start of each row's step. PostgreSQL cuts the steps itself
    (`date_bin`, aligned on the epoch like frames.align), so a 24 h window at 15 min steps
    returns 96 rows a group instead of 1,440; elsewhere rows come per minute or hour and
    Frame.cell buckets them (bucket_of)."""
    unit = HOUR if time_field == "hour" else MINUTE
    if connection.vendor == "postgresql" and scope.step > unit:
        return Func(
            Value(scope.step, output_field=DurationField()),
            F(time_field),
            Value(EPOCH, output_field=DateTimeField()),
            function="date_bin",
            output_field=DateTimeField(),
        )
    return F(time_field)


def ledger(scope: Scope) -> tuple[QuerySet, str]:
    """The scope's usage rows and their time column: the hourly rollups when the step is whole
    hours, else the per-minute records."""
    hourly = scope.step >= HOUR and scope.step % HOUR == timedelta(0)
    model, time_field = (UsageHourly, "hour") if hourly else (UsageRecord, "minute")
    if scope.tenants:
        # A join on the tenant's slug: the planner looks the few tenants up, then walks the
        # index for each, in the one query.
        tenants = {"tenant__slug__in": scope.tenants}
    else:
        # Every tenant's id, listed: with a subquery or no filter PostgreSQL scans the ledger.
        tenants = {"tenant_id__in": list(Tenant.objects.values_list("pk", flat=True))}
    queryset = model.objects.filter(
        **tenants, **{f"{time_field}__gte": scope.start, f"{time_field}__lt": scope.end}
    )
    return _filtered(queryset, scope), time_field


def _filtered(queryset: QuerySet, scope: Scope) -> QuerySet:
    if scope.models:
        queryset = queryset.filter(model__in=scope.models)
    if scope.regions:
        queryset = queryset.filter(region__in=scope.regions)
    if scope.node_classes:
        queryset = queryset.filter(node_class__in=scope.node_classes)
    return queryset


def usage_split(scope: Scope, *fields: str) -> QuerySet:
    """Inferences, errors, tokenised and energy per combination of `fields` over the window,
    always from the console's ledger (Prometheus has no tenant or offload labels): the offload
    reasons, the local/regional split, the tokenisation counts."""
    queryset, _ = ledger(scope)
    return (
        queryset.values(*fields)
        .annotate(
            inferences=Sum("count"),
            errors_total=Sum("errors"),
            tokenised_total=Sum("tokenised"),
            energy=Sum("energy_j"),
            requests=Sum(F("count") + F("errors")),
        )
        .order_by(*fields)
    )
