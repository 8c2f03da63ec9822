"""Drift in the console: windows arrive with heartbeats, versions are measured against their
baseline, sustained drift opens an alert (and closes it), and a deployment that asks for it
rolls back. The pages show it."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from fleet.drift import corrected_psi
from fleet.drift_actions import check_all, check_version, record_windows
from fleet.models import DriftAlert, DriftWindow, Model, ModelVersion
from fleet.rollout_actions import judge, promote, start_rollout
from fleet.tasks import prune_node_samples_task
from inference.protocol import HeartbeatReport
from tests.fleet.test_heartbeat import beat
from tests.fleet.test_heartbeat import report as heartbeat_body

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def make_version(model, number):
    return ModelVersion.objects.create(
        model=model,
        version=number,
        sha256=f"{number:064x}",
        size_bytes=1000,
        opset=17,
        status="graded",
        grade="tiny",
        stats={"peak_memory_bytes": 1000},
    )


@pytest.fixture
def churn(acme):
    return Model.objects.create(owner=acme, name="churn")


@pytest.fixture
def edge(make_node, eu_west, nano):
    return make_node("fra-nano-1", eu_west, nano)


def loaded(version, *windows):
    return {
        "name": version.model.served_name,
        "version": str(version.version),
        "sha256": version.sha256,
        "ready": True,
        "outputs": list(windows),
    }


def window(minute, *counts):
    return {
        "minute": (T0 + timedelta(minutes=minute)).isoformat(),
        "rows": sum(counts),
        "classes": list(counts),
    }


def store(node, version, *windows):
    report = HeartbeatReport.model_validate(
        heartbeat_body(node, models=[loaded(version, *windows)])
    )
    return record_windows(node, report)


@pytest.fixture
def settings_fast(settings):
    settings.OUTPOST_DRIFT = {"threshold": 0.25, "sustained_minutes": 2, "min_rows": 20}
    return settings


def test_a_heartbeat_stores_its_windows_once_and_keeps_them_out_of_models_loaded(
    client, edge, churn
):
    v1 = make_version(churn, 1)
    body = [loaded(v1, window(0, 10, 20), window(1, 5, 5))]
    assert beat(client, edge, models=body).status_code == 200
    assert beat(client, edge, models=body).status_code == 200  # resent: replaced, not doubled
    assert DriftWindow.objects.count() == 2
    assert sum(DriftWindow.objects.values_list("rows", flat=True)) == 40
    edge.refresh_from_db()
    assert "outputs" not in edge.models_loaded[0]


def test_windows_of_versions_the_registry_does_not_know_are_skipped(edge, churn):
    v1 = make_version(churn, 1)
    stranger = loaded(v1, window(0, 1))
    stranger["name"] = "local-model"
    report = HeartbeatReport.model_validate(heartbeat_body(edge, models=[stranger]))
    assert record_windows(edge, report) == 0


def test_a_bad_window_is_a_400_that_names_the_field(client, edge, churn):
    bad = loaded(make_version(churn, 1), {**window(0, 1), "classes": [-1]})
    response = beat(client, edge, models=[bad])
    assert response.status_code == 400
    assert "outputs" in response.json()["error"]


def test_a_first_version_is_compared_with_its_own_first_minute(edge, churn, settings_fast):
    v1 = make_version(churn, 1)
    store(edge, v1, window(0, 5, 5), window(1, 50, 50), window(2, 45, 55), window(3, 90, 10))
    check_version(v1, now=T0 + timedelta(minutes=4, seconds=20))
    v1.refresh_from_db()
    assert v1.drift_reference["minute"].startswith("2026-11-26T12:01")  # minute 0 is too thin
    assert v1.drift_psi == pytest.approx(corrected_psi([50, 50], [90, 10]))  # the latest
    assert "its own first minute (12:01 UTC)" in v1.drift_note
    assert not DriftAlert.objects.exists()  # one minute above is not sustained


def test_sustained_drift_opens_one_alert_which_closes_when_it_passes(edge, churn, settings_fast):
    v1 = make_version(churn, 1)
    store(edge, v1, window(0, 50, 50), window(1, 90, 10), window(2, 95, 5))
    check_version(v1, now=T0 + timedelta(minutes=3, seconds=20))
    check_version(v1, now=T0 + timedelta(minutes=3, seconds=40))
    alert = DriftAlert.objects.get()
    assert alert.is_open and alert.peak_psi > 0.25
    assert "2 minutes in a row" in alert.reason and alert.baseline.startswith("its own first")
    store(edge, v1, window(3, 51, 49))
    check_version(v1, now=T0 + timedelta(minutes=4, seconds=20))
    alert.refresh_from_db()
    assert not alert.is_open and alert.last_psi < 0.25


def test_a_new_version_is_compared_with_the_version_it_replaces(edge, churn, settings_fast):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    start_rollout(v2, steps=[50, 100], soak_s=3600)
    store(edge, v1, window(0, 50, 50), window(1, 50, 50))
    store(edge, v2, window(0, 50, 50), window(1, 48, 52))
    verdict = check_version(v2, now=T0 + timedelta(minutes=2, seconds=20))
    v2.refresh_from_db()
    assert verdict.latest < 0.01 and "against version 1" in v2.drift_note


def test_a_deployment_that_asks_for_it_rolls_back_on_sustained_drift(edge, churn, settings_fast):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    canary = start_rollout(v2, steps=[50, 100], soak_s=3600, rollback_on_drift=True)
    canary.created_at = T0 - timedelta(minutes=1)
    canary.save(update_fields=["created_at"])
    store(edge, v1, window(0, 50, 50), window(1, 50, 50))
    store(edge, v2, window(0, 90, 10), window(1, 95, 5))
    assert check_all(now=T0 + timedelta(minutes=2, seconds=20)) == 2
    assert judge(canary).value == "roll_back"
    canary.refresh_from_db()
    assert canary.state == "rolled_back"
    reason = canary.events.first().reason
    assert reason.startswith("health gate failed: outputs drift from version 1's: PSI above")


def test_a_deployment_that_does_not_ask_only_alerts(edge, churn, settings_fast):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    canary = start_rollout(v2, steps=[50, 100], soak_s=3600)
    store(edge, v1, window(0, 50, 50), window(1, 50, 50))
    store(edge, v2, window(0, 90, 10), window(1, 95, 5))
    check_all(now=T0 + timedelta(minutes=2, seconds=20))
    assert DriftAlert.objects.open().filter(version=v2).exists()
    assert judge(canary).value == "wait"


def test_the_version_and_deployment_pages_show_the_drift(operator, edge, churn, settings_fast):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    canary = start_rollout(v2, steps=[50, 100], soak_s=3600)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [(now - timedelta(minutes=m)) for m in (4, 3, 2)]
    for node_version, counts in ((v1, (50, 50)), (v2, (90, 10))):
        store(
            edge,
            node_version,
            *[{"minute": m.isoformat(), "rows": 100, "classes": list(counts)} for m in minutes],
        )
    check_all()
    page = operator.get(reverse("registry:version", args=[v2.pk])).content.decode()
    assert 'id="drift"' in page and "data-drift-alert" in page
    assert 'data-drift-level="significant"' in page and "Top class" in page
    page = operator.get(reverse("deployments:detail", args=[canary.pk])).content.decode()
    assert "drift alert open" in page and "raises an alert only" in page


def test_old_windows_are_pruned(edge, churn, settings):
    settings.OUTPOST_DRIFT_RETENTION_H = 1
    v1 = make_version(churn, 1)
    old = datetime.now(UTC) - timedelta(hours=2)
    store(edge, v1, {"minute": old.isoformat(), "rows": 1, "classes": [1]})
    store(edge, v1, {"minute": datetime.now(UTC).isoformat(), "rows": 1, "classes": [1]})
    prune_node_samples_task()
    assert DriftWindow.objects.count() == 1


def test_bad_drift_settings_stop_the_console(settings):
    from fleet.checks import drift_settings_check

    settings.OUTPOST_DRIFT = {"treshold": 0.3}
    [error] = drift_settings_check(None)
    assert "treshold" in error.msg
    settings.OUTPOST_DRIFT = {"threshold": -1}
    assert drift_settings_check(None)


def test_rolling_back_on_drift_needs_a_soak_long_enough_to_judge_it(churn, settings_fast):
    from fleet.rollout_actions import RolloutError

    v1 = make_version(churn, 1)
    with pytest.raises(RolloutError, match="at least 240 s"):
        start_rollout(v1, soak_s=60, rollback_on_drift=True)
    assert start_rollout(v1, soak_s=240, rollback_on_drift=True).rollback_on_drift


def test_an_alert_closes_once_the_version_stops_serving(edge, churn, settings_fast):
    v1 = make_version(churn, 1)
    store(edge, v1, window(0, 50, 50), window(1, 90, 10), window(2, 95, 5))
    check_version(v1, now=T0 + timedelta(minutes=3, seconds=20))
    assert DriftAlert.objects.open().exists()
    check_version(v1, now=T0 + timedelta(minutes=30))  # no window for many minutes
    assert not DriftAlert.objects.open().exists()
