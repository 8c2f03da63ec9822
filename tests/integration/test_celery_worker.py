"""A real Celery worker, on the configured broker (Redis in CI, the filesystem transport
by default), runs the fleet's beat tasks against the test database."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from fleet.models import Node, NodeSample, NodeStatusChange
from fleet.tasks import detect_status_flips_task, prune_node_samples_task
from tests.integration.conftest import start_celery_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(start_process):
    queue, proc = start_celery_worker(start_process)
    yield queue
    if proc.poll() is not None:
        raise AssertionError(proc.log_path.read_text())


def test_the_worker_records_the_flip_of_a_silent_node(worker, make_node, eu_west, nano):
    silent_since = timezone.now() - timedelta(seconds=settings.OUTPOST_NODE_OFFLINE_AFTER_S + 5)
    node = make_node(
        "fra-nano-1",
        eu_west,
        nano,
        status="online",
        last_heartbeat_at=silent_since,
        last_report_healthy=True,
    )

    detect_status_flips_task.apply_async(queue=worker)

    wait_until(
        lambda: Node.objects.get(pk=node.pk).status == "offline",
        timeout=60,
        what="the worker to flip the node offline",
    )
    change = NodeStatusChange.objects.get(node=node)
    assert (change.old_status, change.new_status, change.reason) == (
        "online",
        "offline",
        "heartbeats missing",
    )


def test_the_worker_prunes_old_samples(worker, make_node, eu_west, nano):
    node = make_node("fra-nano-1", eu_west, nano)
    old = timezone.now() - timedelta(hours=settings.OUTPOST_SAMPLE_RETENTION_H + 1)
    fields = {
        "cpu_load": 0,
        "memory_pressure": 0,
        "queue_depth": 0,
        "requests_total": 0,
        "errors_total": 0,
    }
    NodeSample.objects.create(node=node, at=old, **fields)
    NodeSample.objects.create(node=node, at=timezone.now(), **fields)

    prune_node_samples_task.apply_async(queue=worker)

    wait_until(lambda: NodeSample.objects.count() == 1, timeout=60, what="the worker to prune")
