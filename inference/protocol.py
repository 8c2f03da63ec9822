"""The wire formats shared by the console and the node agent.

Both sides import these definitions, so they cannot disagree on a field: the console's
django-ninja endpoints take and return these pydantic models (they appear as-is in
`/api/v1/openapi.json`), and the agent builds and parses the same classes.

This module imports no Django (see the import-linter contracts in pyproject.toml).
The hot inference path does not use pydantic; it is for the control plane only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Annotated, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1

# Paths of the console's node-facing API, relative to the console's base URL.
ENROLL_PATH = "/api/v1/nodes/enroll"
HEARTBEAT_PATH = "/api/v1/nodes/heartbeat"
# A node asks for its next credential here (authenticated with its current one): see
# NodeCredential and HeartbeatReply.rotate_credential.
CREDENTIAL_PATH = "/api/v1/nodes/credential"

# How often a node reports unless the console says otherwise (seconds).
DEFAULT_HEARTBEAT_INTERVAL_S = 5


class WireModel(BaseModel):
    # Unknown fields are refused so that a typo on one side is an error, not silent data loss.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleMessage(WireModel):
    """What the console tells a node. Unknown fields are ignored here, so a console upgraded
    before its nodes (the supported order) can add fields without breaking older agents;
    what nodes send the console stays strict."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- enrollment -----------------------------------------------------------------------------


class EnrollRequest(WireModel):
    token: str = Field(min_length=8, max_length=200, description="One-time enrollment token")
    hostname: str = Field(min_length=1, max_length=255)
    endpoint: str = Field(
        max_length=500,
        description="Base URL where the node serves OIP v2, as the console should reach it",
    )
    agent_version: str = Field(max_length=50)


class EnrollResponse(ConsoleMessage):
    node_uid: str = Field(description="The node's permanent identity")
    name: str
    region: str = Field(description="Region code, e.g. eu-west")
    node_class: str = Field(description="nano, standard or accelerator")
    credential: str = Field(description="Bearer secret for node calls; shown once")
    console_public_key: str = Field(description="Ed25519 public key, base64 of the raw 32 bytes")
    heartbeat_interval_s: int


class NodeCredential(ConsoleMessage):
    """The node's next credential (POST CREDENTIAL_PATH), shown once. The console accepts it
    beside the current one until the node first authenticates with it; from then on only it.
    So a node that lost it before saving it (a crash) keeps working with the old one and asks
    again."""

    credential: str = Field(min_length=8, max_length=200, description="Bearer secret; shown once")


# --- heartbeat ------------------------------------------------------------------------------


# --- output summaries (drift telemetry) ---------------------------------------------------
#
# Each node summarises each version's outputs per minute: for a classifier, how many rows had
# each top class; otherwise, per output, the mean and a coarse histogram of the values over
# fixed bounds. Fixed bounds and class bins make windows from any node and minute add up, and
# let the console compare a version with its baseline (population stability index, fleet.drift).

DRIFT_WINDOW_S = 60
# Class indices 0..DRIFT_MAX_CLASSES-1 get a bin each; the last bin takes the rest (and
# negative labels).
DRIFT_MAX_CLASSES = 64
# Bin edges for values (a bin is [edge_i, edge_i+1)); below the first and from the last
# on are the two open bins, so a histogram has len(DRIFT_VALUE_EDGES) + 1 counts.
DRIFT_VALUE_EDGES = (
    -1000.0, -100.0, -10.0, -3.0, -1.0, -0.3, -0.1, -0.03, -0.01,
    0.0,
    0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0,
)  # fmt: skip
# At most this many outputs of one version are summarised, and this many windows wait for
# the console's acknowledgement (older ones are dropped: this is telemetry, not billing).
DRIFT_MAX_OUTPUTS = 4
DRIFT_MAX_PENDING = 15

Count = Annotated[int, Field(ge=0)]


class ValueSummary(WireModel):
    name: str = Field(max_length=200)
    mean: float
    histogram: list[Count] = Field(
        min_length=len(DRIFT_VALUE_EDGES) + 1, max_length=len(DRIFT_VALUE_EDGES) + 1
    )


class OutputWindow(WireModel):
    minute: AwareDatetime = Field(description="Start of the minute, UTC")
    rows: int = Field(ge=0, description="Predictions summarised (rows across requests)")
    # Exactly one of these: a classifier's top-class counts, or per-output value summaries.
    classes: list[Count] | None = Field(None, max_length=DRIFT_MAX_CLASSES + 1)
    values: list[ValueSummary] | None = Field(None, max_length=DRIFT_MAX_OUTPUTS)


class LoadedModel(WireModel):
    name: str = Field(max_length=200)
    version: str = Field(max_length=50)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ready: bool
    # Since the agent started, for this version: the console's rollout health gates compare
    # a new version's error rate and latency with the old one's from these.
    requests_total: int = Field(0, ge=0)
    errors_total: int = Field(0, ge=0)
    latency_p95_ms: float | None = Field(None, ge=0, description="Over the last minute")
    # The agent's running estimate of one batch-1 session.run of this version: the console
    # calibrates its node classes' speed factors from it (fleet.actions).
    run_ms_batch1: float | None = Field(None, ge=0)
    # Why a desired version is not served (download failed, sha256 mismatch, does not fit).
    problem: str | None = Field(None, max_length=500)
    # Completed one-minute summaries of this version's outputs not yet acknowledged by the
    # console (a 200 to the heartbeat acknowledges them); the console measures drift on them.
    outputs: list[OutputWindow] = Field(default_factory=list, max_length=DRIFT_MAX_PENDING)


# --- decision logs -----------------------------------------------------------------------------
#
# A node samples its routing decisions (every refusal and offload, one local decision in
# DECISIONS_LOCAL_SAMPLE) and reports them with the bundle revision that made them, so an
# operator can look up why a request id was offloaded or refused (fleet.DecisionLog).

DECISIONS_MAX_PENDING = 500
DECISIONS_LOCAL_SAMPLE = 20
DecisionAction = Literal["local", "offload", "refuse"]


class DecisionRecord(WireModel):
    request_id: str = Field(max_length=100)
    at: AwareDatetime
    tenant: str | None = Field(None, max_length=50)
    model: str = Field(max_length=200)
    action: DecisionAction
    rule: str = Field(max_length=40, description="The rule of inference/policy.py that decided")
    reason: str = Field(max_length=500)
    status: int = Field(ge=100, le=599)
    served_by: Literal["local", "regional"] | None = None
    # The pool node a request was offloaded to (its uid), if any.
    target: str | None = Field(None, max_length=40)
    bundle_revision: int | None = None
    price: str | None = Field(None, pattern=r"^\d{1,12}(\.\d{1,12})?$")
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    temperature_c: float | None = None
    queue_depth: int | None = Field(None, ge=0)


class HeartbeatReport(WireModel):
    """What a node says about itself, every few seconds."""

    node_uid: str
    agent_version: str = Field(max_length=50)
    sent_at: AwareDatetime
    uptime_s: float = Field(ge=0)
    models: list[LoadedModel] = Field(default_factory=list, max_length=1000)
    cpu_load: float = Field(ge=0, description="Load average over 1 min divided by cores")
    memory_pressure: float = Field(ge=0, le=1, description="Share of memory in use, 0..1")
    temperature_c: float | None = Field(default=None, description="Hottest sensor, if exposed")
    # True while the console simulates this node's temperature (HeartbeatReply
    # .simulated_temperature_c): temperature_c is then the simulation's, not a sensor's.
    temperature_simulated: bool = False
    queue_depth: int = Field(ge=0)
    requests_total: int = Field(ge=0, description="Inferences answered since start")
    errors_total: int = Field(ge=0, description="Inferences that failed since start")
    bundle_revision: int | None = Field(None, description="The policy bundle this node enforces")
    # Why the last bundle offered to the node was refused (tampered, expired, older…), if one
    # was since it activated its current one.
    bundle_problem: str | None = Field(None, max_length=500)
    # Sampled routing decisions not yet acknowledged by the console (a 200 acknowledges them).
    decisions: list[DecisionRecord] = Field(default_factory=list, max_length=DECISIONS_MAX_PENDING)
    # The node has a tokenisation key (inference/enforcement.py Tokeniser), so it replaces
    # tenants' sensitive fields by tokens before a request leaves it; and the tenants of its
    # enforced bundle that declared sensitive fields, which it therefore tokenises. Defaults
    # keep the heartbeats of agents that predate them valid (the compliance check reads them).
    tokenisation_active: bool = False
    tokenised_tenants: list[Annotated[str, Field(max_length=50)]] = Field(
        default_factory=list, max_length=10_000
    )


ARTIFACT_PATH = "/api/v1/nodes/artifacts/{sha256}"

_HISTOGRAM = Annotated[
    list[Count],
    Field(min_length=len(DRIFT_VALUE_EDGES) + 1, max_length=len(DRIFT_VALUE_EDGES) + 1),
]


class DriftReference(ConsoleMessage):
    """A version's reference outputs, merged (`inference.drift.Summary.to_json()`, the shape
    the console stores in ModelVersion.drift_reference["summary"]): the node compares its
    recent outputs with it for the `outpost_model_drift_psi` gauge."""

    kind: Literal["classes", "values"]
    rows: int = Field(ge=1)
    classes: list[Count] = Field(default_factory=list, max_length=DRIFT_MAX_CLASSES + 1)
    # output name -> (histogram, sum of means weighted by rows, rows)
    values: dict[Annotated[str, Field(max_length=200)], tuple[_HISTOGRAM, float, Count]] = Field(
        default_factory=dict, max_length=DRIFT_MAX_OUTPUTS
    )


class DesiredVersion(ConsoleMessage):
    """A model version the console wants the node to serve."""

    model: str = Field(description="The name it is served under (the OIP model name)")
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    url: str = Field(description="Where to download it, relative to the console's URL")
    traffic_share: float = Field(
        ge=0, le=1, description="Share of the model's requests this version takes"
    )
    signals: dict[str, str] = Field(
        default_factory=dict,
        description="The model's signal schema, {name: type} with types from SIGNAL_TYPES: the "
        "node refuses infer requests whose `parameters` break it (inference/codec.py)",
    )
    tenants: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="Tenants pinned to this version: their requests to the model go to it "
        "(once ready) whatever the traffic split; a tenant is known by its ephemeral token",
    )
    drift_reference: DriftReference | None = Field(
        None,
        description="The version's reference outputs, when the console has captured them: "
        "the node reports the PSI of its recent outputs against them (outpost_model_drift_psi)",
    )


# The console pushes a new desired state to nodes it can reach, so a rollout does not wait for
# the next heartbeat. The body is signed with the console's key (the node pinned its public
# half at enrollment), and a push older than PUSH_MAX_AGE_S is refused (no replays).
DESIRED_PUSH_PATH = "/outpost/desired"
SIGNATURE_HEADER = "x-outpost-signature"
PUSH_MAX_AGE_S = 60


class DesiredPush(ConsoleMessage):
    node_uid: str
    issued_at: AwareDatetime
    desired_models: list[DesiredVersion]
    memory_budget_bytes: int | None = Field(None, ge=0)


class HeartbeatReply(ConsoleMessage):
    """What the console wants of the node."""

    status: Literal["online", "degraded", "offline"]
    heartbeat_interval_s: int
    server_time: datetime
    # The newest policy bundle: a node enforcing an older one (or none) fetches BUNDLE_PATH.
    desired_bundle_revision: int | None = None
    # An operator is simulating this node's temperature (a demo of thermal offload): the node
    # moves its reading toward this value instead of reading its sensors. None: real sensors.
    simulated_temperature_c: float | None = Field(None, ge=-50, le=200)
    # None: the console manages no models on this node. A list: exactly these console-managed
    # versions should be served (models found in the agent's --models folder stay as they are).
    desired_models: list[DesiredVersion] | None = None
    # The most memory the console-managed versions may take on this node, from its class;
    # a node started with --memory-budget-bytes keeps its own.
    memory_budget_bytes: int | None = Field(None, ge=0)
    # An operator asked for a new node credential: the node fetches one (CREDENTIAL_PATH),
    # saves it and uses it from then on.
    rotate_credential: bool = False


# --- usage ---------------------------------------------------------------------------------
#
# Every inference a node serves is billed exactly once, by the node that served it (an offload
# is billed by the pool node; the node that forwarded it counts the forward as telemetry only).
# The node aggregates per minute by (tenant, model version, served_by, offload reason), spools
# closed minutes as numbered batches on its disk (inference/usage.py) and uploads them; the
# console stores a batch and its records in one transaction, unique on (node, batch_seq), so a
# repeat is acknowledged and not counted again (billing/ingest.py).

USAGE_PATH = "/api/v1/nodes/usage"
USAGE_WINDOW_S = 60
USAGE_MAX_RECORDS = 5000
# Upper bounds (seconds) of the latency histogram of every usage record, and of the agent's
# Prometheus duration histograms (inference/metrics.py): one set of buckets, so p95 from
# usage and from Prometheus agree to the bucket. A record's `latency_counts` has one count per
# bound and a last one for slower requests (+Inf).
LATENCY_BOUNDS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_S) + 1
OffloadReason = Literal["tenant_quality", "model_not_local", "thermal", "cost", "capacity"]
OFFLOAD_REASONS: tuple[str, ...] = OffloadReason.__args__  # type: ignore[attr-defined]
# The header an offloading node sets on the forward, so the pool node that bills the request
# knows why it travelled (the quality credit depends on it).
OFFLOAD_REASON_HEADER = "x-outpost-offload-reason"


class UsageRecord(WireModel):
    """One node's inferences for one tenant, model version, serving and minute."""

    tenant: str = Field(max_length=50)
    model: str = Field(max_length=200)
    version: str = Field(max_length=50)
    grade: Literal["tiny", "medium", "large"]
    served_by: Literal["local", "regional"]
    # Why it was served regionally (None when local).
    offload_reason: OffloadReason | None = None
    minute: AwareDatetime = Field(description="Start of the minute (UTC, seconds zero)")
    # Inferences answered successfully: the billable count. The histogram is theirs.
    count: int = Field(ge=0)
    # Inferences that reached the model and failed (not billed).
    errors: int = Field(ge=0)
    latency_counts: list[int] = Field(
        min_length=LATENCY_BUCKETS,
        max_length=LATENCY_BUCKETS,
        description="Successful inferences per latency bucket (LATENCY_BOUNDS_S, then +Inf)",
    )
    latency_sum_s: float = Field(ge=0)
    # Energy the node spent on these inferences (RAPL or GPU when readable, else the node
    # class's power model times busy time), joules.
    energy_j: float = Field(ge=0)
    # How many of `count` had their sensitive fields tokenised.
    tokenised: int = Field(0, ge=0)


class UsageBatch(WireModel):
    node_uid: str = Field(max_length=40)
    # Numbered 1, 2, 3... per node, never reused: the console's idempotency key with node_uid.
    batch_seq: int = Field(ge=1)
    created_at: AwareDatetime
    records: list[UsageRecord] = Field(max_length=USAGE_MAX_RECORDS)


class UsageAck(ConsoleMessage):
    """The console has the batch (a 200): the node may delete it from its spool."""

    batch_seq: int
    # stored: counted now; duplicate: counted before (same content); conflict: another batch
    # had this number (the console keeps this one in quarantine for an operator).
    outcome: Literal["stored", "duplicate", "conflict"]
    accepted: int = Field(0, ge=0, description="Records counted")
    quarantined: int = Field(0, ge=0, description="Records kept aside with their reason")


# --- errors ---------------------------------------------------------------------------------


class ErrorBody(WireModel):
    error: str


# --- keys and signatures --------------------------------------------------------------------


def canonical_json(value: object) -> bytes:
    """The one byte form of a document that gets signed: sorted keys, no spaces, UTF-8."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_to_b64(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode()


def private_key_from_b64(value: str) -> Ed25519PrivateKey:
    raw = base64.b64decode(value, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes, base64-encoded")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_to_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_b64(value: str) -> Ed25519PublicKey:
    raw = base64.b64decode(value, validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes, base64-encoded")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key, carried next to signatures for rotation."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode()


def verify(key: Ed25519PublicKey, payload: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


# --- secrets --------------------------------------------------------------------------------


def new_secret(prefix: str) -> str:
    """A random bearer secret with a readable prefix (`opn_` node, `opk_` API key, `opt_` token)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """Secrets are stored hashed; they are random and long, so a plain SHA-256 is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


# --- model registry (console API; the SDK and CLI in inference/sdk.py use these) ------------

MODELS_PATH = "/api/v1/models"

# Signal types a tenant may declare for the fields it sends in OIP `parameters`.
SIGNAL_TYPES = ("string", "int", "float", "bool")

Grade = Literal["tiny", "medium", "large"]
VersionStatus = Literal["grading", "graded", "failed"]


class ClassLatency(WireModel):
    node_class: str
    p50_ms: float
    p95_ms: float
    fits_memory: bool
    meets_target: bool


class ModelVersionInfo(WireModel):
    """A registered model version as the console reports it (upload answer and reads)."""

    model: str = Field(description="The model's name")
    owner: str | None = Field(description="Owning tenant's slug; null for the catalogue")
    version: int
    sha256: str
    size_bytes: int
    status: VersionStatus
    created: bool = Field(description="False when these exact bytes were registered before")
    signals: dict[str, str] = Field(default_factory=dict)
    opset: int
    inputs: list[dict] = Field(default_factory=list)
    outputs: list[dict] = Field(default_factory=list)
    grade: Grade | None = None
    node_class: str | None = Field(None, description="Smallest node class that serves it")
    latency: list[ClassLatency] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="Why this grade and class")
    failure: str | None = None


# --- ephemeral tokens -----------------------------------------------------------------------
#
# A tenant exchanges its API key for a short-lived token (POST TOKENS_PATH) and calls nodes
# with `Authorization: Bearer <token>`; API keys never travel to nodes. A node checks a token
# offline against the console key it pinned at enrollment (inference/tokens.py, once per token).
#
# Form: "opt_" + base64url(canonical_json(claims)) + "." + base64url(Ed25519 signature of
# those claim bytes), without padding. The claims name the signing key (`key_id`), so a
# console can rotate keys while nodes trust the old and the new one.

TOKENS_PATH = "/api/v1/tokens"
TOKEN_PREFIX = "opt_"  # noqa: S105 - a prefix, not a secret
# The scope a token needs to call inference on a node.
SCOPE_INFER = "infer"
# Shortest lifetime the console issues (the longest is its OUTPOST_TOKEN_TTL_S setting).
TOKEN_MIN_TTL_S = 30
# How far a token's issued_at may lie in the node's future: the console's and the node's
# clocks are never exactly equal. Expiry gets no leeway: tokens are refreshed well before.
TOKEN_CLOCK_SKEW_S = 30
# Longer than any token the console issues; a longer "token" is refused before decoding it.
TOKEN_MAX_CHARS = 4096

_SIGNATURE_BYTES = 64


class TokenClaims(WireModel):
    """What a token says: who calls, what it may do, and when. Signed by the console."""

    tenant: str = Field(
        min_length=1, max_length=50, pattern=r"^[-a-zA-Z0-9_]+$", description="Tenant slug"
    )
    scopes: list[str] = Field(min_length=1, max_length=20, description='e.g. ["infer"]')
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    token_id: str = Field(min_length=8, max_length=64, description="Unique per token")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="key_id() of the signing key")


class TokenRequest(WireModel):
    ttl_s: int | None = Field(
        None,
        description=f"Lifetime in seconds, at least {TOKEN_MIN_TTL_S}; default and maximum: "
        "the console's OUTPOST_TOKEN_TTL_S",
    )


class TokenResponse(WireModel):
    token: str = Field(description="Send it to nodes as `Authorization: Bearer <token>`")
    tenant: str
    scopes: list[str]
    expires_at: AwareDatetime


class TokenError(Exception):
    """A token that cannot be accepted; `message` says why, for the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def token_expired(expires_at: datetime, now: datetime) -> TokenError:
    """The error for a token past its expiry (also raised by the node's cache of tokens)."""
    return TokenError(
        f"the token expired at {expires_at.isoformat()} "
        f"({(now - expires_at).total_seconds():.0f} s ago); get a new one from {TOKENS_PATH}"
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    """Strict: the URL-safe alphabet, no padding, canonical. Anything else is a ValueError,
    so one token has exactly one spelling (the node's cache is keyed by it)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if not data or _b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data


def issue_token(private_key: Ed25519PrivateKey, claims: TokenClaims) -> str:
    """The signed token for `claims`; `claims.key_id` must name `private_key`'s public half."""
    own_id = key_id(private_key.public_key())
    if claims.key_id != own_id:
        raise ValueError(f"the claims name key {claims.key_id}, but the signing key is {own_id}")
    if claims.expires_at <= claims.issued_at:
        raise ValueError("a token must expire after it is issued")
    payload = canonical_json(claims.model_dump(mode="json"))
    signature = base64.b64decode(sign(private_key, payload))
    return f"{TOKEN_PREFIX}{_b64url(payload)}.{_b64url(signature)}"


def verify_token(
    keys: dict[str, Ed25519PublicKey] | Ed25519PublicKey, token: str, now: datetime
) -> TokenClaims:
    """The claims of a token signed by one of `keys` (by key id, or one key) and valid at
    `now` (aware). Raises TokenError saying what is wrong: malformed, unknown key, bad
    signature, expired, not yet valid."""
    if isinstance(keys, Ed25519PublicKey):
        keys = {key_id(keys): keys}
    if len(token) > TOKEN_MAX_CHARS:
        raise TokenError(f"malformed token: longer than {TOKEN_MAX_CHARS} characters")
    if not token.startswith(TOKEN_PREFIX):
        raise TokenError(f"malformed token: a token starts with {TOKEN_PREFIX!r}")
    encoded_claims, dot, encoded_signature = token[len(TOKEN_PREFIX) :].partition(".")
    if not dot or not encoded_claims or not encoded_signature:
        raise TokenError("malformed token: expected opt_<claims>.<signature>")
    try:
        payload = _b64url_decode(encoded_claims)
    except ValueError:
        raise TokenError("malformed token: the claims are not base64url") from None
    try:
        signature = _b64url_decode(encoded_signature)
    except ValueError:
        raise TokenError("malformed token: the signature is not base64url") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise TokenError("malformed token: the signature is not 64 bytes (Ed25519)")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise TokenError("malformed token: the claims are not JSON") from None
    if not isinstance(document, dict):
        raise TokenError("malformed token: the claims are not a JSON object")
    try:
        claims = TokenClaims.model_validate(document)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'claims'}: {e['msg']}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        raise TokenError(f"malformed token: {problems}") from None
    key = keys.get(claims.key_id)
    if key is None:
        trusted = ", ".join(sorted(keys)) or "none yet"
        raise TokenError(
            f"the token is signed by key {claims.key_id}, which this node does not know "
            f"(it trusts: {trusted})"
        )
    if not verify(key, payload, base64.b64encode(signature).decode()):
        raise TokenError(
            f"bad signature: the token was altered or not signed by the console's key {claims.key_id}"
        )
    if now >= claims.expires_at:
        raise token_expired(claims.expires_at, now)
    ahead = (claims.issued_at - now).total_seconds()
    if ahead > TOKEN_CLOCK_SKEW_S:
        raise TokenError(
            f"the token is not valid yet: issued at {claims.issued_at.isoformat()}, {ahead:.0f} s "
            f"ahead of this node's clock (more than the {TOKEN_CLOCK_SKEW_S} s allowed for clock "
            "skew); check the clocks of the console and the node"
        )
    return claims


# --- policy bundles ---------------------------------------------------------------------------
#
# The signed, versioned document every node enforces (DESIGN §4): tenants' policies, the routes
# to the regions' accelerator pools, prices, per-class thresholds, revoked tokens, a monotonic
# revision and an expiry. The console compiles it (fleet/bundles.py) and signs the canonical
# JSON of `PolicyBundle` with its Ed25519 key; the key id travels beside the signature so that
# nodes can trust the next key before the console switches to it (rotation).

BUNDLE_PATH = "/api/v1/nodes/bundle"
BUNDLE_PUSH_PATH = "/outpost/bundle"
# Prices and spend caps travel as decimal strings: JSON numbers are floats to most parsers,
# and money is never a float.
DECIMAL_PATTERN = r"^\d{1,12}(\.\d{1,9})?$"

PrivacyMode = Literal["local_only", "in_region", "any"]
Fallback = Literal["regional", "reject"]
Quality = Literal["best_effort", "high"]
BudgetAction = Literal["alert", "downgrade", "block"]
Serving = Literal["local", "regional"]


class TenantRules(WireModel):
    """One tenant's policy as a node enforces it."""

    slug: str = Field(max_length=50)
    privacy: PrivacyMode
    fallback: Fallback
    quality: Quality
    max_spend_per_session: str | None = Field(None, pattern=DECIMAL_PATTERN)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    sensitive_fields: list[str] = Field(default_factory=list, max_length=50)
    on_budget_exhausted: BudgetAction
    # The monthly budget is spent: the node applies `on_budget_exhausted` (downgrade: local
    # only, cheapest grade; block: 402).
    budget_exhausted: bool = False
    # Refuse this tenant's requests when the node's bundle is older than this (fail closed).
    fail_closed_after_s: int | None = Field(None, ge=1)
    # The residency zone the tenant's data must stay in (e.g. EU); None: not bound.
    residency_zone: str | None = Field(None, max_length=10)
    # Requests per second one node admits for the tenant (a token bucket holding as many);
    # beyond it, 429 with Retry-After. None: no limit. Set by operators.
    rate_limit_per_s: int | None = Field(None, ge=1)
    # The features the tenant's add-ons unlock (billing.FeatureBundle.features), e.g.
    # "signals": personalisation signals in `parameters`. None: this console gates none.
    features: list[str] | None = Field(None, max_length=50)


class PoolNode(WireModel):
    uid: str
    endpoint: str = Field(max_length=500)


class Route(WireModel):
    """Where a node of `region` may offload a tenant's request: `pools` in order (its own
    region's accelerator pool first, then the fallbacks), already cut to what the tenant's
    privacy and residency allow."""

    tenant: str
    region: str
    pools: list[str] = Field(default_factory=list, description="Region codes of the pools")


class Pool(WireModel):
    region: str
    residency_zone: str
    nodes: list[PoolNode] = Field(default_factory=list)


class PriceRow(WireModel):
    grade: Grade
    serving: Serving
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    per_1000: str = Field(pattern=DECIMAL_PATTERN)


class ClassThresholds(WireModel):
    node_class: str
    thermal_envelope_c: float | None = None
    # The most one grade's inferences may cost to serve on this class, per 1,000.
    cost_ceilings: dict[str, str] = Field(default_factory=dict)
    # What an hour of one node of this class costs (fleet/costs.py), in the same currency as
    # the ceilings: with its measured run time per inference a node knows what an inference
    # costs it to serve, and compares that with the ceiling.
    hourly_cost: str | None = Field(None, pattern=DECIMAL_PATTERN)
    # The class's power model (fleet.NodeClass): a node with no readable energy counter
    # estimates the energy of its inferences as busy time times peak watts.
    idle_watts: float | None = Field(None, ge=0)
    peak_watts: float | None = Field(None, ge=0)


class ModelGrade(WireModel):
    """The grade of the models served under a name: it prices a request and picks its cost
    ceiling, also on a node that does not serve the model (an offload is priced too)."""

    name: str = Field(max_length=200)
    grade: Grade


class PolicyBundle(WireModel):
    revision: int = Field(ge=1)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    tenants: list[TenantRules] = Field(default_factory=list)
    pools: list[Pool] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    prices: list[PriceRow] = Field(default_factory=list)
    thresholds: list[ClassThresholds] = Field(default_factory=list)
    models: list[ModelGrade] = Field(default_factory=list)
    revoked_tokens: list[str] = Field(default_factory=list, description="Token ids")
    # Console public keys (base64) nodes trust for the next bundles and tokens: the current
    # one and, during a rotation, the next one published ahead of its use.
    trusted_keys: list[str] = Field(default_factory=list, max_length=4)
    # The fleet's key (base64) for authenticating node-to-node offloads (forward_auth): a pool
    # node serves a request as forwarded, billed regional, only with a valid MAC of it. None:
    # this console authenticates no forwards.
    forward_key: str | None = Field(None, max_length=64)


# An offloading node proves it is one of the fleet's: `t=<unix seconds>,mac=<hex>`, an HMAC of
# its uid, the request id and the time, with the bundle's forward key. A client cannot make one,
# so it cannot pass itself off as a forward (billed regional, rate limits skipped).
FORWARD_AUTH_HEADER = "x-outpost-forward-auth"
FORWARD_AUTH_MAX_AGE_S = 120


def forward_auth(key: bytes, node_uid: str, request_id: str, now: float) -> str:
    stamp = int(now)
    return f"t={stamp},mac={_forward_mac(key, node_uid, request_id, stamp)}"


def forward_auth_valid(key: bytes, node_uid: str, request_id: str, value: str, now: float) -> bool:
    try:
        fields = dict(part.split("=", 1) for part in value.split(","))
        stamp = int(fields["t"])
        mac = fields["mac"]
    except (KeyError, ValueError):
        return False
    if abs(now - stamp) > FORWARD_AUTH_MAX_AGE_S:
        return False
    return hmac.compare_digest(mac, _forward_mac(key, node_uid, request_id, stamp))


def _forward_mac(key: bytes, node_uid: str, request_id: str, stamp: int) -> str:
    message = f"{node_uid}\n{request_id}\n{stamp}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class SignedBundle(ConsoleMessage):
    bundle: PolicyBundle
    key_id: str
    signature: str = Field(description="Ed25519 over canonical_json(bundle), base64")


class BundleError(Exception):
    """A bundle a node must not activate; the message says why."""


def bundle_payload(bundle: PolicyBundle) -> bytes:
    return canonical_json(bundle.model_dump(mode="json"))


def sign_bundle(key: Ed25519PrivateKey, bundle: PolicyBundle) -> SignedBundle:
    return SignedBundle(
        bundle=bundle,
        key_id=key_id(key.public_key()),
        signature=sign(key, bundle_payload(bundle)),
    )


def verify_bundle(
    signed: SignedBundle,
    keys: dict[str, Ed25519PublicKey] | Ed25519PublicKey,
    *,
    now: datetime,
    current_revision: int | None = None,
) -> PolicyBundle:
    """The bundle, if a node may activate it: signed by a key it trusts, unaltered, not
    expired, and not older than the revision it enforces. Raises BundleError otherwise."""
    if isinstance(keys, Ed25519PublicKey):
        keys = {key_id(keys): keys}
    key = keys.get(signed.key_id)
    if key is None:
        trusted = ", ".join(sorted(keys)) or "none"
        raise BundleError(
            f"bundle {signed.bundle.revision} is signed by key {signed.key_id}, which this "
            f"node does not trust (it trusts: {trusted})"
        )
    if not verify(key, bundle_payload(signed.bundle), signed.signature):
        raise BundleError(
            f"bundle {signed.bundle.revision}: the signature does not verify — the bundle was "
            "altered or not signed by that key"
        )
    bundle = signed.bundle
    if now >= bundle.expires_at:
        raise BundleError(f"bundle {bundle.revision} expired at {bundle.expires_at.isoformat()}")
    if current_revision is not None and bundle.revision < current_revision:
        raise BundleError(
            f"bundle {bundle.revision} is older than revision {current_revision}, which this "
            "node enforces: a lower revision is never activated"
        )
    return bundle
