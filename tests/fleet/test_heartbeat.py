from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from fleet.models import Node, NodeSample, NodeStatusChange
from fleet.tasks import detect_status_flips_task, prune_node_samples_task

SHA = "ab" * 32


def report(node, **overrides):
    body = {
        "node_uid": node.uid,
        "agent_version": "0.1.0",
        "sent_at": datetime.now(UTC).isoformat(),
        "uptime_s": 12.5,
        "models": [{"name": "tiny-classifier", "version": "1", "sha256": SHA, "ready": True}],
        "cpu_load": 0.25,
        "memory_pressure": 0.4,
        "temperature_c": 51.0,
        "queue_depth": 2,
        "requests_total": 120,
        "errors_total": 1,
        "bundle_revision": None,
    }
    body.update(overrides)
    return body


def beat(client, node, **overrides):
    return client.post(
        "/api/v1/nodes/heartbeat",
        report(node, **overrides),
        content_type="application/json",
        headers={"Authorization": f"Bearer {node.credential}"},
    )


@pytest.fixture
def edge(make_node, eu_west, nano):
    return make_node("fra-nano-1", eu_west, nano)


def test_a_first_heartbeat_brings_a_node_online_with_a_history_row(client, edge):
    response = beat(client, edge)

    assert response.status_code == 200
    assert response.json()["status"] == "online"
    edge.refresh_from_db()
    assert edge.status == "online"
    assert (edge.cpu_load, edge.temperature_c, edge.requests_total) == (0.25, 51.0, 120)
    assert edge.models_loaded[0]["name"] == "tiny-classifier"
    change = NodeStatusChange.objects.get(node=edge)
    assert (change.old_status, change.new_status) == ("pending", "online")
    assert NodeSample.objects.filter(node=edge).count() == 1


def test_the_answer_gives_the_node_its_classs_memory_budget(client, edge, settings):
    budget = beat(client, edge).json()["memory_budget_bytes"]
    assert budget == int(edge.node_class.memory_bytes * settings.OUTPOST_NODE_MODEL_MEMORY_SHARE)


def test_repeated_heartbeats_write_samples_but_no_new_history(client, edge):
    for _ in range(3):
        beat(client, edge)

    assert NodeStatusChange.objects.filter(node=edge).count() == 1
    assert NodeSample.objects.filter(node=edge).count() == 3


def test_a_node_with_a_model_not_ready_is_degraded_and_says_why(client, edge):
    beat(client, edge)
    models = [{"name": "tiny-classifier", "version": "1", "sha256": SHA, "ready": False}]
    response = beat(client, edge, models=models)

    assert response.json()["status"] == "degraded"
    change = NodeStatusChange.objects.filter(node=edge).first()
    assert change.new_status == "degraded"
    assert change.reason == "models not ready: tiny-classifier"


def test_it_refuses_a_heartbeat_without_a_valid_credential(client, edge):
    edge.credential = "opn_forged"
    response = beat(client, edge)
    assert response.status_code == 401
    assert "error" in response.json()


def test_it_refuses_a_heartbeat_for_another_node(client, edge, make_node, eu_west, nano):
    other = make_node("fra-nano-2", eu_west, nano)
    response = client.post(
        "/api/v1/nodes/heartbeat",
        report(other),
        content_type="application/json",
        headers={"Authorization": f"Bearer {edge.credential}"},
    )
    assert response.status_code == 403
    assert not NodeSample.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_pressure", 1.7),
        ("queue_depth", -1),
        ("sent_at", "2026-01-01T00:00:00"),
        ("colour", "red"),
    ],
)
def test_it_rejects_a_bad_report_and_names_the_field(client, edge, field, value):
    response = beat(client, edge, **{field: value})
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert not NodeSample.objects.exists()


def test_silent_nodes_go_degraded_then_offline_with_one_row_each(client, edge, settings):
    beat(client, edge)
    now = timezone.now()

    Node.objects.filter(pk=edge.pk).update(
        last_heartbeat_at=now - timedelta(seconds=settings.OUTPOST_NODE_ONLINE_AFTER_S + 1)
    )
    assert detect_status_flips_task() == 1
    assert Node.objects.degraded().get() == edge

    Node.objects.filter(pk=edge.pk).update(
        last_heartbeat_at=now - timedelta(seconds=settings.OUTPOST_NODE_OFFLINE_AFTER_S + 1)
    )
    assert detect_status_flips_task() == 1
    assert detect_status_flips_task() == 0
    assert Node.objects.offline().get() == edge
    statuses = list(
        NodeStatusChange.objects.filter(node=edge)
        .order_by("at")
        .values_list("new_status", flat=True)
    )
    assert statuses == ["online", "degraded", "offline"]


def test_old_samples_are_pruned(edge, settings):
    now = timezone.now()
    fields = {
        "cpu_load": 0,
        "memory_pressure": 0,
        "queue_depth": 0,
        "requests_total": 0,
        "errors_total": 0,
    }
    NodeSample.objects.create(
        node=edge,
        at=now - timedelta(hours=settings.OUTPOST_SAMPLE_RETENTION_H, minutes=1),
        **fields,
    )
    NodeSample.objects.create(node=edge, at=now - timedelta(minutes=5), **fields)

    assert prune_node_samples_task() == 1
    assert NodeSample.objects.count() == 1
