"""The audit log itself: append-only rows, `record()` working out who acted and keeping
snapshots JSON-safe, the list at /audit/ (filters, CSV export, roles, a constant number of
queries) and a tenant's own log in the portal. The actions that write entries are tested in
test_audit_actions.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.models import ApiKey, AuditEntry, AuditLogIsAppendOnly, Membership, Tenant

pytestmark = pytest.mark.django_db

PAGE = "/audit/"


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex")


def entry(action="policy.updated", *, category="policy", actor=None, subject, **kw):
    return audit.record(action, category=category, actor=actor, subject=subject, **kw)


def csv_rows(response) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


# --- the model: append-only ----------------------------------------------------------------


def test_an_entry_cannot_be_changed_or_deleted_one_by_one_or_in_bulk(acme, alice):
    made = audit.record(
        "tenant.changed", category="money", actor=alice, subject=acme, after={"name": "x"}
    )

    made.note = "edited later"
    with pytest.raises(AuditLogIsAppendOnly):
        made.save()
    with pytest.raises(AuditLogIsAppendOnly):
        made.delete()
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEntry.objects.filter(pk=made.pk).update(note="edited later")
    with pytest.raises(AuditLogIsAppendOnly):
        AuditEntry.objects.all().delete()
    # bulk_update writes inside the caller's transaction: its refusal is one to roll back.
    with pytest.raises(AuditLogIsAppendOnly), transaction.atomic():
        AuditEntry.objects.bulk_update([made], ["note"])

    assert AuditEntry.objects.get(pk=made.pk).note == ""


def test_a_deleted_user_stays_named_by_the_entry(acme, django_user_model):
    erin = django_user_model.objects.create_user("erin", password="erin-password")
    Membership.objects.create(user=erin, tenant=acme, role="owner")
    made = audit.record("api_key.created", category="access", actor=erin, subject=acme)

    erin.delete()

    made = AuditEntry.objects.get(pk=made.pk)
    assert (made.actor, made.actor_kind, made.actor_label) == (None, "tenant", "erin")


def test_a_tenant_with_an_audit_history_is_kept(acme):
    from django.db.models import ProtectedError

    audit.record("api_key.created", category="access", actor=None, subject=acme)
    with pytest.raises(ProtectedError):
        acme.delete()


# --- record(): who acted, what, and JSON-safe snapshots ---------------------------------------


def test_it_names_each_kind_of_actor(acme, alice, bob, carol):
    key, _ = ApiKey.issue(acme, "checkout")
    kinds = [
        audit.record("x.y", category="policy", actor=who, subject=acme)
        for who in (alice, bob, carol, key, audit.node_actor("nd-abc"), None)
    ]

    assert [(e.actor_kind, e.actor_label, e.actor) for e in kinds] == [
        ("operator", "alice", alice),
        ("finance", "bob", bob),
        ("tenant", "carol", carol),
        ("api_key", f"{key.prefix}… (checkout)", None),
        ("node", "nd-abc", None),
        ("system", "system", None),
    ]


def test_an_anonymous_user_cannot_have_acted(acme):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(ValueError, match="not a signed-in user"):
        audit.record("x.y", category="policy", actor=AnonymousUser(), subject=acme)
    assert not AuditEntry.objects.filter(action="x.y").exists()


def test_the_tenant_is_the_subjects_or_the_keys_unless_given(acme, globex, carol):
    key, _ = ApiKey.issue(globex, "bot")
    membership = Membership.objects.get(user=carol)
    setting = audit.Subject("fleet.node_class", "nano", "nano")

    assert audit.record("a.b", category="access", actor=None, subject=acme).tenant == acme
    assert audit.record("a.b", category="access", actor=None, subject=membership).tenant == acme
    assert audit.record("a.b", category="policy", actor=key, subject=setting).tenant == globex
    assert audit.record("a.b", category="policy", actor=None, subject=setting).tenant is None
    given = audit.record("a.b", category="policy", actor=key, subject=setting, tenant=acme)
    assert given.tenant == acme


def test_snapshots_keep_exact_amounts_and_utc_times(acme):
    berlin = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    made = audit.record(
        "price.created",
        category="money",
        actor=None,
        subject=acme,
        before=None,
        after={
            "per_1000": Decimal("0.050000"),
            "from": berlin,
            "fields": {"email", "customer_id"},
            "nested": {"limit": Decimal("1.5"), "ratio": float("inf")},
        },
    )

    made.refresh_from_db()
    assert made.before is None
    assert made.after == {
        "per_1000": "0.050000",
        "from": "2026-03-01T12:30:00+00:00",
        "fields": ["customer_id", "email"],
        "nested": {"limit": "1.5", "ratio": "inf"},
    }


def test_changes_list_only_what_differs_and_open_dicts_one_level():
    before = {"privacy_mode": "any", "cost_ceilings": {"tiny": "0.10"}, "fields": []}
    after = {"privacy_mode": "in_region", "cost_ceilings": {"tiny": "0.20"}, "fields": []}

    assert audit.changes(before, after) == [
        ("privacy_mode", "any", "in_region"),
        ("cost_ceilings.tiny", "0.10", "0.20"),
    ]
    assert audit.changes(None, {"a": 1}) == [("a", None, 1)]
    assert audit.summary_of({"a": None}, {"a": ["x", "y"]}) == "a: — → x, y"


# --- the list page ----------------------------------------------------------------------------


@pytest.fixture
def log(acme, globex, alice, bob, carol):
    """Five entries of two tenants, two days and every category."""
    rows = [
        entry("policy.updated", actor=carol, subject=acme, before={"privacy_mode": "any"},
              after={"privacy_mode": "local_only"}, at=datetime(2026, 3, 1, 9, tzinfo=UTC)),
        entry("price.created", category="money", actor=alice, subject=audit.Subject(
              "billing.price", "7", "tiny/local EUR 0.06"), after={"per_1000": "0.060000"},
              at=datetime(2026, 3, 2, 9, tzinfo=UTC)),
        entry("invoice.finalised", category="money", actor=bob, subject=globex,
              before={"status": "draft"}, after={"status": "finalised", "number": "2026-000001"},
              at=datetime(2026, 3, 2, 10, tzinfo=UTC)),
        entry("api_key.revoked", category="access", actor=carol, subject=acme,
              note="=cmd|' /C calc'!A0", at=datetime(2026, 3, 2, 11, tzinfo=UTC)),
        entry("deployment.rolled_back", category="deployment", actor=None, subject=globex,
              note="error rate 50.0%", at=datetime(2026, 3, 2, 12, tzinfo=UTC)),
    ]  # fmt: skip
    return rows


def listed(response) -> list[str]:
    return [row.action for row in response.context["table"].paginated_rows.data]


def test_it_lists_every_entry_newest_first_with_the_change(client, alice, log):
    client.force_login(alice)
    response = client.get(PAGE)

    assert response.status_code == 200
    assert listed(response) == [
        "deployment.rolled_back",
        "api_key.revoked",
        "invoice.finalised",
        "price.created",
        "policy.updated",
    ]
    text = response.content.decode()
    assert "<del>any</del> → <ins>local_only</ins>" in text
    assert "<del>draft</del> → <ins>finalised</ins>" in text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("category=money", ["invoice.finalised", "price.created"]),
        ("action=api_key.revoked", ["api_key.revoked"]),
        ("actor=bo", ["invoice.finalised"]),
        ("actor_kind=system", ["deployment.rolled_back"]),
        ("tenant=acme", ["api_key.revoked", "policy.updated"]),
        ("since=2026-03-02&until=2026-03-02", ["deployment.rolled_back", "api_key.revoked",
                                               "invoice.finalised", "price.created"]),
        ("until=2026-03-01", ["policy.updated"]),
        ("q=2026-000001", ["invoice.finalised"]),
        ("q=error+rate", ["deployment.rolled_back"]),
        ("q=tiny%2Flocal", ["price.created"]),
    ],
)  # fmt: skip
def test_the_filters_narrow_the_list(client, dave, log, query, expected):
    client.force_login(dave)  # an auditor reads it
    assert listed(client.get(f"{PAGE}?{query}")) == expected


def test_a_bad_filter_is_said_and_ignored(client, alice, log):
    client.force_login(alice)
    response = client.get(f"{PAGE}?since=yesterday&action=nothing.such")

    assert response.status_code == 200
    assert "These filters are ignored." in response.content.decode()
    assert len(listed(response)) == 5


def test_the_csv_export_holds_the_filtered_rows_whole(client, bob, log):
    client.force_login(bob)
    response = client.get(f"{PAGE}?category=money&format=csv")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = csv_rows(response)
    assert [r["action"] for r in rows] == ["invoice.finalised", "price.created"]
    finalised = rows[0]
    assert finalised["actor"] == "bob" and finalised["actor_kind"] == "finance"
    assert finalised["tenant"] == "globex"
    assert finalised["at"] == "2026-03-02T10:00:00Z"
    # Any order of fields: PostgreSQL's jsonb does not keep the one they were written in.
    assert set(finalised["changes"].split("; ")) == {
        "status: draft → finalised",
        "number: — → 2026-000001",
    }
    assert finalised["after"] == '{"number":"2026-000001","status":"finalised"}'


def test_the_export_cannot_smuggle_a_formula_and_refuses_an_unknown_format(client, bob, log):
    client.force_login(bob)
    [revoked] = csv_rows(client.get(f"{PAGE}?action=api_key.revoked&format=csv"))
    assert revoked["note"] == "'=cmd|' /C calc'!A0"

    response = client.get(f"{PAGE}?format=pdf")
    assert response.status_code == 400
    assert "format must be one of csv, xlsx" in response.content.decode()


def test_the_xlsx_export_is_a_workbook(client, bob, log):
    client.force_login(bob)
    response = client.get(f"{PAGE}?format=xlsx")

    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:2] == b"PK"  # a zip, as xlsx files are


def test_only_operators_finance_and_auditors_read_it(client, carol, alice, bob, dave, log):
    client.force_login(carol)
    assert client.get(PAGE).status_code == 403
    assert client.get(f"{PAGE}?format=csv").status_code == 403
    client.logout()
    assert client.get(PAGE).status_code == 302  # to the login page
    for reader in (alice, bob, dave):
        client.force_login(reader)
        assert client.get(PAGE).status_code == 200


def test_the_nav_links_to_it_for_readers_only(client, dave, carol, log):
    client.force_login(dave)
    assert 'href="/audit/"' in client.get("/").content.decode()
    client.force_login(carol)
    assert 'href="/audit/"' not in client.get("/portal/acme/").content.decode()


def test_the_list_costs_the_same_queries_for_one_row_or_many(
    client, alice, acme, django_assert_num_queries
):
    client.force_login(alice)
    entry("api_key.created", category="access", actor=alice, subject=acme, after={"n": 0})
    with django_assert_num_queries(QUERIES) as one:
        client.get(PAGE)
    for n in range(1, 40):
        entry(f"action.{n % 7}", category="access", actor=alice, subject=acme, after={"n": n})
    with django_assert_num_queries(QUERIES) as many:
        response = client.get(PAGE)

    assert len(listed(response)) == 40
    assert len(one.captured_queries) == len(many.captured_queries)


# session, user, the user's groups, the action choices, the tenant choices, count, the page
QUERIES = 7


# --- the portal -------------------------------------------------------------------------------


PORTAL = "/portal/acme/audit/"


def test_a_tenants_owner_sees_its_entries_only(client, carol, log):
    client.force_login(carol)
    response = client.get(PORTAL)

    assert response.status_code == 200
    assert listed(response) == ["api_key.revoked", "policy.updated"]
    text = response.content.decode()
    assert "globex" not in text.lower()
    assert "invoice.finalised" not in text  # not even among the action choices


def test_the_portal_names_the_provider_not_its_people(client, carol, acme, alice, bob):
    entry("subscription.band_changed", category="money", actor=alice, subject=acme)
    entry("invoice.voided", category="money", actor=bob, subject=acme)
    client.force_login(carol)

    response = client.get(PORTAL)
    text = response.content.decode()
    assert text.count("the provider") >= 2
    assert "alice" not in text and "bob" not in text
    rows = csv_rows(client.get(f"{PORTAL}?format=csv"))
    assert {r["actor"] for r in rows} == {"the provider"}


def test_the_portal_export_and_filters_stay_in_the_tenant(client, carol, log):
    client.force_login(carol)

    rows = csv_rows(client.get(f"{PORTAL}?format=csv"))
    assert [r["action"] for r in rows] == ["api_key.revoked", "policy.updated"]
    assert {r["tenant"] for r in rows} == {"acme"}
    # A tenant filter is not offered; one put in the address changes nothing.
    assert [r["action"] for r in csv_rows(client.get(f"{PORTAL}?tenant=globex&format=csv"))] == [
        "api_key.revoked",
        "policy.updated",
    ]


def test_another_tenants_log_is_not_found_and_non_owners_are_refused(
    client, carol, globex, acme, log, django_user_model
):
    client.force_login(carol)
    assert client.get("/portal/globex/audit/").status_code == 404

    viewer = django_user_model.objects.create_user("vic", password="vic-password")
    Membership.objects.create(user=viewer, tenant=acme, role="developer")
    client.force_login(viewer)
    assert client.get(PORTAL).status_code == 403
    assert client.get(f"{PORTAL}?format=csv").status_code == 403
    assert "Audit log" not in client.get("/portal/acme/").content.decode()


def test_the_portal_page_costs_the_same_queries_for_one_row_or_many(
    client, carol, acme, django_assert_num_queries
):
    client.force_login(carol)
    entry("api_key.created", category="access", actor=carol, subject=acme)
    with django_assert_num_queries(PORTAL_QUERIES):
        client.get(PORTAL)
    for n in range(30):
        entry("api_key.created", category="access", actor=carol, subject=acme, after={"n": n})
    with django_assert_num_queries(PORTAL_QUERIES):
        assert len(listed(client.get(PORTAL))) == 31


# session, user, the membership, the user's groups, the action choices, count, the page
PORTAL_QUERIES = 7


def test_times_are_aware_and_utc(acme):
    made = audit.record("a.b", category="access", actor=None, subject=acme)
    assert timezone.is_aware(made.at)
