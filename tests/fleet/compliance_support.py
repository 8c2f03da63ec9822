"""What the compliance tests build their fleets from: nodes that report, deployments, usage
uploaded through the node API, and the checks run at a fixed time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from django.test import Client

from fleet.compliance_actions import run_checks
from fleet.models import ComplianceFinding, Deployment, Model, ModelVersion, Node
from inference import protocol

# Before the machine's clock, so that rows created "now" by default are in the future of the
# checks and never old enough to be found by accident.
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def reporting(node: Node, *, revision: int | None = None, **fields) -> Node:
    """The node heartbeated a few seconds before NOW, healthy, enforcing `revision`."""
    Node.objects.filter(pk=node.pk).update(
        last_heartbeat_at=NOW - timedelta(seconds=5),
        last_report_healthy=True,
        status="online",
        bundle_revision=revision,
        **fields,
    )
    node.refresh_from_db()
    return node


def model_version(name: str, *, owner=None, version: int = 1, classification=None):
    model = Model.objects.filter(owner=owner, name=name).first() or Model.objects.create(
        owner=owner, name=name, export_classification=classification
    )
    return ModelVersion.objects.create(
        model=model,
        version=version,
        sha256=f"{model.pk:02x}{version:02x}".ljust(64, "0"),
        size_bytes=1000,
        opset=17,
        status="graded",
        grade="tiny",
    )


def deploy(
    version: ModelVersion, *, regions=(), state="completed", previous=None, steps=(100,)
) -> Deployment:
    deployment = Deployment.objects.create(
        version=version,
        previous=previous,
        strategy="all_at_once" if list(steps) == [100] else "canary",
        steps=list(steps),
        state=state,
        created_at=NOW - timedelta(hours=1),
    )
    deployment.regions.set(regions)
    return deployment


def upload_usage(node: Node, tenant_slug: str, *, count: int, minute: datetime, model: str):
    """One usage batch from the node, through the node API, as an agent sends it."""
    latency = [0] * protocol.LATENCY_BUCKETS
    latency[4] = count
    record = {
        "tenant": tenant_slug,
        "model": model,
        "version": "1",
        "grade": "tiny",
        "served_by": "local",
        "offload_reason": None,
        "minute": minute.isoformat(),
        "count": count,
        "errors": 0,
        "latency_counts": latency,
        "latency_sum_s": 0.01 * count,
        "energy_j": 0.5,
    }
    seq = upload_usage.sequence = getattr(upload_usage, "sequence", 0) + 1
    body = orjson.dumps(
        {
            "node_uid": node.uid,
            "batch_seq": seq,
            "created_at": minute.isoformat(),
            "records": [record],
        }
    )
    response = Client().post(
        "/api/v1/nodes/usage",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {node.credential}"},
    )
    assert response.status_code == 200, response.content
    if response.json()["accepted"] != 1:
        from billing.models import QuarantinedUsage

        raise AssertionError(list(QuarantinedUsage.objects.values_list("reason", flat=True)))


def found(check_id: str, *, now: datetime = NOW, **thresholds) -> list[ComplianceFinding]:
    """Run the checks at `now` and return the open findings of one check."""
    from fleet.compliance_context import Thresholds

    run_checks(trigger="command", now=now, thresholds=Thresholds(**thresholds))
    return list(ComplianceFinding.objects.open().filter(check_id=check_id).order_by("subject"))
