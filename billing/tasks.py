"""Billing background work. Tasks are thin: load, call an action, return."""

from __future__ import annotations

from celery import shared_task

from billing.ingest import refresh_rollups
from billing.stripe_gateway import StripeUnavailable


@shared_task
def refresh_usage_rollups_task() -> int:
    """Recompute the hourly rollups that ingest marked stale; returns how many (tenant, hour)
    pairs. Runs until none is left, a batch at a time."""
    total = 0
    while done := refresh_rollups():
        total += done
    return total


@shared_task
def refresh_drafts_task() -> int:
    """Bring every tenant's draft of its current month up to date; returns how many."""
    from billing.alerts import check_budget
    from billing.invoicing import draft_all

    return draft_all(after_each=check_budget)


@shared_task(
    autoretry_for=(StripeUnavailable,),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=12,
)
def sync_invoice_task(invoice_id: int) -> str:
    """Push a finalised invoice to Stripe; retried with backoff while Stripe is unavailable."""
    from billing.stripe_sync import sync_invoice

    invoice = sync_invoice(invoice_id)
    return invoice.stripe_invoice_id or invoice.stripe_error or "local"


@shared_task(max_retries=0)
def deliver_alert_task(alert_id: int) -> str:
    """Email and webhook of one spending alert (what was sent is recorded on the alert)."""
    from billing.alerts import deliver
    from billing.models import SpendingAlert

    alert = deliver(SpendingAlert.objects.select_related("tenant").get(pk=alert_id))
    return alert.webhook_result or alert.emailed_to or "nothing to send"


# Acknowledged only when done: a worker killed mid-run leaves the message to be delivered
# again, and the run finalises what is left (billing/closing.py).
@shared_task(acks_late=True, reject_on_worker_lost=True)
def close_month_task(run_id: int) -> str:
    from billing.closing import run_close

    run = run_close(run_id)
    return f"{run.done} finalised, {run.failed} failed of {run.total}"
