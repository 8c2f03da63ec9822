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
import secrets
from datetime import datetime
from typing import Literal

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

# How often a node reports unless the console says otherwise (seconds).
DEFAULT_HEARTBEAT_INTERVAL_S = 5


class WireModel(BaseModel):
    # Unknown fields are refused so that a typo on one side is an error, not silent data loss.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- enrollment -----------------------------------------------------------------------------


class EnrollRequest(WireModel):
    token: str = Field(min_length=8, max_length=200, description="One-time enrollment token")
    hostname: str = Field(min_length=1, max_length=255)
    endpoint: str = Field(
        max_length=500,
        description="Base URL where the node serves OIP v2, as the console should reach it",
    )
    agent_version: str = Field(max_length=50)


class EnrollResponse(WireModel):
    node_uid: str = Field(description="The node's permanent identity")
    name: str
    region: str = Field(description="Region code, e.g. eu-west")
    node_class: str = Field(description="nano, standard or accelerator")
    credential: str = Field(description="Bearer secret for node calls; shown once")
    console_public_key: str = Field(description="Ed25519 public key, base64 of the raw 32 bytes")
    heartbeat_interval_s: int


# --- heartbeat ------------------------------------------------------------------------------


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
    queue_depth: int = Field(ge=0)
    requests_total: int = Field(ge=0, description="Inferences answered since start")
    errors_total: int = Field(ge=0, description="Inferences that failed since start")
    bundle_revision: int | None = None


ARTIFACT_PATH = "/api/v1/nodes/artifacts/{sha256}"


class DesiredVersion(WireModel):
    """A model version the console wants the node to serve."""

    model: str = Field(description="The name it is served under (the OIP model name)")
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    url: str = Field(description="Where to download it, relative to the console's URL")
    traffic_share: float = Field(
        ge=0, le=1, description="Share of the model's requests this version takes"
    )


# The console pushes a new desired state to nodes it can reach, so a rollout does not wait for
# the next heartbeat. The body is signed with the console's key (the node pinned its public
# half at enrollment), and a push older than PUSH_MAX_AGE_S is refused (no replays).
DESIRED_PUSH_PATH = "/outpost/desired"
SIGNATURE_HEADER = "x-outpost-signature"
PUSH_MAX_AGE_S = 60


class DesiredPush(WireModel):
    node_uid: str
    issued_at: AwareDatetime
    desired_models: list[DesiredVersion]
    memory_budget_bytes: int | None = Field(None, ge=0)


class HeartbeatReply(WireModel):
    """What the console wants of the node."""

    status: Literal["online", "degraded", "offline"]
    heartbeat_interval_s: int
    server_time: datetime
    desired_bundle_revision: int | None = None
    # None: the console manages no models on this node. A list: exactly these console-managed
    # versions should be served (models found in the agent's --models folder stay as they are).
    desired_models: list[DesiredVersion] | None = None
    # The most memory the console-managed versions may take on this node, from its class;
    # a node started with --memory-budget-bytes keeps its own.
    memory_budget_bytes: int | None = Field(None, ge=0)


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
