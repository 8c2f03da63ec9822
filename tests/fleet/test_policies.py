"""Tenant policies and the operators' thresholds: the rules, the audit trail, the portal page,
the tenant API (GET/PUT /api/v1/policy) and the operator page (/fleet/policies/)."""

from __future__ import annotations

import html
import json
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing.models import ApiKey, Membership, Tenant
from fleet.models import (
    AcceleratorPool,
    FleetSettingChange,
    NodeClass,
    PolicyChange,
    TenantPolicy,
)
from fleet.models.policies import POLICY_DEFAULTS, clean_cost_ceilings, clean_policy
from fleet.policies import (
    StalePolicy,
    set_accelerator_pool,
    set_node_class_thresholds,
    update_policy,
)
from fleet.policy_plane import publish_bundle

pytestmark = pytest.mark.django_db

POLICY_URL = "/api/v1/policy"
OPERATOR_PAGE = "/fleet/policies/"


@pytest.fixture
def globex(db):
    return Tenant.objects.create(
        slug="globex", name="Globex", time_zone="America/New_York", currency="USD"
    )


@pytest.fixture
def dave(django_user_model, acme):
    """A viewer of acme."""
    user = django_user_model.objects.create_user("dave", "dave@acme.example", "dave-password")
    Membership.objects.create(user=user, tenant=acme, role="viewer")
    return user


@pytest.fixture
def erin(django_user_model, globex):
    """An owner of globex, and of nothing else."""
    user = django_user_model.objects.create_user("erin", "erin@globex.example", "erin-password")
    Membership.objects.create(user=user, tenant=globex, role="owner")
    return user


@pytest.fixture
def acme_key(acme):
    return ApiKey.issue(acme, "policy bot")


@pytest.fixture
def globex_secret(globex):
    return ApiKey.issue(globex, "globex bot")[1]


def as_member(policy_tenant, changes, user=None, **kwargs):
    return update_policy(policy_tenant, changes, actor=user, actor_kind="member", **kwargs)


def portal_url(tenant) -> str:
    return f"/portal/{tenant.slug}/policy/"


def policy_form(policy: TenantPolicy, **changes) -> dict:
    """What the portal's form posts for `policy`, with `changes` typed in."""
    data = {
        "revision": policy.revision,
        "privacy_mode": policy.privacy_mode,
        "fallback": policy.fallback,
        "quality": policy.quality,
        "max_spend_per_session": "",
        "sensitive_fields": ", ".join(policy.sensitive_fields),
        "on_budget_exhausted": policy.on_budget_exhausted,
    }
    data.update(changes)
    return data


def api(client, method: str, secret: str | None, body=None, **headers):
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    if method == "GET":
        return client.get(POLICY_URL, headers=headers)
    return client.generic(
        method,
        POLICY_URL,
        body if isinstance(body, bytes | str) else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


# --- the policy and its rules ----------------------------------------------------------------


def test_a_tenant_has_the_default_policy_until_it_changes_it(acme):
    policy = TenantPolicy.objects.for_tenant(acme)

    assert policy.values() == POLICY_DEFAULTS
    assert policy.revision == 1
    assert TenantPolicy.objects.for_tenant(acme).pk == policy.pk
    assert not PolicyChange.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"privacy_mode": "nowhere"}, "privacy_mode", "“nowhere” is not a privacy mode"),
        ({"fallback": "retry"}, "fallback", "choose regional or reject"),
        ({"quality": "premium"}, "quality", "not a quality objective"),
        ({"on_budget_exhausted": "panic"}, "on_budget_exhausted", "alert, downgrade or block"),
        ({"privacy_mode": None}, "privacy_mode", "null is not a privacy mode"),
        ({"max_spend_per_session": "-0.01"}, "max_spend_per_session", "negative"),
        ({"max_spend_per_session": "lots"}, "max_spend_per_session", "not an amount"),
        ({"max_spend_per_session": True}, "max_spend_per_session", "not an amount"),
        ({"max_spend_per_session": "0.00001"}, "max_spend_per_session", "4 decimal places"),
        ({"max_spend_per_session": "1e9"}, "max_spend_per_session", "too large"),
        ({"sensitive_fields": "customer_id"}, "sensitive_fields", "list of field names"),
        ({"sensitive_fields": ["1st_name"]}, "sensitive_fields", "“1st_name” is not a field name"),
        ({"sensitive_fields": ["e-mail"]}, "sensitive_fields", "not a field name"),
        ({"sensitive_fields": ["x" * 65]}, "sensitive_fields", "at most 64 characters"),
        ({"sensitive_fields": [7]}, "sensitive_fields", "7 is not a field name"),
        ({"sensitive_fields": ["email", "email"]}, "sensitive_fields", "named more than once"),
        (
            {"sensitive_fields": [f"field_{i}" for i in range(51)]},
            "sensitive_fields",
            "At most 50 sensitive fields; 51 given",
        ),
    ],
)
def test_it_refuses_a_bad_value_and_says_what_is_wrong(acme, changes, field, message):
    with pytest.raises(ValidationError) as refused:
        as_member(acme, changes)

    assert list(refused.value.message_dict) == [field]
    assert message in " ".join(refused.value.message_dict[field])
    assert TenantPolicy.objects.for_tenant(acme).revision == 1
    assert not PolicyChange.objects.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (30, "At least 60 seconds"),
        (10**8, "At most 2592000 seconds"),
        ("600", "not a whole number of seconds"),
        (60.5, "not a whole number of seconds"),
        (True, "not a whole number of seconds"),
    ],
)
def test_fail_closed_must_be_a_sensible_number_of_seconds(acme, alice, value, message):
    with pytest.raises(ValidationError) as refused:
        update_policy(acme, {"fail_closed_after_s": value}, actor=alice, actor_kind="operator")

    assert message in refused.value.message_dict["fail_closed_after_s"][0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "At least 1 request per second"),
        (100_001, "At most 100000 requests per second"),
        ("50", "not a whole number of requests per second"),
        (2.5, "not a whole number of requests per second"),
        (True, "not a whole number of requests per second"),
    ],
)
def test_the_rate_limit_must_be_a_sensible_number_of_requests(acme, alice, value, message):
    with pytest.raises(ValidationError) as refused:
        update_policy(acme, {"rate_limit_per_s": value}, actor=alice, actor_kind="operator")

    assert message in refused.value.message_dict["rate_limit_per_s"][0]
    assert TenantPolicy.objects.for_tenant(acme).rate_limit_per_s is None


def test_an_operator_sets_and_clears_a_rate_limit_with_an_audit_row(acme, alice):
    policy = update_policy(acme, {"rate_limit_per_s": 50}, actor=alice, actor_kind="operator")

    assert (policy.rate_limit_per_s, policy.revision) == (50, 2)
    assert PolicyChange.objects.get().summary == "rate_limit_per_s — → 50"
    cleared = update_policy(acme, {"rate_limit_per_s": None}, actor=alice, actor_kind="operator")
    assert cleared.rate_limit_per_s is None


def test_a_local_only_tenant_cannot_fall_back_to_the_region(acme):
    with pytest.raises(ValidationError) as refused:
        as_member(acme, {"privacy_mode": "local_only"})  # the fallback is still `regional`

    [message] = refused.value.message_dict["fallback"]
    assert "A local-only tenant cannot be offloaded" in message
    assert "contradictory" in message
    assert "reject" in message

    policy = as_member(acme, {"privacy_mode": "local_only", "fallback": "reject"})
    assert (policy.privacy_mode, policy.fallback) == ("local_only", "reject")

    # …and, once local-only, it cannot be given the regional fallback alone either.
    with pytest.raises(ValidationError, match="cannot be offloaded"):
        as_member(acme, {"fallback": "regional"})


def test_the_database_refuses_the_contradiction_too(acme):
    policy = TenantPolicy.objects.for_tenant(acme)
    policy.privacy_mode = "local_only"
    with pytest.raises(IntegrityError), transaction.atomic():
        policy.save()


def test_the_rules_are_one_pure_function_that_the_model_clean_uses_too(acme):
    values = {**POLICY_DEFAULTS, "max_spend_per_session": 0.5, "sensitive_fields": ["b", "a"]}
    cleaned = clean_policy(values)
    assert cleaned["max_spend_per_session"] == Decimal("0.5")
    assert cleaned["sensitive_fields"] == ["a", "b"]

    policy = TenantPolicy(tenant=acme, privacy_mode="local_only", fallback="regional")
    with pytest.raises(ValidationError, match="cannot be offloaded"):
        policy.full_clean()


def test_a_change_is_audited_with_before_after_and_what_changed(acme, carol):
    policy = as_member(
        acme,
        {
            "privacy_mode": "in_region",
            "max_spend_per_session": "0.5",
            "sensitive_fields": ["email"],
        },
        user=carol,
    )

    assert policy.revision == 2
    assert policy.updated_by == carol
    [change] = PolicyChange.objects.all()
    assert (change.tenant, change.actor, change.actor_kind, change.revision) == (
        acme,
        carol,
        "member",
        2,
    )
    assert change.before == {
        "privacy_mode": "any",
        "fallback": "regional",
        "quality": "best_effort",
        "max_spend_per_session": None,
        "sensitive_fields": [],
        "on_budget_exhausted": "alert",
        "fail_closed_after_s": None,
        "rate_limit_per_s": None,
        "residency_zone": "",
    }
    assert change.after == {
        **change.before,
        "privacy_mode": "in_region",
        "max_spend_per_session": "0.50",
        "sensitive_fields": ["email"],
    }
    assert change.summary == (
        "privacy_mode any → in_region; max_spend_per_session — → 0.50; sensitive_fields +email"
    )


def test_a_change_that_changes_nothing_writes_nothing(acme, carol):
    as_member(acme, {"max_spend_per_session": "0.50", "sensitive_fields": ["b", "a"]}, user=carol)

    # The same amount written otherwise, the same fields in another order, a default resent.
    again = as_member(
        acme,
        {
            "max_spend_per_session": Decimal("0.5000"),
            "sensitive_fields": ["a", "b"],
            "quality": "best_effort",
        },
        user=carol,
    )

    assert again.revision == 2
    assert PolicyChange.objects.count() == 1


def test_every_change_bumps_the_revision(acme, carol, alice):
    revisions = [
        as_member(acme, {"quality": "high"}, user=carol).revision,
        as_member(acme, {"on_budget_exhausted": "block"}, user=carol).revision,
        update_policy(
            acme, {"fail_closed_after_s": 600}, actor=alice, actor_kind="operator"
        ).revision,
    ]

    assert revisions == [2, 3, 4]
    assert list(PolicyChange.objects.values_list("revision", flat=True)) == [4, 3, 2]


def test_members_and_keys_cannot_change_the_operators_setting(acme, carol, alice, acme_key):
    update_policy(acme, {"fail_closed_after_s": 600}, actor=alice, actor_kind="operator")

    with pytest.raises(ValidationError) as refused:
        as_member(acme, {"fail_closed_after_s": 60}, user=carol)
    assert refused.value.message_dict == {
        "fail_closed_after_s": ["Only the provider's operators change this."]
    }
    key, _ = acme_key
    with pytest.raises(ValidationError):
        update_policy(
            acme, {"fail_closed_after_s": None}, actor=None, actor_kind="api_key", api_key=key
        )
    # The current value sent back is no change, so it is no refusal either.
    assert as_member(acme, {"fail_closed_after_s": 600}, user=carol).revision == 2


def test_members_and_keys_cannot_change_the_rate_limit(acme, carol, alice, acme_key):
    update_policy(acme, {"rate_limit_per_s": 50}, actor=alice, actor_kind="operator")

    with pytest.raises(ValidationError) as refused:
        as_member(acme, {"rate_limit_per_s": 500}, user=carol)
    assert refused.value.message_dict == {
        "rate_limit_per_s": ["Only the provider's operators change this."]
    }
    key, _ = acme_key
    with pytest.raises(ValidationError):
        update_policy(
            acme, {"rate_limit_per_s": None}, actor=None, actor_kind="api_key", api_key=key
        )
    assert as_member(acme, {"rate_limit_per_s": 50}, user=carol).revision == 2


def test_the_bundle_carries_the_rate_limit_to_the_nodes(acme, alice):
    update_policy(acme, {"rate_limit_per_s": 50}, actor=alice, actor_kind="operator")

    [rules] = publish_bundle(["test"]).bundle.tenants

    assert (rules.slug, rules.rate_limit_per_s) == ("acme", 50)


def test_a_change_over_a_revision_that_moved_on_is_refused(acme, carol):
    as_member(acme, {"quality": "high"}, user=carol)

    with pytest.raises(StalePolicy, match="revision 2, not 1"):
        as_member(acme, {"privacy_mode": "in_region"}, user=carol, expected_revision=1)
    assert TenantPolicy.objects.for_tenant(acme).privacy_mode == "any"


def test_unknown_fields_are_refused(acme):
    with pytest.raises(ValidationError, match="Unknown policy fields: colour"):
        as_member(acme, {"colour": "blue"})


# --- node class thresholds and accelerator pools ---------------------------------------------


def test_cost_ceilings_take_known_grades_and_non_negative_amounts():
    assert clean_cost_ceilings({"large": 1, "tiny": "0.050", "medium": ""}) == {
        "tiny": "0.05",
        "large": "1.00",
    }
    with pytest.raises(ValidationError) as refused:
        clean_cost_ceilings({"huge": "1", "tiny": "-1", "medium": "x"})
    assert set(refused.value.message_dict) == {"huge", "tiny", "medium"}
    assert "not a grade" in refused.value.message_dict["huge"][0]
    with pytest.raises(ValidationError, match="grade → amount"):
        clean_cost_ceilings(["tiny"])


def test_the_model_clean_checks_the_cost_ceilings(nano):
    nano.cost_ceilings = {"tiny": "-0.01"}
    with pytest.raises(ValidationError) as refused:
        nano.full_clean()
    assert refused.value.message_dict["cost_ceilings"] == [
        "tiny: -0.01 is negative; an amount is 0 or more."
    ]


def test_thresholds_of_a_class_are_set_and_audited(nano, alice):
    set_node_class_thresholds(
        nano, thermal_envelope_c="72.5", cost_ceilings={"tiny": "0.02"}, actor=alice
    )

    nano.refresh_from_db()
    assert nano.thermal_envelope_c == Decimal("72.5")
    assert nano.cost_ceilings == {"tiny": "0.02"}
    [change] = FleetSettingChange.objects.all()
    assert (change.kind, change.subject, change.actor) == ("node_class", "nano", alice)
    assert change.summary == "thermal_envelope_c — → 72.5; cost_ceilings.tiny — → 0.02"

    set_node_class_thresholds(
        nano, thermal_envelope_c=Decimal("72.50"), cost_ceilings={"tiny": "0.020"}, actor=alice
    )
    assert FleetSettingChange.objects.count() == 1  # no change, no row


def test_a_pool_takes_only_the_accelerators_of_its_region(
    eu_west, us_east, accelerator, nano, make_node, alice
):
    gpu = make_node("eu-west-accelerator-1", eu_west, accelerator)
    other_gpu = make_node("us-east-accelerator-1", us_east, accelerator)
    small = make_node("eu-west-nano-1", eu_west, nano)

    with pytest.raises(ValidationError) as refused:
        set_accelerator_pool(eu_west, name="Frankfurt", nodes=[gpu, other_gpu, small], actor=alice)
    assert refused.value.message_dict["nodes"] == [
        "eu-west-nano-1 is a nano node; a pool takes accelerator nodes only.",
        "us-east-accelerator-1 is in us-east; the eu-west pool takes eu-west's accelerators only.",
    ]
    assert not AcceleratorPool.objects.exists()

    pool = set_accelerator_pool(eu_west, name="Frankfurt", nodes=[gpu], actor=alice)
    assert list(pool.nodes.all()) == [gpu]
    [change] = FleetSettingChange.objects.all()
    assert change.summary == "name — → Frankfurt; nodes +eu-west-accelerator-1"
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[gpu], actor=alice)
    assert FleetSettingChange.objects.count() == 1


# --- the portal page ---------------------------------------------------------------------------


def test_an_owner_edits_the_policy_in_the_portal(client, acme, carol):
    client.force_login(carol)
    page = client.get(portal_url(acme))
    assert page.status_code == 200
    assert b"Save the policy" in page.content

    policy = TenantPolicy.objects.for_tenant(acme)
    response = client.post(
        portal_url(acme),
        policy_form(
            policy,
            privacy_mode="in_region",
            quality="high",
            max_spend_per_session="0.5",
            sensitive_fields="customer_id, email",
        ),
    )

    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.privacy_mode, policy.quality, policy.max_spend_per_session) == (
        "in_region",
        "high",
        Decimal("0.5"),
    )
    assert policy.sensitive_fields == ["customer_id", "email"]
    [change] = PolicyChange.objects.all()
    assert (change.actor, change.actor_kind) == (carol, "member")

    page = client.get(response["Location"])
    text = page.content.decode()
    assert "Policy saved as revision 2" in text
    assert "0.50 EUR" in text
    assert "privacy_mode any → in_region" in text  # the history


def test_the_portal_shows_the_reasons_of_a_refusal_on_the_fields(client, acme, carol):
    client.force_login(carol)
    policy = TenantPolicy.objects.for_tenant(acme)

    response = client.post(
        portal_url(acme),
        policy_form(
            policy,
            privacy_mode="local_only",
            max_spend_per_session="-3",
            sensitive_fields="ok_name, 9lives",
        ),
    )

    assert response.status_code == 200
    form = response.context["form"]
    assert "A local-only tenant cannot be offloaded" in form.errors["fallback"][0]
    assert "negative" in form.errors["max_spend_per_session"][0]
    assert "“9lives” is not a field name" in form.errors["sensitive_fields"][0]
    text = response.content.decode()
    assert "cannot be offloaded" in text
    assert "is-invalid" in text
    assert TenantPolicy.objects.for_tenant(acme).revision == 1
    assert not PolicyChange.objects.exists()


def test_the_portal_refuses_to_save_over_a_change_made_meanwhile(client, acme, carol):
    client.force_login(carol)
    stale = TenantPolicy.objects.for_tenant(acme)
    as_member(acme, {"quality": "high"}, user=carol)  # someone else, in another tab

    response = client.post(portal_url(acme), policy_form(stale, privacy_mode="in_region"))

    assert response.status_code == 200
    assert "while you were editing it" in response.content.decode()
    assert TenantPolicy.objects.for_tenant(acme).privacy_mode == "any"
    # Saving again applies the values over the current revision.
    again = client.post(portal_url(acme), response.context["form"].data)
    assert again.status_code == 302
    assert TenantPolicy.objects.for_tenant(acme).privacy_mode == "in_region"


def test_a_viewer_reads_the_policy_but_cannot_change_it(client, acme, dave):
    client.force_login(dave)
    page = client.get(portal_url(acme))
    assert page.status_code == 200
    assert b"Save the policy" not in page.content
    assert b"Viewers can read the policy" in page.content

    policy = TenantPolicy.objects.for_tenant(acme)
    response = client.post(portal_url(acme), policy_form(policy, privacy_mode="in_region"))

    assert response.status_code == 403
    assert TenantPolicy.objects.for_tenant(acme).privacy_mode == "any"


def test_another_tenants_member_gets_a_404(client, acme, erin):
    client.force_login(erin)

    assert client.get(portal_url(acme)).status_code == 404
    assert client.post(portal_url(acme), {"privacy_mode": "in_region"}).status_code == 404
    assert not TenantPolicy.objects.filter(tenant=acme).exists()


def test_the_portal_history_is_newest_first_and_names_who(client, acme, carol, alice, acme_key):
    key, _ = acme_key
    as_member(acme, {"quality": "high"}, user=carol)
    update_policy(acme, {"fallback": "reject"}, actor=None, actor_kind="api_key", api_key=key)
    update_policy(acme, {"fail_closed_after_s": 900}, actor=alice, actor_kind="operator")
    client.force_login(carol)

    history = client.get(portal_url(acme)).context["history"]
    rows = [(row.get_cell("revision"), str(row.get_cell("actor"))) for row in history.rows]

    assert [revision for revision, _ in rows] == ["r4", "r3", "r2"]
    assert "the provider" in rows[0][1] and "alice" not in rows[0][1]
    assert key.prefix in rows[1][1] and "policy bot" in rows[1][1]
    assert rows[2][1] == "carol"


# --- the tenant API ----------------------------------------------------------------------------


def test_a_key_reads_its_tenants_policy(client, acme, acme_key):
    response = api(client, "GET", acme_key[1])

    assert response.status_code == 200
    assert response.json() == {
        "tenant": "acme",
        "currency": "EUR",
        "revision": 1,
        "privacy_mode": "any",
        "fallback": "regional",
        "quality": "best_effort",
        "max_spend_per_session": None,
        "sensitive_fields": [],
        "on_budget_exhausted": "alert",
        "fail_closed_after_s": None,
        "rate_limit_per_s": None,
        "residency_zone": "",
        "updated_at": response.json()["updated_at"],
    }
    assert response["ETag"] == '"1"'


def test_the_api_needs_a_key(client, acme):
    assert api(client, "GET", None).status_code == 401
    assert api(client, "PUT", "opk_not-a-key", {"quality": "high"}).status_code == 401


def test_a_put_changes_only_the_fields_it_gives(client, acme, acme_key):
    key, secret = acme_key
    as_member(acme, {"sensitive_fields": ["email"]})

    response = api(client, "PUT", secret, {"quality": "high", "max_spend_per_session": 0.5})

    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["quality"], answer["max_spend_per_session"], answer["revision"]) == (
        "high",
        "0.50",
        3,
    )
    assert answer["sensitive_fields"] == ["email"]  # untouched
    assert response["ETag"] == '"3"'
    change = PolicyChange.objects.first()
    assert (change.actor, change.actor_kind, change.api_key, change.api_key_prefix) == (
        None,
        "api_key",
        key,
        key.prefix,
    )
    assert change.summary == "quality best_effort → high; max_spend_per_session — → 0.50"


def test_null_clears_the_max_spend(client, acme, acme_key):
    as_member(acme, {"max_spend_per_session": "2"})

    response = api(client, "PUT", acme_key[1], {"max_spend_per_session": None})

    assert response.status_code == 200, response.content
    assert response.json()["max_spend_per_session"] is None
    assert PolicyChange.objects.first().summary == "max_spend_per_session 2.00 → —"


def test_a_put_of_what_a_get_answered_changes_nothing(client, acme, acme_key):
    secret = acme_key[1]
    body = api(client, "GET", secret).json()

    response = api(client, "PUT", secret, body)

    assert response.status_code == 200, response.content
    assert response.json()["revision"] == 1
    assert not PolicyChange.objects.exists()


def test_unknown_fields_are_a_400_naming_them(client, acme, acme_key):
    response = api(client, "PUT", acme_key[1], {"quality": "high", "colour": "blue", "mood": 1})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("unknown fields: colour, mood;")
    assert "privacy_mode" in error  # it says what a policy has
    assert TenantPolicy.objects.for_tenant(acme).quality == "best_effort"


def test_bad_values_are_a_400_saying_what_is_wrong(client, acme, acme_key):
    response = api(
        client,
        "PUT",
        acme_key[1],
        {"privacy_mode": "galactic", "max_spend_per_session": "-1", "sensitive_fields": ["a b"]},
    )

    assert response.status_code == 400
    answer = response.json()
    assert answer["error"].startswith("invalid policy: privacy_mode: “galactic” is not a privacy")
    assert set(answer["fields"]) == {"privacy_mode", "max_spend_per_session", "sensitive_fields"}
    assert "negative" in answer["fields"]["max_spend_per_session"][0]
    assert not PolicyChange.objects.exists()


def test_the_api_refuses_local_only_with_the_regional_fallback(client, acme, acme_key):
    response = api(client, "PUT", acme_key[1], {"privacy_mode": "local_only"})

    assert response.status_code == 400
    assert "A local-only tenant cannot be offloaded" in response.json()["fields"]["fallback"][0]

    response = api(client, "PUT", acme_key[1], {"privacy_mode": "local_only", "fallback": "reject"})
    assert response.status_code == 200


def test_a_tenant_key_cannot_set_fail_closed(client, acme, acme_key):
    response = api(client, "PUT", acme_key[1], {"fail_closed_after_s": 120})

    assert response.status_code == 400
    assert response.json()["fields"] == {
        "fail_closed_after_s": ["Only the provider's operators change this."]
    }


def test_a_tenant_key_reads_but_cannot_set_the_rate_limit(client, acme, alice, acme_key):
    update_policy(acme, {"rate_limit_per_s": 50}, actor=alice, actor_kind="operator")

    assert api(client, "GET", acme_key[1]).json()["rate_limit_per_s"] == 50
    response = api(client, "PUT", acme_key[1], {"rate_limit_per_s": 500})
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "rate_limit_per_s": ["Only the provider's operators change this."]
    }
    # Sent back as read, it is no change.
    assert api(client, "PUT", acme_key[1], {"rate_limit_per_s": 50}).status_code == 200


def test_a_key_never_sees_or_changes_another_tenants_policy(
    client, acme, globex, acme_key, globex_secret
):
    as_member(acme, {"privacy_mode": "in_region", "sensitive_fields": ["acme_secret_field"]})

    answer = api(client, "GET", globex_secret).json()
    assert answer["tenant"] == "globex"
    assert answer["privacy_mode"] == "any"
    assert "acme_secret_field" not in str(answer)

    response = api(client, "PUT", globex_secret, {"tenant": "acme", "privacy_mode": "local_only"})
    assert response.status_code == 400
    assert "globex's" in response.json()["error"]
    response = api(client, "PUT", globex_secret, {"quality": "high"})
    assert response.json()["tenant"] == "globex"

    acme_policy = TenantPolicy.objects.for_tenant(acme)
    assert (acme_policy.privacy_mode, acme_policy.quality) == ("in_region", "best_effort")


def test_a_conditional_put_over_a_newer_revision_is_refused(client, acme, acme_key):
    secret = acme_key[1]
    as_member(acme, {"quality": "high"})

    stale_header = api(client, "PUT", secret, {"fallback": "reject"}, **{"If-Match": '"1"'})
    stale_body = api(client, "PUT", secret, {"fallback": "reject", "revision": 1})
    current = api(client, "PUT", secret, {"fallback": "reject"}, **{"If-Match": '"2"'})

    assert stale_header.status_code == 412
    assert "revision 2, not 1" in stale_header.json()["error"]
    assert stale_body.status_code == 409
    assert current.status_code == 200
    assert current.json()["revision"] == 3


def test_a_body_that_is_not_an_object_is_a_400(client, acme, acme_key):
    assert api(client, "PUT", acme_key[1], b"[1, 2]").status_code == 400
    assert api(client, "PUT", acme_key[1], b"{not json").status_code == 400


# --- the operator page -------------------------------------------------------------------------


@pytest.fixture
def fleet(eu_west, us_east, nano, standard, accelerator, make_node):
    return {
        "gpu": make_node("eu-west-accelerator-1", eu_west, accelerator),
        "us_gpu": make_node("us-east-accelerator-1", us_east, accelerator),
        "small": make_node("eu-west-nano-1", eu_west, nano),
    }


def test_the_operator_page_is_for_operators(client, carol):
    client.force_login(carol)
    assert client.get(OPERATOR_PAGE).status_code == 403
    assert client.post(f"{OPERATOR_PAGE}tenants/acme/fail-closed/", {}).status_code == 403


def test_the_operator_page_lists_every_tenants_policy_and_filters_by_privacy(
    operator, acme, globex
):
    nakamura = Tenant.objects.create(slug="nakamura", name="Nakamura", currency="JPY")
    as_member(
        nakamura, {"privacy_mode": "local_only", "fallback": "reject", "max_spend_per_session": 80}
    )

    page = operator.get(OPERATOR_PAGE)
    assert page.status_code == 200
    slugs = [row.record.tenant.slug for row in page.context["table"].rows]
    assert slugs == ["acme", "globex", "nakamura"]
    assert "80.00 JPY" in page.content.decode()

    filtered = operator.get(OPERATOR_PAGE, {"privacy_mode": "local_only"})
    assert [row.record.tenant.slug for row in filtered.context["table"].rows] == ["nakamura"]


def test_an_operator_sets_fail_closed_for_a_tenant(operator, alice, acme):
    response = operator.post(
        f"{OPERATOR_PAGE}tenants/acme/fail-closed/", {"fail_closed_after_s": "900"}
    )

    assert response.status_code == 302
    policy = TenantPolicy.objects.for_tenant(acme)
    assert policy.fail_closed_after_s == 900
    [change] = PolicyChange.objects.all()
    assert (change.actor, change.actor_kind) == (alice, "operator")
    assert change.summary == "fail_closed_after_s — → 900"

    refused = operator.post(
        f"{OPERATOR_PAGE}tenants/acme/fail-closed/", {"fail_closed_after_s": "5"}
    )
    assert refused.status_code == 200
    assert "At least 60 seconds" in refused.content.decode()
    assert TenantPolicy.objects.for_tenant(acme).fail_closed_after_s == 900

    cleared = operator.post(
        f"{OPERATOR_PAGE}tenants/acme/fail-closed/", {"fail_closed_after_s": ""}
    )
    assert cleared.status_code == 302
    assert TenantPolicy.objects.for_tenant(acme).fail_closed_after_s is None


def test_an_operator_sets_a_rate_limit_for_a_tenant(operator, alice, acme):
    url = f"{OPERATOR_PAGE}tenants/acme/rate-limit/"
    page = operator.get(OPERATOR_PAGE).content.decode()
    assert f'action="{url}"' in page

    response = operator.post(url, {"rate_limit_per_s": "50"}, follow=True)

    assert "acme: each node now admits at most 50 of its requests per second" in (
        response.content.decode()
    )
    assert TenantPolicy.objects.for_tenant(acme).rate_limit_per_s == 50
    [change] = PolicyChange.objects.all()
    assert (change.actor, change.actor_kind, change.summary) == (
        alice,
        "operator",
        "rate_limit_per_s — → 50",
    )

    refused = operator.post(url, {"rate_limit_per_s": "0"})
    assert refused.status_code == 200
    assert "At least 1 request per second" in refused.content.decode()
    assert TenantPolicy.objects.for_tenant(acme).rate_limit_per_s == 50

    cleared = operator.post(url, {"rate_limit_per_s": ""})
    assert cleared.status_code == 302
    assert TenantPolicy.objects.for_tenant(acme).rate_limit_per_s is None


def test_members_see_the_rate_limit_in_their_portal_but_cannot_post_it(client, acme, carol, alice):
    update_policy(acme, {"rate_limit_per_s": 50}, actor=alice, actor_kind="operator")
    client.force_login(carol)

    page = client.get(portal_url(acme)).content.decode()

    assert "50 requests per second on each node" in page
    assert client.post(f"{OPERATOR_PAGE}tenants/acme/rate-limit/", {}).status_code == 403


def test_an_operator_sets_a_class_thermal_envelope_and_cost_ceilings(operator, alice, fleet):
    url = f"{OPERATOR_PAGE}node-classes/accelerator/"
    response = operator.post(
        url,
        {
            "class-accelerator-thermal_envelope_c": "85",
            "class-accelerator-ceiling_tiny": "0.04",
            "class-accelerator-ceiling_medium": "",
            "class-accelerator-ceiling_large": "1.5",
        },
    )

    assert response.status_code == 302
    accelerator = NodeClass.objects.get(name="accelerator")
    assert accelerator.thermal_envelope_c == Decimal("85")
    assert accelerator.cost_ceilings == {"tiny": "0.04", "large": "1.50"}
    assert FleetSettingChange.objects.get().actor == alice

    refused = operator.post(
        url,
        {
            "class-accelerator-thermal_envelope_c": "500",
            "class-accelerator-ceiling_tiny": "-1",
            "class-accelerator-ceiling_medium": "cheap",
            "class-accelerator-ceiling_large": "",
        },
    )
    assert refused.status_code == 200
    [form] = [f for f in refused.context["class_forms"] if f.node_class.name == "accelerator"]
    assert "outside 20–130 °C" in form.errors["thermal_envelope_c"][0]
    assert "negative" in form.errors["ceiling_tiny"][0]
    assert "not an amount" in form.errors["ceiling_medium"][0]
    accelerator.refresh_from_db()
    assert accelerator.cost_ceilings == {"tiny": "0.04", "large": "1.50"}


def test_an_operator_sets_a_regions_accelerator_pool(operator, alice, fleet, eu_west):
    url = f"{OPERATOR_PAGE}pools/eu-west/"
    page = operator.get(OPERATOR_PAGE)
    [eu] = [row for row in page.context["pools"] if row["region"] == eu_west]
    # Only the region's accelerators are offered.
    assert [uid for uid, _ in eu["form"].fields["nodes"].widget.choices] == [fleet["gpu"].uid]

    response = operator.post(
        url, {"pool-eu-west-name": "Frankfurt GPUs", "pool-eu-west-nodes": [fleet["gpu"].uid]}
    )

    assert response.status_code == 302
    pool = AcceleratorPool.objects.get(region=eu_west)
    assert (pool.name, list(pool.nodes.all())) == ("Frankfurt GPUs", [fleet["gpu"]])
    assert FleetSettingChange.objects.get().subject == "eu-west"


@pytest.mark.parametrize(
    ("intruder", "reason"),
    [
        ("us_gpu", "us-east-accelerator-1 is in us-east; the eu-west pool takes eu-west's"),
        ("small", "eu-west-nano-1 is a nano node; a pool takes accelerator nodes only"),
    ],
)
def test_a_pool_refuses_a_node_that_is_not_an_accelerator_of_its_region(
    operator, fleet, eu_west, intruder, reason
):
    response = operator.post(
        f"{OPERATOR_PAGE}pools/eu-west/",
        {
            "pool-eu-west-name": "Frankfurt",
            "pool-eu-west-nodes": [fleet["gpu"].uid, fleet[intruder].uid],
        },
    )

    assert response.status_code == 200
    assert reason in html.unescape(response.content.decode())
    assert not AcceleratorPool.objects.exists()


def test_the_operator_page_costs_the_same_queries_however_many_tenants(operator, fleet, eu_west):
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[fleet["gpu"]], actor=None)

    def queries_with(count: int) -> int:
        for i in range(count):
            tenant = Tenant.objects.create(slug=f"t{Tenant.objects.count():03d}", name=f"T{i}")
            as_member(tenant, {"quality": "high", "sensitive_fields": ["a", "b"]})
        operator.get(OPERATOR_PAGE)  # gives tenants without a policy theirs
        with CaptureQueriesContext(connection) as queries:
            assert operator.get(OPERATOR_PAGE).status_code == 200
        return len(queries)

    assert queries_with(2) == queries_with(20)


# --- the demo ------------------------------------------------------------------------------------


def test_the_demo_seed_gives_policies_thresholds_and_pools_once(tmp_path, settings):
    from console.demo.seed import seed

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    dirs = {"state_root": tmp_path / "nodes", "token_root": tmp_path / "tokens"}
    seed(**dirs)

    policies = {p.tenant.slug: p for p in TenantPolicy.objects.select_related("tenant")}
    assert (policies["acme"].privacy_mode, policies["acme"].quality) == ("in_region", "high")
    assert policies["globex"].privacy_mode == "any"
    nakamura = policies["nakamura"]
    assert (nakamura.privacy_mode, nakamura.fallback, nakamura.sensitive_fields) == (
        "local_only",
        "reject",
        ["customer_id"],
    )
    assert nakamura.max_spend_per_session == Decimal("80")
    envelopes = dict(NodeClass.objects.values_list("name", "thermal_envelope_c"))
    assert envelopes == {
        "nano": Decimal("70"),
        "standard": Decimal("80"),
        "accelerator": Decimal("85"),
    }
    assert NodeClass.objects.get(name="accelerator").cost_ceilings["large"] == "1.50"
    assert sorted(AcceleratorPool.objects.values_list("region__code", flat=True)) == [
        "eu-west",
        "us-east",
    ]
    writes = (PolicyChange.objects.count(), FleetSettingChange.objects.count())

    second = seed(**dirs)

    assert second.changes == []
    assert (PolicyChange.objects.count(), FleetSettingChange.objects.count()) == writes


def test_the_seeded_pool_takes_the_accelerator_once_it_has_enrolled(tmp_path, settings, make_node):
    from console.demo.seed import SeedReport, seed, seed_accelerator_pools
    from fleet.models import Region

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    seed(state_root=tmp_path / "nodes", token_root=tmp_path / "tokens")
    eu_west = Region.objects.get(code="eu-west")
    gpu = make_node("eu-west-accelerator-9", eu_west, NodeClass.objects.get(name="accelerator"))

    report = SeedReport()
    seed_accelerator_pools(report)

    assert list(AcceleratorPool.objects.get(region=eu_west).nodes.all()) == [gpu]
    assert report.changes == ["accelerator pool of eu-west: eu-west-accelerator-9"]
