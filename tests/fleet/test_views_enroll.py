"""Enrolling a node from the console: issue a token, show its secret once, watch it get used."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet.models import EnrollmentToken
from inference.protocol import ENROLL_PATH, hash_secret

pytestmark = pytest.mark.django_db


@pytest.fixture
def places(eu_west, us_east, nano, standard):
    """Two regions and two node classes to enroll into."""


def enroll(client, **fields):
    data = {
        "node_name": "fra-edge-07",
        "region": "eu-west",
        "node_class": "nano",
        "expires_in_hours": "24",
    }
    data.update(fields)
    return client.post(reverse("fleet:enroll"), data)


def test_the_form_offers_every_region_and_node_class(operator, places):
    html = operator.get(reverse("fleet:enroll")).content.decode()

    assert '<option value="eu-west">' in html and '<option value="us-east">' in html
    assert '<option value="nano">' in html and '<option value="standard">' in html
    assert 'name="expires_in_hours" value="24"' in html


def test_it_issues_a_token_and_shows_its_secret_and_command_once(operator, alice, places):
    response = enroll(operator, expires_in_hours="6")

    assert response.status_code == 200
    issued = response.context["issued"]
    secret = issued["secret"]
    token = EnrollmentToken.objects.get()
    assert token.secret_hash == hash_secret(secret)
    assert (token.node_name, token.region.code, token.node_class.name) == (
        "fra-edge-07",
        "eu-west",
        "nano",
    )
    assert token.created_by == alice
    assert timedelta(hours=5, minutes=59) < token.expires_at - timezone.now() <= timedelta(hours=6)
    html = response.content.decode()
    assert f"--enroll {secret}" in html
    assert EnrollmentToken.command_for(secret) in html
    assert 'data-copy-target="enroll-command"' in html
    assert "This is the only time the secret is shown" in html


def test_the_secret_is_never_shown_again(operator, places):
    secret = enroll(operator).context["issued"]["secret"]

    html = operator.get(reverse("fleet:enroll")).content.decode()

    assert secret not in html
    assert secret[:12] in html  # the list tells tokens apart by their prefix


def test_the_answer_holding_the_secret_is_not_cached(operator, places):
    response = enroll(operator)

    assert "no-store" in response["Cache-Control"]


def test_the_issued_token_enrolls_a_node(operator, places, client):
    secret = enroll(operator).context["issued"]["secret"]

    response = client.post(
        ENROLL_PATH,
        {
            "token": secret,
            "hostname": "fra-edge-07",
            "endpoint": "http://10.0.0.7:8001",
            "agent_version": "0.3.1",
        },
        content_type="application/json",
    )

    assert response.status_code == 201
    token = EnrollmentToken.objects.get()
    assert token.state == "used"
    assert token.node.name == "fra-edge-07"


def test_the_token_list_shows_each_state_and_the_node_that_used_it(
    operator, alice, places, make_node, eu_west, nano
):
    node = make_node("fra-edge-01", eu_west, nano)
    used, _ = EnrollmentToken.issue(
        node_name="fra-edge-01", region=eu_west, node_class=nano, created_by=alice
    )
    used.used_at, used.node = timezone.now(), node
    used.save()
    EnrollmentToken.issue(
        node_name="fra-edge-02", region=eu_west, node_class=nano, ttl=timedelta(hours=-1)
    )
    EnrollmentToken.issue(node_name="fra-edge-03", region=eu_west, node_class=nano)

    html = operator.get(reverse("fleet:enroll")).content.decode()

    assert '<span class="badge text-bg-secondary">used</span>' in html
    assert '<span class="badge text-bg-warning">expired</span>' in html
    assert '<span class="badge text-bg-success">usable</span>' in html
    assert f'<a href="/fleet/nodes/{node.uid}/">fra-edge-01</a>' in html
    assert html.index("fra-edge-03") < html.index("fra-edge-02") < html.index("fra-edge-01")


@pytest.mark.parametrize("taken", ["fra-edge-07", "FRA-EDGE-07", "  fra-edge-07 "])
def test_it_refuses_the_name_of_an_enrolled_node(operator, places, make_node, eu_west, nano, taken):
    make_node("fra-edge-07", eu_west, nano)

    response = enroll(operator, node_name=taken)

    assert response.status_code == 200
    assert "A node named “fra-edge-07” is already enrolled." in response.content.decode()
    assert 'class="form-control is-invalid"' in response.content.decode()
    assert not EnrollmentToken.objects.exists()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"node_name": ""}, "This field is required."),
        ({"region": "mars-1"}, "There is no region “mars-1”."),
        ({"node_class": ""}, "This field is required."),
        ({"expires_in_hours": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"expires_in_hours": "721"}, "Ensure this value is less than or equal to 720."),
        ({"expires_in_hours": "soon"}, "Enter a whole number."),
    ],
)
def test_it_explains_what_is_wrong_with_the_form(operator, places, fields, error):
    response = enroll(operator, **fields)

    assert response.status_code == 200
    assert error in response.content.decode()
    assert "issued" not in response.context or response.context["issued"] is None
    assert not EnrollmentToken.objects.exists()


def test_only_operators_can_issue_tokens(client, bob, carol, places):
    for person in (bob, carol):
        client.force_login(person)
        assert enroll(client).status_code == 403
    client.logout()
    assert enroll(client).status_code == 302
    assert not EnrollmentToken.objects.exists()


def test_an_empty_submission_lists_every_missing_field(operator, places):
    response = operator.post(reverse("fleet:enroll"), {})

    assert response.content.decode().count("This field is required.") == 4
    assert not EnrollmentToken.objects.exists()
