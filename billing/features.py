"""Feature bundles (add-ons): a tenant switches one on or off in the portal; the switch is a
new or closed `FeatureActivation` (history, prorated on the invoice), and the features it
unlocks reach the nodes through the next policy bundle (fleet compiles `TenantRules.features`
from `features_by_tenant`; fleet/signals.py listens to activations)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from billing.models import FeatureActivation, FeatureBundle, Tenant


class FeatureError(Exception):
    pass


def features_by_tenant(at: datetime | None = None) -> dict[int, list[str]]:
    """Tenant id -> the sorted features its active add-ons unlock. One query."""
    at = at or timezone.now()
    unlocked: dict[int, set[str]] = {}
    for tenant_id, features in FeatureActivation.objects.current(at).values_list(
        "tenant_id", "bundle__features"
    ):
        unlocked.setdefault(tenant_id, set()).update(str(f) for f in features or [])
    return {tenant_id: sorted(names) for tenant_id, names in unlocked.items()}


def switch(tenant: Tenant, bundle: FeatureBundle, on: bool, *, actor=None) -> FeatureActivation:
    """Switch an add-on on (from now) or off (now); switching to the state it is in is an
    error that says so."""
    now = timezone.now()
    with transaction.atomic():
        current = (
            FeatureActivation.objects.select_for_update()
            .filter(tenant=tenant, bundle=bundle, ends_at__isnull=True)
            .first()
        )
        if on:
            if current is not None:
                raise FeatureError(f"{bundle.name} is already on for {tenant.name}")
            if bundle.price_at(tenant.currency, now) is None:
                raise FeatureError(f"{bundle.name} has no {tenant.currency} price yet")
            activation = FeatureActivation.objects.create(
                tenant=tenant, bundle=bundle, starts_at=now, created_by=actor
            )
            _audit("feature.activated", activation, actor, on=True)
            return activation
        if current is None:
            raise FeatureError(f"{bundle.name} is not on for {tenant.name}")
        current.ends_at = max(now, current.starts_at + timedelta(microseconds=1))
        current.save(update_fields=["ends_at"])
        _audit("feature.deactivated", current, actor, on=False)
        return current


def _audit(action: str, activation: FeatureActivation, actor, *, on: bool) -> None:
    audit.record(
        action,
        category=AuditCategory.MONEY,
        actor=actor,
        subject=activation,
        before={"add_on": activation.bundle.name, "on": not on},
        after={"add_on": activation.bundle.name, "on": on},
    )
