"""Finance's exports and margin report, and a tenant's own exports, through the pages."""

from __future__ import annotations

import pytest

from billing.invoicing import finalise_invoice, refresh_draft
from billing.models import Tenant
from tests.billing.usage_rows import AFTER_NOV, NOV, served


@pytest.fixture
def november(acme_on_silver, db):
    globex = Tenant.objects.create(slug="globex", name="Globex", currency="EUR")
    for tenant in (acme_on_silver, globex):
        served(tenant, NOV, 5000, received=NOV)
        finalise_invoice(refresh_draft(tenant, 2026, 11, now=NOV), now=AFTER_NOV)
    return acme_on_silver, globex


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_finance_downloads_every_tenants_invoices_as_csv(client, bob, november):
    client.force_login(bob)

    response = client.get("/finance/exports/?kind=invoices&from=2026-11&format=csv")

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="outpost-invoices-2026-11.csv"'
    text = body(response)
    assert "2026-000001" in text and "2026-000002" in text
    assert "acme" in text and "globex" in text


def test_finance_downloads_lines_as_xlsx(client, bob, november):
    client.force_login(bob)

    response = client.get("/finance/exports/?kind=invoice-lines&from=2026-11&format=xlsx")

    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:2] == b"PK"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("kind=nothing&from=2026-11", "kind must be one of"),
        ("kind=usage&from=2026-13", "2026-13"),
        ("kind=usage&from=2026-11&format=pdf", "pdf"),
        ("kind=usage&from=2026-11&tenant=nobody", "no tenant 'nobody'"),
    ],
)
def test_a_bad_export_request_says_what_is_wrong(client, bob, november, query, message):
    client.force_login(bob)

    response = client.get(f"/finance/exports/?{query}")

    assert response.status_code == 400
    assert message in response.content.decode()


def test_a_tenant_exports_only_its_own_rows_and_not_finances(client, carol, november):
    client.force_login(carol)

    mine = body(client.get("/portal/acme/export/?kind=invoices&from=2026-11"))
    sneaky = client.get("/portal/acme/export/?kind=invoices&from=2026-11&tenant=globex")

    assert "acme" in mine and "globex" not in mine
    assert "globex" not in body(sneaky) if sneaky.status_code == 200 else sneaky.status_code == 400
    assert client.get("/finance/exports/?kind=invoices&from=2026-11").status_code in (302, 403)
    assert client.get("/portal/globex/export/?kind=invoices&from=2026-11").status_code == 404


def test_finance_sees_the_months_margin_by_node_class(client, bob, november):
    client.force_login(bob)

    page = client.get("/finance/margins/?month=2026-11")

    assert page.status_code == 200
    assert "EUR · 2 invoices" in page.content.decode()
