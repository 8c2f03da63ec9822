"""The price book in /api/v1/prices, for operators (a staff session, like the deployments).

Amounts travel as strings ("0.050000") so no JSON reader turns them into floats; a request
may send a price as a string or a number.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError

from billing.auth import staff_session
from billing.forms import PriceForm
from billing.models import Price
from inference import protocol

prices_router = Router(tags=["prices"], auth=staff_session)


class PriceOut(Schema):
    id: int
    grade: str
    serving: str
    currency: str
    per_1000: Decimal
    effective_from: datetime
    note: str
    created_at: datetime


class PriceIn(Schema):
    grade: str
    serving: str
    currency: str = "EUR"
    per_1000: Decimal
    effective_from: datetime | None = None
    note: str = ""


class PricesAt(Schema):
    at: datetime | None = None


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and timezone.is_naive(value):
        raise HttpError(
            400, f"{name} needs a time zone offset, e.g. 2026-12-01T00:00:00Z (times are UTC)"
        )


def form_errors(form: PriceForm) -> str:
    """A form's errors as one line for an API error body: "field: message; …"."""
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in form.errors.items())


@prices_router.get(
    "",
    response={200: list[PriceOut], 400: protocol.ErrorBody},
    summary="The prices in effect now, or at `at`: one per grade, serving and currency",
)
def list_prices(request: HttpRequest, query: Query[PricesAt]):
    _require_aware(query.at, "at")
    return Price.objects.in_effect(query.at).order_by("currency", "grade", "serving")


@prices_router.post(
    "",
    response={201: PriceOut, 400: protocol.ErrorBody},
    summary="Schedule a price from `effective_from` (now when omitted; never in the past)",
)
def schedule_price(request: HttpRequest, body: PriceIn):
    _require_aware(body.effective_from, "effective_from")
    form = PriceForm(body.dict())
    if not form.is_valid():
        raise HttpError(400, form_errors(form))
    return Status(201, form.schedule(created_by=request.auth))
