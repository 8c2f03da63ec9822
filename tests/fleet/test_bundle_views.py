"""The policy plane's pages: the bundles page (newest revision, refused compiles, what each node
enforces, publish now, history), a revision's page, and the decision lookup."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import Price, Tenant
from fleet.models import BundleCompileFailure, DecisionLog, PolicyBundleRecord
from fleet.policies import set_accelerator_pool, set_node_class_thresholds, update_policy
from fleet.policy_plane import publish_bundle

pytestmark = pytest.mark.django_db

# Prices in effect since then (bundles are published at the real "now" here: the bundles page
# judges nodes against the clock).
SINCE = timezone.now() - timedelta(days=1)

BUNDLES = "/fleet/bundles/"
DECISIONS = "/fleet/decisions/"

# The bundles page, whatever the number of nodes and revisions: session, user, groups (the
# nav), the newest revision, the newest refused compile, the nodes (region and class joined),
# when the newest revision was published (revision_states), and the history's count and page.
BUNDLES_QUERIES = 9
# Its poll (htmx) leaves the history out.
BUNDLES_POLL_QUERIES = 7
# The decision lookup: session, user, groups, the node choices of the filter form, the
# paginator's count, and the page of decisions with their node joined in.
DECISIONS_QUERIES = 6


def text(response) -> str:
    """The page's visible words, tags dropped and spaces collapsed."""
    words = re.sub(r"<[^>]+>", " ", response.content.decode())
    return " ".join(html.unescape(words).split())


@pytest.fixture
def fra_gpu(make_node, eu_west, accelerator):
    gpu = make_node("fra-gpu-1", eu_west, accelerator)
    set_accelerator_pool(eu_west, name="Frankfurt accelerators", nodes=[gpu], actor=None)
    return gpu


@pytest.fixture
def two_revisions(acme, fra_gpu, nano):
    """r1 with acme's defaults; r2, published a minute ago, after acme asked for quality."""
    Price.objects.create(
        grade="tiny", serving="local", per_1000=Decimal("0.40"), effective_from=SINCE
    )
    set_node_class_thresholds(nano, thermal_envelope_c="75", cost_ceilings={}, actor=None)
    first = publish_bundle(["first"], now=timezone.now() - timedelta(minutes=10))
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    second = publish_bundle(["policy of acme changed"], now=timezone.now() - timedelta(minutes=1))
    return first, second


# --- the bundles page ----------------------------------------------------------------------


def test_the_nav_links_operators_to_the_bundles_also_from_the_decisions(operator, db):
    bundles = operator.get(BUNDLES).content.decode()
    decisions = operator.get(DECISIONS).content.decode()

    assert '<a class="nav-link active" href="/fleet/bundles/">Bundles</a>' in bundles
    assert '<a class="nav-link active" href="/fleet/bundles/">Bundles</a>' in decisions
    fleet = operator.get("/fleet/").content.decode()
    assert '<a class="nav-link" href="/fleet/bundles/">Bundles</a>' in fleet


def test_the_page_shows_the_newest_revision_why_and_what_changed(operator, two_revisions):
    response = operator.get(BUNDLES)

    assert response.status_code == 200
    page = text(response)
    assert "Newest revision r2" in page
    assert "policy of acme changed" in page
    assert "tenant acme: quality best_effort → high" in page
    newest = response.context["newest"]
    assert (newest.revision, newest.key_id) == (2, two_revisions[1].key_id)


def test_each_node_shows_the_revision_it_enforces(
    operator, two_revisions, make_node, eu_west, nano
):
    make_node("fra-1", eu_west, nano, bundle_revision=2)
    make_node("fra-2", eu_west, nano, bundle_revision=1)
    make_node(
        "fra-3",
        eu_west,
        nano,
        bundle_revision=1,
        bundle_problem="bundle 2 expired at 2026-11-27T09:00:00+00:00",
    )
    make_node("fra-4", eu_west, nano)  # never reported one

    response = operator.get(BUNDLES)

    states = {row["node"].name: row for row in response.context["node_table"].data}
    assert states["fra-1"]["current"] and not states["fra-1"]["stale"]
    # r2 was published a minute ago: two heartbeats later, a node still on r1 is stale.
    assert states["fra-2"]["stale"]
    assert states["fra-3"]["stale"]
    assert states["fra-4"]["stale"]
    body = response.content.decode()
    assert 'data-node="fra-1" data-revision-state="current"' in body
    assert 'data-node="fra-2" data-revision-state="stale"' in body
    assert "bundle 2 expired at 2026-11-27T09:00:00+00:00" in body
    # The nodes that need a look come first.
    names = [row["node"].name for row in response.context["node_table"].data]
    assert names.index("fra-1") > names.index("fra-2")
    assert "1 current" in text(response) and "4 stale" in text(response)


def test_a_node_is_only_behind_while_the_newest_revision_is_seconds_old(
    operator, acme, make_node, eu_west, nano
):
    publish_bundle(["first"], now=timezone.now() - timedelta(minutes=10))
    update_policy(acme, {"quality": "high"}, actor=None, actor_kind="operator")
    publish_bundle(["policy of acme changed"])
    make_node("fra-1", eu_west, nano, bundle_revision=1)

    response = operator.get(BUNDLES)

    assert 'data-node="fra-1" data-revision-state="behind"' in response.content.decode()


def test_a_compile_refused_after_the_newest_bundle_is_shown_with_its_problems(
    operator, two_revisions
):
    BundleCompileFailure.objects.create(
        at=timezone.now(),
        reasons=["pool changed"],
        problems=["the pool of eu-west lists node nd-x of region us-east"],
    )

    page = text(operator.get(BUNDLES))

    assert "The last compile was refused: nodes keep revision 2" in page
    assert "after “pool changed”" in page
    assert "The pool of eu-west lists node nd-x of region us-east." in page


def test_a_refusal_older_than_the_newest_bundle_is_history(operator, two_revisions):
    BundleCompileFailure.objects.create(
        at=two_revisions[1].created_at - timedelta(seconds=30),
        reasons=["pool changed"],
        problems=["the pool of eu-west lists node nd-x of region us-east"],
    )

    response = operator.get(BUNDLES)

    assert response.context["failure"] is None
    assert "compile was refused" not in text(response)


def test_with_no_bundle_yet_the_page_says_so(operator, make_node, eu_west, nano):
    make_node("fra-1", eu_west, nano)

    page = text(operator.get(BUNDLES))

    assert "No bundle has been published yet" in page
    assert "no bundle yet" in page


def test_publish_now_signs_the_next_revision_when_the_policy_changed(
    operator, alice, two_revisions, acme
):
    update_policy(acme, {"privacy_mode": "in_region"}, actor=None, actor_kind="operator")

    response = operator.post(f"{BUNDLES}publish/", follow=True)

    assert "Revision 3 published" in text(response)
    record = PolicyBundleRecord.objects.get(revision=3)
    assert record.reasons == ["published by alice", "policy of acme changed"]
    assert "tenant acme: privacy any → in_region" in record.changes


def test_publish_now_says_when_nothing_changed(operator, two_revisions):
    response = operator.post(f"{BUNDLES}publish/", follow=True)

    assert "Nothing changed since revision 2" in text(response)
    assert PolicyBundleRecord.objects.latest_revision() == 2


def test_publish_now_shows_the_compilers_refusal(
    operator, two_revisions, eu_west, us_east, make_node, accelerator
):
    # Around set_accelerator_pool's validation: the compiler refuses a pool out of its region.
    stray = make_node("iad-gpu-1", us_east, accelerator)
    eu_west.accelerator_pool.nodes.add(stray)

    page = text(operator.post(f"{BUNDLES}publish/", follow=True))

    assert "The compiler refused to publish, and nodes keep revision 2" in page
    assert f"the pool of eu-west lists node {stray.uid} of region us-east" in page
    assert PolicyBundleRecord.objects.latest_revision() == 2


def test_publishing_takes_a_post_from_an_operator(client, operator, two_revisions, carol):
    assert operator.get(f"{BUNDLES}publish/").status_code == 405
    client.force_login(carol)
    assert client.post(f"{BUNDLES}publish/").status_code == 403


def test_the_node_table_refreshes_itself_with_htmx(
    operator, two_revisions, make_node, eu_west, nano
):
    make_node("fra-1", eu_west, nano, bundle_revision=2)

    page = operator.get(BUNDLES).content.decode()
    poll = operator.get(BUNDLES, HTTP_HX_REQUEST="true")

    assert 'id="bundles-live"' in page and 'hx-trigger="every 5s' in page
    assert "<html" not in poll.content.decode()
    assert 'data-node="fra-1"' in poll.content.decode()
    assert "history" not in poll.context


def test_the_history_lists_every_revision_newest_first_by_pages(operator, acme):
    for number in range(30):
        update_policy(acme, {"fail_closed_after_s": 60 + number}, actor=None, actor_kind="operator")
        publish_bundle([f"change {number}"])

    first = operator.get(BUNDLES)
    second = operator.get(BUNDLES, {"history-page": 2})

    assert [r.revision for r in first.context["history"].page.object_list.data][:3] == [30, 29, 28]
    assert len(second.context["history"].page.object_list) == 5


@pytest.mark.parametrize("size", [3, 30])
def test_the_page_costs_the_same_queries_however_many_nodes_and_revisions(
    operator, acme, make_node, eu_west, nano, size
):
    for number in range(size):
        make_node(f"node-{number:02d}", eu_west, nano, bundle_revision=number)
        update_policy(acme, {"fail_closed_after_s": 60 + number}, actor=None, actor_kind="operator")
        publish_bundle([f"change {number}"])

    with CaptureQueriesContext(connection) as page:
        operator.get(BUNDLES)
    with CaptureQueriesContext(connection) as poll:
        operator.get(BUNDLES, HTTP_HX_REQUEST="true")

    assert len(page) == BUNDLES_QUERIES
    assert len(poll) == BUNDLES_POLL_QUERIES


# --- a revision's page -------------------------------------------------------------------------


@pytest.fixture
def detailed(acme, fra_gpu, nano, standard):
    """One revision with something in every section of the bundle."""
    Tenant.objects.create(slug="globex", name="Globex", currency="USD")
    update_policy(
        acme,
        {
            "privacy_mode": "in_region",
            "max_spend_per_session": "0.50",
            "sensitive_fields": ["email"],
            "fail_closed_after_s": 900,
            "rate_limit_per_s": 50,
        },
        actor=None,
        actor_kind="operator",
    )
    Price.objects.create(
        grade="tiny", serving="regional", per_1000=Decimal("0.90"), effective_from=SINCE
    )
    set_node_class_thresholds(
        nano, thermal_envelope_c="75", cost_ceilings={"tiny": "0.02"}, actor=None
    )
    return publish_bundle(["first"])


def test_a_revision_page_shows_the_bundle_readably(operator, detailed, fra_gpu):
    response = operator.get(f"{BUNDLES}1/")

    assert response.status_code == 200
    page = text(response)
    assert "Policy bundle revision 1 newest" in page
    assert "first bundle" in page
    acme_row = re.search(r'<tr data-tenant="acme">.*?</tr>', response.content.decode(), re.S)[0]
    assert "in_region" in acme_row and "0.50 EUR" in acme_row and "email" in acme_row
    assert "900 s" in acme_row and "50/s" in acme_row
    assert "eu-west → eu-west" in acme_row
    assert 'data-tenant="globex"' in response.content.decode()
    assert f'href="/fleet/nodes/{fra_gpu.uid}/">fra-gpu-1</a>' in response.content.decode()
    assert "0.9 EUR" in page  # regional tiny, per 1,000
    assert "75 °C" in page and "tiny 0.02" in page
    assert "0 revoked tokens listed" in page
    assert detailed.key_id in page and "signed this revision" in page
    assert '"revision": 1' in response.context["signed_json"]
    assert "<details" in response.content.decode()


def test_a_revision_says_what_changed_from_the_previous_one_and_links_to_it(
    operator, two_revisions
):
    response = operator.get(f"{BUNDLES}2/")

    page = text(response)
    assert "policy of acme changed" in page
    assert "tenant acme: quality best_effort → high" in page
    assert 'href="/fleet/bundles/1/"' in response.content.decode()
    assert "newest" in page


def test_against_compares_with_any_other_revision(operator, two_revisions, acme):
    update_policy(acme, {"fail_closed_after_s": 600}, actor=None, actor_kind="operator")
    publish_bundle(["again"])

    response = operator.get(f"{BUNDLES}3/", {"against": 1})

    assert response.context["comparison"]["lines"] == [
        "tenant acme: fail_closed_after_s — → 600; quality best_effort → high"
    ]
    assert "From r1 to r3" in text(response)
    same = operator.get(f"{BUNDLES}3/", {"against": 3})
    assert "The same policy: nothing differs." in text(same)


def test_against_an_unknown_revision_says_so(operator, two_revisions):
    response = operator.get(f"{BUNDLES}2/", {"against": 99})

    assert response.context["comparison"] is None
    assert "There is no revision 99." in text(response)


def test_an_unknown_revision_is_not_found(operator, two_revisions):
    assert operator.get(f"{BUNDLES}7/").status_code == 404


# --- the decision lookup ------------------------------------------------------------------------


def decide(node, request_id, *, at, **fields):
    values = {
        "tenant": "acme",
        "model": "sentiment",
        "action": "local",
        "rule": "local",
        "reason": "served here",
        "status": 200,
        "served_by": "local",
        "bundle_revision": 2,
    }
    values.update(fields)
    return DecisionLog.objects.create(node=node, request_id=request_id, at=at, **values)


@pytest.fixture
def decisions(make_node, eu_west, nano, fra_gpu):
    edge = make_node("fra-1", eu_west, nano)
    at = timezone.now() - timedelta(minutes=5)
    return {
        "offload": decide(
            edge,
            "req-hot-1",
            at=at,
            action="offload",
            rule="thermal",
            reason="thermal",
            served_by="regional",
            target=fra_gpu.uid,
            price=Decimal("0.0009"),
            currency="EUR",
            temperature_c=81.5,
            queue_depth=2,
        ),
        "served": decide(
            fra_gpu,
            "req-hot-1",
            at=at + timedelta(milliseconds=40),
            price=Decimal("0.0009"),
            currency="EUR",
        ),
        "refused": decide(
            edge,
            "req-cap-2",
            at=at + timedelta(minutes=1),
            tenant="globex",
            action="refuse",
            rule="spend_cap",
            reason="this session has spent 0.4999 of 0.50 USD; the next inference costs 0.0004",
            status=402,
            served_by="",
        ),
        "old": decide(edge, "req-old-3", at=at - timedelta(hours=2)),
    }


def test_a_request_id_finds_every_nodes_decision_about_it(operator, decisions, fra_gpu):
    response = operator.get(DECISIONS, {"request_id": "req-hot-1"})

    assert list(response.context["table"].data) == [decisions["served"], decisions["offload"]]
    body = response.content.decode()
    assert '<span class="badge text-bg-success">Served here</span>' in body
    assert '<span class="badge text-bg-primary">Offloaded</span>' in body
    assert "<code>thermal</code>" in body
    assert f'href="/fleet/nodes/{fra_gpu.uid}/" title="{fra_gpu.uid}">fra-gpu-1</a>' in body
    assert 'href="/fleet/bundles/2/">r2</a>' in body
    assert "0.0009 EUR" in body and "81.5 °C" in body


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"tenant": "globex"}, ["refused"]),
        ({"action": "refuse"}, ["refused"]),
        ({"rule": "thermal"}, ["offload"]),
        ({"request_id": "req-hot"}, []),  # exact, not a search
    ],
)
def test_the_filters_narrow_the_decisions(operator, decisions, filters, expected):
    response = operator.get(DECISIONS, filters)

    assert list(response.context["table"].data) == [decisions[name] for name in expected]


def test_the_node_and_time_filters_narrow_the_decisions(operator, decisions, fra_gpu):
    by_node = operator.get(DECISIONS, {"node": fra_gpu.uid})
    assert list(by_node.context["table"].data) == [decisions["served"]]

    since = (decisions["offload"].at - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (decisions["refused"].at).strftime("%Y-%m-%dT%H:%M:%S")
    recent = operator.get(DECISIONS, {"since": since, "until": until})
    assert set(recent.context["table"].data) == {decisions["offload"], decisions["served"]}


def test_a_refusal_shows_its_status_and_reason(operator, decisions):
    page = text(operator.get(DECISIONS, {"request_id": "req-cap-2"}))

    assert "Refused" in page and "402" in page
    assert "this session has spent 0.4999 of 0.50 USD" in page


def test_an_empty_lookup_says_so(operator, db):
    assert "No decisions match these filters." in text(operator.get(DECISIONS))


@pytest.mark.parametrize("size", [3, 30])
def test_the_lookup_costs_the_same_queries_however_many_decisions(
    operator, make_node, eu_west, nano, size
):
    nodes = [make_node(f"node-{n}", eu_west, nano) for n in range(3)]
    start = timezone.now() - timedelta(hours=1)
    for number in range(size):
        decide(nodes[number % 3], f"req-{number}", at=start + timedelta(seconds=number))

    with CaptureQueriesContext(connection) as queries:
        response = operator.get(DECISIONS, {"tenant": "acme"})

    assert response.context["table"].paginator.count == size
    assert len(queries) == DECISIONS_QUERIES


def test_a_revision_that_cannot_price_some_requests_says_so(operator, acme):
    from fleet.models import Model, ModelVersion

    Tenant.objects.filter(pk=acme.pk).update(currency="JPY")
    ModelVersion.objects.create(
        model=Model.objects.create(name="churn"),
        version=1,
        sha256="ab" * 32,
        size_bytes=1,
        opset=17,
        status="graded",
        grade="tiny",
    )
    update_policy(acme, {"max_spend_per_session": "80"}, actor=None, actor_kind="operator")
    record = publish_bundle(["test"])

    assert record.warnings == [
        "no JPY price for tiny local, tiny regional: such requests state no cost, and the "
        "spend caps of acme cannot hold them"
    ]
    for url in ("/fleet/bundles/", f"/fleet/bundles/{record.revision}/"):
        page = operator.get(url).content.decode()
        assert "no JPY price for tiny local, tiny regional" in page
