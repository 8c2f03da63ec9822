from django.db import models


class MemberRole(models.TextChoices):
    OWNER = "owner", "Owner"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


class PriceGrade(models.TextChoices):
    """The workload grades prices are set for. The same words as fleet.choices.Grade (billing
    may not import fleet): usage records carry the grade as a word, and rating matches on it."""

    TINY = "tiny", "Tiny"
    MEDIUM = "medium", "Medium"
    LARGE = "large", "Large"


class Serving(models.TextChoices):
    """Where a request was served (the usage record's `served_by`): regional is dearer."""

    LOCAL = "local", "Local"
    REGIONAL = "regional", "Regional"


class PriceState(models.TextChoices):
    """Where a row of the price book stands at a moment (derived, not stored)."""

    IN_EFFECT = "in_effect", "in effect"
    SCHEDULED = "scheduled", "scheduled"
    SUPERSEDED = "superseded", "superseded"


PRICE_STATE_BADGE = {
    PriceState.IN_EFFECT: "success",
    PriceState.SCHEDULED: "info",
    PriceState.SUPERSEDED: "secondary",
}


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    FINALISED = "finalised", "Finalised"
    PAID = "paid", "Paid"
    VOID = "void", "Void"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"


INVOICE_STATUS_BADGE = {
    InvoiceStatus.DRAFT: "secondary",
    InvoiceStatus.FINALISED: "primary",
    InvoiceStatus.PAID: "success",
    InvoiceStatus.VOID: "dark",
    InvoiceStatus.UNCOLLECTIBLE: "danger",
}

# Where an invoice may go from where it is: finalised is the only way out of a draft, and a
# finalised invoice is never edited, only settled (paid, void, uncollectible).
INVOICE_TRANSITIONS = {
    InvoiceStatus.DRAFT: {InvoiceStatus.FINALISED},
    InvoiceStatus.FINALISED: {InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE},
    InvoiceStatus.UNCOLLECTIBLE: {InvoiceStatus.PAID, InvoiceStatus.VOID},
    InvoiceStatus.PAID: set(),
    InvoiceStatus.VOID: set(),
}


# --- the audit log (billing/models/audit.py) ---------------------------------------------------


class AuditCategory(models.TextChoices):
    """What an audited action changed."""

    MONEY = "money", "Money"
    POLICY = "policy", "Policy"
    DEPLOYMENT = "deployment", "Deployment"
    ACCESS = "access", "Access"


AUDIT_CATEGORY_BADGE = {
    AuditCategory.MONEY: "success",
    AuditCategory.POLICY: "primary",
    AuditCategory.DEPLOYMENT: "info",
    AuditCategory.ACCESS: "warning",
}


class ActorKind(models.TextChoices):
    """Who acted: a person by role, a tenant's API key, a node, or the console itself (beat
    tasks, automatic rollbacks, Stripe's webhooks, the demo seed)."""

    OPERATOR = "operator", "Operator"
    FINANCE = "finance", "Finance"
    TENANT = "tenant", "Tenant member"
    API_KEY = "api_key", "API key"
    NODE = "node", "Node"
    SYSTEM = "system", "System"
