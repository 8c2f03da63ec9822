"""The operators' observability dashboards (/fleet/observability/): the SLO burn-rate view,
latency, resources and routing. They render for operators only, filter every chart, refuse bad
filters with a 400 that says why, and run the same number of queries whatever the number of
models, tenants and nodes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.ingest import recompute_hour
from billing.models import (
    BandTerms,
    LatencyBand,
    Subscription,
    Tenant,
    UsageBatch,
    UsageRecord,
)
from fleet import dashboard_views
from fleet.dashboard_charts import FORECAST_WINDOW, throttle_forecast
from fleet.models import DriftAlert, Model, ModelVersion, NodeSample
from fleet.observability import slo
from tests.billing.usage_rows import served

pytestmark = pytest.mark.django_db

# Mid-month, so that "the last hour" and "this month" are the same days whenever this runs.
NOW = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)
PAGES = ["slo", "latency", "resources", "routing"]
_seq = iter(range(1, 1_000_000))


@pytest.fixture(autouse=True)
def frozen(monkeypatch):
    """The dashboards read `timezone.now()`; these tests fix it."""
    monkeypatch.setattr(dashboard_views, "timezone", SimpleNamespace(now=lambda: NOW))


def record(
    tenant, minute, count, *, model="tiny-classifier", region="eu-west", node_class="nano",
    slow=0, errors=0, energy=0.0, served_by="local", reason="",
):  # fmt: skip
    """`count` answers (`slow` of them in (100, 250] ms, the rest under 10 ms) in the ledger."""
    minute = minute.replace(second=0, microsecond=0)
    batch = UsageBatch.objects.create(
        node_uid="nd-dash", batch_seq=next(_seq), region=region, node_class=node_class,
        created_at=minute, received_at=minute, digest="x", raw=b"",
    )  # fmt: skip
    return UsageRecord.objects.create(
        batch=batch, tenant=tenant, node_uid="nd-dash", region=region, node_class=node_class,
        model=model, version="1", grade="tiny", served_by=served_by, offload_reason=reason,
        minute=minute, received_at=minute, count=count, errors=errors, energy_j=energy,
        le_10ms=count - slow, le_250ms=slow,
    )  # fmt: skip


def roll_up():
    """The hourly rollups of every (tenant, hour) in the ledger, as billing's task makes them."""
    hours = {
        (tenant_id, minute.replace(minute=0))
        for tenant_id, minute in UsageRecord.objects.values_list("tenant_id", "minute")
    }
    for tenant_id, hour in hours:
        recompute_hour(tenant_id, hour)


def band(slug, name, target_ms, position, currency="EUR"):
    band = LatencyBand.objects.create(slug=slug, name=name, position=position)
    BandTerms.objects.create(
        band=band, currency=currency, effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        p95_target_ms=target_ms, monthly_fee=Decimal("49.00"), included_inferences=1000,
        overage_tiny=Decimal("0.04"), overage_medium=Decimal("0.30"),
        overage_large=Decimal("1.50"), sla_credit_percent=Decimal(10),
    )  # fmt: skip
    return band


def subscribe(tenant, band, starts_at=datetime(2026, 1, 1, tzinfo=UTC)):
    return Subscription.objects.create(tenant=tenant, band=band, starts_at=starts_at)


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex", time_zone="America/New_York")


@pytest.fixture
def bands(acme, globex):
    """Silver (100 ms) for acme, Gold (25 ms) for globex."""
    silver, gold = band("silver", "Silver", 100, 2), band("gold", "Gold", 25, 3)
    subscribe(acme, silver)
    subscribe(globex, gold)
    return {"silver": silver, "gold": gold}


@pytest.fixture
def traffic(bands, acme, globex, eu_west, us_east, nano, standard, accelerator, make_node):
    """acme burning its budget over the last hour in eu-west; globex fast in us-east; some
    thermal offloads to the eu-west pool; nodes with heartbeats."""
    served(acme, NOW - timedelta(days=10), 5000, received=NOW - timedelta(days=10))
    record(acme, NOW - timedelta(minutes=20), 100, slow=90, energy=2.0, errors=5)
    record(
        acme, NOW - timedelta(minutes=10), 40, node_class="accelerator", served_by="regional",
        reason="thermal", energy=40.0,
    )  # fmt: skip
    record(
        globex, NOW - timedelta(minutes=15), 200, model="random-convnet-large",
        region="us-east", node_class="standard", energy=100.0,
    )  # fmt: skip
    roll_up()
    for name in ("tiny-classifier", "random-convnet-large"):
        Model.objects.create(name=name)  # the registry: usage ingest counts only its models
    nodes = {
        "eu-west-nano-1": make_node("eu-west-nano-1", eu_west, nano),
        "us-east-standard-1": make_node("us-east-standard-1", us_east, standard),
    }
    for name, start_c, rate in (("eu-west-nano-1", 60.0, 4.0), ("us-east-standard-1", 50.0, 0)):
        heartbeats(nodes[name], start_c=start_c, c_per_min=rate, memory=0.5)
    return nodes


def heartbeats(node, *, start_c, c_per_min, memory, minutes=10, every_s=10):
    NodeSample.objects.bulk_create(
        NodeSample(
            node=node, at=NOW - timedelta(minutes=minutes) + timedelta(seconds=s),
            cpu_load=0.3, memory_pressure=memory,
            temperature_c=start_c + c_per_min * s / 60, queue_depth=0,
            requests_total=s, errors_total=0,
        )
        for s in range(0, minutes * 60 + 1, every_s)
    )  # fmt: skip


def page(client, name, **params):
    return client.get(reverse(f"observability:{name}"), params)


def figure(response, chart):
    """The plotly figure a page carries for console.js to draw in `chart-<chart>`."""
    found = re.search(
        rf'<script type="application/json" data-chart-for="chart-{chart}">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert found, f"no figure for chart-{chart}"
    return json.loads(found.group(1))


def traces(fig, *, targets=False):
    """{name: y values} of a figure's data traces (target lines left out unless asked)."""
    return {
        t["name"]: t["y"]
        for t in fig["data"]
        if targets == ("text" in t and t.get("mode") == "lines+text")
    }


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_a_tenant_member_is_refused_every_dashboard(client, carol, name):
    client.force_login(carol)
    assert page(client, name).status_code == 403


def test_a_visitor_is_sent_to_log_in(client):
    response = page(client, "slo")
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_the_nav_links_the_slo_view_for_operators(operator):
    response = operator.get(reverse("fleet:nodes"))
    assert f'href="{reverse("observability:slo")}">Observability</a>' in response.content.decode()


# --- the SLO view -----------------------------------------------------------------------------


def test_the_slo_view_shows_which_bands_burn_their_budget(operator, traffic):
    response = page(operator, "slo")
    assert response.status_code == 200
    body = response.content.decode()
    # acme's last hours: 90 of 140 answers over silver's 100 ms, a burn of 12.9 (under the
    # fast-burn 14.4, over the slow-burn 6).
    assert '<tbody data-band="silver" data-status="at_risk">' in body
    assert '<tr data-tenant="acme" data-status="at_risk">' in body
    assert "Slow burn: 12.9× the budget over the last 6 h (alert at 6×)" in body
    assert '<tbody data-band="gold" data-status="met">' in body
    assert 'data-band-at-risk="silver"' in body
    assert "From the console&#x27;s rollups" in body

    p95 = figure(response, "p95")
    assert set(traces(p95)) == {"tiny-classifier", "random-convnet-large"}
    lines = traces(p95, targets=True)
    assert lines == {"Silver p95 100 ms": [100, 100], "Gold p95 25 ms": [25, 25]}


def test_the_slo_views_tenant_filter_keeps_its_band_and_its_traffic(operator, traffic):
    response = page(operator, "slo", tenant="globex", by="tenant")
    body = response.content.decode()
    assert 'data-band="gold"' in body and 'data-band="silver"' not in body
    assert set(traces(figure(response, "p95"))) == {"globex"}
    assert set(traces(figure(response, "p95"), targets=True)) == {"Gold p95 25 ms"}


def test_the_slo_view_refreshes_its_live_part_for_htmx(operator, traffic):
    response = operator.get(reverse("observability:slo"), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert "data-burn-table" in body
    assert "<nav" not in body and "<form" not in body
    assert "HX-Request" in response["Vary"]


# --- the loader ---------------------------------------------------------------------------------


def test_a_tenant_is_held_to_the_band_that_decides_its_month(acme, bands):
    # acme moved from silver to gold on the 5th: gold covers most of November.
    Subscription.objects.filter(tenant=acme).update(ends_at=datetime(2026, 11, 5, tzinfo=UTC))
    subscribe(acme, bands["gold"], starts_at=datetime(2026, 11, 5, tzinfo=UTC))
    targets = slo.tenant_targets(slo.MonthClock.utc(NOW), BandTerms.objects.all())
    assert [(t.slug, t.band, t.target_ms) for t in targets] == [
        ("acme", "gold", 25),
        ("globex", "gold", 25),
    ]


def test_a_tenant_whose_band_has_no_terms_in_its_currency_is_left_out(acme, bands, globex):
    Tenant.objects.filter(pk=globex.pk).update(currency="USD")
    targets = slo.tenant_targets(slo.MonthClock.utc(NOW), BandTerms.objects.all())
    assert [t.slug for t in targets] == ["acme"]


def test_the_report_takes_seven_queries_whatever_the_bands_and_tenants(
    acme, bands, django_assert_num_queries
):
    with django_assert_num_queries(7):
        slo.load(NOW)
    for i in range(6):
        tenant = Tenant.objects.create(slug=f"t{i}", name=f"T{i}")
        subscribe(tenant, band(f"b{i}", f"B{i}", 50 + i, 10 + i))
        record(tenant, NOW - timedelta(minutes=5), 10)
    roll_up()
    with django_assert_num_queries(7):
        report = slo.load(NOW)
    assert len(report.bands) == 8


# --- latency ------------------------------------------------------------------------------------


def test_latency_shows_percentiles_and_tail_errors_per_chosen_group(operator, traffic):
    response = page(operator, "latency", by="region", range="1h")
    assert response.status_code == 200
    for chart in ("p50", "p95", "p99", "errors", "requests"):
        assert set(traces(figure(response, chart))) == {"eu-west", "us-east"}
    errors = traces(figure(response, "errors"))["eu-west"]
    assert max(v for v in errors if v is not None) == pytest.approx(5 / 105, abs=1e-4)
    body = response.content.decode()
    assert '<tr data-group="eu-west">' in body


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"by": "tenant", "tenant": "acme"}, {"acme"}),
        ({"by": "model", "region": "us-east"}, {"random-convnet-large"}),
        ({"by": "node_class", "node_class": "accelerator"}, {"accelerator"}),
        ({"by": "tenant", "model": "random-convnet-large"}, {"globex"}),
        ({"by": "all"}, {"all"}),
    ],
)
def test_the_filters_narrow_the_figures(operator, traffic, params, expected):
    response = page(operator, "latency", **params)
    assert response.status_code == 200
    assert set(traces(figure(response, "p95"))) == expected


def test_a_range_of_a_week_reads_hours(operator, traffic):
    response = page(operator, "latency", range="7d", by="tenant")
    p95 = figure(response, "p95")
    assert set(traces(p95)) == {"acme", "globex"}
    assert len(traces(p95)["acme"]) == 7 * 24 + 1  # and the hour under way


# --- bad filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "field", "message"),
    [
        ("slo", {"range": "2y"}, "range", "2y is not one of the available choices"),
        ("latency", {"by": "node"}, "by", "node is not one of the available choices"),
        ("resources", {"by": "tenant"}, "by", "tenant is not one of the available choices"),
        ("routing", {"tenant": "nobody"}, "tenant", "nobody is not one of the available choices"),
        ("latency", {"model": "<b>x</b>"}, "model", "&lt;b&gt;x&lt;/b&gt; is not one of"),
        ("resources", {"node_class": "huge"}, "node_class", "huge is not one of the available"),
        ("routing", {"region": "mars"}, "region", "mars is not one of the available choices"),
    ],
)
def test_a_bad_filter_is_answered_400_with_what_is_wrong(
    operator, traffic, name, params, field, message
):
    response = page(operator, name, **params)
    assert response.status_code == 400
    body = response.content.decode()
    assert "These filters cannot be applied." in body
    assert message in body
    assert f'id="id_{field}"' in body and "is-invalid" in body
    assert "data-chart-for" not in body


# --- resources ----------------------------------------------------------------------------------


def test_resources_show_memory_energy_and_temperature_against_the_envelope(operator, traffic):
    response = page(operator, "resources", range="1h", by="node")
    assert response.status_code == 200
    memory = traces(figure(response, "memory"))
    assert set(memory) == {"eu-west-nano-1", "us-east-standard-1"}
    assert {v for v in memory["eu-west-nano-1"] if v is not None} == {0.5}

    energy = traces(figure(response, "energy-class"))
    assert set(energy) == {"nano", "accelerator", "standard"}
    # acme's nano minute: 2 J over 100 answers and 5 errors.
    assert max(v for v in energy["nano"] if v is not None) == pytest.approx(2 / 105, abs=1e-4)
    assert set(traces(figure(response, "energy-model"))) == {
        "tiny-classifier",
        "random-convnet-large",
    }
    temperature = figure(response, "temperature")
    assert list(traces(temperature))[0] == "eu-west-nano-1"  # the hottest first


def test_the_thermal_table_predicts_when_a_heating_node_throttles(operator, traffic, nano):
    nano.thermal_envelope_c = Decimal("70")
    nano.save()
    response = page(operator, "resources")
    body = response.content.decode()
    # 60 °C + 4 °C/min for 10 min: 100 °C, over the 70 °C envelope.
    assert '<tr data-node="eu-west-nano-1" data-thermal-state="throttling">' in body
    assert "Over its 70 °C envelope: offloading its traffic now." in body
    assert set(traces(figure(response, "temperature"), targets=True)) == {"nano envelope 70 °C"}


def test_the_demos_thermal_offloads_show_per_region(operator, traffic):
    response = page(operator, "resources", range="1h")
    offloads = traces(figure(response, "thermal-offloads"))
    assert set(offloads) == {"eu-west"}
    # Per minute in 1-minute steps: the 40 answers the pool served for heat.
    assert sum(v for v in offloads["eu-west"] if v) == pytest.approx(40)


def test_gauges_follow_the_region_filter(operator, traffic):
    response = page(operator, "resources", region="us-east", by="node")
    assert set(traces(figure(response, "memory"))) == {"us-east-standard-1"}
    assert "eu-west-nano-1" not in response.content.decode()


# --- routing ------------------------------------------------------------------------------------


def test_routing_shows_offload_rates_reasons_and_drift(operator, traffic, acme):
    model = Model.objects.get(name="tiny-classifier")
    version = ModelVersion.objects.create(
        model=model, version=1, sha256="a" * 64, size_bytes=1, opset=17,
        drift_psi=0.4, drift_checked_at=NOW, drift_note="3 minutes above 0.25",
    )  # fmt: skip
    DriftAlert.objects.create(
        version=version, opened_at=NOW - timedelta(minutes=5), baseline="version 0",
        peak_psi=0.45, last_psi=0.4, reason="sustained",
    )  # fmt: skip
    response = page(operator, "routing", range="1h")
    assert response.status_code == 200
    reasons = traces(figure(response, "offload-reasons"))
    assert set(reasons) == {"thermal"}
    rates = traces(figure(response, "offload-rate"))
    # eu-west: 40 regional of 145 requests, in different minutes.
    assert {round(v, 4) for v in rates["eu-west"] if v is not None} == {0.0, 1.0}
    body = response.content.decode()
    assert re.search(r'<tr data-group="eu-west">.*?<td class="num">27.6%</td>', body, re.S)
    drift = figure(response, "drift")
    assert drift["data"][0]["x"] == ["tiny-classifier v1"]
    assert drift["data"][0]["marker"]["color"] == ["#dc3545"]
    assert "drift alert</span>" in body and "sustained" in body


# --- whichever backend answers --------------------------------------------------------------------


def test_a_prometheus_that_does_not_answer_leaves_the_same_charts_with_a_notice(
    operator, traffic, settings
):
    from_rollups = figure(page(operator, "latency", by="region"), "p95")
    assert "did not answer" not in page(operator, "latency", by="region").content.decode()
    with socket_on_a_free_port() as port:
        settings.PROMETHEUS_URL = f"http://127.0.0.1:{port}"
    response = page(operator, "latency", by="region")
    assert response.status_code == 200
    body = response.content.decode()
    assert f"Prometheus at http://127.0.0.1:{port} did not answer" in body
    assert "Showing the console&#x27;s rollups." in body
    assert traces(figure(response, "p95")) == traces(from_rollups)


def socket_on_a_free_port():
    """A port nothing listens on once the block ends (bound, then closed)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield sock.getsockname()[1]

    return bound()


# --- constant queries ---------------------------------------------------------------------------


def grow(eu_west, us_east, nano, standard, make_node, silver):
    """Many more models, tenants, nodes and drift-checked versions."""
    for i in range(8):
        tenant = Tenant.objects.create(slug=f"tenant-{i}", name=f"Tenant {i}")
        subscribe(tenant, silver)
        for j in range(3):
            record(
                tenant, NOW - timedelta(minutes=5 + j), 20, model=f"model-{j}",
                region=(eu_west, us_east)[i % 2].code, node_class="nano", slow=j,
                served_by=("local", "regional")[j % 2], reason=("", "capacity")[j % 2],
            )  # fmt: skip
        node = make_node(f"node-{i}", (eu_west, us_east)[i % 2], (nano, standard)[i % 2])
        heartbeats(node, start_c=50 + i, c_per_min=1, memory=0.2, minutes=3)
        model = Model.objects.create(name=f"model-{i}")
        ModelVersion.objects.create(
            model=model, version=1, sha256=f"{i:064d}", size_bytes=1, opset=17,
            drift_psi=0.1 * i, drift_checked_at=NOW,
        )  # fmt: skip
    roll_up()


@pytest.mark.parametrize("name", PAGES)
def test_each_page_runs_the_same_queries_whatever_the_fleet(
    operator, traffic, bands, eu_west, us_east, nano, standard, make_node, name,
    django_assert_num_queries,
):  # fmt: skip
    with CaptureQueriesContext(connection) as small:
        assert page(operator, name, range="1h").status_code == 200
    grow(eu_west, us_east, nano, standard, make_node, bands["silver"])
    with django_assert_num_queries(len(small)):
        response = page(operator, name, range="1h")
    assert response.status_code == 200
    with django_assert_num_queries(len(small)):
        page(operator, name, range="7d", by=dashboard_views.PAGE_GROUPS[name][1])


# --- the thermal forecast (pure) ----------------------------------------------------------------


def readings(start_c, c_per_min, *, seconds=120, every=5):
    return [
        (NOW - timedelta(seconds=seconds - s), start_c + c_per_min * s / 60)
        for s in range(0, seconds + 1, every)
    ]


def test_a_heating_node_throttles_when_its_trend_reaches_the_envelope():
    forecast = throttle_forecast(readings(60, 1.0), 70.0, now=NOW)
    # 62 °C now, 1 °C/min: 8 minutes to go.
    assert forecast.temperature_c == pytest.approx(62)
    assert forecast.slope_c_per_min == pytest.approx(1.0)
    assert forecast.minutes_to_envelope == pytest.approx(8)
    assert forecast.state == "heating"
    assert forecast.text == "Throttles in ~8 min at 1 °C/min."


def test_a_node_over_its_envelope_is_throttling():
    forecast = throttle_forecast(readings(75, 0), 70.0, now=NOW)
    assert forecast.state == "throttling"
    assert forecast.badge == "danger"


def test_a_node_about_to_cross_sheds_best_effort_traffic_as_the_node_does():
    # 69 °C and climbing 1 °C/s, like the demo's simulated heat: the node's 30 s rule fires.
    forecast = throttle_forecast(readings(68, 60, seconds=1, every=1), 70.0, now=NOW)
    assert forecast.state == "shedding"
    assert "shedding best-effort traffic" in forecast.text


def test_a_cooling_or_slow_node_is_not_predicted_to_throttle():
    assert throttle_forecast(readings(60, -1.0), 70.0, now=NOW).state == "steady"
    slow = throttle_forecast(readings(40, 0.1), 70.0, now=NOW)
    assert slow.state == "steady" and "not at its envelope within the hour" in slow.text


def test_silence_missing_sensors_and_missing_envelopes_give_no_prediction():
    old = [(NOW - FORECAST_WINDOW - timedelta(seconds=1), 90.0)]
    silent = throttle_forecast(old, 70.0, now=NOW)
    assert silent.state == "silent" and silent.text == "No heartbeat in the last 2 min."
    no_sensor = throttle_forecast([(NOW, None), (NOW - timedelta(seconds=5), None)], 70, now=NOW)
    assert no_sensor.state == "no_sensor"
    assert throttle_forecast(readings(60, 1.0), None, now=NOW).state == "no_envelope"


def test_one_noisy_reading_does_not_swing_the_trend():
    noisy = readings(60, 0)
    noisy[-1] = (noisy[-1][0], 66.0)  # the last reading jumps 6 °C
    forecast = throttle_forecast(noisy, 70.0, now=NOW)
    assert forecast.slope_c_per_min < 1.0
