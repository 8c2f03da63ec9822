"""Commitments: latency bands and their terms, tenants' subscriptions to them, feature bundles
(add-ons) and tax rates. Data operators edit, versioned by effective date; billing/rating.py
prices a month with what was in effect in it (billing/invoicing.py gathers it)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models.accounts import Tenant, validate_currency

_NON_NEGATIVE = MinValueValidator(Decimal(0), "Cannot be negative.")
_PERCENT = [_NON_NEGATIVE, MaxValueValidator(Decimal(100), "At most 100 %.")]


def _money(**kwargs) -> models.DecimalField:
    return models.DecimalField(
        max_digits=14, decimal_places=6, validators=[_NON_NEGATIVE], **kwargs
    )


class LatencyBand(models.Model):
    """A committed tier (bronze, silver, gold…): a p95 target and what it costs, per currency
    and over time in `BandTerms`."""

    slug = models.SlugField(max_length=30, unique=True)
    name = models.CharField(max_length=60)
    description = models.CharField(max_length=300, blank=True)
    # Higher bands promise faster answers; the portal lists them in this order.
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    def terms_at(self, currency: str, at: datetime | None = None) -> BandTerms | None:
        return (
            self.terms.filter(currency=currency, effective_from__lte=at or timezone.now())
            .order_by("-effective_from")
            .first()
        )


class BandTerms(models.Model):
    """What a band promises and costs in one currency from `effective_from` on."""

    band = models.ForeignKey(LatencyBand, on_delete=models.PROTECT, related_name="terms")
    currency = models.CharField(max_length=3, validators=[validate_currency])
    effective_from = models.DateTimeField()
    p95_target_ms = models.FloatField(validators=[MinValueValidator(0.1)])
    monthly_fee = _money()
    included_inferences = models.PositiveBigIntegerField()
    overage_tiny = _money(help_text="Per 1,000 tiny inferences beyond the included ones")
    overage_medium = _money(help_text="Per 1,000 medium inferences beyond the included ones")
    overage_large = _money(help_text="Per 1,000 large inferences beyond the included ones")
    sla_credit_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        validators=_PERCENT,
        help_text="Share of the band fee credited when the month's p95 misses the target",
    )
    # The share of the regional premium returned when the tenant's own quality objective
    # sent a request to the accelerator pool (the provider's own reasons get 100 %).
    tenant_quality_credit_percent = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal(50), validators=_PERCENT
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["band", "currency", "-effective_from"]
        verbose_name_plural = "band terms"
        constraints = [
            models.UniqueConstraint(
                fields=["band", "currency", "effective_from"], name="one_band_terms_per_time"
            )
        ]

    def __str__(self) -> str:
        return f"{self.band} {self.currency} from {self.effective_from:%Y-%m-%d}"

    @property
    def overage(self) -> dict[str, Decimal]:
        return {
            "tiny": self.overage_tiny,
            "medium": self.overage_medium,
            "large": self.overage_large,
        }


class SubscriptionQuerySet(models.QuerySet["Subscription"]):
    def overlapping(self, start: datetime, end: datetime) -> SubscriptionQuerySet:
        """Subscriptions in effect for some of [start, end)."""
        return self.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=start), starts_at__lt=end)

    def current(self, at: datetime | None = None) -> SubscriptionQuerySet:
        at = at or timezone.now()
        return self.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=at), starts_at__lte=at)


class Subscription(models.Model):
    """A tenant on a band from `starts_at` until `ends_at` (open: until changed). A change
    ends the current row and starts a new one (billing/actions.py: change_band), so a month
    with a change is prorated between the two."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="subscriptions")
    band = models.ForeignKey(LatencyBand, on_delete=models.PROTECT, related_name="subscriptions")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "-starts_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__isnull=True) | Q(ends_at__gt=models.F("starts_at")),
                name="subscription_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(ends_at__isnull=True), name="one_open_subscription"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tenant} on {self.band} from {self.starts_at:%Y-%m-%d}"


class FeatureBundle(models.Model):
    """An add-on with a monthly price (personalisation signals, edge analytics…) that a tenant
    switches on in the portal; its `features` reach the nodes through the policy bundle."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=300, blank=True)
    # The feature names it unlocks on the nodes (TenantRules.features).
    features = models.JSONField(default=list)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def price_at(self, currency: str, at: datetime | None = None) -> Decimal | None:
        return (
            self.prices.filter(currency=currency, effective_from__lte=at or timezone.now())
            .order_by("-effective_from")
            .values_list("monthly_price", flat=True)
            .first()
        )


class FeatureBundlePrice(models.Model):
    bundle = models.ForeignKey(FeatureBundle, on_delete=models.PROTECT, related_name="prices")
    currency = models.CharField(max_length=3, validators=[validate_currency])
    monthly_price = _money()
    effective_from = models.DateTimeField()

    class Meta:
        ordering = ["bundle", "currency", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["bundle", "currency", "effective_from"], name="one_addon_price_per_time"
            )
        ]

    def __str__(self) -> str:
        return f"{self.bundle} {self.currency} {self.monthly_price} from {self.effective_from:%Y-%m-%d}"


class FeatureActivation(models.Model):
    """A tenant's add-on switched on from `starts_at` until `ends_at` (prorated like bands)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="features")
    bundle = models.ForeignKey(FeatureBundle, on_delete=models.PROTECT, related_name="+")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "-starts_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "bundle"],
                condition=Q(ends_at__isnull=True),
                name="one_open_activation_per_bundle",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bundle} for {self.tenant} from {self.starts_at:%Y-%m-%d}"


class TaxRate(models.Model):
    """The tax on invoices to tenants of one jurisdiction (ISO country code), from a date."""

    jurisdiction = models.CharField(max_length=2, help_text="ISO 3166 country code, e.g. DE")
    name = models.CharField(max_length=40, help_text='As the invoice shows it, e.g. "VAT 19 %"')
    rate = models.DecimalField(
        max_digits=6,
        decimal_places=4,
        validators=[_NON_NEGATIVE, MaxValueValidator(Decimal(1), "A share, at most 1.")],
        help_text="A share: 0.19 for 19 %",
    )
    effective_from = models.DateTimeField()

    class Meta:
        ordering = ["jurisdiction", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["jurisdiction", "effective_from"], name="one_tax_rate_per_time"
            )
        ]

    def __str__(self) -> str:
        return f"{self.jurisdiction} {self.name}"

    def clean(self) -> None:
        if self.jurisdiction and not (self.jurisdiction.isalpha() and self.jurisdiction.isupper()):
            raise ValidationError({"jurisdiction": "Two capital letters, e.g. DE."})

    @classmethod
    def for_jurisdiction(cls, jurisdiction: str, at: datetime | None = None) -> TaxRate | None:
        if not jurisdiction:
            return None
        return (
            cls.objects.filter(jurisdiction=jurisdiction, effective_from__lte=at or timezone.now())
            .order_by("-effective_from")
            .first()
        )
