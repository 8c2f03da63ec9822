"""The rollups backend reads the ledger per minute or per hour, grouped and filtered, in a
fixed number of queries; the targets file lists every enrolled node for Prometheus."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from billing.ingest import recompute_hour
from billing.models import Tenant, UsageBatch, UsageRecord
from fleet.models import NodeSample
from fleet.observability import backend_for, usage
from fleet.observability.frames import Scope
from fleet.observability.prometheus import PrometheusBackend
from fleet.observability.rollups import RollupBackend, usage_split
from fleet.observability.targets import targets, write_targets

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
_seq = iter(range(1, 100_000))


def served(
    tenant,
    minute,
    count,
    *,
    model="tiny",
    region="eu-west",
    node_class="nano",
    errors=0,
    bucket="le_10ms",
    energy=0.0,
    served_by="local",
    reason="",
    tokenised=0,
):
    batch = UsageBatch.objects.create(
        node_uid="nd-1",
        batch_seq=next(_seq),
        region=region,
        node_class=node_class,
        created_at=minute,
        received_at=minute,
        digest="x",
        raw=b"",
    )
    return UsageRecord.objects.create(
        batch=batch, tenant=tenant, node_uid="nd-1", region=region, node_class=node_class,
        model=model, version="1", grade="tiny", served_by=served_by, offload_reason=reason,
        minute=minute, received_at=minute, count=count, errors=errors, energy_j=energy,
        tokenised=tokenised, **{bucket: count},
    )  # fmt: skip


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex")


def hour_scope(**kwargs) -> Scope:
    return Scope(start=T0, end=T0 + timedelta(hours=1), step=timedelta(minutes=15), **kwargs)


def test_it_groups_the_minutes_into_steps_by_model(acme):
    served(acme, T0, 10, model="tiny", energy=1.0)
    served(acme, T0 + timedelta(minutes=14), 10, model="tiny", errors=5, energy=2.0)
    served(acme, T0 + timedelta(minutes=15), 4, model="big", bucket="le_250ms")
    frame = RollupBackend().usage(hour_scope(by="model"))
    assert frame.keys() == ["tiny", "big"]
    first = frame.cells["tiny"][T0]
    assert (first.count, first.errors, first.energy_j) == (20, 5, 3.0)
    assert first.error_rate == 0.2
    assert first.energy_per_inference_j == pytest.approx(3.0 / 25)
    assert 0.005 < first.quantile(0.95) <= 0.010
    assert 0.1 < frame.total("big").quantile(0.5) <= 0.25
    assert [v for _, v in frame.series("big", lambda c: c.count)] == [None, 4.0, None, None]


def test_it_groups_by_tenant_region_and_class_and_filters(acme, globex):
    served(acme, T0, 10, region="eu-west")
    served(globex, T0, 3, region="us-east", node_class="standard")
    by_tenant = RollupBackend().usage(hour_scope(by="tenant"))
    assert by_tenant.keys() == ["acme", "globex"]
    by_region = RollupBackend().usage(hour_scope(by="region", tenants=("globex",)))
    assert by_region.keys() == ["us-east"]
    assert RollupBackend().usage(hour_scope(node_classes=("standard",))).total().count == 3
    assert RollupBackend().usage(hour_scope(regions=("ap-south",))).keys() == []


def test_it_leaves_out_minutes_outside_the_window(acme):
    served(acme, T0 - timedelta(minutes=1), 7)
    served(acme, T0 + timedelta(hours=1), 7)
    served(acme, T0 + timedelta(minutes=59), 1)
    assert RollupBackend().usage(hour_scope()).total().count == 1


def test_whole_hour_steps_read_the_hourly_rollups(acme):
    served(acme, T0 + timedelta(minutes=5), 6)
    served(acme, T0 + timedelta(minutes=65), 4)
    for hour in (T0, T0 + timedelta(hours=1)):
        recompute_hour(acme.pk, hour)
    UsageRecord.objects.all().delete()  # only the rollups can answer now
    scope = Scope(start=T0, end=T0 + timedelta(hours=2), step=timedelta(hours=1), by="tenant")
    frame = RollupBackend().usage(scope)
    assert [v for _, v in frame.series("acme", lambda c: c.count)] == [6.0, 4.0]


def test_a_read_takes_two_queries_whatever_the_data(acme, globex, django_assert_num_queries):
    for minute in range(30):
        served(acme, T0 + timedelta(minutes=minute), 1, model=f"m{minute % 7}")
        served(globex, T0 + timedelta(minutes=minute), 1, region="us-east")
    with django_assert_num_queries(2):  # the tenants' ids, then the usage
        RollupBackend().usage(hour_scope(by="model"))
    with django_assert_num_queries(1):  # one tenant's: a join on its slug
        RollupBackend().usage(hour_scope(by="model", tenants=("acme",)))


def test_the_split_counts_offloads_reasons_and_tokenised(acme):
    served(acme, T0, 10, tokenised=4)
    served(acme, T0, 3, served_by="regional", reason="thermal")
    served(acme, T0 + timedelta(minutes=1), 2, served_by="regional", reason="thermal", errors=1)
    rows = list(usage_split(hour_scope(tenants=("acme",)), "served_by", "offload_reason"))
    assert [
        (r["served_by"], r["offload_reason"], r["requests"], r["tokenised_total"]) for r in rows
    ] == [
        ("local", "", 10, 4),
        ("regional", "thermal", 6, 0),
    ]


def test_node_gauges_are_averaged_per_step_and_group(eu_west, us_east, nano, make_node):
    fra, nyc = make_node("fra-1", eu_west, nano), make_node("nyc-1", us_east, nano)
    for node, pressure in ((fra, 0.2), (fra, 0.4), (nyc, 0.9)):
        NodeSample.objects.create(
            node=node, at=T0 + timedelta(minutes=1), cpu_load=0.1, memory_pressure=pressure,
            temperature_c=None, queue_depth=0, requests_total=0, errors_total=0,
        )  # fmt: skip
    memory = RollupBackend().gauge(hour_scope(), "memory_pressure", "region")
    assert memory["eu-west"][0] == (T0, pytest.approx(0.3))
    assert memory["us-east"][1] == (T0 + timedelta(minutes=15), None)
    assert RollupBackend().gauge(hour_scope(), "temperature", "node") == {}
    assert list(
        RollupBackend().gauge(hour_scope(regions=("us-east",)), "memory_pressure", "node")
    ) == ["nyc-1"]


def test_the_backend_is_prometheus_when_configured_except_for_tenants(settings, acme):
    settings.PROMETHEUS_URL = None
    assert isinstance(backend_for(hour_scope()), RollupBackend)
    settings.PROMETHEUS_URL = "http://127.0.0.1:9"
    assert isinstance(backend_for(hour_scope(by="model")), PrometheusBackend)
    assert isinstance(backend_for(hour_scope(by="tenant")), RollupBackend)
    assert isinstance(backend_for(hour_scope(tenants=("acme",))), RollupBackend)


def test_a_prometheus_that_does_not_answer_falls_back_to_the_rollups_and_says_so(settings, acme):
    settings.PROMETHEUS_URL = "http://127.0.0.1:9"
    served(acme, T0, 5)
    answer = usage(hour_scope(by="model"))
    assert answer.frame.backend == "rollups"
    assert answer.frame.total().count == 5
    assert "Prometheus at http://127.0.0.1:9 did not answer" in answer.notice


def test_the_targets_list_every_node_with_its_labels(eu_west, nano, make_node, tmp_path):
    node = make_node("fra-1", eu_west, nano)
    make_node("tls-1", eu_west, nano, endpoint="https://edge.example.net/agent/")
    make_node("v6-1", eu_west, nano, endpoint="http://[::1]:8080")
    entries = {e["labels"]["node"]: e for e in targets()}
    assert entries["fra-1"] == {
        "targets": ["127.0.0.1:9"],
        "labels": {
            "__scheme__": "http", "__metrics_path__": "/fra-1/metrics", "node": "fra-1",
            "node_uid": node.uid, "region": "eu-west", "node_class": "nano",
        },
    }  # fmt: skip
    assert entries["tls-1"]["targets"] == ["edge.example.net:443"]
    assert entries["tls-1"]["labels"]["__scheme__"] == "https"
    assert entries["tls-1"]["labels"]["__metrics_path__"] == "/agent/metrics"
    assert entries["v6-1"]["targets"] == ["[::1]:8080"]

    path = tmp_path / "sd" / "nodes.json"
    assert write_targets(path) is True
    assert json.loads(path.read_text()) == targets()
    assert write_targets(path) is False, "unchanged: Prometheus is not made to reload"
    make_node("fra-2", eu_west, nano)
    assert write_targets(path) is True
    assert len(json.loads(path.read_text())) == 4
    assert [p.name for p in path.parent.iterdir()] == ["nodes.json"], "no temporary left behind"


def test_after_a_failure_prometheus_is_left_alone_for_a_while(settings, acme, monkeypatch):
    import fleet.observability as observability

    settings.PROMETHEUS_URL = "http://127.0.0.1:9"
    observability._failed.clear()
    calls = []
    real = PrometheusBackend.usage

    def counted(self, scope):
        calls.append(scope)
        return real(self, scope)

    monkeypatch.setattr(PrometheusBackend, "usage", counted)
    first, second = usage(hour_scope()), usage(hour_scope())
    assert len(calls) == 1, "the second read did not wait for another timeout"
    assert first.notice == second.notice
    monkeypatch.setattr(observability, "COOL_DOWN_S", 0.0)
    usage(hour_scope())
    assert len(calls) == 2, "after the cool-down Prometheus is asked again"
    observability._failed.clear()
