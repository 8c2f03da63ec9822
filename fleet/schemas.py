"""API shapes of the operator-facing fleet endpoints. Node-facing shapes are the wire
formats in inference/protocol.py, used as they are."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ninja import Field, Schema
from pydantic import BaseModel, ConfigDict


def request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` for an endpoint that reads its body by hand: the model's JSON schema
    with its `$defs` inlined, since OpenAPI resolves refs against its own components."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }


class RegionOut(Schema):
    code: str
    name: str
    jurisdiction: str
    residency_zone: str


class NodeClassOut(Schema):
    name: str
    description: str
    capex: Decimal
    currency: str
    amortisation_months: int
    idle_watts: Decimal
    peak_watts: Decimal
    energy_price_per_kwh: Decimal
    expected_utilisation: Decimal
    memory_bytes: int
    has_gpu: bool
    hourly_cost: Decimal


class StatusChangeOut(Schema):
    old_status: str
    new_status: str
    at: datetime
    reason: str


class NodeOut(Schema):
    uid: str
    name: str
    region: str = Field(..., alias="region.code")
    node_class: str = Field(..., alias="node_class.name")
    status: str = Field(..., alias="current_status")
    endpoint: str
    hostname: str
    agent_version: str
    enrolled_at: datetime
    last_heartbeat_at: datetime | None
    cpu_load: float | None
    memory_pressure: float | None
    temperature_c: float | None
    queue_depth: int
    requests_total: int
    errors_total: int
    models_loaded: list[dict]
    bundle_revision: int | None


class NodeDetailOut(NodeOut):
    status_changes: list[StatusChangeOut]


class EnrollmentTokenIn(Schema):
    node_name: str = Field(..., min_length=1, max_length=100)
    region: str = Field(..., description="Region code")
    node_class: str = Field(..., description="nano, standard or accelerator")
    ttl_hours: int | None = Field(None, ge=1, le=24 * 30)


class EnrollmentTokenOut(Schema):
    token: str = Field(..., description="The one-time secret; shown only in this response")
    node_name: str
    region: str
    node_class: str
    expires_at: datetime
    command: str = Field(..., description="The command to run on the node")


class DeploymentIn(Schema):
    model: str = Field(..., description="Model name")
    owner: str | None = Field(None, description="Owning tenant's slug; empty for the catalogue")
    version: int
    regions: list[str] = Field(default_factory=list, description="Region codes; empty = all")
    node_classes: list[str] = Field(default_factory=list, description="Class names; empty = all")
    strategy: str = Field("canary", description="canary or all_at_once")
    steps: list[int] = Field(default_factory=lambda: [5, 25, 100])
    soak_s: int = Field(60, ge=0, le=7 * 24 * 3600)
    max_error_rate_increase: float = Field(0.02, ge=0, le=1)
    max_p95_ratio: float = Field(1.5, ge=1)
    min_requests: int = Field(50, ge=1)
    rollback_on_drift: bool = Field(
        False, description="Roll back when the new version's outputs drift (PSI) from its baseline"
    )


class DeploymentEventOut(Schema):
    at: datetime
    from_state: str
    to_state: str
    percent: int
    reason: str
    actor: str | None = Field(None, alias="actor.username")


class PinOut(Schema):
    tenant: str = Field(..., alias="tenant.slug")
    side: str = Field(..., description="new or old")


class PinIn(Schema):
    tenant: str = Field(..., description="The tenant's slug")
    side: str = Field(..., description="new: the deployment's version; old: the previous one")


class DeploymentOut(Schema):
    id: int
    model: str = Field(..., alias="version.model.name")
    owner: str | None = Field(None, alias="version.model.owner_slug")
    version: int = Field(..., alias="version.version")
    previous_version: int | None = Field(None, alias="previous.version")
    strategy: str
    steps: list[int]
    state: str
    percent: int = Field(..., alias="current_percent")
    step_started_at: datetime
    soak_s: int
    gate_note: str
    rollback_on_drift: bool
    drift_psi: float | None = Field(None, alias="version.drift_psi")
    drift_note: str = Field("", alias="version.drift_note")
    created_at: datetime
    finished_at: datetime | None
    pins: list[PinOut] = Field(
        default_factory=list, description="Tenants sent to one version whatever the split"
    )
    events: list[DeploymentEventOut]


class DeploymentActionIn(Schema):
    action: str = Field(..., description="pause, resume, promote or roll_back")
    reason: str = Field("", max_length=200)


class ThermalSimulationIn(Schema):
    model_config = ConfigDict(extra="forbid")

    temperature_c: float | None = Field(
        ...,
        description="The temperature (°C, -50 to 200) the node is to simulate: it moves its "
        "reading there at 1 °C/s instead of reading its sensors. null stops the simulation.",
    )


class ThermalSimulationOut(Schema):
    node: str = Field(..., alias="uid")
    simulated_temperature_c: float | None = Field(
        ..., description="What the node is told to simulate; null: it reads its sensors"
    )
    temperature_c: float | None = Field(..., description="What the node last reported")
    temperature_simulated: bool = Field(
        ..., description="The last reported temperature was the simulation's, not a sensor's"
    )
    changed: bool = Field(False, description="False when the simulation already was so")
