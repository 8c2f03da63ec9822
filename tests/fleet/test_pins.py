"""Per-tenant pins of a deployment (controlled rollouts): who goes to which version in the
desired state, what is refused, the history, the API and the page."""

import pytest
from django.urls import reverse

from billing.models import Tenant
from fleet.models import Model, TenantPin
from fleet.rollout_actions import (
    RolloutError,
    desired_versions,
    pin,
    promote,
    roll_back,
    start_rollout,
    unpin,
)
from tests.fleet.test_deployments import make_version


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex")


@pytest.fixture
def catalogue(db):
    return Model.objects.create(name="sentiment")


@pytest.fixture
def node(make_node, eu_west, nano):
    return make_node("fra-1", eu_west, nano)


@pytest.fixture
def canary(catalogue, node):
    promote(start_rollout(make_version(catalogue, 1), strategy="all_at_once"))
    return start_rollout(make_version(catalogue, 2), steps=[10, 100])


def desired(node):
    return {d.version: (d.traffic_share, d.tenants) for d in desired_versions(node)}


def test_a_tenant_pinned_to_the_new_version_is_named_on_it(canary, node, acme, globex, alice):
    pin(canary, acme, "new", acting_user=alice)
    pin(canary, globex, "old", acting_user=alice)
    assert desired(node) == {"2": (0.1, ["acme"]), "1": (0.9, ["globex"])}
    reasons = list(canary.events.order_by("pk").values_list("reason", flat=True))
    assert reasons[-2:] == ["acme pinned to v2", "globex pinned to v1"]


def test_repinning_moves_the_tenant_and_unpinning_lets_it_follow_the_split(canary, node, acme):
    pin(canary, acme, "new")
    pin(canary, acme, "old")
    assert TenantPin.objects.get().side == "old"
    unpin(canary, acme)
    assert desired(node) == {"2": (0.1, []), "1": (0.9, [])}
    assert canary.events.first().reason == "acme unpinned: follows the traffic split"
    with pytest.raises(RolloutError, match="not pinned"):
        unpin(canary, acme)


def test_a_tenant_kept_on_the_old_version_keeps_it_loaded_after_completion(canary, node, acme):
    pin(canary, acme, "old")
    promote(canary)
    assert desired(node) == {"2": (1.0, []), "1": (0.0, ["acme"])}


def test_a_rolled_back_version_serves_nobody_pinned_or_not(canary, node, acme):
    pin(canary, acme, "new")
    roll_back(canary, reason="bad")
    assert desired(node) == {"1": (1.0, [])}
    with pytest.raises(RolloutError, match="rolled back: no pins"):
        pin(canary, acme, "old")


def test_what_cannot_be_pinned_is_refused_with_the_reason(catalogue, node, acme, globex):
    first = start_rollout(make_version(catalogue, 1), strategy="all_at_once")
    with pytest.raises(RolloutError, match="no previous version"):
        pin(first, acme, "old")
    with pytest.raises(RolloutError, match="a pin is to new or old"):
        pin(first, acme, "sideways")
    own = Model.objects.create(owner=acme, name="churn")
    deployment = start_rollout(make_version(own, 1), strategy="all_at_once")
    with pytest.raises(RolloutError, match="acme's own model"):
        pin(deployment, globex, "new")


def test_operators_pin_and_unpin_through_the_api(operator, canary, acme):
    url = f"/api/v1/deployments/{canary.pk}/pins"
    response = operator.post(
        url, {"tenant": "acme", "side": "old"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["pins"] == [{"tenant": "acme", "side": "old"}]
    for body, message in (
        ({"tenant": "nobody", "side": "old"}, "no tenant 'nobody'"),
        ({"tenant": "acme", "side": "up"}, "a pin is to new or old"),
    ):
        response = operator.post(url, body, content_type="application/json")
        assert response.status_code == 400 and message in response.json()["error"]
    response = operator.delete(f"{url}/acme")
    assert response.status_code == 200 and response.json()["pins"] == []
    assert operator.delete(f"{url}/acme").status_code == 400


def test_tenants_cannot_pin(client, carol, canary):
    client.force_login(carol)
    response = client.post(
        f"/api/v1/deployments/{canary.pk}/pins",
        {"tenant": "acme", "side": "new"},
        content_type="application/json",
    )
    assert response.status_code == 401


def test_the_deployment_page_pins_and_unpins(operator, canary, acme):
    page = reverse("deployments:detail", args=[canary.pk])
    response = operator.post(
        reverse("deployments:pin", args=[canary.pk]), {"tenant": "acme", "side": "new"}
    )
    assert response.status_code == 302
    html = operator.get(page).content.decode()
    assert 'data-pin="acme"' in html and "acme&#x27;s requests now go to v2" in html
    operator.post(reverse("deployments:unpin", args=[canary.pk, "acme"]))
    html = operator.get(page).content.decode()
    assert 'data-pin="acme"' not in html and "No tenant is pinned" in html
    response = operator.post(
        reverse("deployments:pin", args=[canary.pk]),
        {"tenant": "ghost", "side": "new"},
        follow=True,
    )
    assert "Select a valid choice" in response.content.decode()
