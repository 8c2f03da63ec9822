"""The demo's story of the policy plane, told against the running fleet while the traffic
generator calls the nodes:

1. every node enforces the newest signed bundle, and the console proves it (/fleet/bundles/);
2. an operator changes a tenant's policy, and the change reaches every node within seconds;
3. a session of that tenant hits its spend cap and gets 402;
4. a local_only tenant's request for a model its node lacks is refused (403), never forwarded,
   while another tenant's same request is offloaded to the region's accelerator pool;
5. an operator heats a node (a simulated temperature, marked so everywhere): its traffic
   moves to the regional pool, and comes back once it has cooled. The heat cycle repeats every
   few minutes while the demo runs, so there is always one to watch.

Everything goes through the same actions, Celery tasks and node endpoints a real provider
uses; each step prints where to look in the console. `manage.py demo_policy_story`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import numpy as np
from django.contrib.auth import get_user_model
from django.db import connections

from billing.models import ApiKey, Tenant
from console.demo.traffic import build_infer_request
from fleet.choices import PolicyActorKind
from fleet.models import Node, PolicyBundleRecord
from fleet.policies import update_policy
from fleet.policy_plane import publish_bundle
from inference import protocol

KEY_NAME = "demo policy story"
# The node the story heats and calls: the demo's first node (eu-west, nano).
HOT_NODE = "eu-west-nano-1"
CAPPED = "globex"
# globex pays in USD: 50 tiny inferences at the demo's local price of $0.06 per 1,000.
CAP = Decimal("0.003")
LOCAL_ONLY = "nakamura"
# Asks for the same model as LOCAL_ONLY and is offloaded: in_region, so the region's pool is
# allowed, and no spend cap (a large regional inference costs more than globex's cap).
OFFLOADED = "acme"
MODEL = "tiny-classifier"
# A model the nano node does not serve and the eu-west accelerator does.
FAR_MODEL = "random-convnet-large"
HEAT_C = 90.0
HOLD_S = 60
COOL_WAIT_S = 180
CYCLE_S = 300
WAIT_S = 300


class StoryError(Exception):
    pass


def _wait(what: str, check: Callable[[], object], *, timeout: float = WAIT_S, every=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        connections.close_all()  # each look is fresh; SQLite keeps no snapshot open
        if result:
            return result
        time.sleep(every)
    raise StoryError(f"gave up waiting for {what}")


def _enforced_everywhere(revision: int) -> bool:
    return not Node.objects.exclude(bundle_revision=revision).exists()


def _latest() -> int | None:
    return PolicyBundleRecord.objects.latest_revision()


class Caller:
    """Calls a node's OIP endpoint as a tenant, with a token from the console."""

    def __init__(self, console_url: str, tenant: Tenant) -> None:
        for old in ApiKey.objects.active().filter(tenant=tenant, name=KEY_NAME):
            old.revoke()
        _, secret = ApiKey.issue(tenant, KEY_NAME)
        answer = httpx.post(
            console_url.rstrip("/") + protocol.TOKENS_PATH,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        answer.raise_for_status()
        self.token = answer.json()["token"]
        self.tenant = tenant.slug

    def infer(self, node: Node, model: str, body: dict, **headers) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **headers}
        return httpx.post(
            f"{node.endpoint}/v2/models/{model}/infer", json=body, headers=headers, timeout=30
        )


def _body(node: Node, model: str) -> dict:
    """A valid request for the model, built from the node's (or the pool's) metadata."""
    for candidate in [node, *Node.objects.filter(region=node.region).exclude(pk=node.pk)]:
        try:
            answer = httpx.get(f"{candidate.endpoint}/v2/models/{model}", timeout=5)
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            return build_infer_request(answer.json(), np.random.default_rng(11))
    raise StoryError(f"no node of {node.region} serves {model}")


def _offloads(node: Node, rule: str) -> float:
    """How many requests the node has offloaded for `rule`, from its /metrics."""
    prefix = f'outpost_routing_decisions_total{{action="offload",rule="{rule}"}} '
    try:
        text = httpx.get(f"{node.endpoint}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def tell(console_url: str, say: Callable[[str], None], *, cycles: int | None = None) -> None:
    operator = get_user_model().objects.get(username="operator")
    hot = Node.objects.get(name=HOT_NODE)

    # 1. The signed bundle, enforced everywhere.
    revision = _latest() or publish_bundle(["demo policy story"]).revision
    _wait(f"every node enforcing bundle {revision}", lambda: _enforced_everywhere(revision))
    say(
        f"every node enforces policy bundle r{revision}, signed by the console; the console "
        "shows each node's revision: /fleet/bundles/"
    )

    # 2. A policy change reaches every node.
    capped = Tenant.objects.get(slug=CAPPED)
    started = time.monotonic()
    policy = update_policy(
        capped,
        {"max_spend_per_session": str(CAP)},
        actor=operator,
        actor_kind=PolicyActorKind.OPERATOR,
    )
    revision = _wait("the change to be compiled", lambda: _newer(revision), every=0.2)
    nodes = list(Node.objects.all())
    _wait(
        f"every node enforcing bundle {revision}",
        lambda: all(_enforcing(node) >= revision for node in nodes),
        every=0.1,
    )
    enforced_s = time.monotonic() - started
    _wait(f"every node reporting bundle {revision}", lambda: _enforced_everywhere(revision))
    say(
        f"operator caps {CAPPED}'s spend at {CAP} {capped.currency} a session (policy "
        f"r{policy.revision}): bundle r{revision} is enforced by all {len(nodes)} nodes "
        f"{enforced_s:.1f} s after the change (pushed by Celery), and each has reported it "
        f"{time.monotonic() - started:.1f} s after — /fleet/bundles/{revision}/"
    )

    # 3. A session hits its cap.
    caller = Caller(console_url, capped)
    body = _body(hot, MODEL)
    session = f"demo-cap-{uuid.uuid4().hex[:6]}"
    for count in range(1, 500):
        answer = caller.infer(hot, MODEL, body, **{"X-Session-Id": session})
        if answer.status_code == 402:
            say(
                f"{CAPPED}'s session {session} on {HOT_NODE}: inference {count} refused with "
                f"402 — {answer.json()['error']}; why: /fleet/decisions/?request_id="
                f"{answer.headers.get('x-request-id')}"
            )
            break
        if answer.status_code != 200:
            say(f"{CAPPED}'s session got {answer.status_code}: {answer.text[:200]}")
            break
    else:
        say(f"{CAPPED}'s session never reached its cap (is there a price for {MODEL}?)")

    # 4. Privacy: never forwarded, against offloaded. The node must know the model exists in
    # the region (the bundle grades it once the worker has graded it).
    _wait(f"{FAR_MODEL} to be graded into the bundle {HOT_NODE} enforces", lambda: _knows(hot))
    far = _body(hot, FAR_MODEL)
    hermit = Caller(console_url, Tenant.objects.get(slug=LOCAL_ONLY))
    refused = hermit.infer(hot, FAR_MODEL, far)
    traveller = Caller(console_url, Tenant.objects.get(slug=OFFLOADED))
    offloaded = traveller.infer(hot, FAR_MODEL, far, **{"X-Session-Id": f"demo-far-{session}"})
    say(
        f"{LOCAL_ONLY} (local_only) asks {HOT_NODE} for {FAR_MODEL}, which it lacks: "
        f"{refused.status_code} — {refused.json().get('error', '')[:120]}"
    )
    say(
        f"{OFFLOADED} asks the same: {offloaded.status_code}, served by "
        f"{offloaded.headers.get('x-outpost-served-by')} node "
        f"{offloaded.headers.get('x-outpost-node')} for {offloaded.headers.get('x-outpost-cost')}"
        f" — /fleet/decisions/?request_id={offloaded.headers.get('x-request-id')}"
    )

    # 5. Heat, and cool, again and again.
    cycle = 0
    while cycles is None or cycle < cycles:
        cycle += 1
        heat(hot, operator, say)
        if cycles is not None and cycle >= cycles:
            break
        time.sleep(CYCLE_S)


def _enforcing(node: Node) -> int:
    """The bundle revision the node enforces, from its own /metrics (0 when unknown)."""
    prefix = "outpost_policy_bundle_revision "
    try:
        text = httpx.get(f"{node.endpoint}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(float(line[len(prefix) :]))
    return 0


def _knows(node: Node) -> bool:
    enforced = _enforcing(node)
    record = PolicyBundleRecord.objects.filter(revision=enforced).first()
    return record is not None and any(m.name == FAR_MODEL for m in record.bundle.models)


def _newer(revision: int) -> int | None:
    latest = _latest()
    return latest if latest is not None and latest > revision else None


def _reported_hot(node: Node) -> bool:
    node.refresh_from_db()
    return node.temperature_simulated and node.temperature_c is not None


def heat(node: Node, operator, say: Callable[[str], None]) -> None:
    before = _offloads(node, "thermal")
    node.simulate_temperature(HEAT_C, actor=operator)
    say(
        f"operator heats {node.name} to {HEAT_C:.0f} °C (SIMULATED, 1 °C/s from its reading; "
        f"its class's envelope is {node.node_class.thermal_envelope_c} °C): /fleet/nodes/"
        f"{node.uid}/"
    )
    _wait(
        f"{node.name} to shed traffic for heat",
        lambda: _offloads(node, "thermal") > before,
        timeout=120,
    )
    _wait(f"{node.name} to report its heat", lambda: _reported_hot(node), timeout=30)
    say(
        f"{node.name} at {node.temperature_c or 0:.0f} °C sheds traffic to the eu-west pool "
        "(best-effort first, on the predicted temperature; all of it past the envelope): "
        "/fleet/decisions/?rule=thermal"
    )
    time.sleep(HOLD_S)
    shed = _offloads(node, "thermal") - before
    node.simulate_temperature(None, actor=operator)
    say(f"operator stops the simulation after {shed:.0f} thermal offloads; {node.name} cools")
    settled = _offloads(node, "thermal")

    def back() -> bool:
        nonlocal settled
        now = _offloads(node, "thermal")
        quiet, settled = now == settled, now
        return quiet

    time.sleep(5)
    _wait(f"{node.name} to serve its traffic again", back, timeout=COOL_WAIT_S, every=10)
    node.refresh_from_db()
    say(
        f"{node.name} is back under its envelope at {node.temperature_c or 0:.0f} °C and cooling: "
        "its traffic is served here again"
    )
