"""What makes the console compile a new policy bundle at once: a committed change to anything
the bundle is compiled from. Each handler asks for a compile after the commit
(fleet.tasks.publish_bundle_task); the compile signs a new revision only when the policy
really changed, so a save that changes nothing routing reads costs one compile.

Billing's models are watched here too: billing may not import fleet (DESIGN §2), so fleet
subscribes to their signals. The beat schedule's periodic compile catches anything no signal
announces (a scheduled price taking effect, a pool node's new endpoint).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from billing.models import FeatureActivation, IssuedToken, Price, Tenant
from billing.signals import budget_state_changed
from fleet.models import (
    AcceleratorPool,
    BundleRequest,
    ModelVersion,
    NodeClass,
    Region,
    TenantPolicy,
)


def request_publish(reason: str) -> None:
    """Record why a compile is needed, with the change (same transaction), and ask Celery for
    one once it commits; the compile takes every reason recorded before it."""
    from fleet.tasks import publish_bundle_task

    BundleRequest.objects.create(reason=reason[:200])
    transaction.on_commit(lambda: publish_bundle_task.delay([]))


@receiver(post_save, sender=FeatureActivation)
def _feature_switched(sender, instance: FeatureActivation, **kwargs) -> None:
    state = "off" if instance.ends_at else "on"
    request_publish(f"{instance.bundle.name} {state} for {instance.tenant.slug}")


@receiver(budget_state_changed)
def _budget_changed(sender, tenant: Tenant, exhausted: bool, **kwargs) -> None:
    state = "spent" if exhausted else "no longer spent"
    request_publish(f"monthly budget of {tenant.slug} {state}")


@receiver(post_save, sender=TenantPolicy)
def _policy_saved(sender, instance: TenantPolicy, **kwargs) -> None:
    request_publish(f"policy of {instance.tenant.slug} changed")


@receiver(post_save, sender=Tenant)
def _tenant_saved(sender, instance: Tenant, created: bool, **kwargs) -> None:
    request_publish(f"tenant {instance.slug} {'added' if created else 'changed'}")


@receiver(post_delete, sender=Tenant)
def _tenant_deleted(sender, instance: Tenant, **kwargs) -> None:
    request_publish(f"tenant {instance.slug} removed")


@receiver(post_save, sender=Price)
@receiver(post_delete, sender=Price)
def _price_changed(sender, instance: Price, **kwargs) -> None:
    request_publish(f"price book changed ({instance.grade} {instance.serving} {instance.currency})")


@receiver(post_save, sender=NodeClass)
def _node_class_saved(sender, instance: NodeClass, update_fields=None, **kwargs) -> None:
    # Calibration saves the speed factor every minute; the bundle does not carry it.
    if update_fields is not None and set(update_fields) <= {"speed_factor"}:
        return
    request_publish(f"thresholds of {instance.name} changed")


@receiver(post_save, sender=AcceleratorPool)
def _pool_saved(sender, instance: AcceleratorPool, **kwargs) -> None:
    request_publish(f"accelerator pool of {instance.region.code} changed")


@receiver(m2m_changed, sender=AcceleratorPool.nodes.through)
def _pool_nodes_changed(sender, instance, action: str, **kwargs) -> None:
    if action.startswith("post_") and isinstance(instance, AcceleratorPool):
        request_publish(f"accelerator pool of {instance.region.code} changed")


@receiver(post_save, sender=Region)
@receiver(post_delete, sender=Region)
def _region_changed(sender, instance: Region, **kwargs) -> None:
    request_publish(f"region {instance.code} changed")


@receiver(post_save, sender=ModelVersion)
def _version_saved(sender, instance: ModelVersion, **kwargs) -> None:
    if instance.grade:
        request_publish(f"{instance.model.served_name} v{instance.version} graded {instance.grade}")


@receiver(post_save, sender=IssuedToken)
def _token_saved(sender, instance: IssuedToken, created: bool, **kwargs) -> None:
    if instance.revoked_at is not None:
        request_publish(f"token {instance.token_id} of {instance.tenant.slug} revoked")
