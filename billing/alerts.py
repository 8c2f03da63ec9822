"""Spending alerts tied to routing.

`check_budget(tenant)` runs after each refresh of the tenant's draft (the beat task): it
compares the month's total so far and its forecast with the tenant's monthly budget and
records, once per month each,

- a threshold alert at every configured share of the budget (default 50, 80 and 100 %),
- a forecast alert when the month-end forecast crosses the budget before the spend does,
- exhaustion at 100 %: `BudgetStatus.exhausted` flips and `budget_state_changed` tells fleet,
  whose next policy bundle carries `budget_exhausted`, so the nodes apply the tenant's
  `on_budget_exhausted` (alert only, downgrade, or block with 402).

Each new alert is delivered after the commit by `deliver_alert_task`: an email to the tenant's
billing address, a POST of the alert as JSON to its webhook, signed with the console's Ed25519
key (`X-Outpost-Signature: keyid=…,ed25519=…` over the body; the key is published at
`GET /api/v1/keys`, the one nodes pin), and a banner in the portal (the month's alerts).
"""

from __future__ import annotations

import logging
import smtplib
from datetime import UTC, datetime

import httpx
import orjson
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from billing.invoicing import forecast, month_of
from billing.models import AlertKind, BudgetStatus, Invoice, SpendingAlert, Tenant
from billing.signals import budget_state_changed
from billing.signing import console_private_key
from inference import protocol

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5.0
SIGNATURE_HEADER = "X-Outpost-Signature"


def check_budget(tenant: Tenant, *, now: datetime | None = None) -> list[SpendingAlert]:
    """Record the alerts the tenant's month has earned since the last check; returns them."""
    now = now or timezone.now()
    year, month = month_of(tenant, now)
    invoice = (
        Invoice.objects.filter(tenant=tenant, year=year, month=month).exclude(status="void").first()
    )
    if invoice is None:
        return []
    spend = invoice.total
    expected = forecast(invoice, now)
    budget = tenant.monthly_budget
    fired: list[SpendingAlert] = []
    with transaction.atomic():
        exhausted = budget is not None and spend >= budget
        status, created = BudgetStatus.objects.select_for_update().get_or_create(
            tenant=tenant,
            year=year,
            month=month,
            defaults={"spend": spend, "forecast": expected, "exhausted": exhausted},
        )
        changed = (created and exhausted) or (not created and status.exhausted != exhausted)
        status.spend, status.forecast, status.exhausted, status.checked_at = (
            spend,
            expected,
            exhausted,
            now,
        )
        status.save()
        if budget is not None and budget > 0:
            steps = [
                (AlertKind.THRESHOLD, p) for p in _percents(tenant) if spend * 100 >= budget * p
            ]
            if expected > budget and spend < budget:
                steps.append((AlertKind.FORECAST, 0))
            if exhausted:
                steps.append((AlertKind.EXHAUSTED, 0))
            for kind, percent in steps:
                alert, new = SpendingAlert.objects.get_or_create(
                    tenant=tenant,
                    year=year,
                    month=month,
                    kind=kind,
                    percent=percent,
                    defaults={
                        "spend": spend,
                        "forecast": expected,
                        "budget": budget,
                        "currency": tenant.currency,
                        "at": now,
                    },
                )
                if new:
                    fired.append(alert)
        if changed:
            budget_state_changed.send(sender=Tenant, tenant=tenant, exhausted=exhausted)
            # Routing changes with it (on_budget_exhausted): the log says when and why.
            audit.record(
                "budget.exhausted" if exhausted else "budget.restored",
                category=AuditCategory.MONEY,
                actor=None,
                subject=tenant,
                before={"exhausted": not exhausted},
                after={"exhausted": exhausted, "spend": spend, "budget": budget},
                note=f"{year}-{month:02d}",
                at=now,
            )
        if fired:
            from billing.tasks import deliver_alert_task

            ids = [a.pk for a in fired]
            transaction.on_commit(lambda: [deliver_alert_task.delay(i) for i in ids])
    return fired


def _percents(tenant: Tenant) -> list[int]:
    raw = tenant.budget_alert_percents or []
    return sorted({int(p) for p in raw if isinstance(p, int | float) and 0 < p <= 100})


def exhausted_tenants(now: datetime | None = None) -> set[str]:
    """Slugs of the tenants whose current month's budget is spent (fleet's bundle compile)."""
    now = now or timezone.now()
    slugs = set()
    for status in BudgetStatus.objects.filter(exhausted=True).select_related("tenant"):
        if (status.year, status.month) == month_of(status.tenant, now):
            slugs.add(status.tenant.slug)
    return slugs


def alert_document(alert: SpendingAlert) -> dict:
    return {
        "type": f"budget.{alert.kind}",
        "tenant": alert.tenant.slug,
        "period": f"{alert.year}-{alert.month:02d}",
        "percent": alert.percent or None,
        "spend": str(alert.spend),
        "forecast": str(alert.forecast),
        "budget": str(alert.budget),
        "currency": alert.currency,
        "message": alert.message,
        "at": alert.at.astimezone(UTC).isoformat(),
    }


def sign_body(body: bytes) -> str:
    key = console_private_key()
    return f"keyid={protocol.key_id(key.public_key())},ed25519={protocol.sign(key, body)}"


def deliver(alert: SpendingAlert, *, client: httpx.Client | None = None) -> SpendingAlert:
    """Email and webhook for one alert (each at most once: what was done is recorded)."""
    tenant = alert.tenant
    if tenant.billing_email and not alert.emailed_to:
        try:
            _email(alert, tenant)
        except (OSError, smtplib.SMTPException) as exc:  # recorded; the webhook still goes
            log.warning("alert email to %s failed: %s", tenant.billing_email, exc)
        else:
            alert.emailed_to = tenant.billing_email
    if tenant.alert_webhook_url and not alert.webhook_result.startswith("2"):
        body = orjson.dumps(alert_document(alert))
        try:
            with client or httpx.Client(timeout=WEBHOOK_TIMEOUT_S) as http:
                response = http.post(
                    tenant.alert_webhook_url,
                    content=body,
                    headers={"content-type": "application/json", SIGNATURE_HEADER: sign_body(body)},
                )
            alert.webhook_result = str(response.status_code)
        except httpx.HTTPError as exc:
            alert.webhook_result = f"{type(exc).__name__}: {exc}"[:200]
    alert.save(update_fields=["emailed_to", "webhook_result"])
    return alert


def _email(alert: SpendingAlert, tenant: Tenant) -> None:
    send_mail(
        subject=f"[Outpost] {tenant.name}: {alert.message}",
        message=(
            f"{alert.message}.\n\nPeriod {alert.year}-{alert.month:02d}; month so far "
            f"{alert.spend} {alert.currency}, forecast {alert.forecast}.\n"
            f"See {settings.OUTPOST_PUBLIC_URL}/portal/{tenant.slug}/billing/"
        ),
        from_email=None,
        recipient_list=[tenant.billing_email],
    )


def month_alerts(tenant: Tenant, now: datetime | None = None) -> list[SpendingAlert]:
    year, month = month_of(tenant, now or timezone.now())
    return list(SpendingAlert.objects.filter(tenant=tenant, year=year, month=month))
