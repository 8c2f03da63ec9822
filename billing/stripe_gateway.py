"""The console's only code that talks to Stripe.

Plain data in, plain data out (frozen dataclasses; no models, no database, no django.conf):
billing's actions load what they need, call the gateway and store what it returns, so the
gateway is tested without a database against tests/fakestripe.py with the real `stripe`
library, and nothing else in Outpost imports `stripe`.

Why it is built the way it is:

- **Nothing is created twice.** Every write carries an idempotency key derived from our own
  identifiers — `outpost-customer-<tenant slug>`, `outpost-inv-<number>-create`,
  `-item-<line index>`, `-finalize` — so a retry, a re-run Celery task or a re-run after a crash
  between any two steps gets Stripe's stored answer instead of a second object. Stripe keeps
  keys for at least 24 hours; so that a re-run days later is safe too, `ensure_customer` and
  `push_invoice` first look for what an earlier attempt left (search on our metadata; each
  invoice item carries its line index), and the keys cover search's indexing lag (under a
  minute, Stripe says). The prefix is configurable so that two deployments sharing one Stripe
  account (staging and a demo, say) cannot replay each other's answers.
- **Transient failures are retried, others are named.** Connection errors, 409, 429 and 5xx
  are retried with capped exponential backoff and jitter, on top of the library's own network
  retries (which `StripeClient` leaves at zero unless told, and which never cover a 429); a
  `Stripe-Should-Retry` header overrides both ways, as Stripe intends. When retries run out the
  caller gets `StripeUnavailable` (try later); any other 4xx is `StripeRejected`, carrying what
  Stripe said.
- **Money stays exact.** Amounts are `Decimal` and become Stripe's integer minor units by
  moving the decimal point (JPY 0 places, KWD 3, most 2, ISK 2 by Stripe's convention); an
  amount that is not a whole number of them is refused before anything is sent, because the
  console rounds once, at the invoice line (DESIGN.md §6), and the gateway must not round again.
  Before finalising, the Stripe draft's total must equal the sum of our lines.
- **Webhooks are verified, then distrusted.** `parse_webhook` checks the signature and its age
  with the library's verifier; the console then re-fetches the object (`fetch_invoice`)
  because events arrive late, twice and out of order.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

import stripe

log = logging.getLogger(__name__)

T = TypeVar("T")

METADATA_TENANT = "outpost_tenant"
METADATA_INVOICE_NUMBER = "outpost_invoice_number"
METADATA_LINE_INDEX = "outpost_line_index"

# Stripe's minor units, which are not quite ISO 4217's: https://docs.stripe.com/currencies.
# ISK is whole krónur but Stripe keeps it two-decimal ("100" is 1 króna), so it is not here.
ZERO_DECIMAL_CURRENCIES = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL_CURRENCIES = frozenset("BHD JOD KWD OMR TND".split())


# --- money ------------------------------------------------------------------------------------


class NotWholeMinorUnits(ValueError):
    """An amount with more decimal places than the currency's minor unit has."""


def stripe_exponent(currency: str) -> int:
    """How many decimal places Stripe's integer amounts have in `currency`."""
    code = currency.upper()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """`Decimal("12.34")` EUR → 1234, `Decimal("1234")` JPY → 1234, `Decimal("1.234")` KWD →
    1234: exact, never rounded. Raises NotWholeMinorUnits for `Decimal("0.005")` EUR."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amounts are Decimal, not {type(amount).__name__} ({amount!r})")
    places = stripe_exponent(currency)
    if not amount.is_finite():
        raise NotWholeMinorUnits(f"{amount} is not an amount")
    scaled = amount.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise NotWholeMinorUnits(
            f"{amount} {currency.upper()} is not a whole number of Stripe's minor units "
            f"({places} decimal places); round it at the invoice line before pushing"
        )
    return int(scaled)


def from_minor_units(amount: int, currency: str) -> Decimal:
    """The inverse of `to_minor_units`: 1234 EUR → Decimal("12.34")."""
    return Decimal(amount).scaleb(-stripe_exponent(currency))


# --- plain data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerData:
    """The tenant as Stripe's customer: the slug is the identity (in metadata and keys)."""

    slug: str
    name: str
    email: str | None = None


@dataclass(frozen=True)
class InvoiceLine:
    description: str
    amount: Decimal  # in the invoice's currency, already rounded to its minor unit


@dataclass(frozen=True)
class InvoiceData:
    """A finalised Outpost invoice, to become a Stripe invoice for `customer_id`."""

    number: str
    customer_id: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    days_until_due: int = 30
    tenant_slug: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.lines))
        if not re.fullmatch(r"[A-Za-z]{3}", self.currency):
            raise ValueError(f"currency must be a three-letter ISO code, got {self.currency!r}")
        if not self.number:
            raise ValueError("an invoice needs its number")
        if self.days_until_due < 0:
            raise ValueError(f"days_until_due must not be negative, got {self.days_until_due}")


@dataclass(frozen=True)
class SyncedInvoice:
    """Stripe's view of an invoice, amounts back in Decimal of its currency."""

    stripe_invoice_id: str
    status: str  # draft, open, paid, void, uncollectible
    number: str | None  # Stripe's own number, given at finalisation
    hosted_invoice_url: str | None
    currency: str  # upper case, as Outpost writes currencies
    total: Decimal
    amount_due: Decimal
    amount_paid: Decimal
    customer_id: str
    outpost_invoice_number: str | None
    paid_at: datetime | None


@dataclass(frozen=True)
class WebhookEvent:
    """A verified Stripe event. `object` is the event's snapshot of the object; it may be
    older than Stripe's current state, so act on a re-fetched copy (`fetch_invoice`)."""

    id: str
    type: str
    created: datetime
    livemode: bool
    api_version: str | None
    object_type: str | None
    object_id: str | None
    object: Mapping[str, Any]


# --- errors -----------------------------------------------------------------------------------


class StripeGatewayError(Exception):
    pass


class StripeRejected(StripeGatewayError):
    """Stripe refused the request (a 4xx other than 429), or its state contradicts ours.
    Retrying the same request will not help; the message says what Stripe said."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        stripe_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.stripe_message = stripe_message
        self.request_id = request_id


class StripeUnavailable(StripeGatewayError):
    """Stripe could not be reached or kept failing (connection errors, 409, 429, 5xx) after
    every retry. Safe to try again later: every write is idempotent."""


class WebhookRejected(Exception):
    """A webhook that must not be acted on; answer it 400."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- the gateway ------------------------------------------------------------------------------


class StripeGateway:
    """One Stripe account, through `stripe.StripeClient`.

    `max_retries` is how often the gateway retries a transient failure, sleeping
    `backoff_delay(attempt)` between tries; `network_retries` is how often the library retries
    within each try (connection errors, 409 and 5xx, after its own 0.5–5 s sleeps); `timeout`
    bounds each HTTP request, in seconds. `sleep` and `rand` are injectable so tests do not
    wait."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        max_retries: int = 4,
        network_retries: int = 1,
        timeout: float = 30.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        idempotency_prefix: str = "outpost",
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        if max_retries < 0 or network_retries < 0:
            raise ValueError("retries must not be negative")
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            max_network_retries=network_retries,
            http_client=stripe.RequestsClient(timeout=timeout),
        )
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._prefix = idempotency_prefix
        self._sleep = sleep
        self._rand = rand

    # customers

    def ensure_customer(self, tenant: CustomerData) -> str:
        """The id of the tenant's Stripe customer, created on first call. Safe to repeat:
        within 24 h the idempotency key replays the first creation; later, the search on
        `metadata.outpost_tenant` finds it."""
        query = f"metadata['{METADATA_TENANT}']:{_quoted(tenant.slug)}"
        found = self._call(
            f"look up the customer of tenant {tenant.slug}",
            self._client.v1.customers.search,
            params={"query": query, "limit": 10},
        )
        existing = sorted((c.to_dict() for c in found.data), key=lambda c: c["created"])
        if existing:
            return existing[0]["id"]
        params: dict[str, Any] = {
            "name": tenant.name,
            "metadata": {METADATA_TENANT: tenant.slug},
        }
        if tenant.email:
            params["email"] = tenant.email
        customer = self._call(
            f"create the customer of tenant {tenant.slug}",
            self._client.v1.customers.create,
            params=params,
            options={"idempotency_key": self._key("customer", tenant.slug)},
        )
        return customer.id

    # invoices

    def push_invoice(self, invoice: InvoiceData) -> SyncedInvoice:
        """Create, fill and finalise the Stripe invoice for `invoice`, or finish what an earlier
        attempt started; returns it as Stripe has it (open, or whatever became of it since).

        `collection_method=send_invoice`: the customer pays on the hosted page within
        `days_until_due` days of finalisation. `auto_advance` is false, so Stripe neither
        finalises nor emails nor chases it on its own schedule: the console decides when an
        invoice is final and tells the tenant (the hosted URL is in the result)."""
        amounts = [to_minor_units(line.amount, invoice.currency) for line in invoice.lines]
        number = invoice.number
        existing = self._find_invoice(invoice)
        if existing is not None and existing["status"] != "draft":
            if existing["status"] != "void":
                _check_total(existing, invoice, sum(amounts), "not pushing it again")
            return _synced(existing)
        if existing is not None:
            stripe_id = existing["id"]
        else:
            metadata = {METADATA_INVOICE_NUMBER: number}
            if invoice.tenant_slug:
                metadata[METADATA_TENANT] = invoice.tenant_slug
            params: dict[str, Any] = {
                "customer": invoice.customer_id,
                "currency": invoice.currency.lower(),
                "collection_method": "send_invoice",
                "days_until_due": invoice.days_until_due,
                "auto_advance": False,
                "metadata": metadata,
            }
            if invoice.description:
                params["description"] = invoice.description
            created = self._call(
                f"create invoice {number}",
                self._client.v1.invoices.create,
                params=params,
                options={"idempotency_key": self._key("inv", number, "create")},
            )
            stripe_id = created.id

        present = self._line_indexes(stripe_id, number)
        for index, (line, amount) in enumerate(zip(invoice.lines, amounts, strict=True)):
            if index in present:
                continue
            self._call(
                f"add line {index} to invoice {number}",
                self._client.v1.invoice_items.create,
                params={
                    "customer": invoice.customer_id,
                    "invoice": stripe_id,
                    "amount": amount,
                    "currency": invoice.currency.lower(),
                    "description": line.description,
                    "metadata": {METADATA_INVOICE_NUMBER: number, METADATA_LINE_INDEX: str(index)},
                },
                options={"idempotency_key": self._key("inv", number, "item", str(index))},
            )

        draft = self._retrieve_invoice(stripe_id, f"read back invoice {number}")
        if draft["status"] != "draft":
            # An earlier attempt finalised it and its answer was lost (search had not seen it).
            if draft["status"] != "void":
                _check_total(draft, invoice, sum(amounts), "not pushing it again")
            return _synced(draft)
        _check_total(draft, invoice, sum(amounts), "not finalising the draft")
        finalized = self._call(
            f"finalise invoice {number}",
            self._client.v1.invoices.finalize_invoice,
            stripe_id,
            params={"auto_advance": False},
            options={"idempotency_key": self._key("inv", number, "finalize")},
        )
        return _synced(finalized.to_dict())

    def fetch_invoice(self, stripe_invoice_id: str) -> SyncedInvoice:
        """Stripe's current state of an invoice: what a webhook handler should act on."""
        return _synced(self._retrieve_invoice(stripe_invoice_id, f"fetch {stripe_invoice_id}"))

    def _find_invoice(self, invoice: InvoiceData) -> dict[str, Any] | None:
        """The Stripe invoice an earlier push made for this number, if search knows it."""
        query = f"metadata['{METADATA_INVOICE_NUMBER}']:{_quoted(invoice.number)}"
        found = self._call(
            f"look up invoice {invoice.number}",
            self._client.v1.invoices.search,
            params={"query": query, "limit": 10},
        )
        candidates = [i.to_dict() for i in found.data]
        strangers = [i["id"] for i in candidates if i["customer"] != invoice.customer_id]
        if strangers:
            raise StripeRejected(
                f"Stripe already holds invoice {invoice.number} for another customer "
                f"({', '.join(strangers)}), not {invoice.customer_id}"
            )
        live = [i for i in candidates if i["status"] != "void"]
        if len(live) > 1:
            raise StripeRejected(
                f"Stripe holds {len(live)} invoices for {invoice.number} "
                f"({', '.join(i['id'] for i in live)}); void the extra ones by hand"
            )
        if live:
            return live[0]
        # Only voided ones: someone voided it in Stripe; report that rather than re-issue.
        return max(candidates, key=lambda i: i["created"]) if candidates else None

    def _line_indexes(self, stripe_id: str, number: str) -> set[int]:
        """Which of our lines the Stripe invoice already has (an earlier, interrupted push)."""
        indexes: set[int] = set()
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = self._call(
                f"list the lines of invoice {number}",
                self._client.v1.invoices.line_items.list,
                stripe_id,
                params=params,
            )
            for line in page.data:
                value = line.to_dict().get("metadata", {}).get(METADATA_LINE_INDEX)
                if value is not None and value.isdigit():
                    indexes.add(int(value))
            if not page.has_more or not page.data:
                return indexes
            params = {"limit": 100, "starting_after": page.data[-1].id}

    def _retrieve_invoice(self, stripe_id: str, what: str) -> dict[str, Any]:
        return self._call(what, self._client.v1.invoices.retrieve, stripe_id).to_dict()

    # retries

    def _key(self, *parts: str) -> str:
        return "-".join((self._prefix, *parts))

    def backoff_delay(self, attempt: int) -> float:
        """Seconds before retry `attempt` (1-based): exponential, capped, "equal jitter" (half
        fixed, half random) so that many workers do not come back in step."""
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** min(attempt - 1, 30))
        return ceiling / 2 + self._rand() * ceiling / 2

    def _call(self, what: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            try:
                return method(*args, **kwargs)
            except stripe.StripeError as error:
                verdict = _classify(error)
                if verdict == "rejected":
                    raise _rejected(what, error) from error
                attempt += 1
                if verdict == "unavailable" or attempt > self._max_retries:
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    raise StripeUnavailable(
                        f"could not {what}: Stripe kept failing ({tries}): {error}"
                    ) from error
                delay = self.backoff_delay(attempt)
                log.warning(
                    "Stripe: could not %s (%s); retry %d of %d in %.2f s",
                    what,
                    error,
                    attempt,
                    self._max_retries,
                    delay,
                )
                self._sleep(delay)


def _quoted(value: str) -> str:
    """A value in Stripe's search query language: single-quoted, quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _header(error: stripe.StripeError, name: str) -> str | None:
    for key, value in (error.headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _classify(error: stripe.StripeError) -> str:
    """ "retry", "unavailable" (transient, but retrying now is pointless) or "rejected"."""
    status = error.http_status
    advice = _header(error, "stripe-should-retry")
    if advice == "true":
        return "retry"
    if advice == "false":
        # Stripe says a retry would only replay this answer (e.g. a stored 500).
        return "unavailable" if status is None or status >= 500 else "rejected"
    if isinstance(error, stripe.APIConnectionError):
        return "retry" if error.should_retry else "unavailable"
    if status is None:
        return "rejected"  # raised before any request: a missing key, a bad argument
    if isinstance(error, stripe.RateLimitError) or status in (409, 429) or status >= 500:
        return "retry"
    return "rejected"


def _rejected(what: str, error: stripe.StripeError) -> StripeRejected:
    details = error.error
    code = getattr(details, "code", None) if details is not None else None
    param = getattr(details, "param", None) if details is not None else None
    said = error.user_message or "(no message)"
    facts = [f"HTTP {error.http_status}"]
    if code:
        facts.append(f"code {code}")
    if param:
        facts.append(f"param {param}")
    if error.request_id:
        facts.append(f"request {error.request_id}")
    return StripeRejected(
        f"Stripe refused to {what}: {said} ({', '.join(facts)})",
        status=error.http_status,
        code=code,
        param=param,
        stripe_message=error.user_message,
        request_id=error.request_id,
    )


def _check_total(found: Mapping[str, Any], invoice: InvoiceData, total: int, outcome: str) -> None:
    """Stripe's invoice must say what ours says: a finalised invoice is never edited, so a
    difference means someone changed one side, and a person has to look."""
    if found["total"] == total and found["currency"] == invoice.currency.lower():
        return
    theirs = from_minor_units(found["total"], found["currency"])
    ours = from_minor_units(total, invoice.currency)
    raise StripeRejected(
        f"invoice {invoice.number} differs from Stripe's {found['id']} ({found['status']}): "
        f"Stripe's totals {theirs} {found['currency'].upper()}, ours "
        f"{ours} {invoice.currency.upper()}; {outcome}"
    )


def _timestamp(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _synced(data: Mapping[str, Any]) -> SyncedInvoice:
    currency = data["currency"]
    transitions = data.get("status_transitions") or {}
    return SyncedInvoice(
        stripe_invoice_id=data["id"],
        status=data["status"],
        number=data.get("number"),
        hosted_invoice_url=data.get("hosted_invoice_url"),
        currency=currency.upper(),
        total=from_minor_units(data["total"], currency),
        amount_due=from_minor_units(data["amount_due"], currency),
        amount_paid=from_minor_units(data["amount_paid"], currency),
        customer_id=data["customer"],
        outpost_invoice_number=(data.get("metadata") or {}).get(METADATA_INVOICE_NUMBER),
        paid_at=_timestamp(transitions.get("paid_at")),
    )


# --- webhooks ---------------------------------------------------------------------------------


def parse_webhook(
    payload: bytes,
    signature_header: str | None,
    secret: str,
    tolerance_s: int = 300,
) -> WebhookEvent:
    """The event in a webhook POST body, once its `Stripe-Signature` is verified with the
    library's verifier (HMAC-SHA256 over "<t>.<payload>", timestamp no older than
    `tolerance_s`). Raises WebhookRejected for a missing, malformed, forged or stale signature
    and for a body that is not a Stripe event; ValueError if no secret is configured."""
    if not secret:
        raise ValueError("no Stripe webhook secret is configured (STRIPE_WEBHOOK_SECRET)")
    if tolerance_s <= 0:
        raise ValueError("tolerance_s must be positive: a zero tolerance accepts any age")
    if not signature_header:
        raise WebhookRejected("missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("malformed payload: not UTF-8") from None
    try:
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance_s)
    except stripe.SignatureVerificationError as error:
        message = error.user_message or ""
        if message.startswith("Timestamp outside the tolerance zone"):
            raise WebhookRejected(f"stale signature: older than {tolerance_s} s") from error
        raise WebhookRejected(f"bad signature: {message}") from error
    return _event(text)


def _event(text: str) -> WebhookEvent:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise WebhookRejected(f"malformed payload: {error}") from None
    envelope = data.get("data") if isinstance(data, dict) else None
    obj = envelope.get("object") if isinstance(envelope, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("object") != "event"
        or not isinstance(data.get("id"), str)
        or not isinstance(data.get("type"), str)
        or not isinstance(data.get("created"), int)
        or not isinstance(obj, dict)
    ):
        raise WebhookRejected("malformed payload: not a Stripe event (id, type, data.object)")
    return WebhookEvent(
        id=data["id"],
        type=data["type"],
        created=datetime.fromtimestamp(data["created"], tz=UTC),
        livemode=bool(data.get("livemode")),
        api_version=data.get("api_version"),
        object_type=obj.get("object"),
        object_id=obj.get("id"),
        object=MappingProxyType(obj),
    )
