"""Usage from a real agent into the real console's ledger (a live server): the agent's batches
are what `POST /api/v1/nodes/usage` takes, counted once, nothing quarantined.

With the real minute window: the agent is stopped mid-minute, which folds the open minute into
a batch, and started again, which uploads it (the fake-console tests in test_agent_usage.py
cover kills, retries and offloads with short windows)."""

from __future__ import annotations

import pytest
from django.db.models import Sum

from billing.api import issue_tenant_token
from billing.models.usage import QuarantinedUsage, UsageBatch, UsageRecord
from fleet.models import EnrollmentToken, Model, ModelVersion
from fleet.policy_plane import publish_bundle
from tests.inference.harness import doubler_model, running_agent, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

INPUT = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def billed() -> int:
    return UsageRecord.objects.aggregate(total=Sum("count"))["total"] or 0


def test_an_agents_usage_reaches_the_consoles_ledger_once(
    live_server, tmp_path, settings, eu_west, nano, acme
):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    doubler_model(tmp_path / "models" / "doubler.onnx")
    # The catalogue knows the doubler's version 1: usage of an unknown version is quarantined.
    ModelVersion.objects.create(
        model=Model.objects.create(name="doubler"),
        version=1,
        sha256="1" * 64,
        size_bytes=1,
        opset=17,
        status="graded",
        grade="tiny",
    )
    publish_bundle(["test"])
    _, secret = EnrollmentToken.issue(node_name="fra-nano-1", region=eu_west, node_class=nano)
    headers = {"Authorization": f"Bearer {issue_tenant_token(acme, 600).token}"}
    args = ("--console", live_server.url, "--enroll", secret)

    with running_agent(
        tmp_path / "models", tmp_path / "state", *args, log_path=tmp_path / "first.log"
    ) as agent:
        for _ in range(7):
            answer = agent.post("/v2/models/doubler/infer", json=INPUT, headers=headers)
            assert answer.status_code == 200, answer.text
    # Stopped: the open minute is a spooled batch now.
    with running_agent(
        tmp_path / "models", tmp_path / "state", *args, log_path=tmp_path / "second.log"
    ) as agent:
        wait_until(lambda: billed() == 7, timeout=20, what="7 inferences in the ledger")
        wait_until(
            lambda: "outpost_usage_batches_pending 0.0" in agent.metrics(),
            what="the batch acknowledged",
        )

    assert billed() == 7
    assert UsageBatch.objects.count() == 1
    assert not QuarantinedUsage.objects.exists()
    record = UsageRecord.objects.get()
    assert (record.tenant, record.model, record.version, record.grade) == (
        acme,
        "doubler",
        "1",
        "tiny",
    )
    assert (record.served_by, record.offload_reason, record.errors) == ("local", "", 0)
    assert record.minute.second == 0
    assert sum(record.latency_counts) == 7
