"""Heating a node on purpose: an operator sets a simulated temperature (the node page's card or
`POST /api/v1/fleet/nodes/{uid}/simulation`), the node is told in its heartbeat answer, and
what it then reports is marked simulated wherever the console shows it."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from fleet.models import FleetSettingChange, Node
from tests.fleet.test_heartbeat import beat

pytestmark = pytest.mark.django_db


def text(response) -> str:
    words = re.sub(r"<[^>]+>", " ", response.content.decode())
    return " ".join(html.unescape(words).split())


@pytest.fixture
def edge(make_node, eu_west, nano):
    nano.thermal_envelope_c = 75
    nano.save()
    return make_node("fra-nano-1", eu_west, nano, temperature_c=51.0)


def page_url(node) -> str:
    return f"/fleet/nodes/{node.uid}/"


def api_url(node) -> str:
    return f"/api/v1/fleet/nodes/{node.uid}/simulation"


def post_api(client, node, body):
    return client.post(
        api_url(node),
        body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
    )


# --- the model method ---------------------------------------------------------------------


def test_simulating_a_temperature_saves_it_and_audits_who_did_it(edge, alice):
    assert edge.simulate_temperature(90, actor=alice) is True

    edge.refresh_from_db()
    assert edge.simulated_temperature_c == 90.0
    change = FleetSettingChange.objects.get()
    assert (change.kind, change.subject, change.actor) == (
        "thermal_simulation",
        "fra-nano-1",
        alice,
    )
    assert change.before == {"simulated_temperature_c": None}
    assert change.after == {"simulated_temperature_c": 90.0}
    assert change.summary == "simulated_temperature_c — → 90.0"


def test_stopping_clears_it_and_is_audited_too(edge, alice):
    edge.simulate_temperature(90, actor=alice)

    assert edge.simulate_temperature(None, actor=alice) is True

    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None
    latest = FleetSettingChange.objects.first()
    assert latest.summary == "simulated_temperature_c 90.0 → —"


def test_setting_what_is_already_set_writes_nothing(edge, alice):
    edge.simulate_temperature(90, actor=alice)

    assert edge.simulate_temperature(90.0, actor=alice) is False
    assert FleetSettingChange.objects.count() == 1


def test_it_saves_only_the_simulation_not_a_stale_copy_of_the_node(edge, alice):
    # A heartbeat lands between reading the node and simulating on it.
    Node.objects.filter(pk=edge.pk).update(temperature_c=63.0, queue_depth=9)

    edge.simulate_temperature(80, actor=alice)

    fresh = Node.objects.get(pk=edge.pk)
    assert (fresh.temperature_c, fresh.queue_depth, fresh.simulated_temperature_c) == (63.0, 9, 80)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (201, "201 °C is outside -50–200 °C"),
        (-51, "-51 °C is outside -50–200 °C"),
        (float("nan"), "nan is not a temperature"),
        (True, "True is not a temperature"),
        ("hot", "'hot' is not a temperature"),
    ],
)
def test_it_refuses_a_temperature_out_of_range_or_not_a_number(edge, alice, value, message):
    with pytest.raises(ValidationError) as refused:
        edge.simulate_temperature(value, actor=alice)

    assert message in refused.value.messages[0]
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None
    assert not FleetSettingChange.objects.exists()


def test_the_node_is_told_in_its_heartbeat_answer(client, edge, alice):
    assert beat(client, edge).json()["simulated_temperature_c"] is None

    edge.simulate_temperature(95, actor=alice)

    assert beat(client, edge).json()["simulated_temperature_c"] == 95.0


# --- the node page --------------------------------------------------------------------------


def test_the_node_page_has_a_thermal_simulation_card_marked_as_such(operator, edge):
    response = operator.get(page_url(edge))

    body = response.content.decode()
    assert 'id="thermal-simulation"' in body and 'hx-preserve="true"' in body
    page = text(response)
    assert "Thermal simulation off: real sensors" in page
    assert "A simulation, for demos and drills" in page
    assert "Its class offloads from 75 °C" in page
    assert f'action="/fleet/nodes/{edge.uid}/simulation/"' in body
    assert 'name="stop"' not in body  # nothing to stop yet


def test_an_operator_sets_then_stops_the_simulation_from_the_card(operator, alice, edge):
    response = operator.post(f"{page_url(edge)}simulation/", {"temperature_c": "92.5"}, follow=True)

    assert "fra-nano-1 simulates 92.5 °C" in text(response)
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c == 92.5
    assert "simulating 92.5 °C" in text(response)
    assert 'name="stop"' in response.content.decode()

    response = operator.post(
        f"{page_url(edge)}simulation/", {"temperature_c": "92.5", "stop": "on"}, follow=True
    )

    assert "fra-nano-1 reads its sensors again" in text(response)
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None
    assert FleetSettingChange.objects.filter(actor=alice).count() == 2


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("250", "250 °C is outside -50–200 °C"),
        ("warm", "Give the temperature as a number of °C"),
        ("", "Give a temperature in °C, or stop the simulation."),
    ],
)
def test_a_refused_value_comes_back_on_the_card_with_the_reason(operator, edge, typed, message):
    response = operator.post(f"{page_url(edge)}simulation/", {"temperature_c": typed})

    assert response.status_code == 200
    assert message in text(response)
    assert 'aria-invalid="true"' in response.content.decode()
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None


def test_only_operators_heat_nodes(client, edge, carol, bob):
    for person in (carol, bob):
        client.force_login(person)
        response = client.post(f"{page_url(edge)}simulation/", {"temperature_c": "90"})
        assert response.status_code == 403
        assert post_api(client, edge, {"temperature_c": 90}).status_code == 401
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None


def test_a_simulated_reading_is_marked_on_the_node_page_and_in_the_fleet_list(operator, edge):
    Node.objects.filter(pk=edge.pk).update(
        temperature_c=81.0, temperature_simulated=True, last_heartbeat_at=timezone.now()
    )

    node_page = operator.get(page_url(edge)).content.decode()
    fleet_list = operator.get("/fleet/").content.decode()

    assert re.search(
        r"81\.0 °C <span class=\"badge text-bg-info\"[^>]*>simulated</span>", node_page
    )
    assert re.search(r"81 °C <span class=\"badge text-bg-info\"[^>]*>simulated</span>", fleet_list)


def test_a_sensor_reading_is_not_marked(operator, edge):
    assert ">simulated</span>" not in operator.get("/fleet/").content.decode()


# --- the API ---------------------------------------------------------------------------------


def test_the_api_sets_and_stops_the_simulation(operator, alice, edge):
    response = post_api(operator, edge, {"temperature_c": 88})

    assert response.status_code == 200
    assert response.json() == {
        "node": edge.uid,
        "simulated_temperature_c": 88.0,
        "temperature_c": 51.0,
        "temperature_simulated": False,
        "changed": True,
    }
    assert post_api(operator, edge, {"temperature_c": 88}).json()["changed"] is False

    stopped = post_api(operator, edge, {"temperature_c": None})

    assert stopped.json()["simulated_temperature_c"] is None
    assert FleetSettingChange.objects.filter(actor=alice, kind="thermal_simulation").count() == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"temperature_c": 500}, "temperature_c: 500 °C is outside -50–200 °C"),
        ({"temperature_c": "hot"}, "temperature_c: Input should be a valid number"),
        ({}, "temperature_c: Field required"),
        ({"temperature_c": 90, "ramp": 2}, "ramp: Extra inputs are not permitted"),
        ("not json", "Cannot parse request body"),
    ],
)
def test_the_api_answers_bad_input_with_a_clear_400(operator, edge, body, message):
    response = post_api(operator, edge, body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert Node.objects.get(pk=edge.pk).simulated_temperature_c is None


def test_the_api_answers_an_unknown_node_with_a_404(operator, db):
    response = operator.post(
        "/api/v1/fleet/nodes/nd-nope/simulation",
        {"temperature_c": 90},
        content_type="application/json",
    )

    assert response.status_code == 404
    assert response.json() == {"error": "no node nd-nope"}
