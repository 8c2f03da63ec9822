"""The policy plane in the console: compile from the database, sign, store, diff, and hand the
newest bundle to nodes (heartbeat answer, fetch with ETag/304), and the decisions they report."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.api import issue_tenant_token
from billing.models import ApiKey, IssuedToken, Price, Tenant
from billing.signing import console_private_key
from console.celery import app as celery_app
from fleet.models import (
    AcceleratorPool,
    BundleCompileFailure,
    DecisionLog,
    Node,
    PolicyBundleRecord,
)
from fleet.policies import set_accelerator_pool, set_node_class_thresholds, update_policy
from fleet.policy_plane import gather_inputs, publish_bundle, revision_states
from inference import protocol
from tests.fleet.test_heartbeat import beat

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex", currency="USD")


@pytest.fixture
def fra_pool(make_node, eu_west, accelerator):
    gpu = make_node("fra-gpu-1", eu_west, accelerator)
    set_accelerator_pool(eu_west, name="Frankfurt accelerators", nodes=[gpu], actor=None)
    return gpu


def verified(record):
    return protocol.verify_bundle(
        record.signed_bundle, console_private_key().public_key(), now=record.issued_at
    )


def test_the_first_bundle_carries_every_tenant_pool_price_and_threshold_signed(
    acme, globex, fra_pool, nano, accelerator
):
    update_policy(
        acme,
        {"privacy_mode": "in_region", "max_spend_per_session": "0.50"},
        actor=None,
        actor_kind="operator",
    )
    set_node_class_thresholds(
        nano, thermal_envelope_c="75", cost_ceilings={"tiny": "0.02"}, actor=None
    )
    Price.objects.create(
        grade="tiny", serving="local", per_1000=Decimal("0.40"), effective_from=NOW
    )
    Price.objects.create(
        grade="tiny", serving="regional", per_1000=Decimal("0.90"), effective_from=NOW
    )

    record = publish_bundle(["test"], now=NOW + timedelta(minutes=1))

    assert record.revision == 1
    assert record.changes == ["first bundle"]
    # The caller's reason, then the changes it includes, each as its signal recorded it.
    assert record.reasons[0] == "test"
    assert {"tenant acme added", "policy of acme changed", "thresholds of nano changed"} <= set(
        record.reasons
    )
    bundle = verified(record)
    tenants = {t.slug: t for t in bundle.tenants}
    assert tenants["acme"].privacy == "in_region"
    assert tenants["acme"].max_spend_per_session == "0.50"
    assert tenants["globex"].currency == "USD"  # no policy row yet: the defaults
    assert tenants["globex"].privacy == "any"
    assert [(p.region, [n.uid for n in p.nodes]) for p in bundle.pools] == [
        ("eu-west", [fra_pool.uid])
    ]
    assert {(p.grade, p.serving, p.per_1000) for p in bundle.prices} == {
        ("tiny", "local", "0.4"),
        ("tiny", "regional", "0.9"),
    }
    thresholds = {t.node_class: t for t in bundle.thresholds}
    assert thresholds["nano"].thermal_envelope_c == 75.0
    assert thresholds["nano"].cost_ceilings == {"tiny": "0.02"}
    assert Decimal(thresholds["nano"].hourly_cost) == nano.hourly_cost.quantize(Decimal("0.000001"))
    assert bundle.trusted_keys == [protocol.public_key_to_b64(console_private_key().public_key())]
    assert bundle.expires_at - bundle.issued_at == timedelta(hours=24)


def test_nothing_is_signed_when_nothing_changed(acme):
    first = publish_bundle(["first"], now=NOW)
    assert first is not None
    assert publish_bundle(["periodic check"], now=NOW + timedelta(minutes=5)) is None
    assert PolicyBundleRecord.objects.count() == 1


def test_a_policy_change_is_the_next_revision_with_its_reason_and_diff(acme):
    publish_bundle(["first"], now=NOW)
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")

    record = publish_bundle(["policy of acme changed"], now=NOW + timedelta(seconds=5))

    assert record.revision == 2
    assert record.reasons == ["policy of acme changed"]
    assert record.changes == ["tenant acme: quality best_effort → high"]


def test_a_bundle_half_way_to_its_expiry_is_reissued_under_a_new_revision(acme, settings):
    settings.OUTPOST_BUNDLE_TTL_S = 3600
    publish_bundle(["first"], now=NOW)
    assert publish_bundle(["periodic check"], now=NOW + timedelta(minutes=29)) is None

    record = publish_bundle(["periodic check"], now=NOW + timedelta(minutes=31))

    assert record.revision == 2
    assert record.reasons == ["reissued before expiry"]
    assert record.changes == ["no change in policy"]
    assert record.expires_at == NOW + timedelta(minutes=91)


def test_a_compile_that_would_break_a_rule_signs_nothing_and_says_why(
    acme, eu_west, us_east, make_node, accelerator
):
    publish_bundle(["first"], now=NOW)
    # Written around the validation of set_accelerator_pool: the compiler must catch it too.
    stray = make_node("iad-gpu-1", us_east, accelerator)
    AcceleratorPool.objects.create(region=eu_west, name="Frankfurt").nodes.add(stray)

    assert publish_bundle(["pool changed"], now=NOW + timedelta(seconds=5)) is None

    failure = BundleCompileFailure.objects.get()
    assert failure.reasons == ["pool changed", "accelerator pool of eu-west changed"]
    assert failure.problems == [f"the pool of eu-west lists node {stray.uid} of region us-east"]
    assert PolicyBundleRecord.objects.latest_revision() == 1


def test_revoking_an_api_key_lists_its_live_tokens_until_they_expire(acme):
    key, _ = ApiKey.issue(acme, "ci")
    token = issue_tenant_token(acme, 600, api_key=key)
    other = issue_tenant_token(acme, 600)  # issued to a person, not with this key
    claims = {t.token_id for t in IssuedToken.objects.all()}
    assert len(claims) == 2

    key.revoke()

    revoked = set(gather_inputs().revoked_tokens)
    assert revoked == {IssuedToken.objects.get(api_key=key).token_id}
    assert token.tenant == other.tenant == "acme"
    later = timezone.now() + timedelta(minutes=11)
    assert list(gather_inputs(later).revoked_tokens) == []


def test_model_grades_travel_by_served_name(acme, db):
    from fleet.models import Model, ModelVersion

    catalogue = Model.objects.create(name="churn")
    own = Model.objects.create(name="churn", owner=acme)
    for model, grades in ((catalogue, ["tiny", "medium"]), (own, ["large"])):
        for number, grade in enumerate(grades, start=1):
            ModelVersion.objects.create(
                model=model,
                version=number,
                sha256=f"{number:02d}{model.pk:02d}".ljust(64, "0"),
                size_bytes=1,
                opset=17,
                status="graded",
                grade=grade,
            )

    grades = {m.name: m.grade for m in gather_inputs().models}

    assert grades == {"churn": "medium", "acme.churn": "large"}


# --- what nodes see -----------------------------------------------------------------------


@pytest.fixture
def edge(make_node, eu_west, nano):
    return make_node("fra-nano-1", eu_west, nano)


def fetch(client, node, etag=None):
    headers = {"Authorization": f"Bearer {node.credential}"}
    if etag:
        headers["If-None-Match"] = etag
    return client.get("/api/v1/nodes/bundle", headers=headers)


def test_a_node_fetches_the_newest_bundle_and_gets_304_while_it_is_current(client, edge, acme):
    assert fetch(client, edge).status_code == 404
    record = publish_bundle(["first"])

    response = fetch(client, edge)

    assert response.status_code == 200
    assert response["ETag"] == '"1"'
    assert response.content.decode() == record.signed
    assert fetch(client, edge, '"1"').status_code == 304
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    publish_bundle(["changed"])
    changed = fetch(client, edge, '"1"')
    assert changed.status_code == 200
    assert changed["ETag"] == '"2"'


def test_only_a_node_may_fetch_the_bundle(client, acme):
    publish_bundle(["first"])
    assert client.get("/api/v1/nodes/bundle").status_code == 401
    wrong = {"Authorization": "Bearer opn_not-a-node"}
    assert client.get("/api/v1/nodes/bundle", headers=wrong).status_code == 401


def test_the_heartbeat_answer_names_the_newest_revision_and_any_simulated_heat(client, edge, acme):
    assert beat(client, edge).json()["desired_bundle_revision"] is None
    publish_bundle(["first"])
    Node.objects.filter(pk=edge.pk).update(simulated_temperature_c=88.0)

    answer = beat(client, edge, bundle_revision=None).json()

    assert answer["desired_bundle_revision"] == 1
    assert answer["simulated_temperature_c"] == 88.0


def test_a_node_reports_what_it_enforces_and_why_it_refused_a_bundle(client, edge, acme):
    publish_bundle(["first"])
    beat(
        client,
        edge,
        bundle_revision=1,
        bundle_problem="bundle 2 expired at 2026-11-27T09:00:00+00:00",
        temperature_c=91.0,
        temperature_simulated=True,
    )
    edge.refresh_from_db()
    assert edge.bundle_revision == 1
    assert edge.bundle_problem.startswith("bundle 2 expired")
    assert edge.temperature_simulated is True


def decision(request_id, **fields):
    record = {
        "request_id": request_id,
        "at": "2026-11-28T09:00:00.123456+00:00",
        "tenant": "acme",
        "model": "churn",
        "action": "offload",
        "rule": "thermal",
        "reason": "thermal",
        "status": 200,
        "served_by": "regional",
        "target": "nd-gpu",
        "bundle_revision": 3,
        "price": "0.0009",
        "currency": "EUR",
        "temperature_c": 83.5,
        "queue_depth": 0,
    }
    record.update(fields)
    return record


def test_decisions_ride_on_heartbeats_and_a_retried_heartbeat_stores_them_once(client, edge):
    records = [decision("req-1"), decision("req-2", action="refuse", rule="privacy", status=403)]
    assert beat(client, edge, decisions=records).status_code == 200
    assert beat(client, edge, decisions=records).status_code == 200

    assert DecisionLog.objects.count() == 2
    logged = DecisionLog.objects.for_request("req-1").get()
    assert (logged.node, logged.rule, logged.bundle_revision) == (edge, "thermal", 3)
    assert logged.price == Decimal("0.0009")


def test_a_heartbeat_with_a_malformed_decision_is_refused_whole(client, edge):
    response = beat(client, edge, decisions=[decision("req-1", action="teleport")])
    assert response.status_code == 400
    assert "action" in response.json()["error"]
    assert DecisionLog.objects.count() == 0


def test_nodes_behind_the_newest_revision_are_stale_after_two_heartbeats(
    edge, make_node, eu_west, nano, acme, settings
):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 5
    other = make_node("fra-nano-2", eu_west, nano)
    record = publish_bundle(["first"], now=NOW)
    Node.objects.filter(pk=edge.pk).update(bundle_revision=1)
    nodes = list(Node.objects.order_by("name"))

    soon = revision_states(nodes, record.revision, now=NOW + timedelta(seconds=3))
    later = revision_states(nodes, record.revision, now=NOW + timedelta(seconds=30))

    assert [(r["node"], r["current"], r["stale"]) for r in soon] == [
        (edge, True, False),
        (other, False, True),  # it never reported a revision
    ]
    Node.objects.filter(pk=other.pk).update(bundle_revision=0)
    nodes = list(Node.objects.order_by("name"))
    soon = revision_states(nodes, record.revision, now=NOW + timedelta(seconds=3))
    assert [r["stale"] for r in soon] == [False, False]  # behind, within the grace
    later = revision_states(nodes, record.revision, now=NOW + timedelta(seconds=30))
    assert [r["stale"] for r in later] == [False, True]


# --- signals: a committed change publishes at once --------------------------------------------


@pytest.fixture
def eager_tasks():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_a_committed_policy_change_publishes_a_new_revision(
    acme, fra_pool, eager_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        publish_bundle(["first"])
    with django_capture_on_commit_callbacks(execute=True):
        update_policy(
            acme,
            {"privacy_mode": "local_only", "fallback": "reject"},
            actor=None,
            actor_kind="operator",
        )

    latest = PolicyBundleRecord.objects.order_by("-revision").first()
    assert latest.revision == 2
    assert latest.reasons == ["policy of acme changed"]
    assert latest.changes == [
        "tenant acme: fallback regional → reject; privacy any → local_only",
        "route acme from eu-west removed",
    ]


def test_a_speed_factor_calibration_does_not_publish(
    nano, eager_tasks, django_capture_on_commit_callbacks, acme
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        nano.speed_factor = 2.0
        nano.save(update_fields=["speed_factor"])
    assert callbacks == []


def test_a_pool_falls_back_to_another_regions_pool_as_far_as_each_tenant_may_go(
    eu_west, us_east, make_node, accelerator, acme
):
    from billing.models import Tenant
    from fleet.models import Region

    eu_north = Region.objects.create(
        code="eu-north", name="Stockholm", jurisdiction="SE", residency_zone="EU"
    )
    sto = make_node("sto-gpu-1", eu_north, accelerator)
    iad = make_node("iad-gpu-1", us_east, accelerator)
    set_accelerator_pool(eu_north, name="Stockholm", nodes=[sto], fallback=us_east, actor=None)
    set_accelerator_pool(us_east, name="Virginia", nodes=[iad], actor=None)
    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[], fallback=eu_north, actor=None)
    european = Tenant.objects.create(slug="european", name="European")
    update_policy(european, {"privacy_mode": "in_region"}, actor=None, actor_kind="operator")

    bundle = verified(publish_bundle(["fallbacks"]))

    routes = {(r.tenant, r.region): r.pools for r in bundle.routes}
    # eu-west's own pool is empty: acme goes on to eu-north, then us-east.
    assert routes[("acme", "eu-west")] == ["eu-north", "us-east"]
    assert ("european", "eu-west") not in routes  # in_region: nowhere to go
    assert routes[("european", "eu-north")] == ["eu-north"]


def test_a_fallback_that_would_close_a_cycle_is_refused_at_the_form(eu_west, us_east, operator):
    from django.core.exceptions import ValidationError

    set_accelerator_pool(eu_west, name="Frankfurt", nodes=[], fallback=us_east, actor=None)
    with pytest.raises(ValidationError) as refused:
        set_accelerator_pool(us_east, name="Virginia", nodes=[], fallback=eu_west, actor=None)
    assert refused.value.message_dict == {
        "fallback": ["That makes a fallback cycle: us-east → eu-west → us-east."]
    }
    with pytest.raises(ValidationError, match="cannot fall back to itself"):
        set_accelerator_pool(us_east, name="Virginia", nodes=[], fallback=us_east, actor=None)

    page = operator.post(
        "/fleet/policies/pools/us-east/",
        {"pool-us-east-name": "Virginia", "pool-us-east-fallback": "eu-west"},
    )
    assert page.status_code == 200
    assert "That makes a fallback cycle: us-east → eu-west → us-east." in page.content.decode()


def test_a_cycle_written_around_the_form_is_refused_by_the_compiler(eu_west, us_east, acme):
    from fleet.models import AcceleratorPool

    AcceleratorPool.objects.create(region=eu_west, name="Frankfurt", fallback=us_east)
    AcceleratorPool.objects.create(region=us_east, name="Virginia", fallback=eu_west)

    assert publish_bundle(["cycle"]) is None
    problems = BundleCompileFailure.objects.get().problems
    assert "fallback cycle: eu-west → us-east → eu-west" in problems


def test_a_revision_says_which_changes_it_includes_whoever_compiled_it(acme, globex):
    publish_bundle(["first"])
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    update_policy(globex, {"privacy_mode": "in_region"}, actor=None, actor_kind="operator")

    # Beat's compile picks both up: its own reason says nothing then.
    record = publish_bundle(["periodic check"])

    assert record.reasons == ["policy of acme changed", "policy of globex changed"]
    assert publish_bundle(["periodic check"]) is None  # answered: nothing left to say
    from fleet.models import BundleRequest

    assert not BundleRequest.objects.exists()
