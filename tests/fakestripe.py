"""A small Stripe of our own: a real HTTP server on loopback for the real `stripe` library.

Why: the console's Stripe code (billing/stripe_gateway.py) must be tested against the requests
the library really sends and the answers it really parses (form-encoded bodies with
`metadata[k]` and `lines[0][...]`, Bearer auth, `Idempotency-Key`, Stripe's error JSON,
`Stripe-Should-Retry`), without the network and without mocking the library. So this is a
server, not a patch: `stripe.StripeClient(api_key, base_addresses={"api": fake.url})` talks to
it exactly as it would to api.stripe.com.

It is faithful where the console depends on Stripe's behaviour, and no further:

- state in memory: customers, invoice items, invoices (draft → open → paid / void /
  uncollectible, numbers, totals, hosted URLs, lines), events;
- idempotency as Stripe documents it: a POST replayed with the same key and the same
  parameters returns the stored answer (header `Idempotent-Replayed: true`) and changes
  nothing; the same key with other parameters or on another endpoint is a 400
  `idempotency_error`; requests that fail validation are not stored;
- Stripe's errors: 400 `parameter_missing` / `parameter_unknown` / `parameter_invalid_integer`,
  402 `card_error`, 404 `resource_missing` and unrecognised URLs, 401 without the key;
- search (`metadata['k']:'v' AND field:'v'`) over customers and invoices, which can be told to
  lag like Stripe's index does (`index_searches = False`);
- fault injection (`fail_next`): 5xx, 429 or a dropped connection, before the request runs (an
  outage) or after it ran (the answer is lost on the way back);
- a request log (`requests`) and webhook helpers (`emit`, `sign`, `deliver`) that sign with
  Stripe's scheme, `t=<unix>,v1=hex(hmac_sha256(secret, "<t>.<payload>"))`.

Used by tests/billing/test_fakestripe.py and tests/billing/test_stripe_gateway.py.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

DROP: Literal["drop"] = "drop"
"""`fail_next(status=DROP)`: close the connection without an answer."""

_ALPHANUMERIC = string.ascii_letters + string.digits
_UNRECOGNISED = (
    "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can "
    "help at https://support.stripe.com/."
)


def _new_id(prefix: str, length: int = 14) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


# --- wire format ------------------------------------------------------------------------------


def decode_form(encoded: str) -> dict[str, Any]:
    """Stripe's form encoding back into nested data: `metadata[k]=v` → {"metadata": {"k": v}},
    `lines[0][amount]=5` → {"lines": [{"amount": "5"}]}. Values stay strings, as on the wire."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True):
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `expand[]=a`: the old array form
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
    return _lists_from_indexed_dicts(root)


def _lists_from_indexed_dicts(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    converted = {k: _lists_from_indexed_dicts(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


class StripeApiError(Exception):
    """An answer in Stripe's error format. `stored` says whether idempotency keeps it: Stripe
    stores the result once an endpoint began to run, not when the parameters failed to validate
    (https://docs.stripe.com/api/idempotent_requests)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        stored: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.stored = stored
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param
        self.body.update(extra or {})


def _missing(param: str) -> StripeApiError:
    return StripeApiError(
        400,
        f"Missing required param: {param}.",
        code="parameter_missing",
        param=param,
        stored=False,
    )


def _no_such(kind: str, object_id: str, param: str = "id") -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


def _check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed and name != "expand":
            raise StripeApiError(
                400,
                f"Received unknown parameter: {name}",
                code="parameter_unknown",
                param=name,
                stored=False,
            )


def _idempotency_error(key: str, first: str | None = None, now: str | None = None) -> _Answer:
    if first is None:
        reason = "with the same parameters they were first used with"
    else:
        reason = f"for the same endpoint they were first used for ('{first}' vs '{now}')"
    message = (
        f"Keys for idempotent requests can only be used {reason}. Try using a key other than "
        f"'{key}' if you meant to execute a different request."
    )
    return _Answer(400, {"error": {"type": "idempotency_error", "message": message}})


def _integer(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    if name not in params or params[name] == "":
        if required:
            raise _missing(name)
        return None
    value = params[name]
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeApiError(
            400,
            f"Invalid integer: {value}",
            code="parameter_invalid_integer",
            param=name,
            stored=False,
        )
    return int(value)


def _boolean(params: dict[str, Any], name: str, default: bool) -> bool:
    if name not in params:
        return default
    value = params[name]
    if value not in ("true", "false"):
        raise StripeApiError(
            400,
            f"Invalid boolean: {value}",
            code="parameter_invalid_boolean",
            param=name,
            stored=False,
        )
    return value == "true"


def _metadata(params: dict[str, Any], current: dict[str, str] | None = None) -> dict[str, str]:
    """Stripe's metadata rules: values are strings; on update `metadata[k]=""` removes k and
    `metadata=""` removes everything."""
    result = dict(current or {})
    given = params.get("metadata")
    if given is None:
        return result
    if given == "":
        return {}
    if not isinstance(given, dict):
        raise StripeApiError(
            400, "Invalid hash", code="parameter_invalid_string", param="metadata", stored=False
        )
    for key, value in given.items():
        if not isinstance(value, str):
            raise StripeApiError(
                400,
                f"Invalid value for metadata[{key}]: must be a string",
                param=f"metadata[{key}]",
                stored=False,
            )
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    return result


def _currency(params: dict[str, Any], name: str = "currency") -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]{3}", value):
        raise StripeApiError(
            400, f"Invalid currency: {value}", param=name, code="parameter_invalid_string"
        )
    return value.lower()


_SEARCH_CLAUSE = re.compile(r"""\s*(metadata\['([^']+)'\]|[a-z_]+)\s*:\s*'((?:[^'\\]|\\.)*)'\s*""")


def _parse_search(query: str) -> list[tuple[str, str, str]]:
    """`metadata['k']:'v' AND email:'x'` → [("metadata", "k", "v"), ("email", "", "x")]: the
    exact-match, AND-only part of Stripe's search query language, which is all Outpost uses."""
    clauses = []
    for part in re.split(r"\s+AND\s+", query.strip()):
        match = _SEARCH_CLAUSE.fullmatch(part)
        if not match:
            raise StripeApiError(
                400,
                f"Invalid search query: {query!r} (the fake supports field:'value' joined by AND)",
                param="query",
                stored=False,
            )
        whole, metadata_key, value = match.groups()
        value = re.sub(r"\\(.)", r"\1", value)
        if metadata_key is not None:
            clauses.append(("metadata", metadata_key, value))
        else:
            clauses.append((whole, "", value))
    return clauses


def _matches(obj: dict[str, Any], clauses: list[tuple[str, str, str]]) -> bool:
    for name, metadata_key, value in clauses:
        actual = obj.get("metadata", {}).get(metadata_key) if name == "metadata" else obj.get(name)
        if actual is None or str(actual) != value:
            return False
    return True


# --- the log ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, and how it answered."""

    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None
    status: int | None  # None: the connection was dropped
    replayed: bool = False  # answered from the idempotency store
    injected: bool = False  # answered by `fail_next`, not by the endpoint
    stripe_version: str | None = None


@dataclass
class _Fault:
    remaining: int
    status: int | Literal["drop"]
    when: Literal["before", "after"]
    on: str | None
    should_retry: bool | None
    skip: int = 0


@dataclass(frozen=True)
class Delivery:
    """What the endpoint answered when `deliver` POSTed an event to it."""

    status: int
    body: bytes
    signature: str


@dataclass
class _Answer:
    status: int | Literal["drop"]
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


# --- the server -------------------------------------------------------------------------------


class FakeStripe:
    """Start it, point the library at `.url` with `.api_key`, and inspect it afterwards.

        with FakeStripe() as fake:
            client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})

    Every request is handled under one lock, so the state is never seen half-changed."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        webhook_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key or "sk_test_" + secrets.token_hex(12)
        self.webhook_secret = webhook_secret or "whsec_" + secrets.token_hex(16)
        self.clock = clock
        self.index_searches = True
        """False makes search find nothing, as right after a write on Stripe, whose index lags
        "less than a minute" normally and up to an hour during incidents."""
        self.requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._customers: dict[str, dict[str, Any]] = {}
        self._invoice_items: dict[str, dict[str, Any]] = {}
        self._invoices: dict[str, dict[str, Any]] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self._idempotency: dict[str, tuple[str, str, _Answer]] = {}
        self._faults: list[_Fault] = []
        self._declining: set[str] = set()
        self._api_version: str | None = None
        self._request_context: dict[str, str | None] = {"id": None, "idempotency_key": None}

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-stripe",
            daemon=True,
        )
        self._thread.start()

    # lifecycle

    def __enter__(self) -> FakeStripe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so no thread outlives the test."""
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    # what tests read

    @property
    def customers(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._customers.values()))

    @property
    def invoice_items(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._invoice_items.values()))

    @property
    def invoices(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._render_invoice(i) for i in self._invoices.values()]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._events.values()))

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        with self._lock:
            return self._render_invoice(self._get_invoice(invoice_id))

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # what tests change

    def fail_next(
        self,
        n: int = 1,
        status: int | Literal["drop"] = 500,
        *,
        when: Literal["before", "after"] = "before",
        on: str | None = None,
        skip: int = 0,
        should_retry: bool | None = None,
    ) -> None:
        """Make the next `n` requests (those whose "METHOD /path" starts with `on`, if given)
        fail with `status` (500, 503, 429, 409, ...) or DROP (the connection closes unanswered).
        `when="before"`: the request never runs, as in an outage. `when="after"`: it runs, its
        result is stored under its idempotency key, and the answer is lost on the way back.
        `skip` lets that many matching requests through first. `should_retry` sets
        `Stripe-Should-Retry`, which the library obeys (it does not retry a 429 without
        `true`)."""
        with self._lock:
            self._faults.append(_Fault(n, status, when, on, should_retry, skip))

    def expire_idempotency_keys(self) -> None:
        """Forget every stored idempotency key, as Stripe does once a key is 24 hours old."""
        with self._lock:
            self._idempotency.clear()

    def decline_payments_from(self, customer_id: str) -> None:
        """`POST /v1/invoices/{id}/pay` for this customer's invoices answers 402 card_declined."""
        with self._lock:
            self._declining.add(customer_id)

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        """The customer pays an open invoice (on the hosted page, say): it becomes paid and
        `invoice.payment_succeeded` and `invoice.paid` are emitted. Returns the invoice."""
        with self._lock:
            invoice = self._get_invoice(invoice_id)
            if invoice["status"] != "open":
                raise ValueError(f"{invoice_id} is {invoice['status']}, not open")
            self._mark_paid(invoice)
            return self._render_invoice(invoice)

    def fail_payment(self, invoice_id: str) -> dict[str, Any]:
        """The customer's payment attempt fails: the invoice stays open, its attempt count
        grows and `invoice.payment_failed` is emitted. Returns the invoice."""
        with self._lock:
            invoice = self._get_invoice(invoice_id)
            if invoice["status"] != "open":
                raise ValueError(f"{invoice_id} is {invoice['status']}, not open")
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            self._emit_locked("invoice.payment_failed", self._render_invoice(invoice))
            return self._render_invoice(invoice)

    # webhooks

    def emit(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Record an event of `event_type` whose `data.object` is a snapshot of `obj`, and
        return it (retrievable at GET /v1/events/{id} too)."""
        with self._lock:
            return copy.deepcopy(self._emit_locked(event_type, obj))

    def payload(self, event: dict[str, Any]) -> bytes:
        """The body Stripe would POST for `event` (pretty-printed JSON, as Stripe sends)."""
        return json.dumps(event, indent=2).encode()

    def sign(
        self,
        payload: bytes | str,
        timestamp: int | float | None = None,
        *,
        secret: str | None = None,
    ) -> str:
        """A `Stripe-Signature` header for `payload`, signed now (or at `timestamp`) with this
        fake's webhook secret (or `secret`, to forge one)."""
        if isinstance(payload, bytes):
            payload = payload.decode()
        t = int(self.clock() if timestamp is None else timestamp)
        key = (secret or self.webhook_secret).encode()
        signature = hmac.new(key, f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
        return f"t={t},v1={signature}"

    def deliver(
        self,
        url: str,
        event: dict[str, Any],
        *,
        timestamp: int | float | None = None,
        secret: str | None = None,
        timeout: float = 10,
    ) -> Delivery:
        """POST `event`, signed, to a webhook endpoint as Stripe does; returns its answer."""
        body = self.payload(event)
        signature = self.sign(body, timestamp, secret=secret)
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": signature,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Delivery(response.status, response.read(), signature)
        except urllib.error.HTTPError as error:
            return Delivery(error.code, error.read(), signature)

    # --- request handling (under the lock) ----------------------------------------------------

    def _handle(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> _Answer:
        key = headers.get("idempotency-key") or None
        version = headers.get("stripe-version")
        with self._lock:
            if version:
                self._api_version = version
            answer, replayed, injected = self._answer(method, path, params, headers, key)
            answer.headers.setdefault("Request-Id", _new_id("req"))
            if version:
                answer.headers["Stripe-Version"] = version
            if method == "POST" and key:
                answer.headers["Idempotency-Key"] = key
            self.requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    params=params,
                    idempotency_key=key,
                    status=None if answer.status == DROP else answer.status,
                    replayed=replayed,
                    injected=injected,
                    stripe_version=version,
                )
            )
            return answer

    def _answer(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        headers: dict[str, str],
        key: str | None,
    ) -> tuple[_Answer, bool, bool]:
        """(answer, replayed, injected) for one request, in Stripe's order: the edge (faults),
        authentication, the idempotency store, then the endpoint."""
        fault = self._take_fault(method, path, "before")
        if fault is not None:
            return self._fault_answer(fault), False, True
        denied = self._authenticate(headers.get("authorization", ""))
        if denied is not None:
            return denied, False, False

        # GET and DELETE are idempotent by definition; Stripe ignores keys on them.
        idempotent = method == "POST" and key is not None
        fingerprint = json.dumps(params, sort_keys=True)
        if idempotent:
            stored = self._idempotency.get(key)
            if stored is not None:
                stored_endpoint, stored_fingerprint, stored_answer = stored
                if stored_endpoint != f"{method} {path}":
                    return (
                        _idempotency_error(key, stored_endpoint, f"{method} {path}"),
                        False,
                        False,
                    )
                if stored_fingerprint != fingerprint:
                    return _idempotency_error(key), False, False
                replay = copy.deepcopy(stored_answer)
                replay.headers["Original-Request"] = replay.headers.pop("Request-Id")
                replay.headers["Idempotent-Replayed"] = "true"
                return self._after_fault(method, path, replay), True, False

        request_id = _new_id("req")
        self._request_context = {"id": request_id, "idempotency_key": key}
        try:
            answer = _Answer(200, self._route(method, path, params))
            keep = True
        except StripeApiError as error:
            answer = _Answer(error.status, {"error": error.body})
            keep = error.stored
        finally:
            self._request_context = {"id": None, "idempotency_key": None}
        answer.headers["Request-Id"] = request_id
        if idempotent and keep:
            self._idempotency[key] = (f"{method} {path}", fingerprint, copy.deepcopy(answer))
        return self._after_fault(method, path, answer), False, False

    def _after_fault(self, method: str, path: str, answer: _Answer) -> _Answer:
        fault = self._take_fault(method, path, "after")
        return answer if fault is None else self._fault_answer(fault)

    def _take_fault(self, method: str, path: str, when: str) -> _Fault | None:
        target = f"{method} {path}"
        for fault in self._faults:
            if fault.when == when and (fault.on is None or target.startswith(fault.on)):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_answer(self, fault: _Fault) -> _Answer:
        if fault.status == DROP:
            return _Answer(DROP)
        headers = {}
        if fault.should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if fault.should_retry else "false"
        if fault.status == 429:
            body = {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Too many requests hit the API too quickly. We recommend an "
                "exponential backoff of your requests.",
            }
        elif fault.status == 409:
            body = {
                "type": "invalid_request_error",
                "code": "lock_timeout",
                "message": "This object cannot be accessed right now because another API "
                "request or Stripe process is currently accessing it.",
            }
        else:
            body = {
                "type": "api_error",
                "message": "Sorry, something went wrong. We've already been notified of the "
                "problem.",
            }
        return _Answer(fault.status, {"error": body}, headers)

    def _authenticate(self, authorization: str) -> _Answer | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            message = (
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY')."
            )
        elif not hmac.compare_digest(token.encode(), self.api_key.encode()):
            message = f"Invalid API Key provided: {token[:8]}{'*' * 4}{token[-4:]}"
        else:
            return None
        return _Answer(401, {"error": {"type": "invalid_request_error", "message": message}})

    # routing

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        (method, re.compile(pattern), handler)
        for method, pattern, handler in [
            ("POST", r"/v1/customers", "_create_customer"),
            ("GET", r"/v1/customers", "_list_customers"),
            ("GET", r"/v1/customers/search", "_search_customers"),
            ("GET", r"/v1/customers/(?P<id>[^/]+)", "_retrieve_customer"),
            ("POST", r"/v1/customers/(?P<id>[^/]+)", "_update_customer"),
            ("POST", r"/v1/invoiceitems", "_create_invoice_item"),
            ("GET", r"/v1/invoiceitems", "_list_invoice_items"),
            ("GET", r"/v1/invoiceitems/(?P<id>[^/]+)", "_retrieve_invoice_item"),
            ("POST", r"/v1/invoices", "_create_invoice"),
            ("GET", r"/v1/invoices", "_list_invoices"),
            ("GET", r"/v1/invoices/search", "_search_invoices"),
            ("GET", r"/v1/invoices/(?P<id>[^/]+)", "_retrieve_invoice"),
            ("GET", r"/v1/invoices/(?P<id>[^/]+)/lines", "_list_invoice_lines"),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/finalize", "_finalize_invoice"),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/pay", "_pay_invoice"),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/void", "_void_invoice"),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/mark_uncollectible", "_mark_uncollectible"),
            ("GET", r"/v1/events", "_list_events"),
            ("GET", r"/v1/events/(?P<id>[^/]+)", "_retrieve_event"),
        ]
    ]

    def _route(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        for route_method, pattern, handler in self._ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return getattr(self, handler)(params, **match.groupdict())
        raise StripeApiError(404, _UNRECOGNISED.format(method=method, path=path), stored=False)

    # customers

    def _create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, {"name", "email", "description", "metadata", "preferred_locales"})
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(self.clock()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": params.get("description"),
            "email": params.get("email"),
            "invoice_prefix": secrets.token_hex(4).upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": _metadata(params),
            "name": params.get("name"),
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": list(params.get("preferred_locales") or []),
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self._customers[customer["id"]] = customer
        self._emit_locked("customer.created", customer)
        return copy.deepcopy(customer)

    def _get_customer(self, customer_id: str, param: str = "id") -> dict[str, Any]:
        customer = self._customers.get(customer_id)
        if customer is None:
            raise _no_such("customer", customer_id, param)
        return customer

    def _retrieve_customer(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return copy.deepcopy(self._get_customer(id))

    def _update_customer(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, {"name", "email", "description", "metadata", "preferred_locales"})
        customer = self._get_customer(id)
        previous = copy.deepcopy(customer)
        for name in ("name", "email", "description"):
            if name in params:
                customer[name] = params[name] or None
        if "preferred_locales" in params:
            customer["preferred_locales"] = list(params["preferred_locales"] or [])
        customer["metadata"] = _metadata(params, customer["metadata"])
        changed = {k: v for k, v in previous.items() if customer[k] != v}
        self._emit_locked("customer.updated", customer, previous_attributes=changed)
        return copy.deepcopy(customer)

    def _list_customers(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, {"email", "limit", "starting_after"})
        found = [
            c
            for c in self._customers.values()
            if "email" not in params or c["email"] == params["email"]
        ]
        return self._page(found, params, "/v1/customers")

    def _search_customers(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._search(self._customers.values(), params, "/v1/customers/search")

    # invoice items

    def _create_invoice_item(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(
            params,
            {
                "customer",
                "amount",
                "currency",
                "description",
                "invoice",
                "metadata",
                "period",
                "discountable",
            },
        )
        if "customer" not in params:
            raise _missing("customer")
        customer = self._get_customer(params["customer"], "customer")
        amount = _integer(params, "amount", required=True)
        currency = _currency(params)
        if currency is None:
            raise _missing("currency")
        invoice = None
        if params.get("invoice"):
            invoice = self._get_invoice(params["invoice"], "invoice")
            if invoice["customer"] != customer["id"]:
                raise StripeApiError(
                    400,
                    f"The invoice {invoice['id']} belongs to customer {invoice['customer']}, "
                    f"not {customer['id']}.",
                    param="invoice",
                )
            if invoice["status"] != "draft":
                raise StripeApiError(
                    400,
                    f"You can only add invoice items to draft invoices; {invoice['id']} is "
                    f"{invoice['status']}.",
                    code="invoice_not_editable",
                    param="invoice",
                )
            if invoice["currency"] != currency:
                raise StripeApiError(
                    400,
                    f"The currency of this invoice item ({currency}) must match the currency "
                    f"of the invoice ({invoice['currency']}).",
                    param="currency",
                )
        now = int(self.clock())
        period = params.get("period") or {}
        item = {
            "id": _new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer["id"],
            "date": now,
            "description": params.get("description"),
            "discountable": _boolean(params, "discountable", True),
            "invoice": invoice["id"] if invoice else None,
            "livemode": False,
            "metadata": _metadata(params),
            "period": {
                "start": int(period.get("start", now)),
                "end": int(period.get("end", now)),
            },
            "proration": False,
            "quantity": 1,
            "test_clock": None,
        }
        self._invoice_items[item["id"]] = item
        if invoice is not None:
            invoice["_items"].append(item["id"])
        self._emit_locked("invoiceitem.created", item)
        return copy.deepcopy(item)

    def _retrieve_invoice_item(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        item = self._invoice_items.get(id)
        if item is None:
            raise _no_such("invoiceitem", id)
        return copy.deepcopy(item)

    def _list_invoice_items(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, {"customer", "invoice", "limit", "starting_after"})
        found = [
            i
            for i in self._invoice_items.values()
            if all(
                name not in params or i[name] == params[name] for name in ("customer", "invoice")
            )
        ]
        return self._page(found, params, "/v1/invoiceitems")

    # invoices

    def _create_invoice(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(
            params,
            {
                "customer",
                "auto_advance",
                "collection_method",
                "currency",
                "days_until_due",
                "due_date",
                "description",
                "metadata",
                "pending_invoice_items_behavior",
            },
        )
        if "customer" not in params:
            raise _missing("customer")
        customer = self._get_customer(params["customer"], "customer")
        method = params.get("collection_method", "charge_automatically")
        if method not in ("charge_automatically", "send_invoice"):
            raise StripeApiError(
                400,
                f"Invalid collection_method: must be one of charge_automatically or "
                f"send_invoice, got {method!r}",
                code="parameter_invalid_string",
                param="collection_method",
                stored=False,
            )
        days_until_due = _integer(params, "days_until_due")
        due_date = _integer(params, "due_date")
        if method == "send_invoice" and days_until_due is None and due_date is None:
            raise StripeApiError(
                400,
                "Invoices with collection_method=send_invoice need days_until_due or due_date.",
                param="days_until_due",
            )
        if method == "charge_automatically" and (days_until_due or due_date):
            raise StripeApiError(
                400,
                "days_until_due and due_date can only be set when collection_method is "
                "send_invoice.",
                param="days_until_due",
            )
        invoice = {
            "id": _new_id("in"),
            "object": "invoice",
            "account_country": "DE",
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": _boolean(params, "auto_advance", False),
            "collection_method": method,
            "created": int(self.clock()),
            "currency": _currency(params) or customer["currency"] or "eur",
            "customer": customer["id"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "description": params.get("description"),
            "due_date": due_date,
            "effective_at": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "last_finalization_error": None,
            "livemode": False,
            "metadata": _metadata(params),
            "number": None,
            "period_end": int(self.clock()),
            "period_start": int(self.clock()),
            "status": "draft",
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": 0,
            "total": 0,
            "_days_until_due": days_until_due,
            "_items": [],
        }
        self._invoices[invoice["id"]] = invoice
        self._emit_locked("invoice.created", self._render_invoice(invoice))
        return self._render_invoice(invoice)

    def _get_invoice(self, invoice_id: str, param: str = "id") -> dict[str, Any]:
        invoice = self._invoices.get(invoice_id)
        if invoice is None:
            raise _no_such("invoice", invoice_id, param)
        return invoice

    def _render_invoice(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """The invoice as the API shows it: totals from its items, `lines` embedded."""
        rendered = {k: copy.deepcopy(v) for k, v in invoice.items() if not k.startswith("_")}
        lines = self._lines(invoice)
        total = sum(line["amount"] for line in lines)
        rendered["subtotal"] = rendered["total"] = total
        if invoice["status"] == "draft":
            rendered["amount_due"] = max(total, 0)
        rendered["amount_remaining"] = max(rendered["amount_due"] - rendered["amount_paid"], 0)
        rendered["lines"] = {
            "object": "list",
            "data": lines[:10],
            "has_more": len(lines) > 10,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice['id']}/lines",
        }
        return rendered

    def _lines(self, invoice: dict[str, Any]) -> list[dict[str, Any]]:
        lines = []
        for item_id in invoice["_items"]:
            item = self._invoice_items[item_id]
            lines.append(
                {
                    "id": "il_" + item_id.removeprefix("ii_"),
                    "object": "line_item",
                    "amount": item["amount"],
                    "currency": item["currency"],
                    "description": item["description"],
                    "discountable": item["discountable"],
                    "invoice": invoice["id"],
                    "livemode": False,
                    "metadata": copy.deepcopy(item["metadata"]),
                    "parent": {
                        "type": "invoice_item_details",
                        "invoice_item_details": {
                            "invoice_item": item_id,
                            "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": None,
                        },
                        "subscription_item_details": None,
                    },
                    "period": copy.deepcopy(item["period"]),
                    "quantity": 1,
                }
            )
        return lines

    def _retrieve_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        return self._render_invoice(self._get_invoice(id))

    def _list_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, {"customer", "status", "collection_method", "limit", "starting_after"})
        found = [
            self._render_invoice(i)
            for i in self._invoices.values()
            if all(
                name not in params or i[name] == params[name]
                for name in ("customer", "status", "collection_method")
            )
        ]
        return self._page(found, params, "/v1/invoices")

    def _search_invoices(self, params: dict[str, Any]) -> dict[str, Any]:
        rendered = [self._render_invoice(i) for i in self._invoices.values()]
        return self._search(rendered, params, "/v1/invoices/search")

    def _list_invoice_lines(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, {"limit", "starting_after"})
        lines = self._lines(self._get_invoice(id))
        # Lines come in the order they were added, unlike top-level lists (newest first).
        return self._page(lines, params, f"/v1/invoices/{id}/lines", newest_first=False)

    def _require_status(self, invoice: dict[str, Any], allowed: set[str], action: str) -> None:
        if invoice["status"] not in allowed:
            raise StripeApiError(
                400,
                f"You can only {action} an invoice that is {' or '.join(sorted(allowed))}; "
                f"{invoice['id']} is {invoice['status']}.",
                code="invoice_unexpected_state" if invoice["status"] != "draft" else None,
            )

    def _finalize_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, {"auto_advance"})
        invoice = self._get_invoice(id)
        if invoice["status"] != "draft":
            raise StripeApiError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_unexpected_state",
            )
        if "auto_advance" in params:
            invoice["auto_advance"] = _boolean(params, "auto_advance", False)
        customer = self._customers[invoice["customer"]]
        now = int(self.clock())
        invoice["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
        customer["next_invoice_sequence"] += 1
        invoice["status"] = "open"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["effective_at"] = now
        invoice["amount_due"] = max(sum(line["amount"] for line in self._lines(invoice)), 0)
        if invoice["collection_method"] == "send_invoice" and invoice["due_date"] is None:
            invoice["due_date"] = now + 86400 * (invoice["_days_until_due"] or 0)
        secret = secrets.token_urlsafe(24)
        invoice["hosted_invoice_url"] = f"{self.url}/hosted/invoices/{id}/{secret}"
        invoice["invoice_pdf"] = f"{self.url}/hosted/invoices/{id}/{secret}/pdf"
        self._emit_locked("invoice.finalized", self._render_invoice(invoice))
        if invoice["amount_due"] == 0:
            # Stripe marks an invoice with nothing to pay as paid when it is finalized.
            self._mark_paid(invoice)
        return self._render_invoice(invoice)

    def _mark_paid(self, invoice: dict[str, Any]) -> None:
        invoice["status"] = "paid"
        invoice["amount_paid"] = invoice["amount_due"]
        invoice["attempted"] = True
        invoice["status_transitions"]["paid_at"] = int(self.clock())
        rendered = self._render_invoice(invoice)
        self._emit_locked("invoice.payment_succeeded", rendered)
        self._emit_locked("invoice.paid", rendered)

    def _pay_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, {"paid_out_of_band", "payment_method", "source"})
        invoice = self._get_invoice(id)
        self._require_status(invoice, {"open"}, "pay")
        out_of_band = _boolean(params, "paid_out_of_band", False)
        if not out_of_band and invoice["customer"] in self._declining:
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            self._emit_locked("invoice.payment_failed", self._render_invoice(invoice))
            raise StripeApiError(
                402,
                "Your card was declined.",
                type="card_error",
                code="card_declined",
                extra={"decline_code": "generic_decline"},
            )
        self._mark_paid(invoice)
        return self._render_invoice(invoice)

    def _void_invoice(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, set())
        invoice = self._get_invoice(id)
        self._require_status(invoice, {"open", "uncollectible"}, "void")
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = int(self.clock())
        self._emit_locked("invoice.voided", self._render_invoice(invoice))
        return self._render_invoice(invoice)

    def _mark_uncollectible(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        _check_known(params, set())
        invoice = self._get_invoice(id)
        self._require_status(invoice, {"open"}, "mark uncollectible")
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = int(self.clock())
        self._emit_locked("invoice.marked_uncollectible", self._render_invoice(invoice))
        return self._render_invoice(invoice)

    # events

    def _emit_locked(
        self,
        event_type: str,
        obj: dict[str, Any],
        *,
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous_attributes:
            data["previous_attributes"] = copy.deepcopy(previous_attributes)
        event = {
            "id": _new_id("evt", 24),
            "object": "event",
            "api_version": self._api_version,
            "created": int(self.clock()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": dict(self._request_context),
            "type": event_type,
        }
        self._events[event["id"]] = event
        return event

    def _retrieve_event(self, params: dict[str, Any], id: str) -> dict[str, Any]:
        event = self._events.get(id)
        if event is None:
            raise _no_such("event", id)
        return copy.deepcopy(event)

    def _list_events(self, params: dict[str, Any]) -> dict[str, Any]:
        _check_known(params, {"type", "limit", "starting_after"})
        found = [e for e in self._events.values() if params.get("type") in (None, e["type"])]
        return self._page(copy.deepcopy(found), params, "/v1/events")

    # lists and search

    def _page(
        self,
        objects: list[dict[str, Any]] | Any,
        params: dict[str, Any],
        url: str,
        *,
        newest_first: bool = True,
    ) -> dict[str, Any]:
        ordered = list(objects)
        if newest_first:
            ordered.reverse()
        limit = _integer(params, "limit") or 10
        if not 1 <= limit <= 100:
            raise StripeApiError(
                400,
                "Invalid limit: must be between 1 and 100",
                param="limit",
                stored=False,
            )
        start = 0
        if params.get("starting_after"):
            ids = [o["id"] for o in ordered]
            if params["starting_after"] not in ids:
                raise _no_such("object", params["starting_after"], "starting_after")
            start = ids.index(params["starting_after"]) + 1
        page = ordered[start : start + limit]
        return {
            "object": "list",
            "data": copy.deepcopy(page),
            "has_more": start + limit < len(ordered),
            "url": url,
        }

    def _search(self, objects: Any, params: dict[str, Any], url: str) -> dict[str, Any]:
        _check_known(params, {"query", "limit", "page"})
        if not params.get("query"):
            raise _missing("query")
        clauses = _parse_search(params["query"])
        found = [o for o in objects if _matches(o, clauses)] if self.index_searches else []
        found.reverse()
        limit = _integer(params, "limit") or 10
        offset = int(params.get("page") or 0)
        page = found[offset : offset + limit]
        more = offset + limit < len(found)
        return {
            "object": "search_result",
            "data": copy.deepcopy(page),
            "has_more": more,
            "next_page": str(offset + limit) if more else None,
            "url": url,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeStripe

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the library's requests session expects
    # Headers and body leave in one write (flushed after each request): two small writes
    # would meet the client's delayed ACK and cost 40 ms a request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is `FakeStripe.requests`

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = decode_form(body if method == "POST" else url.query)
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.fake._handle(method, url.path, params, headers)
        if answer.status == DROP:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        payload = json.dumps(answer.body, indent=2).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
