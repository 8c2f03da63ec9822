"""The demo's story of a model: a tenant registers it with the one-line SDK, an operator
rolls it out to a region, a retrained version canaries and promotes itself, a broken
version rolls itself back on errors, and a version retrained on skewed data rolls itself
back on output drift — through the same SDK, actions and Celery beat a real provider
uses, while the traffic generator calls the nodes. `manage.py demo` runs it once the fleet
is up (`manage.py demo_story`); a second run of the demo finds it told and says so.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from django.contrib.auth import get_user_model
from django.db import connections
from onnx import TensorProto, helper

from billing.models import ApiKey, Tenant
from fleet.actions import register_model_version
from fleet.choices import DeploymentState, PinSide
from fleet.drift_actions import drift_soak_s
from fleet.models import Deployment, ModelVersion, Region
from fleet.rollout_actions import RolloutError, pin, start_rollout
from fleet.rollouts import Gates
from inference.demo_models import IR_VERSION, OPSET, tiny_classifier
from inference.sdk import Outpost

TENANT = "acme"
MODEL = "churn"
REGION = "eu-west"
KEY_NAME = "demo story"
SIGNALS = {"tier": "string", "visits": "int"}
# Small gates so the story moves at the demo's few requests per second.
GATES = Gates(max_error_rate_increase=0.05, max_p95_ratio=3.0, min_requests=15)
WAIT_S = 900
# v4's training data is mostly class 0: healthy, as fast, and it answers differently.
SKEW = (0.8, 0.1, 0.1)


def broken_classifier() -> onnx.ModelProto:
    """The classifier's signature over a lookup table of one entry: it passes grading (which
    runs zeros, index 0) and fails on nearly every real request (an index out of range)."""
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 8])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["labels", "index"], ["label"]),
        helper.make_node("Gather", ["table", "index"], ["probabilities"]),
    ]
    weights = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("labels", TensorProto.INT64, [1], [0]),
        helper.make_tensor("table", TensorProto.FLOAT, [1, 3], [1.0, 0.0, 0.0]),
    ]
    graph = helper.make_graph(nodes, "churn-broken", [features], [label, probabilities], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = "Deliberately broken: looks features up in a one-entry table"
    return model


def _wait(what: str, check: Callable[[], object], say: Callable[[str], None]) -> object:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = check()
        connections.close_all()  # each look is fresh; SQLite keeps no snapshot open
        if result:
            return result
        time.sleep(2)
    raise TimeoutError(f"gave up waiting for {what}")


def _finished(deployment: Deployment) -> Deployment | None:
    deployment.refresh_from_db()
    done = (DeploymentState.COMPLETED, DeploymentState.ROLLED_BACK)
    return deployment if deployment.state in done else None


def tell(console_url: str, say: Callable[[str], None]) -> None:
    tenant = Tenant.objects.get(slug=TENANT)
    if Deployment.objects.filter(
        version__model__owner=tenant, version__model__name=MODEL, version__version__gte=3
    ).exists():
        say(f"the story of {TENANT}/{MODEL} was told on an earlier run; see /fleet/deployments/")
        return
    for old in ApiKey.objects.active().filter(tenant=tenant, name=KEY_NAME):
        old.revoke()
    _, secret = ApiKey.issue(tenant, KEY_NAME)
    region = Region.objects.get(code=REGION)
    operator = get_user_model().objects.get(username="operator")

    with tempfile.TemporaryDirectory() as tmp, Outpost(console_url, secret) as outpost:
        skewed = tiny_classifier(samples=4000, class_weights=SKEW)
        chapters = [
            ("v1", tiny_classifier(), "first version", [50, 100], 20, False),
            (
                "v2",
                tiny_classifier(samples=4000),
                "retrained on twice the data",
                [25, 100],
                20,
                False,
            ),
            ("v3", broken_classifier(), "deliberately broken", [25, 100], 60, False),
            ("v4", skewed, "retrained on a skewed sample", [50, 100], drift_soak_s(), True),
        ]
        for label, proto, what, steps, soak, on_drift in chapters:
            path = Path(tmp) / f"{MODEL}-{label}.onnx"
            onnx.save(proto, path)
            say(f"{TENANT} registers {MODEL} ({what}) with the SDK …")
            info = outpost.register_model(path, name=MODEL, signals=SIGNALS)
            if info.status != "graded":
                say(f"grading failed: {info.failure}")
                return
            say(
                f"{TENANT}/{MODEL} v{info.version}: grade {info.grade}, needs a "
                f"{info.node_class} node — {info.reasons[0] if info.reasons else ''}"
            )
            version = ModelVersion.objects.get(
                model__owner=tenant, model__name=MODEL, version=info.version
            )
            deployment = start_rollout(
                version,
                regions=[region],
                steps=steps,
                soak_s=soak,
                gates=GATES,
                rollback_on_drift=on_drift,
                acting_user=operator,
            )
            say(
                f"operator canaries v{info.version} to {REGION} "
                f"({' → '.join(f'{s} %' for s in steps)}"
                f"{', rolling back on drift' if on_drift else ''}): "
                f"/fleet/deployments/{deployment.pk}/"
            )
            deployment = _wait(
                f"deployment {deployment.pk}", lambda d=deployment: _finished(d), say
            )
            last = deployment.events.first()
            say(f"v{info.version} {deployment.get_state_display().lower()}: {last.reason}")
    try:
        pin_tenants(region, operator, say)
    except RolloutError as exc:
        say(f"the pins chapter stopped: {exc}")


# The catalogue chapter: a retrained catalogue model canaries with per-tenant pins.
CATALOGUE_MODEL = "tiny-classifier"
PINS = (
    ("nakamura", PinSide.OLD, "validates new versions before moving"),
    ("globex", PinSide.NEW, "opts in early"),
)


def pin_tenants(region: Region, operator, say: Callable[[str], None]) -> None:
    """The operator takes the catalogue's tiny-classifier under deployment in eu-west, then
    canaries a retrained v2 with nakamura kept on v1 and globex moved to v2 at once — the
    traffic generator calls it as all three tenants, with their tokens."""
    current = (
        ModelVersion.objects.filter(model__owner=None, model__name=CATALOGUE_MODEL)
        .order_by("version")
        .first()
    )
    if current is None:
        say(f"no {CATALOGUE_MODEL} in the catalogue: skipping the pins chapter")
        return
    first = start_rollout(
        current,
        regions=[region],
        strategy="all_at_once",
        soak_s=20,
        gates=GATES,
        acting_user=operator,
    )
    say(
        f"operator takes the catalogue's {CATALOGUE_MODEL} v{current.version} under deployment in {REGION}: /fleet/deployments/{first.pk}/"
    )
    _wait(f"deployment {first.pk}", lambda: _finished(first), say)
    version, _ = register_model_version(
        owner=None,
        name=CATALOGUE_MODEL,
        data=tiny_classifier(samples=3000).SerializeToString(),
        description="retrained on 3,000 samples",
        uploaded_by=operator,
    )
    version = _wait(f"{version} to be graded", lambda: _graded(version), say)
    canary = start_rollout(
        version, regions=[region], steps=[50, 100], soak_s=60, gates=GATES, acting_user=operator
    )
    for slug, side, why in PINS:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is not None:
            pin(canary, tenant, side, acting_user=operator)
            say(
                f"operator pins {slug} to the {'new' if side == PinSide.NEW else 'previous'} version ({slug} {why})"
            )
    say(
        f"{CATALOGUE_MODEL} v{version.version} canaries 50 % → 100 % with tenant pins: /fleet/deployments/{canary.pk}/"
    )
    canary = _wait(f"deployment {canary.pk}", lambda: _finished(canary), say)
    say(
        f"{CATALOGUE_MODEL} v{version.version} {canary.get_state_display().lower()}; nakamura stays on v{current.version} until unpinned"
    )


def _graded(version: ModelVersion) -> ModelVersion | None:
    version.refresh_from_db()
    return version if version.status != "grading" else None
