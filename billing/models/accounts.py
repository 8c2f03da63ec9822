"""Accounts: tenants, the people in them, their API keys and the tokens issued with them."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models, transaction
from django.utils import timezone

from billing.choices import AuditCategory, MemberRole
from inference.protocol import hash_secret, new_secret

API_KEY_PREFIX = "opk"
# Characters of a key kept in clear so a person can tell keys apart: "opk_" + 8.
VISIBLE_KEY_CHARS = 12


# Slugs the console's pages use as words of their own (the model list's owner filter has
# `?owner=catalogue` for the provider's catalogue).
RESERVED_SLUGS = frozenset({"catalogue", "admin", "api", "portal", "finance", "fleet"})


validate_currency = RegexValidator(r"^[A-Z]{3}$", "An ISO 4217 code, e.g. EUR")


def validate_not_reserved(value: str) -> None:
    if value in RESERVED_SLUGS:
        raise ValidationError(f"{value!r} is reserved; choose another slug")


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)")


def default_alert_percents() -> list[int]:
    return [50, 80, 100]


class TenantQuerySet(models.QuerySet["Tenant"]):
    def with_account_counts(self) -> TenantQuerySet:
        return self.annotate(
            members=models.Count("memberships", distinct=True),
            active_keys=models.Count(
                "api_keys", filter=models.Q(api_keys__revoked_at__isnull=True), distinct=True
            ),
        )


class Tenant(models.Model):
    """A customer of the provider. Billing periods are calendar months in its time zone."""

    slug = models.SlugField(max_length=50, unique=True, validators=[validate_not_reserved])
    name = models.CharField(max_length=200)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    currency = models.CharField(
        max_length=3,
        default="EUR",
        validators=[validate_currency],
    )
    # Where its invoices are taxed (ISO 3166 country code; billing.TaxRate); empty: no tax.
    jurisdiction = models.CharField(max_length=2, blank=True)
    billing_email = models.EmailField(blank=True)
    # The monthly budget spending alerts are measured against (None: no budget, no alerts).
    monthly_budget = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0), "A budget cannot be negative.")],
    )
    # Shares of the budget, in percent, at which an alert fires (and 100: exhausted).
    budget_alert_percents = models.JSONField(default=default_alert_percents, blank=True)
    # Spending alerts are also POSTed here, signed (billing/alerts.py).
    alert_webhook_url = models.URLField(blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(models.QuerySet["Membership"]):
    def for_user(self, user: settings.AUTH_USER_MODEL) -> MembershipQuerySet:
        return self.filter(user=user).select_related("tenant")


class Membership(models.Model):
    """A user's role in one tenant; a user may belong to several tenants."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=MemberRole.choices, default=MemberRole.DEVELOPER)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A tenant's API key. Only its SHA-256 is stored; the secret is shown once, at creation."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=VISIBLE_KEY_CHARS, db_index=True, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @classmethod
    def issue(cls, tenant: Tenant, name: str, *, created_by=None) -> tuple[ApiKey, str]:
        """Create a key and return it with its secret, which is not kept anywhere."""
        from billing import audit

        secret = new_secret(API_KEY_PREFIX)
        with transaction.atomic():
            key = cls.objects.create(
                tenant=tenant,
                name=name,
                prefix=secret[:VISIBLE_KEY_CHARS],
                secret_hash=hash_secret(secret),
                created_by=created_by,
            )
            audit.record(
                "api_key.created",
                category=AuditCategory.ACCESS,
                actor=created_by,
                subject=key,
                after=audit.fields_of(key, ["name", "prefix", "created_at"]),
            )
        return key, secret

    @classmethod
    def authenticate(cls, secret: str) -> ApiKey | None:
        key = (
            cls.objects.active()
            .select_related("tenant")
            .filter(secret_hash=hash_secret(secret))
            .first()
        )
        if key is not None:
            now = timezone.now()
            # One write a minute at most: last_used_at is for people, not an audit trail.
            if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
                cls.objects.filter(pk=key.pk).update(last_used_at=now)
        return key

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self, *, actor=None) -> None:
        """Revoke the key and every unexpired token issued with it: their ids travel to the
        nodes in the next policy bundle (fleet subscribes to IssuedToken's changes). `actor`
        (a user; None: the console) is who the audit log names."""
        from billing import audit

        if self.revoked_at is None:
            with transaction.atomic():
                self.revoked_at = timezone.now()
                self.save(update_fields=["revoked_at"])
                tokens = (
                    IssuedToken.objects.live(self.revoked_at)
                    .filter(api_key=self)
                    .revoke(self.revoked_at)
                )
                audit.record(
                    "api_key.revoked",
                    category=AuditCategory.ACCESS,
                    actor=actor,
                    subject=self,
                    before={"revoked_at": None},
                    after={"revoked_at": self.revoked_at, "tokens_revoked": tokens},
                )


class IssuedTokenQuerySet(models.QuerySet["IssuedToken"]):
    def live(self, now: datetime | None = None) -> IssuedTokenQuerySet:
        """Tokens not expired yet (revoked or not)."""
        return self.filter(expires_at__gt=now or timezone.now())

    def revoke(self, at: datetime | None = None) -> int:
        """Revoke these tokens (those not revoked already); returns how many. Each revoked
        row is saved on its own so that post_save tells the policy plane."""
        at = at or timezone.now()
        count = 0
        for token in self.filter(revoked_at__isnull=True):
            token.revoked_at = at
            token.save(update_fields=["revoked_at"])
            count += 1
        return count


class IssuedToken(models.Model):
    """One ephemeral token the console issued (billing/api.py): who for, with which key, until
    when. Nodes verify tokens offline, so revoking one means listing its id in the policy
    bundle until it expires; this ledger is where those ids come from."""

    token_id = models.CharField(max_length=64, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="issued_tokens")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="issued_tokens"
    )
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = IssuedTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["revoked_at", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.token_id} ({self.tenant_id}, until {self.expires_at:%H:%M:%S})"
