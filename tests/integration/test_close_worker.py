"""A real Celery worker killed with SIGKILL in the middle of closing a month: every invoice is
left whole (draft or finalised, numbered without gaps), and running the job again finishes
the month with totals that reconcile exactly with the usage ledger."""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.choices import InvoiceStatus
from billing.invoicing import refresh_draft
from billing.models import CloseRun, Invoice, Price, Tenant, UsageBatch, UsageRecord
from billing.tasks import close_month_task
from tests.integration.conftest import start_celery_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TENANTS = 150
NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)


@pytest.fixture
def month_of_drafts(db):
    for grade, serving, price in (("tiny", "local", "0.05"), ("tiny", "regional", "0.08")):
        Price.objects.create(
            grade=grade, serving=serving, currency="EUR", per_1000=Decimal(price),
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        )  # fmt: skip
    batch = UsageBatch.objects.create(
        node_uid="nd-1", batch_seq=1, region="eu-west", node_class="nano", created_at=NOV,
        received_at=NOV, digest="x", raw=b"",
    )  # fmt: skip
    for i in range(TENANTS):
        tenant = Tenant.objects.create(slug=f"t{i:03d}", name=f"Tenant {i}", time_zone="UTC")
        UsageRecord.objects.create(
            batch=batch, tenant=tenant, node_uid="nd-1", region="eu-west", node_class="nano",
            model="m", version="1", grade="tiny", served_by="local", minute=NOV,
            received_at=NOV, count=1000 * (i + 1), le_10ms=1000 * (i + 1),
        )  # fmt: skip
        refresh_draft(tenant, 2026, 11, now=NOV)
    ids = list(Invoice.objects.order_by("tenant__slug").values_list("pk", flat=True))
    return CloseRun.objects.create(year=2026, month=11, total=len(ids), invoice_ids=ids)


def numbers() -> list[int]:
    return sorted(
        int(n.split("-")[1])
        for n in Invoice.objects.exclude(number="").values_list("number", flat=True)
    )


def test_a_close_killed_mid_run_is_whole_and_a_second_run_finishes_it(
    start_process, month_of_drafts
):
    run = month_of_drafts
    queue, worker = start_celery_worker(start_process, "worker-1")
    close_month_task.apply_async((run.pk,), queue=queue)
    wait_until(
        lambda: Invoice.objects.filter(status=InvoiceStatus.FINALISED).count() >= 10,
        timeout=90,
        interval=0.02,
        what="the worker to finalise some invoices",
    )

    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    finalised = Invoice.objects.filter(status=InvoiceStatus.FINALISED).count()
    assert 10 <= finalised < TENANTS, "the kill should land in the middle of the run"
    assert numbers() == list(range(1, finalised + 1))  # gapless so far
    assert not Invoice.objects.filter(status=InvoiceStatus.DRAFT).exclude(number="").exists()

    queue, _ = start_celery_worker(start_process, "worker-2")
    close_month_task.apply_async((run.pk,), queue=queue)
    wait_until(
        lambda: CloseRun.objects.get(pk=run.pk).finished_at is not None,
        timeout=120,
        what="the second run to finish",
    )

    run.refresh_from_db()
    assert (run.done, run.failed) == (TENANTS, 0)
    assert numbers() == list(range(1, TENANTS + 1))
    billed = Invoice.objects.aggregate(n=Sum("inferences"))["n"]
    served = UsageRecord.objects.aggregate(n=Sum("count"))["n"]
    assert billed == served
    for invoice in Invoice.objects.prefetch_related("lines"):
        assert invoice.total == sum(line.amount for line in invoice.lines.all())
