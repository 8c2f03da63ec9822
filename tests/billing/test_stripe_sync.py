"""Invoices to Stripe and payments back, with the real stripe library against our fake Stripe."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.invoicing import finalise_invoice, refresh_draft
from billing.models import Invoice, InvoiceLine, StripeEvent, Tenant
from billing.stripe_gateway import StripeGateway
from billing.stripe_sync import sync_invoice
from tests.fakestripe import FakeStripe

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC)
AFTER_NOV = datetime(2026, 12, 1, 9, tzinfo=UTC)


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def stripe_on(settings, fake):
    settings.STRIPE_API_KEY = fake.api_key
    settings.STRIPE_API_BASE = fake.url
    settings.STRIPE_WEBHOOK_SECRET = fake.webhook_secret
    return fake


@pytest.fixture
def quick(fake):
    """A gateway that does not sleep between its retries."""
    return StripeGateway(fake.api_key, api_base=fake.url, sleep=lambda s: None)


@pytest.fixture
def invoice(acme):
    """acme's November, finalised with a fee, a usage line, a credit and tax (EUR). (The
    task finalising enqueues runs after commit, which a test's transaction never does.)"""
    draft = refresh_draft(acme, 2026, 11, now=NOV)
    lines = [
        ("Silver latency band", Decimal("49.00")),
        ("Regional usage, tiny", Decimal("0.12")),
        ("Quality credit, tiny", Decimal("-0.08")),
        ("VAT 19 %", Decimal("9.33")),
    ]
    for position, (description, amount) in enumerate(lines, start=1):
        InvoiceLine.objects.create(
            invoice=draft, position=position, kind="band_fee", description=description,
            quantity=1, amount=amount,
        )  # fmt: skip
    finalised = finalise_invoice(draft, now=AFTER_NOV)
    # finalise_invoice re-rated the month (no usage, no band): put the lines back as they were
    # for this test of the push, which is about what reaches Stripe.
    finalised.lines.all().delete()
    for position, (description, amount) in enumerate(lines, start=1):
        InvoiceLine.objects.create(
            invoice=finalised, position=position, kind="band_fee", description=description,
            quantity=1, amount=amount,
        )  # fmt: skip
    Invoice.objects.filter(pk=finalised.pk).update(total=Decimal("58.37"))
    return Invoice.objects.get(pk=finalised.pk)


def post_event(client, fake, event, *, timestamp=None, secret=None):
    payload = fake.payload(event)
    return client.post(
        "/billing/stripe/webhook",
        payload,
        content_type="application/json",
        headers={"Stripe-Signature": fake.sign(payload, timestamp, secret=secret)},
    )


def test_a_finalised_invoice_reaches_stripe_once_with_its_lines_in_minor_units(
    stripe_on, quick, invoice
):
    synced = sync_invoice(invoice.pk, client=quick)
    again = sync_invoice(invoice.pk, client=quick)

    assert synced.stripe_invoice_id and synced.stripe_status == "open"
    assert again.stripe_invoice_id == synced.stripe_invoice_id
    assert len(stripe_on.invoices) == 1
    remote = stripe_on.invoice(synced.stripe_invoice_id)
    assert remote["total"] == 5837 and remote["currency"] == "eur"
    assert sorted(item["amount"] for item in stripe_on.invoice_items) == [-8, 12, 933, 4900]
    assert Tenant.objects.get(slug="acme").stripe_customer_id == remote["customer"]
    assert [e.kind for e in synced.events.all()][-1] == "stripe_synced"


def test_stripe_failing_for_a_while_is_retried_and_creates_nothing_twice(stripe_on, quick, invoice):
    stripe_on.fail_next(3, 500)

    synced = sync_invoice(invoice.pk, client=quick)

    assert synced.stripe_invoice_id
    assert len(stripe_on.invoices) == 1 and len(stripe_on.invoice_items) == 4


def test_without_a_stripe_key_invoices_stay_local_and_say_so(client, carol, invoice):
    assert sync_invoice(invoice.pk).stripe_invoice_id == ""

    client.force_login(carol)
    page = client.get(f"/portal/acme/invoices/{invoice.pk}/").content.decode()
    assert "Not synced to a payment provider: kept locally." in page


def test_a_payment_webhook_marks_the_invoice_paid_once(client, stripe_on, quick, invoice):
    stripe_id = sync_invoice(invoice.pk, client=quick).stripe_invoice_id
    stripe_on.pay_invoice(stripe_id)
    (paid_event,) = stripe_on.events_of("invoice.paid")

    first = post_event(client, stripe_on, paid_event)
    replay = post_event(client, stripe_on, paid_event)

    assert first.status_code == 200 and first.json()["outcome"] == f"invoice {invoice.number} paid"
    assert replay.status_code == 200 and replay.json()["outcome"].startswith("duplicate")
    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_status) == ("paid", "paid")
    assert [e.kind for e in invoice.events.all()].count("paid") == 1
    assert StripeEvent.objects.filter(event_id=paid_event["id"]).count() == 1


def test_events_out_of_order_follow_stripes_current_state(client, stripe_on, quick, invoice):
    stripe_id = sync_invoice(invoice.pk, client=quick).stripe_invoice_id
    stripe_on.fail_payment(stripe_id)
    stripe_on.pay_invoice(stripe_id)
    (failed,) = stripe_on.events_of("invoice.payment_failed")
    (paid,) = stripe_on.events_of("invoice.paid")

    post_event(client, stripe_on, paid)
    late = post_event(client, stripe_on, failed)  # the older event arrives last

    assert late.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == "paid"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"secret": "whsec_not_ours"}, "bad signature"),
        ({"timestamp": time.time() - 301}, "stale signature"),
    ],
)
def test_forged_and_stale_webhooks_are_refused_and_change_nothing(
    client, stripe_on, quick, invoice, tamper, reason
):
    stripe_id = sync_invoice(invoice.pk, client=quick).stripe_invoice_id
    stripe_on.pay_invoice(stripe_id)
    (paid,) = stripe_on.events_of("invoice.paid")

    response = post_event(client, stripe_on, paid, **tamper)

    assert response.status_code == 400
    assert reason in response.json()["error"]
    invoice.refresh_from_db()
    assert invoice.status == "finalised"
    assert not StripeEvent.objects.exists()


def test_a_webhook_without_a_signature_is_refused(client, stripe_on):
    response = client.post("/billing/stripe/webhook", b"{}", content_type="application/json")

    assert response.status_code == 400
    assert "missing Stripe-Signature" in response.json()["error"]


def test_finalising_enqueues_the_push_only_after_the_commit_and_only_with_stripe(
    acme, stripe_on, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        finalise_invoice(refresh_draft(acme, 2026, 11, now=NOV), now=AFTER_NOV)
    assert len(callbacks) == 1

    settings.STRIPE_API_KEY = None
    with django_capture_on_commit_callbacks() as callbacks:
        finalise_invoice(
            refresh_draft(acme, 2026, 12, now=AFTER_NOV), now=datetime(2027, 1, 2, tzinfo=UTC)
        )
    assert callbacks == []
