"""The usage ledger: what the nodes served, as they reported it, never changed afterwards.

A node uploads numbered batches of per-minute records (inference/protocol.py, `UsageBatch`);
billing/ingest.py stores each batch with its records in one transaction, unique on
(node_uid, batch_seq), so a repeat is acknowledged and never counted twice. Records that fail
validation are kept in `QuarantinedUsage` with their reason: nothing a node sent is lost.

Records are keyed by identifiers (node uid, region code, node class, model name and version,
grade), not by foreign keys into fleet: billing must not import fleet, and a renamed or deleted
node must not change the ledger. Only the tenant is a foreign key (it is billing's own).

The latency histogram is one integer column per bucket of `protocol.LATENCY_BOUNDS_S`, so
rollups and monthly percentiles are plain SQL sums.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models.accounts import Tenant
from inference import protocol


def _bucket_name(bound: float | None) -> str:
    if bound is None:
        return "le_inf"
    micros = round(bound * 1_000_000)
    if micros % 1_000_000 == 0:
        return f"le_{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"le_{micros // 1000}ms"
    return f"le_{micros}us"


# Column names of the histogram, in bucket order: le_100us … le_5s, le_inf.
LATENCY_COLUMNS: tuple[str, ...] = tuple(
    _bucket_name(b) for b in (*protocol.LATENCY_BOUNDS_S, None)
)


class UsageFacts(models.Model):
    """What one record or rollup row says: counts, the latency histogram and energy."""

    count = models.PositiveBigIntegerField(help_text="Successful inferences: the billable count")
    errors = models.PositiveBigIntegerField(default=0)
    tokenised = models.PositiveBigIntegerField(default=0)
    latency_sum_s = models.FloatField(default=0.0)
    energy_j = models.FloatField(default=0.0)
    le_100us = models.PositiveBigIntegerField(default=0)
    le_250us = models.PositiveBigIntegerField(default=0)
    le_500us = models.PositiveBigIntegerField(default=0)
    le_1ms = models.PositiveBigIntegerField(default=0)
    le_2500us = models.PositiveBigIntegerField(default=0)
    le_5ms = models.PositiveBigIntegerField(default=0)
    le_10ms = models.PositiveBigIntegerField(default=0)
    le_25ms = models.PositiveBigIntegerField(default=0)
    le_50ms = models.PositiveBigIntegerField(default=0)
    le_100ms = models.PositiveBigIntegerField(default=0)
    le_250ms = models.PositiveBigIntegerField(default=0)
    le_500ms = models.PositiveBigIntegerField(default=0)
    le_1s = models.PositiveBigIntegerField(default=0)
    le_2500ms = models.PositiveBigIntegerField(default=0)
    le_5s = models.PositiveBigIntegerField(default=0)
    le_inf = models.PositiveBigIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def latency_counts(self) -> list[int]:
        return [getattr(self, name) for name in LATENCY_COLUMNS]


class UsageKey(models.Model):
    """The identifiers a record is counted under."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    region = models.CharField(max_length=40)
    node_class = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    version = models.CharField(max_length=50)
    grade = models.CharField(max_length=10)
    served_by = models.CharField(max_length=10)
    # Empty when served locally.
    offload_reason = models.CharField(max_length=20, blank=True)

    class Meta:
        abstract = True


class UsageBatch(models.Model):
    """One upload of one node, kept whole for audit (the raw JSON, zlib-compressed)."""

    node_uid = models.CharField(max_length=40)
    batch_seq = models.PositiveBigIntegerField()
    region = models.CharField(max_length=40, help_text="The node's region when it uploaded")
    node_class = models.CharField(max_length=20)
    created_at = models.DateTimeField(help_text="When the node closed the batch")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # sha256 of the raw body: a repeat with the same number and other content is a conflict.
    digest = models.CharField(max_length=64)
    raw = models.BinaryField()
    records_total = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0)
    quarantined = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["node_uid", "batch_seq"], name="one_batch_per_seq")
        ]

    def __str__(self) -> str:
        return f"batch {self.batch_seq} of {self.node_uid}"


class UsageRecord(UsageKey, UsageFacts):
    """One node's inferences for one tenant, model version, serving and minute.

    Its two foreign keys are not database constraints: ingest writes the batch and looks the
    tenants up in the same transaction as the records (billing/ingest.py), and the per-row
    checks were the largest part of PostgreSQL's cost of a COPY (bench/ingest.py). Django's
    PROTECT still refuses to delete a tenant or batch with records."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    # Not indexed either: the ledger is read by tenant and minute, and a batch's records
    # only by an auditor, rarely (each index is a per-row cost of every upload).
    batch = models.ForeignKey(
        UsageBatch,
        on_delete=models.PROTECT,
        related_name="records",
        db_constraint=False,
        db_index=False,
    )
    node_uid = models.CharField(max_length=40)
    minute = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["tenant", "minute"], name="usage_tenant_minute")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.model} v{self.version} {self.minute:%Y-%m-%d %H:%M}"


class QuarantinedUsage(models.Model):
    """A record the console would not count, with why; an operator decides what to do."""

    batch = models.ForeignKey(UsageBatch, on_delete=models.PROTECT, related_name="quarantine")
    node_uid = models.CharField(max_length=40)
    # Best effort, for filtering: what the record claimed, when it could be read.
    tenant_slug = models.CharField(max_length=50, blank=True)
    minute = models.DateTimeField(null=True, blank=True)
    record = models.JSONField(help_text="The record as the node sent it")
    reason = models.CharField(max_length=500)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.node_uid}: {self.reason}"


class UsageHourlyQuerySet(models.QuerySet["UsageHourly"]):
    def of(self, tenant: Tenant, start, end) -> UsageHourlyQuerySet:
        """The tenant's hours in [start, end)."""
        return self.filter(tenant=tenant, hour__gte=start, hour__lt=end)

    def summed_by(self, *fields: str) -> models.QuerySet:
        """Inferences, errors and energy per combination of `fields`, in their order."""
        return (
            self.values(*fields)
            .annotate(
                inferences=models.Sum("count"),
                errors_total=models.Sum("errors"),
                energy=models.Sum("energy_j"),
            )
            .order_by(*fields)
        )


class UsageHourly(UsageKey, UsageFacts):
    """Records summed per hour: what billing rates and dashboards chart. Derived data,
    recomputed from the ledger for every (tenant, hour) that received records
    (billing/ingest.py: refresh_rollups)."""

    hour = models.DateTimeField()

    objects = UsageHourlyQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["tenant", "hour"], name="hourly_tenant_hour")]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "hour",
                    "region",
                    "node_class",
                    "model",
                    "version",
                    "grade",
                    "served_by",
                    "offload_reason",
                ],
                name="one_rollup_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.model} v{self.version} {self.hour:%Y-%m-%d %H}h"


class StaleRollup(models.Model):
    """A (tenant, hour) whose rollups no longer match the ledger: ingest marks it, the
    rollup task recomputes it and removes the mark."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "hour"], name="one_stale_mark_per_hour")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}h"
