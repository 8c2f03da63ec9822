"""What makes the console compile a new policy bundle at once: a committed change to anything
the bundle is compiled from. Each handler asks for a compile after the commit
(fleet.tasks.publish_bundle_task); the compile signs a new revision only when the policy
really changed, so a save that changes nothing routing reads costs one compile.

Billing's models are watched here too: billing may not import fleet (DESIGN §2), so fleet
subscribes to their signals. The beat schedule's periodic compile catches anything no signal
announces (a scheduled price taking effect, a pool node's new endpoint).

The compliance checks (fleet.compliance) run again after a change they read: a policy, a
deployment, a node enrolled, moved, re-addressed or given a new credential, a pool, a region,
an export rule or a model's classification, an API key created or revoked. One run follows a
burst of such changes (`request_compliance_run`); beat's daily run catches the rest.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_init, post_save
from django.dispatch import receiver

from billing.models import ApiKey, FeatureActivation, IssuedToken, Price, Tenant
from billing.signals import budget_state_changed
from fleet.choices import ComplianceTrigger
from fleet.models import (
    AcceleratorPool,
    BundleRequest,
    Deployment,
    ExportClassification,
    ExportRule,
    Model,
    ModelVersion,
    Node,
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


# --- compliance: a relevant change runs the checks again ---------------------------------------

# Set while a run after a change is scheduled: the changes until it starts are in what it reads.
COMPLIANCE_PENDING_KEY = "fleet:compliance-run-pending"


def request_compliance_run(reason: str) -> None:
    """Once the change commits, schedule a compliance run OUTPOST_COMPLIANCE_DEBOUNCE_S
    seconds later, unless one is scheduled already (a cache key marks it for that long): a
    burst of changes (a seeding, a rollout and its regions) makes one run."""
    from fleet.tasks import run_compliance_task

    def schedule() -> None:
        delay = settings.OUTPOST_COMPLIANCE_DEBOUNCE_S
        if delay and not cache.add(COMPLIANCE_PENDING_KEY, reason, timeout=delay):
            return
        run_compliance_task.apply_async(
            kwargs={"trigger": ComplianceTrigger.CHANGE, "reason": reason[:200]}, countdown=delay
        )

    transaction.on_commit(schedule)


# What a save of these models is compared with, remembered as each row is loaded: a heartbeat
# saves its node every few seconds and must not make a run.
WATCHED_FIELDS = {
    Node: ("endpoint", "region_id"),
    Model: ("export_classification_id",),
}


def _loaded(instance) -> tuple:
    # __dict__, not getattr: a field deferred by .only() would cost a query each.
    return tuple(instance.__dict__.get(name) for name in WATCHED_FIELDS[type(instance)])


@receiver(post_init, sender=Node)
@receiver(post_init, sender=Model)
def _remember_watched(sender, instance, **kwargs) -> None:
    instance._compliance_loaded = _loaded(instance)


def _watched_changed(instance) -> bool:
    before = getattr(instance, "_compliance_loaded", None)
    instance._compliance_loaded = _loaded(instance)
    return before != instance._compliance_loaded


@receiver(post_save, sender=TenantPolicy)
def _policy_saved_for_compliance(sender, instance: TenantPolicy, **kwargs) -> None:
    request_compliance_run(f"policy of {instance.tenant.slug} changed")


@receiver(post_save, sender=Deployment)
def _deployment_saved(
    sender, instance: Deployment, created: bool, update_fields=None, **kwargs
) -> None:
    # A step forward keeps where the model runs; a new deployment or a new state may not.
    if created or update_fields is None or "state" in update_fields:
        what = "created" if created else f"now {instance.state}"
        request_compliance_run(f"deployment {instance.pk} {what}")


@receiver(m2m_changed, sender=Deployment.regions.through)
@receiver(m2m_changed, sender=Deployment.node_classes.through)
def _deployment_selector_changed(sender, instance, action: str, **kwargs) -> None:
    if action.startswith("post_") and isinstance(instance, Deployment):
        request_compliance_run(f"deployment {instance.pk} selector changed")


@receiver(post_save, sender=Node)
def _node_saved(sender, instance: Node, created: bool, update_fields=None, **kwargs) -> None:
    if created:
        request_compliance_run(f"node {instance.name} enrolled")
    elif _watched_changed(instance):
        request_compliance_run(f"node {instance.name} moved or changed its endpoint")
    elif update_fields is not None and "credential_rotated_at" in update_fields:
        request_compliance_run(f"credential of node {instance.name} rotated")


@receiver(post_save, sender=AcceleratorPool)
def _pool_saved_for_compliance(sender, instance: AcceleratorPool, **kwargs) -> None:
    request_compliance_run(f"accelerator pool of {instance.region.code} changed")


@receiver(post_save, sender=Region)
def _region_saved_for_compliance(sender, instance: Region, **kwargs) -> None:
    request_compliance_run(f"region {instance.code} changed")


@receiver(post_save, sender=ExportRule)
@receiver(post_delete, sender=ExportRule)
def _export_rule_changed(sender, instance: ExportRule, **kwargs) -> None:
    request_compliance_run(f"export rule {instance.jurisdiction} changed")


@receiver(post_delete, sender=ExportClassification)
def _classification_deleted(sender, instance: ExportClassification, **kwargs) -> None:
    request_compliance_run(f"export classification {instance.code} removed")


@receiver(post_save, sender=Model)
def _model_saved(sender, instance: Model, created: bool, **kwargs) -> None:
    changed = _watched_changed(instance)
    if instance.export_classification_id if created else changed:
        request_compliance_run(f"export classification of model {instance.name} changed")


@receiver(post_save, sender=ApiKey)
def _api_key_saved(sender, instance: ApiKey, created: bool, update_fields=None, **kwargs) -> None:
    if created:
        request_compliance_run(f"API key {instance.prefix}… created")
    elif update_fields is not None and "revoked_at" in update_fields:
        request_compliance_run(f"API key {instance.prefix}… revoked")
