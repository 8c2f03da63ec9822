"""The demo's commitments: three latency bands priced in each demo currency, a tenant on each,
tax rates for their jurisdictions, monthly budgets and two feature bundles. Idempotent: a row
that exists is left as it is (the operators' once it exists)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from billing.models import (
    BandTerms,
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
    "acme": ("silver", "DE", Decimal("60.00"), "billing@acme.example"),
    "globex": ("gold", "US", Decimal("400.00"), "ap@globex.example"),
    "nakamura": ("bronze", "JP", Decimal("5000"), "keiri@nakamura.example"),
}
TAX_RATES = (("DE", "VAT 19 %", Decimal("0.19")), ("JP", "JCT 10 %", Decimal("0.10")))

FEATURE_BUNDLES = (
    ("personalisation", "Personalisation signals", ["signals"],
     {"EUR": "9.00", "USD": "10.00", "JPY": "1400"}),
    ("edge-analytics", "Edge analytics", ["edge_analytics"],
     {"EUR": "15.00", "USD": "16.50", "JPY": "2400"}),
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
        bundle, _ = FeatureBundle.objects.get_or_create(
            slug=slug, defaults={"name": name, "features": features}
        )
        for currency, price in prices.items():
            FeatureBundlePrice.objects.get_or_create(
                bundle=bundle,
                currency=currency,
                effective_from=SINCE,
                defaults={"monthly_price": Decimal(price)},
            )
