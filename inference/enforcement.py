"""The node's policy-enforcement building blocks: spend caps, rate limits, tokenisation of
sensitive inputs, the thermal trend (real or simulated), decision logs, session-aware pool
routing and the cost of serving.

`inference/policy.py` decides what to do with a request from plain data; the pieces here
hold the state that data comes from (what a session has spent, how hot the node is getting)
and carry the decision out (a token bucket, tokens in place of customer ids, the pool node a
session sticks to). They run on the agent's hot path, one asyncio event loop
(`inference/server.py`), so each call costs a few microseconds: plain dicts and `__slots__`,
no pydantic per request, bounded memory whatever the traffic. This module imports no Django.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import orjson

from inference import protocol

Clock = Callable[[], float]

_ZERO = Decimal(0)


# --- spend per session --------------------------------------------------------------------


class _Session:
    __slots__ = ("settled", "reserved", "touched")

    def __init__(self, touched: float) -> None:
        self.settled = _ZERO
        self.reserved = _ZERO
        self.touched = touched


class Reservation:
    """A price held against a session between admission and the answer. It keeps its
    session's entry, so settling works even after the ledger forgot the session."""

    __slots__ = ("tenant", "session", "amount", "pending", "_entry")

    def __init__(self, tenant: str, session: str, amount: Decimal, entry: _Session) -> None:
        self.tenant = tenant
        self.session = session
        self.amount = amount
        # True until settled: a second settle finds it False and does nothing.
        self.pending = True
        self._entry = entry

    def __repr__(self) -> str:
        state = "pending" if self.pending else "settled"
        return f"<Reservation {self.tenant}/{self.session} {self.amount} {state}>"


class SpendLedger:
    """What each session has spent, so a tenant's `max_spend_per_session` holds under
    concurrency.

    Checking the cap with what was *settled* would let every request in flight pass the same
    check: 64 concurrent requests could overshoot by 63 prices. So the price is reserved at
    admission and counted in `spent` at once, then settled (charged) or released (the request
    failed) when the answer is known. On the event loop the check (`policy.decide`, given
    `spent`) and `reserve` run with no await between them and are atomic; the lock is for
    the callers that are not on the loop (a settle from an executor thread, the console's
    simulators, tests) and costs ~0.1 µs uncontended, so the guarantee does not depend on
    who calls. `try_reserve` does the check and the reservation in one step.

    Memory is bounded: at most `max_sessions` sessions (the least recently used is
    forgotten) and none idle for longer than `idle_ttl_s`. A forgotten session starts again
    from zero: a cap per *session* is a guard against a runaway conversation, not a budget
    (the monthly budget is the console's, from billed usage).
    """

    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        idle_ttl_s: float = 3600.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.idle_ttl_s = idle_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently used first: every touch moves a session to the end, so the idle
        # ones are always at the front and forgetting them is a few pops.
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def spent(self, tenant: str, session: str) -> Decimal:
        """Settled plus reserved: what `policy.Request.session_spent` must be given."""
        with self._lock:
            entry = self._live((tenant, session), self._clock())
            return _ZERO if entry is None else entry.settled + entry.reserved

    def reserve(self, tenant: str, session: str, amount: Decimal) -> Reservation:
        """Hold `amount` for a request the caller has admitted against the cap."""
        if amount < 0:
            raise ValueError(f"a reservation cannot be negative ({amount})")
        with self._lock:
            return self._reserve((tenant, session), amount, self._clock())

    def try_reserve(
        self, tenant: str, session: str, amount: Decimal, cap: Decimal | None
    ) -> Reservation | None:
        """Reserve `amount` unless the session's spend would then pass `cap` (None: no cap);
        None when it would."""
        if amount < 0:
            raise ValueError(f"a reservation cannot be negative ({amount})")
        key = (tenant, session)
        with self._lock:
            now = self._clock()
            if cap is not None:
                entry = self._live(key, now)
                spent = _ZERO if entry is None else entry.settled + entry.reserved
                if spent + amount > cap:
                    return None
            return self._reserve(key, amount, now)

    def settle(self, reservation: Reservation, *, charged: bool) -> None:
        """Count a reservation as spent (`charged`) or give it back (the request failed or a
        later step refused it). Settling again does nothing, so every exit path of a
        request may settle without tracking whether another did."""
        with self._lock:
            if not reservation.pending:
                return
            reservation.pending = False
            entry = reservation._entry
            entry.reserved -= reservation.amount
            if charged:
                entry.settled += reservation.amount
            now = self._clock()
            entry.touched = now
            key = (reservation.tenant, reservation.session)
            # The session may have been forgotten meanwhile (or forgotten and started
            # again): only the ledger's current entry moves up the LRU order.
            if self._sessions.get(key) is entry:
                self._sessions.move_to_end(key)

    def _live(self, key: tuple[str, str], now: float) -> _Session | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        if now - entry.touched > self.idle_ttl_s:
            del self._sessions[key]
            return None
        entry.touched = now
        self._sessions.move_to_end(key)
        return entry

    def _reserve(self, key: tuple[str, str], amount: Decimal, now: float) -> Reservation:
        self._forget_idle(now)
        entry = self._live(key, now)
        if entry is None:
            entry = self._sessions[key] = _Session(now)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        entry.reserved += amount
        return Reservation(key[0], key[1], amount, entry)

    def _forget_idle(self, now: float) -> None:
        sessions = self._sessions
        while sessions:
            key, oldest = next(iter(sessions.items()))
            if now - oldest.touched <= self.idle_ttl_s:
                return
            del sessions[key]


# --- rate limits --------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RateLimiter:
    """A token bucket per tenant, for `TenantRules.rate_limit_per_s`.

    The bucket holds one second's worth of tokens, so a tenant idle for a second may send a
    burst of `rate_per_s` at once, and refills continuously rather than per whole second, so
    a steady sender at the limit is never refused for landing at the wrong instant. The
    answer to a refusal is the wait, not just "no", because a client told when to retry
    (429 + Retry-After) comes back then instead of hammering. The rate is read on every call,
    so a new bundle changes a tenant's limit at once (the bucket shrinks to the new size).

    At most `max_tenants` buckets are kept (least recently used forgotten: a forgotten
    tenant starts again with a full bucket, which is what an idle one would have anyway).
    Use from the event loop only.
    """

    def __init__(self, *, max_tenants: int = 10_000, clock: Clock = time.monotonic) -> None:
        if max_tenants < 1:
            raise ValueError("max_tenants must be at least 1")
        self.max_tenants = max_tenants
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, tenant: str, rate_per_s: int | None, now: float | None = None) -> float | None:
        """None when the request is admitted (it took a token), else the seconds until a
        token is there (answer 429 with Retry-After = ceil of it)."""
        if rate_per_s is None:
            return None
        if now is None:
            now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(tenant)
        if bucket is None:
            bucket = buckets[tenant] = _Bucket(float(rate_per_s), now)
            if len(buckets) > self.max_tenants:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(tenant)
            elapsed = now - bucket.at
            if elapsed > 0:
                bucket.tokens = min(float(rate_per_s), bucket.tokens + elapsed * rate_per_s)
                bucket.at = now
            elif bucket.tokens > rate_per_s:
                bucket.tokens = float(rate_per_s)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate_per_s


# --- tokenisation of sensitive inputs -----------------------------------------------------

TOKEN_PATTERN = re.compile(r"tok_[0-9a-f]{32}")
MIN_KEY_BYTES = 32
KEY_BYTES = 32


class Tokeniser:
    """Replaces the values of a tenant's `sensitive_fields` with keyed hashes before a
    request leaves the node (an offload to a regional pool).

    The token is deterministic (HMAC-SHA256 of tenant, field and the value's canonical JSON,
    under a key that never leaves the node), so the same customer id always gives the same
    token and the receiving side can still count, group and join on it; without the key it
    cannot be reversed or confirmed by hashing guesses. Tenant and field are in the hash, so
    the same value gives unrelated tokens for two tenants (no joins across customers) or two
    fields. The value is hashed as JSON, so "42" and 42 are different tokens, as they are
    different inputs to the model. A null is left as it is: it holds nothing to protect, and
    a token would make every missing value look like one shared customer.
    """

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"a tokenisation key is at least {MIN_KEY_BYTES} bytes, got {len(key)}"
            )
        # Keyed once, copied per token: a copy skips the key setup (~0.6 µs of ~2.5).
        self._keyed = hmac.new(bytes(key), digestmod=hashlib.sha256)

    def token(self, tenant: str, field: str, value: object) -> str:
        mac = self._keyed.copy()
        mac.update(f"{tenant}\x1f{field}\x1f".encode())
        mac.update(protocol.canonical_json(value))
        return "tok_" + mac.hexdigest()[:32]

    def scrub(self, parameters: dict, fields: Iterable[str], tenant: str) -> dict:
        """A copy of `parameters` with the sensitive fields tokenised. A value that is
        already a token stays as it is, so a request forwarded twice is not tokenised twice
        (the second node would otherwise hash the first one's token)."""
        scrubbed = self._scrubbed(parameters, fields, tenant)
        return dict(parameters) if scrubbed is None else scrubbed

    def rewrite_infer_body(
        self,
        body: bytes,
        json_length: int | None,
        fields: Iterable[str],
        tenant: str,
        *,
        doc: dict | None = None,
    ) -> tuple[bytes, int | None]:
        """The OIP v2 infer body to forward, with the sensitive fields of its top-level
        `parameters` tokenised, and its new JSON header length (None: all JSON).

        With the binary tensor extension the tensors follow the JSON header byte for byte,
        so only the header is rewritten and `Inference-Header-Content-Length` must change
        with it. When nothing changes the very same body is returned, not re-serialised: most
        requests carry no sensitive field and pay only the parse. A body that is not an
        infer request is returned as it is, for the receiving node to answer 400.
        `doc`, when the caller already parsed the JSON of this body, saves parsing it again
        (it is not modified).
        """
        fields = tuple(fields)
        if not fields:
            return body, json_length
        if json_length is not None and not 0 <= json_length <= len(body):
            return body, json_length
        if doc is None:
            header = body if json_length is None else memoryview(body)[:json_length]
            try:
                doc = orjson.loads(header)
            except orjson.JSONDecodeError:
                return body, json_length
        if not isinstance(doc, dict):
            return body, json_length
        parameters = doc.get("parameters")
        if not isinstance(parameters, dict):
            return body, json_length
        scrubbed = self._scrubbed(parameters, fields, tenant)
        if scrubbed is None:
            return body, json_length
        new_header = orjson.dumps({**doc, "parameters": scrubbed})
        if json_length is None:
            return new_header, None
        return b"".join((new_header, memoryview(body)[json_length:])), len(new_header)

    def _scrubbed(self, parameters: dict, fields: Iterable[str], tenant: str) -> dict | None:
        """The scrubbed copy, or None when no field needs a token (no copy made)."""
        scrubbed: dict | None = None
        for field in fields:
            value = parameters.get(field)
            if value is None or (isinstance(value, str) and TOKEN_PATTERN.fullmatch(value)):
                continue
            if scrubbed is None:
                scrubbed = dict(parameters)
            scrubbed[field] = self.token(tenant, field, value)
        return scrubbed


def load_or_create_key(path: Path) -> bytes:
    """The node's tokenisation key: tokens must stay the same across restarts (or joins on
    them break), so the key is created once and kept beside the node's identity, readable
    by the owner only. The new file is linked into place, never renamed over one, so two
    processes starting together agree on one key instead of each keeping its own."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        pass
    else:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"{path} holds {len(key)} bytes; a tokenisation key is at least "
                f"{MIN_KEY_BYTES}: restore it from a backup, or delete it to start new tokens"
            )
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    key = secrets.token_bytes(KEY_BYTES)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return load_or_create_key(path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return key


# --- temperature --------------------------------------------------------------------------


class ThermalTrend:
    """The last minute's temperature slope, for the predictive thermal rule of
    `inference/policy.py` (`NodeState.temperature_slope`): shedding best-effort traffic
    while the node heads for its envelope keeps it from crossing, where everything must go.

    A least-squares slope rather than first-to-last, so one noisy reading does not swing
    it. It is computed once per new sample and cached: readings come every few seconds,
    requests far more often.
    """

    __slots__ = ("window_s", "_samples", "_slope")

    def __init__(self, *, window_s: float = 60.0, max_samples: int = 240) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._slope: float | None = 0.0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, now: float, temperature_c: float) -> None:
        samples = self._samples
        samples.append((now, temperature_c))
        cutoff = now - self.window_s
        while samples[0][0] < cutoff:
            samples.popleft()
        self._slope = None

    @property
    def latest(self) -> float | None:
        return self._samples[-1][1] if self._samples else None

    def slope(self) -> float:
        """°C per second (positive: heating up); 0.0 until two readings apart in time."""
        if self._slope is None:
            self._slope = _least_squares_slope(self._samples)
        return self._slope


def _least_squares_slope(samples: Sequence[tuple[float, float]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread <= 0.0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in samples) / spread


class SimulatedThermometer:
    """An operator's simulated temperature for one node (`HeartbeatReply
    .simulated_temperature_c`), to demonstrate thermal offload on hardware that stays cool.

    A real node does not jump to a temperature: the reading moves toward the target at
    `rate_c_per_s`, so `ThermalTrend` sees a slope and the predictive rule sheds best-effort
    traffic before the envelope is crossed, as it would on a heating node. When the operator
    ends the simulation the reading cools back to `ambient_c` at the same rate, so traffic
    visibly returns step by step, and only then does `read` answer None (use the sensors):
    a jump back to a cool sensor would hide the recovery the demo is meant to show.
    """

    __slots__ = ("ambient_c", "rate_c_per_s", "_target", "_value", "_at")

    def __init__(self, *, ambient_c: float = 45.0, rate_c_per_s: float = 1.0) -> None:
        if rate_c_per_s <= 0:
            raise ValueError("rate_c_per_s must be positive")
        self.ambient_c = ambient_c
        self.rate_c_per_s = rate_c_per_s
        self._target: float | None = None
        self._value: float | None = None
        self._at = 0.0

    @property
    def active(self) -> bool:
        """True while the reading is simulated (heading for a target or cooling back)."""
        return self._value is not None

    @property
    def target(self) -> float | None:
        return self._target

    def set_target(self, target_c: float | None, now: float) -> None:
        if self._value is None:
            if target_c is None:
                return
            self._value, self._at = self.ambient_c, now
        else:
            self._advance(self._value, now)
        self._target = target_c
        if target_c is None and self._value == self.ambient_c:
            self._value = None

    def read(self, now: float) -> float | None:
        """The simulated temperature at `now`, or None when not simulating."""
        if self._value is not None:
            self._advance(self._value, now)
        return self._value

    def _advance(self, value: float, now: float) -> None:
        goal = self.ambient_c if self._target is None else self._target
        step = max(now - self._at, 0.0) * self.rate_c_per_s
        self._at = max(now, self._at)
        if value < goal:
            value = min(goal, value + step)
        elif value > goal:
            value = max(goal, value - step)
        # Cooled back with no target: the simulation is over, the sensors speak again.
        self._value = None if self._target is None and value == goal else value


# --- decision logs ------------------------------------------------------------------------


class DecisionSampler:
    """The routing decisions a node reports on its heartbeats (`HeartbeatReport.decisions`),
    so an operator can ask why a request was offloaded or refused.

    Every refusal and offload is kept (they are the ones asked about, and rare); local
    decisions are the bulk, so one in `local_every` is kept, by a counter rather than a
    random draw, so the share is exact and tests can predict it. Records wait, oldest first,
    until the console acknowledges the heartbeat that carried them; when it is away the
    oldest are dropped (`dropped` counts them): this is telemetry, not billing.

    Building a `DecisionRecord` costs ~5 µs, so the hot path asks `wants(action)` first and
    builds the record only when it will be kept; `record` then keeps what it is given.
    `record` alone (no `wants` before it) samples by itself. Use from the event loop only.
    """

    __slots__ = ("local_every", "dropped", "_pending", "_seen_local", "_granted")

    def __init__(
        self,
        *,
        local_every: int = protocol.DECISIONS_LOCAL_SAMPLE,
        max_pending: int = protocol.DECISIONS_MAX_PENDING,
    ) -> None:
        if local_every < 1:
            raise ValueError("local_every must be at least 1")
        self.local_every = local_every
        self.dropped = 0
        self._pending: deque[protocol.DecisionRecord] = deque(maxlen=max_pending)
        self._seen_local = 0
        # Local decisions `wants` said yes to whose records have not arrived yet.
        self._granted = 0

    def wants(self, action: str) -> bool:
        """Whether a decision with this action will be kept: build its record only if so."""
        if action != "local":
            return True
        if self._take_local():
            self._granted += 1
            return True
        return False

    def record(self, record: protocol.DecisionRecord) -> None:
        if record.action == "local":
            if self._granted:
                self._granted -= 1
            elif not self._take_local():
                return
        pending = self._pending
        if len(pending) == pending.maxlen:
            self.dropped += 1
        pending.append(record)

    def keep(self, record: protocol.DecisionRecord) -> None:
        """Keep a record whatever its action: a request another node offloaded here, so that
        a lookup by request id finds both hops."""
        pending = self._pending
        if len(pending) == pending.maxlen:
            self.dropped += 1
        pending.append(record)

    def pending(self) -> list[protocol.DecisionRecord]:
        """What the next heartbeat carries, oldest first."""
        return list(self._pending)

    def ack(self, records: Sequence[protocol.DecisionRecord]) -> None:
        """The console stored these records (the ones `pending` gave): forget them, and
        keep those recorded since. By identity: two decisions may be equal field for field."""
        sent = {id(record) for record in records}
        pending = self._pending
        while pending and id(pending[0]) in sent:
            pending.popleft()

    def _take_local(self) -> bool:
        self._seen_local += 1
        # The first local decision is kept, then every local_every-th after it.
        return (self._seen_local - 1) % self.local_every == 0


# --- pool routing -------------------------------------------------------------------------


def pick_pool_node(
    nodes: Sequence[protocol.PoolNode], session: str | None, request_id: str | None
) -> protocol.PoolNode:
    """The pool node an offloaded request goes to.

    Rendezvous (highest random weight) hashing on the session: a session keeps landing on
    the same pool node, whose caches (and the model's warm state) it benefits from, while
    the pool is unchanged; when a node leaves only its sessions move, and a new node takes
    about 1/n of them, unlike `hash % n` which moves nearly all. blake2b, not `hash()`,
    which Python salts per process: every node of a region must agree. Without a session
    the request id spreads the load; with neither, the first node (the console lists them
    in its preferred order).
    """
    if not nodes:
        raise ValueError("the pool has no nodes")
    key = session if session is not None else request_id
    if key is None or len(nodes) == 1:
        return nodes[0]
    prefix = key.encode() + b"\x1f"
    best = nodes[0]
    best_weight = -1
    for node in nodes:
        digest = hashlib.blake2b(prefix + node.uid.encode(), digest_size=8).digest()
        weight = int.from_bytes(digest, "big")
        if weight > best_weight or (weight == best_weight and node.uid < best.uid):
            best, best_weight = node, weight
    return best


# --- cost of serving ----------------------------------------------------------------------

_NANO = Decimal("0.000000001")


def cost_per_1000(hourly_cost: Decimal, seconds_per_inference: float) -> Decimal:
    """What serving 1,000 inferences costs this node: its class's hourly cost
    (`ClassThresholds.hourly_cost`) spread over the seconds they take, for the `cost` rule
    (`NodeState.cost_per_1000` against the class's ceiling). The measured time is a float;
    it goes through its repr so the Decimal is the number that was measured, not its
    binary expansion, and money stays Decimal."""
    if not math.isfinite(seconds_per_inference) or seconds_per_inference < 0:
        raise ValueError(f"seconds per inference must be finite and >= 0: {seconds_per_inference}")
    seconds = Decimal(repr(seconds_per_inference))
    return (hourly_cost * seconds * 1000 / 3600).quantize(_NANO, rounding=ROUND_HALF_UP)
