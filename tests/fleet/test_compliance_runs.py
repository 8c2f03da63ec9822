"""Compliance runs: findings keep their history, a run records what it did, the command
prints and gates, beat runs the checks daily and a relevant change makes them run again."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError

from billing.models import ApiKey
from console.celery import app as celery_app
from fleet import compliance
from fleet.compliance_actions import run_checks
from fleet.compliance_context import Thresholds
from fleet.models import ComplianceFinding, ComplianceRun, ExportClassification, ExportRule
from fleet.policies import update_policy
from tests.fleet.compliance_support import NOW, model_version

DAY = timedelta(days=1)
ROTATION = Thresholds(api_key_rotation_days=90)


@pytest.fixture
def old_key(acme):
    key, _ = ApiKey.issue(acme, "legacy export")
    ApiKey.objects.filter(pk=key.pk).update(created_at=NOW - timedelta(days=100))
    key.refresh_from_db()
    return key


def run(at):
    return run_checks(trigger="schedule", now=at, thresholds=ROTATION)


def test_a_finding_is_opened_seen_resolved_and_reopened_as_a_new_row(old_key):
    first = run(NOW)
    [finding] = ComplianceFinding.objects.all()
    assert (finding.check_id, finding.first_seen_at, finding.last_seen_at) == (
        "keys.api_keys",
        NOW,
        NOW,
    )
    assert (first.opened_count, first.open_count, first.resolved_count) == (1, 1, 0)

    second = run(NOW + DAY)
    finding.refresh_from_db()
    assert (finding.first_seen_at, finding.last_seen_at, finding.resolved_at) == (
        NOW,
        NOW + DAY,
        None,
    )
    assert "101 days old" in finding.message  # its words follow what is found
    assert (second.opened_count, second.open_count, second.resolved_count) == (0, 1, 0)

    old_key.revoke()
    third = run(NOW + 2 * DAY)
    finding.refresh_from_db()
    assert finding.resolved_at == NOW + 2 * DAY
    assert finding.last_seen_at == NOW + DAY
    assert (third.opened_count, third.open_count, third.resolved_count) == (0, 0, 1)

    ApiKey.objects.filter(pk=old_key.pk).update(revoked_at=None)  # the key is back in use
    run(NOW + 3 * DAY)
    older, newer = ComplianceFinding.objects.order_by("first_seen_at")
    assert older.pk == finding.pk and older.resolved_at == NOW + 2 * DAY
    assert (newer.subject_key, newer.first_seen_at, newer.resolved_at) == (
        finding.subject_key,
        NOW + 3 * DAY,
        None,
    )
    assert ComplianceRun.objects.count() == 4


def test_a_run_records_its_trigger_times_and_counts(old_key):
    record = run_checks(trigger="command", reason="by hand", now=NOW, thresholds=ROTATION)

    assert (record.trigger, record.reason, record.started_at) == ("command", "by hand", NOW)
    assert record.finished_at is not None
    # Every check but transport.node_tls, which applies only where TLS is required.
    assert record.checks_run == len(compliance.CHECKS) - 1
    assert record.errors == []


def test_a_check_that_fails_leaves_its_findings_as_they_were(old_key, monkeypatch):
    run(NOW)

    def broken(ctx):
        raise RuntimeError("the database said no")

    checks = tuple(
        compliance.Check(c.id, c.title, c.severity, broken) if c.id == "keys.api_keys" else c
        for c in compliance.CHECKS
    )
    monkeypatch.setattr("fleet.compliance_actions.CHECKS", checks)
    monkeypatch.setattr(compliance, "CHECKS", checks)
    monkeypatch.setattr(
        "fleet.compliance_actions.evaluate", lambda ctx: compliance.evaluate(ctx, checks)
    )

    failed = run(NOW + DAY)

    [finding] = ComplianceFinding.objects.all()
    assert (finding.resolved_at, finding.last_seen_at) == (None, NOW)
    assert failed.errors == [
        {"check": "keys.api_keys", "error": "RuntimeError: the database said no"}
    ]
    assert (failed.resolved_count, failed.open_count) == (0, 1)


def test_a_check_that_does_not_apply_leaves_its_findings_as_they_were(eu_west, nano, make_node):
    make_node("fra-1", eu_west, nano)
    production = Thresholds(require_node_tls=True)
    run_checks(trigger="schedule", now=NOW, thresholds=production)
    [finding] = ComplianceFinding.objects.filter(check_id="transport.node_tls")

    # A developer's shell (TLS not required) must not resolve what production found.
    shell = run_checks(trigger="command", now=NOW + DAY, thresholds=Thresholds())
    finding.refresh_from_db()
    assert (finding.resolved_at, finding.last_seen_at) == (None, NOW)
    assert shell.resolved_count == 0

    run_checks(trigger="schedule", now=NOW + 2 * DAY, thresholds=production)
    finding.refresh_from_db()
    assert (finding.resolved_at, finding.last_seen_at) == (None, NOW + 2 * DAY)


def test_findings_are_never_deleted_and_open_once_per_subject(old_key):
    for hour in range(3):
        run(NOW + hour * DAY)

    assert ComplianceFinding.objects.count() == 1
    assert ComplianceFinding.objects.open().count() == 1
    assert ComplianceFinding.objects.resolved().count() == 0


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def findings_of_two_severities(old_key, restricted_deployment):
    """A medium (an old API key) and a critical (a model where its rules forbid it)."""


@pytest.fixture
def restricted_deployment(us_east, nano):
    from tests.fleet.compliance_support import deploy

    classification = ExportClassification.objects.create(code="5D002", name="Encryption")
    ExportRule.objects.create(classification=classification, jurisdiction="US")
    return deploy(model_version("cipher", classification=classification), regions=[us_east])


def test_the_command_runs_the_checks_and_prints_the_open_findings(
    settings, findings_of_two_severities
):
    settings.OUTPOST_API_KEY_ROTATION_DAYS = 30  # the key is 100 days old by NOW, more by now
    out = io.StringIO()

    call_command("compliance", stdout=out)

    text = out.getvalue()
    [record] = ComplianceRun.objects.all()
    assert record.trigger == "command"
    assert text.startswith(f"Compliance run {record.pk}: 11 checks, 2 open findings (2 new")
    assert "transport.node_tls did not run: OUTPOST_REQUIRE_NODE_TLS is off here" in text
    header = next(line for line in text.splitlines() if line.startswith("check"))
    assert header.split() == ["check", "severity", "subject", "what", "fix"]
    # The worst first.
    assert text.index("export.deployments") < text.index("keys.api_keys")
    assert "cipher in us-east" in text
    assert text.rstrip().endswith("1 critical, 1 medium")


def test_the_command_prints_csv_and_json(settings, findings_of_two_severities):
    settings.OUTPOST_API_KEY_ROTATION_DAYS = 30
    out = io.StringIO()
    call_command("compliance", "--format", "csv", stdout=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["check"], r["severity"], r["status"]) for r in rows] == [
        ("export.deployments", "critical", "open"),
        ("keys.api_keys", "medium", "open"),
    ]
    assert rows[1]["tenant"] == "acme"

    out = io.StringIO()
    call_command("compliance", "--format", "json", stdout=out)
    document = json.loads(out.getvalue())
    assert [d["subject_key"] for d in document][0].startswith("model:")
    assert document[0]["details"]["rules"] == ["US"]


def test_fail_on_exits_with_status_one_at_or_above_the_severity(
    settings, findings_of_two_severities, capsys
):
    settings.OUTPOST_API_KEY_ROTATION_DAYS = 30
    with pytest.raises(CommandError) as refused:
        call_command("compliance", "--fail-on", "high", stdout=io.StringIO())
    assert refused.value.returncode == 1
    assert str(refused.value) == "1 open finding at high or worse"

    # From the command line, that is the process's exit status.
    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", "compliance", "--fail-on", "medium"])
    assert exited.value.code == 1
    assert "2 open findings at medium or worse" in capsys.readouterr().err


def test_fail_on_passes_when_nothing_is_that_severe(settings, old_key):
    settings.OUTPOST_API_KEY_ROTATION_DAYS = 30
    out = io.StringIO()
    call_command("compliance", "--fail-on", "high", stdout=out)  # only a medium is open

    assert "keys.api_keys" in out.getvalue()


def test_the_command_says_when_there_is_nothing_to_fix(db):
    out = io.StringIO()
    call_command("compliance", stdout=out)

    assert out.getvalue().splitlines()[-1] == "Nothing to fix."


# --- Celery: daily, and after a relevant change -------------------------------------------------


def test_beat_runs_every_check_daily():
    entry = settings.CELERY_BEAT_SCHEDULE["run-compliance-checks"]

    assert entry["task"] == "fleet.tasks.run_compliance_task"
    assert entry["schedule"] == 24 * 3600
    assert entry["kwargs"] == {"trigger": "schedule"}
    assert entry["task"] in celery_app.tasks


def test_the_task_runs_the_checks(old_key):
    from fleet.tasks import run_compliance_task

    pk = run_compliance_task(trigger="schedule")

    assert ComplianceRun.objects.get(pk=pk).trigger == "schedule"


@pytest.fixture
def fresh_debounce():
    """No run scheduled by an earlier test (the cache outlives a test's transaction)."""
    cache.delete("fleet:compliance-run-pending")
    yield
    cache.delete("fleet:compliance-run-pending")


@pytest.fixture
def enqueued(monkeypatch, fresh_debounce):
    """The compliance runs asked of Celery: (kwargs, countdown) per apply_async."""
    from fleet.tasks import run_compliance_task

    calls = []
    monkeypatch.setattr(
        run_compliance_task,
        "apply_async",
        lambda kwargs=None, countdown=None, **_: calls.append((kwargs, countdown)),
    )
    # The same changes ask for a bundle compile; not the subject here.
    monkeypatch.setattr("fleet.tasks.publish_bundle_task.delay", lambda *a, **k: None)
    return calls


def test_a_committed_policy_change_enqueues_one_run_for_a_burst(
    acme, enqueued, django_capture_on_commit_callbacks, settings
):
    settings.OUTPOST_COMPLIANCE_DEBOUNCE_S = 30
    with django_capture_on_commit_callbacks(execute=True):
        update_policy(acme, {"sensitive_fields": ["email"]}, actor=None, actor_kind="operator")
    with django_capture_on_commit_callbacks(execute=True):
        update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")

    assert enqueued == [
        ({"trigger": "change", "reason": "policy of acme changed"}, 30),
    ]


def test_the_run_is_enqueued_only_once_the_change_commits(
    acme, enqueued, django_capture_on_commit_callbacks, settings
):
    settings.OUTPOST_COMPLIANCE_DEBOUNCE_S = 30
    with django_capture_on_commit_callbacks() as callbacks:
        update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    assert enqueued == []  # the transaction has not committed

    for callback in callbacks:
        callback()
    assert enqueued == [({"trigger": "change", "reason": "policy of acme changed"}, 30)]


def test_a_run_after_a_change_runs_in_celery(
    acme, old_key, django_capture_on_commit_callbacks, settings, fresh_debounce
):
    settings.OUTPOST_COMPLIANCE_DEBOUNCE_S = 30  # eager: the countdown is not waited for
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    finally:
        celery_app.conf.task_always_eager = False

    [record] = ComplianceRun.objects.all()
    assert (record.trigger, record.reason) == ("change", "policy of acme changed")
    assert ComplianceFinding.objects.open().filter(check_id="keys.api_keys").exists()


def test_a_heartbeat_does_not_enqueue_a_run_but_a_new_endpoint_does(
    make_node, eu_west, nano, enqueued, django_capture_on_commit_callbacks, settings
):
    from fleet.models import Node

    settings.OUTPOST_COMPLIANCE_DEBOUNCE_S = 0
    node = make_node("fra-nano-1", eu_west, nano)
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        loaded = Node.objects.get(pk=node.pk)
        loaded.uptime_s = 12
        loaded.save()
    assert enqueued == []

    with django_capture_on_commit_callbacks(execute=True):
        loaded.endpoint = "https://fra-nano-1.example:8001"
        loaded.save()
    assert enqueued == [
        ({"trigger": "change", "reason": "node fra-nano-1 moved or changed its endpoint"}, 0)
    ]


def test_export_rules_classifications_and_api_keys_enqueue_a_run(
    acme, enqueued, django_capture_on_commit_callbacks, settings
):
    settings.OUTPOST_COMPLIANCE_DEBOUNCE_S = 0
    with django_capture_on_commit_callbacks(execute=True):
        classification = ExportClassification.objects.create(code="5D002", name="Encryption")
        ExportRule.objects.create(classification=classification, jurisdiction="US")
    with django_capture_on_commit_callbacks(execute=True):
        version = model_version("cipher")
        version.model.export_classification = classification
        version.model.save()
    with django_capture_on_commit_callbacks(execute=True):
        ApiKey.issue(acme, "new")

    reasons = [kwargs["reason"] for kwargs, _ in enqueued]
    assert reasons == [
        "export rule US changed",
        "export classification of model cipher changed",
        reasons[2],
    ]
    assert reasons[2].startswith("API key opk_") and reasons[2].endswith("created")
