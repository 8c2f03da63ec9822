"""The fake Stripe, driven by the real `stripe` library: if these pass, the gateway's tests
exercise the library's real requests and parsing, not a mock of them. No database."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe
from stripe import _http_client

from tests.fakestripe import DROP, FakeStripe, decode_form


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def client(fake):
    """The library as the console configures it, without its own retries."""
    return stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})


@pytest.fixture
def quick_library_retries(monkeypatch):
    # The library sleeps at least HTTPClient.INITIAL_DELAY (0.5 s) before each of its retries.
    monkeypatch.setattr(_http_client.HTTPClient, "INITIAL_DELAY", 0.001)
    monkeypatch.setattr(_http_client.HTTPClient, "MAX_DELAY", 0.001)


def alice(client, **options):
    return client.v1.customers.create(
        params={"name": "Alice Ltd", "email": "alice@alice.example", "metadata": {"slug": "a"}},
        options=options or None,
    )


def raw(fake, method, path, *, body=None, headers=None):
    request = urllib.request.Request(
        fake.url + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


# --- the wire ---------------------------------------------------------------------------------


def test_it_decodes_stripes_nested_form_encoding():
    assert decode_form(
        "name=Alice&metadata[slug]=a&metadata[n]=1&lines[0][amount]=5&lines[1][amount]=-2"
        "&expand[]=customer&flag=true"
    ) == {
        "name": "Alice",
        "metadata": {"slug": "a", "n": "1"},
        "lines": [{"amount": "5"}, {"amount": "-2"}],
        "expand": ["customer"],
        "flag": "true",
    }


def test_it_refuses_a_request_without_an_api_key_in_stripes_error_format(fake):
    status, _, body = raw(fake, "GET", "/v1/customers")

    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert "You did not provide an API key" in body["error"]["message"]


def test_it_refuses_another_api_key(fake):
    stranger = stripe.StripeClient("sk_test_someone_else", base_addresses={"api": fake.url})

    with pytest.raises(stripe.AuthenticationError, match="Invalid API Key provided"):
        stranger.v1.customers.list()


def test_it_answers_an_unknown_url_and_an_unknown_object_with_404(fake, client):
    status, _, body = raw(
        fake, "GET", "/v1/teapots", headers={"Authorization": f"Bearer {fake.api_key}"}
    )
    assert (
        status == 404 and "Unrecognized request URL (GET: /v1/teapots)" in body["error"]["message"]
    )

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve("in_missing")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    assert missing.value.user_message == "No such invoice: 'in_missing'"


def test_it_rejects_unknown_and_missing_parameters_like_stripe(client):
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create(params={"nmae": "typo"})  # type: ignore[typeddict-unknown-key]
    assert (unknown.value.http_status, unknown.value.code, unknown.value.param) == (
        400,
        "parameter_unknown",
        "nmae",
    )

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.create(params={"auto_advance": False})
    assert (missing.value.code, missing.value.param) == ("parameter_missing", "customer")


# --- customers --------------------------------------------------------------------------------


def test_it_creates_retrieves_and_updates_a_customer(client):
    created = alice(client)

    assert created.id.startswith("cus_") and created.object == "customer"
    assert created.livemode is False and isinstance(created.created, int)
    assert client.v1.customers.retrieve(created.id).email == "alice@alice.example"

    updated = client.v1.customers.update(
        created.id, params={"name": "Alice plc", "metadata": {"slug": "", "tier": "gold"}}
    )
    assert updated.name == "Alice plc"
    assert updated.to_dict()["metadata"] == {"tier": "gold"}  # "" removes a key, as on Stripe


def test_it_searches_customers_by_metadata_unless_its_index_lags(fake, client):
    created = alice(client)
    query = "metadata['slug']:'a'"

    assert [c.id for c in client.v1.customers.search(params={"query": query}).data] == [created.id]
    assert client.v1.customers.search(params={"query": "metadata['slug']:'b'"}).data == []

    fake.index_searches = False
    assert client.v1.customers.search(params={"query": query}).data == []


# --- idempotency ------------------------------------------------------------------------------


def test_it_replays_a_repeated_key_without_creating_twice(fake, client):
    first = alice(client, idempotency_key="alice-1")
    again = alice(client, idempotency_key="alice-1")

    assert again.id == first.id
    assert len(fake.customers) == 1
    assert [r.replayed for r in fake.requests] == [False, True]
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.headers["Original-Request"] == first.last_response.request_id


def test_it_answers_a_key_reused_with_other_parameters_with_an_idempotency_error(client):
    alice(client, idempotency_key="alice-1")

    with pytest.raises(stripe.IdempotencyError) as error:
        client.v1.customers.create(params={"name": "Bob"}, options={"idempotency_key": "alice-1"})

    assert error.value.http_status == 400
    assert "same parameters they were first used with" in error.value.user_message


def test_it_answers_a_key_reused_on_another_endpoint_with_an_idempotency_error(client):
    customer = alice(client, idempotency_key="shared")

    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        client.v1.invoices.create(
            params={"customer": customer.id}, options={"idempotency_key": "shared"}
        )


def test_it_does_not_keep_an_answer_that_failed_validation(fake, client):
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.create(params={}, options={"idempotency_key": "k"})
    customer = alice(client)

    invoice = client.v1.invoices.create(
        params={"customer": customer.id}, options={"idempotency_key": "k"}
    )
    assert invoice.status == "draft"


def test_it_forgets_keys_as_stripe_does_after_a_day(fake, client):
    alice(client, idempotency_key="alice-1")
    fake.expire_idempotency_keys()
    alice(client, idempotency_key="alice-1")

    assert len(fake.customers) == 2


# --- invoices ---------------------------------------------------------------------------------


def draft(client, customer, currency="jpy", amounts=(1200, 34)):
    invoice = client.v1.invoices.create(
        params={
            "customer": customer.id,
            "currency": currency,
            "collection_method": "send_invoice",
            "days_until_due": 14,
            "auto_advance": False,
            "metadata": {"outpost_invoice_number": "ALICE-1"},
        }
    )
    for i, amount in enumerate(amounts):
        client.v1.invoice_items.create(
            params={
                "customer": customer.id,
                "invoice": invoice.id,
                "amount": amount,
                "currency": currency,
                "description": f"line {i}",
            }
        )
    return invoice


def test_it_takes_an_invoice_from_draft_to_open_to_paid(fake, client):
    customer = alice(client)
    invoice = draft(client, customer)

    assert client.v1.invoices.retrieve(invoice.id).total == 1234
    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    assert finalized.number.endswith("-0001")
    assert finalized.hosted_invoice_url.startswith(fake.url)
    assert finalized.amount_due == 1234 and finalized.due_date > finalized.created

    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 1234, 0)
    assert [e["type"] for e in fake.events if e["type"].startswith("invoice.")] == [
        "invoice.created",
        "invoice.finalized",
        "invoice.payment_succeeded",
        "invoice.paid",
    ]


def test_it_lists_an_invoices_lines_in_order_page_by_page(client):
    invoice = draft(client, alice(client), amounts=(1, 2, 3))

    lines = client.v1.invoices.line_items.list(invoice.id, params={"limit": 2})

    assert [line.amount for line in lines.auto_paging_iter()] == [1, 2, 3]


def test_it_refuses_items_on_a_finalised_invoice_and_in_another_currency(client):
    customer = alice(client)
    invoice = draft(client, customer)

    with pytest.raises(stripe.InvalidRequestError, match="must match the currency"):
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": invoice.id, "amount": 1, "currency": "eur"}
        )
    client.v1.invoices.finalize_invoice(invoice.id)
    with pytest.raises(stripe.InvalidRequestError, match="only add invoice items to draft"):
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": invoice.id, "amount": 1, "currency": "jpy"}
        )
    with pytest.raises(stripe.InvalidRequestError, match="already finalized"):
        client.v1.invoices.finalize_invoice(invoice.id)


def test_it_voids_or_marks_uncollectible_only_an_open_invoice(client):
    customer = alice(client)
    first, second = draft(client, customer), draft(client, customer)

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(first.id)
    client.v1.invoices.finalize_invoice(first.id)
    client.v1.invoices.finalize_invoice(second.id)

    assert client.v1.invoices.void_invoice(first.id).status == "void"
    assert client.v1.invoices.mark_uncollectible(second.id).status == "uncollectible"


def test_an_invoice_with_nothing_to_pay_is_paid_when_finalised(client):
    invoice = draft(client, alice(client), amounts=(500, -500))

    assert client.v1.invoices.finalize_invoice(invoice.id).status == "paid"


def test_a_declined_payment_is_a_402_card_error_and_an_event(fake, client):
    customer = alice(client)
    invoice = draft(client, customer)
    client.v1.invoices.finalize_invoice(invoice.id)
    fake.decline_payments_from(customer.id)

    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice.id)

    assert (declined.value.http_status, declined.value.code) == (402, "card_declined")
    assert fake.invoice(invoice.id)["status"] == "open"
    assert len(fake.events_of("invoice.payment_failed")) == 1


def test_the_customer_paying_or_failing_to_pay_emits_the_invoice_events(fake, client):
    customer = alice(client)
    invoice = draft(client, customer)
    client.v1.invoices.finalize_invoice(invoice.id)

    failed = fake.fail_payment(invoice.id)
    assert failed["status"] == "open" and failed["attempt_count"] == 1
    paid = fake.pay_invoice(invoice.id)

    assert paid["status"] == "paid"
    event = fake.events_of("invoice.paid")[0]
    assert event["data"]["object"]["id"] == invoice.id
    assert client.v1.events.retrieve(event["id"]).type == "invoice.paid"
    assert fake.events_of("invoice.payment_failed")[0]["data"]["object"]["status"] == "open"


# --- faults -----------------------------------------------------------------------------------


def test_it_fails_the_next_requests_as_told_and_logs_them(fake, client):
    fake.fail_next(2, 503, on="GET /v1/customers")

    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.customers.list()
    client.v1.customers.list()

    assert [(r.status, r.injected) for r in fake.requests] == [
        (503, True),
        (503, True),
        (200, False),
    ]


def test_a_429_is_not_retried_by_the_library_unless_stripe_says_so(fake, quick_library_retries):
    retrying = stripe.StripeClient(
        fake.api_key, base_addresses={"api": fake.url}, max_network_retries=2
    )
    fake.fail_next(1, 429)
    with pytest.raises(stripe.RateLimitError):
        retrying.v1.customers.list()

    fake.fail_next(1, 429, should_retry=True)
    retrying.v1.customers.list()

    assert [r.status for r in fake.requests] == [429, 429, 200]


def test_a_dropped_connection_reaches_the_library_as_a_connection_error(fake, client):
    fake.fail_next(1, DROP)

    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()
    assert fake.requests[0].status is None


def test_an_answer_lost_after_the_request_ran_is_replayed_by_the_library_retry(
    fake, quick_library_retries
):
    retrying = stripe.StripeClient(
        fake.api_key, base_addresses={"api": fake.url}, max_network_retries=1
    )
    fake.fail_next(1, 500, when="after")

    customer = retrying.v1.customers.create(params={"name": "Alice Ltd"})

    assert [c["id"] for c in fake.customers] == [customer.id]
    first, retry = fake.requests
    assert first.idempotency_key == retry.idempotency_key  # the library's own key, reused
    assert (first.status, retry.status, retry.replayed) == (500, 200, True)


# --- webhooks ---------------------------------------------------------------------------------


def test_its_signatures_are_the_ones_the_library_verifies(fake):
    event = fake.emit("invoice.paid", {"id": "in_1", "object": "invoice", "status": "paid"})
    payload = fake.payload(event)

    verified = stripe.Webhook.construct_event(payload, fake.sign(payload), fake.webhook_secret)

    assert (verified.id, verified.type) == (event["id"], "invoice.paid")
    assert event["id"].startswith("evt_") and event["object"] == "event"
    assert fake.sign(payload, 1_700_000_000) == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), fake.webhook_secret, 1_700_000_000
    )


def test_it_delivers_an_event_signed_to_an_endpoint(fake):
    received = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Stripe-Signature"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=endpoint.serve_forever, args=(0.05,), daemon=True).start()
    try:
        event = fake.emit("invoice.payment_failed", {"id": "in_1", "object": "invoice"})
        delivery = fake.deliver(f"http://127.0.0.1:{endpoint.server_address[1]}/hook", event)
    finally:
        endpoint.shutdown()
        endpoint.server_close()

    assert (delivery.status, delivery.body) == (200, b"ok")
    body, signature = received[0]
    assert stripe.WebhookSignature.verify_header(body, signature, fake.webhook_secret, 300)
    assert json.loads(body)["type"] == "invoice.payment_failed"


def test_it_stops_serving_when_stopped():
    fake = FakeStripe()
    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
    client.v1.customers.list()  # leaves a keep-alive connection open

    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 2
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()
