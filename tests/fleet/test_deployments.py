"""Deployments through their actions: refused up front when they cannot run, traffic shares
per step in the heartbeat answer, automatic promotion and rollback by the health gates, and
a history row for every transition."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import DeploymentEvent, Model, ModelVersion
from fleet.rollout_actions import (
    RolloutError,
    desired_versions,
    judge,
    pause,
    promote,
    resume,
    roll_back,
    start_rollout,
)
from fleet.rollouts import Decision


def make_version(model, number, *, peak=10 * 2**20, status="graded"):
    return ModelVersion.objects.create(
        model=model,
        version=number,
        sha256=f"{number:064x}",
        size_bytes=1000,
        opset=17,
        status=status,
        grade="tiny",
        stats={"peak_memory_bytes": peak},
    )


@pytest.fixture
def churn(acme):
    return Model.objects.create(owner=acme, name="churn")


@pytest.fixture
def nodes(make_node, eu_west, us_east, nano, standard):
    return {
        "fra-1": make_node("fra-1", eu_west, nano),
        "fra-2": make_node("fra-2", eu_west, standard),
        "nyc-1": make_node("nyc-1", us_east, nano),
    }


def report(node, *rows):
    node.models_loaded = [
        {
            "name": "acme.churn",
            "version": str(v),
            "sha256": f"{v:064x}",
            "ready": True,
            "requests_total": r,
            "errors_total": e,
            "latency_p95_ms": 5.0,
        }
        for v, r, e in rows
    ]
    node.save(update_fields=["models_loaded"])


def shares(node):
    return {d.version: d.traffic_share for d in desired_versions(node)}


def test_a_first_deployment_goes_to_the_selected_nodes_only(churn, nodes, eu_west, alice):
    v1 = make_version(churn, 1)
    start_rollout(v1, regions=[eu_west], strategy="all_at_once", acting_user=alice)

    assert shares(nodes["fra-1"]) == {"1": 1.0}
    assert shares(nodes["fra-2"]) == {"1": 1.0}
    assert shares(nodes["nyc-1"]) == {}
    [wanted] = desired_versions(nodes["fra-1"])
    assert wanted.model == "acme.churn"
    assert wanted.url == f"/api/v1/nodes/artifacts/{v1.sha256}"
    assert wanted.signals == {}


def test_every_desired_version_carries_the_models_signal_schema(churn, nodes):
    churn.signal_schema = {"tier": "string", "visits": "int"}
    churn.save(update_fields=["signal_schema"])
    v1 = make_version(churn, 1)
    start_rollout(v1, strategy="all_at_once")
    report(nodes["fra-1"], (1, 800, 8))
    judge_all_now(v1)
    start_rollout(make_version(churn, 2), steps=[50, 100])

    desired = desired_versions(nodes["fra-1"])
    assert sorted(d.version for d in desired) == ["1", "2"]
    assert [d.signals for d in desired] == [{"tier": "string", "visits": "int"}] * 2


def test_a_canary_splits_traffic_by_step_and_promotes_itself_when_healthy(churn, nodes, nano):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    start_rollout(v1, strategy="all_at_once")
    report(nodes["fra-1"], (1, 800, 8))
    judge_all_now(v1)
    deployment = start_rollout(v2, node_classes=[nano], steps=[10, 50, 100], soak_s=60)

    assert shares(nodes["fra-1"]) == {"2": 0.1, "1": 0.9}
    assert shares(nodes["fra-2"]) == {"1": 1.0}  # standard nodes are not in the selector

    report(nodes["fra-1"], (1, 900, 9), (2, 100, 1))
    later = timezone.now() + timedelta(seconds=61)
    assert judge(deployment, now=later) == Decision.ADVANCE
    assert shares(nodes["fra-1"]) == {"2": 0.5, "1": 0.5}

    report(nodes["fra-1"], (1, 1400, 14), (2, 600, 6))
    assert judge(deployment, now=later + timedelta(seconds=61)) == Decision.ADVANCE
    report(nodes["fra-1"], (1, 1400, 14), (2, 1600, 16))
    assert judge(deployment, now=later + timedelta(seconds=122)) == Decision.COMPLETE
    assert shares(nodes["fra-1"]) == {"2": 1.0}
    reasons = list(deployment.events.order_by("at", "pk").values_list("to_state", "percent"))
    assert reasons == [("rolling", 10), ("rolling", 50), ("rolling", 100), ("completed", 100)]


def judge_all_now(version):
    for deployment in version.deployments.all():
        judge(deployment, now=timezone.now() + timedelta(hours=1))


def test_a_failing_canary_rolls_itself_back_and_says_why(churn, nodes):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    start_rollout(v1, strategy="all_at_once", gates=None)
    report(nodes["fra-1"], (1, 100, 0))
    judge_all_now(v1)
    deployment = start_rollout(v2, steps=[20, 100], soak_s=60)

    report(nodes["fra-1"], (1, 500, 0), (2, 80, 40))
    assert judge(deployment) == Decision.ROLL_BACK  # at once: no need to wait out the soak

    deployment.refresh_from_db()
    assert deployment.state == "rolled_back"
    assert "error rate 50.0%" in deployment.events.first().reason
    assert shares(nodes["fra-1"]) == {"1": 1.0}


def test_it_waits_for_traffic_before_judging(churn, nodes):
    deployment = start_rollout(make_version(churn, 1), steps=[50, 100], soak_s=0)
    report(nodes["fra-1"], (1, 3, 0))

    assert judge(deployment) == Decision.WAIT
    deployment.refresh_from_db()
    assert deployment.gate_note == "3 of 50 requests so far"


def test_operators_pause_resume_promote_and_roll_back_by_hand(churn, nodes, alice):
    deployment = start_rollout(make_version(churn, 1), steps=[5, 100], acting_user=alice)

    pause(deployment, acting_user=alice)
    assert judge(deployment, now=timezone.now() + timedelta(hours=1)) == Decision.WAIT
    resume(deployment, acting_user=alice)
    promote(deployment, acting_user=alice)
    roll_back(deployment, reason="customer complaint", acting_user=alice)

    events = DeploymentEvent.objects.filter(deployment=deployment).order_by("at", "pk")
    assert [(e.to_state, e.reason, e.actor) for e in events] == [
        ("rolling", "started at 5 %", alice),
        ("paused", "paused by hand", alice),
        ("rolling", "resumed by hand", alice),
        ("completed", "promoted by hand", alice),
        ("rolled_back", "customer complaint", alice),
    ]
    with pytest.raises(RolloutError, match="already rolled back"):
        roll_back(deployment, reason="again")


def test_a_version_too_large_for_a_class_is_refused_up_front(churn, nodes, nano):
    huge = make_version(churn, 1, peak=6 * 2**30)  # nano: 8 GiB, half of it for one model

    with pytest.raises(
        RolloutError, match=r"needs 6.00 GiB at peak; a nano node gives one model 4.00 GiB"
    ):
        start_rollout(huge, node_classes=[nano])
    assert not huge.deployments.exists()


def test_an_ungraded_version_and_a_second_concurrent_rollout_are_refused(churn, nodes):
    with pytest.raises(RolloutError, match="not graded yet"):
        start_rollout(make_version(churn, 1, status="grading"))
    start_rollout(make_version(churn, 2), steps=[5, 100])
    with pytest.raises(RolloutError, match="still rolling out"):
        start_rollout(make_version(churn, 3))


def test_the_heartbeat_answer_carries_the_desired_versions(client, churn, nodes):
    start_rollout(make_version(churn, 1), strategy="all_at_once")
    node = nodes["fra-1"]
    body = {
        "node_uid": node.uid,
        "agent_version": "1",
        "sent_at": timezone.now().isoformat(),
        "uptime_s": 1,
        "cpu_load": 0,
        "memory_pressure": 0.1,
        "queue_depth": 0,
        "requests_total": 0,
        "errors_total": 0,
    }
    reply = client.post(
        "/api/v1/nodes/heartbeat",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {node.credential}"},
    ).json()

    assert [(d["model"], d["version"], d["traffic_share"]) for d in reply["desired_models"]] == [
        ("acme.churn", "1", 1.0)
    ]
    assert reply["desired_models"][0]["signals"] == {}


def test_a_version_whose_signature_would_break_clients_is_refused(churn, nodes):
    v1 = make_version(churn, 1)
    ModelVersion.objects.filter(pk=v1.pk).update(
        inputs=[{"name": "x", "datatype": "FLOAT", "shape": [-1, 4]}]
    )
    start_rollout(ModelVersion.objects.get(pk=v1.pk), strategy="all_at_once")
    report(nodes["fra-1"], (1, 100, 0))
    judge_all_now(v1)
    v2 = make_version(churn, 2)
    ModelVersion.objects.filter(pk=v2.pk).update(
        inputs=[{"name": "x", "datatype": "FLOAT", "shape": [-1, 8]}]
    )

    with pytest.raises(RolloutError, match=r"cannot share traffic with .*input 'x' has shape"):
        start_rollout(ModelVersion.objects.get(pk=v2.pk))
