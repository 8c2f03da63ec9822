"""A month's billing run on PostgreSQL: `billing.billing_run.refresh_month_drafts` for every
tenant against a bare SQL aggregation of the same usage rows, measured in the same run.

Set-up, each run: a fresh PostgreSQL database (`--database`, default outpost_bench_billing;
dropped and created, dropped again at the end unless `--keep`), migrated in this process
(`django.setup()` with DATABASE_URL pointing at it and production-like settings: DEBUG off, so
no query log), then seeded with the ORM's bulk_create (no signals): a price book, the Bronze,
Silver and Gold bands and an add-on in four currencies (EUR, GBP, USD, JPY), tax rates, and
`--tenants` tenants (default 1,000) in five time zones (Berlin, London, New York, Tokyo, UTC),
each on a band (one in twenty changing band mid-month, prorated; Gold's terms change on the
10th), one in five with the add-on, each with August and September 2026 finalised. The month
billed is October 2026 (the European and American DST changes fall in it).

The ledger: `--rows` usage records (default 5,000,000) for October, generated in Python as a
stream and loaded with psycopg 3 `COPY ... FROM STDIN` in text format into the real table as
migrated (its secondary indexes dropped for the COPY and rebuilt after it from their catalogue
definitions: some 3x faster than maintaining them row by row). Rows come in time order, as
nodes upload them: per hour, rows drawn over the tenants whose month holds the hour (tenant
sizes heavy-tailed), each a per-minute record of one of the tenant's 3-8 model versions (36
models over three grades) served locally (85 %) or regionally (every offload reason, and a few
regional rows without a reason), its counts and latency histogram drawn from pools (tiny
fast, large slow, regional slower: some tenants miss their band's p95). Each record is on the
batch of its node and hour (received 90 s after the hour). Besides the month, `--late-rows`
(default 0.2 % of the rows) of September usage received after September was finalised:
adjustments on October's drafts. Then VACUUM (ANALYZE) of the ledger, so no timed pass sets
hint bits or plans without statistics.

Measured in the same run, interleaved (`--repeats` rounds, default 3; medians), each pass
after a CHECKPOINT:
- bare SQL aggregation: `SELECT tenant_id, grade, served_by, offload_reason, SUM(count),
  SUM(le_100us) … SUM(le_inf) FROM billing_usagerecord WHERE minute >= lo AND minute < hi
  GROUP BY 1, 2, 3, 4` over the month's rows (lo and hi the earliest start and the latest
  end of the tenants' months), fetched with psycopg: the floor of reading this usage. The
  target is against it;
- refresh_month_drafts creating the drafts (the month's invoices deleted before, untimed);
- refresh_month_drafts refreshing them (the drafts of the pass before: lines replaced).
Target (issue 5, item 9): both ≤ 2 × the bare aggregation.

Reference, measured once, not a target: the per-tenant path the run replaces,
`billing.closing.refresh_month` (refresh_draft for each tenant), over the same drafts — whose
result must equal the batch run's, invoice by invoice and line by line (a difference is a
failed run, exit 1). Also checked: every tenant rated, and the invoices' inferences sum to the
bare aggregation's count. Where the run's time goes comes from timing every query it sends
(Django's execute_wrapper): the month's usage aggregation, late usage, other reads, writes,
and the rest (Python: rating, model instances, Django's SQL compilation; and the COPY of the
invoice lines, which goes past Django's cursor wrappers). `--profile` adds an
unmeasured refreshing pass under py-spy and writes its heaviest functions into the JSON.

Run: .venv/bin/python bench/billing_run.py [--quick] [--rows N] [--tenants N] [--repeats N]
         [--late-rows N] [--database NAME] [--postgres URL] [--keep] [--no-per-tenant]
         [--profile]
(`--duration`/`--warmup`, which run_all.py passes to every benchmark, are accepted and unused:
a pass here is one run, not a span of time.) --quick: 200,000 rows, 200 tenants, 2 rounds.
Writes bench/results/billing_run.json. Exit 0 even when a target is missed; non-zero when
something failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.common import (
    RESULTS_DIR,
    BenchError,
    base_parser,
    checkpoint,
    database_url,
    drop_database,
    log,
    machine_info,
    median,
    print_table,
    raise_interrupt,
    recreate_database,
    run_recorded,
)
from inference import protocol

NAME = "billing_run"
PACKAGES = ("django", "psycopg", "psycopg-binary", "dj-database-url")

TARGET_RATIO = 2.0  # refresh_month_drafts ÷ bare SQL aggregation of the same rows

DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "outpost_bench_billing"
# Databases other people's runs use: never dropped by this bench.
FOREIGN_DATABASES = frozenset({"postgres", "test", "template0", "template1"})

YEAR, MONTH = 2026, 10
START = datetime(2026, 1, 1, tzinfo=UTC)  # prices, terms and subscriptions from then
BAND_CHANGE = datetime(2026, 10, 15, tzinfo=UTC)  # one tenant in twenty changes band then
GOLD_CHANGE = datetime(2026, 10, 10, tzinfo=UTC)  # Gold's terms change (counts for changers)
PRICE_CHANGE = datetime(2026, 10, 15, tzinfo=UTC)  # a price change: not October's (DESIGN §6)
SEPTEMBER_CUTOFF = datetime(2026, 10, 3, 9, 0, tzinfo=UTC)  # September finalised then (+ i s)
LATE_RECEIVED = datetime(2026, 10, 6, 10, 0, tzinfo=UTC)  # late September usage arrives
NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)  # the run: every row received by then

# time zone -> (currency, jurisdiction, share of the tenants)
ZONES = {
    "Europe/Berlin": ("EUR", "DE", 35),
    "Europe/London": ("GBP", "GB", 15),
    "America/New_York": ("USD", "", 30),
    "Asia/Tokyo": ("JPY", "JP", 12),
    "UTC": ("EUR", "IE", 8),
}
REGION_OF_ZONE = {
    "Europe/Berlin": "eu-central",
    "Europe/London": "eu-west",
    "America/New_York": "us-east",
    "Asia/Tokyo": "ap-northeast",
    "UTC": "eu-west",
}
TAXES = {
    "DE": ("VAT 19 %", "0.19"),
    "GB": ("VAT 20 %", "0.20"),
    "JP": ("JCT 10 %", "0.10"),
    "IE": ("VAT 23 %", "0.23"),
}
# One EUR in each currency, and the currency's price step.
FX = {
    "EUR": ("1", "0.0001"),
    "GBP": ("0.86", "0.0001"),
    "USD": ("1.10", "0.0001"),
    "JPY": ("160", "0.01"),
}
GRADES = ("tiny", "medium", "large")
# EUR per 1,000: (local, regional)
BASE_PRICES = {"tiny": ("0.05", "0.12"), "medium": ("0.40", "0.90"), "large": ("2.00", "3.00")}
# slug -> (name, monthly fee EUR, included, overage per 1,000 EUR, p95 ms, SLA %, quality %)
BANDS = {
    "bronze": ("Bronze", "19", 2_000_000, ("0.045", "0.36", "1.80"), 250, 5, 50),
    "silver": ("Silver", "49", 5_000_000, ("0.040", "0.30", "1.50"), 100, 10, 50),
    "gold": ("Gold", "199", 20_000_000, ("0.035", "0.25", "1.20"), 50, 15, 75),
}
ADDON_EUR = "25"
MODELS_PER_GRADE = 12
NODES_PER_REGION = 10  # edge nodes; plus ACCELERATORS per region for regional serving
ACCELERATORS = 2
REASONS = ("tenant_quality", "model_not_local", "thermal", "cost", "capacity")
POOL_BITS = 12  # 4,096 drawn (count, histogram...) tuples per grade and serving

# The ledger's columns in the order the generated COPY text gives them.
KEY_COLUMNS = (
    "tenant_id",
    "region",
    "node_class",
    "model",
    "version",
    "grade",
    "served_by",
    "offload_reason",
    "node_uid",
)
FACT_COLUMNS = ("count", "errors", "tokenised", "latency_sum_s", "energy_j")
TAIL_COLUMNS = ("batch_id", "minute", "received_at")
BATCH_COLUMNS = (
    "id",
    "node_uid",
    "batch_seq",
    "region",
    "node_class",
    "created_at",
    "received_at",
    "digest",
    "raw",
    "records_total",
    "accepted",
    "quarantined",
)


def latency_columns() -> tuple[str, ...]:
    from billing.models import LATENCY_COLUMNS

    return LATENCY_COLUMNS


# --- the database and Django -------------------------------------------------------------------


def set_up_django(db_url: str, var_dir: Path) -> None:
    """Django in this process, on the bench database, with production-like settings."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DATABASE_URL": db_url,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "bench-" + secrets.token_urlsafe(60),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "OUTPOST_SIGNING_KEY": protocol.private_key_to_b64(protocol.generate_private_key()),
            "OUTPOST_VAR_DIR": str(var_dir),
            "OUTPOST_LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": "filesystem://",
            "STRIPE_API_KEY": "",
            "STRIPE_WEBHOOK_SECRET": "",
        }
    )
    import django
    from django.conf import settings

    django.setup()
    if settings.DATABASES["default"]["NAME"] != db_url.rsplit("/", 1)[1]:
        raise BenchError(f"Django is not on the bench database: {settings.DATABASES['default']}")
    from django.core.management import call_command

    started = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    log(f"migrated in {time.monotonic() - started:.1f}s")


# --- the tenants and their price data -------------------------------------------------------------


def money(eur: str, currency: str) -> Decimal:
    rate, step = FX[currency]
    return (Decimal(eur) * Decimal(rate)).quantize(Decimal(step))


@dataclass
class TenantPlan:
    pk: int
    zone: str
    weight: float  # its share of the month's rows, relative
    keys: list[tuple[str, int, int]] = field(default_factory=list)  # (COPY prefix, node, pool)


@dataclass
class Seeded:
    tenants: list[TenantPlan]
    nodes: list[tuple[str, str, str]]  # (uid, region, node class), index = node number
    seconds: float


def seed(rng: random.Random, count: int) -> Seeded:
    """Price data, bands, the tenants with their subscriptions and add-ons, and August and
    September finalised for each; the tenants' usage keys for the ledger."""
    from billing import rating
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

    started = time.monotonic()
    currencies = sorted({c for c, _, _ in ZONES.values()})
    Price.objects.bulk_create(
        [
            Price(
                grade=grade,
                serving=serving,
                currency=currency,
                per_1000=money(BASE_PRICES[grade][i], currency),
                effective_from=START,
            )
            for currency in currencies
            for grade in GRADES
            for i, serving in enumerate(("local", "regional"))
        ]
        + [
            Price(
                grade="tiny",
                serving="local",
                currency=currency,
                per_1000=money("0.055", currency),
                effective_from=PRICE_CHANGE,
            )
            for currency in currencies
        ]
    )
    bands = {
        slug: LatencyBand.objects.create(slug=slug, name=spec[0], position=i)
        for i, (slug, spec) in enumerate(BANDS.items())
    }
    terms = []
    for slug, (_, fee, included, overage, target, sla, quality) in BANDS.items():
        for currency in currencies:
            for since, markup in [(START, "1")] + (
                [(GOLD_CHANGE, "1.05")] if slug == "gold" else []
            ):
                tiny, medium, large = (money(x, currency) * Decimal(markup) for x in overage)
                terms.append(
                    BandTerms(
                        band=bands[slug],
                        currency=currency,
                        effective_from=since,
                        p95_target_ms=target,
                        monthly_fee=money(fee, currency) * Decimal(markup),
                        included_inferences=included,
                        overage_tiny=tiny,
                        overage_medium=medium,
                        overage_large=large,
                        sla_credit_percent=Decimal(sla),
                        tenant_quality_credit_percent=Decimal(quality),
                    )
                )
    BandTerms.objects.bulk_create(terms)
    addon = FeatureBundle.objects.create(slug="edge-analytics", name="Edge analytics")
    FeatureBundlePrice.objects.bulk_create(
        FeatureBundlePrice(
            bundle=addon, currency=c, monthly_price=money(ADDON_EUR, c), effective_from=START
        )
        for c in currencies
    )
    TaxRate.objects.bulk_create(
        TaxRate(jurisdiction=j, name=name, rate=Decimal(rate), effective_from=START)
        for j, (name, rate) in TAXES.items()
    )

    zones = list(ZONES)
    zone_weights = [ZONES[z][2] for z in zones]
    rows = []
    for index in range(count):
        zone = rng.choices(zones, zone_weights)[0]
        currency, jurisdiction, _ = ZONES[zone]
        rows.append(
            Tenant(
                slug=f"bench-{index:05d}",
                name=f"Bench tenant {index}",
                time_zone=zone,
                currency=currency,
                jurisdiction=jurisdiction,
            )
        )
    tenants = Tenant.objects.bulk_create(rows)

    subscriptions, activations, invoices = [], [], []
    band_slugs = list(BANDS)
    for index, tenant in enumerate(tenants):
        band = rng.choices(band_slugs, [40, 40, 20])[0]
        if rng.random() < 0.05:
            other = rng.choice([b for b in band_slugs if b != band])
            subscriptions.append(
                Subscription(tenant=tenant, band=bands[band], starts_at=START, ends_at=BAND_CHANGE)
            )
            subscriptions.append(
                Subscription(tenant=tenant, band=bands[other], starts_at=BAND_CHANGE)
            )
        else:
            subscriptions.append(Subscription(tenant=tenant, band=bands[band], starts_at=START))
        if rng.random() < 0.2:
            activations.append(FeatureActivation(tenant=tenant, bundle=addon, starts_at=START))
        for month in (8, 9):
            start, end = rating.month_bounds(YEAR, month, tenant.time_zone)
            cutoff = (
                SEPTEMBER_CUTOFF if month == 9 else datetime(2026, 9, 2, 9, 0, tzinfo=UTC)
            ) + timedelta(seconds=index)
            invoices.append(
                Invoice(
                    tenant=tenant,
                    year=YEAR,
                    month=month,
                    period_start=start,
                    period_end=end,
                    currency=tenant.currency,
                    status="finalised",
                    number=f"{YEAR}-{len(invoices) + 1:06d}",
                    usage_cutoff=cutoff,
                    refreshed_at=cutoff,
                    finalised_at=cutoff,
                )
            )
    Subscription.objects.bulk_create(subscriptions)
    FeatureActivation.objects.bulk_create(activations)
    Invoice.objects.bulk_create(invoices, batch_size=2000)

    nodes = []
    for region in sorted(set(REGION_OF_ZONE.values())):
        for n in range(NODES_PER_REGION):
            nodes.append((f"nd-{region}-{n:02d}", region, "nano" if n % 3 == 0 else "standard"))
        for n in range(ACCELERATORS):
            nodes.append((f"acc-{region}-{n}", region, "accelerator"))
    node_index = {uid: i for i, (uid, _, _) in enumerate(nodes)}
    models = [(f"{g}-model-{i:02d}", g) for g in GRADES for i in range(MODELS_PER_GRADE)]
    plans = []
    for tenant in tenants:
        region = REGION_OF_ZONE[tenant.time_zone]
        plan = TenantPlan(
            pk=tenant.pk, zone=tenant.time_zone, weight=min(rng.paretovariate(1.3), 40.0)
        )
        quality = rng.random() < 0.3  # asks for quality: some tenant_quality offloads
        chosen = rng.sample(models, rng.randint(3, 8))
        for model, grade in chosen:
            version = rng.choice(("1", "2"))
            edge = f"nd-{region}-{rng.randrange(NODES_PER_REGION):02d}"
            accelerator = f"acc-{region}-{rng.randrange(ACCELERATORS)}"
            local_class = nodes[node_index[edge]][2]
            pool_local, pool_regional = GRADES.index(grade) * 2, GRADES.index(grade) * 2 + 1

            head = (str(tenant.pk), region)
            tail = (model, version, grade)
            plan.keys += [
                (copy_key(head, local_class, tail, "local", "", edge), node_index[edge], pool_local)
            ] * 17
            reasons = [r for r in REASONS if quality or r != "tenant_quality"]
            for _ in range(3):
                reason = rng.choice(reasons) if rng.random() > 0.05 else ""
                prefix = copy_key(head, "accelerator", tail, "regional", reason, accelerator)
                plan.keys.append((prefix, node_index[accelerator], pool_regional))
        plans.append(plan)
    return Seeded(tenants=plans, nodes=nodes, seconds=time.monotonic() - started)


def copy_key(
    head: tuple[str, str],
    node_class: str,
    tail: tuple[str, str, str],
    served_by: str,
    reason: str,
    uid: str,
) -> str:
    """The KEY_COLUMNS of a record as COPY text."""
    return "\t".join((*head, node_class, *tail, served_by, reason, uid))


# --- the ledger ----------------------------------------------------------------------------------

# Midpoints of the latency buckets (seconds), for a plausible latency_sum_s.
_MIDS = [
    (lo + hi) / 2
    for lo, hi in zip(
        (0.0, *protocol.LATENCY_BOUNDS_S),
        (*protocol.LATENCY_BOUNDS_S, protocol.LATENCY_BOUNDS_S[-1] * 2),
        strict=True,
    )
]
# Where a grade's latencies centre (bucket index): tiny 500 µs, medium 5 ms, large 25 ms;
# regional two buckets slower. The tail puts many a tenant with large models or many
# offloads past Gold's 50 ms, some past Silver's 100 ms.
_GRADE_BUCKET = {"tiny": 2, "medium": 5, "large": 7}


def fact_pools(rng: random.Random) -> list[list[str]]:
    """Per (grade, serving), 2^POOL_BITS drawn facts as COPY text: count, errors, tokenised,
    latency sum, energy, then the histogram (summing to the count)."""
    pools = []
    for grade in GRADES:
        for serving in ("local", "regional"):
            pool = []
            for _ in range(1 << POOL_BITS):
                count = rng.randint(0, 3000) if serving == "local" else rng.randint(0, 300)
                latency = [0] * protocol.LATENCY_BUCKETS
                centre = _GRADE_BUCKET[grade] + (2 if serving == "regional" else 0)
                centre += 1 if rng.random() < 0.1 else 0  # a slow minute now and then
                left = count
                for offset in (0, 1, -1, 2):
                    share = left if offset == 2 else rng.randint(0, left)
                    latency[min(centre + offset, protocol.LATENCY_BUCKETS - 1)] += share
                    left -= share
                latency_sum = sum(n * m for n, m in zip(latency, _MIDS, strict=True))
                facts = (
                    count,
                    rng.randint(0, 3),
                    rng.randint(0, count) // 4,
                    round(latency_sum, 6),
                    round(count * rng.uniform(0.02, 0.2), 3),
                    *latency,
                )
                pool.append("\t".join(map(str, facts)))
            pools.append(pool)
    return pools


@dataclass
class Hour:
    start: datetime
    index: int
    active: list[int]  # indexes into the tenants whose month holds this hour
    cum_weights: list[float]
    rows: int = 0


def ledger_hours(seeded: Seeded, rows: int) -> tuple[list[Hour], datetime, datetime]:
    """The month's hours (UTC) from the earliest tenant month start to the latest end, each
    with its tenants and its share of the rows (by the weight of the tenants active in it)."""
    from billing import rating

    bounds = {z: rating.month_bounds(YEAR, MONTH, z) for z in ZONES}
    lo = min(s for s, _ in bounds.values())
    hi = max(e for _, e in bounds.values())
    hours, cache = [], {}
    at, index = lo, 0
    while at < hi:
        active_zones = tuple(z for z, (s, e) in bounds.items() if s <= at < e)
        if active_zones not in cache:
            members = [i for i, t in enumerate(seeded.tenants) if t.zone in active_zones]
            running, cum = 0.0, []
            for i in members:
                running += seeded.tenants[i].weight
                cum.append(running)
            cache[active_zones] = (members, cum)
        members, cum = cache[active_zones]
        hours.append(Hour(at, index, members, cum))
        at += timedelta(hours=1)
        index += 1
    total = sum(h.cum_weights[-1] for h in hours if h.cum_weights)
    running, given = 0.0, 0
    for hour in hours:
        running += hour.cum_weights[-1] if hour.cum_weights else 0.0
        hour.rows = round(rows * running / total) - given
        given += hour.rows
    return hours, lo, hi


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S+00")


def batch_text(seeded: Seeded, hours: Sequence[Hour], late_batches: int) -> Iterator[str]:
    """COPY text of the batches: one per node and hour (id = hour × nodes + node + 1), then
    the batches of the late September usage."""
    nodes = seeded.nodes
    for hour in hours:
        created = _stamp(hour.start + timedelta(hours=1))
        received = _stamp(hour.start + timedelta(hours=1, seconds=90))
        lines = []
        for n, (uid, region, node_class) in enumerate(nodes):
            batch_id = hour.index * len(nodes) + n + 1
            lines.append(
                f"{batch_id}\t{uid}\t{hour.index + 1}\t{region}\t{node_class}\t{created}\t"
                f"{received}\tbench\t\\\\x\t0\t0\t0\n"
            )
        yield "".join(lines)
    first = len(hours) * len(nodes) + 1
    for n in range(late_batches):
        uid, region, node_class = nodes[n % len(nodes)]
        yield (
            f"{first + n}\t{uid}\t{len(hours) + 1 + n}\t{region}\t{node_class}\t"
            f"{_stamp(LATE_RECEIVED)}\t{_stamp(LATE_RECEIVED)}\tbench\t\\\\x\t0\t0\t0\n"
        )


def usage_text(
    rng: random.Random, seeded: Seeded, hours: Sequence[Hour], pools: list[list[str]]
) -> Iterator[str]:
    """COPY text of the month's records, hour after hour, in chunks."""
    nodes = len(seeded.nodes)
    tenants = seeded.tenants
    keys = [t.keys for t in tenants]
    rand, bits, choices = rng.random, rng.getrandbits, rng.choices
    for hour in hours:
        if not hour.rows:
            continue
        minutes = [_stamp(hour.start + timedelta(minutes=m)) for m in range(60)]
        received = _stamp(hour.start + timedelta(hours=1, seconds=90))
        base = hour.index * nodes + 1
        out = []
        for t in choices(hour.active, cum_weights=hour.cum_weights, k=hour.rows):
            options = keys[t]
            prefix, node, pool = options[int(rand() * len(options))]
            out.append(
                f"{prefix}\t{pools[pool][bits(POOL_BITS)]}\t{base + node}\t"
                f"{minutes[int(rand() * 60)]}\t{received}\n"
            )
            if len(out) >= 5000:
                yield "".join(out)
                out = []
        if out:
            yield "".join(out)


def late_text(
    rng: random.Random, seeded: Seeded, hours: Sequence[Hour], pools: list[list[str]], rows: int
) -> Iterator[str]:
    """September usage of one tenant in four, received after September was finalised."""
    if rows <= 0:
        return
    first_batch = len(hours) * len(seeded.nodes) + 1
    late = [t for i, t in enumerate(seeded.tenants) if i % 4 == 0] or seeded.tenants[:1]
    out = []
    for n in range(rows):
        tenant = late[n % len(late)]
        prefix, node, pool = rng.choice(tenant.keys)
        minute = datetime(2026, 9, 20, 12, 0, tzinfo=UTC) + timedelta(minutes=rng.randrange(600))
        out.append(
            f"{prefix}\t{pools[pool][rng.getrandbits(POOL_BITS)]}\t"
            f"{first_batch + node % len(seeded.nodes)}\t{_stamp(minute)}\t{_stamp(LATE_RECEIVED)}\n"
        )
    yield "".join(out)


@dataclass
class Loaded:
    rows: int
    late_rows: int
    batches: int
    seconds: float
    rows_per_s: float
    index_s: float
    vacuum_analyze_s: float
    table_bytes: int
    total_bytes: int
    lo: datetime
    hi: datetime


def load_ledger(
    conn: psycopg.Connection, seeded: Seeded, rows: int, late_rows: int, seed_value: int
) -> Loaded:
    rng = random.Random(seed_value + 1)
    pools = fact_pools(rng)
    hours, lo, hi = ledger_hours(seeded, rows)
    late_batches = len(seeded.nodes)
    columns = (*KEY_COLUMNS, *FACT_COLUMNS, *latency_columns(), *TAIL_COLUMNS)
    # The secondary indexes are built once after the COPY rather than row by row during it
    # (the same definitions, read from the catalogue): some 3x faster to load.
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'billing_usagerecord' "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = 'billing_usagerecord'::regclass)"
    ).fetchall()
    started = time.monotonic()
    with conn.cursor() as cur:
        for index_name, _ in indexes:
            cur.execute(f'DROP INDEX "{index_name}"')
        with cur.copy(f"COPY billing_usagebatch ({', '.join(BATCH_COLUMNS)}) FROM STDIN") as copy:
            for chunk in batch_text(seeded, hours, late_batches):
                copy.write(chunk)
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('billing_usagebatch', 'id'), "
            "(SELECT max(id) FROM billing_usagebatch))"
        )
        done, report = 0, time.monotonic()
        with cur.copy(f"COPY billing_usagerecord ({', '.join(columns)}) FROM STDIN") as copy:
            for chunk in usage_text(rng, seeded, hours, pools):
                copy.write(chunk)
                done += chunk.count("\n")
                if time.monotonic() - report > 15:
                    report = time.monotonic()
                    log(f"  {done:,} rows ({done / (report - started):,.0f}/s)")
            for chunk in late_text(rng, seeded, hours, pools, late_rows):
                copy.write(chunk)
    conn.commit()
    copied = time.monotonic()
    conn.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        conn.execute(definition)
    conn.commit()
    seconds = time.monotonic() - started
    index_seconds = time.monotonic() - copied
    landed = conn.execute("SELECT count(*) FROM billing_usagerecord").fetchone()[0]
    conn.commit()
    if landed != rows + late_rows:
        raise BenchError(f"{landed:,} usage rows landed of {rows + late_rows:,}")
    log(
        f"loaded {landed:,} rows in {seconds:.1f}s ({landed / seconds:,.0f} rows/s; "
        f"of which {len(indexes)} indexes built in {index_seconds:.1f}s)"
    )
    conn.autocommit = True
    vacuum_started = time.monotonic()
    conn.execute("VACUUM (ANALYZE) billing_usagerecord")
    conn.execute("VACUUM (ANALYZE)")  # the rest: small tables, fresh statistics
    vacuum = time.monotonic() - vacuum_started
    table, total = conn.execute(
        "SELECT pg_relation_size('billing_usagerecord'), "
        "pg_total_relation_size('billing_usagerecord')"
    ).fetchone()
    conn.autocommit = False
    log(
        f"VACUUM (ANALYZE) in {vacuum:.1f}s; ledger {table / 2**30:.2f} GiB, {total / 2**30:.2f} with indexes"
    )
    return Loaded(
        rows=rows,
        late_rows=late_rows,
        batches=len(hours) * len(seeded.nodes) + late_batches,
        seconds=round(seconds, 2),
        rows_per_s=round(landed / seconds),
        index_s=round(index_seconds, 2),
        vacuum_analyze_s=round(vacuum, 2),
        table_bytes=table,
        total_bytes=total,
        lo=lo,
        hi=hi,
    )


# --- the passes ------------------------------------------------------------------------------------


def bare_sql() -> str:
    sums = ", ".join(f"SUM({c})" for c in ("count", *latency_columns()))
    return (
        f"SELECT tenant_id, grade, served_by, offload_reason, {sums} FROM billing_usagerecord "
        "WHERE minute >= %s AND minute < %s GROUP BY tenant_id, grade, served_by, offload_reason"
    )


def bare_pass(conn: psycopg.Connection, loaded: Loaded) -> tuple[float, int, int]:
    """Seconds, groups and the SUM(count) of the bare aggregation."""
    started = time.perf_counter()
    rows = conn.execute(bare_sql(), (loaded.lo, loaded.hi)).fetchall()
    seconds = time.perf_counter() - started
    conn.commit()
    return seconds, len(rows), sum(int(r[4]) for r in rows)


@dataclass
class QueryTimer:
    """Every query Django sends, timed and put in a bucket by what it is."""

    seconds: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            what = self.bucket(sql)
            self.seconds[what] += time.perf_counter() - started
            self.counts[what] += 1

    @staticmethod
    def bucket(sql: str) -> str:
        head = sql.lstrip()[:6].upper()
        if head == "SELECT" and 'FROM "billing_usagerecord"' in sql:
            if '"billing_invoice"' in sql:
                return "late usage (SQL)"
            return "month's usage aggregation (SQL)"
        if head == "SELECT":
            return "other reads (SQL)"
        if head in ("INSERT", "UPDATE", "DELETE"):
            return "writes (SQL)"
        return "other SQL"


def timed(run: Callable[[], Any]) -> tuple[float, Any, QueryTimer]:
    from django.db import connection

    timer = QueryTimer()
    with connection.execute_wrapper(timer):
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
    return seconds, result, timer


def drop_month() -> None:
    from billing.models import Invoice, InvoiceEvent, InvoiceLine

    month = Invoice.objects.filter(year=YEAR, month=MONTH)
    InvoiceEvent.objects.filter(invoice__in=month).delete()
    InvoiceLine.objects.filter(invoice__in=month).delete()
    month.delete()


def snapshot() -> dict[int, tuple]:
    """Every invoice of the month, with its lines, as the two paths must leave it."""
    from billing.models import Invoice, InvoiceLine

    lines = defaultdict(list)
    for row in (
        InvoiceLine.objects.filter(invoice__year=YEAR, invoice__month=MONTH)
        .order_by("invoice_id", "position")
        .values_list(
            "invoice__tenant_id",
            "position",
            "kind",
            "description",
            "quantity",
            "unit_price",
            "amount",
            "grade",
            "serving",
            "reason",
        )
    ):
        lines[row[0]].append(row[1:])
    return {
        row[0]: (*row[1:], tuple(lines[row[0]]))
        for row in Invoice.objects.filter(year=YEAR, month=MONTH).values_list(
            "tenant_id",
            "status",
            "period_start",
            "period_end",
            "currency",
            "subtotal",
            "tax",
            "total",
            "tax_name",
            "band",
            "p95_target_ms",
            "p95_ms",
            "inferences",
            "usage_cutoff",
            "refreshed_at",
        )
    }


def month_census() -> dict[str, Any]:
    """What the drafts hold: lines per kind, totals per currency, tenants with SLA credits."""
    from django.db.models import Count, Sum

    from billing.models import Invoice, InvoiceLine

    kinds = dict(
        InvoiceLine.objects.filter(invoice__year=YEAR, invoice__month=MONTH)
        .values_list("kind")
        .annotate(n=Count("pk"))
        .order_by("kind")
    )
    totals = {
        c: str(t)
        for c, t in Invoice.objects.filter(year=YEAR, month=MONTH)
        .values_list("currency")
        .annotate(t=Sum("total"))
        .order_by("currency")
    }
    return {"lines_by_kind": kinds, "lines": sum(kinds.values()), "totals": totals}


# --- py-spy ----------------------------------------------------------------------------------------


def profile_run(run: Callable[[], Any], out: Path, top: int = 20) -> dict[str, Any]:
    """`run()` under py-spy (this process, raw stacks): the heaviest functions by own time
    and inclusively (leaving out the trunk every sample shares)."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not py_spy:
        raise BenchError("--profile needs py-spy (.venv/bin/py-spy)")
    argv = [py_spy, "record", "-p", str(os.getpid()), "-r", "250", "--nonblocking", "-f", "raw"]
    spy = subprocess.Popen(
        [*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.5)  # attach
    try:
        run()
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # no line numbers
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            n = int(count)
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    if not total:
        errors = spy.stderr.read()[-300:] if spy.stderr else ""
        raise BenchError(f"py-spy recorded nothing: {errors}")

    def share(pairs) -> list[dict[str, Any]]:
        return [{"function": name, "share": round(n / total, 4)} for name, n in pairs]

    return {
        "samples": total,
        "own": share(own.most_common(top)),
        "inclusive": share([(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:top]),
    }


# --- the run -----------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, result: dict[str, Any], work: Path) -> None:
    server, name = args.postgres, args.database
    db_url = database_url(server, name)
    log(f"database {name}: dropped and created")
    recreate_database(server, name)
    try:
        with psycopg.connect(db_url) as conn:
            settings = {
                s: conn.execute(f"SHOW {s}").fetchone()[0]
                for s in (
                    "server_version",
                    "shared_buffers",
                    "work_mem",
                    "max_parallel_workers_per_gather",
                    "jit",
                )
            }
        result["postgres"] = settings
        set_up_django(db_url, work)
        from billing.billing_run import refresh_month_drafts
        from billing.closing import refresh_month

        rng = random.Random(args.seed)
        seeded = seed(rng, args.tenants)
        log(f"seeded {args.tenants:,} tenants in {seeded.seconds:.1f}s")
        with psycopg.connect(db_url) as conn:
            loaded = load_ledger(conn, seeded, args.rows, args.late_rows, args.seed)
            result["load"] = {
                "rows": loaded.rows,
                "late_rows": loaded.late_rows,
                "batches": loaded.batches,
                "seed_s": round(seeded.seconds, 2),
                "copy_s": loaded.seconds,
                "copy_rows_per_s": loaded.rows_per_s,
                "of_which_index_builds_s": loaded.index_s,
                "method": "COPY (text) into billing_usagerecord with its secondary indexes "
                "dropped, then rebuilt from their catalogue definitions",
                "vacuum_analyze_s": loaded.vacuum_analyze_s,
                "ledger_table_bytes": loaded.table_bytes,
                "ledger_total_bytes": loaded.total_bytes,
                "month_window_utc": [loaded.lo.isoformat(), loaded.hi.isoformat()],
            }
            bare_pass(conn, loaded)  # warm-up: the ledger in the page cache
            samples: dict[str, list[float]] = defaultdict(list)
            timers: dict[str, list[QueryTimer]] = defaultdict(list)
            summaries = {}
            groups = count_sum = None
            for round_ in range(args.repeats):
                checkpoint(conn)
                seconds, groups, count_sum = bare_pass(conn, loaded)
                samples["bare"].append(seconds)
                drop_month()
                checkpoint(conn)
                seconds, summary, timer = timed(lambda: refresh_month_drafts(YEAR, MONTH, now=NOW))
                samples["create"].append(seconds)
                timers["create"].append(timer)
                summaries["create"] = summary
                checkpoint(conn)
                seconds, summary, timer = timed(lambda: refresh_month_drafts(YEAR, MONTH, now=NOW))
                samples["refresh"].append(seconds)
                timers["refresh"].append(timer)
                summaries["refresh"] = summary
                log(
                    f"round {round_ + 1}/{args.repeats}: bare {samples['bare'][-1]:.2f}s, "
                    f"creating {samples['create'][-1]:.2f}s, refreshing {samples['refresh'][-1]:.2f}s"
                )
            check(summaries, args.tenants, count_sum)
            census = month_census()
            batch_state = snapshot()
            per_tenant = None
            if args.per_tenant:
                log("the per-tenant path (billing.closing.refresh_month), once")
                checkpoint(conn)
                seconds, rated, timer = timed(lambda: refresh_month(YEAR, MONTH, now=NOW))
                per_tenant = {
                    "seconds": seconds,
                    "rated": rated,
                    "queries": sum(timer.counts.values()),
                }
                differing = diff(batch_state, snapshot())
                per_tenant["same_invoices"] = not differing
                if differing:
                    raise BenchError(
                        f"the batch run and refresh_draft differ for {len(differing)} tenant(s), "
                        f"e.g. tenant {differing[0]}"
                    )
            profile = None
            if args.profile:
                log("py-spy over one more refreshing pass (unmeasured)")
                profile = profile_run(
                    lambda: refresh_month_drafts(YEAR, MONTH, now=NOW), work / "py-spy.txt"
                )
        report(
            result, args, loaded, samples, timers, summaries, groups, census, per_tenant, profile
        )
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            log(f"kept database {name} ({db_url})")
        else:
            drop_database(server, name)
            log(f"dropped database {name}")


def check(summaries: dict[str, Any], tenants: int, count_sum: int | None) -> None:
    from django.db.models import Sum

    from billing.models import Invoice

    create, refresh = summaries["create"], summaries["refresh"]
    if create.failed or refresh.failed:
        raise BenchError(
            f"tenants not rated: {dict(list({**create.failed, **refresh.failed}.items())[:5])}"
        )
    if (create.created, create.refreshed, refresh.created, refresh.refreshed) != (
        tenants,
        0,
        0,
        tenants,
    ):
        raise BenchError(f"unexpected runs: creating {create}; refreshing {refresh}")
    counted = Invoice.objects.filter(year=YEAR, month=MONTH).aggregate(n=Sum("inferences"))["n"]
    if counted != count_sum:
        raise BenchError(f"the drafts count {counted:,} inferences, the bare SQL {count_sum:,}")


def diff(batch: dict[int, tuple], per_tenant: dict[int, tuple]) -> list[int]:
    return sorted(k for k in batch.keys() | per_tenant.keys() if batch.get(k) != per_tenant.get(k))


def report(
    result: dict[str, Any],
    args: argparse.Namespace,
    loaded: Loaded,
    samples: dict[str, list[float]],
    timers: dict[str, list[QueryTimer]],
    summaries: dict[str, Any],
    groups: int | None,
    census: dict[str, Any],
    per_tenant: dict[str, Any] | None,
    profile: dict[str, Any] | None,
) -> None:
    bare = median(samples["bare"])
    labels = {
        "bare": "bare SQL aggregation (psycopg)",
        "create": "refresh_month_drafts, creating the drafts",
        "refresh": "refresh_month_drafts, refreshing them",
    }
    rows = []
    for key, label in labels.items():
        values = samples[key]
        queries = 1 if key == "bare" else sum(timers[key][-1].counts.values())
        rows.append(
            {
                "what": label,
                "median": median(values),
                "min": min(values),
                "max": max(values),
                "ratio": median(values) / bare,
                "queries": queries,
            }
        )
    if per_tenant is not None:
        rows.append(
            {
                "what": "per-tenant refresh_draft loop (reference, once)",
                "median": per_tenant["seconds"],
                "ratio": per_tenant["seconds"] / bare,
                "queries": per_tenant["queries"],
            }
        )
    title = (
        f"billing run of {YEAR}-{MONTH:02d} on PostgreSQL {result['postgres']['server_version']}: "
        f"{args.tenants:,} tenants, {loaded.rows:,} usage rows (+{loaded.late_rows:,} late), "
        f"{groups:,} groups; medians of {args.repeats}"
    )
    print()
    print_table(
        [
            ("what", "what", ""),
            ("median", "median s", ".2f"),
            ("min", "min s", ".2f"),
            ("max", "max s", ".2f"),
            ("ratio", "÷ bare", ".2f"),
            ("queries", "queries", "d"),
        ],
        rows,
        title=title,
    )
    # Where the time goes: the median pass of each kind, by its queries.
    breakdown_rows, breakdown = [], {}
    for key in ("create", "refresh"):
        values = samples[key]
        index = sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]
        timer, total = timers[key][index], values[index]
        parts = dict(timer.seconds)
        parts["Python (rating, ORM), lines COPY, commit"] = total - sum(timer.seconds.values())
        breakdown[key] = {
            "total_s": round(total, 3),
            "parts_s": {k: round(v, 3) for k, v in parts.items()},
            "queries": dict(timer.counts),
        }
        for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            breakdown_rows.append(
                {
                    "pass": labels[key].split(", ")[1],
                    "part": part,
                    "seconds": seconds,
                    "share": 100 * seconds / total,
                    "queries": timer.counts.get(part),
                }
            )
    print_table(
        [
            ("pass", "pass", ""),
            ("part", "where the time goes", ""),
            ("seconds", "s", ".2f"),
            ("share", "%", ".0f"),
            ("queries", "queries", ""),
        ],
        breakdown_rows,
        title="where refresh_month_drafts' time goes (its median pass; SQL timed per query)",
    )
    targets = [
        {
            "target": f"{labels[key]} ≤ {TARGET_RATIO:g} × bare aggregation",
            "measured": round(median(samples[key]) / bare, 3),
            "limit": TARGET_RATIO,
            "unit": "× bare",
            "result": "PASS" if median(samples[key]) / bare <= TARGET_RATIO else "MISS",
        }
        for key in ("create", "refresh")
    ]
    for t in targets:
        print(f"{t['result']}  {t['target']}: {t['measured']:.2f}×")
    print(
        f"load (not timed against a target): {loaded.rows + loaded.late_rows:,} rows by COPY "
        f"in {loaded.seconds:.1f} s ({loaded.rows_per_s:,.0f} rows/s, index builds included: "
        f"{loaded.index_s:.1f} s), then VACUUM (ANALYZE) {loaded.vacuum_analyze_s:.1f} s; "
        f"ledger {loaded.total_bytes / 2**30:.2f} GiB with its indexes"
    )
    if per_tenant is not None:
        print(
            f"per-tenant path: {per_tenant['rated']:,} drafts, the same invoices as the batch "
            f"run: {per_tenant['same_invoices']}"
        )
    print()
    result["results"] = targets
    result["timings_s"] = {k: [round(v, 4) for v in vs] for k, vs in samples.items()}
    result["medians_s"] = {k: round(median(vs), 4) for k, vs in samples.items()}
    result["ratios"] = {k: round(median(samples[k]) / bare, 3) for k in ("create", "refresh")}
    result["table"] = rows
    result["breakdown"] = breakdown
    result["groups"] = groups
    result["summaries"] = {k: str(s) for k, s in summaries.items()}
    result["drafts"] = census
    result["per_tenant_reference"] = per_tenant
    if profile is not None:
        result["profile"] = profile
        print_table(
            [("function", "heaviest (own time, py-spy)", ""), ("share", "share", ".1%")],
            profile["own"][:12],
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="usage rows of the month (default 5,000,000; 200,000 with --quick)",
    )
    parser.add_argument(
        "--tenants", type=int, default=None, help="tenants (default 1,000; 200 with --quick)"
    )
    parser.add_argument(
        "--late-rows", type=int, default=None, help="late September rows (default 0.2 %% of --rows)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds of the three passes (default 3; 2 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=20261031)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", DEFAULT_POSTGRES),
        help=f"the server (default {DEFAULT_POSTGRES}, or $BENCH_POSTGRES)",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"the database to drop and create (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument(
        "--no-per-tenant",
        dest="per_tenant",
        action="store_false",
        help="skip the per-tenant reference",
    )
    parser.add_argument(
        "--profile", action="store_true", help="add a refreshing pass under py-spy (unmeasured)"
    )
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 200_000 if args.quick else 5_000_000
    if args.tenants is None:
        args.tenants = 200 if args.quick else 1_000
    if args.late_rows is None:
        args.late_rows = args.rows // 500
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if args.database in FOREIGN_DATABASES or not args.database.replace("_", "").isalnum():
        parser.error(f"--database {args.database!r}: choose a database of this bench's own")
    if args.rows < 1 or args.tenants < 1 or args.repeats < 1 or args.late_rows < 0:
        parser.error("--rows, --tenants and --repeats must be >= 1, --late-rows >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS_DIR / f"{NAME}.json"
    result: dict[str, Any] = {
        "benchmark": NAME,
        "status": "running",
        "machine": machine_info(PACKAGES),
        "parameters": {
            "quick": args.quick,
            "rows": args.rows,
            "late_rows": args.late_rows,
            "tenants": args.tenants,
            "repeats": args.repeats,
            "seed": args.seed,
            "month": f"{YEAR}-{MONTH:02d}",
            "now": NOW.isoformat(),
            "zones": {
                z: {"currency": c, "jurisdiction": j, "share": s} for z, (c, j, s) in ZONES.items()
            },
            "database": args.database,
        },
        "targets": {"refresh_month_drafts_over_bare_aggregation_at_most": TARGET_RATIO},
        "results": [],
    }

    def body(result: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-billing-") as tmp:
            try:
                measure(args, result, Path(tmp))
            except (BenchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a failure to run, with its traceback on stderr
                traceback.print_exc()
                raise BenchError(f"{type(exc).__name__}: {exc}") from exc

    # A TERM unwinds like Ctrl-C, so the database is dropped on the way out.
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return run_recorded(NAME, output, result, body)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
