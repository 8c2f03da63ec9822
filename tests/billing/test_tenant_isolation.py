"""Tenant A never sees tenant B's usage, invoices or keys, through any page or endpoint."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.ingest import recompute_hour
from billing.invoicing import finalise_invoice, month_of, refresh_draft
from billing.models import ApiKey, Membership, Tenant
from tests.billing.usage_rows import AFTER_NOV, NOV, served


@pytest.fixture
def two_tenants(acme_on_silver, django_user_model):
    globex = Tenant.objects.create(slug="globex", name="Globex Logistics", currency="EUR")
    dave = django_user_model.objects.create_user("dave", "dave@globex.example", "pw")
    Membership.objects.create(user=dave, tenant=globex, role="owner")
    now = datetime.now(UTC)
    for tenant, model, count in (
        (acme_on_silver, "acme-model", 111),
        (globex, "globex-model", 222),
    ):
        for at in (NOV, now):
            record = served(tenant, at, count, received=at)
            record.model = model
            record.save(update_fields=["model"])
            recompute_hour(tenant.pk, at.replace(minute=0, second=0, microsecond=0))
        finalise_invoice(refresh_draft(tenant, 2026, 11, now=NOV), now=AFTER_NOV)
        refresh_draft(tenant, *month_of(tenant, now), now=now)
    acme_key = ApiKey.issue(acme_on_silver, "ci")[1]
    globex_key = ApiKey.issue(globex, "ci")[1]
    return acme_on_silver, globex, acme_key, globex_key


def test_the_api_answers_each_key_with_its_own_tenants_usage_and_invoices(client, two_tenants):
    acme, globex, acme_key, _ = two_tenants
    auth = {"Authorization": f"Bearer {acme_key}"}

    usage = client.get("/api/v1/usage", headers=auth).json()
    november = client.get("/api/v1/usage?month=2026-11", headers=auth).json()
    invoices = client.get("/api/v1/invoices", headers=auth).json()
    theirs = globex.invoices.exclude(number="").get().number

    assert usage["tenant"] == "acme" and {r["model"] for r in usage["rows"]} == {"acme-model"}
    assert november["inferences"] == 111
    assert [i["period"] for i in invoices] == ["2026-11"]
    assert client.get(f"/api/v1/invoices/{invoices[0]['number']}", headers=auth).status_code == 200
    assert client.get(f"/api/v1/invoices/{theirs}", headers=auth).status_code == 404
    assert "globex" not in str(usage) + str(november) + str(invoices)


def test_a_bad_month_is_a_clear_error(client, two_tenants):
    _, _, acme_key, _ = two_tenants

    response = client.get(
        "/api/v1/usage?month=2026-13", headers={"Authorization": f"Bearer {acme_key}"}
    )

    assert response.status_code == 400
    assert "month must be YYYY-MM" in response.json()["error"]


def test_without_a_key_nothing_is_answered(client, two_tenants):
    for url in ("/api/v1/usage", "/api/v1/invoices"):
        assert client.get(url).status_code == 401


def test_the_portal_shows_a_member_only_their_tenant(client, carol, two_tenants):
    acme, globex, _, _ = two_tenants
    client.force_login(carol)
    theirs = globex.invoices.exclude(number="").get()

    pages = [client.get(f"/portal/acme/{path}") for path in ("", "billing/", "keys/")]

    assert all(page.status_code == 200 for page in pages)
    text = "".join(page.content.decode() for page in pages)
    assert "acme-model" in text and "globex-model" not in text
    assert "Globex" not in text
    for path in ("", "billing/", "keys/", f"invoices/{theirs.pk}/", f"invoices/{theirs.pk}/pdf/"):
        assert client.get(f"/portal/globex/{path}").status_code == 404
    assert client.get(f"/portal/acme/invoices/{theirs.pk}/").status_code == 404
    assert client.get(f"/portal/acme/invoices/{theirs.pk}/pdf/").status_code == 404
