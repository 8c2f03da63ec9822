"""Writes that span several fleet objects. Each owns its transaction."""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass

import onnx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from fleet import artifacts
from fleet.choices import VersionStatus
from fleet.models import (
    BundleCompileFailure,
    EnrollmentToken,
    Model,
    ModelVersion,
    Node,
    NodeClass,
    PolicyBundleRecord,
)
from fleet.policy_plane import publish_bundle
from fleet.tasks import grade_version_task
from inference.protocol import EnrollRequest, hash_secret

log = logging.getLogger(__name__)


class EnrollmentError(Exception):
    """The token cannot enroll a node; the message says why, for the node's operator."""


def enroll_node(request: EnrollRequest) -> tuple[Node, str]:
    """Spend a one-time token on a new node; return the node and its credential (shown once)."""
    credential, credential_hash = Node.new_credential()
    with transaction.atomic():
        token = (
            EnrollmentToken.objects.select_for_update()
            .select_related("region", "node_class")
            .filter(secret_hash=hash_secret(request.token))
            .first()
        )
        if token is None:
            raise EnrollmentError("unknown enrollment token")
        if token.used_at is not None:
            raise EnrollmentError("this enrollment token was already used")
        if token.expires_at <= timezone.now():
            raise EnrollmentError("this enrollment token has expired; ask for a new one")
        try:
            with transaction.atomic():
                node = Node.objects.create(
                    uid=f"nd-{secrets.token_hex(6)}",
                    name=token.node_name,
                    region=token.region,
                    node_class=token.node_class,
                    endpoint=request.endpoint,
                    hostname=request.hostname,
                    agent_version=request.agent_version,
                    credential_hash=credential_hash,
                )
        except IntegrityError:
            raise EnrollmentError(f"a node named {token.node_name!r} already exists") from None
        token.used_at = timezone.now()
        token.node = node
        token.save(update_fields=["used_at", "node"])
        audit.record(
            "node.enrolled",
            category=AuditCategory.ACCESS,
            actor=audit.node_actor(node.uid),
            subject=node,
            after={"uid": node.uid, "name": node.name, "region": token.region.code,
                   "node_class": token.node_class.name, "endpoint": node.endpoint},
            note=f"with enrollment token {token.prefix}… issued by {token.created_by or 'the console'}",
        )  # fmt: skip
    return node, credential


def request_credential_rotation(node: Node, *, actor) -> bool:
    """Ask the node for a new credential: its next heartbeat answer says so, it fetches one
    (fleet.api next_credential), saves it and uses it, which retires the old one
    (Node.authenticate). False when a request is already waiting for the node."""
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        if locked.credential_rotation_requested_at is not None:
            node.credential_rotation_requested_at = locked.credential_rotation_requested_at
            return False
        locked.credential_rotation_requested_at = timezone.now()
        locked.save(update_fields=["credential_rotation_requested_at"])
        audit.record(
            "node.credential_rotation_requested",
            category=AuditCategory.ACCESS,
            actor=actor,
            subject=locked,
            before={"credential_rotated_at": locked.credential_rotated_at},
            after={"credential_rotation_requested_at": locked.credential_rotation_requested_at},
        )
    node.credential_rotation_requested_at = locked.credential_rotation_requested_at
    log.info("credential rotation of %s requested by %s", node, actor)
    return True


def register_model_version(
    *,
    owner,
    name: str,
    data: bytes,
    description: str = "",
    signals: dict[str, str] | None = None,
    uploaded_by=None,
    actor=None,
) -> tuple[ModelVersion, bool]:
    """Validate and store an upload as the model's next version, then grade it in Celery.

    The same bytes uploaded again for the same model are recognised: the existing version is
    returned with created=False and nothing is stored twice. Raises InvalidArtifact.
    `actor` is who the audit log names (a user or an API key); default `uploaded_by`.
    """
    _, signature = artifacts.inspect(data)
    schema = artifacts.check_signals(signals) if signals is not None else None
    digest = artifacts.sha256(data)
    with transaction.atomic():
        model, _ = Model.objects.get_or_create(owner=owner, name=name)
        # The lock serialises uploads to one model, so version numbers never collide.
        model = Model.objects.select_for_update().get(pk=model.pk)
        if description and description != model.description:
            model.description = description
            model.save(update_fields=["description"])
        if schema is not None and schema != model.signal_schema:
            model.signal_schema = schema
            model.save(update_fields=["signal_schema"])
        existing = model.versions.filter(sha256=digest).first()
        if existing is not None:
            return existing, False
        artifacts.store(data, digest)
        latest = model.versions.aggregate(n=Max("version"))["n"] or 0
        version = ModelVersion.objects.create(
            model=model,
            version=latest + 1,
            sha256=digest,
            size_bytes=len(data),
            opset=signature.opset,
            inputs=signature.inputs,
            outputs=signature.outputs,
            uploaded_by=uploaded_by,
        )
        audit.record(
            "model_version.registered",
            category=AuditCategory.DEPLOYMENT,
            actor=actor or uploaded_by,
            subject=version,
            after={"model": model.name, "version": version.version, "sha256": digest,
                   "size_bytes": len(data)},
            tenant=owner,
        )  # fmt: skip
        transaction.on_commit(lambda: grade_version_task.delay(version.pk))
    return version, True


def grade_version(version: ModelVersion) -> None:
    """Grade a version on this host (fleet.grading) and record the verdict, or why not."""
    from fleet import grading  # measuring needs onnxruntime: loaded where grading runs

    path = artifacts.path_for(version.sha256)
    try:
        stats = grading.analyse(onnx.load(path, load_external_data=False))
        measurement = grading.measure(path)
    except grading.MeasurementError as exc:
        version.record_failure(str(exc))
        return
    except Exception as exc:  # a model that checks but does not run: say so on its page
        log.warning("grading %s failed", version, exc_info=True)
        version.record_failure(f"the model could not be measured: {exc}")
        return
    classes = list(NodeClass.objects.order_by("capex"))
    thresholds = grading_thresholds()
    profiles = [
        grading.ClassProfile(name=c.name, memory_bytes=c.memory_bytes, speed_factor=c.speed_factor)
        for c in classes
    ]
    verdict = grading.verdict(stats, measurement, profiles, thresholds)
    by_name = {c.name: c for c in classes}
    version.record_grade(
        grade=verdict.grade,
        node_class=by_name.get(verdict.node_class),
        stats=asdict(stats),
        measurement=asdict(measurement),
        latency=[
            {
                "node_class": c.node_class,
                "p50_ms": c.p50_s * 1000,
                "p95_ms": c.p95_s * 1000,
                "fits_memory": c.fits_memory,
                "meets_target": c.meets_target,
            }
            for c in verdict.latencies
        ],
        target_s=verdict.target_s,
        reasons=list(verdict.reasons),
    )


def grading_thresholds():
    from fleet import grading

    return grading.Thresholds.from_setting(settings.OUTPOST_GRADING or grading.DEFAULT_THRESHOLDS)


def calibrate_speed_factors() -> dict[str, float]:
    """Move each node class's speed factor toward what its online nodes report: the console
    host's batch-1 p50 of a graded version over the node's own batch-1 run time of the same
    bytes (`run_ms_batch1` in heartbeats). Returns the factors that changed, by class."""
    from fleet import grading

    host = {
        sha: measurement["batch1_p50_s"]
        for sha, measurement in ModelVersion.objects.filter(
            status=VersionStatus.GRADED
        ).values_list("sha256", "measurement")
        if measurement.get("batch1_p50_s")
    }
    changed: dict[str, float] = {}
    with transaction.atomic():
        for node_class in NodeClass.objects.select_for_update():
            factor = node_class.speed_factor
            reports = Node.objects.online().filter(node_class=node_class)
            for loaded in reports.values_list("models_loaded", flat=True):
                for row in loaded or []:
                    host_s, node_ms = host.get(row.get("sha256")), row.get("run_ms_batch1")
                    if host_s and node_ms:
                        factor = grading.calibrate_speed_factor(factor, host_s, node_ms / 1000)
            if factor != node_class.speed_factor:
                node_class.speed_factor = factor
                node_class.save(update_fields=["speed_factor"])
                changed[node_class.name] = factor
    return changed


@dataclass(frozen=True)
class Publication:
    """What an operator's "Publish now" did: a new revision, nothing (the newest one already
    says it all), or the compiler's refusal."""

    record: PolicyBundleRecord | None
    refused: BundleCompileFailure | None
    latest: int | None  # the newest revision after the attempt


def publish_bundle_now(*, acting_user) -> Publication:
    """Compile and, when the policy changed, sign and push the next bundle at once instead of
    waiting for the beat's periodic check (fleet.policy_plane.publish_bundle)."""
    now = timezone.now()
    with transaction.atomic():
        record = publish_bundle([f"published by {acting_user}"], now=now)
        if record is not None:
            audit.record(
                "bundle.published",
                category=AuditCategory.POLICY,
                actor=acting_user,
                subject=record,
                after={"revision": record.revision},
            )
    if record is not None:
        return Publication(record=record, refused=None, latest=record.revision)
    # publish_bundle stamps its refusal with the `now` it was given.
    refused = BundleCompileFailure.objects.filter(at=now).first()
    return Publication(
        record=None, refused=refused, latest=PolicyBundleRecord.objects.latest_revision()
    )
