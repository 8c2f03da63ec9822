"""Policy enforcement with real agents on loopback and a real console (live server): an edge
node (nano) and the region's accelerator pool (one accelerator node), both enrolled.

- privacy: a local_only tenant's requests are never forwarded (counted at the pool);
- offload: a model the edge lacks goes to the pool, billed there once, session on one node;
- thermal and cost: a heated or too dear node offloads, and takes its traffic back after;
- spend cap: a session's 64 concurrent requests never spend more than its cap (402 beyond);
- rate limit (429), token forgery, expiry and revocation (401), decision logs by request id;
- a policy change reaches both nodes by pull and by push.
"""

import asyncio
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from billing.api import issue_tenant_token
from billing.models import ApiKey, Price, Tenant
from billing.signing import console_private_key
from fleet.models import DecisionLog, Model, ModelVersion, Node, PolicyBundleRecord
from fleet.policies import set_accelerator_pool, set_node_class_thresholds, update_policy
from fleet.policy_plane import publish_bundle, push_bundle
from inference import protocol
from tests.inference.harness import doubler_model
from tests.integration.conftest import serve_enrolled, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

INPUT = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def start_agent(start_process, console_url, root, name, region, node_class, models):
    files = [root / "models" / f"{model}.onnx" for model in models]
    port = serve_enrolled(start_process, console_url, root, name, region, node_class, files)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fleet(live_server, start_process, tmp_path, settings, eu_west, nano, accelerator):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    (tmp_path / "models").mkdir()
    doubler_model(tmp_path / "models" / "doubler.onnx")
    doubler_model(tmp_path / "models" / "big.onnx")
    edge = start_agent(
        start_process, live_server.url, tmp_path, "fra-nano-1", eu_west, nano, ["doubler"]
    )
    pool = start_agent(
        start_process,
        live_server.url,
        tmp_path,
        "fra-gpu-1",
        eu_west,
        accelerator,
        ["doubler", "big"],
    )
    wait_until(lambda: Node.objects.filter(status="online").count() == 2, timeout=40)
    gpu = Node.objects.get(name="fra-gpu-1")
    set_accelerator_pool(eu_west, name="Frankfurt accelerators", nodes=[gpu], actor=None)
    # The console's catalogue grades both models (as grading would): the edge knows `big`
    # exists in the region though it does not serve it.
    for number, name in enumerate(("doubler", "big"), start=1):
        ModelVersion.objects.create(
            model=Model.objects.create(name=name),
            version=1,
            sha256=f"{number:064x}",
            size_bytes=1,
            opset=17,
            status="graded",
            grade="tiny",
        )
    for serving, price in (("local", "1.00"), ("regional", "3.00")):
        Price.objects.create(
            grade="tiny",
            serving=serving,
            per_1000=Decimal(price),
            effective_from=timezone.now() - timedelta(days=1),
        )
    return {"edge": edge, "pool": pool, "gpu": gpu}


def tenant(slug: str, **policy) -> str:
    found = Tenant.objects.create(slug=slug, name=slug.title())
    if policy:
        update_policy(found, policy, actor=None, actor_kind="operator")
    return issue_tenant_token(found, 600).token


def converge() -> int:
    """Publish the bundle for the current data and wait until both nodes enforce it."""
    record = publish_bundle(["test"]) or PolicyBundleRecord.objects.order_by("-revision")[0]
    wait_until(
        lambda: set(Node.objects.values_list("bundle_revision", flat=True)) == {record.revision},
        timeout=20,
        what=f"both nodes on revision {record.revision}",
    )
    return record.revision


def infer(url, token, model="doubler", **headers):
    headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v2/models/{model}/infer", json=INPUT, headers=headers, timeout=10)


def counter(url, name, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}}" if labels else name
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def forwarded_to(url) -> float:
    return counter(url, "outpost_routing_decisions_total", action="local", rule="forwarded")


def test_privacy_offload_and_billing_once(fleet):
    acme = tenant("acme")
    hermit = tenant("hermit", privacy_mode="local_only", fallback="reject")
    converge()
    edge, pool, gpu = fleet["edge"], fleet["pool"], fleet["gpu"]

    # Served here, priced locally.
    local = infer(edge, acme, **{"X-Request-Id": "req-local"})
    assert local.status_code == 200, local.text
    assert local.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert local.headers["X-Outpost-Served-By"] == "local"
    assert local.headers["X-Outpost-Cost"] == "0.001 EUR"
    assert float(local.headers["X-Outpost-Overhead-Ms"]) >= 0

    # The edge lacks `big`: offloaded to the pool, which serves it once.
    offloaded = infer(edge, acme, "big", **{"X-Request-Id": "req-big", "X-Session-Id": "s-1"})
    assert offloaded.status_code == 200, offloaded.text
    assert offloaded.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert offloaded.headers["X-Outpost-Served-By"] == "regional"
    assert offloaded.headers["X-Outpost-Node"] == gpu.uid
    assert offloaded.headers["X-Outpost-Offload-Reason"] == "model_not_local"
    assert offloaded.headers["X-Outpost-Cost"] == "0.003 EUR"
    assert forwarded_to(pool) == 1
    # The edge counted no inference of `big`: the pool served (and bills) it.
    assert counter(edge, "outpost_inference_requests_total", model="big", outcome="success") == 0

    # local_only: never forwarded, whatever the model.
    refused = infer(edge, hermit, "big", **{"X-Request-Id": "req-hermit"})
    assert refused.status_code == 403
    assert "local_only" in refused.json()["error"]
    assert refused.headers["X-Outpost-Rule"] == "privacy"
    assert infer(edge, hermit).status_code == 200
    assert forwarded_to(pool) == 1

    # The operator can look up why: decisions ride on heartbeats, from both hops.
    wait_until(
        lambda: DecisionLog.objects.filter(request_id__in=["req-big", "req-hermit"]).count() == 3,
        timeout=15,
        what="the decisions reported",
    )
    hops = list(DecisionLog.objects.for_request("req-big"))
    assert [(d.node.name, d.action, d.rule, d.served_by) for d in hops] == [
        ("fra-nano-1", "offload", "model_not_local", "regional"),
        ("fra-gpu-1", "local", "forwarded", "regional"),
    ]
    assert hops[0].target == gpu.uid
    assert hops[0].bundle_revision == PolicyBundleRecord.objects.latest_revision()
    assert DecisionLog.objects.for_request("req-hermit").get().status == 403


def test_a_hot_node_sheds_to_the_pool_and_takes_its_traffic_back(fleet, nano):
    acme = tenant("acme")
    set_node_class_thresholds(nano, thermal_envelope_c="50", cost_ceilings={}, actor=None)
    converge()
    edge, pool = fleet["edge"], fleet["pool"]
    assert infer(edge, acme).headers["X-Outpost-Served-By"] == "local"

    Node.objects.filter(name="fra-nano-1").update(simulated_temperature_c=70.0)

    def served_by():
        return infer(edge, acme).headers["X-Outpost-Served-By"]

    wait_until(lambda: served_by() == "regional", timeout=20, what="thermal offload")
    answer = infer(edge, acme)
    assert answer.headers["X-Outpost-Offload-Reason"] == "thermal"
    wait_until(lambda: Node.objects.get(name="fra-nano-1").temperature_simulated, what="reported")
    assert forwarded_to(pool) >= 1

    Node.objects.filter(name="fra-nano-1").update(simulated_temperature_c=None)
    wait_until(lambda: served_by() == "local", timeout=40, what="traffic back after cooling")


def test_a_node_too_dear_for_the_grade_offloads_until_the_ceiling_allows_it(fleet, nano):
    acme = tenant("acme")
    set_node_class_thresholds(
        nano, thermal_envelope_c=None, cost_ceilings={"tiny": "0"}, actor=None
    )
    converge()
    edge = fleet["edge"]

    wait_until(
        lambda: infer(edge, acme).headers.get("X-Outpost-Offload-Reason") == "cost",
        timeout=10,
        what="cost offload",
    )
    set_node_class_thresholds(
        nano, thermal_envelope_c=None, cost_ceilings={"tiny": "1000"}, actor=None
    )
    converge()
    assert infer(edge, acme).headers["X-Outpost-Served-By"] == "local"


def test_a_session_never_spends_past_its_cap_under_64_concurrent_requests(fleet):
    # 0.001 EUR per local inference; a cap of 0.02 allows exactly 20.
    capped = tenant(
        "capped", max_spend_per_session="0.02", privacy_mode="local_only", fallback="reject"
    )
    converge()
    edge = fleet["edge"]

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            headers = {"Authorization": f"Bearer {capped}", "X-Session-Id": "sess-64"}
            return await asyncio.gather(
                *(
                    client.post(f"{edge}/v2/models/doubler/infer", json=INPUT, headers=headers)
                    for _ in range(64)
                )
            )

    answers = asyncio.run(burst())
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 402]
    assert len(served) + len(refused) == 64
    spent = sum(Decimal(a.headers["X-Outpost-Cost"].split()[0]) for a in served)
    assert spent <= Decimal("0.02")  # at most one price over: here, none
    assert len(served) == 20
    assert "has spent" in refused[0].json()["error"]
    # Another session starts afresh.
    assert infer(edge, capped, **{"X-Session-Id": "sess-other"}).status_code == 200


def test_rate_limits_and_tokens_forged_expired_or_revoked(fleet):
    found = Tenant.objects.create(slug="acme", name="Acme")
    update_policy(found, {"rate_limit_per_s": 3}, actor=None, actor_kind="operator")
    key, _ = ApiKey.issue(found, "ci")
    token = issue_tenant_token(found, 600, api_key=key).token
    converge()
    edge = fleet["edge"]

    statuses = [infer(edge, token).status_code for _ in range(8)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses
    limited = next(a for a in (infer(edge, token) for _ in range(5)) if a.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert "3 requests per second" in limited.json()["error"]

    assert httpx.post(f"{edge}/v2/models/doubler/infer", json=INPUT).status_code == 401
    other = protocol.generate_private_key()
    forged = protocol.issue_token(
        other,
        protocol.TokenClaims(
            tenant="acme",
            scopes=["infer"],
            issued_at=timezone.now(),
            expires_at=timezone.now() + timedelta(minutes=5),
            token_id="forged-1234",
            key_id=protocol.key_id(other.public_key()),
        ),
    )
    assert infer(edge, forged).status_code == 401
    key_id = protocol.key_id(console_private_key().public_key())
    expired = protocol.issue_token(
        console_private_key(),
        protocol.TokenClaims(
            tenant="acme",
            scopes=["infer"],
            issued_at=timezone.now() - timedelta(minutes=10),
            expires_at=timezone.now() - timedelta(minutes=1),
            token_id="expired-1234",
            key_id=key_id,
        ),
    )
    answer = infer(edge, expired)
    assert answer.status_code == 401
    assert "expired" in answer.json()["error"]

    key.revoke()
    converge()
    revoked = infer(edge, token)
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]


def test_a_policy_change_reaches_both_nodes_by_push_and_by_pull(fleet, settings):
    found = Tenant.objects.create(slug="acme", name="Acme")
    first = converge()

    # Pull: the next heartbeat answer names the new revision.
    update_policy(found, {"quality": "high"}, actor=None, actor_kind="operator")
    assert converge() == first + 1

    # Push: with heartbeats far apart, the push alone delivers it.
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 60
    update_policy(found, {"quality": "best_effort"}, actor=None, actor_kind="operator")
    record = publish_bundle(["pushed"])
    for node in Node.objects.all():
        assert push_bundle(node, record) is True
    for url in (fleet["edge"], fleet["pool"]):
        assert counter(url, "outpost_policy_bundle_revision") == record.revision
