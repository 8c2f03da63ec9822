"""The fleet pages an operator uses: the node list and a node's page."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet.models import NodeStatusChange
from fleet.rates import floor_minute

pytestmark = pytest.mark.django_db

SHA_A = "a1b2c3d4e5f6" + "0" * 52
SHA_B = "b" * 64

# The node list's queries, whatever the number of nodes: session, user, the user's groups
# (the nav asks is_finance), the region and node class choices of the filter form, the
# paginator's count, and the page of nodes with their region and class joined in.
NODE_LIST_QUERIES = 7
# A poll of the list (htmx) renders no filter form: no region or class choices.
NODE_LIST_POLL_QUERIES = 5
# The node page: session, user, groups, the node (region and class joined), its samples,
# its status history.
NODE_PAGE_QUERIES = 6


@pytest.fixture
def fleet(make_node, eu_west, us_east, nano, standard):
    """Four nodes, one in each status."""
    now = timezone.now()
    return {
        "fra-1": make_node(
            "fra-1",
            eu_west,
            nano,
            last_heartbeat_at=now - timedelta(seconds=2),
            last_report_healthy=True,
            agent_version="0.3.1",
            uptime_s=3 * 3600 + 12 * 60,
            cpu_load=0.42,
            memory_pressure=0.61,
            temperature_c=58.0,
            queue_depth=3,
            requests_total=12_345,
            errors_total=7,
            bundle_revision=12,
            hostname="fra-1.edge.example",
            models_loaded=[
                {"name": "sentiment", "version": "3", "sha256": SHA_A, "ready": True},
                {"name": "whisper-small", "version": "1", "sha256": SHA_B, "ready": False},
            ],
        ),
        "fra-2": make_node(
            "fra-2",
            eu_west,
            standard,
            last_heartbeat_at=now - timedelta(seconds=3),
            last_report_healthy=False,
            agent_version="0.3.1",
            cpu_load=1.7,
            memory_pressure=0.97,
            queue_depth=40,
        ),
        "nyc-1": make_node(
            "nyc-1",
            us_east,
            standard,
            last_heartbeat_at=now - timedelta(minutes=10),
            last_report_healthy=True,
            agent_version="0.3.0",
            cpu_load=0.1,
            memory_pressure=0.2,
        ),
        "nyc-2": make_node("nyc-2", us_east, nano),
    }


def names_listed(response) -> list[str]:
    return re.findall(
        r'<a hx-boost="false" href="/fleet/nodes/[\w-]+/">([^<]+)</a>', response.content.decode()
    )


def figure(response, name: str) -> dict:
    match = re.search(
        rf'<script type="application/json" data-chart-for="chart-{name}">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, f"no {name} chart in the page"
    return json.loads(match.group(1))


# --- the node list ---------------------------------------------------------------------------


def test_it_lists_every_node_with_its_reported_state(operator, fleet):
    response = operator.get(reverse("fleet:nodes"))

    assert response.status_code == 200
    assert sorted(names_listed(response)) == ["fra-1", "fra-2", "nyc-1", "nyc-2"]
    html = response.content.decode()
    assert f'href="/fleet/nodes/{fleet["fra-1"].uid}/"' in html
    for shown in ("0.42", "61%", "58 °C", "0.3.1", "eu-west", "Nano"):
        assert shown in html


def test_it_shows_the_derived_status_as_a_coloured_badge(operator, fleet):
    html = operator.get(reverse("fleet:nodes")).content.decode()

    assert '<span class="badge text-bg-success">Online</span>' in html
    assert '<span class="badge text-bg-warning">Degraded</span>' in html
    assert '<span class="badge text-bg-danger">Offline</span>' in html
    assert '<span class="badge text-bg-secondary">Pending</span>' in html


def test_it_counts_the_models_a_node_has_loaded(operator, fleet):
    response = operator.get(reverse("fleet:nodes"), {"q": "fra-1"})

    row = re.search(r'<tr class="(?:even|odd)">.*?</tr>', response.content.decode(), re.S).group(0)
    assert "fra-1" in row
    assert re.search(r'<td class="num text-end"\s*>\s*2\s*</td>', row)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"region": "eu-west"}, ["fra-1", "fra-2"]),
        ({"node_class": "standard"}, ["fra-2", "nyc-1"]),
        ({"status": "online"}, ["fra-1"]),
        ({"status": "degraded"}, ["fra-2"]),
        ({"status": "offline"}, ["nyc-1"]),
        ({"status": "pending"}, ["nyc-2"]),
        ({"region": "us-east", "node_class": "nano"}, ["nyc-2"]),
        ({"q": "nyc"}, ["nyc-1", "nyc-2"]),
        ({"q": "FRA-1.EDGE"}, ["fra-1"]),
    ],
)
def test_the_filters_narrow_the_list(operator, fleet, filters, expected):
    response = operator.get(reverse("fleet:nodes"), filters)

    assert sorted(names_listed(response)) == expected


def test_it_searches_by_uid(operator, fleet):
    response = operator.get(reverse("fleet:nodes"), {"q": fleet["nyc-1"].uid})

    assert names_listed(response) == ["nyc-1"]


def test_an_unknown_region_is_explained_rather_than_crashing(operator, fleet):
    response = operator.get(reverse("fleet:nodes"), {"region": "mars-1"})

    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert len(names_listed(response)) == 4


def test_it_sorts_by_last_heartbeat_with_silent_nodes_last_either_way(operator, fleet):
    newest_first = operator.get(reverse("fleet:nodes"), {"sort": "-last_heartbeat_at"})
    oldest_first = operator.get(reverse("fleet:nodes"), {"sort": "last_heartbeat_at"})

    assert names_listed(newest_first) == ["fra-1", "fra-2", "nyc-1", "nyc-2"]
    assert names_listed(oldest_first) == ["nyc-1", "fra-2", "fra-1", "nyc-2"]


def test_it_sorts_by_status(operator, fleet):
    response = operator.get(reverse("fleet:nodes"), {"sort": "status"})

    assert names_listed(response) == ["fra-2", "nyc-1", "fra-1", "nyc-2"]


def test_it_pages_a_large_fleet(operator, make_node, eu_west, nano):
    for number in range(55):
        make_node(f"node-{number:02d}", eu_west, nano)

    first = operator.get(reverse("fleet:nodes"))
    second = operator.get(reverse("fleet:nodes"), {"page": 2})

    assert len(names_listed(first)) == 50
    assert len(names_listed(second)) == 5
    assert "55 nodes" in first.content.decode()


def test_an_empty_fleet_says_so(operator, db):
    response = operator.get(reverse("fleet:nodes"))

    assert "No nodes match these filters." in response.content.decode()


def test_the_list_refreshes_itself_with_htmx(operator, fleet):
    html = operator.get(reverse("fleet:nodes")).content.decode()

    assert 'id="nodes-live"' in html
    assert 'hx-trigger="every 5s' in html


def test_an_htmx_poll_gets_only_the_table(operator, fleet):
    response = operator.get(reverse("fleet:nodes"), {"status": "online"}, HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "<html" not in html
    assert 'id="node-filters"' not in html
    assert names_listed(response) == ["fra-1"]
    assert "HX-Request" in response["Vary"]


def test_a_history_restore_gets_the_whole_page(operator, fleet):
    response = operator.get(
        reverse("fleet:nodes"), HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )

    assert "<html" in response.content.decode()


@pytest.mark.parametrize("number_of_nodes", [3, 30])
def test_the_list_costs_the_same_queries_whatever_the_number_of_nodes(
    operator,
    make_node,
    eu_west,
    us_east,
    nano,
    standard,
    django_assert_num_queries,
    number_of_nodes,
):
    now = timezone.now()
    for number in range(number_of_nodes):
        make_node(
            f"node-{number:02d}",
            (eu_west, us_east)[number % 2],
            (nano, standard)[number % 2],
            last_heartbeat_at=now - timedelta(seconds=number % 10),
            last_report_healthy=True,
            cpu_load=0.5,
            memory_pressure=0.5,
            models_loaded=[{"name": "m", "version": "1", "sha256": SHA_B, "ready": True}],
        )

    with django_assert_num_queries(NODE_LIST_QUERIES):
        response = operator.get(reverse("fleet:nodes"), {"status": "online"})
    with django_assert_num_queries(NODE_LIST_POLL_QUERIES):
        operator.get(reverse("fleet:nodes"), HTTP_HX_REQUEST="true")

    assert len(names_listed(response)) == number_of_nodes


# --- a node's page ---------------------------------------------------------------------------


def test_the_node_page_shows_everything_the_node_reported(operator, fleet):
    node = fleet["fra-1"]

    response = operator.get(reverse("fleet:node", args=[node.uid]))

    assert response.status_code == 200
    html = response.content.decode()
    for shown in (
        "fra-1",
        node.uid,
        "eu-west",
        "Frankfurt",
        "Nano",
        "0.3.1",
        "3 h 12 min",
        "0.42 per core",
        "61 %",
        "58.0 °C",
        "12,345",
        "revision 12",
        "fra-1.edge.example",
        '<span class="badge text-bg-success">Online</span>',
    ):
        assert shown in html, shown


def test_the_node_page_lists_models_with_a_short_hash_and_readiness(operator, fleet):
    html = operator.get(reverse("fleet:node", args=[fleet["fra-1"].uid])).content.decode()

    assert "sentiment" in html and "whisper-small" in html
    assert f'<code title="{SHA_A}">a1b2c3d4e5f6…</code>' in html
    assert '<span class="badge text-bg-success">ready</span>' in html
    assert '<span class="badge text-bg-warning">loading</span>' in html


def test_a_node_that_never_reported_says_so(operator, fleet):
    html = operator.get(reverse("fleet:node", args=[fleet["nyc-2"].uid])).content.decode()

    assert "has not sent a heartbeat yet" in html
    assert "The node reports no loaded models." in html


def test_the_status_history_is_newest_first_and_keeps_the_last_50(operator, fleet):
    node = fleet["fra-2"]
    start = timezone.now() - timedelta(hours=2)
    for number in range(60):
        NodeStatusChange.objects.create(
            node=node,
            old_status="online",
            new_status="degraded",
            at=start + timedelta(minutes=number),
            reason=f"flip {number}",
        )

    html = operator.get(reverse("fleet:node", args=[node.uid])).content.decode()

    reasons = re.findall(r"flip (\d+)", html)
    assert reasons == [str(number) for number in range(59, 9, -1)]
    history = html[html.index("Status history") :]
    assert '<span class="badge text-bg-success">Online</span>' in history
    assert '<span class="badge text-bg-warning">Degraded</span>' in history


def test_the_charts_draw_the_samples_in_range(operator, fleet, add_samples):
    node = fleet["fra-1"]
    add_samples(node, timezone.now() - timedelta(minutes=10), minutes=10)

    response = operator.get(reverse("fleet:node", args=[node.uid]))

    cpu = figure(response, "cpu")["data"][0]
    assert cpu["name"] == "CPU load"
    assert set(cpu["y"]) - {None} == {0.25, 0.35, 0.45, 0.55}
    assert figure(response, "memory")["data"][0]["y"][0] == 0.5
    assert figure(response, "temperature")["data"][0]["y"][0] == 55.0


def test_the_requests_chart_counts_requests_per_minute(operator, fleet, add_samples):
    node = fleet["fra-1"]
    # Whole minutes, so every complete minute in the chart served exactly 60 requests.
    start = floor_minute(timezone.now()) - timedelta(minutes=10)
    add_samples(node, start, minutes=10, per_minute=60)

    response = operator.get(reverse("fleet:node", args=[node.uid]))

    requests = figure(response, "requests")
    counts = [round(y) for y in requests["data"][0]["y"]]
    # Ten minutes of heartbeats; the latest may still wait for the reading that closes it.
    assert counts in ([60] * 9, [60] * 10)
    # Before the node reported there is no point rather than a 0, over the whole hour's axis.
    low, high = (datetime.fromisoformat(t) for t in requests["layout"]["xaxis"]["range"])
    assert high - low == timedelta(hours=1)


def test_the_range_selector_widens_the_charts(operator, fleet, add_samples):
    node = fleet["fra-1"]
    add_samples(node, timezone.now() - timedelta(hours=3), minutes=1)

    one_hour = operator.get(reverse("fleet:node", args=[node.uid]), {"range": "1h"})
    six_hours = operator.get(reverse("fleet:node", args=[node.uid]), {"range": "6h"})

    assert figure(one_hour, "cpu")["data"][0]["y"] == []
    # 13 readings a minute long, drawn at the 6 h resolution of 30 s: two or three points.
    assert 2 <= len(figure(six_hours, "cpu")["data"][0]["y"]) <= 3
    assert 'aria-current="true">6h</a>' in six_hours.content.decode()


def test_an_unknown_range_falls_back_to_one_hour(operator, fleet):
    response = operator.get(reverse("fleet:node", args=[fleet["fra-1"].uid]), {"range": "1y"})

    assert response.status_code == 200
    assert 'aria-current="true">1h</a>' in response.content.decode()


def test_a_silent_stretch_shows_as_a_gap_in_the_charts(operator, fleet, add_samples):
    node = fleet["fra-1"]
    start = timezone.now() - timedelta(minutes=30)
    add_samples(node, start, minutes=1)
    add_samples(node, start + timedelta(minutes=20), minutes=1, first_total=1_000)

    cpu = figure(operator.get(reverse("fleet:node", args=[node.uid])), "cpu")["data"][0]

    assert cpu["y"].count(None) == 1


def test_a_whole_day_is_drawn_at_a_coarser_resolution(operator, fleet, add_samples):
    node = fleet["fra-1"]
    add_samples(node, timezone.now() - timedelta(hours=23), minutes=22 * 60)

    response = operator.get(reverse("fleet:node", args=[node.uid]), {"range": "24h"})

    cpu = figure(response, "cpu")["data"][0]["y"]
    assert 600 < len(cpu) <= 721  # 2-minute means instead of 15,841 heartbeats
    assert None not in cpu
    assert len(response.content) < 250_000


def test_an_empty_chart_says_why(operator, fleet):
    response = operator.get(reverse("fleet:node", args=[fleet["nyc-2"].uid]))

    annotations = figure(response, "cpu")["layout"]["annotations"]
    assert annotations[0]["text"] == "No samples in this range yet"


def test_the_node_page_refreshes_itself_with_htmx(operator, fleet):
    url = reverse("fleet:node", args=[fleet["fra-1"].uid])

    page = operator.get(url).content.decode()
    poll = operator.get(url, HTTP_HX_REQUEST="true").content.decode()

    assert 'id="node-live"' in page and 'hx-trigger="every 5s' in page
    assert "<html" not in poll
    assert 'data-chart-for="chart-cpu"' in poll


def test_an_unknown_node_is_not_found(operator, db):
    assert operator.get(reverse("fleet:node", args=["nd-nope"])).status_code == 404


@pytest.mark.parametrize("history_length", [3, 30])
def test_the_node_page_costs_the_same_queries_whatever_its_history(
    operator, fleet, django_assert_num_queries, history_length, add_samples
):
    node = fleet["fra-1"]
    add_samples(node, timezone.now() - timedelta(minutes=history_length), minutes=history_length)
    for _ in range(history_length):
        NodeStatusChange.objects.create(node=node, old_status="online", new_status="degraded")

    with django_assert_num_queries(NODE_PAGE_QUERIES):
        operator.get(reverse("fleet:node", args=[node.uid]))
