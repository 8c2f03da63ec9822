"""The portal's SLO page: a member sees its own tenant's SLOs, charted and tabled, with the
numbers the API answers; another tenant's page does not exist for it."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import ApiKey, Membership, Tenant
from fleet.slo_views import ModelSloTable
from tests.fleet.slo_rows import minutes_ago, on_band, served

SENTIMENT = "acme.sentiment"
SECRET = "globex.secret"
PAGE = "/portal/acme/slo/"


@pytest.fixture
def globex(db, django_user_model):
    tenant = Tenant.objects.create(slug="globex", name="Globex Logistics", currency="EUR")
    erin = django_user_model.objects.create_user("erin", "erin@globex.example", "pw")
    Membership.objects.create(user=erin, tenant=tenant, role="owner")
    return tenant


@pytest.fixture
def usage(acme, globex):
    now = timezone.now()
    on_band(acme, p95_target_ms=100)
    served(acme, minutes_ago(now, 10), model=SENTIMENT, latency={"le_10ms": 80}, errors=4,
           tokenised=30, energy_j=40.0)  # fmt: skip
    served(acme, minutes_ago(now, 5), model=SENTIMENT, latency={"le_250ms": 20}, errors=1,
           tokenised=5, served_by="regional", reason="thermal")  # fmt: skip
    served(acme, minutes_ago(now, 5), model="tiny-classifier", latency={"le_5ms": 50})
    served(globex, minutes_ago(now, 5), model=SECRET, latency={"le_1s": 1000}, tokenised=999)


@pytest.fixture
def member(client, carol):
    client.force_login(carol)
    return client


def charts(page) -> dict[str, dict]:
    blocks = re.findall(
        r'<script type="application/json" data-chart-for="chart-(\w+)">(.*?)</script>',
        page.content.decode(),
        re.S,
    )
    return {name: json.loads(text) for name, text in blocks}


def test_a_member_sees_its_tenants_slos_per_model(member, usage):
    page = member.get(PAGE + "?window=1h")
    text = page.content.decode()

    assert page.status_code == 200
    assert SENTIMENT in text and "tiny-classifier" in text
    assert SECRET not in text and "Globex" not in text
    assert "Silver band" in text and "target 100 ms" in text
    assert 'data-testid="slo-requests">155<' in text
    assert 'data-testid="slo-tokenised">35<' in text
    assert "thermal 21" in text


def test_the_table_shows_the_numbers_the_api_answers(member, client, usage, acme):
    headers = {"Authorization": f"Bearer {ApiKey.issue(acme, 'ci')[1]}"}
    api = client.get("/api/v1/slo?window=1h", headers=headers).json()
    page = member.get(PAGE + "?window=1h")
    table = page.context["table"]

    sentiment = next(row for row in api["models"] if row["model"] == SENTIMENT)
    assert [row.model for row in table.data] == [row["model"] for row in api["models"]]
    shown = next(row for row in table.data if row.model == SENTIMENT)
    assert shown.p95_ms == sentiment["p95_ms"] and shown.requests == sentiment["requests"]
    assert shown.offload_reasons == sentiment["offload_reasons"]
    assert page.context["report"].total.requests == api["total"]["requests"]
    # 80 answers in (5, 10] ms and 20 in (100, 250]: p95 is 100 + 150 × 15 / 20 ≈ 212.5 ms.
    assert sentiment["p95_ms"] == pytest.approx(212.5)
    shown_p95 = f'<span class="text-danger" title="target missed">{sentiment["p95_ms"]:.3g} ms'
    assert shown_p95 in page.content.decode()


def test_the_charts_draw_the_percentiles_against_the_band_target(member, usage):
    figures = charts(member.get(PAGE + "?window=1h"))

    assert set(figures) == {"latency", "errors", "serving", "tokenised"}
    latency = figures["latency"]
    names = {trace["name"] for trace in latency["data"]}
    assert {f"{SENTIMENT} p50", f"{SENTIMENT} p95", f"{SENTIMENT} p99"} <= names
    assert [shape["y0"] for shape in latency["layout"]["shapes"]] == [100]
    assert "Silver p95 target 100 ms" in str(latency["layout"]["annotations"])
    serving = {trace["name"]: trace["y"] for trace in figures["serving"]["data"]}
    assert serving == {"local": [84, 50], "regional: thermal": [21, 0]}
    tokenised = {trace["name"]: trace["y"] for trace in figures["tokenised"]["data"]}
    assert tokenised["tokenised"] == [35, 0]


def test_the_model_filter_keeps_one_model(member, usage):
    page = member.get(PAGE + f"?window=24h&model={SENTIMENT}")

    assert [row.model for row in page.context["table"].data] == [SENTIMENT]
    assert page.context["report"].total.requests == 105


def test_another_tenants_model_is_not_a_choice(member, usage):
    page = member.get(PAGE + f"?model={SECRET}")
    text = page.content.decode()

    assert page.status_code == 200
    assert "These filters are ignored" in text
    assert page.context["report"].total.requests == 155  # the filter was ignored, not applied
    # Only the member's own words come back (in the form's message), never globex's data.
    assert f'<option value="{SECRET}"' not in text
    assert SECRET not in str(charts(page)) and SECRET not in text.split("<table")[1]


def test_a_bad_window_falls_back_to_the_default_with_a_message(member, usage):
    page = member.get(PAGE + "?window=2y")

    assert page.status_code == 200
    assert page.context["window"] == "6h" and "These filters are ignored" in page.content.decode()


def test_another_tenants_page_is_not_found(member, usage):
    assert member.get("/portal/globex/slo/").status_code == 404
    assert member.get("/portal/nobody/slo/").status_code == 404


def test_a_visitor_is_sent_to_sign_in(client, usage):
    response = client.get(PAGE)

    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_poll_gets_only_the_live_part(member, usage):
    page = member.get(PAGE, headers={"HX-Request": "true"})
    text = page.content.decode()

    assert page.status_code == 200 and "<html" not in text
    assert 'data-chart-for="chart-latency"' in text and SENTIMENT in text
    assert "HX-Request" in page["Vary"]


def test_the_nav_links_to_the_page(member, usage):
    text = member.get("/portal/acme/").content.decode()

    assert f'href="{PAGE}"' in text


def test_an_empty_window_says_so(member, acme):
    page = member.get(PAGE)

    assert page.status_code == 200
    assert "No requests in this window" in page.content.decode()
    assert page.context["report"].target is None


def test_the_query_count_does_not_grow_with_the_models(member, acme, django_assert_num_queries):
    on_band(acme)
    now = timezone.now()
    served(acme, minutes_ago(now, 2), model="m0", latency={"le_10ms": 5})
    with CaptureQueriesContext(connection) as one:
        assert len(member.get(PAGE).context["table"].data) == 1
    for index in range(1, 12):
        served(acme, minutes_ago(now, index), model=f"m{index}", latency={"le_5ms": index},
               served_by="regional", reason="capacity", tokenised=index)  # fmt: skip

    with django_assert_num_queries(len(one.captured_queries)):
        page = member.get(PAGE)
    assert len(page.context["table"].data) == 12
    with django_assert_num_queries(len(one.captured_queries)):
        member.get(PAGE, headers={"HX-Request": "true"})


def test_the_table_footer_holds_the_totals(usage, acme):
    from fleet.tenant_slo import tenant_slo

    table = ModelSloTable(tenant_slo(acme, "1h"))
    footers = {column.name: column.footer for column in table.columns}

    assert footers["requests"] == "155" and footers["tokenised"] == "35"
    assert footers["model"] == "All models"
    assert footers["p95_ms"].startswith('<span class="text-danger" title="target missed">')
    assert footers["offload_reasons"] == "thermal 21"
