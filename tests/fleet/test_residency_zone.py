"""A tenant's residency zone: an operator's field of its policy, validated against the zones
the regions have, shown to the tenant, and compiled into the bundle (where routes honour it)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from billing.models import ApiKey
from fleet.models import PolicyChange, TenantPolicy
from fleet.policies import set_accelerator_pool, update_policy
from fleet.policy_plane import publish_bundle


def test_an_operator_binds_a_tenant_to_a_zone_a_region_has(acme, eu_west, us_east, alice):
    policy = update_policy(acme, {"residency_zone": " EU "}, actor=alice, actor_kind="operator")

    assert (policy.residency_zone, policy.revision) == ("EU", 2)
    assert PolicyChange.objects.get().summary == "residency_zone — → EU"

    unbound = update_policy(acme, {"residency_zone": None}, actor=alice, actor_kind="operator")
    assert unbound.residency_zone == ""


def test_a_zone_no_region_has_is_refused_with_the_zones_there_are(acme, eu_west, us_east):
    with pytest.raises(ValidationError) as refused:
        update_policy(acme, {"residency_zone": "APAC"}, actor=None, actor_kind="operator")

    assert refused.value.message_dict["residency_zone"] == [
        "No region is in zone “APAC”: choose EU, US, or leave it empty for no binding."
    ]
    assert TenantPolicy.objects.for_tenant(acme).residency_zone == ""


def test_a_tenant_reads_its_zone_but_cannot_change_it(client, acme, eu_west, carol):
    update_policy(acme, {"residency_zone": "EU"}, actor=None, actor_kind="operator")
    key, secret = ApiKey.issue(acme, "ci")
    headers = {"Authorization": f"Bearer {secret}"}

    body = client.get("/api/v1/policy", headers=headers).json()
    assert body["residency_zone"] == "EU"
    # Sent back as read, it is no change; another value is refused.
    assert (
        client.put(
            "/api/v1/policy", body, content_type="application/json", headers=headers
        ).status_code
        == 200
    )
    refused = client.put(
        "/api/v1/policy", {"residency_zone": ""}, content_type="application/json", headers=headers
    )
    assert refused.status_code == 400
    assert refused.json()["fields"] == {
        "residency_zone": ["Only the provider's operators change this."]
    }

    client.force_login(carol)
    page = client.get("/portal/acme/policy/").content.decode()
    assert "EU: your requests and models stay in the regions of this zone" in page


def test_the_operator_page_sets_it_and_says_why_it_refuses(operator, acme, eu_west, us_east):
    url = "/fleet/policies/tenants/acme/residency/"
    page = operator.get("/fleet/policies/").content.decode()
    assert 'action="/fleet/policies/tenants/acme/residency/"' in page
    assert '<option value="US">US</option>' in page

    saved = operator.post(url, {"residency_zone": "EU"}, follow=True)
    assert "acme: bound to zone EU" in saved.content.decode()
    assert TenantPolicy.objects.for_tenant(acme).residency_zone == "EU"

    refused = operator.post(url, {"residency_zone": "MARS"})
    assert refused.status_code == 200
    assert "No region is in zone “MARS”" in refused.content.decode()
    assert TenantPolicy.objects.for_tenant(acme).residency_zone == "EU"


def test_members_cannot_post_it(client, carol, acme, eu_west):
    client.force_login(carol)

    response = client.post("/fleet/policies/tenants/acme/residency/", {"residency_zone": "EU"})

    assert response.status_code == 403


def test_the_bundle_carries_the_zone_and_cuts_routes_out_of_it(
    acme, eu_west, us_east, accelerator, make_node
):
    iad = make_node("iad-gpu-1", us_east, accelerator)
    set_accelerator_pool(us_east, name="Virginia", nodes=[iad], actor=None)
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[], fallback=us_east, actor=None)
    before = publish_bundle(["unbound"]).bundle
    assert ("acme", "eu-west") in {(r.tenant, r.region) for r in before.routes}

    update_policy(acme, {"residency_zone": "EU"}, actor=None, actor_kind="operator")
    bundle = publish_bundle(["bound"]).bundle

    [rules] = bundle.tenants
    assert rules.residency_zone == "EU"
    assert [(r.tenant, r.region) for r in bundle.routes] == []
