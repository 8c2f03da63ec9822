"""A tenant's own policy in /api/v1: `GET /api/v1/policy` and `PUT /api/v1/policy`; and, for
operators, the policy simulator: `POST /api/v1/policy/simulate`.

The API key names the tenant: there is no tenant in the address, so a key can neither read
nor change another tenant's policy. A PUT changes only the fields it gives (the others keep
their values); its rules are fleet.models.policies.clean_policy's, applied by
fleet.policies.update_policy, as for the portal. The answer carries the policy's revision as
its ETag; `If-Match` (or `revision` in the body) makes a PUT conditional on it.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema, Status
from pydantic import ConfigDict, Field, WithJsonSchema

from billing.auth import ApiKeyAuth, staff_session
from billing.models import ApiKey
from fleet.choices import BudgetAction, Fallback, PolicyActorKind, PrivacyMode, QualityObjective
from fleet.forms import SimulatorForm
from fleet.models import PolicyBundleRecord, TenantPolicy
from fleet.models.policies import POLICY_FIELDS, format_amount
from fleet.policies import StalePolicy, update_policy
from fleet.schemas import request_body
from fleet.simulator import Simulation, simulate
from inference import protocol

policy_router = Router(tags=["policy"], auth=ApiKeyAuth())


class PolicyOut(Schema):
    tenant: str
    currency: str = Field(description="The currency of max_spend_per_session")
    revision: int = Field(description="Incremented by every change; also the ETag")
    privacy_mode: PrivacyMode
    fallback: Fallback
    quality: QualityObjective
    max_spend_per_session: str | None = Field(description="A decimal string; null: no limit")
    sensitive_fields: list[str]
    on_budget_exhausted: BudgetAction
    fail_closed_after_s: int | None = Field(description="Set by the provider's operators")
    rate_limit_per_s: int | None = Field(
        description="Set by the provider's operators: requests per second each node admits "
        "(429 with Retry-After beyond); null: no limit"
    )
    residency_zone: str = Field(
        description="Set by the provider's operators: the residency zone (e.g. EU) the "
        "tenant's requests and models stay in; empty: not bound"
    )
    updated_at: datetime


def _loose(schema: dict[str, Any], description: str) -> Any:
    """A field documented as `schema` but taken as sent: fleet.models.policies.clean_policy
    checks it, so the API answers with the same messages as the portal."""
    return Annotated[Any, WithJsonSchema({**schema, "description": description})]


def _enum(choices) -> dict[str, Any]:
    return {"type": "string", "enum": list(choices.values)}


PrivacyModeIn = _loose(_enum(PrivacyMode), "local_only, in_region or any")
FallbackIn = _loose(_enum(Fallback), "regional or reject; local_only needs reject")
QualityIn = _loose(_enum(QualityObjective), "best_effort or high")
AmountIn = _loose(
    {"type": ["string", "number", "null"]},
    'The most one session may cost, in the tenant\'s currency, e.g. "0.50"; null: no limit',
)
FieldNamesIn = _loose(
    {"type": "array", "items": {"type": "string"}},
    "OIP parameter names the node tokenises (at most 50)",
)
BudgetActionIn = _loose(_enum(BudgetAction), "alert, downgrade or block")
FailClosedIn = _loose(
    {"type": ["integer", "null"]}, "Read-only for tenants: may be sent back unchanged"
)
RateLimitIn = _loose(
    {"type": ["integer", "null"]}, "Read-only for tenants: may be sent back unchanged"
)
ResidencyZoneIn = _loose(
    {"type": ["string", "null"]}, "Read-only for tenants: may be sent back unchanged"
)
RevisionIn = _loose({"type": "integer"}, "Optional: refuse the change unless it is current")
ReadOnlyIn = _loose({"type": "string"}, "Read-only: may be sent back, is ignored")


class PolicyIn(Schema):
    """The fields to change; those left out keep their values. The read-only fields of a GET
    may be sent back: `tenant` must be the key's, `revision` the current one (or the PUT is
    refused with 409), `currency` and `updated_at` are ignored."""

    model_config = ConfigDict(extra="forbid")

    privacy_mode: PrivacyModeIn = None
    fallback: FallbackIn = None
    quality: QualityIn = None
    max_spend_per_session: AmountIn = None
    sensitive_fields: FieldNamesIn = None
    on_budget_exhausted: BudgetActionIn = None
    fail_closed_after_s: FailClosedIn = None
    rate_limit_per_s: RateLimitIn = None
    residency_zone: ResidencyZoneIn = None
    tenant: ReadOnlyIn = None
    currency: ReadOnlyIn = None
    revision: RevisionIn = None
    updated_at: ReadOnlyIn = None


class PolicyErrorOut(Schema):
    error: str
    fields: dict[str, list[str]] = Field(
        default_factory=dict, description="The messages per field, when fields are at fault"
    )


def policy_out(policy: TenantPolicy) -> PolicyOut:
    return PolicyOut(
        tenant=policy.tenant.slug,
        currency=policy.tenant.currency,
        revision=policy.revision,
        updated_at=policy.updated_at,
        **policy.snapshot(),
    )


def _answer(response: HttpResponse, policy: TenantPolicy) -> PolicyOut:
    response["ETag"] = f'"{policy.revision}"'
    return policy_out(policy)


def _if_match(request: HttpRequest) -> int | None:
    """The revision an `If-Match` header asks for; None without one (or with `*`)."""
    header = request.headers.get("If-Match", "").strip()
    if not header or header == "*":
        return None
    try:
        return int(header.removeprefix("W/").strip('"'))
    except ValueError:
        return -1  # matches no revision: the PUT is refused with 412


def _invalid(fields: dict[str, list[str]]) -> Status:
    problems = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
    return Status(400, PolicyErrorOut(error=f"invalid policy: {problems}", fields=fields))


@policy_router.get(
    "",
    response={200: PolicyOut, 401: protocol.ErrorBody},
    summary="The API key's tenant's policy (created with the defaults on first read)",
)
def get_policy(request: HttpRequest, response: HttpResponse):
    api_key: ApiKey = request.auth
    policy = TenantPolicy.objects.for_tenant(api_key.tenant)
    policy.tenant = api_key.tenant
    return _answer(response, policy)


# Read by hand, not as a ninja body: ninja drops the fields it does not know (they must be
# named in a 400) and an explicit null (which clears max_spend_per_session). PolicyIn is
# what the OpenAPI schema shows.
PUT_BODY_SCHEMA = request_body(PolicyIn)
# What a GET answers besides the policy's own fields: a PUT may send them back.
ECHOED_FIELDS = ("tenant", "currency", "revision", "updated_at")


@policy_router.put(
    "",
    response={
        200: PolicyOut,
        400: PolicyErrorOut,
        401: protocol.ErrorBody,
        409: protocol.ErrorBody,
        412: protocol.ErrorBody,
    },
    openapi_extra=PUT_BODY_SCHEMA,
    summary="Change the API key's tenant's policy: only the fields given",
)
def put_policy(request: HttpRequest, response: HttpResponse):
    api_key: ApiKey = request.auth
    tenant = api_key.tenant
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        return Status(400, PolicyErrorOut(error=f"the body is not JSON: {exc}"))
    if not isinstance(body, dict):
        return Status(
            400, PolicyErrorOut(error="the body must be a JSON object of the fields to change")
        )
    unknown = sorted(set(body) - set(POLICY_FIELDS) - set(ECHOED_FIELDS))
    if unknown:
        return Status(
            400,
            PolicyErrorOut(
                error=f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
                f"a policy has {', '.join(POLICY_FIELDS)}",
                fields={name: ["There is no such policy field."] for name in unknown},
            ),
        )
    if "tenant" in body and body["tenant"] != tenant.slug:
        return _invalid(
            {"tenant": [f"This API key is {tenant.slug}'s: it reads and changes that policy only."]}
        )
    body_revision = body.get("revision")
    if body_revision is not None and (
        isinstance(body_revision, bool) or not isinstance(body_revision, int)
    ):
        return _invalid({"revision": ["The revision is a whole number, as a GET answers it."]})
    try:
        policy = update_policy(
            tenant,
            {name: body[name] for name in POLICY_FIELDS if name in body},
            actor=None,
            actor_kind=PolicyActorKind.API_KEY,
            api_key=api_key,
            expected_revision=body_revision if body_revision is not None else _if_match(request),
        )
    except StalePolicy as exc:
        return Status(412 if body_revision is None else 409, {"error": str(exc)})
    except ValidationError as exc:
        if not hasattr(exc, "error_dict"):
            return Status(400, PolicyErrorOut(error=" ".join(exc.messages)))
        return _invalid(exc.message_dict)
    policy.tenant = tenant
    return _answer(response, policy)


# --- the policy simulator (operators) ---------------------------------------------------------


class SimulationIn(Schema):
    """A request to try and the node it reaches. Every node field left out (or null) is what
    the node last reported, as on the simulator page; the rules are fleet.forms.SimulatorForm's."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(description="The tenant's slug")
    model: str = Field(description="The served model name (a tenant's models: tenant.name)")
    node: str = Field(description="The node's uid")
    grade: str | None = Field(None, description="tiny, medium or large; default: the bundle's")
    temperature_c: float | None = Field(None, description="°C; default: the node's reported")
    trend_c_per_min: float | None = Field(None, description="°C per minute; default 0")
    queue_depth: int | None = Field(None, description="Default: the node's reported")
    queue_limit: int | None = Field(None, description="Default: the agent's default")
    model_loaded: bool | None = Field(
        None, description="The model is loaded and ready on the node; default: as reported"
    )
    cost_per_1000: Decimal | None = Field(
        None,
        description="What 1,000 inferences cost the node to serve; default: computed from its "
        "class's hourly cost and its measured run time, or unknown",
    )
    session_spent: Decimal | None = Field(None, description="In the tenant's currency; default 0")
    bundle_age_s: float | None = Field(None, description="Seconds; default 0")


class SimulationInputOut(Schema):
    name: str
    value: str
    source: str = Field(description="set, reported by the node, default, or how it was computed")


class SimulationOut(Schema):
    bundle_revision: int = Field(description="The newest bundle, which the decision was made under")
    tenant: str
    model: str
    node: str
    action: str = Field(description="local, offload or refuse")
    status: int = Field(description="The HTTP status the node answers with")
    rule: str = Field(description="The rule of inference/policy.py that decided")
    reason: str
    pools: list[str] = Field(description="Regions whose accelerator pools take it, in order")
    price: str | None = Field(description="Of this inference, in the tenant's currency")
    currency: str | None
    retry_after_s: int | None
    inputs: list[SimulationInputOut] = Field(description="What the decision was computed from")


def simulation_out(simulation: Simulation) -> SimulationOut:
    decision, scenario = simulation.decision, simulation.scenario
    return SimulationOut(
        bundle_revision=simulation.revision,
        tenant=scenario.tenant,
        model=scenario.model,
        node=scenario.node.uid,
        action=decision.action,
        status=decision.status,
        rule=decision.rule,
        reason=decision.reason,
        pools=list(decision.pools),
        price=None if decision.price is None else format_amount(decision.price),
        currency=simulation.currency,
        retry_after_s=decision.retry_after_s,
        inputs=[SimulationInputOut(**vars(i)) for i in simulation.inputs],
    )


def _simulator_data(body: SimulationIn) -> dict[str, object]:
    """The body as the simulator's form reads it: null is an empty field."""
    data = body.model_dump()
    loaded = data.pop("model_loaded")
    data["model_loaded"] = "" if loaded is None else "yes" if loaded else "no"
    return {name: "" if value is None else value for name, value in data.items()}


@policy_router.post(
    "/simulate",
    auth=staff_session,
    response={
        200: SimulationOut,
        400: PolicyErrorOut,
        401: protocol.ErrorBody,
        409: protocol.ErrorBody,
    },
    summary="What a node would decide for a request under the newest bundle (operators)",
)
def simulate_request(request: HttpRequest, body: SimulationIn):
    record = PolicyBundleRecord.objects.order_by("-revision").first()
    if record is None:
        return Status(
            409,
            {"error": "no policy bundle has been published yet: there is nothing to decide under"},
        )
    bundle = record.bundle
    form = SimulatorForm(_simulator_data(body), bundle=bundle)
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        return Status(
            400, PolicyErrorOut(error=f"invalid simulation: {problems}", fields=form.errors)
        )
    return simulation_out(simulate(bundle, form.scenario()))
