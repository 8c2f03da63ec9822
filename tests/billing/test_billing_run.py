"""The month's billing run (billing/billing_run.py): every tenant's draft as refresh_draft
would make it, in a number of queries that does not grow with the number of tenants.

Each comparison runs the batch and the per-tenant path from the same state (the other one
rolled back to a savepoint), then compares every invoice of the database — drafts created or
refreshed, and the finalised ones that must not change — line by line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing.billing_run import RunSummary, refresh_month_drafts
from billing.invoicing import InvoicingError, finalise_invoice, refresh_draft
from billing.models import (
    BandTerms,
    FeatureActivation,
    FeatureBundle,
    FeatureBundlePrice,
    Invoice,
    LatencyBand,
    Price,
    Subscription,
    TaxRate,
    Tenant,
)
from tests.billing.usage_rows import AFTER_NOV, NOV, served

JAN = datetime(2026, 1, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 12, 8, 0, tzinfo=UTC)
AFTER_OCT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
# The run: after every November is over, and after hooli's November was finalised.
RUN = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

# Per 1,000 in each currency: (tiny, medium, large) local, then regional.
BOOKS = {
    "USD": (("0.06", "0.45", "2.20"), ("0.14", "1.00", "3.30")),
    "JPY": (("8", "64", "320"), ("19", "144", "480")),
    "GBP": (("0.04", None, None), ("0.10", None, None)),  # no medium nor large: unpriced
}


def price_book(currency, local, regional):
    for grade, per_1000 in zip(("tiny", "medium", "large"), local, strict=True):
        if per_1000 is not None:
            Price.objects.create(
                grade=grade, serving="local", currency=currency, per_1000=Decimal(per_1000),
                effective_from=JAN,
            )  # fmt: skip
    for grade, per_1000 in zip(("tiny", "medium", "large"), regional, strict=True):
        if per_1000 is not None:
            Price.objects.create(
                grade=grade, serving="regional", currency=currency, per_1000=Decimal(per_1000),
                effective_from=JAN,
            )  # fmt: skip


def band_terms(band, currency, fee, included, overage, target_ms, sla, *, since=JAN, share=50):
    tiny, medium, large = (Decimal(x) for x in overage)
    BandTerms.objects.create(
        band=band, currency=currency, effective_from=since, p95_target_ms=target_ms,
        monthly_fee=Decimal(fee), included_inferences=included, overage_tiny=tiny,
        overage_medium=medium, overage_large=large, sla_credit_percent=Decimal(sla),
        tenant_quality_credit_percent=Decimal(share),
    )  # fmt: skip


def tenant(slug, time_zone, currency, jurisdiction=""):
    return Tenant.objects.create(
        slug=slug, name=slug.capitalize(), time_zone=time_zone, currency=currency,
        jurisdiction=jurisdiction,
    )  # fmt: skip


@pytest.fixture
def month(acme_on_silver, silver, prices):
    """Tenants in five time zones and four currencies, November 2026 to bill:

    - acme (Berlin, EUR, VAT 19 %, Silver): usage local and regional (provider and tenant
      reasons, slow and fast), October finalised, then October usage arriving late (twice:
      before the run, and after it — not counted);
    - globex (New York, USD, no tax, Silver): usage on both sides of its month's edges (1
      November 02:00 UTC is still October in New York) and usage received after the run;
    - initech (Tokyo, JPY, JP 10 %): Silver then Gold from 16 November (prorated, the Gold
      terms changed on the 10th), an add-on from the 20th, an October draft (no late usage:
      a draft has no cutoff);
    - umbrella (UTC, EUR, no band): local usage at the price book, an add-on, a November
      draft already there (refreshed by the run), September finalised then voided;
    - hooli (London, GBP, UK 20 %): November finalised already — left as it is;
    - vandelay (Berlin, EUR, Silver): no usage at all;
    - piedpiper (London, GBP, no band): large usage the GBP price book does not price;
    - soylent (Berlin, EUR): a ledger row of a grade rating does not know;
    - mars: a time zone that does not exist.
    """
    acme = acme_on_silver
    for currency, (local, regional) in BOOKS.items():
        price_book(currency, local, regional)
    gold = LatencyBand.objects.create(slug="gold", name="Gold", position=3)
    band_terms(silver, "USD", "54.00", 1000, ("0.05", "0.33", "1.65"), 100, 10)
    band_terms(silver, "JPY", "7900", 2000, ("6", "48", "240"), 100, 10)
    band_terms(gold, "JPY", "32000", 50_000, ("5", "40", "200"), 25, 20, share=75)
    band_terms(
        gold, "JPY", "30000", 60_000, ("4", "36", "190"), 25, 20,
        since=datetime(2026, 11, 10, tzinfo=UTC), share=80,
    )  # fmt: skip
    band_terms(gold, "EUR", "199.00", 100_000, ("0.03", "0.25", "1.20"), 25, 15)
    TaxRate.objects.create(jurisdiction="JP", name="JCT 10 %", rate=Decimal("0.10"), effective_from=JAN)  # fmt: skip
    TaxRate.objects.create(jurisdiction="GB", name="VAT 20 %", rate=Decimal("0.20"), effective_from=JAN)  # fmt: skip
    analytics = FeatureBundle.objects.create(slug="analytics", name="Edge analytics")
    FeatureBundlePrice.objects.create(bundle=analytics, currency="EUR", monthly_price=Decimal("25.00"), effective_from=JAN)  # fmt: skip
    FeatureBundlePrice.objects.create(bundle=analytics, currency="JPY", monthly_price=Decimal("4000"), effective_from=JAN)  # fmt: skip

    # acme: October finalised, late October usage after it.
    served(acme, OCT, 800, received=OCT)
    finalise_invoice(refresh_draft(acme, 2026, 10, now=OCT), now=AFTER_OCT)
    served(acme, OCT, 2500, received=AFTER_OCT + timedelta(days=3))
    served(acme, OCT, 400, received=AFTER_OCT + timedelta(days=3), served_by="regional", reason="cost")  # fmt: skip
    served(acme, OCT, 999, received=RUN + timedelta(minutes=1))  # after the run: not yet
    served(acme, NOV, 3000, received=NOV)
    served(acme, NOV, 1000, received=NOV, served_by="regional", reason="thermal")
    served(acme, NOV, 700, received=NOV, grade="medium", served_by="regional", reason="tenant_quality", fast=False)  # fmt: skip
    served(acme, NOV + timedelta(days=3), 250, received=NOV, grade="medium", fast=False)
    served(acme, datetime(2026, 10, 31, 23, 30, tzinfo=UTC), 11, received=NOV)  # Berlin's 1 Nov

    globex = tenant("globex", "America/New_York", "USD")
    Subscription.objects.create(tenant=globex, band=silver, starts_at=JAN)
    served(globex, datetime(2026, 11, 1, 2, 0, tzinfo=UTC), 5000, received=NOV)  # October there
    served(globex, datetime(2026, 11, 1, 4, 0, tzinfo=UTC), 1200, received=NOV)  # its 1 November
    served(globex, datetime(2026, 12, 1, 4, 30, tzinfo=UTC), 60, received=NOV)  # its 30 November
    served(globex, datetime(2026, 12, 1, 5, 0, tzinfo=UTC), 70, received=NOV)  # its December
    served(globex, NOV, 300, received=NOV, grade="large", served_by="regional", reason="model_not_local")  # fmt: skip
    served(globex, NOV, 90, received=NOV, served_by="regional")  # regional, not an offload
    served(globex, NOV, 5555, received=RUN + timedelta(hours=1))  # received after the run

    initech = tenant("initech", "Asia/Tokyo", "JPY", "JP")
    gold_from = datetime(2026, 11, 15, 15, 0, tzinfo=UTC)  # 16 November in Tokyo
    Subscription.objects.create(tenant=initech, band=silver, starts_at=JAN, ends_at=gold_from)
    Subscription.objects.create(tenant=initech, band=gold, starts_at=gold_from)
    FeatureActivation.objects.create(tenant=initech, bundle=analytics, starts_at=datetime(2026, 11, 20, tzinfo=UTC))  # fmt: skip
    served(initech, OCT, 100, received=OCT)
    refresh_draft(initech, 2026, 10, now=AFTER_OCT)  # a draft: it has no cutoff for November
    served(initech, OCT, 100, received=AFTER_OCT + timedelta(days=1))
    served(initech, NOV, 70_000, received=NOV, fast=False)
    served(initech, NOV, 9000, received=NOV, grade="medium")
    served(initech, NOV, 1500, received=NOV, grade="large", served_by="regional", reason="capacity")  # fmt: skip
    served(initech, NOV, 2000, received=NOV, served_by="regional", reason="tenant_quality")

    umbrella = tenant("umbrella", "UTC", "EUR")
    FeatureActivation.objects.create(tenant=umbrella, bundle=analytics, starts_at=JAN)
    september = refresh_draft(umbrella, 2026, 9, now=datetime(2026, 9, 20, tzinfo=UTC))
    finalise_invoice(september, now=datetime(2026, 10, 1, 8, 0, tzinfo=UTC))
    september.move_to("void")
    served(umbrella, datetime(2026, 9, 15, tzinfo=UTC), 800, received=OCT)  # void: not late
    served(umbrella, NOV, 40_000, received=NOV)
    served(umbrella, NOV, 3000, received=NOV, grade="medium")
    refresh_draft(umbrella, 2026, 11, now=NOV + timedelta(minutes=1))  # a draft already
    served(umbrella, NOV + timedelta(days=1), 4000, received=NOV + timedelta(days=1))

    hooli = tenant("hooli", "Europe/London", "GBP", "GB")
    served(hooli, NOV, 600, received=NOV)
    finalise_invoice(refresh_draft(hooli, 2026, 11, now=NOV), now=AFTER_NOV)
    served(hooli, NOV, 1000, received=AFTER_NOV + timedelta(hours=1))  # for December's invoice

    vandelay = tenant("vandelay", "Europe/Berlin", "EUR", "DE")
    Subscription.objects.create(tenant=vandelay, band=silver, starts_at=JAN)

    piedpiper = tenant("piedpiper", "Europe/London", "GBP")
    served(piedpiper, NOV, 100, received=NOV)
    served(piedpiper, NOV, 10, received=NOV, grade="large")

    soylent = tenant("soylent", "Europe/Berlin", "EUR")
    served(soylent, NOV, 10, received=NOV)
    served(soylent, NOV, 10, received=NOV, grade="huge")

    tenant("mars", "Mars/Olympia_Mons", "EUR")


# --- the two paths from the same state ----------------------------------------------------------


class _Undo(Exception):
    pass


INVOICE_FIELDS = (
    "period_start", "period_end", "currency", "number", "subtotal", "tax", "total", "tax_name",
    "band", "p95_target_ms", "p95_ms", "inferences", "usage_cutoff", "refreshed_at",
    "finalised_at",
)  # fmt: skip
LINE_FIELDS = (
    "position", "kind", "description", "quantity", "unit_price", "amount", "grade", "serving",
    "reason",
)  # fmt: skip


def snapshot() -> dict:
    """Every invoice of the database as the two paths must leave it."""
    return {
        (i.tenant.slug, i.year, i.month, i.status): {
            "invoice": {name: getattr(i, name) for name in INVOICE_FIELDS},
            "lines": [
                tuple(getattr(line, name) for name in LINE_FIELDS)
                for line in i.lines.order_by("position")
            ],
            "events": [(e.kind, e.at) for e in i.events.order_by("at", "pk")],
        }
        for i in Invoice.objects.select_related("tenant").order_by("tenant__slug", "period_start")
    }


def undone(run, *, after=snapshot):
    """What `run()` returns and leaves (`after()`, by default every invoice), rolled back."""
    outcome = {}
    try:
        with transaction.atomic():
            outcome["result"] = run()
            outcome["after"] = after()
            raise _Undo
    except _Undo:
        pass
    return outcome["result"], outcome["after"]


def per_tenant(year: int, month: int, now: datetime) -> dict[str, str]:
    """refresh_draft for each tenant, as billing.closing.refresh_month does; the failures."""
    failed = {}
    for t in Tenant.objects.order_by("pk"):
        try:
            refresh_draft(t, year, month, now=now)
        except (InvoicingError, ValueError) as exc:
            failed[t.slug] = str(exc)
    return failed


def both(year: int, month: int, now: datetime) -> tuple[RunSummary, dict, dict[str, str], dict]:
    summary, batch = undone(lambda: refresh_month_drafts(year, month, now=now))
    failed, one_by_one = undone(lambda: per_tenant(year, month, now))
    return summary, batch, failed, one_by_one


def assert_same(batch: dict, one_by_one: dict) -> None:
    assert batch.keys() == one_by_one.keys()
    for key in batch:
        assert batch[key] == one_by_one[key], key


# --- tests -------------------------------------------------------------------------------------


def test_the_run_gives_every_tenant_the_draft_refresh_draft_gives_it(month):
    before = snapshot()

    summary, batch, failed, one_by_one = both(2026, 11, RUN)

    assert_same(batch, one_by_one)
    assert (summary.created, summary.refreshed) == (4, 1)  # umbrella's draft was there
    assert summary.finalised == ("hooli",)
    assert summary.failed.keys() == failed.keys() == {"piedpiper", "soylent", "mars"}
    assert all(summary.failed[slug].endswith(why) for slug, why in failed.items())
    # What the comparison covers: the cases the fixture sets up did happen.
    drafts = {slug: batch[(slug, 2026, 11, "draft")] for slug in ("acme", "globex", "initech", "umbrella", "vandelay")}  # fmt: skip
    kinds = {slug: [line[1] for line in d["lines"]] for slug, d in drafts.items()}
    assert "adjustment" in kinds["acme"] and "sla_credit" in kinds["acme"]
    assert "quality_credit" in kinds["acme"] and "quality_credit" in kinds["globex"]
    assert not any("adjustment" in k for s, k in kinds.items() if s != "acme")
    assert kinds["initech"].count("band_fee") == 2 and "addon" in kinds["initech"]
    assert "local_usage" in kinds["umbrella"] and "addon" in kinds["umbrella"]
    assert kinds["vandelay"] == ["band_fee", "tax"]
    assert drafts["globex"]["invoice"]["inferences"] == 1200 + 60 + 300 + 90  # its month's
    assert drafts["vandelay"]["invoice"]["p95_ms"] is None  # no p95 without usage
    assert all(d["invoice"]["usage_cutoff"] == RUN for d in drafts.values())
    assert [kind for kind, _ in drafts["umbrella"]["events"]] == ["created"]
    # Nothing else changed: the finalised and void invoices are as they were.
    for key, invoice in before.items():
        if key[3] != "draft" or key[2] != 11:
            assert batch[key] == invoice, key


def test_a_second_run_refreshes_the_drafts_as_refresh_draft_does(month):
    first = refresh_month_drafts(2026, 11, now=RUN - timedelta(hours=1))
    acme, initech = Tenant.objects.get(slug="acme"), Tenant.objects.get(slug="initech")
    served(acme, NOV, 250_000, received=RUN - timedelta(minutes=30), fast=False)
    served(acme, OCT, 1000, received=RUN - timedelta(minutes=30))  # late again
    served(initech, NOV, 5, received=RUN - timedelta(minutes=30), grade="large")

    summary, batch, _, one_by_one = both(2026, 11, RUN)

    assert (first.created, first.refreshed) == (4, 1)
    assert (summary.created, summary.refreshed) == (0, 5)
    assert_same(batch, one_by_one)
    acme_draft = batch[("acme", 2026, 11, "draft")]
    assert acme_draft["invoice"]["usage_cutoff"] == RUN
    assert [kind for kind, _ in acme_draft["events"]] == ["created"]
    assert Invoice.objects.filter(year=2026, month=11, status="draft").count() == 5


def test_finalised_months_are_left_as_they_are(month):
    hooli = Invoice.objects.get(tenant__slug="hooli", year=2026, month=11)
    lines = list(hooli.lines.values_list("kind", "amount"))

    summary = refresh_month_drafts(2026, 11, now=RUN)

    assert summary.finalised == ("hooli",)
    again = Invoice.objects.get(pk=hooli.pk)
    assert (again.status, again.total, again.usage_cutoff) == ("finalised", hooli.total, hooli.usage_cutoff)  # fmt: skip
    assert list(again.lines.values_list("kind", "amount")) == lines
    assert not Invoice.objects.filter(tenant__slug="hooli", year=2026, month=11, status="draft")


def test_a_tenant_whose_month_cannot_be_rated_is_reported_and_the_others_go_on(month):
    summary = refresh_month_drafts(2026, 11, now=RUN)

    assert summary.failed == {
        "piedpiper": "piedpiper 2026-11: The price book has no local price for 'large'",
        "soylent": "soylent 2026-11: Unknown grade 'huge' (one of tiny, medium, large)",
        "mars": "mars 2026-11: Unknown time zone 'Mars/Olympia_Mons' (an IANA name, e.g. Europe/Berlin)",
    }  # fmt: skip
    assert not Invoice.objects.filter(tenant__slug__in=["piedpiper", "soylent", "mars"])
    assert summary.rated == 5
    assert str(summary) == (
        "2026-11: 4 draft(s) created, 1 refreshed, 1 finalised left as they are, 3 not rated"
    )
    # Each says what refresh_draft says.
    with pytest.raises(InvoicingError, match="piedpiper 2026-11: The price book has no local"):
        refresh_draft(Tenant.objects.get(slug="piedpiper"), 2026, 11, now=RUN)


def test_a_run_without_tenants_does_nothing(db):
    summary = refresh_month_drafts(2026, 11, now=RUN)

    assert (summary.rated, summary.finalised, summary.failed) == (0, (), {})


# --- a fixed number of queries ---------------------------------------------------------------

ZONES = (("Europe/Berlin", "EUR"), ("America/New_York", "USD"), ("Asia/Tokyo", "JPY"))


def tenants_with_usage(count: int, silver) -> None:
    """`count` tenants over three time zones and currencies, each on Silver with October
    finalised, usage in November and October usage arriving after it: three lines each.

    Small on purpose: SQLite splits a bulk write every 999 parameters (Django's limit), so
    30 tenants' invoices must stay under it for the count to be fixed there too; PostgreSQL
    has no such limit."""
    for index in range(count):
        time_zone, currency = ZONES[index % len(ZONES)]
        t = tenant(f"tenant-{index:02d}", time_zone, currency, "DE" if currency == "EUR" else "")
        Subscription.objects.create(tenant=t, band=silver, starts_at=JAN)
        served(t, OCT, 10, received=OCT)
        finalise_invoice(refresh_draft(t, 2026, 10, now=OCT), now=AFTER_OCT)
        served(t, OCT, 3000, received=AFTER_OCT + timedelta(days=1))
        served(t, NOV, 500 + index, received=NOV)  # within the inclusion: no overage line


@pytest.fixture
def priced(prices, silver):
    for currency in ("USD", "JPY"):
        price_book(currency, *BOOKS[currency])
    band_terms(silver, "USD", "54.00", 1000, ("0.05", "0.33", "1.65"), 100, 10)
    band_terms(silver, "JPY", "7900", 2000, ("6", "48", "240"), 100, 10)
    TaxRate.objects.create(jurisdiction="DE", name="VAT 19 %", rate=Decimal("0.19"), effective_from=JAN)  # fmt: skip
    return silver


def queries_of(run) -> int:
    with CaptureQueriesContext(connection) as context:
        run()
    return len(context.captured_queries)


def test_the_number_of_queries_does_not_grow_with_the_number_of_tenants(
    priced, django_assert_max_num_queries
):
    def three():
        tenants_with_usage(3, priced)
        creating = queries_of(lambda: refresh_month_drafts(2026, 11, now=RUN))
        return creating, queries_of(lambda: refresh_month_drafts(2026, 11, now=RUN))

    (creating, refreshing), _ = undone(three, after=lambda: None)
    tenants_with_usage(30, priced)

    with django_assert_max_num_queries(creating):
        first = refresh_month_drafts(2026, 11, now=RUN)
    with django_assert_max_num_queries(refreshing):
        second = refresh_month_drafts(2026, 11, now=RUN)

    assert (first.created, second.refreshed) == (30, 30)
    assert creating <= 20 and refreshing <= 20
    assert Invoice.objects.filter(year=2026, month=11, lines__kind="adjustment").count() == 30
