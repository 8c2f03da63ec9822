"""derive_status (Python) and NodeQuerySet (SQL) must agree for every heartbeat age."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from fleet.choices import NodeStatus
from fleet.health import derive_status, report_is_healthy
from fleet.models import Node
from inference.protocol import HeartbeatReport, LoadedModel

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def status_at(age_s, healthy=True):
    last = None if age_s is None else NOW - timedelta(seconds=age_s)
    return derive_status(last, healthy, NOW, online_after_s=15, offline_after_s=60)


def test_status_follows_the_age_of_the_last_heartbeat():
    assert status_at(None) == NodeStatus.PENDING
    assert status_at(0) == NodeStatus.ONLINE
    assert status_at(15) == NodeStatus.ONLINE
    assert status_at(16) == NodeStatus.DEGRADED
    assert status_at(60) == NodeStatus.DEGRADED
    assert status_at(61) == NodeStatus.OFFLINE


def test_a_fresh_but_unhealthy_report_is_degraded_and_a_silent_node_offline_anyway():
    assert status_at(1, healthy=False) == NodeStatus.DEGRADED
    assert status_at(61, healthy=False) == NodeStatus.OFFLINE


def make_report(**overrides):
    fields = dict(
        node_uid="nd-1",
        agent_version="1",
        sent_at=NOW,
        uptime_s=1,
        cpu_load=0.1,
        memory_pressure=0.5,
        queue_depth=0,
        requests_total=0,
        errors_total=0,
        models=[],
    )
    fields.update(overrides)
    return HeartbeatReport(**fields)


def test_memory_pressure_makes_a_report_unhealthy():
    assert report_is_healthy(make_report()) == (True, "heartbeat")
    assert report_is_healthy(make_report(memory_pressure=0.97)) == (False, "memory pressure 97%")


def test_models_not_ready_make_a_report_unhealthy():
    models = [LoadedModel(name=n, version="1", sha256="0" * 64, ready=False) for n in "ba"]
    assert report_is_healthy(make_report(models=models)) == (False, "models not ready: a, b")


@pytest.mark.parametrize("age_s", [None, 0, 14, 16, 59, 61, 3600])
@pytest.mark.parametrize("healthy", [True, False])
def test_the_queryset_agrees_with_the_pure_function(make_node, eu_west, nano, age_s, healthy):
    now = timezone.now()
    last = None if age_s is None else now - timedelta(seconds=age_s)
    node = make_node("n", eu_west, nano, last_heartbeat_at=last, last_report_healthy=healthy)

    expected = node.derived_status(now)
    annotated = Node.objects.with_status(now).get(pk=node.pk).current_status
    assert annotated == expected
    filters = {
        NodeStatus.ONLINE: Node.objects.online(now),
        NodeStatus.DEGRADED: Node.objects.degraded(now),
        NodeStatus.OFFLINE: Node.objects.offline(now),
        NodeStatus.PENDING: Node.objects.pending(),
    }
    assert [s for s, qs in filters.items() if qs.filter(pk=node.pk).exists()] == [expected]
