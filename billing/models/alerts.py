"""Spending alerts (a ledger: each fires once per tenant, month and threshold) and the budget
state of a tenant's month, which routing reads (fleet compiles `budget_exhausted`)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models.accounts import Tenant


class AlertKind(models.TextChoices):
    THRESHOLD = "threshold", "share of the budget reached"
    FORECAST = "forecast", "forecast above the budget"
    EXHAUSTED = "exhausted", "budget exhausted"


class SpendingAlert(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="spending_alerts")
    year = models.PositiveSmallIntegerField()
    month = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=10, choices=AlertKind.choices)
    # The share of the budget, in percent, for threshold alerts (0 for the others).
    percent = models.PositiveSmallIntegerField(default=0)
    spend = models.DecimalField(max_digits=16, decimal_places=3)
    forecast = models.DecimalField(max_digits=16, decimal_places=3)
    budget = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    at = models.DateTimeField(default=timezone.now)
    emailed_to = models.CharField(max_length=254, blank=True)
    # "200", "HTTP 500", "ConnectError…", or empty when the tenant has no webhook.
    webhook_result = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "year", "month", "kind", "percent"], name="one_alert_per_step"
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug} {self.year}-{self.month:02d}: {self.message}"

    @property
    def message(self) -> str:
        if self.kind == AlertKind.THRESHOLD:
            return (
                f"{self.percent} % of the monthly budget spent ({self.spend} of {self.budget} "
                f"{self.currency})"
            )
        if self.kind == AlertKind.FORECAST:
            return (
                f"the month is forecast at {self.forecast} {self.currency}, above the budget of "
                f"{self.budget}"
            )
        return f"the monthly budget of {self.budget} {self.currency} is spent ({self.spend})"


class BudgetStatus(models.Model):
    """Where a tenant's month stands against its budget, as last checked."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="budget_status")
    year = models.PositiveSmallIntegerField()
    month = models.PositiveSmallIntegerField()
    spend = models.DecimalField(max_digits=16, decimal_places=3)
    forecast = models.DecimalField(max_digits=16, decimal_places=3)
    exhausted = models.BooleanField(default=False)
    checked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "year", "month"], name="one_status_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug} {self.year}-{self.month:02d}: {self.spend}"
