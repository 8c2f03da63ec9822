"""Usage for the SLO tests, written straight into the ledger and rolled up by billing's own
rollup SQL (billing.ingest.recompute_hour), so both the per-minute records and the hourly
rollups hold it; and a latency band to measure it against."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from billing.ingest import recompute_hour
from billing.models import BandTerms, LatencyBand, Subscription, UsageBatch, UsageRecord

_seq = iter(range(1, 1_000_000))


def served(
    tenant,
    minute: datetime,
    *,
    model: str,
    latency: dict[str, int],
    errors: int = 0,
    served_by: str = "local",
    reason: str = "",
    tokenised: int = 0,
    energy_j: float = 0.0,
) -> UsageRecord:
    """One node's minute of `model` for `tenant`: `latency` maps histogram columns
    (billing.models.usage.LATENCY_COLUMNS, e.g. "le_10ms") to successful answers."""
    minute = minute.astimezone(UTC).replace(second=0, microsecond=0)
    batch = UsageBatch.objects.create(
        node_uid="nd-slo", batch_seq=next(_seq), region="eu-west", node_class="nano",
        created_at=minute, received_at=minute, digest="x", raw=b"",
    )  # fmt: skip
    record = UsageRecord.objects.create(
        batch=batch, tenant=tenant, node_uid="nd-slo", region="eu-west", node_class="nano",
        model=model, version="1", grade="tiny", served_by=served_by, offload_reason=reason,
        minute=minute, received_at=minute, count=sum(latency.values()), errors=errors,
        tokenised=tokenised, energy_j=energy_j, **latency,
    )  # fmt: skip
    recompute_hour(tenant.pk, minute.replace(minute=0))
    return record


def on_band(tenant, *, name: str = "Silver", p95_target_ms: float = 100) -> LatencyBand:
    """Put `tenant` on a band (created if new) with `p95_target_ms` in its currency."""
    since = datetime(2026, 1, 1, tzinfo=UTC)
    band, created = LatencyBand.objects.get_or_create(slug=name.lower(), defaults={"name": name})
    if created:
        BandTerms.objects.create(
            band=band, currency=tenant.currency, effective_from=since,
            p95_target_ms=p95_target_ms, monthly_fee=Decimal("49.00"), included_inferences=1000,
            overage_tiny=Decimal("0.04"), overage_medium=Decimal("0.30"),
            overage_large=Decimal("1.50"), sla_credit_percent=Decimal(10),
        )  # fmt: skip
    Subscription.objects.create(tenant=tenant, band=band, starts_at=since)
    return band


def minutes_ago(now: datetime, minutes: int) -> datetime:
    return (now - timedelta(minutes=minutes)).replace(second=0, microsecond=0)
