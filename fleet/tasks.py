"""Fleet background work. Tasks are thin: load, call a model method or action, return."""

from __future__ import annotations

import random
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from fleet.choices import DeploymentState, NodeStatus, VersionStatus
from fleet.models import Deployment, ModelVersion, Node, NodeSample


@shared_task
def detect_status_flips_task() -> int:
    """Record the status change of nodes whose heartbeats stopped; returns how many flipped."""
    now = timezone.now()
    flipped = 0
    # Only nodes whose stored status may be out of date: anything not already offline/pending.
    stale_before = now - timedelta(seconds=settings.OUTPOST_NODE_ONLINE_AFTER_S)
    candidates = Node.objects.filter(
        Q(last_heartbeat_at__lt=stale_before) & ~Q(status="offline")
    ).only("pk")
    for node in candidates:
        if node.sync_status(now=now) is not None:
            flipped += 1
    return flipped


@shared_task
def prune_node_samples_task() -> int:
    """Delete node samples and drift windows older than their retention; returns how many
    rows went."""
    from fleet.drift_actions import prune_windows

    cutoff = timezone.now() - timedelta(hours=settings.OUTPOST_SAMPLE_RETENTION_H)
    deleted, _ = NodeSample.objects.filter(at__lt=cutoff).delete()
    return deleted + prune_windows()


@shared_task
def check_drift_task() -> int:
    """Measure drift of every version with recent outputs; returns how many were checked."""
    from fleet.drift_actions import check_all

    return check_all()


@shared_task
def grade_version_task(version_id: int) -> str:
    """Analyse, measure and grade one uploaded version; idempotent (a graded one is left)."""
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    if version.status != VersionStatus.GRADING:
        return version.status
    from fleet.actions import grade_version  # actions enqueue this task: import at run time

    grade_version(version)
    return version.status


@shared_task
def advance_rollouts_task() -> int:
    """Judge every rolling deployment once; returns how many changed step or state."""
    from fleet.rollout_actions import judge
    from fleet.rollouts import Decision

    changed = 0
    for deployment in Deployment.objects.filter(state=DeploymentState.ROLLING).only("pk"):
        if judge(deployment) != Decision.WAIT:
            changed += 1
    return changed


@shared_task
def calibrate_speed_factors_task() -> dict[str, float]:
    from fleet.actions import calibrate_speed_factors

    return calibrate_speed_factors()


@shared_task
def push_desired_task(node_ids: list[int]) -> int:
    """Push each node's desired state to it, signed; returns how many nodes took it. A node
    that cannot be reached now picks the same state up from its next heartbeat answer."""
    from fleet.rollout_actions import push_desired

    # Silent nodes would only cost a timeout each; they catch up from their next heartbeat.
    reachable = Node.objects.filter(
        pk__in=node_ids, status__in=[NodeStatus.ONLINE, NodeStatus.DEGRADED]
    ).select_related("node_class")
    return sum(push_desired(node) for node in reachable)


@shared_task
def publish_bundle_task(reasons: list[str]) -> int | None:
    """Compile the policy bundle and publish it if it changed; returns the new revision."""
    from fleet.policy_plane import publish_bundle

    record = publish_bundle(reasons)
    return record.revision if record is not None else None


# A push is retried on its own per node: 1, 2, 4, … 60 s apart (with jitter), six times; a
# node still unreachable after that fetches the bundle from its next heartbeat answer.
PUSH_RETRIES = 6


@shared_task(bind=True, max_retries=PUSH_RETRIES)
def push_bundle_task(self, node_id: int, revision: int) -> str:
    """Push bundle `revision` to one node; returns what happened."""
    from fleet.models import PolicyBundleRecord
    from fleet.policy_plane import PushFailed, push_bundle

    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        return "node removed"
    record = PolicyBundleRecord.objects.order_by("-revision").first()
    if record is None or record.revision > revision:
        return "superseded"  # the newer revision's publish pushes it
    if node.bundle_revision is not None and node.bundle_revision >= revision:
        return "current"
    try:
        return "enforcing" if push_bundle(node, record) else "refused"
    except PushFailed as exc:
        attempt = self.request.retries
        countdown = min(60.0, 2.0**attempt) * (0.5 + random.random() / 2)
        raise self.retry(exc=exc, countdown=countdown) from None


@shared_task
def prune_decisions_task() -> int:
    """Delete decision logs and issued-token rows past their retention."""
    from fleet.policy_plane import prune_decisions

    return prune_decisions()


@shared_task
def write_prometheus_targets_task() -> bool:
    """Rewrite Prometheus' scrape targets file from the registry when the fleet changed."""
    from fleet.observability.targets import write_targets

    return write_targets(settings.OUTPOST_PROMETHEUS_TARGETS_FILE)


@shared_task
def run_compliance_task(trigger: str = "schedule", reason: str = "") -> int:
    """Run every compliance check and keep the findings; returns the run's id. Beat runs it
    daily, fleet.signals after relevant changes, an operator from the findings page."""
    from fleet.compliance_actions import run_checks

    return run_checks(trigger=trigger, reason=reason).pk
