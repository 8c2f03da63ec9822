"""The fleet pages are for operators: anonymous people sign in, everyone else is refused."""

from __future__ import annotations

import pytest
from django.urls import reverse

from fleet.policy_plane import publish_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture
def pages(make_node, eu_west, nano, acme):
    node = make_node("fra-1", eu_west, nano)
    revision = publish_bundle(["test"]).revision
    return [
        reverse("fleet:nodes"),
        reverse("fleet:node", args=[node.uid]),
        reverse("fleet:enroll"),
        reverse("bundles:list"),
        reverse("bundles:revision", args=[revision]),
        reverse("decisions:list"),
        reverse("policies:simulator"),
    ]


def test_anonymous_people_are_sent_to_sign_in(client, pages):
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("person", ["bob", "carol"])
def test_finance_and_tenant_members_are_refused(client, pages, person, request):
    client.force_login(request.getfixturevalue(person))

    for url in pages:
        assert client.get(url).status_code == 403, url


def test_operators_can_open_every_fleet_page(client, alice, pages):
    client.force_login(alice)

    for url in pages:
        assert client.get(url).status_code == 200, url


def test_an_htmx_poll_without_a_session_is_also_sent_to_sign_in(client, pages):
    response = client.get(pages[0], HTTP_HX_REQUEST="true")

    assert response.status_code == 302
