"""The price book: versioned by effective date, append-only once in effect, set by operators
(page and API), read by finance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import Price, PriceInEffectError

pytestmark = pytest.mark.django_db

PRICES_API = "/api/v1/prices"


def add_price(grade="tiny", serving="local", per_1000="0.05", *, at, currency="EUR", **fields):
    return Price.objects.create(
        grade=grade,
        serving=serving,
        currency=currency,
        per_1000=Decimal(per_1000),
        effective_from=at,
        **fields,
    )


@pytest.fixture
def now():
    return timezone.now()


# --- the model ------------------------------------------------------------------------------


def test_in_effect_picks_the_latest_effective_row_per_key_and_ignores_future_ones(now):
    add_price("tiny", "local", "0.05", at=now - timedelta(days=60))
    tiny_local = add_price("tiny", "local", "0.04", at=now - timedelta(days=1))
    add_price("tiny", "local", "0.03", at=now + timedelta(days=1))
    tiny_regional = add_price("tiny", "regional", "0.08", at=now - timedelta(days=60))
    tiny_local_usd = add_price("tiny", "local", "0.06", at=now - timedelta(days=5), currency="USD")
    add_price("large", "local", "2.00", at=now + timedelta(hours=1))  # nothing in effect yet

    in_effect = Price.objects.in_effect()

    assert {p.pk for p in in_effect} == {tiny_local.pk, tiny_regional.pk, tiny_local_usd.pk}


def test_a_scheduled_change_takes_over_at_its_time(now):
    add_price("medium", "regional", "0.60", at=now - timedelta(days=10))
    change_at = now + timedelta(days=3)
    add_price("medium", "regional", "0.55", at=change_at)

    def price_at(at):
        return [p.per_1000 for p in Price.objects.in_effect(at)]

    assert price_at(now) == [Decimal("0.60")]
    assert price_at(change_at - timedelta(microseconds=1)) == [Decimal("0.60")]
    assert price_at(change_at) == [Decimal("0.55")]
    assert price_at(now - timedelta(days=11)) == []
    assert Price.objects.price_for("medium", "regional", "EUR") == Decimal("0.60")
    assert Price.objects.price_for("medium", "regional", "EUR", at=change_at) == Decimal("0.55")


def test_price_for_is_none_where_no_price_is_set(now):
    add_price("tiny", "local", "0.05", at=now - timedelta(days=1))
    assert Price.objects.price_for("tiny", "regional", "EUR") is None
    assert Price.objects.price_for("tiny", "local", "JPY") is None
    assert Price.objects.price_for("tiny", "local", "EUR", at=now - timedelta(days=2)) is None


def test_a_filter_before_in_effect_does_not_bring_back_a_superseded_price(now):
    add_price("tiny", "local", "0.09", at=now - timedelta(days=60))
    add_price("tiny", "local", "0.04", at=now - timedelta(days=1))

    dear = Price.objects.filter(per_1000__gt=Decimal("0.05")).in_effect()

    assert list(dear) == []


def test_in_effect_is_one_query(now, django_assert_num_queries):
    for days in range(1, 6):
        for grade in ("tiny", "medium", "large"):
            add_price(grade, "local", f"0.0{days}", at=now - timedelta(days=days))
    with django_assert_num_queries(1):
        assert len(Price.objects.in_effect()) == 3


def test_in_effect_refuses_a_naive_time():
    with pytest.raises(ValueError, match="naive"):
        Price.objects.in_effect(datetime(2026, 1, 1))  # noqa: DTZ001


def test_a_price_in_effect_cannot_be_changed_or_deleted(now):
    price = add_price(at=now - timedelta(days=1))

    price.per_1000 = Decimal("0.01")
    with pytest.raises(PriceInEffectError, match="cannot be changed"):
        price.save()
    with pytest.raises(PriceInEffectError, match="cannot be deleted"):
        price.delete()
    with pytest.raises(PriceInEffectError):
        Price.objects.filter(pk=price.pk).update(per_1000=Decimal("0.01"))
    with pytest.raises(PriceInEffectError):
        Price.objects.all().delete()

    price.refresh_from_db()
    assert price.per_1000 == Decimal("0.05")


def test_a_scheduled_price_can_be_deleted(now):
    add_price("tiny", "local", "0.05", at=now - timedelta(days=1))
    scheduled = add_price("tiny", "local", "0.04", at=now + timedelta(days=1))

    scheduled.delete()

    assert list(Price.objects.values_list("per_1000", flat=True)) == [Decimal("0.05")]


def test_prices_keep_six_decimals_exactly(now):
    for amount in ("0.000001", "123456.789012", "0"):
        add_price("tiny", "local", amount, at=now - timedelta(days=len(amount)))
    stored = sorted(Price.objects.values_list("per_1000", flat=True))
    assert stored == [Decimal("0"), Decimal("0.000001"), Decimal("123456.789012")]
    assert str(Price.objects.get(per_1000=Decimal("0.000001")).per_1000) == "0.000001"


def test_a_new_price_may_not_take_effect_in_the_past(now):
    price = Price(grade="tiny", serving="local", per_1000=Decimal("1"), effective_from=now)
    price.effective_from = now - timedelta(hours=1)
    with pytest.raises(ValidationError, match="has passed"):
        price.full_clean()


def test_just_now_means_the_moment_of_scheduling(now):
    price = Price(
        grade="tiny",
        serving="local",
        per_1000=Decimal("1"),
        effective_from=now - timedelta(minutes=2),
    )
    price.full_clean()
    assert price.effective_from >= now


def test_a_negative_price_is_refused(now):
    price = Price(
        grade="tiny", serving="local", per_1000=Decimal("-0.01"), effective_from=now + timedelta(1)
    )
    with pytest.raises(ValidationError, match="cannot be negative"):
        price.full_clean()


# --- the page -------------------------------------------------------------------------------


@pytest.fixture
def book(now):
    """Tiny and large, local and regional, in EUR; a scheduled change of large regional."""
    made = {
        "tiny_local_old": add_price("tiny", "local", "0.06", at=now - timedelta(days=40)),
        "tiny_local": add_price("tiny", "local", "0.05", at=now - timedelta(days=10)),
        "tiny_regional": add_price("tiny", "regional", "0.08", at=now - timedelta(days=10)),
        "large_regional": add_price("large", "regional", "3.00", at=now - timedelta(days=10)),
        "large_regional_next": add_price(
            "large", "regional", "2.70", at=now + timedelta(days=5), note="more capacity"
        ),
    }
    return made


def test_operators_see_what_is_in_effect_scheduled_and_the_history(client, alice, book):
    client.force_login(alice)
    response = client.get("/finance/prices/")

    assert response.status_code == 200
    grid = {(row["grade"].value, row["currency"]): row["cells"] for row in response.context["grid"]}
    assert grid[("tiny", "EUR")] == [book["tiny_local"], book["tiny_regional"]]
    assert grid[("medium", "EUR")] == [None, None]
    assert grid[("large", "EUR")] == [None, book["large_regional"]]
    assert response.context["scheduled"] == [(book["large_regional_next"], book["large_regional"])]
    assert len(response.context["table"].rows) == 5
    html = response.content.decode()
    assert "Schedule a price" in html
    assert "superseded" in html and "scheduled" in html and "in effect" in html


def test_an_operator_schedules_a_price(client, alice, now):
    client.force_login(alice)
    when = (now + timedelta(days=2)).astimezone(UTC).replace(second=0, microsecond=0)
    response = client.post(
        "/finance/prices/",
        {
            "grade": "medium",
            "serving": "local",
            "currency": "eur",
            "per_1000": "0.000001",
            "effective_from": when.strftime("%Y-%m-%dT%H:%M"),
            "note": "launch",
        },
        follow=True,
    )

    assert response.redirect_chain == [("/finance/prices/", 302)]
    price = Price.objects.get()
    assert (price.grade, price.serving, price.currency) == ("medium", "local", "EUR")
    assert price.per_1000 == Decimal("0.000001")
    assert price.effective_from == when
    assert price.created_by == alice
    assert "Scheduled: medium/local EUR 0.000001" in response.content.decode()


def test_an_empty_effective_from_means_now(client, alice, now):
    client.force_login(alice)
    client.post(
        "/finance/prices/",
        {"grade": "tiny", "serving": "local", "currency": "EUR", "per_1000": "1"},
    )
    assert Price.objects.price_for("tiny", "local", "EUR") == Decimal("1")


def test_the_page_refuses_a_time_in_the_past_and_says_why(client, alice, now):
    client.force_login(alice)
    yesterday = (now - timedelta(days=1)).astimezone(UTC)
    response = client.post(
        "/finance/prices/",
        {
            "grade": "tiny",
            "serving": "local",
            "currency": "EUR",
            "per_1000": "0.05",
            "effective_from": yesterday.strftime("%Y-%m-%dT%H:%M"),
        },
    )

    assert response.status_code == 200
    assert not Price.objects.exists()
    errors = response.context["form"].errors["effective_from"]
    assert "has passed" in errors[0] and "never in the past" in errors[0]
    assert "has passed" in response.content.decode()


def test_the_page_refuses_a_second_price_for_the_same_key_and_time(client, alice, now):
    client.force_login(alice)
    when = (now + timedelta(days=1)).astimezone(UTC).replace(second=0, microsecond=0)
    add_price(at=when)
    response = client.post(
        "/finance/prices/",
        {
            "grade": "tiny",
            "serving": "local",
            "currency": "EUR",
            "per_1000": "0.04",
            "effective_from": when.strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert Price.objects.count() == 1
    assert "already takes effect at that time" in response.content.decode()


def test_an_operator_deletes_a_scheduled_price_but_not_one_in_effect(client, alice, book):
    client.force_login(alice)

    response = client.post(f"/finance/prices/{book['large_regional_next'].pk}/delete/", follow=True)
    assert "Withdrawn: large/regional EUR 2.70" in response.content.decode()
    assert not Price.objects.filter(pk=book["large_regional_next"].pk).exists()

    response = client.post(f"/finance/prices/{book['tiny_local'].pk}/delete/", follow=True)
    assert "cannot be deleted" in response.content.decode()
    assert Price.objects.filter(pk=book["tiny_local"].pk).exists()


def test_finance_reads_the_price_book_without_a_form(client, bob, book):
    client.force_login(bob)
    response = client.get("/finance/prices/")

    assert response.status_code == 200
    assert response.context["form"] is None
    html = response.content.decode()
    assert "Schedule a price" not in html
    assert "/delete/" not in html
    assert "read-only" in html


def test_finance_cannot_schedule_or_delete_prices(client, bob, book, now):
    client.force_login(bob)
    post = client.post(
        "/finance/prices/",
        {"grade": "tiny", "serving": "local", "currency": "EUR", "per_1000": "0.01"},
    )
    delete = client.post(f"/finance/prices/{book['large_regional_next'].pk}/delete/")

    assert (post.status_code, delete.status_code) == (403, 403)
    assert Price.objects.count() == len(book)


def test_tenant_members_cannot_see_the_prices(client, carol, book):
    client.force_login(carol)
    assert client.get("/finance/prices/").status_code == 403
    assert (
        client.post(f"/finance/prices/{book['large_regional_next'].pk}/delete/").status_code == 403
    )


def test_the_history_filters_by_grade_serving_and_currency(client, bob, book, now):
    add_price("tiny", "local", "7", at=now - timedelta(days=3), currency="JPY")
    client.force_login(bob)

    def rows(**query):
        return {p.pk for p in client.get("/finance/prices/", query).context["table"].data}

    assert rows(grade="large") == {book["large_regional"].pk, book["large_regional_next"].pk}
    assert rows(serving="local", currency="EUR") == {
        book["tiny_local"].pk,
        book["tiny_local_old"].pk,
    }
    assert len(rows(currency="JPY")) == 1


def test_the_prices_page_query_count_does_not_grow_with_prices(
    client, alice, book, now, django_assert_max_num_queries
):
    client.force_login(alice)
    with django_assert_max_num_queries(12) as few:
        client.get("/finance/prices/")
    for days in range(1, 30):
        for grade in ("tiny", "medium", "large"):
            for serving in ("local", "regional"):
                add_price(grade, serving, "1", at=now - timedelta(days=days, hours=1))
                add_price(grade, serving, "1", at=now + timedelta(days=days, hours=1))
        add_price("tiny", "local", "1", at=now - timedelta(days=days), currency=f"X{days:02d}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get("/finance/prices/")


def test_the_navigation_links_to_the_prices(client, bob):
    client.force_login(bob)
    assert 'href="/finance/prices/"' in client.get("/finance/accounts/").content.decode()


# --- the API --------------------------------------------------------------------------------


def post_price(client, **body):
    return client.post(PRICES_API, body, content_type="application/json")


def test_the_api_lists_the_prices_in_effect_now_or_at_a_time(client, alice, book, now):
    client.force_login(alice)

    current = client.get(PRICES_API)
    later = client.get(PRICES_API, {"at": (now + timedelta(days=6)).isoformat()})

    assert current.status_code == 200, current.content
    assert {(p["grade"], p["serving"], p["per_1000"]) for p in current.json()} == {
        ("tiny", "local", "0.050000"),
        ("tiny", "regional", "0.080000"),
        ("large", "regional", "3.000000"),
    }
    assert ("large", "regional", "2.700000") in {
        (p["grade"], p["serving"], p["per_1000"]) for p in later.json()
    }


def test_the_api_refuses_a_naive_at(client, alice):
    client.force_login(alice)
    response = client.get(PRICES_API, {"at": "2026-01-01T00:00:00"})
    assert response.status_code == 400
    assert "time zone offset" in response.json()["error"]


def test_the_api_schedules_a_price(client, alice, now):
    client.force_login(alice)
    when = (now + timedelta(days=1)).astimezone(UTC).replace(microsecond=0)

    response = post_price(
        client,
        grade="large",
        serving="regional",
        per_1000="2.500001",
        effective_from=when.isoformat(),
        note="from the API",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["grade"], body["serving"], body["currency"]) == ("large", "regional", "EUR")
    assert body["per_1000"] == "2.500001"
    price = Price.objects.get(pk=body["id"])
    assert price.effective_from == when
    assert price.created_by == alice


def test_the_api_schedules_a_price_from_now_without_effective_from(client, alice):
    client.force_login(alice)
    response = post_price(client, grade="tiny", serving="local", per_1000=0.05)
    assert response.status_code == 201, response.content
    assert Price.objects.price_for("tiny", "local", "EUR") == Decimal("0.05")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"effective_from": "2020-01-01T00:00:00Z"}, "has passed"),
        ({"effective_from": "2030-01-01T00:00:00"}, "time zone offset"),
        ({"per_1000": "-0.01"}, "cannot be negative"),
        ({"per_1000": "0.0000001"}, "decimal places"),
        ({"per_1000": "cheap"}, "per_1000"),
        ({"grade": "huge"}, "There is no grade “huge”"),
        ({"serving": "orbital"}, "local or regional"),
        ({"currency": "EURO"}, "currency"),
        ({"grade": None}, "grade"),
    ],
)
def test_the_api_answers_bad_input_with_400_and_why(client, alice, body, message):
    client.force_login(alice)
    payload = {"grade": "tiny", "serving": "local", "per_1000": "0.05", **body}
    payload = {k: v for k, v in payload.items() if v is not None}

    response = post_price(client, **payload)

    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert not Price.objects.exists()


def test_the_api_refuses_a_second_price_for_the_same_key_and_time(client, alice, now):
    client.force_login(alice)
    when = (now + timedelta(days=1)).isoformat()
    assert post_price(client, grade="tiny", serving="local", per_1000="1", effective_from=when)
    response = post_price(client, grade="tiny", serving="local", per_1000="2", effective_from=when)
    assert response.status_code == 400
    assert "already takes effect" in response.json()["error"]


def test_the_prices_api_is_for_operators(client, bob, carol):
    assert client.get(PRICES_API).status_code == 401
    client.force_login(bob)
    assert client.get(PRICES_API).status_code == 401
    client.force_login(carol)
    assert post_price(client, grade="tiny", serving="local", per_1000="1").status_code == 401
    assert not Price.objects.exists()


# --- the demo's price book ------------------------------------------------------------------


def test_the_demo_seeds_a_price_book_once_with_one_scheduled_change():
    from console.demo.seed import SeedReport, seed_prices

    at = datetime(2026, 12, 15, 9, 30, tzinfo=UTC)
    first, second = SeedReport(), SeedReport()
    seed_prices(first, now=at)
    seed_prices(second, now=at + timedelta(days=40))

    # Six prices in each of EUR, USD and JPY (the demo tenants' currencies), one scheduled.
    assert len(first.changes) == 19 and second.changes == []
    in_effect = Price.objects.in_effect(at)
    assert in_effect.count() == 18
    # From before last month began anywhere, so the demo's history of last month is priced.
    assert {p.effective_from for p in in_effect} == {datetime(2026, 10, 30, tzinfo=UTC)}
    for currency in ("EUR", "USD", "JPY"):
        for grade in ("tiny", "medium", "large"):
            local = Price.objects.price_for(grade, "local", currency, at)
            assert Price.objects.price_for(grade, "regional", currency, at) > local
    assert Price.objects.scheduled(at).get().effective_from == datetime(2027, 1, 1, tzinfo=UTC)


# --- the admin ------------------------------------------------------------------------------


def test_the_admin_shows_a_price_in_effect_read_only_and_keeps_it(admin_client, now):
    old = add_price(at=now - timedelta(days=1))
    scheduled = add_price(at=now + timedelta(days=1))

    assert (
        'name="_save"'
        not in admin_client.get(f"/admin/billing/price/{old.pk}/change/").content.decode()
    )
    assert (
        admin_client.post(f"/admin/billing/price/{old.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert (
        'name="_save"'
        in admin_client.get(f"/admin/billing/price/{scheduled.pk}/change/").content.decode()
    )
    admin_client.post(f"/admin/billing/price/{scheduled.pk}/delete/", {"post": "yes"})

    assert list(Price.objects.all()) == [old]
