"""The policy simulator: what a node would decide for a request under the newest bundle,
computed by the nodes' own inference.policy.decide — on its page (/fleet/policies/simulator/)
and in the API (POST /api/v1/policy/simulate). Every bundle here is published with
publish_bundle from rows built in the test."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import ApiKey, Price, Tenant
from fleet import simulator
from fleet.models import Model, ModelVersion, Node
from fleet.policies import set_accelerator_pool, set_node_class_thresholds, update_policy
from fleet.policy_plane import publish_bundle
from inference import policy
from inference.enforcement import cost_per_1000

pytestmark = pytest.mark.django_db

PAGE = "/fleet/policies/simulator/"
API = "/api/v1/policy/simulate"


def text(response) -> str:
    words = re.sub(r"<[^>]+>", " ", response.content.decode())
    return " ".join(html.unescape(words).split())


@pytest.fixture
def fra_1(make_node, eu_west, nano, accelerator, acme):
    """A nano node of eu-west (thermal envelope 75 °C) serving the catalogue's tiny
    "sentiment" model, beside the region's accelerator pool; acme may offload and spend 0.50
    EUR a session, globex is local only; tiny costs 0.40 EUR per 1,000 here, 0.90 offloaded."""
    gpu = make_node("fra-gpu-1", eu_west, accelerator)
    set_accelerator_pool(eu_west, name="Frankfurt accelerators", nodes=[gpu], actor=None)
    set_node_class_thresholds(nano, thermal_envelope_c="75", cost_ceilings={}, actor=None)
    globex = Tenant.objects.create(slug="globex", name="Globex")
    update_policy(acme, {"max_spend_per_session": "0.50"}, actor=None, actor_kind="operator")
    update_policy(
        globex,
        {"privacy_mode": "local_only", "fallback": "reject"},
        actor=None,
        actor_kind="operator",
    )
    since = timezone.now() - timedelta(days=1)
    Price.objects.create(grade="tiny", serving="local", per_1000="0.40", effective_from=since)
    Price.objects.create(grade="tiny", serving="regional", per_1000="0.90", effective_from=since)
    ModelVersion.objects.create(
        model=Model.objects.create(name="sentiment"),
        version=1,
        sha256="5e" * 32,
        size_bytes=1000,
        opset=17,
        status="graded",
        grade="tiny",
    )
    node = make_node(
        "fra-1",
        eu_west,
        nano,
        temperature_c=58.0,
        queue_depth=3,
        models_loaded=[
            {
                "name": "sentiment",
                "version": "1",
                "sha256": "5e" * 32,
                "ready": True,
                "run_ms_batch1": 2.0,
            }
        ],
    )
    assert publish_bundle(["test"]).revision == 1
    return node


def simulate(client, node, **fields):
    return client.get(PAGE, {"tenant": "acme", "model": "sentiment", "node": node.uid, **fields})


def decision(response) -> policy.Decision:
    return response.context["simulation"].decision


# --- the rules the page shows ------------------------------------------------------------------


def test_a_node_within_its_envelope_serves_the_request_here(operator, fra_1):
    response = simulate(operator, fra_1)

    assert decision(response) == policy.Decision(
        "local", 200, "local", "served here", price=Decimal("0.0004")
    )
    page = text(response)
    assert "Served here HTTP 200 rule local" in page
    assert "0.0004 EUR" in page
    assert "under bundle r1" in page


def test_a_hot_node_offloads_to_the_regional_pool(operator, fra_1):
    response = simulate(operator, fra_1, temperature_c="90")

    made = decision(response)
    assert (made.action, made.status, made.rule, made.pools) == (
        "offload",
        200,
        "thermal",
        ("eu-west",),
    )
    assert made.price == Decimal("0.0009")  # the regional price
    body = response.content.decode()
    assert 'data-action="offload" data-status="200" data-rule="thermal"' in body
    page = text(response)
    assert "Offloaded HTTP 200 rule thermal" in page
    assert "The node is at or over its class's thermal envelope" in page
    assert "eu-west pool (zone EU)" in page


def test_a_node_heating_fast_sheds_best_effort_traffic_before_the_envelope(operator, fra_1):
    steady = simulate(operator, fra_1, temperature_c="70")
    rising = simulate(operator, fra_1, temperature_c="70", trend_c_per_min="20")

    assert decision(steady).action == "local"
    assert (decision(rising).action, decision(rising).rule) == ("offload", "thermal")


def test_privacy_refuses_a_local_only_tenant_whose_model_is_not_here(operator, fra_1):
    response = simulate(operator, fra_1, tenant="globex", model_loaded="no")

    made = decision(response)
    assert (made.action, made.status, made.rule) == ("refuse", 403, "privacy")
    assert "globex's policy (local_only) forbids sending it elsewhere" in made.reason
    assert "Refused HTTP 403 rule privacy" in text(response)


def test_the_spend_cap_refuses_with_402(operator, fra_1):
    within = simulate(operator, fra_1, session_spent="0.4996")
    over = simulate(operator, fra_1, session_spent="0.4997")

    assert decision(within).status == 200
    made = decision(over)
    assert (made.action, made.status, made.rule) == ("refuse", 402, "spend_cap")
    assert made.reason == (
        "this session has spent 0.4997 of 0.50 EUR; the next inference costs 0.0004"
    )


def test_an_unknown_tenant_is_refused_with_403(operator, fra_1):
    made = decision(simulate(operator, fra_1, tenant="initech"))

    assert (made.action, made.status, made.rule) == ("refuse", 403, "unknown_tenant")
    assert made.reason == "no policy for tenant initech in bundle revision 1"


def test_a_full_queue_offloads_for_capacity(operator, fra_1):
    made = decision(simulate(operator, fra_1, queue_depth="8", queue_limit="8"))

    assert (made.action, made.rule) == ("offload", "capacity")


def test_a_stale_bundle_fails_closed_with_retry_after(operator, fra_1, acme):
    update_policy(acme, {"fail_closed_after_s": 600}, actor=None, actor_kind="operator")
    publish_bundle(["acme fails closed"])

    made = decision(simulate(operator, fra_1, bundle_age_s="601"))

    assert (made.status, made.rule, made.retry_after_s) == (503, "fail_closed", 5)


def test_serving_over_the_class_cost_ceiling_offloads(operator, fra_1, nano):
    set_node_class_thresholds(
        nano, thermal_envelope_c="75", cost_ceilings={"tiny": "0.000001"}, actor=None
    )
    publish_bundle(["ceilings changed"])

    made = decision(simulate(operator, fra_1))

    assert (made.action, made.rule) == ("offload", "cost")


# --- what the decision is computed from --------------------------------------------------------


def test_left_empty_the_node_state_is_what_the_node_reported(operator, fra_1, nano):
    response = simulate(operator, fra_1)

    simulation = response.context["simulation"]
    assert simulation.state.temperature_c == 58.0
    assert simulation.state.queue_depth == 3
    assert simulation.state.queue_limit == simulator.DEFAULT_QUEUE_LIMIT == 64
    assert simulation.request.local is True
    hourly = Decimal(str(nano.hourly_cost.quantize(Decimal("0.000001")).normalize()))
    assert simulation.state.cost_per_1000 == {"tiny": cost_per_1000(hourly, 0.002)}
    inputs = {i.name: (i.value, i.source) for i in simulation.inputs}
    assert inputs["temperature"] == ("58 °C", "reported by the node")
    assert inputs["model on this node"] == ("loaded and ready", "reported by the node")
    assert inputs["grade"] == ("tiny", "graded in bundle revision 1")
    assert inputs["cost per 1,000"][1].startswith("computed: 2 ms per inference at")
    assert inputs["session spent"] == ("0.00", "default")


def test_values_set_are_used_and_said_to_be_set(operator, fra_1):
    simulation = simulate(
        operator, fra_1, temperature_c="66", queue_depth="0", cost_per_1000="0.01"
    ).context["simulation"]

    assert (simulation.state.temperature_c, simulation.state.queue_depth) == (66.0, 0)
    assert simulation.state.cost_per_1000 == {"tiny": Decimal("0.01")}
    inputs = {i.name: i.source for i in simulation.inputs}
    assert inputs["temperature"] == inputs["queue depth"] == inputs["cost per 1,000"] == "set"


def test_a_model_the_node_has_not_measured_has_an_unknown_cost(operator, fra_1):
    response = simulate(operator, fra_1, model="whisper", grade="medium")

    simulation = response.context["simulation"]
    assert simulation.state.cost_per_1000 == {}
    assert simulation.request.local is False
    assert (simulation.decision.action, simulation.decision.rule) == ("offload", "model_not_local")


def test_a_model_the_bundle_does_not_grade_needs_a_grade(operator, fra_1):
    response = simulate(operator, fra_1, model="whisper")

    assert response.context["simulation"] is None
    assert (
        "Bundle revision 1 does not grade “whisper” (no graded version is served under that "
        "name): choose the grade to try it with." in text(response)
    )


def test_the_simulator_runs_the_nodes_own_decision(fra_1):
    assert simulator.decide is policy.decide


def test_the_form_suggests_the_bundles_tenants_and_models(operator, fra_1):
    body = operator.get(PAGE).content.decode()

    assert '<datalist id="simulator-tenants"><option value="acme"></option>' in body
    assert '<option value="globex"></option>' in body
    assert '<datalist id="simulator-models"><option value="sentiment"></option>' in body


def test_the_node_page_links_here_with_the_node_chosen(operator, fra_1):
    assert (
        f"/fleet/policies/simulator/?node={fra_1.uid}"
        in operator.get(f"/fleet/nodes/{fra_1.uid}/").content.decode()
    )

    response = operator.get(PAGE, {"node": fra_1.uid})

    assert response.context["simulation"] is None
    assert f'<option value="{fra_1.uid}" selected>' in response.content.decode()


def test_with_no_bundle_yet_the_page_says_so(operator, make_node, eu_west, nano):
    node = make_node("fra-1", eu_west, nano)

    response = simulate(operator, node)

    assert "No policy bundle has been published yet" in text(response)


def test_the_page_is_for_operators(client, carol, bob, fra_1):
    for person in (carol, bob):
        client.force_login(person)
        assert simulate(client, fra_1).status_code == 403


# --- the API ------------------------------------------------------------------------------------


def post(client, body, **headers):
    return client.post(API, json.dumps(body), content_type="application/json", headers=headers)


def test_the_api_decides_like_the_page(operator, fra_1):
    response = post(
        operator,
        {"tenant": "acme", "model": "sentiment", "node": fra_1.uid, "temperature_c": 90},
    )

    assert response.status_code == 200
    answer = response.json()
    assert {k: answer[k] for k in ("action", "status", "rule", "pools", "price", "currency")} == {
        "action": "offload",
        "status": 200,
        "rule": "thermal",
        "pools": ["eu-west"],
        "price": "0.0009",
        "currency": "EUR",
    }
    assert answer["bundle_revision"] == 1
    assert answer["retry_after_s"] is None
    assert {"name": "temperature", "value": "90 °C", "source": "set"} in answer["inputs"]


def test_the_api_takes_the_session_and_the_model_presence(operator, fra_1):
    response = post(
        operator,
        {
            "tenant": "globex",
            "model": "sentiment",
            "node": fra_1.uid,
            "model_loaded": False,
            "session_spent": "0.10",
        },
    )

    assert (response.json()["status"], response.json()["rule"]) == (403, "privacy")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "sentiment", "node": "nd-x"}, "tenant: Field required"),
        (
            {"tenant": "acme", "model": "sentiment", "node": "nd-nope"},
            "node: There is no node “nd-nope”.",
        ),
        (
            {"tenant": "acme", "model": "whisper", "node": "{uid}"},
            "grade: Bundle revision 1 does not grade “whisper”",
        ),
        (
            {"tenant": "acme", "model": "sentiment", "node": "{uid}", "temperature_c": 900},
            "temperature_c: Ensure this value is less than or equal to 200.",
        ),
        (
            {"tenant": "acme", "model": "sentiment", "node": "{uid}", "heat": 1},
            "heat: Extra inputs are not permitted",
        ),
    ],
)
def test_the_api_answers_bad_input_with_a_clear_400(operator, fra_1, body, message):
    body = {k: v.format(uid=fra_1.uid) if isinstance(v, str) else v for k, v in body.items()}

    response = post(operator, body)

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_with_no_bundle_yet_the_api_answers_409(operator, make_node, eu_west, nano):
    node = make_node("fra-1", eu_west, nano)

    response = post(operator, {"tenant": "acme", "model": "sentiment", "node": node.uid})

    assert response.status_code == 409
    assert response.json() == {
        "error": "no policy bundle has been published yet: there is nothing to decide under"
    }


def test_the_api_is_for_operators_only(client, carol, fra_1, acme):
    body = {"tenant": "acme", "model": "sentiment", "node": fra_1.uid}
    _, secret = ApiKey.issue(acme, "bot")

    assert post(client, body).status_code == 401
    assert post(client, body, Authorization=f"Bearer {secret}").status_code == 401
    client.force_login(carol)
    assert post(client, body).status_code == 401
    assert Node.objects.get(pk=fra_1.pk).simulated_temperature_c is None  # nothing was touched
