"""Invoices: a tenant's month, rated (billing/rating.py) into lines, numbered gaplessly per
year when finalised and never edited afterwards; their history in `InvoiceEvent`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from billing.choices import INVOICE_TRANSITIONS, AuditCategory, InvoiceStatus
from billing.models.accounts import Tenant

# Three decimals hold every currency's minor unit (KWD has 3).
_AMOUNT = {"max_digits": 16, "decimal_places": 3}


class InvoiceTransitionError(Exception):
    pass


# The audit log's verb for each way an invoice is settled ("invoice.voided").
AUDIT_VERBS = {
    InvoiceStatus.PAID: "paid",
    InvoiceStatus.VOID: "voided",
    InvoiceStatus.UNCOLLECTIBLE: "marked_uncollectible",
}


class InvoiceQuerySet(models.QuerySet["Invoice"]):
    def for_tenant(self, tenant: Tenant) -> InvoiceQuerySet:
        return self.filter(tenant=tenant)

    def settled_or_open(self) -> InvoiceQuerySet:
        """Invoices that are not drafts: what a tenant owes or owed."""
        return self.exclude(status=InvoiceStatus.DRAFT)


class Invoice(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    # The tenant's calendar month, half-open, in UTC (billing.rating.month_bounds).
    year = models.PositiveSmallIntegerField()
    month = models.PositiveSmallIntegerField()
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    currency = models.CharField(max_length=3)
    status = models.CharField(
        max_length=15, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT
    )
    # Gapless per year of finalisation ("2026-000042"), given when finalised.
    number = models.CharField(max_length=20, blank=True)
    subtotal = models.DecimalField(default=Decimal(0), **_AMOUNT)
    tax = models.DecimalField(default=Decimal(0), **_AMOUNT)
    total = models.DecimalField(default=Decimal(0), **_AMOUNT)
    tax_name = models.CharField(max_length=40, blank=True)
    band = models.CharField(max_length=60, blank=True)
    p95_target_ms = models.FloatField(null=True, blank=True)
    p95_ms = models.FloatField(null=True, blank=True)
    inferences = models.PositiveBigIntegerField(default=0)
    # Usage received up to this moment is on this invoice; what arrives later for its month
    # becomes an adjustment on the next one (billing/invoicing.py).
    usage_cutoff = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    finalised_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True, help_text="Voided or uncollectible")
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    stripe_status = models.CharField(max_length=30, blank=True)
    stripe_url = models.URLField(max_length=500, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    stripe_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = InvoiceQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start", "tenant__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "period_start"],
                condition=~Q(status=InvoiceStatus.VOID),
                name="one_live_invoice_per_month",
            ),
            models.UniqueConstraint(
                fields=["number"], condition=~Q(number=""), name="invoice_numbers_unique"
            ),
        ]
        indexes = [models.Index(fields=["status", "period_start"], name="invoice_status_period")]

    def __str__(self) -> str:
        return self.number or f"draft {self.tenant.slug} {self.year}-{self.month:02d}"

    @property
    def label(self) -> str:
        return f"{self.year}-{self.month:02d}"

    @property
    def is_draft(self) -> bool:
        return self.status == InvoiceStatus.DRAFT

    def move_to(self, status: str, *, actor=None, detail: dict | None = None, at=None) -> None:
        """Settle a finalised invoice (paid, void, uncollectible): the only change a finalised
        invoice allows, with its history row. Locks the row; a repeat is a no-op."""
        from billing import audit

        at = at or timezone.now()
        with transaction.atomic():
            invoice = Invoice.objects.select_for_update().get(pk=self.pk)
            if invoice.status == status:
                return
            if status not in INVOICE_TRANSITIONS[InvoiceStatus(invoice.status)]:
                raise InvoiceTransitionError(
                    f"invoice {invoice} is {invoice.get_status_display().lower()}; it cannot "
                    f"become {InvoiceStatus(status).label.lower()}"
                )
            previous, invoice.status = invoice.status, status
            fields = ["status"]
            if status == InvoiceStatus.PAID:
                invoice.paid_at, fields = at, [*fields, "paid_at"]
            else:
                invoice.closed_at, fields = at, [*fields, "closed_at"]
            invoice.save(update_fields=fields)
            InvoiceEvent.objects.create(
                invoice=invoice, kind=status, actor=actor, detail=detail or {}, at=at
            )
            audit.record(
                f"invoice.{AUDIT_VERBS[status]}",
                category=AuditCategory.MONEY,
                actor=actor,
                subject=invoice,
                before={"status": previous},
                after={"status": status},
                note=", ".join(f"{k}: {v}" for k, v in (detail or {}).items()),
                at=at,
            )
        self.status = invoice.status
        self.paid_at, self.closed_at = invoice.paid_at, invoice.closed_at


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=20)
    description = models.CharField(max_length=300)
    quantity = models.DecimalField(max_digits=20, decimal_places=4)
    unit_price = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True)
    amount = models.DecimalField(**_AMOUNT)
    grade = models.CharField(max_length=10, blank=True)
    serving = models.CharField(max_length=10, blank=True)
    reason = models.CharField(max_length=20, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="one_line_per_position")
        ]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"

    @property
    def is_credit(self) -> bool:
        return self.amount < 0


class InvoiceEvent(models.Model):
    """Append-only history of an invoice: created, finalised, synced, paid…"""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=30)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["invoice", "at", "pk"]

    def __str__(self) -> str:
        return f"{self.invoice}: {self.kind} at {self.at:%Y-%m-%d %H:%M}"


class InvoiceNumber(models.Model):
    """The last number given in a year; locked while the next is taken, so numbers are
    gapless (a rolled-back finalisation rolls its number back with it)."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last}"

    @classmethod
    def take(cls, at: datetime) -> str:
        """The next number of `at`'s year; call inside the finalising transaction."""
        cls.objects.get_or_create(year=at.year)
        counter = cls.objects.select_for_update().get(year=at.year)
        counter.last += 1
        counter.save(update_fields=["last"])
        return f"{at.year}-{counter.last:06d}"


class StripeEvent(models.Model):
    """A Stripe webhook event, once: the id is the deduplication key, stored in the same
    transaction as its effect (billing/stripe_sync.py), so a replay changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(help_text="When Stripe created the event")
    received_at = models.DateTimeField(default=timezone.now)
    # What the console did with it, for people: "invoice 2026-000042 paid", "ignored".
    outcome = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.type})"


class CloseRun(models.Model):
    """Finance closing a month: every draft of it finalised by a Celery job whose progress
    the close page shows. Re-running it is safe (finalising is idempotent per invoice)."""

    year = models.PositiveSmallIntegerField()
    month = models.PositiveSmallIntegerField()
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # The drafts the run is to finalise; `done` is recounted from them, so a run killed
    # between finalising an invoice and counting it still ends up exact.
    invoice_ids = models.JSONField(default=list, blank=True)
    # "<tenant>: why" for each invoice that could not be finalised.
    problems = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"close of {self.year}-{self.month:02d} ({self.done}/{self.total})"

    @property
    def percent(self) -> int:
        return 100 if not self.total else round(100 * (self.done + self.failed) / self.total)

    @property
    def running(self) -> bool:
        return self.finished_at is None
