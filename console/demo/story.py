"""The demo's story of a model: a tenant registers it with the one-line SDK, an operator
rolls it out to a region, a retrained version canaries and promotes itself, and a broken
version rolls itself back — through the same SDK, actions and Celery beat a real provider
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
from fleet.choices import DeploymentState
from fleet.models import Deployment, ModelVersion, Region
from fleet.rollout_actions import start_rollout
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
WAIT_S = 600


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
        chapters = [
            ("v1", tiny_classifier(), "first version", [50, 100], 20),
            ("v2", tiny_classifier(samples=4000), "retrained on twice the data", [25, 100], 20),
            ("v3", broken_classifier(), "deliberately broken", [25, 100], 60),
        ]
        for label, proto, what, steps, soak in chapters:
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
                acting_user=operator,
            )
            say(
                f"operator canaries v{info.version} to {REGION} "
                f"({' → '.join(f'{s} %' for s in steps)}): /fleet/deployments/{deployment.pk}/"
            )
            deployment = _wait(
                f"deployment {deployment.pk}", lambda d=deployment: _finished(d), say
            )
            last = deployment.events.first()
            say(f"v{info.version} {deployment.get_state_display().lower()}: {last.reason}")
