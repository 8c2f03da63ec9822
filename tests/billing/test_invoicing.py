"""Invoices from the usage ledger: drafts, finalisation, gapless numbers, late usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.invoicing import InvoicingError, finalise_invoice, refresh_draft
from billing.models import (
    Invoice,
    InvoiceTransitionError,
    Tenant,
)
from inference import protocol
from tests.billing.usage_rows import AFTER_NOV, DEC, NOV, served


def lines(invoice):
    return [(line.kind, line.amount) for line in invoice.lines.order_by("position")]


def test_a_draft_charges_the_band_overage_and_regional_usage_with_its_quality_credit(
    acme_on_silver,
):
    acme = acme_on_silver
    served(acme, NOV, 3000, received=NOV)
    served(acme, NOV, 1000, received=NOV, served_by="regional", reason="thermal")

    draft = refresh_draft(acme, 2026, 11, now=NOV + timedelta(hours=1))

    assert draft.status == "draft" and draft.number == ""
    assert lines(draft) == [
        ("band_fee", Decimal("49.000")),
        ("overage", Decimal("0.080")),  # 2,000 tiny beyond the 1,000 included, at 0.04
        ("regional_usage", Decimal("0.120")),
        ("quality_credit", Decimal("-0.080")),  # the premium over 0.04, all of it: thermal
        ("tax", Decimal("9.330")),  # 19 % of 49.12
    ]
    assert draft.total == sum(amount for _, amount in lines(draft)) == Decimal("58.450")
    assert (draft.band, draft.p95_target_ms, draft.p95_ms) == ("Silver", 100, 10.0)
    assert draft.inferences == 4000


def test_the_sla_credit_follows_the_measured_p95(acme_on_silver):
    served(acme_on_silver, NOV, 100, received=NOV, fast=False)

    draft = refresh_draft(acme_on_silver, 2026, 11, now=NOV)

    assert draft.p95_ms == 250.0
    assert ("sla_credit", Decimal("-4.900")) in lines(draft)


def test_finalising_numbers_invoices_gaplessly_and_freezes_them(acme_on_silver, db):
    globex = Tenant.objects.create(slug="globex", name="Globex", currency="EUR")
    served(acme_on_silver, NOV, 10, received=NOV)
    first = finalise_invoice(refresh_draft(acme_on_silver, 2026, 11, now=NOV), now=AFTER_NOV)
    second = finalise_invoice(refresh_draft(globex, 2026, 11, now=NOV), now=AFTER_NOV)

    assert (first.number, second.number) == ("2026-000001", "2026-000002")
    assert first.status == "finalised"
    assert [e.kind for e in first.events.all()] == ["created", "finalised"]
    total = first.total
    served(acme_on_silver, NOV, 5000, received=AFTER_NOV + timedelta(hours=1))
    assert refresh_draft(acme_on_silver, 2026, 11, now=DEC).total == total
    assert finalise_invoice(first, now=DEC).number == "2026-000001"


def test_usage_that_arrives_after_its_month_is_invoiced_goes_on_the_next_invoice(
    acme_on_silver,
):
    acme = acme_on_silver
    served(acme, NOV, 1500, received=NOV)
    november = finalise_invoice(refresh_draft(acme, 2026, 11, now=NOV), now=AFTER_NOV)
    served(acme, NOV, 2000, received=AFTER_NOV + timedelta(minutes=5))  # late
    served(acme, DEC, 500, received=DEC)

    december = refresh_draft(acme, 2026, 12, now=DEC + timedelta(hours=1))

    adjustments = [line for line in december.lines.all() if line.kind == "adjustment"]
    assert len(adjustments) == 1
    assert "2026-11" in adjustments[0].description or "November" in adjustments[0].description
    assert adjustments[0].amount == Decimal("0.100")  # 2,000 tiny at the price book's 0.05
    # Each inference is on exactly one invoice.
    assert november.inferences + december.inferences + 2000 == 4000


def test_months_are_finalised_in_order_and_only_once_they_are_over(acme_on_silver):
    october = refresh_draft(acme_on_silver, 2026, 10, now=NOV)
    november = refresh_draft(acme_on_silver, 2026, 11, now=NOV)

    with pytest.raises(InvoicingError, match="is not over yet"):
        finalise_invoice(november, now=NOV)
    with pytest.raises(InvoicingError, match="finalise acme's 2026-10 first"):
        finalise_invoice(november, now=AFTER_NOV)
    finalise_invoice(october, now=AFTER_NOV)
    assert finalise_invoice(november, now=AFTER_NOV).status == "finalised"


def test_a_finalised_invoice_is_settled_never_edited(acme_on_silver):
    invoice = refresh_draft(acme_on_silver, 2026, 11, now=NOV)
    with pytest.raises(InvoiceTransitionError, match="draft; it cannot become paid"):
        invoice.move_to("paid")

    finalise_invoice(invoice, now=AFTER_NOV)
    invoice.move_to("paid", detail={"via": "test"})
    invoice.move_to("paid")  # a repeat changes nothing

    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert [e.kind for e in invoice.events.all()] == ["created", "finalised", "paid"]
    with pytest.raises(InvoiceTransitionError):
        invoice.move_to("void")


def test_usage_of_a_grade_the_price_book_does_not_price_is_a_clear_error(acme, db):
    served(acme, NOV, 10, received=NOV, grade="large")

    with pytest.raises(InvoicingError, match="acme 2026-11"):
        refresh_draft(acme, 2026, 11, now=NOV)


def test_the_histogram_buckets_are_the_protocols():
    assert len(protocol.LATENCY_BOUNDS_S) + 1 == protocol.LATENCY_BUCKETS


def test_the_portal_shows_the_month_so_far_its_forecast_and_credits(client, carol, acme_on_silver):
    from billing.ingest import recompute_hour
    from billing.invoicing import month_of

    acme = acme_on_silver
    now = datetime.now(UTC)
    served(acme, now, 3000, received=now)
    served(acme, now, 1000, received=now, served_by="regional", reason="thermal")
    refresh_draft(acme, *month_of(acme, now), now=now)
    recompute_hour(acme.pk, now.replace(minute=0, second=0, microsecond=0))
    client.force_login(carol)

    page = client.get("/portal/acme/billing/")

    assert page.status_code == 200
    text = page.content.decode()
    assert "58.45 EUR" in text
    assert "-0.08 EUR" in text  # the quality credit
    assert "3000 local · 1000 regional" in text
    assert "thermal: 1000" in text
    assert 'data-testid="forecast"' in text


def test_a_member_sees_only_their_own_tenants_invoices(client, carol, acme_on_silver, db):
    globex = Tenant.objects.create(slug="globex", name="Globex", currency="EUR")
    theirs = finalise_invoice(refresh_draft(globex, 2026, 11, now=NOV), now=AFTER_NOV)
    ours = finalise_invoice(refresh_draft(acme_on_silver, 2026, 11, now=NOV), now=AFTER_NOV)
    client.force_login(carol)

    assert client.get(f"/portal/acme/invoices/{ours.pk}/").status_code == 200
    pdf = client.get(f"/portal/acme/invoices/{ours.pk}/pdf/")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert client.get(f"/portal/acme/invoices/{theirs.pk}/pdf/").status_code == 404
    assert client.get(f"/portal/acme/invoices/{theirs.pk}/").status_code == 404
    assert client.get(f"/portal/globex/invoices/{theirs.pk}/").status_code == 404
    assert ours.number in client.get("/portal/acme/billing/").content.decode()
    assert theirs.number not in client.get("/portal/acme/billing/").content.decode()
