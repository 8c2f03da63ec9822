"""Add-ons: a tenant's owner switches a feature bundle on in the portal; it is charged pro
rata and its features reach the nodes in the next policy bundle."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.features import FeatureError, features_by_tenant, switch
from billing.invoicing import month_of, refresh_draft
from billing.models import FeatureActivation, FeatureBundle, FeatureBundlePrice, Membership


@pytest.fixture
def personalisation(db):
    bundle = FeatureBundle.objects.create(
        slug="personalisation", name="Personalisation signals", features=["signals"]
    )
    FeatureBundlePrice.objects.create(
        bundle=bundle, currency="EUR", monthly_price=Decimal("9.00"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    return bundle


def test_an_owner_switches_an_addon_on_and_off_in_the_portal(
    client, carol, acme_on_silver, personalisation
):
    client.force_login(carol)

    on = client.post("/portal/acme/addons/personalisation/", {"on": "1"}, follow=True)

    assert "Personalisation signals is on" in on.content.decode()
    assert features_by_tenant() == {acme_on_silver.pk: ["signals"]}
    again = client.post("/portal/acme/addons/personalisation/", {"on": "1"}, follow=True)
    assert "already on for Acme Analytics" in again.content.decode()

    client.post("/portal/acme/addons/personalisation/", {"on": "0"})

    assert features_by_tenant() == {}
    assert FeatureActivation.objects.get().ends_at is not None


def test_only_owners_switch_addons(client, carol, acme_on_silver, personalisation):
    Membership.objects.filter(user=carol).update(role="developer")
    client.force_login(carol)

    response = client.post("/portal/acme/addons/personalisation/", {"on": "1"})

    assert response.status_code == 403
    assert not FeatureActivation.objects.exists()


def test_an_addon_is_charged_pro_rata_and_unlocks_its_features_on_the_nodes(
    acme_on_silver, personalisation
):
    from fleet.policy_plane import gather_inputs

    switch(acme_on_silver, personalisation, True)
    now = timezone.now()

    draft = refresh_draft(acme_on_silver, *month_of(acme_on_silver, now), now=now)
    rules = {t.slug: t for t in gather_inputs().tenants}

    addon = draft.lines.get(kind="addon")
    assert Decimal(0) <= addon.amount <= Decimal("9.00")
    assert rules["acme"].features == ["signals"]


def test_an_addon_without_a_price_in_the_tenants_currency_cannot_be_switched_on(
    acme_on_silver, personalisation
):
    FeatureBundlePrice.objects.all().delete()

    with pytest.raises(FeatureError, match="has no EUR price yet"):
        switch(acme_on_silver, personalisation, True)
