"""Invoices to Stripe and payments back, on top of billing/stripe_gateway.py.

- Without `STRIPE_API_KEY` nothing leaves the console: invoices live locally and say so.
- A finalised invoice is pushed by `sync_invoice_task` (enqueued after the finalising
  transaction commits): the tenant's customer first, then the invoice with one item per line
  (tax included as its own line, so Stripe's total is ours to the minor unit). The gateway's
  idempotency keys are deterministic, so a retry after a crash at any step creates nothing
  twice. Stripe refusing (a 4xx) is recorded on the invoice and not retried; Stripe being
  unavailable (network, 429, 5xx) is retried by Celery with backoff.
- A webhook (`/billing/stripe/webhook`) is verified (signature, 300 s tolerance), deduplicated
  on its event id and applied in one transaction with that id; out of order is safe because
  the invoice is re-fetched from Stripe and its current status applied, not the event's copy.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.choices import InvoiceStatus
from billing.models import Invoice, InvoiceEvent, StripeEvent, Tenant
from billing.stripe_gateway import (
    CustomerData,
    InvoiceData,
    InvoiceLine,
    StripeGateway,
    StripeRejected,
    WebhookEvent,
)

log = logging.getLogger(__name__)

# Stripe's invoice status -> ours. "open" is what a finalised invoice is.
_STATUS = {
    "paid": InvoiceStatus.PAID,
    "void": InvoiceStatus.VOID,
    "uncollectible": InvoiceStatus.UNCOLLECTIBLE,
}


def enabled() -> bool:
    return bool(settings.STRIPE_API_KEY)


def gateway() -> StripeGateway:
    return StripeGateway(settings.STRIPE_API_KEY, api_base=settings.STRIPE_API_BASE)


def ensure_customer(tenant: Tenant, client: StripeGateway) -> str:
    if not tenant.stripe_customer_id:
        customer = client.ensure_customer(
            CustomerData(slug=tenant.slug, name=tenant.name, email=tenant.billing_email or None)
        )
        Tenant.objects.filter(pk=tenant.pk).update(stripe_customer_id=customer)
        tenant.stripe_customer_id = customer
    return tenant.stripe_customer_id


def sync_invoice(invoice_id: int, *, client: StripeGateway | None = None) -> Invoice:
    """Push one finalised invoice to Stripe (a no-op when it is there already). Raises
    StripeUnavailable for the caller to retry; records a refusal on the invoice."""
    invoice = Invoice.objects.select_related("tenant").get(pk=invoice_id)
    if invoice.is_draft or invoice.stripe_invoice_id or not enabled():
        return invoice
    client = client or gateway()
    try:
        customer = ensure_customer(invoice.tenant, client)
        synced = client.push_invoice(
            InvoiceData(
                number=invoice.number,
                customer_id=customer,
                currency=invoice.currency,
                lines=tuple(
                    InvoiceLine(description=line.description, amount=line.amount)
                    for line in invoice.lines.all()
                    if line.amount != 0
                ),
                tenant_slug=invoice.tenant.slug,
                description=f"Outpost inference, {invoice.label}",
            )
        )
    except StripeRejected as exc:
        Invoice.objects.filter(pk=invoice.pk).update(stripe_error=str(exc)[:500])
        InvoiceEvent.objects.create(
            invoice=invoice, kind="stripe_failed", detail={"error": str(exc)}
        )
        log.error("Stripe refused invoice %s: %s", invoice.number, exc)
        invoice.refresh_from_db()
        return invoice
    now = timezone.now()
    Invoice.objects.filter(pk=invoice.pk).update(
        stripe_invoice_id=synced.stripe_invoice_id,
        stripe_status=synced.status,
        stripe_url=synced.hosted_invoice_url or "",
        stripe_synced_at=now,
        stripe_error="",
    )
    InvoiceEvent.objects.create(
        invoice=invoice,
        kind="stripe_synced",
        at=now,
        detail={"stripe_invoice_id": synced.stripe_invoice_id, "status": synced.status},
    )
    invoice.refresh_from_db()
    return invoice


def handle_event(event: WebhookEvent, *, client: StripeGateway | None = None) -> str:
    """Apply a verified event once; returns what was done (for the response and the row)."""
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(
                event_id=event.id,
                type=event.type,
                object_id=event.object_id or "",
                created=event.created,
            )
            outcome = _apply(event, client)
            row.outcome = outcome[:300]
            row.save(update_fields=["outcome"])
            return outcome
    except IntegrityError:
        return "duplicate: this event was handled before"


def _apply(event: WebhookEvent, client: StripeGateway | None) -> str:
    if not event.type.startswith("invoice.") or event.object_type != "invoice":
        return f"ignored: {event.type}"
    invoice = Invoice.objects.select_for_update().filter(stripe_invoice_id=event.object_id).first()
    if invoice is None:
        return f"ignored: no Outpost invoice is Stripe's {event.object_id}"
    # The event's copy may be older than what Stripe knows now (events arrive out of order):
    # act on Stripe's current state.
    current = (client or gateway()).fetch_invoice(event.object_id)
    updates = {"stripe_status": current.status}
    if current.hosted_invoice_url:
        updates["stripe_url"] = current.hosted_invoice_url
    Invoice.objects.filter(pk=invoice.pk).update(**updates)
    status = _STATUS.get(current.status)
    if status is None or status == invoice.status:
        return f"invoice {invoice.number}: Stripe says {current.status}"
    invoice.move_to(
        status,
        detail={"stripe_event": event.id, "stripe_status": current.status},
        at=current.paid_at if status == InvoiceStatus.PAID and current.paid_at else None,
    )
    return f"invoice {invoice.number} {status}"
