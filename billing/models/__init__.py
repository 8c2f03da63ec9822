"""Billing's models: accounts (accounts.py), the price book (prices.py) and the usage ledger
(usage.py)."""

from billing.models.accounts import (
    API_KEY_PREFIX,
    RESERVED_SLUGS,
    VISIBLE_KEY_CHARS,
    ApiKey,
    IssuedToken,
    Membership,
    Tenant,
    validate_currency,
    validate_not_reserved,
    validate_time_zone,
)
from billing.models.prices import Price, PriceInEffectError, format_price
from billing.models.usage import (
    LATENCY_COLUMNS,
    QuarantinedUsage,
    StaleRollup,
    UsageBatch,
    UsageHourly,
    UsageRecord,
)

__all__ = [
    "LATENCY_COLUMNS",
    "QuarantinedUsage",
    "StaleRollup",
    "UsageBatch",
    "UsageHourly",
    "UsageRecord",
    "API_KEY_PREFIX",
    "RESERVED_SLUGS",
    "VISIBLE_KEY_CHARS",
    "ApiKey",
    "IssuedToken",
    "Membership",
    "Price",
    "PriceInEffectError",
    "Tenant",
    "format_price",
    "validate_currency",
    "validate_not_reserved",
    "validate_time_zone",
]
