"""The home page: operators see the fleet at a glance; everyone else learns where to go."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet.rates import floor_minute

pytestmark = pytest.mark.django_db

# Session, user, the user's groups (nav), the status counts (one GROUP BY), the nodes that
# need attention, and the heartbeat samples of the last hour.
HOME_QUERIES = 6


@pytest.fixture
def fleet(make_node, eu_west, us_east, nano, standard):
    now = timezone.now()
    online = {"last_heartbeat_at": now - timedelta(seconds=2), "last_report_healthy": True}
    return {
        "fra-1": make_node("fra-1", eu_west, nano, **online),
        "fra-2": make_node("fra-2", eu_west, nano, **online),
        "fra-3": make_node(
            "fra-3", eu_west, standard, last_heartbeat_at=now, last_report_healthy=False
        ),
        "nyc-1": make_node("nyc-1", us_east, standard, **online),
        "nyc-2": make_node("nyc-2", us_east, standard, last_heartbeat_at=now - timedelta(hours=1)),
        "nyc-3": make_node("nyc-3", us_east, nano),
    }


def matrix_rows(html: str) -> list[list[str]]:
    body = re.search(r"Nodes by region, class and status.*?<tbody>(.*?)</tbody>", html, re.S).group(
        1
    )
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        rows.append([re.sub(r"<[^>]+>", "", cell).strip() for cell in cells])
    return rows


def traffic_figure(html: str) -> dict:
    block = re.search(r'data-chart-for="chart-traffic">(.*?)</script>', html, re.S).group(1)
    return json.loads(block)


def test_it_counts_nodes_by_region_class_and_status(operator, fleet):
    html = operator.get(reverse("home")).content.decode()

    # Region, class, online, degraded, offline, pending, total.
    assert matrix_rows(html) == [
        ["eu-west", "Nano", "2", "0", "0", "0", "2"],
        ["eu-west", "Standard", "0", "1", "0", "0", "1"],
        ["us-east", "Nano", "0", "0", "0", "1", "1"],
        ["us-east", "Standard", "1", "0", "1", "0", "2"],
    ]


def test_each_count_links_to_the_matching_nodes(operator, fleet):
    html = operator.get(reverse("home")).content.decode()

    assert 'href="/fleet/?region=eu-west&amp;node_class=nano&amp;status=online">2</a>' in html
    assert 'href="/fleet/?status=offline"' in html


def test_it_lists_the_nodes_that_need_attention_longest_silent_first(operator, fleet):
    html = operator.get(reverse("home")).content.decode()

    attention = re.search(r"Needs attention(.*)", html, re.S).group(1)
    listed = re.findall(r'href="/fleet/nodes/[\w-]+/">([^<]+)</a>', attention)
    assert listed == ["nyc-2", "fra-3", "nyc-3"]


def figure_range(html: str) -> int:
    """Minutes the traffic chart's time axis spans."""
    from datetime import datetime

    low, high = (
        datetime.fromisoformat(t) for t in traffic_figure(html)["layout"]["xaxis"]["range"]
    )
    return int((high - low).total_seconds() // 60)


def test_it_charts_requests_per_minute_for_the_fleet_and_each_region(operator, fleet, add_samples):
    start = floor_minute(timezone.now()) - timedelta(minutes=20)
    add_samples(fleet["fra-1"], start, minutes=20, per_minute=60)
    add_samples(fleet["fra-2"], start, minutes=20, per_minute=120, first_total=5_000)
    add_samples(fleet["nyc-1"], start, minutes=20, per_minute=30)

    html = operator.get(reverse("home")).content.decode()

    traces = {trace["name"]: trace["y"] for trace in traffic_figure(html)["data"]}
    assert list(traces) == ["All regions", "eu-west", "us-east"]
    # The latest complete minutes served 60 + 120 in eu-west and 30 in us-east.
    assert [round(y) for y in traces["eu-west"][-10:]] == [180] * 10
    assert [round(y) for y in traces["us-east"][-10:]] == [30] * 10
    assert [round(y) for y in traces["All regions"][-10:]] == [210] * 10
    # Only the minutes the heartbeats cover: the fleet reported for the last 20 minutes.
    assert 18 <= len(traces["All regions"]) <= 20
    assert figure_range(html) == 60


def test_a_restarted_agent_does_not_show_negative_traffic(operator, fleet, add_samples):
    start = floor_minute(timezone.now()) - timedelta(minutes=20)
    add_samples(fleet["fra-1"], start, minutes=10, per_minute=60, first_total=90_000)
    add_samples(fleet["fra-1"], start + timedelta(minutes=10, seconds=5), minutes=9, per_minute=60)

    html = operator.get(reverse("home")).content.decode()

    total = traffic_figure(html)["data"][0]["y"]
    assert min(total) >= 0
    assert [round(y) for y in total[-15:-10]] == [60] * 5


def test_a_fleet_that_reported_nothing_gets_an_empty_chart_not_zeros(operator, fleet):
    html = operator.get(reverse("home")).content.decode()

    figure = traffic_figure(html)
    assert figure["layout"]["annotations"][0]["text"] == "No node reported in this hour"
    assert "Requests, last hour" in html


def test_an_empty_fleet_invites_enrolling_a_node(operator):
    html = operator.get(reverse("home")).content.decode()

    assert "No nodes are enrolled yet." in html
    assert 'href="/fleet/enroll/"' in html


def test_the_dashboard_refreshes_itself_with_htmx(operator, fleet):
    page = operator.get(reverse("home")).content.decode()
    poll = operator.get(reverse("home"), HTTP_HX_REQUEST="true").content.decode()

    assert 'id="home-live"' in page and 'hx-trigger="every 5s' in page
    assert "vendor/plotly.min.js" in page
    assert "<html" not in poll
    assert 'data-chart-for="chart-traffic"' in poll


@pytest.mark.parametrize("number_of_nodes", [3, 30])
def test_the_dashboard_costs_the_same_queries_whatever_the_size_of_the_fleet(
    operator,
    make_node,
    eu_west,
    us_east,
    nano,
    standard,
    add_samples,
    django_assert_num_queries,
    number_of_nodes,
):
    start = timezone.now() - timedelta(minutes=3)
    for number in range(number_of_nodes):
        node = make_node(
            f"node-{number:02d}", (eu_west, us_east)[number % 2], (nano, standard)[number % 3 % 2]
        )
        add_samples(node, start, minutes=2)

    with django_assert_num_queries(HOME_QUERIES):
        operator.get(reverse("home"))


# --- everyone else ---------------------------------------------------------------------------


def test_anonymous_people_are_sent_to_sign_in(client, db):
    response = client.get(reverse("home"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_tenant_member_goes_to_the_portal(client, carol):
    client.force_login(carol)

    response = client.get(reverse("home"))

    assert response.status_code == 302
    assert response["Location"] == reverse("portal:index")


def test_finance_people_go_to_the_accounts(client, bob):
    client.force_login(bob)

    response = client.get(reverse("home"))

    assert response.status_code == 302
    assert response["Location"] == reverse("finance:accounts")


def test_someone_without_a_role_is_told_to_ask_an_operator(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("dave", password="dave-password"))

    html = client.get(reverse("home")).content.decode()

    assert "Your account has no role yet" in html
