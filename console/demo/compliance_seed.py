"""The demo's compliance story: real violations on the demo's data, for `manage.py compliance`
and /fleet/compliance/ to find (docs/compliance.md says what each check looks for).

- data residency: acme (Berlin) is bound to zone EU, and its own fraud-screening model is
  rolled out to every region, us-east too (residency.deployments); the traffic generator
  calls every node as every tenant, so acme is served in Virginia (residency.traffic);
- export controls: a (made-up) classification forbids the medium demo model in the United
  States, and the us-east standard node loads it from its model directory (export.loaded);
- keys: globex has an API key for its old ERP export, issued 200 days ago and never rotated
  (keys.api_keys);
- tokenisation, stale policy and transport come from how the nodes run, not from data: a node
  without its tokenisation key that serves nakamura (which declares customer_id sensitive),
  a node that no longer takes new bundles, and OUTPOST_REQUIRE_NODE_TLS on for the console
  (the demo's nodes serve plain http on loopback).

Idempotent like the rest of the seed: what exists is left as it is (an operator may have
fixed it, which is the point), and a second run adds nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from billing.models import ApiKey, Tenant
from fleet.choices import ExportEffect, PolicyActorKind, Strategy, VersionStatus
from fleet.models import (
    ExportClassification,
    ExportRule,
    Model,
    ModelVersion,
    Region,
    TenantPolicy,
)

BOUND_TENANT = "acme"
BOUND_ZONE = "EU"
# acme's own model, rolled out to every region (the demo's story model, churn, stays in
# eu-west).
EVERYWHERE_MODEL = "fraud-screen"
CLASSIFICATION = {
    "code": "DEMO-AI-1",
    "name": "Controlled AI model (demo)",
    "description": "A made-up export classification for the demo: models under it may not "
    "run in the United States until an export licence is granted.",
}
FORBIDDEN_IN = "US"
RULE_NOTE = "demo: no export licence for the United States"
CLASSIFIED_MODEL = "random-mlp-medium"
OLD_KEY_TENANT = "globex"
OLD_KEY_NAME = "legacy ERP export"
OLD_KEY_AGE = timedelta(days=200)


def seed_compliance(report, *, now: datetime | None = None) -> None:
    """Make the demo's compliance violations (see the module's docstring). Call it after the
    tenants' policies are seeded (console/demo/seed.py seed_policies): it changes acme's."""
    now = now or timezone.now()
    _bind_to_zone(report)
    _deploy_everywhere(report)
    _classify(report)
    _old_api_key(report, now)


def _bind_to_zone(report) -> None:
    from fleet.policies import update_policy

    tenant = Tenant.objects.filter(slug=BOUND_TENANT).first()
    if tenant is None or not Region.objects.filter(residency_zone=BOUND_ZONE).exists():
        return
    if TenantPolicy.objects.for_tenant(tenant).residency_zone:
        return  # bound already, by this seed or an operator
    policy = update_policy(
        tenant, {"residency_zone": BOUND_ZONE}, actor=None, actor_kind=PolicyActorKind.OPERATOR
    )
    report.note(f"bound {tenant.slug} to residency zone {BOUND_ZONE} (revision {policy.revision})")


def _model_bytes() -> bytes:
    """A small MLP with random weights, a stand-in for acme's fraud screening (grade tiny)."""
    from inference.demo_models import random_mlp_medium

    return random_mlp_medium(width=64, inputs=16, outputs=2).SerializeToString()


def _deploy_everywhere(report) -> None:
    from fleet.actions import grade_version, register_model_version
    from fleet.rollout_actions import RolloutError, start_rollout

    tenant = Tenant.objects.filter(slug=BOUND_TENANT).first()
    if tenant is None or Model.objects.filter(owner=tenant, name=EVERYWHERE_MODEL).exists():
        return
    version, _ = register_model_version(
        owner=tenant,
        name=EVERYWHERE_MODEL,
        data=_model_bytes(),
        description="Scores payments for fraud (demo: random weights).",
    )
    # Graded here rather than by the worker, which is not running yet: the rollout needs it.
    grade_version(version)
    version = ModelVersion.objects.get(pk=version.pk)
    if version.status != VersionStatus.GRADED:
        report.note(f"{version} could not be graded: {version.failure}")
        return
    try:
        deployment = start_rollout(version, strategy=Strategy.ALL_AT_ONCE)  # every region
    except RolloutError as exc:
        report.note(f"{version} was not rolled out: {exc}")
        return
    report.note(
        f"rolled {version} out to every region (deployment {deployment.pk}): a model of "
        f"{tenant.slug}, bound to zone {BOUND_ZONE}, in us-east too"
    )


def _classify(report) -> None:
    from console.demo.seed import DEMO_MODEL_DESCRIPTIONS

    fields = dict(CLASSIFICATION)
    classification, created = ExportClassification.objects.get_or_create(
        code=fields.pop("code"), defaults=fields
    )
    if not created:
        return  # the operators' since the first seeding
    ExportRule.objects.create(
        classification=classification,
        jurisdiction=FORBIDDEN_IN,
        effect=ExportEffect.FORBID,
        note=RULE_NOTE,
    )
    # The catalogue model may not be registered yet (the demo registers it after seeding):
    # the registry takes this row over when it does.
    model, _ = Model.objects.get_or_create(
        owner=None,
        name=CLASSIFIED_MODEL,
        defaults={"description": DEMO_MODEL_DESCRIPTIONS.get(CLASSIFIED_MODEL, "")},
    )
    if model.export_classification_id is None:
        model.export_classification = classification
        model.save(update_fields=["export_classification"])
    report.note(
        f"classified {CLASSIFIED_MODEL} {classification.code}, forbidden in {FORBIDDEN_IN}: "
        "the us-east nodes that load it break the rule"
    )


def _old_api_key(report, now: datetime) -> None:
    tenant = Tenant.objects.filter(slug=OLD_KEY_TENANT).first()
    if tenant is None or ApiKey.objects.filter(tenant=tenant, name=OLD_KEY_NAME).exists():
        return
    key, _ = ApiKey.issue(tenant, OLD_KEY_NAME)  # nobody will see the secret: nothing uses it
    ApiKey.objects.filter(pk=key.pk).update(created_at=now - OLD_KEY_AGE)
    report.note(
        f"issued {tenant.slug}'s API key {key.prefix}… ({OLD_KEY_NAME}) as of "
        f"{OLD_KEY_AGE.days} days ago, never rotated"
    )
