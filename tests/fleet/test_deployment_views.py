"""The deployment pages: operators start a rollout from a form that shows why one is refused,
list every deployment with its progress, and follow one on its page (its steps, each node's
progress from its heartbeats, its history) where they pause, resume, promote or roll it back."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.models import Deployment, DeploymentEvent, Model
from fleet.rollout_actions import judge, pause, promote, start_rollout
from tests.fleet.test_deployments import make_version

pytestmark = pytest.mark.django_db

# The list, whatever the number of deployments: session, user, the user's groups (the nav
# asks is_finance), the model choices of the filter form, the paginator's count, the page of
# deployments (version, model, owner, previous and creator joined), and their regions and
# classes (prefetched).
DEPLOYMENT_LIST_QUERIES = 8

NEW = reverse("deployments:new")
LIST = reverse("deployments:list")


@pytest.fixture
def churn(acme):
    return Model.objects.create(owner=acme, name="churn")


@pytest.fixture
def classes(nano, standard):
    return {"nano": nano, "standard": standard}


def form_data(version, **fields):
    return {
        "version": version.pk,
        "strategy": "canary",
        "steps": "5, 25, 100",
        "soak_s": 60,
        "max_error_rate_increase": 2,
        "max_p95_ratio": 1.5,
        "min_requests": 50,
        **fields,
    }


def detail_url(deployment):
    return reverse("deployments:detail", args=[deployment.pk])


def text(response) -> str:
    """The page's text without tags, spaces collapsed, for reading sentences in it."""
    return " ".join(re.sub(r"<[^>]+>", " ", response.content.decode()).split())


# --- starting a rollout ----------------------------------------------------------------------


def test_the_form_starts_a_canary_with_the_chosen_selector_and_steps(
    operator, alice, churn, eu_west, us_east, classes
):
    v1 = make_version(churn, 1)

    response = operator.post(
        NEW,
        form_data(
            v1,
            regions=["eu-west"],
            node_classes=["nano"],
            steps="10, 50, 100",
            soak_s=120,
            max_error_rate_increase=5,
        ),
    )

    deployment = Deployment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == detail_url(deployment)
    assert deployment.version == v1
    assert deployment.strategy == "canary"
    assert deployment.steps == [10, 50, 100]
    assert deployment.soak_s == 120
    assert deployment.max_error_rate_increase == pytest.approx(0.05)
    assert [r.code for r in deployment.regions.all()] == ["eu-west"]
    assert [c.name for c in deployment.node_classes.all()] == ["nano"]
    assert deployment.created_by == alice


def test_all_at_once_ignores_the_steps_and_an_empty_selector_means_every_node(
    operator, churn, classes
):
    operator.post(NEW, form_data(make_version(churn, 1), strategy="all_at_once", steps=""))

    deployment = Deployment.objects.get()
    assert deployment.steps == [100]
    assert not deployment.regions.exists() and not deployment.node_classes.exists()


def test_a_refused_start_shows_the_reason_and_creates_nothing(operator, churn, classes):
    huge = make_version(churn, 1, peak=6 * 2**30)  # nano: 8 GiB, half of it for one model

    response = operator.post(NEW, form_data(huge, node_classes=["nano"]))

    assert response.status_code == 200
    assert "needs 6.00 GiB at peak; a nano node gives one model 4.00 GiB" in text(response)
    assert not Deployment.objects.exists()


def test_bad_steps_show_the_rule(operator, churn, classes):
    response = operator.post(NEW, form_data(make_version(churn, 1), steps="5, 25, 90"))

    assert response.status_code == 200
    assert "The last step must be 100 %." in text(response)
    assert not Deployment.objects.exists()


def test_only_graded_versions_can_be_chosen_and_the_address_preselects_one(
    operator, churn, classes
):
    graded = make_version(churn, 1)
    grading = make_version(churn, 2, status="grading")

    page = operator.get(NEW, {"version": graded.pk}).content.decode()

    assert f'<option value="{graded.pk}" selected>acme/churn v1</option>' in page
    assert "acme/churn v2" not in page
    refused = operator.post(NEW, form_data(grading))
    assert "Select a valid choice" in text(refused)


def test_a_graded_version_page_links_to_the_form(operator, churn, classes):
    graded, grading = make_version(churn, 1), make_version(churn, 2, status="grading")

    page = operator.get(reverse("registry:version", args=[graded.pk])).content.decode()
    assert f'href="{NEW}?version={graded.pk}"' in page
    page = operator.get(reverse("registry:version", args=[grading.pk])).content.decode()
    assert "Deploy this version" not in page


# --- the list --------------------------------------------------------------------------------


def deploy_models(owner, count, **kwargs):
    """`count` models, each with one completed deployment of its first version."""
    deployments = []
    for number in range(count):
        model = Model.objects.create(owner=owner, name=f"model-{number:02d}")
        deployment = start_rollout(make_version(model, 1), **kwargs)
        promote(deployment)
        deployments.append(deployment)
    return deployments


def test_the_list_shows_each_deployment_with_its_selector_state_and_progress(
    operator, alice, churn, eu_west, nano, standard
):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    start_rollout(v2, regions=[eu_west], node_classes=[nano], steps=[5, 25, 100], acting_user=alice)

    page = text(operator.get(LIST))

    assert "acme/ churn v2 ← v1 eu-west · nano Canary by steps Rolling out 5 %" in page
    assert "alice" in page
    assert "acme/ churn v1 first all nodes All at once Completed 100 %" in page


def test_the_list_filters_by_state_and_model(operator, acme, classes):
    first, second, third = deploy_models(acme, 3)
    third_v2 = make_version(third.version.model, 2)
    pause(start_rollout(third_v2, steps=[5, 100]))

    paused = operator.get(LIST, {"state": "paused"})
    assert list(paused.context["table"].data) == [Deployment.objects.get(version=third_v2)]

    of_model = operator.get(LIST, {"model": "acme/model-00"})
    assert list(of_model.context["table"].data) == [first]


def test_the_list_costs_the_same_queries_for_3_or_30_deployments(operator, acme, eu_west, nano):
    deploy_models(acme, 3, regions=[eu_west], node_classes=[nano])
    with CaptureQueriesContext(connection) as few:
        assert operator.get(LIST).status_code == 200
    for number in range(27):
        model = Model.objects.create(owner=acme, name=f"more-{number:02d}")
        start_rollout(make_version(model, 1), regions=[eu_west], node_classes=[nano])
    with CaptureQueriesContext(connection) as many:
        response = operator.get(LIST)

    assert response.context["table"].paginator.count == 30
    assert len(few) == len(many) == DEPLOYMENT_LIST_QUERIES


def test_an_htmx_poll_gets_only_the_table(operator, acme, classes):
    deploy_models(acme, 1)

    response = operator.get(LIST, headers={"HX-Request": "true"})

    assert b"<nav" not in response.content
    assert b"model-00" in response.content


# --- a deployment's page -----------------------------------------------------------------------


def loaded(version, *, ready=True, requests=0, errors=0, problem=None):
    return {
        "name": version.model.served_name,
        "version": str(version.version),
        "sha256": version.sha256,
        "ready": ready,
        "requests_total": requests,
        "errors_total": errors,
        "latency_p95_ms": 3.1,
        "problem": problem,
    }


def test_the_page_shows_each_selected_node_progress_from_its_heartbeats(
    operator, churn, make_node, eu_west, us_east, nano, standard
):
    v1, v2 = make_version(churn, 1), make_version(churn, 2)
    promote(start_rollout(v1, strategy="all_at_once"))
    make_node(
        "fra-1",
        eu_west,
        nano,
        models_loaded=[loaded(v1, requests=900, errors=9), loaded(v2, requests=120, errors=1)],
    )
    make_node(
        "fra-2",
        eu_west,
        nano,
        models_loaded=[
            loaded(v1, requests=400),
            loaded(v2, ready=False, problem="not enough memory to load"),
        ],
    )
    make_node("fra-3", eu_west, standard, models_loaded=[loaded(v1)])  # not in the selector
    make_node("nyc-1", us_east, nano, models_loaded=[loaded(v1)])  # not in the selector
    deployment = start_rollout(v2, regions=[eu_west], node_classes=[nano], steps=[5, 100])

    response = operator.get(detail_url(deployment))
    rows = {row.node.name: row for row in response.context["progress"]}
    page = text(response)

    assert set(rows) == {"fra-1", "fra-2"}
    assert rows["fra-1"].new_ready and rows["fra-1"].previous_ready
    assert not rows["fra-2"].new_ready and rows["fra-2"].previous_ready
    assert "fra-1 eu-west nano ready 120 1 ready 900 9 —" in page
    assert "fra-2 eu-west nano loading 0 0 ready 400 0 v2: not enough memory to load" in page


def test_the_page_shows_the_steps_soak_and_gate_note(operator, churn, make_node, eu_west, nano):
    make_node("fra-1", eu_west, nano)
    deployment = start_rollout(make_version(churn, 1), steps=[5, 25, 100], soak_s=600)
    judge(deployment)  # no traffic yet: the gates say so

    response = operator.get(detail_url(deployment))
    page = response.content.decode()

    assert [s["status"] for s in response.context["steps"]] == ["current", "next", "next"]
    assert 'aria-current="step"' in page
    assert re.search(r"Soak left (9 min \d+ s|10 min 0 s)", text(response))
    assert "0 of 50 requests so far" in text(response)


def test_the_history_lists_reasons_and_who_newest_first(operator, alice, churn, classes):
    deployment = start_rollout(make_version(churn, 1), steps=[5, 100], acting_user=alice)
    pause(deployment, acting_user=alice)
    DeploymentEvent.objects.create(
        deployment=deployment,
        from_state="paused",
        to_state="rolled_back",
        step_index=0,
        percent=5,
        reason="health gate failed: error rate 50.0%",
    )

    page = text(operator.get(detail_url(deployment)))

    history = page[page.index("History") :]
    assert history.index("health gate failed") < history.index("paused by hand")
    assert history.index("paused by hand") < history.index("started at 5 %")
    assert "Paused → Rolled back 5 % health gate failed: error rate 50.0% automatic" in history
    assert "Rolling out → Paused 5 % paused by hand alice" in history


def test_a_poll_of_the_page_gets_only_the_live_part(operator, churn, classes):
    deployment = start_rollout(make_version(churn, 1))

    response = operator.get(detail_url(deployment), headers={"HX-Request": "true"})

    assert b"<nav" not in response.content
    assert b"Progress per node" in response.content


# --- the buttons ---------------------------------------------------------------------------------


def act(client, deployment, action, **data):
    return client.post(reverse(f"deployments:{action}", args=[deployment.pk]), data, follow=True)


@pytest.fixture
def rolling(churn, classes, alice):
    return start_rollout(make_version(churn, 1), steps=[5, 25, 100], acting_user=alice)


def last_event(deployment):
    return deployment.events.order_by("-at", "-pk").first()


def test_pause_then_resume_each_write_a_history_row(operator, alice, rolling):
    act(operator, rolling, "pause")
    rolling.refresh_from_db()
    assert rolling.state == "paused"
    assert (last_event(rolling).reason, last_event(rolling).actor) == ("paused by hand", alice)

    response = act(operator, rolling, "resume")
    rolling.refresh_from_db()
    assert rolling.state == "rolling"
    assert (last_event(rolling).reason, last_event(rolling).actor) == ("resumed by hand", alice)
    assert response.redirect_chain == [(detail_url(rolling), 302)]
    assert "Resumed" in text(response)


def test_promote_gives_the_new_version_all_the_traffic(operator, alice, rolling):
    act(operator, rolling, "promote")

    rolling.refresh_from_db()
    assert (rolling.state, rolling.current_percent) == ("completed", 100)
    assert (last_event(rolling).reason, last_event(rolling).actor) == ("promoted by hand", alice)


def test_roll_back_records_the_reason_given(operator, alice, rolling):
    act(operator, rolling, "roll_back", reason="customer complaint")

    rolling.refresh_from_db()
    assert rolling.state == "rolled_back"
    assert (last_event(rolling).reason, last_event(rolling).actor) == ("customer complaint", alice)


def test_roll_back_without_a_reason_says_it_was_by_hand(operator, rolling):
    act(operator, rolling, "roll_back", reason="  ")

    assert last_event(rolling).reason == "rolled back by hand"


def test_an_action_the_state_does_not_allow_shows_why(operator, rolling):
    response = act(operator, rolling, "resume")

    assert "Only a paused deployment can be resumed (this one is rolling)." in text(response)
    assert rolling.events.count() == 1


def test_the_page_offers_only_the_buttons_of_its_state(operator, rolling):
    page = operator.get(detail_url(rolling)).content.decode()
    assert reverse("deployments:pause", args=[rolling.pk]) in page
    assert reverse("deployments:resume", args=[rolling.pk]) not in page

    promote(rolling)
    page = operator.get(detail_url(rolling)).content.decode()
    assert reverse("deployments:pause", args=[rolling.pk]) not in page
    assert reverse("deployments:roll_back", args=[rolling.pk]) in page


def test_actions_take_posts_only(operator, rolling):
    response = operator.get(reverse("deployments:pause", args=[rolling.pk]))

    assert response.status_code == 405


# --- who may ---------------------------------------------------------------------------------


def pages(deployment):
    return [LIST, NEW, detail_url(deployment)]


def test_anonymous_visitors_are_sent_to_log_in(client, rolling):
    for url in pages(rolling):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("user", ["bob", "carol"])
def test_finance_and_tenant_members_are_refused(client, request, rolling, user):
    client.force_login(request.getfixturevalue(user))

    for url in pages(rolling):
        assert client.get(url).status_code == 403
    assert client.post(reverse("deployments:pause", args=[rolling.pk])).status_code == 403
    rolling.refresh_from_db()
    assert rolling.state == "rolling"
