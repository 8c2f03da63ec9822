"""billing/stripe_gateway.py against the fake Stripe, through the real `stripe` library. No
database: the gateway takes and returns plain data. Backoff sleeps are recorded, not slept."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import stripe
from stripe import _http_client

from billing.stripe_gateway import (
    CustomerData,
    InvoiceData,
    InvoiceLine,
    NotWholeMinorUnits,
    StripeGateway,
    StripeRejected,
    StripeUnavailable,
    WebhookRejected,
    from_minor_units,
    parse_webhook,
    to_minor_units,
)
from tests.fakestripe import DROP, FakeStripe

ACME = CustomerData(slug="acme", name="Acme Analytics", email="billing@acme.example")


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def sleeps():
    return []


def gateway_for(fake, sleeps, **options):
    options = {"network_retries": 0, "max_retries": 4, **options}
    return StripeGateway(
        fake.api_key, api_base=fake.url, sleep=sleeps.append, rand=lambda: 1.0, **options
    )


@pytest.fixture
def gateway(fake, sleeps):
    return gateway_for(fake, sleeps)


@pytest.fixture
def acme_id(gateway):
    return gateway.ensure_customer(ACME)


def invoice_for(customer_id, currency="EUR", amounts=("120.00", "3.45", "-1.50"), number=None):
    return InvoiceData(
        number=number or f"ACME-2025-01-{currency}",
        customer_id=customer_id,
        currency=currency,
        lines=tuple(
            InvoiceLine(description=f"line {i}", amount=Decimal(a)) for i, a in enumerate(amounts)
        ),
        days_until_due=14,
        tenant_slug="acme",
    )


def items_of(fake, stripe_invoice_id):
    return [i for i in fake.invoice_items if i["invoice"] == stripe_invoice_id]


# --- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.34", "EUR", 1234),
        ("-1.5", "EUR", -150),
        ("1234", "JPY", 1234),
        ("1.234", "KWD", 1234),
        ("0.005", "KWD", 5),
        ("5", "ISK", 500),  # whole krónur, but two decimals in Stripe's API
        ("1E+3", "JPY", 1000),
    ],
)
def test_it_converts_amounts_to_minor_units_exactly(amount, currency, minor):
    assert to_minor_units(Decimal(amount), currency) == minor
    assert from_minor_units(minor, currency) == Decimal(amount)


@pytest.mark.parametrize(
    ("amount", "currency"), [("0.005", "EUR"), ("1.5", "JPY"), ("0.0005", "KWD"), ("NaN", "EUR")]
)
def test_it_refuses_an_amount_that_is_not_a_whole_minor_unit(amount, currency):
    with pytest.raises(NotWholeMinorUnits):
        to_minor_units(Decimal(amount), currency)


def test_it_refuses_a_float_amount():
    with pytest.raises(TypeError, match="Decimal"):
        to_minor_units(0.1, "EUR")  # type: ignore[arg-type]


# --- customers --------------------------------------------------------------------------------


def test_it_creates_a_customer_once_under_retries(fake, gateway, sleeps):
    fake.fail_next(2, 500, on="POST /v1/customers")  # an outage: the request never ran
    fake.fail_next(1, DROP, when="after", on="POST /v1/customers")  # it ran; the answer is lost

    customer_id = gateway.ensure_customer(ACME)

    [customer] = fake.customers
    assert customer["id"] == customer_id
    assert (customer["name"], customer["email"]) == ("Acme Analytics", "billing@acme.example")
    assert customer["metadata"] == {"outpost_tenant": "acme"}
    posts = fake.requests_to("POST", "/v1/customers")
    assert [r.idempotency_key for r in posts] == ["outpost-customer-acme"] * 4
    assert posts[-1].replayed and len(sleeps) == 3


def test_it_finds_the_tenants_customer_instead_of_creating_another(fake, gateway):
    first = gateway.ensure_customer(ACME)
    fake.expire_idempotency_keys()  # days later: only search can tell

    assert gateway.ensure_customer(ACME) == first
    assert len(fake.customers) == 1


def test_it_creates_one_customer_when_search_has_not_caught_up(fake, gateway):
    fake.index_searches = False

    assert gateway.ensure_customer(ACME) == gateway.ensure_customer(ACME)
    assert len(fake.customers) == 1


# --- pushing invoices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "amounts", "minor"),
    [
        ("EUR", ("120.00", "3.45", "-1.50"), [12000, 345, -150]),
        ("JPY", ("18000", "517", "-225"), [18000, 517, -225]),
        ("KWD", ("36.125", "1.005", "-0.450"), [36125, 1005, -450]),
    ],
)
def test_it_pushes_each_line_in_the_minor_units_of_its_currency(
    fake, gateway, acme_id, currency, amounts, minor
):
    synced = gateway.push_invoice(invoice_for(acme_id, currency, amounts))

    items = items_of(fake, synced.stripe_invoice_id)
    assert [i["amount"] for i in items] == minor
    assert {i["currency"] for i in items} == {currency.lower()}
    assert [i["description"] for i in items] == ["line 0", "line 1", "line 2"]
    assert synced.currency == currency
    assert synced.total == sum(Decimal(a) for a in amounts)
    assert fake.invoice(synced.stripe_invoice_id)["total"] == sum(minor)


def test_it_sends_a_finalised_invoice_for_payment_by_email_under_our_number(fake, gateway, acme_id):
    synced = gateway.push_invoice(invoice_for(acme_id))

    stored = fake.invoice(synced.stripe_invoice_id)
    assert stored["collection_method"] == "send_invoice"
    assert stored["auto_advance"] is False
    assert stored["metadata"] == {
        "outpost_invoice_number": "ACME-2025-01-EUR",
        "outpost_tenant": "acme",
    }
    assert stored["due_date"] == stored["status_transitions"]["finalized_at"] + 14 * 86400
    assert synced.status == "open" and synced.number == stored["number"]
    assert synced.hosted_invoice_url == stored["hosted_invoice_url"]
    assert synced.outpost_invoice_number == "ACME-2025-01-EUR"
    assert synced.amount_due == Decimal("121.95") and synced.amount_paid == Decimal("0.00")


def test_every_write_carries_a_key_derived_from_the_invoice_number(fake, gateway, acme_id):
    gateway.push_invoice(invoice_for(acme_id, number="ACME-7"))

    keys = [r.idempotency_key for r in fake.requests if r.method == "POST"]
    assert keys[1:] == [
        "outpost-inv-ACME-7-create",
        "outpost-inv-ACME-7-item-0",
        "outpost-inv-ACME-7-item-1",
        "outpost-inv-ACME-7-item-2",
        "outpost-inv-ACME-7-finalize",
    ]


def test_the_key_prefix_keeps_two_deployments_apart(fake, sleeps):
    staging = gateway_for(fake, sleeps, idempotency_prefix="outpost-staging")
    staging.ensure_customer(ACME)

    assert fake.requests_to("POST", "/v1/customers")[0].idempotency_key == (
        "outpost-staging-customer-acme"
    )


def test_it_refuses_an_amount_that_is_not_whole_before_sending_anything(fake, gateway):
    with pytest.raises(NotWholeMinorUnits):
        gateway.push_invoice(invoice_for("cus_x", "JPY", ("100", "0.5")))

    assert fake.requests == []


CRASHES = {
    "the invoice was created but its answer lost": dict(
        status=DROP, when="after", on="POST /v1/invoices"
    ),
    "the second item never ran": dict(status=500, on="POST /v1/invoiceitems", skip=1),
    "the second item ran but its answer was lost": dict(
        status=DROP, when="after", on="POST /v1/invoiceitems", skip=1
    ),
    "the finalisation ran but its answer was lost": dict(
        status=503, when="after", on="POST /v1/invoices/"
    ),
}


@pytest.mark.parametrize("crash", CRASHES.values(), ids=CRASHES.keys())
@pytest.mark.parametrize("search_lags", [False, True], ids=["search-current", "search-lagging"])
def test_it_creates_one_invoice_when_pushed_twice_after_a_crash(
    fake, sleeps, acme_id, crash, search_lags
):
    fragile = gateway_for(fake, sleeps, max_retries=0)  # the first failure ends the attempt
    invoice = invoice_for(acme_id)
    fake.fail_next(1, **crash)
    with pytest.raises(StripeUnavailable):
        fragile.push_invoice(invoice)
    fake.index_searches = not search_lags

    synced = fragile.push_invoice(invoice)

    [stored] = fake.invoices
    assert stored["id"] == synced.stripe_invoice_id and stored["status"] == "open"
    items = items_of(fake, stored["id"])
    assert [i["metadata"]["outpost_line_index"] for i in items] == ["0", "1", "2"]
    assert len(fake.invoice_items) == 3
    assert synced.total == Decimal("121.95")


def test_it_creates_nothing_twice_when_rerun_after_its_keys_expired(fake, sleeps, acme_id):
    fragile = gateway_for(fake, sleeps, max_retries=0)
    invoice = invoice_for(acme_id)
    fake.fail_next(1, 500, on="POST /v1/invoiceitems", skip=2)
    with pytest.raises(StripeUnavailable):
        fragile.push_invoice(invoice)
    fake.expire_idempotency_keys()

    synced = fragile.push_invoice(invoice)

    assert len(fake.invoices) == 1 and len(fake.invoice_items) == 3
    assert synced.status == "open"


def test_pushing_a_finalised_invoice_again_writes_nothing(fake, gateway, acme_id):
    first = gateway.push_invoice(invoice_for(acme_id))
    writes = len([r for r in fake.requests if r.method == "POST"])

    again = gateway.push_invoice(invoice_for(acme_id))

    assert again == first
    assert len([r for r in fake.requests if r.method == "POST"]) == writes


@pytest.mark.parametrize("search_lags", [False, True], ids=["search-current", "search-lagging"])
def test_it_refuses_to_push_again_an_invoice_whose_lines_changed(
    fake, gateway, acme_id, search_lags
):
    gateway.push_invoice(invoice_for(acme_id, amounts=("10.00",)))
    fake.index_searches = not search_lags

    with pytest.raises(StripeRejected, match="Stripe's totals 10.00 EUR, ours 11.00 EUR"):
        gateway.push_invoice(invoice_for(acme_id, amounts=("11.00",)))


def test_it_does_not_finalise_a_draft_someone_changed_in_stripe(fake, sleeps, acme_id):
    fragile = gateway_for(fake, sleeps, max_retries=0)
    invoice = invoice_for(acme_id)
    fake.fail_next(1, 500, on="POST /v1/invoices/")  # the finalisation
    with pytest.raises(StripeUnavailable):
        fragile.push_invoice(invoice)
    [draft] = fake.invoices
    someone = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
    someone.v1.invoice_items.create(
        params={"customer": acme_id, "invoice": draft["id"], "amount": 999, "currency": "eur"}
    )

    with pytest.raises(StripeRejected, match="not finalising the draft"):
        fragile.push_invoice(invoice)
    assert fake.invoice(draft["id"])["status"] == "draft"


# --- retries and refusals ---------------------------------------------------------------------


def test_it_retries_a_429_and_a_500_and_succeeds(fake, gateway, sleeps, acme_id):
    fake.fail_next(1, 429, on="POST /v1/invoices")
    fake.fail_next(1, 500, on="POST /v1/invoiceitems")

    synced = gateway.push_invoice(invoice_for(acme_id))

    assert synced.status == "open"
    assert sleeps == [0.5, 0.5]  # one retry each, after the first backoff step
    assert len(fake.invoices) == 1 and len(fake.invoice_items) == 3


def test_the_libraries_own_retries_are_configured(fake, sleeps, monkeypatch):
    # The library sleeps at least HTTPClient.INITIAL_DELAY (0.5 s) before each of its retries.
    monkeypatch.setattr(_http_client.HTTPClient, "INITIAL_DELAY", 0.001)
    monkeypatch.setattr(_http_client.HTTPClient, "MAX_DELAY", 0.001)
    gateway = gateway_for(fake, sleeps, network_retries=2, max_retries=0)
    fake.fail_next(2, 500)

    gateway.ensure_customer(ACME)

    assert sleeps == [] and len(fake.customers) == 1


def test_backoff_doubles_and_is_capped():
    gateway = StripeGateway("sk_test_x", backoff_base_s=0.5, backoff_cap_s=8, rand=lambda: 1.0)

    assert [gateway.backoff_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    half = StripeGateway("sk_test_x", backoff_base_s=0.5, backoff_cap_s=8, rand=lambda: 0.0)
    assert half.backoff_delay(4) == 2  # equal jitter: never less than half the step


def test_it_gives_up_with_stripe_unavailable_after_its_retries(fake, sleeps):
    gateway = gateway_for(fake, sleeps, max_retries=2)
    fake.fail_next(10, 503)

    with pytest.raises(StripeUnavailable, match="3 attempts"):
        gateway.ensure_customer(ACME)
    assert len(fake.requests) == 3 and sleeps == [0.5, 1.0]


def test_it_stops_retrying_when_stripe_says_a_retry_would_not_help(fake, sleeps):
    gateway = gateway_for(fake, sleeps)
    fake.fail_next(1, 500, should_retry=False)

    with pytest.raises(StripeUnavailable):
        gateway.ensure_customer(ACME)
    assert len(fake.requests) == 1 and sleeps == []


def test_it_reports_stripe_unreachable_as_unavailable(sleeps):
    stopped = FakeStripe()
    stopped.stop()
    gateway = StripeGateway(
        stopped.api_key, api_base=stopped.url, max_retries=1, network_retries=0, sleep=sleeps.append
    )

    with pytest.raises(StripeUnavailable, match="look up the customer of tenant acme"):
        gateway.ensure_customer(ACME)
    assert len(sleeps) == 1


def test_a_400_raises_stripe_rejected_with_stripes_message(fake, gateway):
    fake.index_searches = False  # the tenant is renamed before search has seen its customer
    gateway.ensure_customer(ACME)

    with pytest.raises(StripeRejected) as rejected:
        gateway.ensure_customer(CustomerData(slug="acme", name="Acme Analytics GmbH"))

    error = rejected.value
    assert error.status == 400
    assert str(error).startswith("Stripe refused to create the customer of tenant acme: Keys")
    assert "same parameters they were first used with" in error.stripe_message
    assert error.request_id.startswith("req_")
    assert len(fake.customers) == 1


def test_an_unknown_customer_is_rejected_with_what_stripe_said(fake, gateway):
    with pytest.raises(StripeRejected) as rejected:
        gateway.push_invoice(invoice_for("cus_missing"))

    assert rejected.value.status == 404
    assert (rejected.value.code, rejected.value.param) == ("resource_missing", "customer")
    assert "No such customer: 'cus_missing'" in str(rejected.value)
    assert fake.invoices == []


def test_a_wrong_api_key_is_rejected_not_retried(fake, sleeps):
    gateway = StripeGateway("sk_test_wrong", api_base=fake.url, sleep=sleeps.append)

    with pytest.raises(StripeRejected, match="Invalid API Key provided"):
        gateway.ensure_customer(ACME)
    assert sleeps == []


# --- after the push ---------------------------------------------------------------------------


def test_fetch_invoice_shows_it_paid_after_the_customer_paid(fake, gateway, acme_id):
    synced = gateway.push_invoice(invoice_for(acme_id, "JPY", ("18000", "517")))
    fake.pay_invoice(synced.stripe_invoice_id)

    fetched = gateway.fetch_invoice(synced.stripe_invoice_id)

    assert fetched.status == "paid"
    assert fetched.amount_paid == fetched.total == Decimal("18517")
    assert fetched.paid_at is not None and fetched.paid_at.tzinfo is not None


def test_a_late_event_is_answered_with_the_invoices_current_state(fake, gateway, acme_id):
    synced = gateway.push_invoice(invoice_for(acme_id))
    fake.pay_invoice(synced.stripe_invoice_id)
    [finalized] = fake.events_of("invoice.finalized")  # arrives after invoice.paid
    payload = fake.payload(finalized)

    event = parse_webhook(payload, fake.sign(payload), fake.webhook_secret)

    assert event.object["status"] == "open"
    assert gateway.fetch_invoice(event.object_id).status == "paid"


# --- webhooks ---------------------------------------------------------------------------------


@pytest.fixture
def paid_event(fake, gateway, acme_id):
    synced = gateway.push_invoice(invoice_for(acme_id))
    fake.pay_invoice(synced.stripe_invoice_id)
    return fake.events_of("invoice.paid")[0]


def test_a_validly_signed_webhook_is_accepted(fake, paid_event):
    payload = fake.payload(paid_event)

    event = parse_webhook(payload, fake.sign(payload), fake.webhook_secret)

    assert (event.id, event.type) == (paid_event["id"], "invoice.paid")
    assert (event.object_type, event.object_id) == ("invoice", paid_event["data"]["object"]["id"])
    assert event.object["metadata"]["outpost_invoice_number"] == "ACME-2025-01-EUR"
    assert event.livemode is False and event.created.tzinfo is not None


def test_a_webhook_signed_with_another_secret_is_rejected(fake, paid_event):
    payload = fake.payload(paid_event)

    with pytest.raises(WebhookRejected, match="bad signature"):
        parse_webhook(payload, fake.sign(payload, secret="whsec_forged"), fake.webhook_secret)


def test_a_tampered_webhook_is_rejected(fake, paid_event):
    payload = fake.payload(paid_event)
    signature = fake.sign(payload)
    tampered = payload.replace(b'"livemode": false', b'"livemode": true')
    assert tampered != payload

    with pytest.raises(WebhookRejected, match="bad signature"):
        parse_webhook(tampered, signature, fake.webhook_secret)


def test_a_webhook_signed_301_seconds_ago_is_rejected_as_stale(fake, paid_event):
    payload = fake.payload(paid_event)

    with pytest.raises(WebhookRejected, match="stale"):
        parse_webhook(payload, fake.sign(payload, time.time() - 301), fake.webhook_secret)
    assert parse_webhook(payload, fake.sign(payload, time.time() - 290), fake.webhook_secret)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=1700000000"])
def test_a_webhook_without_a_usable_signature_header_is_rejected(fake, paid_event, header):
    with pytest.raises(WebhookRejected):
        parse_webhook(fake.payload(paid_event), header, fake.webhook_secret)


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"\xff\xfe", b"[]", json.dumps({"object": "event", "id": "evt_1"}).encode()],
    ids=["not-json", "not-utf8", "not-an-object", "no-data"],
)
def test_a_signed_payload_that_is_not_an_event_is_rejected(fake, payload):
    signature = fake.sign(payload.decode("utf-8", "replace"))

    with pytest.raises(WebhookRejected, match="malformed payload"):
        parse_webhook(payload, signature, fake.webhook_secret)


def test_parsing_webhooks_without_a_secret_is_a_configuration_error(fake, paid_event):
    payload = fake.payload(paid_event)

    with pytest.raises(ValueError, match="STRIPE_WEBHOOK_SECRET"):
        parse_webhook(payload, fake.sign(payload), "")
