"""Accounts (tenants, the people in them, their API keys) and the price book."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from billing.choices import MemberRole, PriceGrade, Serving
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
        secret = new_secret(API_KEY_PREFIX)
        key = cls.objects.create(
            tenant=tenant,
            name=name,
            prefix=secret[:VISIBLE_KEY_CHARS],
            secret_hash=hash_secret(secret),
            created_by=created_by,
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

    def revoke(self) -> None:
        """Revoke the key and every unexpired token issued with it: their ids travel to the
        nodes in the next policy bundle (fleet subscribes to IssuedToken's changes)."""
        if self.revoked_at is None:
            with transaction.atomic():
                self.revoked_at = timezone.now()
                self.save(update_fields=["revoked_at"])
                IssuedToken.objects.live(self.revoked_at).filter(api_key=self).revoke(
                    self.revoked_at
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


# --- the price book -------------------------------------------------------------------------

# A time this much in the past still counts as "now" when a price is scheduled: a form filled
# in with the current time arrives a little later. Such a time is moved to the moment of
# scheduling (Price.clean), so no usage already served is priced anew.
SCHEDULE_GRACE = timedelta(minutes=5)


class PriceInEffectError(Exception):
    """An attempt to change or delete a price that is (or was) in effect: prices already used
    to state costs are history; a change is a new row with a later `effective_from`."""


def _aware(at: datetime | None) -> datetime:
    if at is None:
        return timezone.now()
    if timezone.is_naive(at):
        raise ValueError(f"{at!r} is naive; prices are looked up at an aware time")
    return at


class PriceQuerySet(models.QuerySet["Price"]):
    def in_effect(self, at: datetime | None = None) -> PriceQuerySet:
        """For each (grade, serving, currency), the row with the latest `effective_from` at or
        before `at` (default: now). One query: a correlated subquery, which PostgreSQL and
        SQLite both run off the (grade, serving, currency, effective_from) unique index."""
        at = _aware(at)
        # Over every row, not over `self`: a filter applied before in_effect() narrows the
        # answer, it must not make a superseded row look current.
        latest = (
            Price.objects.filter(
                grade=OuterRef("grade"),
                serving=OuterRef("serving"),
                currency=OuterRef("currency"),
                effective_from__lte=at,
            )
            .order_by("-effective_from")
            .values("pk")[:1]
        )
        return self.filter(effective_from__lte=at, pk=Subquery(latest))

    def scheduled(self, at: datetime | None = None) -> PriceQuerySet:
        """Rows that take effect after `at` (default: now), soonest first."""
        return self.filter(effective_from__gt=_aware(at)).order_by("effective_from")

    def price_for(
        self, grade: str, serving: str, currency: str, at: datetime | None = None
    ) -> Decimal | None:
        """The price per 1,000 inferences at `at` (default: now), or None when none is set."""
        return (
            self.filter(
                grade=grade, serving=serving, currency=currency, effective_from__lte=_aware(at)
            )
            .order_by("-effective_from")
            .values_list("per_1000", flat=True)
            .first()
        )

    # Bulk writes skip Model.save() and delete(): they keep the same rule.
    def update(self, **kwargs) -> int:
        self._refuse_if_any_in_effect("changed")
        return super().update(**kwargs)

    def delete(self):
        self._refuse_if_any_in_effect("deleted")
        return super().delete()

    def _refuse_if_any_in_effect(self, verb: str) -> None:
        if self.filter(effective_from__lte=timezone.now()).exists():
            raise PriceInEffectError(
                f"Prices that have taken effect cannot be {verb}; schedule a new price instead."
            )


class Price(models.Model):
    """A price per 1,000 inferences of one grade served locally or regionally, in one
    currency, from `effective_from` on until a later row of the same key takes over.

    Append-only: once its `effective_from` has passed a row is never changed or deleted
    (costs were stated with it); a scheduled row may still be deleted. Nodes get the prices
    in effect through their policy bundle to state each request's cost and enforce spend caps.
    """

    grade = models.CharField(max_length=10, choices=PriceGrade.choices)
    serving = models.CharField(max_length=10, choices=Serving.choices)
    # Six decimals: a tiny model's price per 1,000 inferences can be a fraction of a cent.
    per_1000 = models.DecimalField(
        "price per 1,000 inferences",
        max_digits=12,
        decimal_places=6,
        validators=[MinValueValidator(Decimal(0), "A price cannot be negative.")],
    )
    currency = models.CharField(max_length=3, default="EUR", validators=[validate_currency])
    effective_from = models.DateTimeField(
        help_text="When the price takes effect (UTC). It applies until a later price for the "
        "same grade, serving and currency takes over."
    )
    note = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = PriceQuerySet.as_manager()

    class Meta:
        ordering = ["-effective_from", "grade", "serving", "currency"]
        constraints = [
            models.UniqueConstraint(
                fields=["grade", "serving", "currency", "effective_from"],
                name="one_price_per_key_and_time",
                violation_error_message=(
                    "A price for this grade, serving and currency already takes effect at "
                    "that time."
                ),
            ),
            models.CheckConstraint(condition=models.Q(per_1000__gte=0), name="price_not_negative"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.grade}/{self.serving} {self.currency} {format_price(self.per_1000)} "
            f"per 1,000 from {self.effective_from.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )

    def save(self, *args, **kwargs) -> None:
        if self._state.adding:
            super().save(*args, **kwargs)
            return
        with transaction.atomic():
            self._refuse_if_in_effect("changed")
            super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        with transaction.atomic():
            self._refuse_if_in_effect("deleted")
            return super().delete(*args, **kwargs)

    @property
    def per_1000_display(self) -> str:
        return format_price(self.per_1000)

    def has_taken_effect(self, at: datetime | None = None) -> bool:
        """True once `effective_from` has passed: the row is history from then on."""
        return self.effective_from <= _aware(at)

    def clean(self) -> None:
        # Only a new or moved effective_from is judged: an existing row's time is what it is.
        if self.effective_from is None or not self._effective_from_changed():
            return
        now = timezone.now()
        if self.effective_from < now - SCHEDULE_GRACE:
            raise ValidationError(
                {
                    "effective_from": (
                        f"{self.effective_from.astimezone(UTC):%Y-%m-%d %H:%M} UTC has passed: "
                        "a price takes effect now or later, never in the past (costs already "
                        "stated with the old price stay as they are)."
                    )
                }
            )
        self.effective_from = max(self.effective_from, now)

    def _effective_from_changed(self) -> bool:
        if self._state.adding:
            return True
        stored = Price.objects.filter(pk=self.pk).values_list("effective_from", flat=True).first()
        return stored != self.effective_from

    def _refuse_if_in_effect(self, verb: str) -> None:
        # The stored row decides, locked so it cannot be judged and changed concurrently.
        stored = (
            Price.objects.select_for_update()
            .filter(pk=self.pk)
            .values_list("effective_from", flat=True)
            .first()
        )
        if stored is not None and stored <= timezone.now():
            raise PriceInEffectError(
                f"This price took effect on {stored.astimezone(UTC):%Y-%m-%d %H:%M} UTC and "
                f"cannot be {verb}; schedule a new price instead."
            )


def format_price(value: Decimal) -> str:
    """A price as people read it: at least two decimals, no trailing zeros beyond them
    (0.050000 → 0.05, 0.000125 → 0.000125, 2 → 2.00)."""
    text = f"{value:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"
