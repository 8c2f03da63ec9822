"""Billing fixtures: a EUR price book, the Silver band, acme on it in Germany (VAT 19 %)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import BandTerms, LatencyBand, Price, Subscription, TaxRate, Tenant


@pytest.fixture
def prices(db):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    book = {
        ("tiny", "local"): "0.05",
        ("tiny", "regional"): "0.12",
        ("medium", "local"): "0.40",
        ("medium", "regional"): "0.90",
        ("large", "local"): "2.00",
        ("large", "regional"): "3.00",
    }
    for (grade, serving), per_1000 in book.items():
        Price.objects.create(
            grade=grade, serving=serving, currency="EUR", per_1000=Decimal(per_1000),
            effective_from=start,
        )  # fmt: skip


@pytest.fixture
def silver(db):
    band = LatencyBand.objects.create(slug="silver", name="Silver", position=2)
    BandTerms.objects.create(
        band=band, currency="EUR", effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        p95_target_ms=100, monthly_fee=Decimal("49.00"), included_inferences=1000,
        overage_tiny=Decimal("0.04"), overage_medium=Decimal("0.30"), overage_large=Decimal("1.50"),
        sla_credit_percent=Decimal(10), tenant_quality_credit_percent=Decimal(50),
    )  # fmt: skip
    return band


@pytest.fixture
def acme_on_silver(acme, silver, prices):
    Tenant.objects.filter(pk=acme.pk).update(jurisdiction="DE")
    TaxRate.objects.create(
        jurisdiction="DE", name="VAT 19 %", rate=Decimal("0.19"),
        effective_from=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    Subscription.objects.create(
        tenant=acme, band=silver, starts_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    acme.refresh_from_db()
    return acme
