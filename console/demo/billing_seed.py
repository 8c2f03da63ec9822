"""The demo's commitments: three latency bands priced in each demo currency, a tenant on each,
tax rates for their jurisdictions, monthly budgets and a feature bundle (personalisation
signals: the nodes refuse a tenant's signals without it). Idempotent: a row
that exists is left as it is (the operators' once it exists)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from billing.models import (
    BandTerms,
    FeatureActivation,
    FeatureBundle,
    FeatureBundlePrice,
    LatencyBand,
    Subscription,
    TaxRate,
    Tenant,
)

# Terms take effect long before any demo month, so every month is priced.
SINCE = datetime(2026, 1, 1, tzinfo=UTC)

# slug, name, p95 target ms, SLA credit %, {currency: (fee, included, overage tiny/medium/large)}
BANDS = (
    ("bronze", "Bronze", 250.0, Decimal(5), {
        "EUR": ("19.00", 50_000, ("0.05", "0.40", "2.00")),
        "USD": ("21.00", 50_000, ("0.06", "0.45", "2.20")),
        "JPY": ("3000", 50_000, ("8", "64", "320")),
    }),
    ("silver", "Silver", 100.0, Decimal(10), {
        "EUR": ("49.00", 200_000, ("0.04", "0.35", "1.80")),
        "USD": ("54.00", 200_000, ("0.05", "0.40", "2.00")),
        "JPY": ("7800", 200_000, ("7", "56", "290")),
    }),
    ("gold", "Gold", 25.0, Decimal(20), {
        "EUR": ("149.00", 1_000_000, ("0.03", "0.30", "1.60")),
        "USD": ("164.00", 1_000_000, ("0.04", "0.35", "1.80")),
        "JPY": ("23800", 1_000_000, ("5", "48", "256")),
    }),
)  # fmt: skip

# tenant slug -> (band, jurisdiction, monthly budget in its currency, billing email)
TENANT_BILLING = {
    "acme": ("silver", "DE", Decimal("120.00"), "billing@acme.example"),
    "globex": ("gold", "US", Decimal("400.00"), "ap@globex.example"),
    "nakamura": ("bronze", "JP", Decimal("5000"), "keiri@nakamura.example"),
}
TAX_RATES = (("DE", "VAT 19 %", Decimal("0.19")), ("JP", "JCT 10 %", Decimal("0.10")))

FEATURE_BUNDLES = (
    ("personalisation", "Personalisation signals", ["signals"],
     {"EUR": "9.00", "USD": "10.00", "JPY": "1400"}),
)  # fmt: skip


def seed_billing(report) -> None:
    for position, (slug, name, target, sla, terms) in enumerate(BANDS, start=1):
        band, created = LatencyBand.objects.get_or_create(
            slug=slug, defaults={"name": name, "position": position}
        )
        if created:
            report.note(f"created latency band {name} (p95 ≤ {target:g} ms)")
        for currency, (fee, included, (tiny, medium, large)) in terms.items():
            BandTerms.objects.get_or_create(
                band=band,
                currency=currency,
                effective_from=SINCE,
                defaults={
                    "p95_target_ms": target,
                    "monthly_fee": Decimal(fee),
                    "included_inferences": included,
                    "overage_tiny": Decimal(tiny),
                    "overage_medium": Decimal(medium),
                    "overage_large": Decimal(large),
                    "sla_credit_percent": sla,
                },
            )
    for jurisdiction, name, rate in TAX_RATES:
        TaxRate.objects.get_or_create(
            jurisdiction=jurisdiction, effective_from=SINCE, defaults={"name": name, "rate": rate}
        )
    for slug, (band_slug, jurisdiction, budget, email) in TENANT_BILLING.items():
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            continue
        if not tenant.jurisdiction:
            tenant.jurisdiction, tenant.monthly_budget, tenant.billing_email = (
                jurisdiction,
                budget,
                email,
            )
            tenant.save(update_fields=["jurisdiction", "monthly_budget", "billing_email"])
        if not Subscription.objects.filter(tenant=tenant).exists():
            Subscription.objects.create(
                tenant=tenant, band=LatencyBand.objects.get(slug=band_slug), starts_at=SINCE
            )
            report.note(f"subscribed {slug} to the {band_slug} band")
    for slug, name, features, prices in FEATURE_BUNDLES:
        bundle, created = FeatureBundle.objects.get_or_create(
            slug=slug, defaults={"name": name, "features": features}
        )
        if created:
            report.note(f"created feature bundle {name} (unlocks {', '.join(features)})")
        for currency, price in prices.items():
            FeatureBundlePrice.objects.get_or_create(
                bundle=bundle,
                currency=currency,
                effective_from=SINCE,
                defaults={"monthly_price": Decimal(price)},
            )
    # acme sends its churn model personalisation signals: it has the add-on that allows them.
    acme = Tenant.objects.filter(slug="acme").first()
    personalisation = FeatureBundle.objects.get(slug="personalisation")
    if acme is not None and not FeatureActivation.objects.filter(tenant=acme).exists():
        FeatureActivation.objects.create(tenant=acme, bundle=personalisation, starts_at=SINCE)


# Last month's usage, so finance has a month to close in the demo: per tenant, hour and model,
# a day-shaped count; (model, grade, share of the tenant's traffic, latency bucket of most of
# it). Globex's medium model answers in the 25-50 ms bucket most of the time: its p95 misses
# the Gold band's 25 ms, and its invoice carries an SLA credit.
HISTORY_NODE = "demo-history"
HISTORY = {
    "acme": (
        ("tiny-classifier", "tiny", 0.7, "le_10ms"),
        ("random-mlp-medium", "medium", 0.3, "le_25ms"),
    ),
    "globex": (
        ("tiny-classifier", "tiny", 0.5, "le_10ms"),
        ("random-mlp-medium", "medium", 0.5, "le_50ms"),
    ),
    "nakamura": (("tiny-classifier", "tiny", 1.0, "le_5ms"),),
}
# Inferences an hour at the day's peak, per tenant.
PEAK_PER_HOUR = {"acme": 9000, "globex": 30000, "nakamura": 2500}
# Of regional serving, per offload reason: (share of the tenant's traffic, reason).
OFFLOADS = (("thermal", 0.03), ("capacity", 0.02), ("tenant_quality", 0.04))


def seed_usage_history(report, *, now: datetime | None = None) -> None:
    """Last month's usage of every demo tenant, written as batches of a node named
    `demo-history` (once), and the month's drafts, for finance to close."""
    import math
    from datetime import timedelta

    from django.utils import timezone

    from billing.invoicing import InvoicingError, month_of, previous_month, refresh_draft
    from billing.models import StaleRollup, UsageBatch, UsageRecord
    from billing.rating import month_bounds

    if UsageBatch.objects.filter(node_uid=HISTORY_NODE).exists():
        return
    now = now or timezone.now()
    seq = 0
    for slug, mix in HISTORY.items():
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            continue
        year, month = previous_month(*month_of(tenant, now))
        start, end = month_bounds(year, month, tenant.time_zone)
        seq += 1
        batch = UsageBatch.objects.create(
            node_uid=HISTORY_NODE, batch_seq=seq, region="eu-west", node_class="standard",
            created_at=end, received_at=end, digest=f"history-{slug}", raw=b"",
        )  # fmt: skip
        rows, hour, marks = [], start, set()
        while hour < end:
            shape = 0.55 + 0.45 * math.sin((hour.hour - 6) / 24 * 2 * math.pi)
            total = int(PEAK_PER_HOUR[slug] * shape)
            for model, grade, share, bucket in mix:
                count = int(total * share)
                offloaded = [(reason, int(count * part)) for reason, part in OFFLOADS]
                local = count - sum(n for _, n in offloaded)
                for served_by, reason, n in [("local", "", local)] + [
                    ("regional", reason, n) for reason, n in offloaded
                ]:
                    if n <= 0:
                        continue
                    slow = n // 50  # 2 % in the next bucket up
                    rows.append(
                        UsageRecord(
                            batch=batch, tenant=tenant, node_uid=HISTORY_NODE, region="eu-west",
                            node_class="standard", model=model, version="1", grade=grade,
                            served_by=served_by, offload_reason=reason, minute=hour,
                            received_at=end, count=n, errors=n // 400,
                            latency_sum_s=n * 0.01, energy_j=n * 0.02,
                            **{bucket: n - slow, "le_100ms": slow},
                        )
                    )  # fmt: skip
            marks.add(hour)
            hour += timedelta(hours=1)
        UsageRecord.objects.bulk_create(rows, batch_size=2000)
        StaleRollup.objects.bulk_create(
            [StaleRollup(tenant=tenant, hour=h) for h in marks], ignore_conflicts=True
        )
        report.note(f"wrote {slug}'s usage of {year}-{month:02d} ({len(rows)} records)")
        try:
            refresh_draft(tenant, year, month, now=now)
        except InvoicingError as exc:  # a price book from an older demo run
            report.note(f"no draft of {slug}'s {year}-{month:02d}: {exc}")
