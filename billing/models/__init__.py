"""Billing's models: accounts (accounts.py), the price book (prices.py), the usage ledger
(usage.py), commitments (plans.py), invoices (invoices.py), spending alerts (alerts.py) and
the audit log (audit.py)."""

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
from billing.models.alerts import AlertKind, BudgetStatus, SpendingAlert
from billing.models.audit import AuditEntry, AuditLogIsAppendOnly
from billing.models.invoices import (
    CloseRun,
    Invoice,
    InvoiceEvent,
    InvoiceLine,
    InvoiceNumber,
    InvoiceTransitionError,
    StripeEvent,
)
from billing.models.plans import (
    BandTerms,
    FeatureActivation,
    FeatureBundle,
    FeatureBundlePrice,
    LatencyBand,
    Subscription,
    TaxRate,
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
    "AuditEntry",
    "AuditLogIsAppendOnly",
    "CloseRun",
    "AlertKind",
    "BudgetStatus",
    "SpendingAlert",
    "BandTerms",
    "FeatureActivation",
    "FeatureBundle",
    "FeatureBundlePrice",
    "Invoice",
    "InvoiceEvent",
    "InvoiceLine",
    "InvoiceNumber",
    "InvoiceTransitionError",
    "LatencyBand",
    "StripeEvent",
    "Subscription",
    "TaxRate",
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
