"""Revenue and margin by node class and month: invoiced revenue shared out by the inferences
each class served, against the classes' cost model, per currency."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import Invoice, InvoiceLine, Tenant, UsageHourly
from billing.rating import month_bounds
from fleet.margins import _allocate, margin_report

# November 2026 in UTC: 720 hours. acme's invoice is its Berlin month, 23:00 UTC to 23:00 UTC.
BEFORE = datetime(2026, 10, 1, tzinfo=UTC)
MID_NOVEMBER = datetime(2026, 11, 16, tzinfo=UTC)


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex", currency="USD", time_zone="UTC")


def invoice(tenant, *lines, status="finalised", year=2026, month=11):
    """An invoice of the tenant's month with lines (kind, amount[, grade, serving, reason])."""
    start, end = month_bounds(year, month, tenant.time_zone)
    made = Invoice.objects.create(
        tenant=tenant, year=year, month=month, period_start=start, period_end=end,
        currency=tenant.currency, status=status,
    )  # fmt: skip
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=made,
            position=n,
            kind=kind,
            description=kind,
            quantity=1,
            amount=Decimal(amount),
            grade=rest[0] if rest else "",
            serving=rest[1] if len(rest) > 1 else "",
            reason=rest[2] if len(rest) > 2 else "",
        )  # fmt: skip
        for n, (kind, amount, *rest) in enumerate(lines, start=1)
    )
    return made


def served(tenant, count, *, node_class="nano", hour=datetime(2026, 11, 10, 12, tzinfo=UTC),
           served_by="local", reason="", energy_j=0.0, model="tiny-classifier"):  # fmt: skip
    return UsageHourly.objects.create(
        tenant=tenant, hour=hour, region="eu-west", node_class=node_class, model=model,
        version="1", grade="tiny", served_by=served_by, offload_reason=reason, count=count,
        energy_j=energy_j,
    )  # fmt: skip


@pytest.fixture
def fleet(eu_west, nano, standard, make_node):
    """Two nano nodes all month and a third from the 16th; one standard node; one nano
    enrolled in December, which November does not pay for."""
    make_node("nano-1", eu_west, nano, enrolled_at=BEFORE)
    make_node("nano-2", eu_west, nano, enrolled_at=BEFORE)
    make_node("nano-3", eu_west, nano, enrolled_at=MID_NOVEMBER)
    make_node("std-1", eu_west, standard, enrolled_at=BEFORE)
    make_node("nano-4", eu_west, nano, enrolled_at=datetime(2026, 12, 1, tzinfo=UTC))


def row(section, node_class):
    return next(r for r in section.rows if r.node_class == node_class)


def test_the_worked_example(acme, fleet, nano, standard):
    invoice(
        acme,
        ("band_fee", "300.00"),
        ("overage", "6.00", "tiny", "local"),
        ("regional_usage", "12.00", "tiny", "regional", "thermal"),
        ("quality_credit", "-8.00", "tiny", "regional", "thermal"),
        ("tax", "59.28"),  # owed to the state: not revenue
    )
    served(acme, 150_000, node_class="nano", energy_j=7_200_000.0)  # 2 kWh
    served(acme, 50_000, node_class="standard")
    served(acme, 100_000, node_class="standard", served_by="regional", reason="thermal")
    # 23:00 UTC on 30 November is 1 December in Berlin: not the invoice's usage.
    served(acme, 900_000, node_class="nano", hour=datetime(2026, 11, 30, 23, tzinfo=UTC))

    report = margin_report(2026, 11)

    assert report.hours == 720
    [eur] = report.sections
    assert eur.currency == "EUR" and eur.invoices == 1
    # 300 by all 300,000 inferences (half each); 6 by the tiny local ones (150k : 50k);
    # the regional charge and its credit by the regional ones (all standard).
    assert row(eur, "nano").revenue == Decimal("154.50")  # 150 + 4.50
    assert row(eur, "standard").revenue == Decimal("155.50")  # 150 + 1.50 + 12 − 8
    assert eur.revenue == Decimal("310.00") and eur.unattributed == 0
    # nano: 1,800 node-hours (720 + 720 + 360) × 0.027091 €/h; standard: 720 × 0.194425.
    assert nano.hourly_cost * 1800 == pytest.approx(Decimal("48.7639"), abs=Decimal("0.0001"))
    nano_cost, standard_cost = report.cost_of("nano"), report.cost_of("standard")
    assert (nano_cost.nodes, nano_cost.node_hours, nano_cost.cost) == (3, 1800, Decimal("48.76"))
    assert nano_cost.capital_cost + nano_cost.energy_cost == Decimal("48.76")
    assert (standard_cost.nodes, standard_cost.cost) == (1, Decimal("139.99"))
    assert row(eur, "nano").cost == Decimal("48.76")
    assert row(eur, "nano").margin == Decimal("105.74")
    assert row(eur, "nano").margin_percent == Decimal("68.4")
    assert row(eur, "standard").margin == Decimal("15.51")
    assert row(eur, "standard").margin_percent == Decimal("10.0")
    assert (eur.cost, eur.margin, eur.margin_percent) == (
        Decimal("188.75"),
        Decimal("121.25"),
        Decimal("39.1"),
    )
    # Measured energy beside the model, not in the cost: 2 kWh at 0.30 €/kWh.
    assert nano_cost.measured_energy_kwh == Decimal("2.000")
    assert nano_cost.measured_energy_cost == Decimal("0.60")
    assert nano_cost.inferences == 1_050_000  # the UTC month, whoever it was invoiced to
    assert report.notes == ()


def test_class_revenues_add_up_to_the_invoices_to_the_cent(acme, fleet):
    invoice(acme, ("band_fee", "1.00"))
    for node_class in ("nano", "standard", "accelerator"):
        served(acme, 1, node_class=node_class)

    report = margin_report(2026, 11)

    [eur] = report.sections
    # A third each: the cent left over goes to the first class by name.
    assert [(r.node_class, r.revenue) for r in eur.rows] == [
        ("nano", Decimal("0.33")),
        ("standard", Decimal("0.33")),
        ("accelerator", Decimal("0.34")),
    ]
    assert eur.revenue == Decimal("1.00")
    # This fleet has no accelerator class (any more): its share is revenue without a cost.
    assert row(eur, "accelerator").cost is None
    assert "accelerator served EUR invoices but is no longer a node class" in report.notes[0]


def test_drafts_and_void_invoices_are_not_revenue_unless_drafts_are_asked_for(acme, globex, fleet):
    Tenant.objects.filter(pk=globex.pk).update(currency="EUR")
    globex.refresh_from_db()
    invoice(acme, ("band_fee", "10.00"), status="draft")
    invoice(globex, ("band_fee", "20.00"), status="void")
    served(acme, 10)
    served(globex, 10)

    assert row(margin_report(2026, 11).section("EUR"), "nano").revenue == 0
    drafts = margin_report(2026, 11, include_drafts=True).section("EUR")
    assert row(drafts, "nano").revenue == Decimal("10.00") and drafts.invoices == 1


def test_an_invoice_with_no_inferences_is_left_unattributed(acme, fleet):
    invoice(acme, ("band_fee", "49.00"))

    report = margin_report(2026, 11)

    eur = report.section("EUR")
    assert eur.unattributed == Decimal("49.00") and eur.revenue == Decimal("49.00")
    assert all(r.revenue == 0 for r in eur.rows)
    assert eur.margin == Decimal("49.00") - Decimal("48.76") - Decimal("139.99")
    assert "49.00 EUR was invoiced to tenants with no inferences" in " ".join(report.notes)


def test_late_usage_of_an_earlier_month_is_shared_like_the_invoices_inferences(acme, fleet):
    invoice(acme, ("adjustment", "3.00", "medium", "local"))  # no medium served in November
    served(acme, 200, node_class="nano")
    served(acme, 100, node_class="standard")

    eur = margin_report(2026, 11).section("EUR")

    assert (row(eur, "nano").revenue, row(eur, "standard").revenue) == (
        Decimal("2.00"),
        Decimal("1.00"),
    )


def test_an_idle_class_costs_its_currency_and_earns_nothing(fleet):
    report = margin_report(2026, 11)

    [eur] = report.sections
    assert [(r.node_class, r.revenue, r.cost, r.margin_percent) for r in eur.rows] == [
        ("nano", 0, Decimal("48.76"), None),
        ("standard", 0, Decimal("139.99"), None),
    ]
    assert eur.margin == Decimal("-188.75")


def test_each_currency_is_its_own_section_and_costs_in_another_are_not_compared(
    acme, globex, fleet, nano
):
    invoice(acme, ("band_fee", "30.00"))
    invoice(globex, ("band_fee", "100.00"))
    served(acme, 150_000, node_class="nano")
    served(globex, 50_000, node_class="nano")

    report = margin_report(2026, 11)

    eur, usd = report.section("EUR"), report.section("USD")
    # nano's 48.76 EUR is shared by what it served: 3/4 for EUR invoices, 1/4 for USD ones.
    assert row(eur, "nano").cost == Decimal("36.57")
    assert row(eur, "nano").margin == Decimal("-6.57")
    assert eur.margin == Decimal("30.00") - Decimal("36.57") - Decimal("139.99")
    nano_usd = row(usd, "nano")
    assert nano_usd.revenue == Decimal("100.00")
    assert (nano_usd.cost, nano_usd.margin, nano_usd.margin_percent) == (None, None, None)
    assert (nano_usd.uncompared_cost, nano_usd.cost_currency) == (Decimal("12.19"), "EUR")
    assert usd.margin is None and usd.uncompared == (nano_usd,)
    assert report.notes == (
        "nano's costs are in EUR: its share (12.19 EUR) is not compared with USD revenue, "
        "so the USD margin is not given",
    )


@pytest.mark.parametrize("tenants", [1, 6])
def test_the_report_is_five_queries_however_many_tenants(tenants, fleet, django_assert_num_queries):
    for n in range(tenants):
        tenant = Tenant.objects.create(slug=f"t{n}", name=f"T{n}", currency="EUR")
        invoice(tenant, ("band_fee", "10.00"), ("overage", "1.00", "tiny", "local"))
        served(tenant, 100, node_class="nano")
        served(tenant, 50, node_class="standard")

    with django_assert_num_queries(5):
        report = margin_report(2026, 11)

    assert report.section("EUR").revenue == Decimal("11.00") * tenants
    assert report.section("EUR").invoices == tenants


def test_allocation_rounds_once_and_keeps_the_sum():
    shares = {"a": Decimal(2) / 3, "b": Decimal(2) / 3, "c": Decimal(2) / 3}

    assert _allocate(shares, "EUR") == {
        "a": Decimal("0.67"),
        "b": Decimal("0.67"),
        "c": Decimal("0.66"),
    }
    assert _allocate({"a": Decimal("1000.5"), "b": Decimal("-0.5")}, "JPY") == {
        "a": Decimal("1001"),
        "b": Decimal("-1"),
    }
