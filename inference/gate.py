"""Policy enforcement on an enrolled node: the state the decision needs, the decision for each
request, its consequences, and the offload to the region's accelerator pool.

`inference/server.py` asks `PolicyGate.admit` before it serves an inference request. The gate
builds the node's state (region and class from the enrollment; temperature and its trend from
a one-second ticker reading the sensors or the console's simulation; queue depth; what a
request of each model costs this node to serve), runs the pure decision of
`inference/policy.py` against the active bundle (`inference/bundle_store.py`), and applies
what the decision does not: the tenant's rate limit (429), the spend reservation of the
session (reserved at admission, settled when the answer is known, so concurrent requests of
a session cannot overshoot its cap by more than one price), decision logs and metrics.

An offloaded request is forwarded over OIP v2 to a node of the first pool its route allows
that answers: the node is picked by the session (rendezvous hashing), so a session stays on
one pool node; the tenant's sensitive `parameters` are replaced by keyed HMAC tokens before
the body leaves this node; the pool node serves it (one hop, never further) and is the one
that bills it — this node records the forward as telemetry only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from inference import protocol
from inference.bundle_store import BundleStore
from inference.enforcement import (
    DecisionSampler,
    RateLimiter,
    SimulatedThermometer,
    SpendLedger,
    ThermalTrend,
    Tokeniser,
    cost_per_1000,
    pick_pool_node,
)
from inference.metrics import AgentMetrics
from inference.policy import RETRY_AFTER_S, Decision, NodeState, Request, decide

log = logging.getLogger(__name__)

# A node from another region forwarded this request: serve it or refuse it, never send it on.
FORWARDED_BY = b"x-outpost-forwarded-by"
FORWARD_AUTH = protocol.FORWARD_AUTH_HEADER.encode()
# Why the node that forwarded it offloaded it (protocol.OFFLOAD_REASONS): the usage record of
# the pool node, which bills the request, carries it.
OFFLOAD_REASON = protocol.OFFLOAD_REASON_HEADER.encode()
_OFFLOAD_REASONS = frozenset(protocol.OFFLOAD_REASONS)
REQUEST_ID = b"x-request-id"
SESSION_ID = b"x-session-id"
DEFAULT_QUEUE_LIMIT = 64
# A grade for a model the bundle does not grade (a node's own --models file): priced as the
# smallest, since nothing says it is more.
DEFAULT_GRADE = "tiny"
FORWARD_TIMEOUT_S = 30.0
TICK_S = 1.0
# Headers a forward passes on (ASGI names); the rest stays here.
_PASSED_ON = (b"content-type", b"inference-header-content-length", b"authorization")


@dataclass(slots=True)
class Admission:
    """What the gate decided for one request, and what it must settle when it is answered."""

    decision: Decision
    request_id: str
    tenant: str | None
    model: str
    session: str | None
    forwarded: bool
    # When it was decided (wall clock): the decision log's time.
    at: float = 0.0
    currency: str | None = None
    reservation: object | None = None
    sensitive: frozenset[str] = frozenset()
    queue_depth: int | None = None
    # The X-Outpost-Cost value, when the request has a price (PolicyGate.cost_header).
    cost: bytes | None = None
    # The model's grade by the bundle (it prices the request and goes on its usage record).
    grade: str = DEFAULT_GRADE
    # Forwarded here: why the first node offloaded it, if it said so with a known reason.
    offload_reason: str | None = None
    # The tenant's add-ons let it send personalisation signals (PolicyView.signals_allowed).
    signals_allowed: bool = True

    def headers(self) -> list[tuple[bytes, bytes]]:
        """X-Outpost-Cost and X-Request-Id for the answer (served-by is added by the caller)."""
        headers = [(b"x-request-id", self.request_id.encode())]
        if self.cost is not None:
            headers.append((b"x-outpost-cost", self.cost))
        if self.decision.action == "offload":
            headers.append((b"x-outpost-offload-reason", self.decision.rule.encode()))
        return headers


@dataclass(slots=True)
class Forwarded:
    status: int
    body: bytes
    content_type: bytes
    headers: list[tuple[bytes, bytes]]
    target: str | None
    run_s: float  # the pool node's time in session.run, as near as its headers tell


class PolicyGate:
    def __init__(
        self,
        bundles: BundleStore,
        metrics: AgentMetrics,
        *,
        queue_depth: Callable[[], int],
        run_seconds: Callable[[], dict[str, float]],
        tokeniser: Tokeniser | None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        client: httpx.AsyncClient | None = None,
        read_sensor: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundles = bundles
        self.metrics = metrics
        self.queue_depth = queue_depth
        # Model name -> its measured seconds per batch-1 run on this node (repository).
        self.run_seconds = run_seconds
        self.tokeniser = tokeniser
        self.queue_limit = queue_limit
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(FORWARD_TIMEOUT_S))
        self.read_sensor = read_sensor
        self.clock = clock
        # Known once the node has an identity (ConsoleLink.bind_identity).
        self.node_uid: str | None = None
        self.region: str | None = None
        self.node_class: str | None = None
        self.ledger = SpendLedger()
        self.limiter = RateLimiter()
        self.sampler = DecisionSampler()
        self.trend = ThermalTrend()
        self.thermometer = SimulatedThermometer()
        self.temperature_c: float | None = None
        self.temperature_simulated = False
        # Request ids for requests that bring none: unique per process start, and cheap (a
        # counter, not a random draw per request).
        self._id_prefix = secrets.token_hex(4)
        self._ids = itertools.count(1)
        # A price's header text, by price: formatting a Decimal costs more than the lookup.
        self._cost_text: dict[tuple[Decimal, str], bytes] = {}
        # Model name -> {grade: cost per 1,000 here}, refreshed by the ticker.
        self.model_costs: dict[str, dict[str, Decimal]] = {}
        self._empty_costs: dict[str, Decimal] = {}

    def bind_identity(self, identity: protocol.EnrollResponse) -> None:
        self.node_uid = identity.node_uid
        self.region = identity.region
        self.node_class = identity.node_class

    # --- the node's state, refreshed every second --------------------------------------------

    async def run_ticker(self) -> None:
        while True:
            reading = None
            if not self.thermometer.active and self.read_sensor is not None:
                reading = await asyncio.to_thread(self.read_sensor)
            self.tick(reading)
            await asyncio.sleep(TICK_S)

    def tick(self, sensor_c: float | None, now: float | None = None) -> None:
        """Take a temperature reading (the simulation's while one runs, else the sensor's)
        and refresh what serving each model costs here."""
        now = self.clock() if now is None else now
        simulated = self.thermometer.read(now)
        self.temperature_simulated = simulated is not None
        temperature = simulated if simulated is not None else sensor_c
        self.temperature_c = temperature
        if temperature is not None:
            self.trend.add(now, temperature)
        view = self.bundles.view
        hourly = view.hourly_costs.get(self.node_class or "") if view is not None else None
        costs: dict[str, dict[str, Decimal]] = {}
        if hourly is not None:
            for name, seconds in self.run_seconds().items():
                grade = view.grades.get(name, DEFAULT_GRADE)
                costs[name] = {grade: cost_per_1000(hourly, seconds)}
        self.model_costs = costs

    def simulate(self, target_c: float | None) -> None:
        """The console's simulated temperature for this node (None: back to the sensors,
        after cooling down to ambient)."""
        if target_c != self.thermometer.target:
            self.thermometer.set_target(target_c, self.clock())

    def knows(self, model: str) -> bool:
        """The console's catalogue has the model (the bundle grades it): it may be served
        elsewhere in the region even when this node lacks it."""
        view = self.bundles.view
        return view is not None and model in view.grades

    # --- admission ------------------------------------------------------------------------

    def admit(
        self, tenant: str | None, model: str, local: bool, headers: list[tuple[bytes, bytes]]
    ) -> Admission:
        """The decision for one request; reserves its price for the session when served."""
        request_id = session = reason = forwarder = forward_auth = None
        forwarded = False
        for key, value in headers:
            if key == REQUEST_ID:
                request_id = value.decode("latin-1")[:100]
            elif key == SESSION_ID:
                session = value.decode("latin-1")[:200]
            elif key == FORWARDED_BY:
                forwarded = True
                forwarder = value.decode("latin-1")
            elif key == OFFLOAD_REASON:
                reason = value.decode("latin-1")
            elif key == FORWARD_AUTH:
                forward_auth = value.decode("latin-1")
        if request_id is None:
            request_id = f"{self._id_prefix}-{next(self._ids):x}"
        now = self.clock()
        admission = Admission(_NO_DECISION, request_id, tenant, model, session, forwarded, now)
        if forwarded and reason in _OFFLOAD_REASONS:
            admission.offload_reason = reason
        view = self.bundles.view
        if view is None or self.region is None:
            admission.decision = _refusal(
                503,
                "no_policy",
                "this node has no policy bundle yet; it fetches one from its console",
                retry=True,
            )
            return admission
        if (
            forwarded
            and view.forward_key is not None
            and not (
                forward_auth is not None
                and request_id is not None
                and protocol.forward_auth_valid(
                    view.forward_key, forwarder or "", request_id, forward_auth, now
                )
            )
        ):
            # Only a node of the fleet can forward (billed regional, no rate limit): a
            # client that says it is one is not served.
            admission.forwarded = False
            admission.decision = Decision(
                "refuse",
                403,
                "forward_unauthenticated",
                "this request says another node forwarded it, without that node's proof",
            )
            return admission
        if self.bundles.expired(now):
            admission.decision = _refusal(
                503,
                "policy_expired",
                f"this node's policy bundle {view.revision} has expired "
                "and its console has not sent a newer one",
                retry=True,
            )
            return admission
        rules = view.tenants.get(tenant) if tenant is not None else None
        if rules is not None:
            admission.currency = rules.currency
            admission.sensitive = view.sensitive[tenant]
            admission.signals_allowed = view.signals_allowed[tenant]
            if not forwarded and rules.rate_limit_per_s is not None:
                wait = self.limiter.check(tenant, rules.rate_limit_per_s)
                if wait is not None:
                    admission.decision = Decision(
                        "refuse",
                        429,
                        "rate_limit",
                        f"{tenant} may send {rules.rate_limit_per_s} requests per second to "
                        "this node; slow down",
                        retry_after_s=max(1, math.ceil(wait)),
                    )
                    return admission
        admission.grade = grade = view.grades.get(model, DEFAULT_GRADE)
        spent = (
            self.ledger.spent(tenant, session)
            if session is not None and tenant is not None
            else Decimal(0)
        )
        admission.queue_depth = depth = self.queue_depth()
        state = NodeState(
            region=self.region,
            node_class=self.node_class or "",
            temperature_c=self.temperature_c,
            temperature_slope=self.trend.slope(),
            queue_depth=depth,
            queue_limit=self.queue_limit,
            cost_per_1000=self.model_costs.get(model, self._empty_costs),
            bundle_age_s=self.bundles.age_s(now),
        )
        decision = decide(
            view,
            state,
            Request(
                tenant=tenant or "",
                grade=grade,
                local=local,
                session_spent=spent,
                forwarded=forwarded,
            ),
        )
        admission.decision = decision
        price = decision.price
        if decision.action == "refuse" or price is None:
            return admission  # a refusal costs nothing, and says its price in its reason
        if admission.currency is not None:
            admission.cost = self._cost(price, admission.currency)
        if session is not None and tenant is not None:
            admission.reservation = self.ledger.reserve(tenant, session, price)
        return admission

    def _cost(self, price: Decimal, currency: str) -> bytes:
        key = (price, currency)
        text = self._cost_text.get(key)
        if text is None:
            if len(self._cost_text) > 1024:  # prices change with bundles: keep it small
                self._cost_text.clear()
            text = self._cost_text[key] = f"{_plain(price)} {currency}".encode()
        return text

    def settle(self, admission: Admission, status: int, *, target: str | None = None) -> None:
        """The answer is known: charge the session's reservation if it was served, release it
        if not; count and sample the decision."""
        if admission.reservation is not None:
            self.ledger.settle(admission.reservation, charged=status < 400)
        decision = admission.decision
        key = (decision.action, decision.rule)
        self.metrics.decisions[key] = self.metrics.decisions.get(key, 0) + 1
        if admission.forwarded:  # the second hop of an offload: always logged, as the first
            self.sampler.keep(self._record(admission, status, target))
        elif self.sampler.wants(decision.action):
            self.sampler.record(self._record(admission, status, target))

    def _record(self, admission: Admission, status: int, target: str | None):
        decision = admission.decision
        served = None
        if status < 400:
            served = "regional" if decision.action == "offload" or admission.forwarded else "local"
        return protocol.DecisionRecord(
            request_id=admission.request_id,
            at=datetime.fromtimestamp(admission.at, UTC),
            tenant=admission.tenant,
            model=admission.model[:200],
            action=decision.action,
            rule=decision.rule,
            reason=decision.reason[:500],
            status=status,
            served_by=served,
            target=target,
            bundle_revision=self.bundles.revision,
            price=_plain(decision.price) if decision.price is not None else None,
            currency=admission.currency if decision.price is not None else None,
            temperature_c=self.temperature_c,
            queue_depth=admission.queue_depth,
        )

    # --- offload ----------------------------------------------------------------------------

    async def forward(
        self, admission: Admission, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Forwarded:
        """Send the request to the first pool node that answers, in the order of the route's
        pools; a 503 answer if none does."""
        view = self.bundles.view
        passed = {k.decode(): v.decode("latin-1") for k, v in headers if k in _PASSED_ON}
        json_length = passed.get("inference-header-content-length")
        if admission.sensitive and admission.tenant is not None and self.tokeniser is None:
            # A node started with --no-tokenisation never lets a tenant's sensitive fields
            # leave it in clear: it refuses the offload (compliance flags such nodes).
            admission.decision = _refusal(
                503,
                "tokenisation_off",
                f"{admission.decision.rule}: this node cannot serve it and does not tokenise "
                "sensitive fields, so it does not offload them",
                retry=True,
            )
            return Forwarded(503, b"", b"application/json", [], None, 0.0)
        if admission.sensitive and admission.tenant is not None:
            body, new_length = self.tokeniser.rewrite_infer_body(
                body,
                int(json_length) if json_length and json_length.isdigit() else None,
                admission.sensitive,
                admission.tenant,
            )
            if new_length is not None:
                passed["inference-header-content-length"] = str(new_length)
        passed["x-outpost-forwarded-by"] = self.node_uid or "unknown"
        passed["x-request-id"] = admission.request_id
        if view is not None and view.forward_key is not None:
            passed[protocol.FORWARD_AUTH_HEADER] = protocol.forward_auth(
                view.forward_key,
                passed["x-outpost-forwarded-by"],
                admission.request_id,
                self.clock(),
            )
        # The pool node bills the request, as regional, with this reason (inference/usage.py).
        passed[protocol.OFFLOAD_REASON_HEADER] = admission.decision.rule
        if admission.session is not None:
            passed["x-session-id"] = admission.session
        failures = []
        for region in admission.decision.pools:
            nodes = list(view.pools.get(region, ())) if view is not None else []
            while nodes:
                node = pick_pool_node(nodes, admission.session, admission.request_id)
                nodes.remove(node)
                started = time.perf_counter()
                try:
                    response = await self.client.post(
                        node.endpoint.rstrip("/") + path, content=body, headers=passed
                    )
                except httpx.HTTPError as exc:
                    failures.append(f"{node.uid}: {type(exc).__name__}")
                    continue
                if response.status_code in (502, 503, 504):
                    failures.append(f"{node.uid}: HTTP {response.status_code}")
                    continue
                elapsed = time.perf_counter() - started
                return Forwarded(
                    response.status_code,
                    response.content,
                    response.headers.get("content-type", "application/json").encode("latin-1"),
                    _relayed(response.headers),
                    node.uid,
                    max(0.0, elapsed - _overhead_s(response.headers)),
                )
        reason = "; ".join(failures) or "the pools have no node"
        log.warning("offload of %s failed: %s", admission.request_id, reason)
        admission.decision = _refusal(
            503,
            "pool_unreachable",
            f"{admission.decision.rule}: this node cannot serve it and no pool node answered "
            f"({reason})",
            retry=True,
        )
        return Forwarded(503, b"", b"application/json", [], None, 0.0)


_NO_DECISION = Decision("refuse", 500, "none", "not decided")


def _refusal(status: int, rule: str, reason: str, *, retry: bool = False) -> Decision:
    return Decision("refuse", status, rule, reason, retry_after_s=RETRY_AFTER_S if retry else None)


def _plain(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


def _relayed(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """The pool's headers the answer keeps: the binary extension's JSON length and the
    Retry-After of a refusal (the pool's own X-Outpost-* are replaced by this node's)."""
    kept = []
    for name in ("inference-header-content-length", "retry-after"):
        value = headers.get(name)
        if value is not None:
            kept.append((name.encode(), value.encode("latin-1")))
    return kept


def _overhead_s(headers: httpx.Headers) -> float:
    try:
        return float(headers.get("x-outpost-overhead-ms", "0")) / 1000
    except ValueError:
        return 0.0
