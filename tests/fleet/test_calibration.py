"""Node classes' speed factors follow what their nodes measure for graded versions."""

import pytest
from django.utils import timezone

from fleet.actions import calibrate_speed_factors
from fleet.models import Model, ModelVersion
from fleet.tasks import calibrate_speed_factors_task


@pytest.fixture
def graded(db):
    model = Model.objects.create(name="sentiment")
    return ModelVersion.objects.create(
        model=model,
        version=1,
        sha256="a" * 64,
        size_bytes=10,
        opset=17,
        status="graded",
        grade="tiny",
        measurement={"batch1_p50_s": 0.002},
    )


def online(make_node, name, region, node_class, run_ms):
    return make_node(
        name,
        region,
        node_class,
        last_heartbeat_at=timezone.now(),
        last_report_healthy=True,
        models_loaded=[
            {
                "name": "sentiment",
                "version": "1",
                "sha256": "a" * 64,
                "ready": True,
                "run_ms_batch1": run_ms,
            }
        ],
    )


def test_a_class_whose_nodes_run_slower_than_the_host_gets_a_smaller_factor(
    graded, make_node, eu_west, nano, standard
):
    online(make_node, "fra-nano-1", eu_west, nano, run_ms=8.0)  # 4x slower than the host
    online(make_node, "fra-std-1", eu_west, standard, run_ms=2.0)  # as fast as the host

    changed = calibrate_speed_factors()

    nano.refresh_from_db()
    standard.refresh_from_db()
    assert set(changed) == {"nano"}
    assert 0.25 < nano.speed_factor < 1.0  # one step of the way from 1.0 toward 0.25
    assert standard.speed_factor == 1.0


def test_offline_nodes_and_unknown_bytes_do_not_count(graded, make_node, eu_west, nano):
    make_node(
        "fra-nano-1",
        eu_west,
        nano,
        models_loaded=[
            {
                "name": "sentiment",
                "version": "1",
                "sha256": "a" * 64,
                "ready": True,
                "run_ms_batch1": 50,
            }
        ],
    )
    online(make_node, "fra-nano-2", eu_west, nano, run_ms=None)

    assert calibrate_speed_factors_task() == {}
