"""The fleet's part of /api/v1: node-facing (enroll, heartbeat) and operator-facing."""

from __future__ import annotations

import re

import orjson
from django.conf import settings
from django.db.models import Prefetch
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import File, Form, Query, Router, Schema, Status, UploadedFile
from ninja.errors import HttpError
from ninja.security import HttpBearer, django_auth_is_staff

from billing.auth import ApiKeyAuth, staff_session
from billing.ingest import BatchRejected, NodeFacts, ingest_batch
from billing.models import ApiKey, Tenant
from billing.signing import console_public_key_b64
from fleet import artifacts
from fleet.actions import EnrollmentError, enroll_node, register_model_version
from fleet.artifacts import InvalidArtifact
from fleet.choices import NodeStatus, Strategy
from fleet.drift_actions import record_windows
from fleet.forms import EnrollForm, ThermalSimulationForm
from fleet.models import (
    Deployment,
    DeploymentEvent,
    EnrollmentToken,
    Model,
    ModelVersion,
    Node,
    NodeClass,
    NodeStatusChange,
    PolicyBundleRecord,
    Region,
    TenantPin,
)
from fleet.models.registry import known_served_versions
from fleet.policy_plane import record_decisions
from fleet.rollout_actions import (
    RolloutError,
    desired_versions,
    memory_budget_bytes,
    pause,
    pin,
    promote,
    resume,
    roll_back,
    start_rollout,
    unpin,
)
from fleet.rollouts import Gates
from fleet.schemas import (
    DeploymentActionIn,
    DeploymentIn,
    DeploymentOut,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
    NodeClassOut,
    NodeDetailOut,
    NodeOut,
    PinIn,
    RegionOut,
    ThermalSimulationIn,
    ThermalSimulationOut,
    request_body,
)
from inference import protocol

SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A full batch (protocol.USAGE_MAX_RECORDS records) of the longest names is ~3 MB.
USAGE_MAX_BODY_BYTES = 8 * 2**20
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")


class NodeCredentialAuth(HttpBearer):
    """A node calls with the credential it received at enrollment."""

    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> Node | None:
        return Node.authenticate(token)


node_router = Router(tags=["nodes"])
fleet_router = Router(tags=["fleet"], auth=django_auth_is_staff)


@node_router.post(
    "/enroll",
    response={201: protocol.EnrollResponse, 400: protocol.ErrorBody},
    auth=None,
    summary="Spend a one-time enrollment token and become a node",
)
def enroll(request: HttpRequest, body: protocol.EnrollRequest):
    try:
        node, credential = enroll_node(body)
    except EnrollmentError as exc:
        return Status(400, {"error": str(exc)})
    return Status(
        201,
        protocol.EnrollResponse(
            node_uid=node.uid,
            name=node.name,
            region=node.region.code,
            node_class=node.node_class.name,
            credential=credential,
            console_public_key=console_public_key_b64(),
            heartbeat_interval_s=settings.OUTPOST_HEARTBEAT_INTERVAL_S,
        ),
    )


@node_router.post(
    "/heartbeat",
    response={200: protocol.HeartbeatReply, 403: protocol.ErrorBody},
    auth=NodeCredentialAuth(),
    summary="Report the node's state; the answer says what the console wants of it",
)
def heartbeat(request: HttpRequest, body: protocol.HeartbeatReport):
    node: Node = request.auth
    if body.node_uid != node.uid:
        return Status(
            403, {"error": f"this credential belongs to node {node.uid}, not {body.node_uid}"}
        )
    node.record_heartbeat(body)
    record_windows(node, body)
    record_decisions(node, body)
    return Status(
        200,
        protocol.HeartbeatReply(
            status=node.status,
            heartbeat_interval_s=settings.OUTPOST_HEARTBEAT_INTERVAL_S,
            server_time=timezone.now(),
            desired_bundle_revision=PolicyBundleRecord.objects.latest_revision(),
            desired_models=desired_versions(node),
            memory_budget_bytes=memory_budget_bytes(node),
            simulated_temperature_c=node.simulated_temperature_c,
            rotate_credential=node.credential_rotation_requested_at is not None,
        ),
    )


@node_router.post(
    "/credential",
    response={200: protocol.NodeCredential},
    auth=NodeCredentialAuth(),
    summary="A new credential for the calling node, shown once; the current one stays valid "
    "until the node first uses the new one",
)
def next_credential(request: HttpRequest, response: HttpResponse):
    node: Node = request.auth
    # A secret: no cache on the way may keep a copy.
    response["Cache-Control"] = "no-store"
    return Status(200, protocol.NodeCredential(credential=node.issue_next_credential()))


@node_router.post(
    "/usage",
    auth=NodeCredentialAuth(),
    response={
        200: protocol.UsageAck,
        400: protocol.ErrorBody,
        403: protocol.ErrorBody,
        413: protocol.ErrorBody,
    },
    summary="Upload a batch of usage records; a batch seen before is acknowledged, not counted",
    openapi_extra=request_body(protocol.UsageBatch),
)
def upload_usage(request: HttpRequest):
    # The body is read here, not by ninja: a bad record is quarantined with its reason while
    # the rest of its batch counts, so records are validated one by one (billing/ingest.py).
    node: Node = request.auth
    facts = NodeFacts(node.uid, node.region.code, node.node_class.name)
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > USAGE_MAX_BODY_BYTES:
        return Status(413, {"error": f"a usage batch is at most {USAGE_MAX_BODY_BYTES} bytes"})
    # request.read(), not request.body: Django caps the latter at DATA_UPLOAD_MAX_MEMORY_SIZE
    # (2.5 MB), and a full batch of long model names is larger; the cap is ours, above.
    body = request.read(USAGE_MAX_BODY_BYTES + 1)
    if len(body) > USAGE_MAX_BODY_BYTES:
        return Status(413, {"error": f"a usage batch is at most {USAGE_MAX_BODY_BYTES} bytes"})
    try:
        return ingest_batch(body, facts, known_served_versions)
    except BatchRejected as exc:
        return Status(exc.status, {"error": str(exc)})


@node_router.get(
    "/bundle",
    auth=NodeCredentialAuth(),
    response={200: protocol.SignedBundle, 304: None, 404: protocol.ErrorBody},
    summary="The newest signed policy bundle; 304 when If-None-Match names its revision",
)
def fetch_bundle(request: HttpRequest):
    record = PolicyBundleRecord.objects.order_by("-revision").first()
    if record is None:
        raise HttpError(404, "no policy bundle has been published yet")
    etag = f'"{record.revision}"'
    wanted = request.headers.get("If-None-Match", "")
    if etag in {tag.strip().removeprefix("W/") for tag in wanted.split(",")} or wanted == "*":
        response = HttpResponse(status=304)
    else:
        # The stored text byte for byte: it is what was signed, and re-serialising is waste.
        response = HttpResponse(record.signed, content_type="application/json")
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"
    return response


@node_router.get(
    "/artifacts/{sha256}",
    auth=NodeCredentialAuth(),
    response={200: None, 404: protocol.ErrorBody},
    summary="Download a model artifact by its sha256 (the node verifies it)",
)
def download_artifact(request: HttpRequest, sha256: str):
    if not SHA256.match(sha256) or not ModelVersion.objects.filter(sha256=sha256).exists():
        raise HttpError(404, f"no artifact with sha256 {sha256}")
    path = artifacts.path_for(sha256)
    if not path.exists():
        raise HttpError(404, f"the artifact {sha256} is registered but missing from storage")
    response = FileResponse(path.open("rb"), content_type="application/octet-stream")
    response["Content-Length"] = str(path.stat().st_size)
    response["X-Outpost-Sha256"] = sha256
    return response


class NodeFilter(Schema):
    region: str | None = None
    node_class: str | None = None
    status: NodeStatus | None = None


def _nodes():
    return Node.objects.with_status().select_related("region", "node_class")


@fleet_router.get("/nodes", response=list[NodeOut], summary="Every node, with its derived status")
def list_nodes(request: HttpRequest, filters: Query[NodeFilter]):
    nodes = _nodes()
    if filters.region:
        nodes = nodes.filter(region__code=filters.region)
    if filters.node_class:
        nodes = nodes.filter(node_class__name=filters.node_class)
    if filters.status:
        nodes = nodes.filter(current_status=filters.status)
    return nodes


@fleet_router.get("/nodes/{uid}", response=NodeDetailOut)
def get_node(request: HttpRequest, uid: str):
    recent = NodeStatusChange.objects.order_by("-at")
    return get_object_or_404(
        _nodes().prefetch_related(Prefetch("status_changes", queryset=recent)), uid=uid
    )


@fleet_router.get("/regions", response=list[RegionOut])
def list_regions(request: HttpRequest):
    return Region.objects.all()


@fleet_router.get("/node-classes", response=list[NodeClassOut])
def list_node_classes(request: HttpRequest):
    return NodeClass.objects.all()


@fleet_router.post("/enrollment-tokens", response={201: EnrollmentTokenOut})
def create_enrollment_token(request: HttpRequest, body: EnrollmentTokenIn):
    form = EnrollForm(
        {
            "node_name": body.node_name,
            "region": body.region,
            "node_class": body.node_class,
            "expires_in_hours": body.ttl_hours or settings.OUTPOST_ENROLLMENT_TOKEN_TTL_H,
        }
    )
    if not form.is_valid():
        raise HttpError(400, form_errors(form))
    token, secret = form.issue(created_by=request.auth)
    return Status(
        201,
        EnrollmentTokenOut(
            token=secret,
            node_name=token.node_name,
            region=token.region.code,
            node_class=token.node_class.name,
            expires_at=token.expires_at,
            command=EnrollmentToken.command_for(secret),
        ),
    )


def form_errors(form) -> str:
    """A form's errors as one line for an API error body: "field: message; …"."""
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in form.errors.items())


@fleet_router.post(
    "/nodes/{uid}/simulation",
    response={200: ThermalSimulationOut, 400: protocol.ErrorBody, 404: protocol.ErrorBody},
    summary="Simulate a node's temperature (a demo of thermal offload); null stops it",
)
def simulate_node_temperature(request: HttpRequest, uid: str, body: ThermalSimulationIn):
    node = Node.objects.filter(uid=uid).first()
    if node is None:
        raise HttpError(404, f"no node {uid}")
    stop = body.temperature_c is None
    form = ThermalSimulationForm({"temperature_c": body.temperature_c, "stop": stop}, node=node)
    changed = form.save(actor=request.auth) if form.is_valid() else None
    if changed is None:
        raise HttpError(400, form_errors(form))
    return ThermalSimulationOut(
        uid=node.uid,
        simulated_temperature_c=node.simulated_temperature_c,
        temperature_c=node.temperature_c,
        temperature_simulated=node.temperature_simulated,
        changed=changed,
    )


# --- the model registry -------------------------------------------------------------------

models_router = Router(tags=["models"], auth=[ApiKeyAuth(), staff_session])


def _caller_tenant(request: HttpRequest):
    """The tenant behind an API key; None for an operator, who sees and registers the
    catalogue."""
    return request.auth.tenant if isinstance(request.auth, ApiKey) else None


def version_info(version: ModelVersion, *, created: bool = True) -> protocol.ModelVersionInfo:
    model = version.model
    return protocol.ModelVersionInfo(
        model=model.name,
        owner=model.owner_slug,
        version=version.version,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        status=version.status,
        created=created,
        signals=model.signal_schema,
        opset=version.opset,
        inputs=version.inputs,
        outputs=version.outputs,
        grade=version.grade or None,
        node_class=version.node_class.name if version.node_class_id else None,
        latency=version.latency,
        reasons=version.reasons,
        failure=version.failure or None,
    )


@models_router.post(
    "",
    response={
        200: protocol.ModelVersionInfo,
        201: protocol.ModelVersionInfo,
        400: protocol.ErrorBody,
    },
    summary="Register an ONNX model version (graded in the background)",
)
def register_model(
    request: HttpRequest,
    file: File[UploadedFile],
    name: Form[str],
    description: Form[str] = "",
    signals: Form[str] = "",
):
    if not SLUG.match(name):
        raise HttpError(400, "name must be lowercase letters, digits and dashes (at most 100)")
    try:
        schema = orjson.loads(signals) if signals.strip() else None
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"signals must be a JSON object: {exc}") from None
    if file.size is not None and file.size > settings.OUTPOST_MAX_MODEL_BYTES:
        raise HttpError(
            413,
            f"the file is {file.size} bytes; models may be at most "
            f"{settings.OUTPOST_MAX_MODEL_BYTES} bytes",
        )
    try:
        version, created = register_model_version(
            owner=_caller_tenant(request),
            name=name,
            data=file.read(),
            description=description,
            signals=schema,
            uploaded_by=request.user if request.user.is_authenticated else None,
            actor=request.auth,  # an API key or the operator: who the audit log names
        )
    except InvalidArtifact as exc:
        raise HttpError(400, str(exc)) from None
    return Status(201 if created else 200, version_info(version, created=created))


def _versions(request: HttpRequest):
    return ModelVersion.objects.select_related("model__owner", "node_class").filter(
        model__in=Model.objects.visible_to(_caller_tenant(request))
    )


def _find_version(request: HttpRequest, name: str, version: int, owner: str | None):
    candidates = _versions(request).filter(model__name=name, version=version)
    tenant = _caller_tenant(request)
    if owner is not None:
        candidates = candidates.filter(model__owner__slug=owner)
    elif tenant is not None:
        # A tenant's own model of that name comes before the catalogue's.
        own = candidates.filter(model__owner=tenant).first()
        if own is not None:
            return own
        candidates = candidates.filter(model__owner__isnull=True)
    else:
        candidates = candidates.filter(model__owner__isnull=True)
    found = candidates.first()
    if found is None:
        raise HttpError(404, f"no version {version} of a model named {name!r}")
    return found


@models_router.get("", response=list[protocol.ModelVersionInfo], summary="Model versions")
def list_versions(request: HttpRequest):
    return [version_info(v) for v in _versions(request).order_by("model__name", "-version")]


@models_router.get("/{name}/versions/{version}", response=protocol.ModelVersionInfo)
def get_version(request: HttpRequest, name: str, version: int, owner: str | None = None):
    """One version, with its grade once graded. Operators name a tenant's model with
    `?owner=<tenant slug>`; without it they mean the catalogue."""
    return version_info(_find_version(request, name, version, owner))


# --- deployments (operators) ---------------------------------------------------------------

deployments_router = Router(tags=["deployments"], auth=django_auth_is_staff)


def _deployments():
    return Deployment.objects.select_related("version__model__owner", "previous").prefetch_related(
        Prefetch("events", queryset=DeploymentEvent.objects.select_related("actor")),
        Prefetch("pins", queryset=TenantPin.objects.select_related("tenant")),
    )


@deployments_router.get("", response=list[DeploymentOut])
def list_deployments(request: HttpRequest):
    return _deployments()


@deployments_router.get("/{deployment_id}", response=DeploymentOut)
def get_deployment(request: HttpRequest, deployment_id: int):
    return get_object_or_404(_deployments(), pk=deployment_id)


@deployments_router.post("", response={201: DeploymentOut})
def create_deployment(request: HttpRequest, body: DeploymentIn):
    version = _find_version(request, body.model, body.version, body.owner)
    regions = list(Region.objects.filter(code__in=body.regions))
    unknown = set(body.regions) - {r.code for r in regions}
    classes = list(NodeClass.objects.filter(name__in=body.node_classes))
    unknown |= set(body.node_classes) - {c.name for c in classes}
    if unknown:
        raise HttpError(400, f"unknown regions or node classes: {', '.join(sorted(unknown))}")
    if body.strategy not in Strategy.values:
        raise HttpError(400, f"strategy must be one of {', '.join(Strategy.values)}")
    try:
        deployment = start_rollout(
            version,
            regions=regions,
            node_classes=classes,
            strategy=body.strategy,
            steps=body.steps,
            soak_s=body.soak_s,
            gates=Gates(body.max_error_rate_increase, body.max_p95_ratio, body.min_requests),
            rollback_on_drift=body.rollback_on_drift,
            acting_user=request.auth,
        )
    except (RolloutError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None
    return Status(201, get_object_or_404(_deployments(), pk=deployment.pk))


@deployments_router.post("/{deployment_id}/actions", response=DeploymentOut)
def act_on_deployment(request: HttpRequest, deployment_id: int, body: DeploymentActionIn):
    deployment = get_object_or_404(Deployment, pk=deployment_id)
    actions = {
        "pause": lambda: pause(deployment, acting_user=request.auth),
        "resume": lambda: resume(deployment, acting_user=request.auth),
        "promote": lambda: promote(deployment, acting_user=request.auth),
        "roll_back": lambda: roll_back(
            deployment, reason=body.reason or "rolled back by hand", acting_user=request.auth
        ),
    }
    if body.action not in actions:
        raise HttpError(400, f"action must be one of {', '.join(actions)}")
    return _carried_out(actions[body.action], deployment_id)


def _carried_out(change, deployment_id: int):
    """Run a rollout action (a refusal is a 400 with its reason); the deployment after it."""
    try:
        change()
    except RolloutError as exc:
        raise HttpError(400, str(exc)) from None
    return get_object_or_404(_deployments(), pk=deployment_id)


@deployments_router.post(
    "/{deployment_id}/pins",
    response=DeploymentOut,
    summary="Pin a tenant to the new or the previous version (a controlled rollout)",
)
def pin_tenant(request: HttpRequest, deployment_id: int, body: PinIn):
    deployment = get_object_or_404(Deployment, pk=deployment_id)
    tenant = Tenant.objects.filter(slug=body.tenant).first()
    if tenant is None:
        raise HttpError(400, f"no tenant '{body.tenant}'")
    return _carried_out(
        lambda: pin(deployment, tenant, body.side, acting_user=request.auth), deployment_id
    )


@deployments_router.delete(
    "/{deployment_id}/pins/{tenant}",
    response=DeploymentOut,
    summary="Unpin a tenant: its requests follow the traffic split again",
)
def unpin_tenant(request: HttpRequest, deployment_id: int, tenant: str):
    deployment = get_object_or_404(Deployment, pk=deployment_id)
    found = get_object_or_404(Tenant, slug=tenant)
    return _carried_out(lambda: unpin(deployment, found, acting_user=request.auth), deployment_id)
