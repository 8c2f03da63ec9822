"""Billing's actions write the audit log as they happen, through the real pages and API:
prices, invoices and the month close, bands, add-ons, budgets (money); API keys, memberships
and accounts in the admin (access). Fleet's actions are in tests/fleet/test_audit_entries.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.alerts import check_budget
from billing.closing import run_close
from billing.invoicing import refresh_draft
from billing.models import (
    ApiKey,
    AuditEntry,
    BandTerms,
    FeatureBundle,
    FeatureBundlePrice,
    Invoice,
    IssuedToken,
    LatencyBand,
    Membership,
    Price,
    Tenant,
)
from tests.billing.usage_rows import AFTER_NOV, NOV

pytestmark = pytest.mark.django_db


def only(action: str) -> AuditEntry:
    """The one entry of `action` (fails when there are none or several)."""
    [found] = AuditEntry.objects.filter(action=action)
    return found


def who(entry: AuditEntry) -> tuple:
    return entry.actor, entry.actor_kind, entry.actor_label


# --- money ------------------------------------------------------------------------------------


def test_an_operators_new_price_is_audited_with_the_price_it_replaces(client, alice, prices):
    client.force_login(alice)
    when = (timezone.now() + timedelta(days=2)).astimezone(UTC).replace(second=0, microsecond=0)

    client.post(
        "/finance/prices/",
        {"grade": "tiny", "serving": "local", "currency": "EUR", "per_1000": "0.06",
         "effective_from": when.strftime("%Y-%m-%dT%H:%M"), "note": "spring"},
    )  # fmt: skip

    entry = only("price.created")
    price = Price.objects.get(effective_from=when)
    assert who(entry) == (alice, "operator", "alice")
    assert (entry.category, entry.subject_type, entry.subject_id) == (
        "money",
        "billing.price",
        str(price.pk),
    )
    assert entry.tenant is None
    assert entry.before == {
        "grade": "tiny", "serving": "local", "currency": "EUR", "per_1000": "0.050000",
        "effective_from": "2026-01-01T00:00:00+00:00", "note": "",
    }  # fmt: skip
    assert entry.after["per_1000"] == "0.060000"
    assert entry.after["effective_from"] == when.isoformat()


def test_finance_cannot_set_a_price_and_nothing_is_audited(client, bob, prices):
    client.force_login(bob)
    response = client.post(
        "/finance/prices/",
        {"grade": "tiny", "serving": "local", "currency": "EUR", "per_1000": "0.06"},
    )

    assert response.status_code == 403
    assert not AuditEntry.objects.exists()


def test_a_price_scheduled_through_the_api_and_withdrawn_is_audited_twice(client, alice):
    client.force_login(alice)
    later = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    created = client.post(
        "/api/v1/prices",
        {"grade": "large", "serving": "regional", "per_1000": "3.5",
         "effective_from": later.isoformat()},
        content_type="application/json",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    price_id = created.json()["id"]

    client.post(f"/finance/prices/{price_id}/delete/")

    assert not Price.objects.filter(pk=price_id).exists()
    first, withdrawn = only("price.created"), only("price.withdrawn")
    assert first.before is None  # the first large/regional price
    assert (withdrawn.subject_id, withdrawn.after) == (str(price_id), None)
    assert withdrawn.before["per_1000"] == "3.500000"
    assert who(withdrawn) == (alice, "operator", "alice")


def test_finance_closing_a_month_audits_the_close_and_each_invoice_finalised(
    client, bob, acme_on_silver
):
    refresh_draft(acme_on_silver, 2026, 11, now=NOV)
    client.force_login(bob)
    client.post("/finance/close/run/", {"action": "finalise", "month": "2026-11"})
    run_close(only("month_close.started").subject_id, now=AFTER_NOV)

    started, finalised = only("month_close.started"), only("invoice.finalised")
    invoice = Invoice.objects.get()
    assert who(started) == (bob, "finance", "bob")
    assert started.after == {"month": "2026-11", "drafts": 1}
    assert who(finalised) == (bob, "finance", "bob")
    assert (finalised.tenant, finalised.subject_id, finalised.at) == (
        acme_on_silver,
        str(invoice.pk),
        AFTER_NOV,
    )
    total = f"{invoice.total:.2f}"  # in cents, before and after alike
    assert finalised.before == {"status": "draft", "total": total}
    assert finalised.after == {
        "status": "finalised",
        "number": "2026-000001",
        "total": total,
        "currency": "EUR",
    }


def test_settling_an_invoice_is_audited_and_stripes_events_act_as_the_system(acme_on_silver, bob):
    from billing.invoicing import finalise_invoice

    invoice = finalise_invoice(refresh_draft(acme_on_silver, 2026, 11, now=NOV), now=AFTER_NOV)
    invoice.move_to("uncollectible", actor=bob)
    invoice.move_to("paid", detail={"stripe_event": "evt_123"})

    uncollectible, paid = only("invoice.marked_uncollectible"), only("invoice.paid")
    assert who(uncollectible) == (bob, "finance", "bob")
    assert (uncollectible.before, uncollectible.after) == (
        {"status": "finalised"},
        {"status": "uncollectible"},
    )
    assert who(paid) == (None, "system", "system")
    assert paid.note == "stripe_event: evt_123"
    assert who(only("invoice.finalised")) == (None, "system", "system")


def test_an_owners_band_change_and_add_on_switch_are_audited(client, carol, acme_on_silver):
    gold = LatencyBand.objects.create(slug="gold", name="Gold", position=3)
    BandTerms.objects.create(
        band=gold, currency="EUR", effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        p95_target_ms=25, monthly_fee=Decimal("149.00"), included_inferences=1_000_000,
        overage_tiny=Decimal("0.03"), overage_medium=Decimal("0.30"), overage_large=Decimal("1.60"),
        sla_credit_percent=Decimal(20),
    )  # fmt: skip
    personalisation = FeatureBundle.objects.create(
        slug="personalisation", name="Personalisation signals", features=["signals"]
    )
    FeatureBundlePrice.objects.create(
        bundle=personalisation, currency="EUR", monthly_price=Decimal("9.00"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    client.force_login(carol)

    client.post("/portal/acme/band/", {"band": gold.slug})
    client.post("/portal/acme/addons/personalisation/", {"on": "1"})
    client.post("/portal/acme/addons/personalisation/", {"on": "0"})

    band = only("subscription.band_changed")
    assert who(band) == (carol, "tenant", "carol")
    assert (band.category, band.tenant) == ("money", acme_on_silver)
    assert band.before == {"band": "Silver"}
    assert band.after["band"] == "Gold"
    on, off = only("feature.activated"), only("feature.deactivated")
    assert (on.before, on.after) == (
        {"add_on": "Personalisation signals", "on": False},
        {"add_on": "Personalisation signals", "on": True},
    )
    assert off.after["on"] is False and who(off) == (carol, "tenant", "carol")


def test_a_budget_spent_is_audited_as_the_system_changing_routing(acme_on_silver):
    Tenant.objects.filter(pk=acme_on_silver.pk).update(monthly_budget=Decimal("50"))
    acme_on_silver.refresh_from_db()
    refresh_draft(acme_on_silver, 2026, 11, now=NOV)

    check_budget(acme_on_silver, now=NOV)
    check_budget(acme_on_silver, now=NOV + timedelta(minutes=5))  # no change: no entry

    entry = only("budget.exhausted")
    assert who(entry) == (None, "system", "system")
    assert (entry.tenant, entry.at, entry.note) == (acme_on_silver, NOV, "2026-11")
    assert entry.before == {"exhausted": False}
    assert entry.after["exhausted"] is True and entry.after["budget"] == "50.00"


# --- access -----------------------------------------------------------------------------------


def test_a_member_creating_and_revoking_a_key_is_audited(client, carol, acme):
    client.force_login(carol)
    client.post("/portal/acme/keys/", {"name": "checkout service"})
    key = ApiKey.objects.get()
    IssuedToken.objects.create(
        token_id="t1", tenant=acme, api_key=key, issued_at=timezone.now(),
        expires_at=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip

    client.post(f"/portal/acme/keys/{key.pk}/revoke/")

    created, revoked = only("api_key.created"), only("api_key.revoked")
    for entry in (created, revoked):
        assert who(entry) == (carol, "tenant", "carol")
        assert (entry.category, entry.tenant, entry.subject_id) == ("access", acme, str(key.pk))
        assert entry.subject_label == f"{key.prefix}… (checkout service)"
    assert created.before is None
    assert created.after["name"] == "checkout service" and created.after["prefix"] == key.prefix
    assert key.secret_hash not in str(created.after)
    key.refresh_from_db()
    assert revoked.before == {"revoked_at": None}
    assert revoked.after == {"revoked_at": key.revoked_at.isoformat(), "tokens_revoked": 1}


def test_an_action_and_its_entry_commit_or_roll_back_together(acme, monkeypatch):
    from django.db import transaction

    def broken(**fields):
        raise RuntimeError("the audit log is unavailable")

    monkeypatch.setattr(AuditEntry.objects, "create", broken)
    with pytest.raises(RuntimeError), transaction.atomic():
        ApiKey.issue(acme, "ci")

    assert not ApiKey.objects.exists()  # no key without its entry


def test_a_role_changed_in_the_admin_is_audited_with_before_and_after(admin_client, carol, acme):
    membership = Membership.objects.get(user=carol)

    response = admin_client.post(
        f"/admin/billing/membership/{membership.pk}/change/",
        {"user": carol.pk, "tenant": acme.pk, "role": "viewer",
         "created_at_0": "2026-01-01", "created_at_1": "00:00:00"},
    )  # fmt: skip

    assert response.status_code == 302, response.content.decode()[:2000]
    entry = only("membership.changed")
    assert (entry.actor_kind, entry.actor_label, entry.category) == ("operator", "admin", "access")
    assert entry.tenant == acme
    assert entry.before["role"] == "owner" and entry.after["role"] == "viewer"
    assert entry.note == "in the admin"


def test_a_budget_set_and_a_member_added_in_the_admins_tenant_page_are_audited(
    admin_client, acme, carol, django_user_model
):
    frank = django_user_model.objects.create_user("frank", password="frank-password")
    # The times the form below posts back unchanged.
    Membership.objects.filter(user=carol).update(created_at=datetime(2026, 1, 1, tzinfo=UTC))
    Tenant.objects.filter(pk=acme.pk).update(created_at=datetime(2026, 1, 1, tzinfo=UTC))
    membership = Membership.objects.get(user=carol)

    response = admin_client.post(
        f"/admin/billing/tenant/{acme.pk}/change/",
        {
            "slug": "acme", "name": acme.name, "time_zone": acme.time_zone, "currency": "EUR",
            "jurisdiction": "", "billing_email": "", "monthly_budget": "500.00",
            "budget_alert_percents": "[50, 80, 100]", "alert_webhook_url": "",
            "stripe_customer_id": "", "created_at_0": "2026-01-01", "created_at_1": "00:00:00",
            "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "1",
            "memberships-0-id": membership.pk, "memberships-0-tenant": acme.pk,
            "memberships-0-user": carol.pk, "memberships-0-role": "owner",
            "memberships-0-created_at_0": "2026-01-01", "memberships-0-created_at_1": "00:00:00",
            "memberships-1-tenant": acme.pk, "memberships-1-user": frank.pk,
            "memberships-1-role": "developer",
            "memberships-1-created_at_0": "2026-01-01", "memberships-1-created_at_1": "00:00:00",
        },
    )  # fmt: skip

    assert response.status_code == 302, response.content.decode()[:3000]
    tenant = only("tenant.changed")
    assert (tenant.category, tenant.tenant) == ("money", acme)
    assert (tenant.before["monthly_budget"], tenant.after["monthly_budget"]) == (None, "500.00")
    added = only("membership.created")
    assert (added.category, added.tenant, added.before) == ("access", acme, None)
    assert added.after["user"] == "frank" and added.after["role"] == "developer"
    assert not AuditEntry.objects.filter(action="membership.changed").exists()  # carol's row
