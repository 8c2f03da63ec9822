"""The price book: prices per 1,000 inferences by grade and serving, versioned by date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from billing.choices import AuditCategory, PriceGrade, Serving
from billing.models.accounts import validate_currency

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

    def withdraw(self, *, actor=None) -> None:
        """Delete a scheduled price (refused once it has taken effect), with its audit entry."""
        from billing import audit

        with transaction.atomic():
            # Taken before the delete, which forgets the row's primary key.
            subject, before = audit.subject_of(self), self.snapshot()
            self.delete()
            audit.record(
                "price.withdrawn",
                category=AuditCategory.MONEY,
                actor=actor,
                subject=subject,
                before=before,
            )

    def snapshot(self) -> dict[str, object]:
        """What the audit log keeps of a price."""
        from billing.audit import fields_of

        return fields_of(
            self, ["grade", "serving", "currency", "per_1000", "effective_from", "note"]
        )

    def superseded(self) -> Price | None:
        """The row this one takes over from: the same key's latest before it."""
        return (
            Price.objects.filter(
                grade=self.grade,
                serving=self.serving,
                currency=self.currency,
                effective_from__lt=self.effective_from,
            )
            .order_by("-effective_from")
            .first()
        )

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
