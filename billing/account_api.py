"""A tenant's usage and invoices over /api/v1, with its API key: always its own, never
another's (every query starts from the key's tenant)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema
from ninja.errors import HttpError

from billing import rating
from billing.auth import ApiKeyAuth
from billing.choices import InvoiceStatus
from billing.invoicing import forecast, month_of
from billing.models import Invoice, UsageHourly
from inference import protocol

usage_router = Router(tags=["usage"], auth=ApiKeyAuth())
invoices_router = Router(tags=["invoices"], auth=ApiKeyAuth())
MONTH = re.compile(r"(\d{4})-(\d{2})")


class UsageRow(Schema):
    model: str
    version: str
    grade: str
    served_by: str
    offload_reason: str | None
    inferences: int
    errors: int
    energy_j: float


class UsageOut(Schema):
    tenant: str
    period: str
    start: datetime
    end: datetime
    currency: str
    inferences: int
    local: int
    regional: int
    total_so_far: Decimal | None
    forecast: Decimal | None
    p95_ms: float | None
    rows: list[UsageRow]


class LineOut(Schema):
    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal


class InvoiceOut(Schema):
    number: str
    period: str
    status: str
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    finalised_at: datetime | None
    paid_at: datetime | None
    payment_url: str | None
    lines: list[LineOut] = []


def _invoice(invoice: Invoice, *, lines: bool) -> InvoiceOut:
    return InvoiceOut(
        number=invoice.number,
        period=invoice.label,
        status=invoice.status,
        currency=invoice.currency,
        subtotal=invoice.subtotal,
        tax=invoice.tax,
        total=invoice.total,
        finalised_at=invoice.finalised_at,
        paid_at=invoice.paid_at,
        payment_url=invoice.stripe_url or None,
        lines=[
            LineOut(
                kind=x.kind,
                description=x.description,
                quantity=x.quantity,
                unit_price=x.unit_price,
                amount=x.amount,
            )
            for x in invoice.lines.all()
        ]
        if lines
        else [],
    )


@usage_router.get(
    "",
    response={200: UsageOut, 400: protocol.ErrorBody, 401: protocol.ErrorBody},
    summary="The key's tenant's usage of a month (default: this one) by model and serving",
)
def get_usage(request: HttpRequest, month: str | None = None):
    tenant = request.auth.tenant
    now = timezone.now()
    if month is None:
        year, number = month_of(tenant, now)
    else:
        match = MONTH.fullmatch(month)
        if match is None or not 1 <= int(match[2]) <= 12:
            raise HttpError(400, f"month must be YYYY-MM, e.g. 2026-11, not {month!r}")
        year, number = int(match[1]), int(match[2])
    start, end = rating.month_bounds(year, number, tenant.time_zone)
    grouped = UsageHourly.objects.of(tenant, start, end).summed_by(
        "model", "version", "grade", "served_by", "offload_reason"
    )
    rows = [
        UsageRow(
            model=r["model"],
            version=r["version"],
            grade=r["grade"],
            served_by=r["served_by"],
            offload_reason=r["offload_reason"] or None,
            inferences=r["inferences"],
            errors=r["errors_total"],
            energy_j=r["energy"],
        )
        for r in grouped
    ]
    invoice = (
        Invoice.objects.filter(tenant=tenant, year=year, month=number)
        .exclude(status=InvoiceStatus.VOID)
        .first()
    )
    return UsageOut(
        tenant=tenant.slug,
        period=f"{year}-{number:02d}",
        start=start,
        end=end,
        currency=tenant.currency,
        inferences=sum(r.inferences for r in rows),
        local=sum(r.inferences for r in rows if r.served_by == "local"),
        regional=sum(r.inferences for r in rows if r.served_by == "regional"),
        total_so_far=invoice.total if invoice else None,
        forecast=forecast(invoice, now) if invoice else None,
        p95_ms=invoice.p95_ms if invoice else None,
        rows=rows,
    )


@invoices_router.get(
    "",
    response={200: list[InvoiceOut], 401: protocol.ErrorBody},
    summary="The key's tenant's invoices (finalised, paid and settled), newest first",
)
def list_invoices(request: HttpRequest):
    tenant = request.auth.tenant
    return [
        _invoice(i, lines=False)
        for i in Invoice.objects.for_tenant(tenant).settled_or_open().order_by("-period_start")
    ]


@invoices_router.get(
    "/{number}",
    response={200: InvoiceOut, 401: protocol.ErrorBody, 404: protocol.ErrorBody},
    summary="One invoice of the key's tenant, with its lines",
)
def get_invoice(request: HttpRequest, number: str):
    invoice = (
        Invoice.objects.for_tenant(request.auth.tenant)
        .settled_or_open()
        .prefetch_related("lines")
        .filter(number=number)
        .first()
    )
    if invoice is None:
        raise HttpError(404, f"no invoice {number} of yours")
    return _invoice(invoice, lines=True)
