"""Usage rows for billing tests, written straight into the ledger."""

from __future__ import annotations

from datetime import UTC, datetime

from billing.models import UsageBatch, UsageRecord

# acme's months are Berlin months: November 2026 is [Oct 31 23:00 UTC, Nov 30 23:00 UTC).
NOV = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
DEC = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
AFTER_NOV = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

_seq = iter(range(1, 100_000))


def served(
    tenant, minute, count, *, received, grade="tiny", served_by="local", reason="", fast=True
):
    """`count` inferences at `minute`, as a node's batch received at `received`."""
    batch = UsageBatch.objects.create(
        node_uid="nd-1", batch_seq=next(_seq), region="eu-west", node_class="nano",
        created_at=minute, received_at=received, digest="x", raw=b"",
    )  # fmt: skip
    latency = {"le_10ms" if fast else "le_250ms": count}
    return UsageRecord.objects.create(
        batch=batch, tenant=tenant, node_uid="nd-1", region="eu-west", node_class="nano",
        model="tiny-classifier", version="1", grade=grade, served_by=served_by,
        offload_reason=reason, minute=minute.replace(second=0, microsecond=0),
        received_at=received, count=count, **latency,
    )  # fmt: skip
