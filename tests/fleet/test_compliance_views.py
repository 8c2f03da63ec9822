"""The compliance pages: who may read and run them, the list's filters and its constant query
count, a finding's occurrences, and the CSV export."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import ApiKey, Tenant
from console.celery import app as celery_app
from fleet.compliance_actions import run_checks
from fleet.compliance_context import Thresholds
from fleet.models import ComplianceFinding, ComplianceRun, ExportClassification, ExportRule
from tests.fleet.compliance_support import NOW, deploy, model_version

LIST = "/fleet/compliance/"
EXPORT = "/fleet/compliance/export.csv"
ROTATION = Thresholds(api_key_rotation_days=90)


def old_keys(tenant, count: int, *, days: int = 100) -> list[ApiKey]:
    keys = []
    for i in range(count):
        key, _ = ApiKey.issue(tenant, f"key {i}")
        ApiKey.objects.filter(pk=key.pk).update(created_at=NOW - timedelta(days=days))
        keys.append(key)
    return keys


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex", currency="USD")


@pytest.fixture
def mixed(acme, globex, us_east, eu_west, nano):
    """Two medium findings (old keys of acme and globex), one critical in us-east (a model
    where its rules forbid it), and a resolved one (globex's second key, revoked)."""
    old_keys(acme, 1)
    gone, _ = old_keys(globex, 2)
    classification = ExportClassification.objects.create(code="5D002", name="Encryption")
    ExportRule.objects.create(classification=classification, jurisdiction="US")
    deploy(model_version("cipher", classification=classification), regions=[us_east])
    run_checks(trigger="schedule", now=NOW - timedelta(hours=1), thresholds=ROTATION)
    gone.revoke()
    run_checks(trigger="schedule", now=NOW, thresholds=ROTATION)


def rows(response) -> list[str]:
    """The subjects of the listed findings, in order."""
    return [
        html.unescape(s) for s in re.findall(r'data-subject="([^"]*)"', response.content.decode())
    ]


# --- who may see it ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "bob", "dave"])
def test_operators_finance_and_auditors_read_the_findings(client, request, who, mixed):
    client.force_login(request.getfixturevalue(who))

    page = client.get(LIST)
    exported = client.get(EXPORT)

    assert page.status_code == 200
    assert exported.status_code == 200
    assert b">Compliance</a>" in page.content  # the nav link


def test_a_tenant_member_is_refused(client, carol, mixed):
    client.force_login(carol)

    assert client.get(LIST).status_code == 403
    assert client.get(EXPORT).status_code == 403
    assert client.get(f"{LIST}{ComplianceFinding.objects.first().pk}/").status_code == 403
    assert b">Compliance</a>" not in client.get("/").content


def test_anonymous_visitors_are_sent_to_log_in(client, db):
    assert client.get(LIST)["Location"].startswith("/login/")


def test_only_operators_run_the_checks_now(client, alice, bob, dave, old_key_fixture):
    for reader in (bob, dave):
        client.force_login(reader)
        assert b"Run the checks now" not in client.get(LIST).content
        assert client.post(f"{LIST}run/").status_code == 403
    assert ComplianceRun.objects.count() == 0


@pytest.fixture
def old_key_fixture(acme):
    return old_keys(acme, 1)


def test_an_operator_runs_the_checks_now_in_celery(
    operator, old_key_fixture, django_capture_on_commit_callbacks
):
    celery_app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = operator.post(f"{LIST}run/", follow=True)
    finally:
        celery_app.conf.task_always_eager = False

    [record] = ComplianceRun.objects.all()
    assert (record.trigger, record.reason) == ("manual", "run by alice")
    assert b"The checks are running" in response.content
    assert b"keys.api_keys" in response.content


# --- the list ----------------------------------------------------------------------------------


def test_open_findings_come_first_and_the_worst_first(operator, mixed):
    page = operator.get(LIST)

    subjects = rows(page)
    assert subjects[0] == "cipher in us-east"
    assert subjects[-1].startswith("globex key")  # resolved: last
    assert len(subjects) == 4
    text = page.content.decode()
    assert "3 open" in text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("check=export.deployments", ["cipher in us-east"]),
        ("severity=medium&status=open", ["globex key", "acme key"]),
        ("status=resolved", ["globex key"]),
        ("tenant=globex", ["globex key", "globex key"]),
        ("region=us-east", ["cipher in us-east"]),
        ("q=Encryption", ["cipher in us-east"]),
        ("q=key+1", ["globex key"]),
    ],
)
def test_the_filters(operator, mixed, query, expected):
    subjects = rows(operator.get(f"{LIST}?{query}"))

    assert [s[: len(e)] for s, e in zip(subjects, expected, strict=False)] == expected
    assert len(subjects) == len(expected)


def test_the_list_costs_the_same_queries_for_one_finding_or_many(
    operator, acme, django_assert_num_queries
):
    old_keys(acme, 1)
    run_checks(trigger="schedule", now=NOW, thresholds=ROTATION)
    with CaptureQueriesContext(connection) as one:
        assert operator.get(LIST).status_code == 200

    old_keys(acme, 30)
    run_checks(trigger="schedule", now=NOW + timedelta(hours=1), thresholds=ROTATION)
    assert ComplianceFinding.objects.count() == 31
    with django_assert_num_queries(len(one)):
        page = operator.get(LIST)
    assert len(rows(page)) == 31


def test_a_finding_shows_every_occurrence_of_its_violation(operator, acme):
    [key] = old_keys(acme, 1)
    run_checks(trigger="schedule", now=NOW, thresholds=ROTATION)
    key.revoke()
    run_checks(trigger="schedule", now=NOW + timedelta(hours=1), thresholds=ROTATION)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=None)
    run_checks(trigger="schedule", now=NOW + timedelta(hours=2), thresholds=ROTATION)
    first, again = ComplianceFinding.objects.order_by("first_seen_at")

    page = operator.get(f"{LIST}{first.pk}/").content.decode()

    assert f'data-occurrence="{first.pk}"' in page and f'data-occurrence="{again.pk}"' in page
    assert "In acme&#x27;s portal (API keys), create a new key" in page
    assert operator.get(f"{LIST}999999/").status_code == 404


# --- the export --------------------------------------------------------------------------------


def test_the_export_is_the_filtered_findings_as_csv(client, bob, mixed):
    client.force_login(bob)

    response = client.get(f"{EXPORT}?tenant=globex")

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="compliance-findings-')
    assert response.streaming
    exported = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["check"], r["status"], r["tenant"]) for r in exported] == [
        ("keys.api_keys", "open", "globex"),
        ("keys.api_keys", "resolved", "globex"),
    ]
    resolved = exported[1]
    assert resolved["resolved_at"] == NOW.isoformat().replace("+00:00", "Z")
    assert resolved["first_seen_at"] == (NOW - timedelta(hours=1)).isoformat().replace(
        "+00:00", "Z"
    )
    assert resolved["what"].startswith("globex's API key opk_")
    assert list(exported[0]) == [
        "check",
        "severity",
        "status",
        "tenant",
        "region",
        "subject",
        "what",
        "fix",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
    ]


def test_the_export_defuses_text_that_would_start_a_formula(client, dave, acme):
    key, _ = ApiKey.issue(acme, "x")
    ApiKey.objects.filter(pk=key.pk).update(created_at=NOW - timedelta(days=100))
    run_checks(trigger="schedule", now=NOW, thresholds=ROTATION)
    ComplianceFinding.objects.update(subject="=HYPERLINK(1)")  # as if a name started so
    client.force_login(dave)

    body = b"".join(client.get(EXPORT).streaming_content).decode()

    assert "'=HYPERLINK(1)" in body
