"""Invoices from the ledger: gather a tenant's month for billing/rating.py, keep its draft
current, finalise it.

Which usage an invoice holds — each record on exactly one invoice:
- its own month's records received up to its `usage_cutoff` (a draft's cutoff is its last
  refresh; a finalised invoice's is the moment it was finalised);
- records of EARLIER months received after the previous finalised invoice's cutoff and up to
  its own: usage that arrived after its month was invoiced, as adjustments. A finalised
  invoice is never edited.

Months are finalised in order per tenant, so the chain of cutoffs has no gap. The month's
prices are the price book and band terms in effect at its start (see docs/decisions.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import audit, rating
from billing.choices import AuditCategory, InvoiceStatus
from billing.currencies import quantize
from billing.models import (
    LATENCY_COLUMNS,
    BandTerms,
    FeatureActivation,
    Invoice,
    InvoiceEvent,
    InvoiceLine,
    InvoiceNumber,
    Price,
    Subscription,
    TaxRate,
    Tenant,
    UsageRecord,
)
from inference import protocol

log = logging.getLogger(__name__)


class InvoicingError(Exception):
    pass


def month_of(tenant: Tenant, at: datetime) -> tuple[int, int]:
    local = at.astimezone(ZoneInfo(tenant.time_zone))
    return local.year, local.month


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


# --- usage from the ledger -------------------------------------------------------------------


def usage_between(
    tenant: Tenant,
    start: datetime,
    end: datetime,
    *,
    received_after: datetime | None,
    received_until: datetime,
) -> list[rating.Usage]:
    """The tenant's billable usage with minutes in [start, end) received in
    (received_after, received_until], summed per grade, serving and offload reason."""
    rows = UsageRecord.objects.filter(
        tenant=tenant, minute__gte=start, minute__lt=end, received_at__lte=received_until
    )
    if received_after is not None:
        rows = rows.filter(received_at__gt=received_after)
    sums = {"n": Sum("count"), **{c: Sum(c) for c in LATENCY_COLUMNS}}
    grouped = rows.values("grade", "served_by", "offload_reason").annotate(**sums)
    return [
        rating.Usage(
            grade=row["grade"],
            served_by=row["served_by"],
            offload_reason=row["offload_reason"] or None,
            count=row["n"] or 0,
            latency_counts=tuple(row[c] or 0 for c in LATENCY_COLUMNS),
        )
        for row in grouped.order_by("grade", "served_by", "offload_reason")
    ]


def late_usage(
    tenant: Tenant, before: datetime, *, received_after: datetime | None, received_until: datetime
) -> list[rating.LateUsage]:
    """Usage of months before `before` that arrived after they were invoiced, per month."""
    if received_after is None:
        return []  # no earlier invoice: nothing can be late for it
    rows = (
        UsageRecord.objects.filter(
            tenant=tenant,
            minute__lt=before,
            received_at__gt=received_after,
            received_at__lte=received_until,
        )
        .values("grade", "served_by", "offload_reason", "minute")
        .annotate(n=Sum("count"))
    )
    by_month: dict[tuple[int, int], dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        key = (row["grade"], row["served_by"], row["offload_reason"] or None)
        by_month[month_of(tenant, row["minute"])][key] += row["n"]
    late = []
    for (year, month), counts in sorted(by_month.items()):
        start, end = rating.month_bounds(year, month, tenant.time_zone)
        late.append(
            rating.LateUsage(
                year=year,
                month=month,
                usage=tuple(
                    rating.Usage(grade=g, served_by=s, offload_reason=r, count=n)
                    for (g, s, r), n in sorted(counts.items(), key=str)
                ),
                prices=price_book(tenant.currency, start, end),
            )
        )
    return late


# --- price data ------------------------------------------------------------------------------


def price_book(currency: str, at: datetime, until: datetime | None = None) -> rating.Prices:
    """The prices in effect at `at`; a (grade, serving) first priced before `until` (a
    provider's first price, set during the month) counts from `at` too, so a month is never
    unpriced for having begun before its prices."""
    tables: dict[str, dict[str, Decimal]] = {"local": {}, "regional": {}}
    for price in Price.objects.in_effect(at).filter(currency=currency):
        tables[price.serving][price.grade] = price.per_1000
    if until is not None:
        for price in Price.objects.filter(
            currency=currency, effective_from__gt=at, effective_from__lt=until
        ).order_by("effective_from"):
            tables[price.serving].setdefault(price.grade, price.per_1000)
    return rating.Prices(local=tables["local"], regional=tables["regional"])


@dataclass(frozen=True)
class MonthTerms:
    bands: list[rating.BandTerm]
    addons: list[rating.Addon]
    quality_credit_share: Decimal
    tax_rate: Decimal
    tax_name: str
    band_label: str
    p95_target_ms: float | None


def month_terms(tenant: Tenant, start: datetime, end: datetime) -> MonthTerms:
    """The tenant's bands, add-ons, credit share and tax for [start, end), from the database."""
    currency = tenant.currency
    return resolve_terms(
        tenant,
        start,
        end,
        subscriptions=Subscription.objects.filter(tenant=tenant)
        .overlapping(start, end)
        .select_related("band")
        .order_by("starts_at"),
        band_terms_at=lambda sub, at: sub.band.terms_at(currency, at),
        activations=FeatureActivation.objects.filter(tenant=tenant)
        .overlapping(start, end)
        .select_related("bundle"),
        addon_price_at=lambda activation, at: activation.bundle.price_at(currency, at),
        tax=TaxRate.for_jurisdiction(tenant.jurisdiction, start),
    )


def resolve_terms(
    tenant: Tenant,
    start: datetime,
    end: datetime,
    *,
    subscriptions: Iterable[Subscription],
    band_terms_at: Callable[[Subscription, datetime], BandTerms | None],
    activations: Iterable[FeatureActivation],
    addon_price_at: Callable[[FeatureActivation, datetime], Decimal | None],
    tax: TaxRate | None,
) -> MonthTerms:
    """The month's terms from rows already fetched (one tenant's here, a month of every
    tenant's in billing/billing_run.py): subscriptions and activations in time order, and
    how to find what was in effect when each began in the month."""
    bands = []
    dominant = None
    for sub in subscriptions:
        if not (sub.starts_at < end and (sub.ends_at is None or sub.ends_at > start)):
            continue
        terms = band_terms_at(sub, max(sub.starts_at, start))
        if terms is None:
            log.warning("%s has no %s terms; not charged", sub.band, tenant.currency)
            continue
        starts, ends = max(sub.starts_at, start), min(sub.ends_at or end, end)
        bands.append(
            rating.BandTerm(
                band=sub.band.name,
                monthly_fee=terms.monthly_fee,
                included_inferences=terms.included_inferences,
                overage_per_1000=terms.overage,
                p95_target_ms=terms.p95_target_ms,
                sla_credit_percent=terms.sla_credit_percent,
                starts=starts,
                ends=ends,
            )
        )
        if dominant is None or (ends - starts) >= dominant[0]:
            dominant = (ends - starts, sub.band.name, terms)
    addons = []
    for activation in activations:
        if not (
            activation.starts_at < end
            and (activation.ends_at is None or activation.ends_at > start)
        ):
            continue
        price = addon_price_at(activation, max(activation.starts_at, start))
        if price is not None:
            addons.append(
                rating.Addon(
                    name=activation.bundle.name,
                    monthly_price=price,
                    starts=max(activation.starts_at, start),
                    ends=min(activation.ends_at or end, end),
                )
            )
    share = (
        dominant[2].tenant_quality_credit_percent / 100
        if dominant is not None
        else settings.OUTPOST_TENANT_QUALITY_CREDIT_SHARE
    )
    return MonthTerms(
        bands=bands,
        addons=addons,
        quality_credit_share=share,
        tax_rate=tax.rate if tax is not None else Decimal(0),
        tax_name=tax.name if tax is not None else "",
        band_label=dominant[1] if dominant is not None else "",
        p95_target_ms=dominant[2].p95_target_ms if dominant is not None else None,
    )


# --- drafts and finalisation -------------------------------------------------------------------


def _previous_cutoff(tenant: Tenant, start: datetime) -> datetime | None:
    return (
        Invoice.objects.filter(tenant=tenant, period_start__lt=start)
        .settled_or_open()
        .exclude(status=InvoiceStatus.VOID)
        .order_by("-period_start")
        .values_list("usage_cutoff", flat=True)
        .first()
    )


def rate_month(
    tenant: Tenant, year: int, month: int, cutoff: datetime
) -> tuple[rating.RatedInvoice, MonthTerms]:
    """The tenant's month rated with the usage received up to `cutoff`, and the terms it was
    rated with (the invoice keeps their band and tax name)."""
    start, end = rating.month_bounds(year, month, tenant.time_zone)
    previous = _previous_cutoff(tenant, start)
    terms = month_terms(tenant, start, end)
    try:
        rated = rating.rate(
            start=start,
            end=end,
            currency=tenant.currency,
            usage=usage_between(tenant, start, end, received_after=None, received_until=cutoff),
            prices=price_book(tenant.currency, start, end),
            quality_credit_share=terms.quality_credit_share,
            tax_rate=terms.tax_rate,
            tax_name=terms.tax_name,
            bands=terms.bands,
            addons=terms.addons,
            adjustments=late_usage(tenant, start, received_after=previous, received_until=cutoff),
            bounds=protocol.LATENCY_BOUNDS_S,
        )
    except ValueError as exc:  # e.g. usage of a grade the price book does not price
        raise InvoicingError(f"{tenant.slug} {year}-{month:02d}: {exc}") from exc
    return rated, terms


def refresh_draft(tenant: Tenant, year: int, month: int, *, now: datetime | None = None) -> Invoice:
    """Create or bring up to date the draft of a tenant's month; a month already finalised
    is returned as it is."""
    now = now or timezone.now()
    with transaction.atomic():
        invoice = _live_invoice(tenant, year, month, lock=True)
        if invoice is not None and not invoice.is_draft:
            return invoice
        rated, terms = rate_month(tenant, year, month, now)
        if invoice is None:
            invoice = Invoice.objects.create(
                tenant=tenant,
                year=year,
                month=month,
                period_start=rated.start,
                period_end=rated.end,
                currency=tenant.currency,
            )
            InvoiceEvent.objects.create(invoice=invoice, kind="created", at=now)
        _write(invoice, rated, terms, tenant, cutoff=now)
        invoice.refreshed_at = now
        invoice.save()
    return invoice


def finalise_invoice(invoice: Invoice, *, acting_user=None, now: datetime | None = None) -> Invoice:
    """Rate the month one last time, number it and freeze it. Idempotent: a finalised invoice
    is returned as it is. Refused while an earlier month of the tenant is still a draft."""
    now = now or timezone.now()
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice.pk)
        if not invoice.is_draft:
            return invoice
        if now < invoice.period_end:
            raise InvoicingError(
                f"{invoice.tenant.slug}'s {invoice.label} is not over yet "
                f"(it ends {invoice.period_end:%Y-%m-%d %H:%M} UTC)"
            )
        earlier = Invoice.objects.filter(
            tenant=invoice.tenant, period_start__lt=invoice.period_start, status=InvoiceStatus.DRAFT
        ).first()
        if earlier is not None:
            raise InvoicingError(
                f"finalise {invoice.tenant.slug}'s {earlier.label} first: months are finalised "
                "in order"
            )
        tenant = invoice.tenant
        before = {"status": invoice.status, "total": quantize(invoice.total, invoice.currency)}
        rated, terms = rate_month(tenant, invoice.year, invoice.month, now)
        _write(invoice, rated, terms, tenant, cutoff=now)
        invoice.number = InvoiceNumber.take(now)
        invoice.status = InvoiceStatus.FINALISED
        invoice.finalised_at = invoice.refreshed_at = now
        invoice.save()
        InvoiceEvent.objects.create(
            invoice=invoice,
            kind="finalised",
            actor=acting_user,
            at=now,
            detail={"number": invoice.number, "total": str(invoice.total)},
        )
        audit.record(
            "invoice.finalised",
            category=AuditCategory.MONEY,
            actor=acting_user,
            subject=invoice,
            at=now,
            before=before,
            after={
                "status": invoice.status,
                "number": invoice.number,
                "total": quantize(invoice.total, invoice.currency),
                "currency": invoice.currency,
            },
        )
        if settings.STRIPE_API_KEY:
            from billing.tasks import sync_invoice_task

            invoice_id = invoice.pk
            transaction.on_commit(lambda: sync_invoice_task.delay(invoice_id))
    return invoice


def _live_invoice(tenant: Tenant, year: int, month: int, *, lock: bool) -> Invoice | None:
    rows = Invoice.objects.filter(tenant=tenant, year=year, month=month).exclude(
        status=InvoiceStatus.VOID
    )
    if lock and connection.features.has_select_for_update:
        rows = rows.select_for_update()
    return rows.first()


def _write(
    invoice: Invoice,
    rated: rating.RatedInvoice,
    terms: MonthTerms,
    tenant: Tenant,
    *,
    cutoff: datetime,
) -> None:
    """Replace a draft's lines and totals with a rating (drafts only: the callers hold the
    row lock and checked its status)."""
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=line.kind,
            description=line.description[:300],
            quantity=Decimal(line.quantity),
            unit_price=line.unit_price,
            amount=line.amount,
            grade=line.grade or "",
            serving=line.serving or "",
            reason=line.reason or "",
        )
        for position, line in enumerate(rated.lines, start=1)
    )
    invoice.subtotal, invoice.tax, invoice.total = rated.subtotal, rated.tax, rated.total
    invoice.tax_name = terms.tax_name
    invoice.band = terms.band_label
    invoice.p95_target_ms = terms.p95_target_ms
    # Slower than the last bucket: stored as P95_BEYOND (a database has no portable infinity).
    invoice.p95_ms = None if rated.p95_ms is None else min(rated.p95_ms, P95_BEYOND)
    invoice.inferences = _counted(tenant, rated.start, rated.end, cutoff)
    invoice.usage_cutoff = cutoff


P95_BEYOND = 1e9


def _counted(tenant: Tenant, start: datetime, end: datetime, cutoff: datetime) -> int:
    return (
        UsageRecord.objects.filter(
            tenant=tenant, minute__gte=start, minute__lt=end, received_at__lte=cutoff
        ).aggregate(n=Sum("count"))["n"]
        or 0
    )


# Lines whose amount does not grow with usage: a month's forecast keeps them as they are.
FIXED_KINDS = frozenset({"band_fee", "addon", "sla_credit", "adjustment", "tax"})


def forecast(invoice: Invoice, now: datetime) -> Decimal:
    """The month's total if usage goes on as it has: usage lines scaled from the share of the
    month elapsed, fixed lines as they are, tax at the draft's own rate (before tax)."""
    elapsed = (min(now, invoice.period_end) - invoice.period_start).total_seconds()
    length = (invoice.period_end - invoice.period_start).total_seconds()
    if elapsed <= 0 or not invoice.is_draft:
        return invoice.total
    lines = list(invoice.lines.all())
    variable = sum((x.amount for x in lines if x.kind not in FIXED_KINDS), start=Decimal(0))
    fixed = sum((x.amount for x in lines if x.kind in FIXED_KINDS - {"tax"}), start=Decimal(0))
    net = fixed + variable * Decimal(length) / Decimal(elapsed)
    rate = invoice.tax / invoice.subtotal if invoice.subtotal else Decimal(0)
    return quantize(net * (1 + rate), invoice.currency)


def draft_all(*, now: datetime | None = None, after_each=None) -> int:
    """Refresh every tenant's draft of its current month (the beat task), a month of every
    tenant at a time (billing/billing_run.py); `after_each(tenant, now=...)` runs after, for
    each tenant (the budget check). Returns the drafts rated."""
    from billing.billing_run import refresh_month_drafts

    now = now or timezone.now()
    tenants = list(Tenant.objects.all())
    rated = 0
    for year, month in sorted({month_of(t, now) for t in tenants}):
        summary = refresh_month_drafts(year, month, now=now)
        for slug, why in summary.failed.items():
            log.warning("draft of %s not refreshed: %s", slug, why)
        rated += summary.rated
    if after_each is not None:
        for tenant in tenants:
            after_each(tenant, now=now)
    return rated
