"""A tenant's latency band over time: a change ends the current subscription and starts the
next at the same instant, so the month of the change is prorated between the two (rating)."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from billing.models import LatencyBand, Subscription, Tenant


class PlanError(Exception):
    pass


def change_band(
    tenant: Tenant, band: LatencyBand, *, at: datetime | None = None, actor=None
) -> Subscription:
    """Put the tenant on `band` from `at` (default now). Refused when it is on it already or
    the band has no terms in the tenant's currency."""
    at = at or timezone.now()
    if band.terms_at(tenant.currency, at) is None:
        raise PlanError(f"the {band.name} band has no {tenant.currency} terms yet")
    with transaction.atomic():
        current = (
            Subscription.objects.select_for_update()
            .filter(tenant=tenant, ends_at__isnull=True)
            .select_related("band")
            .first()
        )
        if current is not None:
            if current.band_id == band.pk:
                raise PlanError(f"{tenant.name} is on the {band.name} band already")
            if current.starts_at >= at:
                raise PlanError("the current band started after that time; choose a later one")
            current.ends_at = at
            current.save(update_fields=["ends_at"])
        subscription = Subscription.objects.create(
            tenant=tenant, band=band, starts_at=at, created_by=actor
        )
        audit.record(
            "subscription.band_changed",
            category=AuditCategory.MONEY,
            actor=actor,
            subject=subscription,
            before={"band": current.band.name} if current is not None else None,
            after={"band": band.name, "starts_at": at},
        )
    return subscription
