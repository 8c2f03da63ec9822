"""Finance closes a month: drafts with their anomalies, finalised in bulk with progress."""

from __future__ import annotations

import pytest

from billing.closing import run_close, start_close
from billing.invoicing import finalise_invoice, refresh_draft
from billing.models import CloseRun, Invoice, QuarantinedUsage, Tenant, UsageBatch
from tests.billing.usage_rows import AFTER_NOV, NOV, served


@pytest.fixture
def tenants(acme_on_silver, db):
    globex = Tenant.objects.create(slug="globex", name="Globex", currency="EUR")
    return [acme_on_silver, globex]


def test_the_close_page_shows_every_tenants_month_with_its_anomalies(
    client, bob, tenants, django_assert_max_num_queries
):
    acme, globex = tenants
    from datetime import timedelta

    october = NOV - timedelta(days=30)
    served(acme, october, 1000, received=october)
    finalise_invoice(refresh_draft(acme, 2026, 10, now=october), now=NOV)
    served(acme, NOV, 100, received=NOV)  # a tenth of October's
    refresh_draft(acme, 2026, 11, now=NOV)
    batch = UsageBatch.objects.first()
    QuarantinedUsage.objects.create(
        batch=batch, node_uid="nd-1", tenant_slug="acme", minute=NOV, record={}, reason="x"
    )
    client.force_login(bob)

    with django_assert_max_num_queries(12):
        page = client.get("/finance/close/?month=2026-11")

    text = page.content.decode()
    assert page.status_code == 200
    assert "usage dropped to 100 from 1000" in text
    assert "1 quarantined usage record(s)" in text
    assert "no invoice for the month yet" in text  # globex has no draft


def test_a_tenant_member_cannot_close_months(client, carol, tenants):
    client.force_login(carol)

    assert client.get("/finance/close/").status_code in (302, 403)
    assert client.post("/finance/close/run/", {"action": "finalise"}).status_code in (302, 403)
    assert not CloseRun.objects.exists()


def test_finalising_a_month_in_bulk_numbers_every_draft_once(
    client, bob, tenants, django_capture_on_commit_callbacks
):
    for tenant in tenants:
        refresh_draft(tenant, 2026, 11, now=NOV)
    client.force_login(bob)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/finance/close/run/", {"action": "finalise", "month": "2026-11"})

    assert response.status_code == 302 and response["Location"].endswith("?month=2026-11")
    assert len(callbacks) == 1  # the Celery job, after the commit
    run = CloseRun.objects.get()
    assert (run.total, run.done) == (2, 0)

    run = run_close(run.pk, now=AFTER_NOV)
    again = run_close(run.pk, now=AFTER_NOV)

    assert (run.done, run.failed, again.done) == (2, 0, 2)
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == ["2026-000001", "2026-000002"]
    page = client.get("/finance/close/?month=2026-11").content.decode()
    assert "2 of 2 done" in page


def test_a_draft_that_cannot_be_finalised_is_reported_and_the_rest_go_on(tenants):
    acme, globex = tenants
    refresh_draft(acme, 2026, 11, now=NOV)
    refresh_draft(globex, 2026, 10, now=NOV)  # globex's October is still a draft
    refresh_draft(globex, 2026, 11, now=NOV)

    run = run_close(start_close(2026, 11).pk, now=AFTER_NOV)

    assert (run.done, run.failed) == (1, 1)
    assert "finalise globex's 2026-10 first" in run.problems[0]
