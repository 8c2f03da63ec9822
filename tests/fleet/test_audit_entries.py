"""Fleet's actions write the audit log (billing.audit) as they happen, through the real pages
and API: tenant policies by a tenant's owner, an API key and an operator, the operators'
settings and bundles (policy); deployments by hand and by the health gates, model versions
(deployment); enrollment tokens and nodes enrolling (access)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from billing.models import ApiKey, AuditEntry
from fleet.models import Deployment, EnrollmentToken, Model, Node, TenantPolicy
from fleet.rollout_actions import judge, start_rollout
from tests.fleet.test_deployments import make_version, report
from tests.fleet.test_enrollment import enroll_body
from tests.fleet.test_policies import api, policy_form
from tests.inference.harness import doubler_model

pytestmark = pytest.mark.django_db


def only(action: str) -> AuditEntry:
    [found] = AuditEntry.objects.filter(action=action)
    return found


def who(entry: AuditEntry) -> tuple:
    return entry.actor, entry.actor_kind, entry.actor_label


def post_json(client, path, body):
    return client.post(path, body, content_type="application/json")


# --- policy -----------------------------------------------------------------------------------


def test_an_owners_policy_change_in_the_portal_is_audited(client, carol, acme):
    policy = TenantPolicy.objects.for_tenant(acme)
    client.force_login(carol)

    response = client.post(
        "/portal/acme/policy/", policy_form(policy, privacy_mode="local_only", fallback="reject")
    )

    assert response.status_code == 302
    entry = only("policy.updated")
    assert who(entry) == (carol, "tenant", "carol")
    assert (entry.category, entry.tenant, entry.subject_type) == (
        "policy",
        acme,
        "fleet.tenantpolicy",
    )
    assert (entry.before["privacy_mode"], entry.after["privacy_mode"]) == ("any", "local_only")
    assert (entry.before["fallback"], entry.after["fallback"]) == ("regional", "reject")
    assert entry.note == "revision 2"


def test_an_api_keys_policy_change_is_audited_as_the_key(client, acme):
    key, secret = ApiKey.issue(acme, "policy bot")

    response = api(client, "PUT", secret, {"max_spend_per_session": "0.25", "quality": "high"})

    assert response.status_code == 200, response.content
    entry = only("policy.updated")
    assert who(entry) == (None, "api_key", f"{key.prefix}… (policy bot)")
    assert entry.tenant == acme
    assert (entry.before["max_spend_per_session"], entry.after["max_spend_per_session"]) == (
        None,
        "0.25",
    )
    assert (entry.before["quality"], entry.after["quality"]) == ("best_effort", "high")


def test_a_refused_or_empty_policy_change_writes_no_entry(client, acme):
    _, secret = ApiKey.issue(acme, "policy bot")

    assert api(client, "PUT", secret, {"privacy_mode": "nowhere"}).status_code == 400
    assert api(client, "PUT", secret, {"privacy_mode": "any"}).status_code == 200  # as it is

    assert not AuditEntry.objects.filter(category="policy").exists()


def test_an_operators_fail_closed_and_class_thresholds_are_audited(operator, alice, acme, nano):
    operator.post("/fleet/policies/tenants/acme/fail-closed/", {"fail_closed_after_s": "900"})
    operator.post(
        "/fleet/policies/node-classes/nano/",
        {"class-nano-thermal_envelope_c": "85", "class-nano-ceiling_tiny": "0.04",
         "class-nano-ceiling_medium": "", "class-nano-ceiling_large": ""},
    )  # fmt: skip

    policy = only("policy.updated")
    assert who(policy) == (alice, "operator", "alice")
    assert (policy.before["fail_closed_after_s"], policy.after["fail_closed_after_s"]) == (
        None,
        900,
    )
    thresholds = only("node_class.changed")
    assert who(thresholds) == (alice, "operator", "alice")
    assert (thresholds.subject_type, thresholds.subject_id, thresholds.tenant) == (
        "fleet.node_class",
        "nano",
        None,
    )
    assert thresholds.before == {"thermal_envelope_c": None, "cost_ceilings": {}}
    assert thresholds.after == {"thermal_envelope_c": "85", "cost_ceilings": {"tiny": "0.04"}}


def test_a_simulated_temperature_is_audited(client, alice, make_node, eu_west, nano):
    node = make_node("fra-1", eu_west, nano)
    client.force_login(alice)

    post_json(client, f"/api/v1/fleet/nodes/{node.uid}/simulation", {"temperature_c": 90})
    post_json(client, f"/api/v1/fleet/nodes/{node.uid}/simulation", {"temperature_c": 90})

    entry = only("thermal_simulation.changed")  # the repeat changed nothing
    assert who(entry) == (alice, "operator", "alice")
    assert (entry.subject_id, entry.before, entry.after) == (
        str(node.pk),
        {"simulated_temperature_c": None},
        {"simulated_temperature_c": 90.0},
    )


def test_publishing_a_bundle_by_hand_is_audited(operator, alice, acme):
    operator.post("/fleet/bundles/publish/")

    entry = only("bundle.published")
    assert who(entry) == (alice, "operator", "alice")
    assert entry.after == {"revision": 1}


# --- deployments ------------------------------------------------------------------------------


@pytest.fixture
def churn(acme):
    return Model.objects.create(owner=acme, name="churn")


def test_a_deployment_started_and_rolled_back_by_an_operator_is_audited(operator, alice, churn):
    make_version(churn, 1)
    started = post_json(
        operator,
        "/api/v1/deployments",
        {"model": "churn", "owner": "acme", "version": 1, "steps": [10, 100]},
    )
    deployment_id = started.json()["id"]
    post_json(
        operator,
        f"/api/v1/deployments/{deployment_id}/actions",
        {"action": "roll_back", "reason": "bad outputs"},
    )

    start, back = only("deployment.started"), only("deployment.rolled_back")
    for entry in (start, back):
        assert who(entry) == (alice, "operator", "alice")
        assert (entry.category, entry.subject_id) == ("deployment", str(deployment_id))
        assert entry.tenant == churn.owner  # the tenant's own model: in its log too
    assert (start.before, start.after) == (None, {"state": "rolling", "percent": 10})
    assert start.note == "started at 10 %"
    assert (back.before, back.after) == (
        {"state": "rolling"},
        {"state": "rolled_back", "percent": 10},
    )
    assert back.note == "bad outputs"


def test_the_health_gates_roll_back_as_the_system(churn, make_node, eu_west, nano):
    node = make_node("fra-1", eu_west, nano)
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    first = start_rollout(v1, strategy="all_at_once")
    report(node, (1, 100, 0))
    judge(first, now=timezone.now() + timedelta(hours=1))
    canary = start_rollout(v2, steps=[20, 100], soak_s=60)
    report(node, (1, 500, 0), (2, 80, 40))

    judge(canary)

    completed = only("deployment.completed")
    assert who(completed) == (None, "system", "system")
    assert completed.subject_id == str(first.pk)
    back = only("deployment.rolled_back")
    assert who(back) == (None, "system", "system")
    assert back.subject_id == str(canary.pk)
    assert "error rate 50.0%" in back.note
    assert (back.before, back.after) == (
        {"state": "rolling"},
        {"state": "rolled_back", "percent": 20},
    )


def test_pinning_a_tenant_is_in_that_tenants_log(operator, alice, churn, acme):
    make_version(churn, 1)
    deployment = start_rollout(churn.versions.get(), steps=[10, 100], acting_user=alice)

    post_json(
        operator, f"/api/v1/deployments/{deployment.pk}/pins", {"tenant": "acme", "side": "new"}
    )

    entry = only("deployment.tenant_pinned")
    assert (entry.tenant, entry.actor_kind) == (acme, "operator")
    assert (entry.before, entry.after) == (
        {"tenant": "acme", "pin": None},
        {"tenant": "acme", "pin": "new", "version": 1},
    )
    assert Deployment.objects.get().pins.count() == 1


def test_a_model_version_registered_with_an_api_key_is_audited_as_the_key(
    client, acme, settings, tmp_path
):
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"
    key, secret = ApiKey.issue(acme, "ci")
    data = doubler_model(tmp_path / "doubler.onnx").read_bytes()
    body = {"name": "churn", "file": SimpleUploadedFile("model.onnx", data)}

    response = client.post("/api/v1/models", body, headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 201, response.content
    entry = only("model_version.registered")
    assert who(entry) == (None, "api_key", f"{key.prefix}… (ci)")
    assert (entry.category, entry.tenant) == ("deployment", acme)
    assert entry.after["model"] == "churn" and entry.after["version"] == 1
    assert entry.after["sha256"] == response.json()["sha256"]


# --- access -----------------------------------------------------------------------------------


def test_an_enrollment_token_and_the_node_it_enrolls_are_audited(
    client, operator, alice, eu_west, nano
):
    page = operator.post(
        "/fleet/enroll/",
        {"node_name": "fra-nano-9", "region": "eu-west", "node_class": "nano",
         "expires_in_hours": "2"},
    )  # fmt: skip
    secret = page.context["issued"]["secret"]

    enrolled = post_json(client, "/api/v1/nodes/enroll", enroll_body(secret))

    assert enrolled.status_code == 201, enrolled.content
    token, node = EnrollmentToken.objects.get(), Node.objects.get()
    issued = only("enrollment_token.issued")
    assert who(issued) == (alice, "operator", "alice")
    assert (issued.category, issued.subject_id) == ("access", str(token.pk))
    assert issued.after["node_name"] == "fra-nano-9"
    assert issued.after["expires_at"] == token.expires_at.isoformat()
    assert secret not in json.dumps(issued.after) and secret not in issued.subject_label
    joined = only("node.enrolled")
    assert who(joined) == (None, "node", node.uid)
    assert joined.after["endpoint"] == "http://10.0.0.5:8001"
    assert joined.note == f"with enrollment token {token.prefix}… issued by alice"


def test_an_enrollment_token_from_the_api_is_audited(client, alice, eu_west, nano):
    client.force_login(alice)
    response = post_json(
        client,
        "/api/v1/fleet/enrollment-tokens",
        {"node_name": "fra-nano-3", "region": "eu-west", "node_class": "nano"},
    )

    assert response.status_code == 201
    assert who(only("enrollment_token.issued")) == (alice, "operator", "alice")


def test_a_refused_enrollment_writes_no_entry(client, db):
    response = post_json(client, "/api/v1/nodes/enroll", enroll_body("ope_not-a-real-token"))

    assert response.status_code == 400
    assert not AuditEntry.objects.exists()
