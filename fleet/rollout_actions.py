"""Writes that move deployments: start, pause, resume, promote, roll back, and the periodic
judgement of rolling deployments. Each owns its transaction and writes a DeploymentEvent.
The decisions themselves are pure (fleet.rollouts)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from billing import audit
from billing.choices import AuditCategory
from billing.models import Tenant
from billing.signing import console_private_key
from fleet import rollouts
from fleet.choices import DeploymentState, PinSide, Strategy, VersionStatus
from fleet.drift_actions import drift_gate, drift_soak_s
from fleet.models import (
    Deployment,
    DeploymentEvent,
    ModelVersion,
    Node,
    NodeClass,
    Region,
    TenantPin,
)
from fleet.policy_plane import node_client
from fleet.tasks import push_desired_task
from inference import protocol
from inference.protocol import ARTIFACT_PATH, DesiredPush, DesiredVersion, DriftReference

log = logging.getLogger(__name__)

# A push is a shortcut, not the delivery: a node that does not answer at once gets the same
# state from its next heartbeat answer.
PUSH_TIMEOUT_S = 2.0


class RolloutError(Exception):
    """The request cannot be carried out; the message says why, for the operator."""


def _event(
    deployment: Deployment,
    old_state: str,
    reason: str,
    actor=None,
    *,
    action: str,
    before: dict | None = None,
    after: dict | None = None,
    tenant: Tenant | None = None,
) -> None:
    """The deployment's history row and its audit entry (`action`, e.g. "deployment.paused";
    no actor: the console's own judgement). `before`/`after` default to the states."""
    DeploymentEvent.objects.create(
        deployment=deployment,
        from_state=old_state,
        to_state=deployment.state,
        step_index=deployment.step_index,
        percent=deployment.current_percent,
        reason=reason[:300],
        actor=actor,
    )
    now = {"state": deployment.state, "percent": deployment.current_percent}
    audit.record(
        action,
        category=AuditCategory.DEPLOYMENT,
        actor=actor,
        subject=deployment,
        before=before if before is not None else ({"state": old_state} if old_state else None),
        after=after if after is not None else now,
        # A tenant's own model's deployment is in that tenant's log too.
        tenant=tenant or deployment.version.model.owner,
        note=reason,
    )


def _fit_problems(version: ModelVersion, classes: Iterable[NodeClass]) -> list[str]:
    from fleet.actions import grading_thresholds

    peak = int(version.stats.get("peak_memory_bytes") or 0)
    share = grading_thresholds().memory_budget_share
    problems = []
    for node_class in classes:
        budget = int(node_class.memory_bytes * share)
        if peak > budget:
            problems.append(
                f"{version} needs {peak / 2**30:.2f} GiB at peak; a {node_class.name} node gives "
                f"one model {budget / 2**30:.2f} GiB ({share:.0%} of its memory)"
            )
    return problems


def start_rollout(
    version: ModelVersion,
    *,
    regions: Iterable[Region] = (),
    node_classes: Iterable[NodeClass] = (),
    strategy: str = Strategy.CANARY,
    steps: list[int] | None = None,
    soak_s: int = 60,
    gates: rollouts.Gates | None = None,
    rollback_on_drift: bool = False,
    acting_user=None,
) -> Deployment:
    """Start rolling `version` out; refused up front when it cannot run where it is sent."""
    regions, node_classes = list(regions), list(node_classes)
    gates = gates or rollouts.Gates()
    if version.status != VersionStatus.GRADED:
        raise RolloutError(f"{version} is not graded yet ({version.get_status_display()})")
    steps = [100] if strategy == Strategy.ALL_AT_ONCE else (steps or [5, 25, 100])
    rollouts.parse_steps(", ".join(map(str, steps)))  # same rules as the form
    if rollback_on_drift:
        needed = drift_soak_s()
        if soak_s < needed:
            raise RolloutError(
                f"rolling back on drift needs a soak of at least {needed} s per step: drift is "
                "judged over whole minutes of outputs, and a shorter step would pass before "
                "it could be"
            )
    target_classes = node_classes or list(NodeClass.objects.all())
    problems = _fit_problems(version, target_classes)
    if problems:
        raise RolloutError("; ".join(problems))
    with transaction.atomic():
        model = version.model
        busy = Deployment.objects.active().filter(version__model=model).first()
        if busy is not None:
            raise RolloutError(
                f"deployment {busy.pk} of {model} is still {busy.get_state_display().lower()}; "
                "promote or roll it back first"
            )
        last = (
            Deployment.objects.filter(version__model=model)
            .filter(state__in=[DeploymentState.COMPLETED, DeploymentState.ROLLED_BACK])
            .order_by("-created_at")
            .first()
        )
        previous = None
        if last is not None:
            previous = last.version if last.state == DeploymentState.COMPLETED else last.previous
        if previous == version:
            raise RolloutError(f"{version} is already what these nodes serve")
        if previous is not None:
            problems = rollouts.signature_problems(
                {"inputs": version.inputs, "outputs": version.outputs},
                {"inputs": previous.inputs, "outputs": previous.outputs},
            )
            if problems:
                raise RolloutError(
                    f"{version} cannot share traffic with {previous}: " + "; ".join(problems)
                )
        deployment = Deployment.objects.create(
            version=version,
            previous=previous,
            strategy=strategy,
            steps=steps,
            soak_s=soak_s,
            max_error_rate_increase=gates.max_error_rate_increase,
            max_p95_ratio=gates.max_p95_ratio,
            min_requests=gates.min_requests,
            rollback_on_drift=rollback_on_drift,
            created_by=acting_user,
        )
        deployment.regions.set(regions)
        deployment.node_classes.set(node_classes)
        deployment.step_baseline = rollouts.totals(_reports(deployment))
        deployment.save(update_fields=["step_baseline"])
        _event(
            deployment,
            "",
            f"started at {deployment.current_percent} %",
            acting_user,
            action="deployment.started",
        )
        push_to(deployment)
    return deployment


def _reports(deployment: Deployment) -> list[dict]:
    rows: list[dict] = []
    for loaded in deployment.nodes().values_list("models_loaded", flat=True):
        rows.extend(loaded or [])
    return rows


def _locked(deployment: Deployment) -> Deployment:
    return Deployment.objects.select_for_update().get(pk=deployment.pk)


def pause(deployment: Deployment, *, acting_user=None, reason: str = "paused by hand") -> None:
    with transaction.atomic():
        d = _locked(deployment)
        if d.state != DeploymentState.ROLLING:
            raise RolloutError(f"only a rolling deployment can be paused (this one is {d.state})")
        d.state = DeploymentState.PAUSED
        d.save(update_fields=["state"])
        _event(d, DeploymentState.ROLLING, reason, acting_user, action="deployment.paused")


def resume(deployment: Deployment, *, acting_user=None) -> None:
    with transaction.atomic():
        d = _locked(deployment)
        if d.state != DeploymentState.PAUSED:
            raise RolloutError(f"only a paused deployment can be resumed (this one is {d.state})")
        d.state = DeploymentState.ROLLING
        d.step_started_at = timezone.now()
        d.step_baseline = rollouts.totals(_reports(d))
        d.save(update_fields=["state", "step_started_at", "step_baseline"])
        _event(
            d, DeploymentState.PAUSED, "resumed by hand", acting_user, action="deployment.resumed"
        )


def promote(deployment: Deployment, *, acting_user=None) -> None:
    """Skip the remaining steps: the new version takes all the traffic now."""
    with transaction.atomic():
        d = _locked(deployment)
        if d.state not in (DeploymentState.ROLLING, DeploymentState.PAUSED):
            raise RolloutError(
                f"only a deployment under way can be promoted (this one is {d.state})"
            )
        old = d.state
        d.state = DeploymentState.COMPLETED
        d.step_index = len(d.steps) - 1
        d.finished_at = timezone.now()
        d.save(update_fields=["state", "step_index", "finished_at"])
        _event(d, old, "promoted by hand", acting_user, action="deployment.promoted")
        push_to(d)


def roll_back(deployment: Deployment, *, reason: str, acting_user=None) -> None:
    with transaction.atomic():
        d = _locked(deployment)
        if d.state not in (
            DeploymentState.ROLLING,
            DeploymentState.PAUSED,
            DeploymentState.COMPLETED,
        ):
            raise RolloutError(f"this deployment is already {d.get_state_display().lower()}")
        old = d.state
        d.state = DeploymentState.ROLLED_BACK
        d.finished_at = timezone.now()
        d.save(update_fields=["state", "finished_at"])
        _event(d, old, reason, acting_user, action="deployment.rolled_back")
        push_to(d)


# States in which pins can change: a rolled-back deployment serves its previous version only.
PINNABLE = (DeploymentState.ROLLING, DeploymentState.PAUSED, DeploymentState.COMPLETED)


def pin(deployment: Deployment, tenant: Tenant, side: str, *, acting_user=None) -> TenantPin:
    """Send all of a tenant's requests to the new or the previous version, whatever the
    canary's share (a controlled rollout); a pin to the previous version outlives the
    deployment's completion until it is removed."""
    if side not in PinSide.values:
        raise RolloutError(f"a pin is to {' or '.join(PinSide.values)}, not {side!r}")
    with transaction.atomic():
        d = _locked(deployment)
        if d.state not in PINNABLE:
            raise RolloutError(f"this deployment is {d.get_state_display().lower()}: no pins")
        if side == PinSide.OLD and d.previous_id is None:
            raise RolloutError("a first deployment has no previous version to pin a tenant to")
        owner = d.version.model.owner
        if owner is not None and owner != tenant:
            raise RolloutError(f"{d.version.model} is {owner.slug}'s own model: only it calls it")
        target = d.version if side == PinSide.NEW else d.previous
        existing = TenantPin.objects.filter(deployment=d, tenant=tenant).first()
        if existing is not None and existing.side == side:
            return existing
        TenantPin.objects.filter(deployment=d, tenant=tenant).delete()
        created = TenantPin.objects.create(
            deployment=d, tenant=tenant, side=side, created_by=acting_user
        )
        _event(
            d,
            d.state,
            f"{tenant.slug} pinned to v{target.version}",
            acting_user,
            action="deployment.tenant_pinned",
            before={"tenant": tenant.slug, "pin": existing.side if existing else None},
            after={"tenant": tenant.slug, "pin": side, "version": target.version},
            tenant=tenant,
        )
        push_to(d)
    return created


def unpin(deployment: Deployment, tenant: Tenant, *, acting_user=None) -> None:
    """The tenant's requests follow the traffic split again."""
    with transaction.atomic():
        d = _locked(deployment)
        deleted, _ = TenantPin.objects.filter(deployment=d, tenant=tenant).delete()
        if not deleted:
            raise RolloutError(f"{tenant.slug} is not pinned in this deployment")
        _event(
            d,
            d.state,
            f"{tenant.slug} unpinned: follows the traffic split",
            acting_user,
            action="deployment.tenant_unpinned",
            before={"tenant": tenant.slug, "pinned": True},
            after={"tenant": tenant.slug, "pinned": False},
            tenant=tenant,
        )
        push_to(d)


def judge(deployment: Deployment, *, now=None) -> rollouts.Decision:
    """Look at a rolling deployment's health and soak time, and act on the decision."""
    now = now or timezone.now()
    with transaction.atomic():
        d = _locked(deployment)
        if d.state != DeploymentState.ROLLING:
            return rollouts.Decision.WAIT
        reports = _reports(d)
        new = rollouts.step_health(reports, d.step_baseline, d.version.sha256)
        old = (
            rollouts.step_health(reports, d.step_baseline, d.previous.sha256)
            if d.previous
            else None
        )
        gates = rollouts.Gates(d.max_error_rate_increase, d.max_p95_ratio, d.min_requests)
        gate = rollouts.check_gates(new, old, gates)
        alert = drift_gate(d)
        if alert is not None and gate.passed:
            gate = rollouts.GateResult(
                False, True, f"outputs drift from {alert.baseline}'s: {alert.reason}"
            )
        decision, reason = rollouts.decide(
            now=now,
            step_started_at=d.step_started_at,
            soak=timedelta(seconds=d.soak_s),
            is_last_step=d.is_last_step,
            gate=gate,
        )
        d.gate_note = gate.reason[:300]
        if decision == rollouts.Decision.WAIT:
            d.save(update_fields=["gate_note"])
        elif decision == rollouts.Decision.ADVANCE:
            d.step_index += 1
            d.step_started_at = now
            d.step_baseline = rollouts.totals(reports)
            d.save(update_fields=["gate_note", "step_index", "step_started_at", "step_baseline"])
            _event(
                d,
                DeploymentState.ROLLING,
                f"{reason}; now {d.current_percent} %",
                action="deployment.advanced",
                before={"state": DeploymentState.ROLLING, "percent": d.steps[d.step_index - 1]},
            )
            push_to(d)
        elif decision == rollouts.Decision.COMPLETE:
            d.state = DeploymentState.COMPLETED
            d.finished_at = now
            d.save(update_fields=["gate_note", "state", "finished_at"])
            _event(d, DeploymentState.ROLLING, reason, action="deployment.completed")
            push_to(d)
        else:
            d.state = DeploymentState.ROLLED_BACK
            d.finished_at = now
            d.save(update_fields=["gate_note", "state", "finished_at"])
            _event(d, DeploymentState.ROLLING, reason, action="deployment.rolled_back")
            push_to(d)
    return decision


def desired_versions(node: Node) -> list[DesiredVersion]:
    """What the console wants this node to serve: per model, the latest deployment whose
    selector takes the node in decides the versions and their traffic shares. Each carries the
    model's signal schema, which the node enforces on every infer request."""
    latest: dict[int, Deployment] = {}
    deployments = (
        Deployment.objects.affecting(node)
        .select_related("version__model__owner", "previous")
        .prefetch_related("pins__tenant")
        .order_by("created_at")
    )
    for deployment in deployments:
        latest[deployment.version.model_id] = deployment
    wanted: list[DesiredVersion] = []
    for deployment in latest.values():
        share = deployment.new_share
        pinned: dict[str, list[str]] = {PinSide.NEW: [], PinSide.OLD: []}
        for tenant_pin in deployment.pins.all():
            pinned[tenant_pin.side].append(tenant_pin.tenant.slug)
        if deployment.state == DeploymentState.ROLLED_BACK:
            pinned[PinSide.NEW] = []  # a rolled-back version serves nobody
        for version, version_share, tenants in (
            (deployment.version, share, pinned[PinSide.NEW]),
            (deployment.previous, 1 - share, pinned[PinSide.OLD]),
        ):
            # A version without a share still loads when tenants are pinned to it.
            if version is None or (version_share <= 0 and not tenants):
                continue
            wanted.append(
                DesiredVersion(
                    model=deployment.version.model.served_name,
                    version=str(version.version),
                    sha256=version.sha256,
                    size_bytes=version.size_bytes,
                    url=ARTIFACT_PATH.format(sha256=version.sha256),
                    traffic_share=round(version_share, 4),
                    # The schema is the model's, so every version serves under the current one.
                    signals=deployment.version.model.signal_schema,
                    tenants=sorted(tenants),
                    drift_reference=drift_reference(version),
                )
            )
    return wanted


def drift_reference(version: ModelVersion) -> DriftReference | None:
    """The reference outputs captured for the version (fleet.drift_actions), for the node's
    drift gauge; None when there are none, or when a stored one does not fit the wire's bounds
    (then the node reports no drift for it rather than the heartbeat failing)."""
    stored = version.drift_reference
    if not stored or "summary" not in stored:
        return None
    try:
        return DriftReference.model_validate(stored["summary"])
    except ValidationError as exc:
        log.warning("the drift reference of %s is not sent to nodes: %s", version, exc)
        return None


def memory_budget_bytes(node: Node) -> int:
    return int(node.node_class.memory_bytes * settings.OUTPOST_NODE_MODEL_MEMORY_SHARE)


def push_to(deployment: Deployment) -> None:
    """After the commit, push the new desired state to the deployment's nodes (Celery), so
    they need not wait for their next heartbeat."""
    node_ids = list(deployment.nodes().values_list("pk", flat=True))
    if node_ids:
        transaction.on_commit(lambda: push_desired_task.delay(node_ids))


def push_desired(node: Node) -> bool:
    """POST the node's desired state to it, signed with the console's key; True if taken."""
    push = DesiredPush(
        node_uid=node.uid,
        issued_at=timezone.now(),
        desired_models=desired_versions(node),
        memory_budget_bytes=memory_budget_bytes(node),
    )
    body = protocol.canonical_json(push.model_dump(mode="json"))
    signature = protocol.sign(console_private_key(), body)
    try:
        response = node_client().post(
            node.endpoint.rstrip("/") + protocol.DESIRED_PUSH_PATH,
            content=body,
            headers={"Content-Type": "application/json", protocol.SIGNATURE_HEADER: signature},
            timeout=PUSH_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        log.info("push to %s failed (%s); it will learn from its next heartbeat", node, exc)
        return False
    if response.status_code != 200:
        log.warning("%s refused a push: %s %s", node, response.status_code, response.text[:200])
        return False
    return True
