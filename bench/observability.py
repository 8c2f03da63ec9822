"""The metrics interface's read path on PostgreSQL: `RollupBackend().usage(scope)` (and the
tenant API's `usage_split`) against a bare SQL aggregation of the same rows, in the same run.

What is read: the console's dashboards and the tenant SLO API ask fleet/observability for a
range ending now (frames.RANGES: 1h, 6h and 24h drawn from the per-minute records, 7d and 30d
from the hourly rollups), grouped by model or by tenant, or for one tenant (here the largest) by model as the
tenant API does (`Scope(..., tenants=(slug,))`, then `usage_split(scope, "model", "served_by",
"offload_reason")` for its offload split). RollupBackend.usage looks the tenants' ids up (one
query), sums the ledger per (minute or hour, group) in SQL through the (tenant, time) index,
and cuts the steps into a Frame in Python.

Set-up, each run: a fresh PostgreSQL database (`--database`, default
outpost_bench_observability; dropped and created, dropped again at the end unless `--keep`),
migrated in this process (bench/billing_run.py's `set_up_django`: DEBUG off, so no query log),
`--tenants` tenants (default 200) with heavy-tailed sizes (Pareto weights), each in a home
region of three, using 3-8 of 30 models (three grades), served locally on an edge node (nano
or standard) 85 % of the time and regionally on an accelerator otherwise, for every offload
reason (and a few regional rows without one). The ledger: `--rows` per-minute usage records
(default 2,000,000) over the 30 days before now, hour by hour with a daily cycle, loaded
with psycopg 3 `COPY ... FROM STDIN` into the real table (its secondary index dropped for the
COPY and rebuilt after it), every record on its node's batch of the hour; the facts (counts,
latency histogram, energy) drawn from bench/billing_run.py's pools. Then the hourly rollups
(`UsageHourly`) computed from the records in one INSERT ... SELECT with the key and sums of
billing.ingest.recompute_hour — checked against recompute_hour itself on a few (tenant, hour)
pairs (a difference is a failed run) — and VACUUM (ANALYZE), so no timed pass sets hint bits
or plans without statistics.

Measured, interleaved (`--repeats` rounds, default 3; medians), a CHECKPOINT before each round,
the order of the passes in a case reversed every other round, after a warm-up round:
- bare SQL aggregation, fetched with psycopg (the floor of reading this usage):
  `SELECT <time>, <key>, SUM(count), SUM(errors), SUM(energy_j), SUM(le_100us) ... SUM(le_inf)
  FROM <table> WHERE <time> >= lo AND <time> < hi GROUP BY 1, 2`, lo and hi the scope's
  (its start aligned to the step); the key the ledger's own column (tenant_id, not the slug
  the frame is keyed by). For the one-tenant cases `AND tenant_id = %s`. The ledger has no
  index on the time alone (billing migration 0010 dropped it), so over all tenants this SQL
  scans the table; the same SQL with `AND tenant_id = ANY(<every tenant's id>)` walks the
  (tenant, time) index as RollupBackend does, and is measured too. The floor is the faster
  of the two; the target is against it;
- `RollupBackend().usage(Scope.last(range, now=now, by=...))`, all of it: the tenants' ids,
  the aggregation, Django's rows, the frame. The time inside the cursor's execute (the
  queries run, their rows received) is taken apart from the rest (the rows converted by
  psycopg and Django, the frame built) with Django's execute_wrapper;
- for the one tenant, `usage_split(scope, "model", "served_by", "offload_reason")` evaluated
  against the same bare SQL grouped by those three columns.
Target: every case ≤ 2 × its floor. Checked, every round (a difference is a failed run, exit
1): the frame's count per group, and its total, equal the bare aggregation's SUM(count) per
key and in all; the split's inferences per combination equal the bare split's. A case that
misses the target gets EXPLAIN (ANALYZE, BUFFERS) of the SQL Django sent and of its floor
(printed and in the JSON).

Run: .venv/bin/python bench/observability.py [--quick] [--rows N] [--tenants N] [--repeats N]
         [--database NAME] [--postgres URL] [--keep]
(`--duration`/`--warmup`, which run_all.py passes to every benchmark, are accepted and unused:
a pass here is one read, not a span of time.) --quick: 200,000 rows.
Writes bench/results/observability.json. Exit 0 even when a target is missed; non-zero when
something failed to run.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.billing_run import (
    BATCH_COLUMNS,
    FACT_COLUMNS,
    GRADES,
    KEY_COLUMNS,
    POOL_BITS,
    TAIL_COLUMNS,
    fact_pools,
    latency_columns,
    set_up_django,
)
from bench.common import (
    RESULTS_DIR,
    BenchError,
    base_parser,
    check_bench_database,
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

if TYPE_CHECKING:
    from fleet.observability.frames import Scope

NAME = "observability"
PACKAGES = ("django", "psycopg", "psycopg-binary", "dj-database-url")

TARGET_RATIO = 2.0  # RollupBackend.usage ÷ the bare SQL aggregation of the same rows

DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "outpost_bench_observability"

LEDGER_DAYS = 30
REGIONS = ("eu-west", "eu-central", "us-east")
EDGE_CLASSES = ("nano", "standard")  # four edge nodes of each per region
EDGE_PER_CLASS = 4
ACCELERATORS = 2  # per region, class "accelerator": regional serving
MODELS_PER_GRADE = 10  # 30 models
REASONS = protocol.OFFLOAD_REASONS
LOCAL_WEIGHT = 17  # a tenant's model is served locally 17 times for 3 regional (85 %)
TENANT_SHAPE, TENANT_CAP = 1.16, 80.0  # Pareto weights (80/20), the largest capped
SPLIT_FIELDS = ("model", "served_by", "offload_reason")

# What a case's bare SQL groups by, for each grouping of the scope.
BARE_KEYS = {"model": "model", "tenant": "tenant_id"}


# --- the tenants and the fleet ----------------------------------------------------------------


@dataclass
class TenantPlan:
    pk: int
    slug: str
    weight: float  # its share of the rows, relative
    keys: list[tuple[str, int, int]] = field(default_factory=list)  # (COPY prefix, node, pool)


@dataclass
class Fleet:
    tenants: list[TenantPlan]
    nodes: list[tuple[str, str, str]]  # (uid, region, node class); index = node number
    cum_weights: list[float]


def fleet_nodes() -> list[tuple[str, str, str]]:
    nodes = []
    for region in REGIONS:
        for node_class in EDGE_CLASSES:
            for n in range(EDGE_PER_CLASS):
                nodes.append((f"nd-{region}-{node_class}-{n}", region, node_class))
        for n in range(ACCELERATORS):
            nodes.append((f"acc-{region}-{n}", region, "accelerator"))
    return nodes


def seed(rng: random.Random, count: int) -> Fleet:
    """The tenants (ORM bulk_create) and, for each, the usage keys its records are drawn from:
    a home region, 3-8 models, each served on one edge node and offloaded to an accelerator."""
    from billing.models import Tenant

    tenants = Tenant.objects.bulk_create(
        Tenant(slug=f"bench-t{i:04d}", name=f"Bench tenant {i}") for i in range(count)
    )
    nodes = fleet_nodes()
    index = {uid: i for i, (uid, _, _) in enumerate(nodes)}
    models = [(f"{g}-model-{i:02d}", g) for g in GRADES for i in range(MODELS_PER_GRADE)]
    plans = []
    for tenant in tenants:
        region = rng.choice(REGIONS)
        plan = TenantPlan(
            pk=tenant.pk,
            slug=tenant.slug,
            weight=min(rng.paretovariate(TENANT_SHAPE), TENANT_CAP),
        )
        quality = rng.random() < 0.3  # asks for quality: some tenant_quality offloads
        reasons = [r for r in REASONS if quality or r != "tenant_quality"]
        chosen = rng.sample(models, rng.randint(3, 8))
        for rank, (model, grade) in enumerate(chosen):
            # The tenant's first model is its busiest: its keys repeat the most.
            repeat = len(chosen) - rank
            version = rng.choice(("1", "2"))
            edge_class = rng.choice(EDGE_CLASSES)
            edge = f"nd-{region}-{edge_class}-{rng.randrange(EDGE_PER_CLASS)}"
            accelerator = f"acc-{region}-{rng.randrange(ACCELERATORS)}"
            pool = GRADES.index(grade) * 2
            tail = (model, version, grade)
            local = copy_key(tenant.pk, region, edge_class, tail, "local", "", edge)
            plan.keys += [(local, index[edge], pool)] * (LOCAL_WEIGHT * repeat)
            for _ in range(3):
                reason = rng.choice(reasons) if rng.random() > 0.05 else ""
                regional = copy_key(
                    tenant.pk, region, "accelerator", tail, "regional", reason, accelerator
                )
                plan.keys += [(regional, index[accelerator], pool + 1)] * repeat
        plans.append(plan)
    running, cum = 0.0, []
    for plan in plans:
        running += plan.weight
        cum.append(running)
    return Fleet(tenants=plans, nodes=nodes, cum_weights=cum)


def copy_key(
    tenant_id: int,
    region: str,
    node_class: str,
    tail: tuple[str, str, str],
    served_by: str,
    reason: str,
    uid: str,
) -> str:
    """A record's KEY_COLUMNS (bench/billing_run.py's order) as COPY text."""
    return "\t".join((str(tenant_id), region, node_class, *tail, served_by, reason, uid))


# --- the ledger and its rollups ---------------------------------------------------------------


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S+00")


def ledger_hours(now: datetime, rows: int) -> list[tuple[datetime, int]]:
    """The hour-long slices of the LEDGER_DAYS before `now`, each with its share of the rows:
    a daily cycle, busiest mid-afternoon UTC, a quarter of the peak at night."""
    start = now - timedelta(days=LEDGER_DAYS)
    slices = [start + timedelta(hours=h) for h in range(LEDGER_DAYS * 24)]
    weights = [1.0 + 0.6 * math.sin((s.hour - 9) / 24 * 2 * math.pi) for s in slices]
    total, running, given, out = sum(weights), 0.0, 0, []
    for at, weight in zip(slices, weights, strict=True):
        running += weight
        share = round(rows * running / total) - given
        given += share
        out.append((at, share))
    return out


def batch_text(fleet: Fleet, hours: Sequence[tuple[datetime, int]]) -> Iterator[str]:
    """One batch per node and hour (id = hour × nodes + node + 1), received 90 s after it."""
    for h, (at, _) in enumerate(hours):
        created = stamp(at + timedelta(hours=1))
        received = stamp(at + timedelta(hours=1, seconds=90))
        yield "".join(
            f"{h * len(fleet.nodes) + n + 1}\t{uid}\t{h + 1}\t{region}\t{node_class}\t"
            f"{created}\t{received}\tbench\t\\\\x\t0\t0\t0\n"
            for n, (uid, region, node_class) in enumerate(fleet.nodes)
        )


def usage_text(
    rng: random.Random, fleet: Fleet, hours: Sequence[tuple[datetime, int]], pools: list[list[str]]
) -> Iterator[str]:
    """COPY text of the records, hour after hour: each drawn over the tenants by weight, one
    of the tenant's keys, a minute of the hour, facts from the pool of its grade and serving."""
    count = len(fleet.nodes)
    keys = [t.keys for t in fleet.tenants]
    every = range(len(fleet.tenants))
    rand, bits, choices = rng.random, rng.getrandbits, rng.choices
    for h, (at, rows) in enumerate(hours):
        minutes = [stamp(at + timedelta(minutes=m)) for m in range(60)]
        received = stamp(at + timedelta(hours=1, seconds=90))
        base = h * count + 1
        out = []
        for t in choices(every, cum_weights=fleet.cum_weights, k=rows):
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


@dataclass
class Loaded:
    rows: int
    hourly_rows: int
    batches: int
    copy_s: float
    rollups_s: float
    vacuum_analyze_s: float
    bytes: dict[str, int]
    regional_by_reason: dict[str, int]  # "" for the regional records without a reason


def load_ledger(
    conn: psycopg.Connection, fleet: Fleet, rows: int, now: datetime, seed_value: int
) -> Loaded:
    rng = random.Random(seed_value + 1)
    pools = fact_pools(rng)
    hours = ledger_hours(now, rows)
    columns = (*KEY_COLUMNS, *FACT_COLUMNS, *latency_columns(), *TAIL_COLUMNS)
    # The secondary index is built once after the COPY rather than row by row during it.
    indexes = secondary_indexes(conn, "billing_usagerecord")
    started = time.monotonic()
    with conn.cursor() as cur:
        for index_name, _ in indexes:
            cur.execute(f'DROP INDEX "{index_name}"')
        with cur.copy(f"COPY billing_usagebatch ({', '.join(BATCH_COLUMNS)}) FROM STDIN") as copy:
            for chunk in batch_text(fleet, hours):
                copy.write(chunk)
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('billing_usagebatch', 'id'), "
            "(SELECT max(id) FROM billing_usagebatch))"
        )
        with cur.copy(f"COPY billing_usagerecord ({', '.join(columns)}) FROM STDIN") as copy:
            for chunk in usage_text(rng, fleet, hours, pools):
                copy.write(chunk)
    conn.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        conn.execute(definition)
    conn.commit()
    copy_s = time.monotonic() - started
    landed = conn.execute("SELECT count(*) FROM billing_usagerecord").fetchone()[0]
    if landed != rows:
        raise BenchError(f"{landed:,} usage rows landed of {rows:,}")
    log(f"loaded {landed:,} records in {copy_s:.1f}s ({landed / copy_s:,.0f} rows/s)")

    # The same for the rollups' secondary indexes (their unique constraint stays), and room
    # for the one big GROUP BY to sort in memory.
    hourly_indexes = secondary_indexes(conn, "billing_usagehourly")
    started = time.monotonic()
    for index_name, _ in hourly_indexes:
        conn.execute(f'DROP INDEX "{index_name}"')
    conn.execute("SET work_mem = '256MB'")
    conn.execute(rollup_sql())
    conn.commit()  # its deferred foreign-key checks run here, before the index builds
    for _, definition in hourly_indexes:
        conn.execute(definition)
    conn.execute("RESET work_mem")
    conn.commit()
    rollups_s = time.monotonic() - started
    hourly = conn.execute("SELECT count(*) FROM billing_usagehourly").fetchone()[0]
    conn.commit()
    log(f"{hourly:,} hourly rollups in {rollups_s:.1f}s ({landed / hourly:.1f} records each)")
    check_rollups(conn, fleet, now)

    conn.autocommit = True
    started = time.monotonic()
    conn.execute("VACUUM (ANALYZE) billing_usagerecord")
    conn.execute("VACUUM (ANALYZE) billing_usagehourly")
    conn.execute("VACUUM (ANALYZE)")  # the rest: small tables, fresh statistics
    vacuum_s = time.monotonic() - started
    sizes = {
        f"{table}_{kind}": conn.execute(f"SELECT pg_{kind}_size('{table}')").fetchone()[0]
        for table in ("billing_usagerecord", "billing_usagehourly")
        for kind in ("relation", "total_relation")
    }
    conn.autocommit = False
    log(f"VACUUM (ANALYZE) in {vacuum_s:.1f}s")
    reasons = dict(
        conn.execute(
            "SELECT offload_reason, count(*) FROM billing_usagerecord "
            "WHERE served_by = 'regional' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    conn.commit()
    if missing := set(REASONS) - set(reasons):
        raise BenchError(f"no regional records for the offload reason(s) {sorted(missing)}")
    return Loaded(
        rows=landed,
        hourly_rows=hourly,
        batches=len(hours) * len(fleet.nodes),
        copy_s=round(copy_s, 2),
        rollups_s=round(rollups_s, 2),
        vacuum_analyze_s=round(vacuum_s, 2),
        bytes=sizes,
        regional_by_reason=reasons,
    )


def secondary_indexes(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    """(name, definition) of the table's indexes that back no constraint."""
    return conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
        (table, table),
    ).fetchall()


ROLLUP_KEY = KEY_COLUMNS[:8]  # tenant_id ... offload_reason: billing.ingest's rollup key


def rollup_facts() -> tuple[str, ...]:
    return (*FACT_COLUMNS, *latency_columns())


def rollup_sql() -> str:
    """Every (tenant, hour)'s rollups at once: recompute_hour's INSERT ... SELECT, grouped by
    the hour too. The session is in UTC (connect()), so date_trunc cuts UTC hours."""
    key, facts = ", ".join(ROLLUP_KEY), rollup_facts()
    return (
        f"INSERT INTO billing_usagehourly ({key}, hour, {', '.join(facts)}) "
        f"SELECT {key}, date_trunc('hour', minute), {', '.join(f'SUM({c})' for c in facts)} "
        f"FROM billing_usagerecord GROUP BY {key}, date_trunc('hour', minute)"
    )


def check_rollups(conn: psycopg.Connection, fleet: Fleet, now: datetime) -> None:
    """The bulk rollups equal what billing.ingest.recompute_hour makes of the same records,
    for the largest tenant's last full hour and three (tenant, hour) pairs drawn at random."""
    from django.db import transaction

    from billing.ingest import recompute_hour

    largest = max(fleet.tenants, key=lambda t: t.weight)
    pairs = [(largest.pk, now.replace(minute=0) - timedelta(hours=1))]
    pairs += conn.execute(
        "SELECT tenant_id, hour FROM (SELECT DISTINCT tenant_id, hour FROM billing_usagehourly) "
        "AS pairs ORDER BY random() LIMIT 3"
    ).fetchall()
    columns = ", ".join((*ROLLUP_KEY, "hour", *rollup_facts()))
    sql = (
        f"SELECT {columns} FROM billing_usagehourly WHERE tenant_id = %s AND hour = %s "
        f"ORDER BY {', '.join(ROLLUP_KEY)}"
    )
    for tenant_id, hour in pairs:
        bulk = conn.execute(sql, (tenant_id, hour)).fetchall()
        conn.commit()
        with transaction.atomic():
            recompute_hour(tenant_id, hour)
        again = conn.execute(sql, (tenant_id, hour)).fetchall()
        conn.commit()
        if not bulk:
            raise BenchError(f"tenant {tenant_id} has no rollups at {hour:%Y-%m-%d %H}h to check")
        if not same_rollups(bulk, again):
            raise BenchError(
                f"the bulk rollups of tenant {tenant_id} at {hour:%Y-%m-%d %H}h differ from "
                f"recompute_hour's ({len(bulk)} rows, {len(again)} rows)"
            )
    log(f"rollups of {len(pairs)} (tenant, hour) pairs equal recompute_hour's")


def same_rollups(bulk: Sequence[tuple], again: Sequence[tuple]) -> bool:
    """Equal rows, the float sums (latency_sum_s, energy_j) to rounding: PostgreSQL adds a
    group's floats in the order it meets the rows, which differs between the two plans."""
    if len(bulk) != len(again):
        return False
    for a, b in zip(bulk, again, strict=True):
        for x, y in zip(a, b, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                    return False
            elif x != y:
                return False
    return True


# --- the cases --------------------------------------------------------------------------------


@dataclass
class Case:
    """One read: a range, a grouping, optionally one tenant; `split` is the tenant API's
    usage_split instead of usage."""

    range_name: str
    by: str
    tenant: TenantPlan | None = None
    split: bool = False
    table: str = ""  # what RollupBackend reads for the range (set by make_cases)
    time_field: str = ""

    @property
    def label(self) -> str:
        if self.split:
            return f"{self.range_name} one tenant, usage_split"
        who = "one tenant" if self.tenant else "all tenants"
        return f"{self.range_name} {who}, by {self.by}"

    def scope(self, now: datetime) -> Scope:
        from fleet.observability.frames import Scope

        tenants = (self.tenant.slug,) if self.tenant else ()
        return Scope.last(self.range_name, now=now, by=self.by, tenants=tenants)


def make_cases(fleet: Fleet, now: datetime) -> list[Case]:
    """Every range by model and by tenant, and the largest tenant's read (usage by model and
    usage_split), each on the table RollupBackend picks for it (rollups.ledger)."""
    from fleet.observability.frames import RANGES
    from fleet.observability.rollups import ledger

    largest = max(fleet.tenants, key=lambda t: t.weight)
    cases = []
    for range_name in RANGES:
        cases += [
            Case(range_name, "model"),
            Case(range_name, "tenant"),
            Case(range_name, "model", largest),
            Case(range_name, "model", largest, split=True),
        ]
    for case in cases:
        _, case.time_field = ledger(case.scope(now))
        case.table = "billing_usagehourly" if case.time_field == "hour" else "billing_usagerecord"
    return cases


def bare_where(case: Case, now: datetime, tenant_ids: list[int] | None) -> tuple[str, list[Any]]:
    """The case's rows: its window, and its tenant, or `tenant_ids` when given (RollupBackend
    names every tenant's id, so PostgreSQL can walk the (tenant, time) index)."""
    scope, time_field = case.scope(now), case.time_field
    where = f"{time_field} >= %s AND {time_field} < %s"
    params: list[Any] = [scope.start, scope.end]
    if case.tenant is not None:
        where += " AND tenant_id = %s"
        params.append(case.tenant.pk)
    elif tenant_ids is not None:
        where += " AND tenant_id = ANY(%s)"
        params.append(tenant_ids)
    return where, params


def bare_sql(case: Case, now: datetime, tenant_ids: list[int] | None) -> tuple[str, list[Any]]:
    """The case's bare aggregation and its parameters."""
    where, params = bare_where(case, now, tenant_ids)
    table, time_field = case.table, case.time_field
    if case.split:
        sums = "SUM(count), SUM(errors), SUM(tokenised), SUM(energy_j), SUM(count + errors)"
        return (
            f"SELECT {', '.join(SPLIT_FIELDS)}, {sums} FROM {table} "  # noqa: S608
            f"WHERE {where} GROUP BY 1, 2, 3",
            params,
        )
    sums = ", ".join(f"SUM({c})" for c in ("count", "errors", "energy_j", *latency_columns()))
    key = BARE_KEYS[case.by]
    return (
        f"SELECT {time_field}, {key}, {sums} FROM {table} WHERE {where} GROUP BY 1, 2",  # noqa: S608
        params,
    )


# --- the passes -------------------------------------------------------------------------------


@dataclass
class QueryLog:
    """Every query Django sends during a read: its SQL, parameters and seconds."""

    queries: list[tuple[str, Any, float]] = field(default_factory=list)

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append((sql, params, time.perf_counter() - started))

    @property
    def seconds(self) -> float:
        return sum(s for _, _, s in self.queries)

    def ledger_query(self) -> tuple[str, Any]:
        """The aggregation (the query on the usage tables, not the tenants' ids)."""
        sql, params, _ = next(q for q in self.queries if '"billing_usage' in q[0])
        return sql, params


@dataclass
class Sample:
    seconds: float
    # Of it, inside the database cursor's execute (the queries run, their rows received, not
    # yet converted to Python): for the bare SQL, `seconds` is that plus psycopg's fetchall.
    sql_seconds: float
    queries: int


def read_orm(case: Case, now: datetime) -> tuple[Sample, Counter[str], QueryLog]:
    """The case through the metrics interface, timed; its count per key."""
    from django.db import connection

    from fleet.observability.rollups import RollupBackend, usage_split

    queries = QueryLog()
    with connection.execute_wrapper(queries):
        started = time.perf_counter()
        if case.split:
            rows = list(usage_split(case.scope(now), *SPLIT_FIELDS))
        else:
            frame = RollupBackend().usage(case.scope(now))
        seconds = time.perf_counter() - started
    counts: Counter[str] = Counter()
    if case.split:
        for row in rows:
            counts["/".join(row[f] for f in SPLIT_FIELDS)] += int(row["inferences"])
    else:
        for key in frame.cells:
            counts[key] = round(frame.total(key).count)
        counts[TOTAL] = round(frame.total().count)
    return Sample(seconds, queries.seconds, len(queries.queries)), counts, queries


TOTAL = "(all groups)"


@dataclass
class BareSample(Sample):
    rows: int  # the rows the aggregation returned (the rows Django receives too)


def read_bare(
    conn: psycopg.Connection,
    case: Case,
    now: datetime,
    slugs: dict[int, str],
    tenant_ids: list[int] | None,
) -> tuple[BareSample, Counter[str]]:
    """The case's bare aggregation, timed; its count per key (tenant ids named by slug)."""
    sql, params = bare_sql(case, now, tenant_ids)
    started = time.perf_counter()
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        executed = time.perf_counter()
        rows = cursor.fetchall()
    seconds = time.perf_counter() - started
    conn.commit()
    counts: Counter[str] = Counter()
    if case.split:
        for row in rows:
            counts["/".join(row[:3])] += int(row[3])
    else:
        for row in rows:
            counts[slugs[row[1]] if case.by == "tenant" else row[1]] += int(row[2])
        counts[TOTAL] = sum(int(row[2]) for row in rows)
    return BareSample(seconds, executed - started, 1, len(rows)), counts


def agree(case: Case, kind: str, orm: Counter[str], bare: Counter[str]) -> None:
    """The frame (or split) counts what the bare SQL sums, per key and in all."""
    differing = sorted(k for k in orm.keys() | bare.keys() if orm[k] != bare[k])
    if differing:
        k = differing[0]
        raise BenchError(
            f"{case.label}: usage() and {kind} differ for {len(differing)} key(s), e.g. "
            f"{k}: {orm[k]:,} against {bare[k]:,}"
        )


def explain(conn: psycopg.Connection, sql: str, params: Any) -> str:
    plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params).fetchall()
    conn.commit()
    return "\n".join(row[0] for row in plan)


def explain_django(sql: str, params: Any) -> str:
    """EXPLAIN ANALYZE of the SQL Django sent, through Django's own cursor."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


# --- the run ----------------------------------------------------------------------------------


def connect(db_url: str) -> psycopg.Connection:
    """A psycopg connection in UTC (as Django's: date_trunc cuts UTC hours) that never
    prepares its statements (Django's client-side binding cannot: the bare SQL is planned
    every time, as the ORM's is)."""
    conn = psycopg.connect(db_url, prepare_threshold=None)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def measure(args: argparse.Namespace, result: dict[str, Any], work: Path) -> None:
    server, name = args.postgres, args.database
    db_url = database_url(server, name)
    log(f"database {name}: dropped and created")
    recreate_database(server, name)
    try:
        with connect(db_url) as conn:
            result["postgres"] = {
                s: conn.execute(f"SHOW {s}").fetchone()[0]
                for s in (
                    "server_version",
                    "shared_buffers",
                    "work_mem",
                    "max_parallel_workers_per_gather",
                    "jit",
                )
            }
        set_up_django(db_url, work)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        fleet = seed(random.Random(args.seed), args.tenants)
        log(f"seeded {args.tenants:,} tenants; {len(fleet.nodes)} nodes")
        with connect(db_url) as conn:
            loaded = load_ledger(conn, fleet, args.rows, now, args.seed)
            result["load"] = load_summary(loaded, fleet, now)
            cases = make_cases(fleet, now)
            census = window_census(conn, cases, now)
            samples = run_rounds(conn, cases, now, fleet, args.repeats)
            plans = explain_misses(conn, cases, now, fleet, samples)
        report(result, args, loaded, cases, census, samples, plans)
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            log(f"kept database {name} ({db_url})")
        else:
            drop_database(server, name)
            log(f"dropped database {name}")


def load_summary(loaded: Loaded, fleet: Fleet, now: datetime) -> dict[str, Any]:
    weights = sorted((t.weight for t in fleet.tenants), reverse=True)
    total = fleet.cum_weights[-1]
    return {
        "rows": loaded.rows,
        "hourly_rows": loaded.hourly_rows,
        "records_per_rollup": round(loaded.rows / loaded.hourly_rows, 2),
        "batches": loaded.batches,
        "copy_s": loaded.copy_s,
        "rollups_s": loaded.rollups_s,
        "rollups_method": "one INSERT ... SELECT with billing.ingest.recompute_hour's key and "
        "sums, grouped by date_trunc('hour', minute); checked against recompute_hour",
        "vacuum_analyze_s": loaded.vacuum_analyze_s,
        "bytes": loaded.bytes,
        "regional_records_by_reason": loaded.regional_by_reason,
        "now": now.isoformat(),
        "largest_tenant": max(fleet.tenants, key=lambda t: t.weight).slug,
        "largest_tenant_share": round(weights[0] / total, 4),
        "top_tenth_share": round(sum(weights[: max(1, len(weights) // 10)]) / total, 4),
    }


def window_census(conn: psycopg.Connection, cases: Sequence[Case], now: datetime) -> list[int]:
    """The rows each case reads (untimed), for the table."""
    counts = []
    for case in cases:
        where, params = bare_where(case, now, None)
        sql = f"SELECT count(*) FROM {case.table} WHERE {where}"  # noqa: S608
        counts.append(conn.execute(sql, params).fetchone()[0])
    conn.commit()
    return counts


KINDS = ("orm", "bare_scan", "bare_index")


def run_rounds(
    conn: psycopg.Connection,
    cases: Sequence[Case],
    now: datetime,
    fleet: Fleet,
    repeats: int,
) -> dict[str, list[list[Sample]]]:
    """A warm-up round, then `repeats` measured ones, each after a CHECKPOINT: every case's
    passes back to back, their order reversed every other round, the answers compared every
    time. The warm-up reads what the index walks read (the table's pages in the cache, the
    Django connection open); the full scans, which read the whole table, it leaves out: the
    load has just written every page."""
    slugs = {t.pk: t.slug for t in fleet.tenants}
    every_id = [t.pk for t in fleet.tenants]
    samples: dict[str, list[list[Sample]]] = {kind: [[] for _ in cases] for kind in KINDS}
    for round_ in range(repeats + 1):
        checkpoint(conn)
        started = time.monotonic()
        for i, case in enumerate(cases):
            passes: list[tuple[str, Callable[[], tuple[Sample, Counter[str]]]]] = [
                ("orm", lambda case=case: read_orm(case, now)[:2])
            ]
            if case.tenant is not None or round_:
                passes.append(
                    ("bare_scan", lambda case=case: read_bare(conn, case, now, slugs, None))
                )
            if case.tenant is None:
                passes.append(
                    ("bare_index", lambda case=case: read_bare(conn, case, now, slugs, every_id))
                )
            if round_ % 2:
                passes.reverse()
            answers = {}
            for kind, run in passes:
                sample, answers[kind] = run()
                if round_:
                    samples[kind][i].append(sample)
            for kind, answer in answers.items():
                agree(case, kind, answers["orm"], answer)
        label = f"round {round_}/{repeats}" if round_ else "warm-up round"
        log(f"{label}: {time.monotonic() - started:.1f}s, the answers agree")
    return samples


def floor_of(samples: dict[str, list[list[Sample]]], i: int) -> tuple[float, str]:
    """The faster bare variant of case i: (its median seconds, which)."""
    return min(
        (median(s.seconds for s in samples[kind][i]), kind)
        for kind in ("bare_scan", "bare_index")
        if samples[kind][i]
    )


def explain_misses(
    conn: psycopg.Connection,
    cases: Sequence[Case],
    now: datetime,
    fleet: Fleet,
    samples: dict[str, list[list[Sample]]],
) -> dict[str, dict[str, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL Django sends and of its floor, for every case
    over the target."""
    every_id = [t.pk for t in fleet.tenants]
    plans = {}
    for i, case in enumerate(cases):
        floor, kind = floor_of(samples, i)
        if median(s.seconds for s in samples["orm"][i]) <= TARGET_RATIO * floor:
            continue
        _, _, queries = read_orm(case, now)
        sql, params = queries.ledger_query()
        bare, bare_params = bare_sql(case, now, every_id if kind == "bare_index" else None)
        plans[case.label] = {
            "django_sql": sql,
            "django_plan": explain_django(sql, params),
            "floor_sql": bare,
            "floor_plan": explain(conn, bare, bare_params),
        }
        log(f"explained {case.label}")
    return plans


def report(
    result: dict[str, Any],
    args: argparse.Namespace,
    loaded: Loaded,
    cases: Sequence[Case],
    census: Sequence[int],
    samples: dict[str, list[list[Sample]]],
    plans: dict[str, dict[str, str]],
) -> None:
    rows, out = [], []
    for i, case in enumerate(cases):
        orm = samples["orm"][i]
        index = samples["bare_index"][i]
        floor, floor_kind = floor_of(samples, i)
        seconds = median(s.seconds for s in orm)
        sql = median(s.sql_seconds for s in orm)
        row = {
            "case": case.label,
            "table": "hourly" if case.time_field == "hour" else "records",
            "rows_read": census[i],
            "rows_out": samples["bare_scan"][i][-1].rows,
            "bare_ms": median(s.seconds for s in samples["bare_scan"][i]) * 1000,
            "bare_ids_ms": median(s.seconds for s in index) * 1000 if index else None,
            "usage_ms": seconds * 1000,
            "sql_ms": sql * 1000,
            "python_ms": (seconds - sql) * 1000,
            "queries": orm[-1].queries,
            "ratio": seconds / floor,
            "result": "PASS" if seconds <= TARGET_RATIO * floor else "MISS",
        }
        rows.append(row)
        out.append(
            {
                **row,
                "range": case.range_name,
                "by": case.by,
                "tenant": case.tenant.slug if case.tenant else None,
                "split": case.split,
                "floor": floor_kind,
                "timings_s": {
                    kind: [round(s.seconds, 5) for s in samples[kind][i]] for kind in KINDS
                },
                "usage_sql_s": [round(s.sql_seconds, 5) for s in orm],
            }
        )
    print()
    print_table(
        [
            ("case", "case", ""),
            ("table", "table", ""),
            ("rows_read", "rows read", ",d"),
            ("rows_out", "rows out", ",d"),
            ("bare_ms", "bare ms", ".1f"),
            ("bare_ids_ms", "bare+ids ms", ".1f"),
            ("usage_ms", "usage() ms", ".1f"),
            ("sql_ms", "in execute ms", ".1f"),
            ("python_ms", "rows→frame ms", ".1f"),
            ("queries", "queries", "d"),
            ("ratio", "÷ floor", ".2f"),
            ("result", f"≤ {TARGET_RATIO:g}×", ""),
        ],
        rows,
        title=(
            f"metrics read path on PostgreSQL {result['postgres']['server_version']}: "
            f"{loaded.rows:,} per-minute records ({loaded.hourly_rows:,} hourly rollups), "
            f"{args.tenants:,} tenants; medians of {args.repeats}; floor = the faster bare SQL"
        ),
    )
    missed = [r for r in rows if r["result"] == "MISS"]
    worst = max(rows, key=lambda r: r["ratio"])
    verdict = "met" if not missed else f"MISSED by {len(missed)} of {len(rows)} cases"
    print(
        f"target, usage() ≤ {TARGET_RATIO:g}× the bare aggregation: {verdict} (worst: "
        f"{worst['case']}, {worst['ratio']:.2f}×); the answers agreed in every round"
    )
    if plans:
        print_table(
            [
                ("case", "missed case: EXPLAIN ANALYZE of", ""),
                ("django", "Django's SQL ms", ".1f"),
                ("floor", "the floor's ms", ".1f"),
                ("usage", "usage() ms", ".1f"),
            ],
            [
                {
                    "case": label,
                    "django": execution_ms(plan["django_plan"]),
                    "floor": execution_ms(plan["floor_plan"]),
                    "usage": next(r["usage_ms"] for r in rows if r["case"] == label),
                }
                for label, plan in plans.items()
            ],
            title="\nin the database (plans in the JSON, 'explain'; the worst case's below)",
        )
        plan = plans.get(worst["case"])
        if plan:
            print(f"{worst['case']}: the SQL Django sends\n{plan['django_plan']}")
            print(f"-- its floor\n{plan['floor_plan']}\n")
    result["cases"] = out
    result["results"] = [
        {
            "target": f"{r['case']}: ≤ {TARGET_RATIO:g} × bare aggregation",
            "measured": round(r["ratio"], 3),
            "limit": TARGET_RATIO,
            "unit": "× bare",
            "result": r["result"],
        }
        for r in rows
    ]
    result["summary"] = {
        "target_met": not missed,
        "missed": [r["case"] for r in missed],
        "worst": {"case": worst["case"], "ratio": round(worst["ratio"], 3)},
    }
    result["explain"] = plans


# --- command line -----------------------------------------------------------------------------


def execution_ms(plan: str) -> float | None:
    found = re.search(r"^Execution Time: ([0-9.]+) ms", plan, re.MULTILINE)
    return float(found.group(1)) if found else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="per-minute usage records over the last 30 days (default 2,000,000; 200,000 "
        "with --quick)",
    )
    parser.add_argument("--tenants", type=int, default=200, help="tenants (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES", DEFAULT_POSTGRES),
        help=f"the server (default {DEFAULT_POSTGRES}, or $BENCH_POSTGRES)",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"the database to drop and create (default {DEFAULT_DATABASE}; its name must "
        "contain 'bench')",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 200_000 if args.quick else 2_000_000
    check_bench_database(parser, args.database)
    if args.rows < 1 or args.tenants < 1 or args.repeats < 1:
        parser.error("--rows, --tenants and --repeats must be >= 1")
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
            "tenants": args.tenants,
            "repeats": args.repeats,
            "seed": args.seed,
            "ledger_days": LEDGER_DAYS,
            "regions": list(REGIONS),
            "node_classes": [*EDGE_CLASSES, "accelerator"],
            "models": MODELS_PER_GRADE * len(GRADES),
            "offload_reasons": list(REASONS),
            "database": args.database,
        },
        "targets": {"usage_over_bare_aggregation_at_most": TARGET_RATIO},
        "results": [],
    }

    def body(result: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp:
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
