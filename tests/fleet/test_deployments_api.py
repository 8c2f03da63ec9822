"""Operators drive deployments through /api/v1/deployments."""

import pytest

from fleet.models import Deployment, Model
from tests.fleet.test_deployments import make_version


@pytest.fixture
def churn(acme):
    return Model.objects.create(owner=acme, name="churn")


def post(client, path, body):
    return client.post(path, body, content_type="application/json")


def test_an_operator_starts_a_canary_and_reads_it_back(operator, churn, eu_west, nano):
    make_version(churn, 1)
    response = post(
        operator,
        "/api/v1/deployments",
        {
            "model": "churn",
            "owner": "acme",
            "version": 1,
            "regions": ["eu-west"],
            "node_classes": ["nano"],
            "steps": [10, 100],
            "soak_s": 30,
        },
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["model"], body["owner"], body["version"], body["state"], body["percent"]) == (
        "churn",
        "acme",
        1,
        "rolling",
        10,
    )
    assert body["events"][0]["reason"] == "started at 10 %"
    assert operator.get(f"/api/v1/deployments/{body['id']}").json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"regions": ["mars-1"]}, "unknown regions or node classes: mars-1"),
        ({"strategy": "yolo"}, "strategy must be one of"),
        ({"steps": [50, 10]}, "the last step must be 100"),
        ({"version": 9}, "no version 9"),
    ],
)
def test_bad_requests_say_what_is_wrong(operator, churn, eu_west, changes, message):
    make_version(churn, 1)
    body = {"model": "churn", "owner": "acme", "version": 1, **changes}
    response = post(operator, "/api/v1/deployments", body)
    assert response.status_code in (400, 404)
    assert message in response.json()["error"]
    assert not Deployment.objects.exists()


def test_operators_pause_and_roll_back_through_actions(operator, churn):
    make_version(churn, 1)
    deployment_id = post(
        operator, "/api/v1/deployments", {"model": "churn", "owner": "acme", "version": 1}
    ).json()["id"]

    paused = post(operator, f"/api/v1/deployments/{deployment_id}/actions", {"action": "pause"})
    assert paused.json()["state"] == "paused"
    back = post(
        operator,
        f"/api/v1/deployments/{deployment_id}/actions",
        {"action": "roll_back", "reason": "bad outputs"},
    )
    assert back.json()["state"] == "rolled_back"
    assert back.json()["events"][0]["reason"] == "bad outputs"
    again = post(operator, f"/api/v1/deployments/{deployment_id}/actions", {"action": "resume"})
    assert again.status_code == 400
    assert "only a paused deployment" in again.json()["error"]


def test_tenants_cannot_drive_deployments(client, carol, churn):
    client.force_login(carol)
    assert client.get("/api/v1/deployments").status_code == 401
