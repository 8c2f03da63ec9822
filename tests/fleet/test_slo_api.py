"""GET /api/v1/slo and /api/v1/slo/series: a tenant's own SLOs per model, computed from its
usage and never anyone else's."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import ApiKey, Tenant
from billing.models.usage import LATENCY_COLUMNS
from fleet.observability.frames import BUCKETS, histogram_quantile
from tests.fleet.slo_rows import minutes_ago, on_band, served

SENTIMENT = "acme.sentiment"
CATALOGUE = "tiny-classifier"
SECRET = "globex.secret"


def histogram(**columns: int) -> list[float]:
    counts = [0.0] * BUCKETS
    for name, count in columns.items():
        counts[LATENCY_COLUMNS.index(name)] = count
    return counts


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex Logistics", currency="EUR")


@pytest.fixture
def usage(acme, globex):
    """acme on a band with a 100 ms p95 target: its own model, partly offloaded, and the
    catalogue's; globex: its own model and the same catalogue model, in the same minutes."""
    now = timezone.now()
    t1, t2 = minutes_ago(now, 10), minutes_ago(now, 5)
    on_band(acme, p95_target_ms=100)
    served(acme, t1, model=SENTIMENT, latency={"le_10ms": 80}, errors=4, tokenised=30,
           energy_j=40.0)  # fmt: skip
    served(acme, t2, model=SENTIMENT, latency={"le_250ms": 20}, errors=1, tokenised=5,
           energy_j=20.0, served_by="regional", reason="thermal")  # fmt: skip
    served(acme, t2, model=SENTIMENT, latency={"le_50ms": 5}, energy_j=5.0,
           served_by="regional", reason="cost")  # fmt: skip
    served(acme, t2, model=CATALOGUE, latency={"le_5ms": 50}, energy_j=5.0)
    served(globex, t1, model=SECRET, latency={"le_1s": 1000}, errors=100, tokenised=1000)
    served(globex, t2, model=CATALOGUE, latency={"le_5s": 7}, errors=3)
    return {
        "acme": {"Authorization": f"Bearer {ApiKey.issue(acme, 'ci')[1]}"},
        "globex": {"Authorization": f"Bearer {ApiKey.issue(globex, 'ci')[1]}"},
        "t1": t1,
        "t2": t2,
    }


def by_model(body: dict) -> dict[str, dict]:
    return {row["model"]: row for row in body["models"]}


def test_it_answers_each_model_of_the_tenant_from_its_usage(client, usage):
    body = client.get("/api/v1/slo?window=1h", headers=usage["acme"]).json()
    sentiment = by_model(body)[SENTIMENT]

    assert body["tenant"] == "acme" and body["window"] == "1h" and body["step_s"] == 60
    assert body["band"] == "Silver" and body["p95_target_ms"] == 100
    assert [row["model"] for row in body["models"]] == [SENTIMENT, CATALOGUE]  # busiest first
    assert (sentiment["requests"], sentiment["successful"], sentiment["errors"]) == (110, 105, 5)
    assert sentiment["error_rate"] == pytest.approx(5 / 110)
    # 80 answers in (5, 10] ms, 5 in (25, 50], 20 in (100, 250]: rank 0.95 × 105 = 99.75 is the
    # 14.75th of the 20 in the last bucket.
    assert sentiment["p95_ms"] == pytest.approx(100 + 150 * 14.75 / 20)
    assert sentiment["p50_ms"] == pytest.approx(5 + 5 * 52.5 / 80)
    assert sentiment["p99_ms"] == pytest.approx(100 + 150 * 18.95 / 20)
    same = histogram(le_10ms=80, le_50ms=5, le_250ms=20)
    assert sentiment["p95_ms"] == pytest.approx(histogram_quantile(0.95, same) * 1000)
    assert sentiment["meets_p95_target"] is False
    assert sentiment["slower_than_target"] == pytest.approx(20 / 105)
    assert (sentiment["local"], sentiment["regional"]) == (84, 26)
    assert sentiment["offload_reasons"] == {"thermal": 21, "cost": 5}
    assert sentiment["tokenised"] == 35
    assert sentiment["energy_j"] == pytest.approx(65.0)
    assert sentiment["energy_per_inference_j"] == pytest.approx(65 / 110)


def test_the_catalogue_model_counts_only_the_tenants_own_requests(client, usage):
    body = client.get("/api/v1/slo?window=1h", headers=usage["acme"]).json()
    catalogue = by_model(body)[CATALOGUE]

    # globex's 10 requests of the same model, 3 of them errors, are not acme's.
    assert (catalogue["requests"], catalogue["errors"], catalogue["local"]) == (50, 0, 50)
    assert catalogue["p95_ms"] == pytest.approx(2.5 + 2.5 * 47.5 / 50)
    assert catalogue["meets_p95_target"] is True
    assert catalogue["offload_reasons"] == {} and catalogue["tokenised"] == 0


def test_the_totals_are_over_all_of_the_tenants_models(client, usage):
    total = client.get("/api/v1/slo?window=1h", headers=usage["acme"]).json()["total"]

    assert total["model"] == "all"
    assert (total["requests"], total["successful"], total["errors"]) == (160, 155, 5)
    assert (total["local"], total["regional"], total["tokenised"]) == (134, 26, 35)
    assert total["offload_reasons"] == {"thermal": 21, "cost": 5}
    both = histogram(le_5ms=50, le_10ms=80, le_50ms=5, le_250ms=20)
    assert total["p95_ms"] == pytest.approx(histogram_quantile(0.95, both) * 1000)
    assert total["p95_ms"] == pytest.approx(100 + 150 * 12.25 / 20)
    assert total["energy_per_inference_j"] == pytest.approx(70 / 160)


def test_the_hourly_rollups_of_a_long_window_give_the_same_numbers(client, usage):
    minutes = client.get("/api/v1/slo?window=1h", headers=usage["acme"]).json()
    hours = client.get("/api/v1/slo?window=7d", headers=usage["acme"]).json()

    assert hours["step_s"] == 3600
    assert hours["models"] == minutes["models"] and hours["total"] == minutes["total"]


def test_each_key_sees_only_its_own_tenant(client, usage):
    acme = client.get("/api/v1/slo?window=24h", headers=usage["acme"]).json()
    globex = client.get("/api/v1/slo?window=24h", headers=usage["globex"]).json()
    acme_series = client.get("/api/v1/slo/series?metric=requests", headers=usage["acme"]).json()

    assert SECRET not in str(acme) + str(acme_series) and "globex" not in str(acme)
    assert globex["tenant"] == "globex" and set(by_model(globex)) == {SECRET, CATALOGUE}
    assert by_model(globex)[CATALOGUE]["requests"] == 10
    assert globex["band"] is None and globex["total"]["meets_p95_target"] is None
    assert SENTIMENT not in str(globex)


def test_a_filter_on_another_tenants_model_answers_nothing(client, usage):
    theirs = client.get(f"/api/v1/slo?model={SECRET}", headers=usage["acme"])
    nobody = client.get("/api/v1/slo?model=no-such-model", headers=usage["acme"])
    series = client.get(f"/api/v1/slo/series?model={SECRET}", headers=usage["acme"])

    assert theirs.status_code == nobody.status_code == series.status_code == 200
    assert theirs.json()["models"] == [] and theirs.json()["total"]["requests"] == 0
    assert theirs.json()["models"] == nobody.json()["models"]
    assert series.json()["models"] == []
    assert all(point["value"] is None for point in series.json()["total"])


def test_a_filter_on_own_models_keeps_only_them(client, usage):
    body = client.get(f"/api/v1/slo?model={CATALOGUE}&model={SECRET}", headers=usage["acme"]).json()

    assert [row["model"] for row in body["models"]] == [CATALOGUE]
    assert body["total"]["requests"] == 50


def test_the_series_has_one_point_per_step_of_the_window(client, usage):
    body = client.get("/api/v1/slo/series?window=1h&metric=requests", headers=usage["acme"]).json()
    sentiment = next(s for s in body["models"] if s["model"] == SENTIMENT)
    values = {point["at"]: point["value"] for point in sentiment["points"]}

    assert body["metric"] == "requests" and body["unit"] == "per step" and body["step_s"] == 60
    assert len(sentiment["points"]) in (60, 61)  # the start is aligned down to the minute
    assert values[_iso(usage["t1"])] == 84 and values[_iso(usage["t2"])] == 26
    assert sum(values.values()) == 110  # every other step had no requests: zero
    totals = {point["at"]: point["value"] for point in body["total"]}
    assert totals[_iso(usage["t2"])] == 26 + 50


def test_the_p95_series_is_the_percentile_of_each_step(client, usage):
    body = client.get("/api/v1/slo/series?window=1h&metric=p95", headers=usage["acme"]).json()
    sentiment = next(s for s in body["models"] if s["model"] == SENTIMENT)
    values = {point["at"]: point["value"] for point in sentiment["points"]}

    assert body["unit"] == "ms" and body["p95_target_ms"] == 100
    assert values[_iso(usage["t1"])] == pytest.approx(5 + 5 * 76 / 80)
    assert values[_iso(usage["t2"])] == pytest.approx(
        histogram_quantile(0.95, histogram(le_50ms=5, le_250ms=20)) * 1000
    )
    assert sum(value is not None for value in values.values()) == 2


def test_the_error_rate_series_divides_errors_by_requests(client, usage):
    body = client.get(
        "/api/v1/slo/series?window=6h&metric=error_rate", headers=usage["acme"]
    ).json()
    sentiment = next(s for s in body["models"] if s["model"] == SENTIMENT)

    assert body["step_s"] == 300
    assert sum(p["value"] for p in sentiment["points"] if p["value"] is not None) > 0
    assert max(p["value"] or 0 for p in sentiment["points"]) <= 4 / 84 + 1 / 26 + 1e-9


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/v1/slo?window=2h", "window"),
        ("/api/v1/slo/series?window=1y", "window"),
        ("/api/v1/slo/series?metric=p90", "metric"),
        ("/api/v1/slo?model=not%20a%20model", "model must be a served model name"),
        ("/api/v1/slo?model=" + "x" * 201, "model must be a served model name"),
        ("/api/v1/slo?" + "&".join(f"model=m{i}" for i in range(21)), "at most 20 models"),
    ],
)
def test_bad_parameters_are_a_clear_error(client, usage, url, message):
    response = client.get(url, headers=usage["acme"])

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_without_a_valid_key_nothing_is_answered(client, usage):
    for url in ("/api/v1/slo", "/api/v1/slo/series"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer opk_wrong"}).status_code == 401


def test_a_revoked_key_reads_nothing(client, usage, acme):
    key, secret = ApiKey.issue(acme, "short-lived")
    key.revoke()

    response = client.get("/api/v1/slo", headers={"Authorization": f"Bearer {secret}"})

    assert response.status_code == 401


def test_the_query_count_does_not_grow_with_the_models(client, acme, django_assert_num_queries):
    on_band(acme)
    headers = {"Authorization": f"Bearer {ApiKey.issue(acme, 'ci')[1]}"}
    now = timezone.now()
    served(acme, minutes_ago(now, 3), model="m0", latency={"le_10ms": 5})
    client.get("/api/v1/slo", headers=headers)  # the key's first use records it, once a minute

    with CaptureQueriesContext(connection) as one:
        assert len(client.get("/api/v1/slo", headers=headers).json()["models"]) == 1
    for index in range(1, 12):
        served(acme, minutes_ago(now, index % 50), model=f"m{index}", latency={"le_5ms": index})

    with django_assert_num_queries(len(one.captured_queries)):
        assert len(client.get("/api/v1/slo", headers=headers).json()["models"]) == 12


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")
