"""A tenant's owner changes its latency band; the month is prorated between the two."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.invoicing import refresh_draft
from billing.models import BandTerms, LatencyBand, Membership, Subscription
from billing.plans import PlanError, change_band

MID_NOV = datetime(2026, 11, 15, 23, 0, tzinfo=UTC)  # about half of acme's (Berlin) November


@pytest.fixture
def gold(db):
    band = LatencyBand.objects.create(slug="gold", name="Gold", position=3)
    BandTerms.objects.create(
        band=band, currency="EUR", effective_from=datetime(2026, 1, 1, tzinfo=UTC),
        p95_target_ms=25, monthly_fee=Decimal("149.00"), included_inferences=1_000_000,
        overage_tiny=Decimal("0.03"), overage_medium=Decimal("0.30"), overage_large=Decimal("1.60"),
        sla_credit_percent=Decimal(20),
    )  # fmt: skip
    return band


def test_a_band_change_mid_month_prorates_both_fees(acme_on_silver, gold):
    change_band(acme_on_silver, gold, at=MID_NOV)

    draft = refresh_draft(acme_on_silver, 2026, 11, now=MID_NOV)

    fees = {line.description: line.amount for line in draft.lines.filter(kind="band_fee")}
    assert len(fees) == 2
    assert sum(fees.values()) == pytest.approx(
        Decimal("49") * Decimal("0.5") + Decimal("149") * Decimal("0.5"), abs=Decimal("0.02")
    )
    assert [s.band.slug for s in Subscription.objects.order_by("starts_at")] == ["silver", "gold"]


def test_the_same_band_again_is_an_error_that_says_so(acme_on_silver, silver):
    with pytest.raises(PlanError, match="on the Silver band already"):
        change_band(acme_on_silver, silver)


def test_an_owner_moves_band_in_the_portal_and_a_developer_cannot(
    client, carol, acme_on_silver, gold
):
    client.force_login(carol)

    page = client.post("/portal/acme/band/", {"band": "gold"}, follow=True)

    assert "You are on the Gold band from now" in page.content.decode()
    Membership.objects.filter(user=carol).update(role="developer")
    assert client.post("/portal/acme/band/", {"band": "silver"}).status_code == 403
    assert Subscription.objects.current().get(tenant=acme_on_silver).band == gold
