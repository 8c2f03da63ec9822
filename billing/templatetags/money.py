"""{{ amount|money:currency }}: an amount with exactly its currency's minor units (JPY 0,
EUR 2, KWD 3), as invoices state it."""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.currencies import minor_units

register = template.Library()


@register.filter
def money(amount: Decimal | None, currency: str) -> str:
    if amount is None:
        return ""
    places = minor_units(currency)
    return f"{Decimal(amount):,.{places}f}"


@register.filter
def unit_price(value: Decimal | None) -> str:
    """A price per unit as people read it: two decimals at least, no trailing zeros beyond
    (0.080000 → 0.08, 0.000125 → 0.000125)."""
    from billing.models import format_price

    return "" if value is None else format_price(Decimal(value))
