"""Finance closes a month: the drafts of every tenant refreshed, reviewed for anomalies, then
finalised in bulk by a Celery job (`close_month_task`) with visible progress.

The job finalises one invoice per transaction and counts it in the run afterwards; killed at
any point, it leaves invoices either draft or finalised (never half), and running it again
(the close page's Resume) finalises the rest. Numbers stay gapless: a number is taken inside
the transaction that finalises its invoice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory, InvoiceStatus
from billing.invoicing import InvoicingError, finalise_invoice, previous_month
from billing.models import CloseRun, Invoice, QuarantinedUsage, Tenant

log = logging.getLogger(__name__)

# A month with fewer inferences than this share of the previous one is worth a look.
USAGE_DROP = Decimal("0.5")


@dataclass
class CloseRow:
    tenant: Tenant
    invoice: Invoice | None
    previous: Invoice | None
    quarantined: int
    anomalies: list[str] = field(default_factory=list)


def close_rows(year: int, month: int) -> list[CloseRow]:
    """Every tenant's invoice of the month beside its previous month's, with what looks
    wrong. A fixed number of queries whatever the number of tenants."""
    before = previous_month(year, month)
    invoices = {
        (i.tenant_id, i.year, i.month): i
        for i in Invoice.objects.exclude(status=InvoiceStatus.VOID).filter(
            Q(year=year, month=month) | Q(year=before[0], month=before[1])
        )
    }
    tenants = list(Tenant.objects.order_by("name"))
    periods = {
        i.tenant_id: (i.period_start, i.period_end)
        for (_, y, m), i in invoices.items()
        if (y, m) == (year, month)
    }
    quarantine = dict(
        QuarantinedUsage.objects.filter(tenant_slug__in=[t.slug for t in tenants])
        .filter(
            minute__gte=min((p[0] for p in periods.values()), default=timezone.now()),
            minute__lt=max((p[1] for p in periods.values()), default=timezone.now()),
        )
        .values_list("tenant_slug")
        .annotate(n=Count("pk"))
    )
    rows = []
    for tenant in tenants:
        invoice = invoices.get((tenant.pk, year, month))
        previous = invoices.get((tenant.pk, *before))
        row = CloseRow(tenant, invoice, previous, quarantine.get(tenant.slug, 0))
        if invoice is None:
            row.anomalies.append("no invoice for the month yet")
        if invoice is not None and previous is not None and previous.inferences:
            if invoice.inferences < previous.inferences * USAGE_DROP:
                row.anomalies.append(
                    f"usage dropped to {invoice.inferences} from {previous.inferences}"
                )
        if row.quarantined:
            row.anomalies.append(f"{row.quarantined} quarantined usage record(s)")
        if invoice is not None and invoice.stripe_error:
            row.anomalies.append(f"Stripe: {invoice.stripe_error}")
        rows.append(row)
    return rows


def refresh_month(year: int, month: int, *, now: datetime | None = None) -> int:
    """Bring every tenant's draft of the month up to date (creating missing ones) in one
    run (billing/billing_run.py); returns how many were rated."""
    from billing.billing_run import refresh_month_drafts

    summary = refresh_month_drafts(year, month, now=now)
    for slug, why in summary.failed.items():
        log.warning("close: %s: %s", slug, why)
    return summary.rated


def start_close(year: int, month: int, *, acting_user=None) -> CloseRun:
    """Record a close run of the month and enqueue its job after the commit."""
    from billing.tasks import close_month_task

    with transaction.atomic():
        ids = list(
            Invoice.objects.filter(year=year, month=month, status=InvoiceStatus.DRAFT)
            .order_by("tenant__slug")
            .values_list("pk", flat=True)
        )
        run = CloseRun.objects.create(
            year=year, month=month, started_by=acting_user, total=len(ids), invoice_ids=ids
        )
        audit.record(
            "month_close.started",
            category=AuditCategory.MONEY,
            actor=acting_user,
            subject=audit.Subject("billing.closerun", str(run.pk), f"close of {year}-{month:02d}"),
            after={"month": f"{year}-{month:02d}", "drafts": len(ids)},
        )
        run_id = run.pk
        transaction.on_commit(lambda: close_month_task.delay(run_id))
    return run


def run_close(run_id: int, *, now: datetime | None = None) -> CloseRun:
    """Finalise the run's drafts one by one (each in its own transaction); safe to run
    again: what is finalised already is skipped and counted."""
    run = CloseRun.objects.select_related("started_by").get(pk=run_id)
    ids = run.invoice_ids
    problems: list[str] = []
    pending = Invoice.objects.filter(pk__in=ids, status=InvoiceStatus.DRAFT)
    for invoice_id in pending.order_by("tenant__slug").values_list("pk", flat=True):
        try:
            finalise_invoice(
                Invoice(pk=invoice_id), acting_user=run.started_by, now=now or timezone.now()
            )
        except InvoicingError as exc:
            problems.append(str(exc))
        done = Invoice.objects.filter(pk__in=ids).exclude(status=InvoiceStatus.DRAFT).count()
        CloseRun.objects.filter(pk=run_id).update(done=done, failed=len(problems))
    CloseRun.objects.filter(pk=run_id).update(finished_at=timezone.now(), problems=problems[-200:])
    run.refresh_from_db()
    return run


def month_totals(year: int, month: int) -> dict[str, Decimal]:
    """Total invoiced per currency for the month (finalised and settled invoices)."""
    rows = (
        Invoice.objects.filter(year=year, month=month)
        .exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID])
        .values("currency")
        .annotate(total=Sum("total"))
    )
    return {r["currency"]: r["total"] for r in rows}
