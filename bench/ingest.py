"""Usage ingest end to end: records per second through the console's HTTP API into PostgreSQL.

What a fleet of nodes does to the console: each node POSTs numbered batches of per-minute usage
records (`inference.protocol.UsageBatch`, 5,000 records, `USAGE_MAX_RECORDS`) to
`POST /api/v1/nodes/usage` with its node credential; the console (fleet/api.py `upload_usage`,
billing/ingest.py `ingest_batch`) validates the batch and each record, stores the batch (raw,
compressed) and its records (COPY) in one transaction unique on (node, batch_seq), and marks
the hourly rollups stale. Measured against a baseline taken in the same run (the machine is
shared and noisy, so the ratios are what count):

- bare COPY:  psycopg 3 `COPY ... FROM STDIN` (`write_row`) of the same rows, already built as
              Python tuples, into a temporary table `LIKE billing_usagerecord INCLUDING DEFAULTS
              INCLUDING IDENTITY` (no indexes, no foreign keys, no WAL), one COPY and one commit
              per 5,000 rows as the API does: the floor of getting these rows into PostgreSQL
              from Python. The ratio target is against it.
- COPY into billing_usagerecord: the same COPY into the real table (its primary key and four
              secondary indexes, its two deferred foreign-key checks per row, WAL), each 5,000
              under a batch row inserted before the clock starts: what PostgreSQL itself must do
              for the ledger, whoever sends the rows. Shown for where the time goes; truncated
              afterwards.
- API:        the console served for real, production-like: gunicorn (the server of
              docker-compose.yml) with gthread workers running `console.wsgi:application`,
              DJANGO_DEBUG=false, a secret key, DJANGO_ALLOWED_HOSTS=127.0.0.1 and a signing key
              as `.ci/run` sets them for `check --deploy`, DJANGO_SECURE_SSL_REDIRECT=false (the
              setting exists for plain HTTP behind a proxy; on loopback the redirect would answer
              every POST with a 301), one run per worker count (`--workers`, default 1 and 2 on
              two cores). N enrolled nodes (`--nodes`, default 8) upload at once, one thread and
              one keep-alive httpx connection each, every node its own increasing batch_seq; the
              bodies are serialised before the clock starts (records JSON per window of minutes,
              shared by the nodes, behind each node's own header), so the client costs little
              (its CPU is reported). A warm-up pass, then a measured pass of a fixed number of
              batches (`--batches`; by default as many as take `--duration` seconds at the
              100,000 records/s target).
- Reference, not measured: Lago's published PostgreSQL-only figure, 10,000 events/s on a single
  Postgres instance (docs.getlago.com, "Performance & Optimization"). A Lago event is one usage
  event; an Outpost record is already one node's per-minute sum for a (tenant, model version,
  serving) — the comparison is of rows landed per second, not of inferences.

Set-up, each run: a fresh PostgreSQL database (`--database`, default outpost_bench_ingest;
dropped and created, dropped again at the end unless `--keep-database`), `manage.py migrate`
with DATABASE_URL pointing at it, then a small seeding script run with `manage.py shell -c` (no
Django in the bench process): tenants, a region, a node class, the nodes (credentials from
`fleet.models.Node.new_credential()`) and the catalogue model versions the records name. The
console's local state (Celery's filesystem queue for the bundle compiles the seeding asks for,
the dev key directory) goes to a temporary OUTPOST_VAR_DIR. No Celery worker runs: the ingest
marks the hourly rollups stale, and refreshing them (`refresh_rollups`) is not measured here.

Checks, each API run (a failure is a failed run, exit 1): every upload answered 200 `stored`
with all 5,000 records accepted and none quarantined; then in SQL, exactly the records sent
landed (`count(*)` and `SUM(count)` against what the bench generated, batches and their
accepted/quarantined totals, nothing in quarantine); then a few batches re-sent are answered
`duplicate` and add nothing. The ledger is truncated between runs, so every run starts from the
same empty tables; a CHECKPOINT precedes every timed pass.

CPU per record is reported from psutil: the gunicorn processes, the PostgreSQL backends of the
bench database, and the bench process itself (client or COPY); and the cores busy on the whole
machine meanwhile, with the part nobody metered (PostgreSQL's WAL writer and checkpointer, and
other people's work on a shared machine: when it is large, the records/s are low for it).
`--profile` adds, per worker count, an unmeasured pass with py-spy (`record -r 400
--nonblocking -f raw`) attached to every worker and writes into the JSON the share of samples
of each step of the ingest (`STEPS`) and the heaviest functions; the raw files are kept with
`--profile-dir`. `--gunicorn-arg` passes one more argument to gunicorn (repeatable), to measure
a server setting without editing the repository.

Run: .venv/bin/python bench/ingest.py [--quick] [--duration S] [--batches N] [--workers 1,2]
         [--nodes N] [--threads N] [--database NAME] [--keep-database]
         [--profile [--profile-dir DIR]] [--gunicorn-arg=ARG ...]
(`bench/run_all.py` finds it by its `main()`, as every benchmark here.)
Writes bench/results/ingest.json. Exit 0 even when a target is missed; non-zero when something
failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
import psutil
import psycopg
from pydantic import TypeAdapter

from bench.common import (
    LOOPBACK,
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    ServerProcess,
    base_parser,
    check_bench_database,
    checkpoint,
    database_url,
    drop_database,
    free_port,
    log,
    machine_info,
    median,
    percentile,
    print_table,
    raise_interrupt,
    recreate_database,
    resolve_timing,
    run_recorded,
)
from inference import protocol

NAME = "ingest"
PACKAGES = (
    "django",
    "django-ninja",
    "pydantic",
    "pydantic-core",
    "orjson",
    "psycopg",
    "psycopg-binary",
    "gunicorn",
    "httpx",
)

# Targets (issue 5, item 9).
RECORDS_TARGET = 100_000  # records/s through the API, at the best worker count
COPY_RATIO_TARGET = 0.3  # API records/s ÷ bare COPY records/s
LAGO_REFERENCE = 10_000  # events/s, published: Lago on a single PostgreSQL instance
LAGO_SOURCE = (
    "docs.getlago.com/guide/events/usage-performances: 'Postgres-only throughput, 10K "
    "events/sec, single Postgres instance' (published figure, not measured here)"
)

BATCH = protocol.USAGE_MAX_RECORDS
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432"
DEFAULT_DATABASE = "outpost_bench_ingest"
REGION, NODE_CLASS = "bench-eu", "standard"
# Served name -> (grade, versions): catalogue models, registered and graded by the seed script.
MODELS = {
    "bench-tiny-classifier": ("tiny", (1, 2)),
    "bench-medium-asr": ("medium", (1, 2)),
    "bench-large-vlm": ("large", (1,)),
}
DUPLICATE_CHECKS = 3

# The columns COPY writes, in billing/ingest.py's order; the histogram's le_* columns are read
# from the table itself (they follow protocol.LATENCY_BOUNDS_S).
KEY_COLUMNS = (
    "batch_id",
    "tenant_id",
    "node_uid",
    "region",
    "node_class",
    "model",
    "version",
    "grade",
    "served_by",
    "offload_reason",
    "minute",
    "received_at",
    "count",
    "errors",
    "tokenised",
    "latency_sum_s",
    "energy_j",
)
USAGE_TABLES = (
    "billing_usagerecord",
    "billing_quarantinedusage",
    "billing_stalerollup",
    "billing_usagebatch",
)

# Run with `manage.py shell -c` (Django configured from the environment); prints one JSON line.
SEED_SCRIPT = r"""
import json, os
from decimal import Decimal
from billing.models import Tenant
from fleet.models import Model, ModelVersion, Node, NodeClass, Region

cfg = json.loads(os.environ["BENCH_INGEST_SEED"])
tenants = Tenant.objects.bulk_create(
    [Tenant(slug=slug, name=f"Bench tenant {slug}") for slug in cfg["tenants"]]
)
region = Region.objects.create(
    code=cfg["region"], name="Bench region", jurisdiction="DE", residency_zone="EU"
)
node_class = NodeClass.objects.create(
    name=cfg["node_class"], capex=Decimal("4500"), amortisation_months=48,
    idle_watts=Decimal("90"), peak_watts=Decimal("350"), energy_price_per_kwh=Decimal("0.30"),
    expected_utilisation=Decimal("0.5"), memory_bytes=128 * 2**30,
)
nodes = []
for uid in cfg["nodes"]:
    credential, credential_hash = Node.new_credential()
    Node.objects.create(
        uid=uid, name=uid, region=region, node_class=node_class,
        endpoint=f"http://127.0.0.1:9/{uid}", credential_hash=credential_hash,
    )
    nodes.append({"uid": uid, "credential": credential})
for index, (name, (grade, versions)) in enumerate(cfg["models"].items()):
    model = Model.objects.create(name=name)
    for version in versions:
        ModelVersion.objects.create(
            model=model, version=version, sha256=f"{index:02x}{version:02x}" * 16,
            size_bytes=1, opset=17, status="graded", grade=grade,
        )
print("BENCH_SEED " + json.dumps({
    "tenants": {t.slug: t.pk for t in tenants},
    "nodes": nodes,
}))
"""


# --- the records ----------------------------------------------------------------------------


@dataclass
class Window:
    """BATCH consecutive records of the generated stream: the same minutes for every node."""

    index: int
    records_json: bytes  # the JSON array, as a node's agent serialises it
    rows: list[tuple]  # (tenant slug, model, version, grade, served_by, reason, minute, ...)
    count_sum: int
    last_minute: datetime


def record_stream(
    rng: random.Random, tenants: Sequence[str], start: datetime
) -> Iterator[dict[str, Any]]:
    """Per minute from `start`: for every tenant and model version, one record served
    locally and one served regionally (the reason rotating), with realistic counts."""
    versions = [(m, str(v), g) for m, (g, vs) in MODELS.items() for v in vs]
    reasons = protocol.OFFLOAD_REASONS
    minute = start
    turn = 0
    while True:
        stamp = minute.strftime("%Y-%m-%dT%H:%M:%SZ")
        for tenant in tenants:
            for model, version, grade in versions:
                for served_by in ("local", "regional"):
                    turn += 1
                    reason = None if served_by == "local" else reasons[turn % len(reasons)]
                    yield _record(rng, tenant, model, version, grade, served_by, reason, stamp)
        minute += timedelta(minutes=1)


# Midpoints of the latency buckets (seconds), for a plausible latency_sum_s.
_MIDS = [
    (lo + hi) / 2
    for lo, hi in zip(
        (0.0, *protocol.LATENCY_BOUNDS_S),
        (*protocol.LATENCY_BOUNDS_S, protocol.LATENCY_BOUNDS_S[-1] * 2),
        strict=True,
    )
]
_GRADE_BUCKET = {"tiny": 3, "medium": 7, "large": 10}


def _record(
    rng: random.Random,
    tenant: str,
    model: str,
    version: str,
    grade: str,
    served_by: str,
    reason: str | None,
    stamp: str,
) -> dict[str, Any]:
    count = rng.randint(0, 3000) if served_by == "local" else rng.randint(0, 300)
    latency = [0] * protocol.LATENCY_BUCKETS
    centre = _GRADE_BUCKET[grade] + (2 if served_by == "regional" else 0)
    left = count
    for offset in (0, 1, -1, 2):
        share = left if offset == 2 else rng.randint(0, left)
        latency[min(centre + offset, protocol.LATENCY_BUCKETS - 1)] += share
        left -= share
    return {
        "tenant": tenant,
        "model": model,
        "version": version,
        "grade": grade,
        "served_by": served_by,
        "offload_reason": reason,
        "minute": stamp,
        "count": count,
        "errors": rng.randint(0, 3),
        "latency_counts": latency,
        "latency_sum_s": round(sum(n * m for n, m in zip(latency, _MIDS, strict=True)), 6),
        "energy_j": round(count * rng.uniform(0.02, 0.2), 3),
        "tokenised": rng.randint(0, count) // 4,
    }


def make_windows(count: int, tenants: Sequence[str], seed: int) -> list[Window]:
    """`count` windows of BATCH records, starting two days ago (every minute is in the past,
    as the console requires, and the windows of one node follow each other)."""
    rng = random.Random(seed)
    start = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    stream = record_stream(rng, tenants, start)
    windows = []
    for index in range(count):
        records = [next(stream) for _ in range(BATCH)]
        rows = [
            (
                r["tenant"],
                r["model"],
                r["version"],
                r["grade"],
                r["served_by"],
                r["offload_reason"] or "",
                datetime.fromisoformat(r["minute"]),
                r["count"],
                r["errors"],
                r["tokenised"],
                r["latency_sum_s"],
                r["energy_j"],
                *r["latency_counts"],
            )
            for r in records
        ]
        windows.append(
            Window(
                index=index,
                records_json=orjson.dumps(records),
                rows=rows,
                count_sum=sum(r["count"] for r in records),
                last_minute=rows[-1][6],
            )
        )
    # One window through the wire model, as the console will read it: a bench that sends what
    # the console refuses would measure the quarantine.
    TypeAdapter(list[protocol.UsageRecord]).validate_json(windows[0].records_json)
    return windows


def batch_body(node_uid: str, seq: int, window: Window) -> bytes:
    """A node's upload: its header, then the window's records (serialised once)."""
    created = (window.last_minute + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = orjson.dumps({"node_uid": node_uid, "batch_seq": seq, "created_at": created})
    return head[:-1] + b',"records":' + window.records_json + b"}"


# --- the database ---------------------------------------------------------------------------


def console_env(db_url: str, var_dir: Path) -> dict[str, str]:
    """Production-like settings, as `.ci/run` sets them for `check --deploy`."""
    return {
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": db_url,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-" + secrets.token_urlsafe(60),
        "DJANGO_ALLOWED_HOSTS": LOOPBACK,
        # Plain HTTP on loopback: no TLS terminator in front to redirect to.
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "OUTPOST_SIGNING_KEY": protocol.private_key_to_b64(protocol.generate_private_key()),
        "OUTPOST_VAR_DIR": str(var_dir),
        "OUTPOST_LOG_LEVEL": "WARNING",
        # Whatever the caller's shell says, nothing leaves the machine: the bundle compiles the
        # seeding asks for go to a filesystem queue under var_dir that nobody reads.
        "CELERY_BROKER_URL": "filesystem://",
        "PROMETHEUS_URL": "",
        "STRIPE_API_KEY": "",
        "STRIPE_WEBHOOK_SECRET": "",
        "PYTHONUNBUFFERED": "1",
    }


def manage(env: dict[str, str], *argv: str, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"manage.py {argv[0]} did not finish in {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise BenchError(
            f"manage.py {argv[0]} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc.stdout


@dataclass
class Fleet:
    tenants: dict[str, int]  # slug -> pk
    nodes: list[dict[str, str]]  # uid, credential


def set_up(env: dict[str, str], tenants: list[str], nodes: list[str]) -> Fleet:
    started = time.monotonic()
    manage(env, "migrate", "--noinput")
    log(f"migrated in {time.monotonic() - started:.1f}s")
    seed = {
        "tenants": tenants,
        "nodes": nodes,
        "region": REGION,
        "node_class": NODE_CLASS,
        "models": {name: [grade, list(vs)] for name, (grade, vs) in MODELS.items()},
    }
    out = manage({**env, "BENCH_INGEST_SEED": json.dumps(seed)}, "shell", "-c", SEED_SCRIPT)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_SEED ")), None)
    if line is None:
        raise BenchError(f"the seed script printed no result:\n{out[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_SEED "))
    return Fleet(tenants=data["tenants"], nodes=data["nodes"])


def latency_columns(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'billing_usagerecord' AND column_name LIKE 'le\\_%' "
        "ORDER BY ordinal_position"
    ).fetchall()
    columns = [r[0] for r in rows]
    if len(columns) != protocol.LATENCY_BUCKETS:
        raise BenchError(f"billing_usagerecord has {len(columns)} histogram columns: {columns}")
    return columns


def truncate_ledger(conn: psycopg.Connection) -> None:
    conn.execute(f"TRUNCATE {', '.join(USAGE_TABLES)} RESTART IDENTITY")
    conn.commit()


def backend_pids(conn: psycopg.Connection, dbname: str) -> list[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [dbname],
    ).fetchall()
    conn.commit()
    return [r[0] for r in rows]


# --- CPU accounting -------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) spent by a fixed set of processes between start and stop."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.procs.append(psutil.Process(pid))
        self.before = self._read()

    def _read(self) -> dict[int, float]:
        out = {}
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    def stop(self) -> float:
        after = self._read()
        return sum(after[pid] - self.before.get(pid, 0.0) for pid in after)


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# --- the baselines --------------------------------------------------------------------------


def copy_rows(
    windows: Sequence[Window],
    plan: Sequence[tuple[int, int, str]],
    fleet: Fleet,
    batch_ids: Sequence[int],
) -> list[list[tuple]]:
    """The rows billing/ingest.py writes for each planned (window, seq, node) batch."""
    now = datetime.now(UTC)
    tenants = fleet.tenants
    out = []
    for (window_index, _seq, node_uid), batch_id in zip(plan, batch_ids, strict=True):
        out.append(
            [
                (
                    batch_id,
                    tenants[r[0]],
                    node_uid,
                    REGION,
                    NODE_CLASS,
                    *r[1:7],
                    now,
                    *r[7:],
                )
                for r in windows[window_index].rows
            ]
        )
    return out


def measure_copy(
    conn: psycopg.Connection,
    table: str,
    columns: Sequence[str],
    batches: list[list[tuple]],
) -> dict[str, Any]:
    """COPY each batch's rows and commit, one batch after the other; records per second."""
    pg_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.commit()
    checkpoint(conn)
    meter = CpuMeter([pg_pid])
    cpu0 = own_cpu()
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    started = time.perf_counter()
    for rows in batches:
        with conn.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    seconds = time.perf_counter() - started
    records = sum(len(b) for b in batches)
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "records_per_s": records / seconds,
        "cpu_us_per_record": {
            "postgres": meter.stop() / records * 1e6,
            "python": (own_cpu() - cpu0) / records * 1e6,
        },
    }


def baseline_bare(conn, columns, windows, plan, fleet) -> dict[str, Any]:
    conn.execute(
        "CREATE TEMP TABLE bench_copy "
        "(LIKE billing_usagerecord INCLUDING DEFAULTS INCLUDING IDENTITY)"
    )
    conn.commit()
    try:
        batches = copy_rows(windows, plan, fleet, range(1, len(plan) + 1))
        result = measure_copy(conn, "bench_copy", columns, batches)
        (landed,) = conn.execute("SELECT count(*) FROM bench_copy").fetchone()
        if landed != result["records"]:
            raise BenchError(f"bare COPY: {landed} rows landed of {result['records']}")
    finally:
        conn.rollback()
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.commit()
    return result


def baseline_real(conn, columns, windows, plan, fleet) -> dict[str, Any]:
    """COPY into billing_usagerecord under batch rows inserted beforehand; truncated after."""
    now = datetime.now(UTC)
    ids = []
    with conn.cursor() as cur:
        for _window, seq, node_uid in plan:
            cur.execute(
                "INSERT INTO billing_usagebatch (node_uid, batch_seq, region, node_class, "
                "created_at, received_at, digest, raw, records_total, accepted, quarantined) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0) RETURNING id",
                [node_uid, seq, REGION, NODE_CLASS, now, now, "0" * 64, b"", BATCH, BATCH],
            )
            ids.append(cur.fetchone()[0])
    conn.commit()
    try:
        batches = copy_rows(windows, plan, fleet, ids)
        result = measure_copy(conn, "billing_usagerecord", columns, batches)
        (landed,) = conn.execute("SELECT count(*) FROM billing_usagerecord").fetchone()
        if landed != result["records"]:
            raise BenchError(f"COPY into the ledger: {landed} rows landed of {result['records']}")
    finally:
        conn.rollback()
        truncate_ledger(conn)
    return result


# --- the API --------------------------------------------------------------------------------


@dataclass
class Upload:
    node: str
    seq: int
    window: int
    body: bytes


@dataclass
class PassResult:
    batches: int
    records: int
    count_sum: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    machine_busy_s: float = 0.0


def schedule(next_seq: dict[str, int], batches: int) -> list[tuple[str, int]]:
    """`batches` uploads spread round-robin over the nodes (in `next_seq`'s order), each
    node's next batch_seq in turn; advances `next_seq`."""
    uids = list(next_seq)
    out = []
    for i in range(batches):
        uid = uids[i % len(uids)]
        out.append((uid, next_seq[uid]))
        next_seq[uid] += 1
    return out


class Uploader:
    """The nodes: per node, its next batch_seq, its credential and its HTTP client."""

    def __init__(self, base_url: str, fleet: Fleet, windows: Sequence[Window]) -> None:
        self.url = base_url + protocol.USAGE_PATH
        self.fleet = fleet
        self.windows = windows
        self.next_seq = {n["uid"]: 1 for n in fleet.nodes}
        self.sent: list[Upload] = []  # everything stored in the current ledger

    def plan(self, batches: int) -> dict[str, list[Upload]]:
        """The next `batches` uploads (`schedule`), each node's in seq order."""
        per_node: dict[str, list[Upload]] = {n["uid"]: [] for n in self.fleet.nodes}
        for uid, seq in schedule(self.next_seq, batches):
            window = self.windows[(seq - 1) % len(self.windows)]
            per_node[uid].append(Upload(uid, seq, window.index, batch_body(uid, seq, window)))
        return per_node

    def run(
        self, batches: int, server_pids: Sequence[int], pg_pids: Sequence[int] = ()
    ) -> PassResult:
        per_node = self.plan(batches)
        credentials = {n["uid"]: n["credential"] for n in self.fleet.nodes}
        active = {uid: ups for uid, ups in per_node.items() if ups}
        barrier = threading.Barrier(len(active) + 1)
        lock = threading.Lock()
        result = PassResult(
            batches=batches,
            records=batches * BATCH,
            count_sum=sum(self.windows[u.window].count_sum for ups in active.values() for u in ups),
            seconds=0.0,
        )

        def node_thread(uid: str, uploads: list[Upload]) -> None:
            headers = {
                "Authorization": f"Bearer {credentials[uid]}",
                "Content-Type": "application/json",
            }
            with httpx.Client(timeout=300.0, headers=headers) as client:
                barrier.wait()
                for up in uploads:
                    t0 = time.perf_counter()
                    try:
                        resp = client.post(self.url, content=up.body)
                    except httpx.HTTPError as exc:
                        with lock:
                            result.errors.append(f"{uid} #{up.seq}: {exc!r}")
                        return
                    elapsed = (time.perf_counter() - t0) * 1000
                    problem = check_ack(resp, up.seq, "stored")
                    with lock:
                        result.latencies_ms.append(elapsed)
                        if problem:
                            result.errors.append(f"{uid} #{up.seq}: {problem}")
                    if problem:
                        return

        threads = [
            threading.Thread(target=node_thread, args=(uid, ups), daemon=True)
            for uid, ups in active.items()
        ]
        for t in threads:
            t.start()
        server = CpuMeter(server_pids)
        postgres = CpuMeter(pg_pids)
        cpu0 = own_cpu()
        busy0 = machine_busy()
        barrier.wait()
        started = time.perf_counter()
        for t in threads:
            t.join()
        result.seconds = time.perf_counter() - started
        result.machine_busy_s = machine_busy() - busy0
        result.client_cpu_s = own_cpu() - cpu0
        result.server_cpu_s = server.stop()
        result.postgres_cpu_s = postgres.stop()
        if result.errors:
            raise BenchError(
                f"{len(result.errors)} upload(s) failed, first: {result.errors[0]}"
                + (f"; and {result.errors[1]}" if len(result.errors) > 1 else "")
            )
        self.sent += [u for ups in active.values() for u in ups]
        return result

    def resend(self, uploads: Sequence[Upload]) -> list[dict[str, Any]]:
        credentials = {n["uid"]: n["credential"] for n in self.fleet.nodes}
        acks = []
        for up in uploads:
            resp = httpx.post(
                self.url,
                content=up.body,
                headers={
                    "Authorization": f"Bearer {credentials[up.node]}",
                    "Content-Type": "application/json",
                },
                timeout=300.0,
            )
            problem = check_ack(resp, up.seq, "duplicate")
            if problem:
                raise BenchError(f"re-sent batch {up.seq} of {up.node}: {problem}")
            acks.append({"node": up.node, "batch_seq": up.seq, **resp.json()})
        return acks


def check_ack(resp: httpx.Response, seq: int, outcome: str) -> str | None:
    """None when the console acknowledged the whole batch as `outcome`; else what is wrong."""
    if resp.status_code != 200:
        if "json" not in resp.headers.get("content-type", ""):
            return f"HTTP {resp.status_code} ({resp.headers.get('content-type', 'no body')})"
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    ack = resp.json()
    want = {"batch_seq": seq, "outcome": outcome, "accepted": BATCH, "quarantined": 0}
    if ack != want:
        return f"acknowledged {ack}, expected {want}"
    return None


def ledger_state(conn: psycopg.Connection) -> dict[str, int]:
    rec_n, rec_sum = conn.execute(
        "SELECT count(*), COALESCE(SUM(count), 0) FROM billing_usagerecord"
    ).fetchone()
    batch_n, accepted, quarantined = conn.execute(
        "SELECT count(*), COALESCE(SUM(accepted), 0), COALESCE(SUM(quarantined), 0) "
        "FROM billing_usagebatch"
    ).fetchone()
    (held,) = conn.execute("SELECT count(*) FROM billing_quarantinedusage").fetchone()
    conn.commit()
    return {
        "records": int(rec_n),
        "count_sum": int(rec_sum),
        "batches": int(batch_n),
        "batches_accepted": int(accepted),
        "batches_quarantined": int(quarantined),
        "quarantined_rows": int(held),
    }


def verify(conn: psycopg.Connection, uploader: Uploader) -> dict[str, Any]:
    """Exactly what was sent landed, once; re-sent batches are duplicates and add nothing."""
    sent = uploader.sent
    expected = {
        "records": len(sent) * BATCH,
        "count_sum": sum(uploader.windows[u.window].count_sum for u in sent),
        "batches": len(sent),
        "batches_accepted": len(sent) * BATCH,
        "batches_quarantined": 0,
        "quarantined_rows": 0,
    }
    landed = ledger_state(conn)
    if landed != expected:
        raise BenchError(f"the ledger holds {landed}, expected {expected}")
    step = max(1, len(sent) // DUPLICATE_CHECKS)
    again = sent[::step][:DUPLICATE_CHECKS]
    acks = uploader.resend(again)
    after = ledger_state(conn)
    if after != expected:
        raise BenchError(f"re-sending {len(again)} batches changed the ledger: {after}")
    return {"expected": expected, "landed": landed, "resent": acks, "after_resend": after}


def gunicorn_argv(port: int, workers: int, threads: int, extra: Sequence[str] = ()) -> list[str]:
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    return [
        gunicorn,
        "console.wsgi:application",
        f"--bind={LOOPBACK}:{port}",
        f"--workers={workers}",
        "--worker-class=gthread",
        f"--threads={threads}",
        "--timeout=300",
        "--keep-alive=30",
        "--no-control-socket",
        *extra,
    ]


def worker_pids(server: ServerProcess) -> tuple[int, list[int]]:
    assert server.proc is not None
    master = psutil.Process(server.proc.pid)
    return master.pid, [c.pid for c in master.children(recursive=True)]


def wait_workers(server: ServerProcess, count: int, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, workers = worker_pids(server)
        if len(workers) >= count:
            return workers
        time.sleep(0.1)
    raise BenchError(f"gunicorn started {len(workers)} of {count} workers")


# --- profiling ------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", str(REPO_ROOT) + "/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


# Where a sample's time goes: the first rule (in this order) one of whose names is on its
# stack. The names are billing/ingest.py's and its libraries'; "elsewhere" is the rest (HTTP
# parsing, Django's request and response, gunicorn). Time in the cyclic garbage collector has no
# frame of its own: it is charged to whatever allocated when a collection started.
STEPS = (
    ("COPY the records (_rows, write_row)", ("_insert_records ",)),
    ("parse the body (envelope validate_json)", ("TypeAdapter.validate_json ",)),
    ("validate the records (validate_python)", ("TypeAdapter.validate_python ",)),
    ("check each record (_problem)", ("_problem ",)),
    ("rollup marks (_hour per record)", ("_hour ", "_store.<locals>.<setcomp> ")),
    ("commit (deferred FK checks)", ("Atomic.__exit__ ",)),
    ("node credential (Node.authenticate)", ("Node.authenticate ",)),
    ("other SQL (batch row, tenants, versions, marks)", ("CursorWrapper.execute ",)),
    ("sha256 + zlib of the body, rest of ingest", ("ingest_batch ",)),
)


def summarize_profile(paths: Sequence[Path], top: int = 15) -> dict[str, Any]:
    """py-spy raw output (`frame;frame;... count`, root first): the share of samples each
    step of the ingest holds (STEPS), and the heaviest functions, by their own time (leaf) and
    inclusively (anywhere on the stack; the request-handling trunk every sample shares, 90 %
    and more, is left out)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                n = int(count)
                frames = [_frame_name(f) for f in stack.split(";")]
                frames = [f for f in frames if not f.startswith(("process ", "thread "))]
                if not frames:
                    continue
                total += n
                own[frames[-1]] += n
                names = set(frames)
                for name in names:
                    inclusive[name] += n
                step = next(
                    (label for label, marks in STEPS if any(f.startswith(marks) for f in names)),
                    "elsewhere (HTTP, Django request/response, gunicorn)",
                )
                steps[step] += n
    if not total:
        return {"samples": 0}

    def share(pairs: Iterable[tuple[str, int]], key: str) -> list[dict[str, Any]]:
        return [{key: name, "share": round(n / total, 4)} for name, n in pairs]

    return {
        "samples": total,
        "steps": share(steps.most_common(), "step"),
        "own": share(own.most_common(top), "function"),
        "inclusive": share(
            [(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:top], "function"
        ),
    }


def profile_pass(
    uploader: Uploader,
    workers: Sequence[int],
    batches: int,
    keep: Path | None,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not py_spy:
        raise BenchError("--profile needs py-spy (.venv/bin/py-spy)")
    out_dir = keep or work
    out_dir.mkdir(parents=True, exist_ok=True)
    spies, files = [], []
    for pid in workers:
        path = out_dir / f"ingest-{tag}-worker-{pid}.txt"
        files.append(path)
        argv = [py_spy, "record", "-p", str(pid), "-r", "400", "--nonblocking"]
        argv += ["-f", "raw", "-o", str(path)]
        spies.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    time.sleep(1.5)  # attach
    try:
        uploader.run(batches, workers)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    summary = summarize_profile(files)
    if keep:
        summary["raw_files"] = [str(p) for p in files]
    if not summary["samples"]:
        errors = " | ".join((s.stderr.read() if s.stderr else "")[-300:] for s in spies)
        raise BenchError(f"py-spy recorded nothing: {errors}")
    return summary


# --- the run --------------------------------------------------------------------------------


def measure_api(
    args: argparse.Namespace,
    workers: int,
    env: dict[str, str],
    fleet: Fleet,
    windows: Sequence[Window],
    conn: psycopg.Connection,
    work: Path,
) -> dict[str, Any]:
    truncate_ledger(conn)
    port = free_port()
    server = ServerProcess(
        f"console-gunicorn-{workers}w",
        gunicorn_argv(port, workers, args.threads, args.gunicorn_arg),
        port=port,
        log_dir=work,
        ready_path="/api/v1/openapi.json",
        env=env,
    )
    with server:
        try:
            master = worker_pids(server)[0]
            worker_list = wait_workers(server, workers)
            uploader = Uploader(server.base_url, fleet, windows)
            log(f"{workers} worker(s): warm-up, {args.warmup_batches} batches")
            uploader.run(args.warmup_batches, worker_list)
            checkpoint(conn)
            pg_pids = backend_pids(conn, args.database)
            log(f"{workers} worker(s): measuring {args.batches} batches of {BATCH} records")
            measured = uploader.run(args.batches, [master, *worker_list], pg_pids)
            server.check_alive()
            checks = verify(conn, uploader)
            profile = None
            if args.profile:
                log(f"{workers} worker(s): profiling pass, {args.profile_batches} batches")
                profile = profile_pass(
                    uploader,
                    worker_list,
                    args.profile_batches,
                    args.profile_dir,
                    work,
                    f"{workers}w",
                )
        except BenchError as exc:
            raise BenchError(f"{exc}\n{server.name} log tail:\n{server.log_tail()}") from exc
    lat = sorted(measured.latencies_ms)
    records = measured.records
    return {
        "workers": workers,
        "threads_per_worker": args.threads,
        "nodes": len(fleet.nodes),
        "batches": measured.batches,
        "records": records,
        "count_sum": measured.count_sum,
        "seconds": round(measured.seconds, 3),
        "records_per_s": records / measured.seconds,
        "batches_per_s": measured.batches / measured.seconds,
        "batch_ms": {
            "p50": percentile(lat, 50),
            "p90": percentile(lat, 90),
            "p99": percentile(lat, 99),
            "max": lat[-1],
        },
        "cpu_us_per_record": {
            "server": measured.server_cpu_s / records * 1e6,
            "postgres": measured.postgres_cpu_s / records * 1e6,
            "client": measured.client_cpu_s / records * 1e6,
        },
        "postgres_backends_metered": len(pg_pids),
        # Cores busy on average during the pass: all of them, and those not metered above
        # (PostgreSQL's WAL writer and checkpointer, and whatever else runs on the machine).
        "cores_busy": measured.machine_busy_s / measured.seconds,
        "cores_busy_elsewhere": (
            measured.machine_busy_s
            - measured.server_cpu_s
            - measured.postgres_cpu_s
            - measured.client_cpu_s
        )
        / measured.seconds,
        "verification": checks,
        "profile": profile,
    }


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    work = Path(tempfile.mkdtemp(prefix="outpost-bench-ingest-"))
    db_url = database_url(args.postgres, args.database)
    env = console_env(db_url, work / "var")
    tenants = [f"bench-t{i:03d}" for i in range(1, args.tenants + 1)]
    node_uids = [f"nd-bench{i:04d}" for i in range(1, args.nodes + 1)]
    created = False
    try:
        log(f"fresh database {args.database} on {args.postgres}")
        try:
            recreate_database(args.postgres, args.database)
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL at {args.postgres}: {exc}") from exc
        created = True
        fleet = set_up(env, tenants, node_uids)
        per_node = math.ceil((args.warmup_batches + args.batches) / args.nodes)
        started = time.monotonic()
        windows = make_windows(per_node, tenants, args.seed)
        body = batch_body(node_uids[0], 1, windows[0])
        log(
            f"{len(windows)} windows of {BATCH} records generated in "
            f"{time.monotonic() - started:.1f}s; a batch is {len(body) / 1e6:.2f} MB of JSON"
        )
        result["parameters"]["batch_body_bytes"] = len(body)
        result["parameters"]["record_json_bytes_mean"] = round(len(windows[0].records_json) / BATCH)

        # The COPY baselines write the rows the measured pass sends: the same nodes, batch
        # numbers and windows (it follows the warm-up).
        next_seq = {uid: 1 for uid in node_uids}
        schedule(next_seq, args.warmup_batches)
        plan = [
            ((seq - 1) % len(windows), seq, uid) for uid, seq in schedule(next_seq, args.batches)
        ]
        baselines: dict[str, list[dict[str, Any]]] = {"bare_copy": [], "copy_ledger": []}
        apis = []
        with psycopg.connect(db_url) as conn:
            columns = [*KEY_COLUMNS, *latency_columns(conn)]
            for workers in args.workers:
                log(f"bare COPY of {args.batches * BATCH:,} rows (temp table)")
                baselines["bare_copy"].append(baseline_bare(conn, columns, windows, plan, fleet))
                log(f"  {baselines['bare_copy'][-1]['records_per_s']:,.0f} records/s")
                log(f"COPY of {args.batches * BATCH:,} rows into billing_usagerecord")
                baselines["copy_ledger"].append(baseline_real(conn, columns, windows, plan, fleet))
                log(f"  {baselines['copy_ledger'][-1]['records_per_s']:,.0f} records/s")
                api = measure_api(args, workers, env, fleet, windows, conn, work)
                log(f"  API, {workers} worker(s): {api['records_per_s']:,.0f} records/s")
                apis.append(api)
                truncate_ledger(conn)
        result["baselines"] = baselines
        result["api"] = apis
        report(result)
    finally:
        if created and not args.keep_database:
            with contextlib.suppress(psycopg.Error):
                drop_database(args.postgres, args.database)
        if args.keep_database:
            log(f"kept database {args.database}")
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    bare = median(b["records_per_s"] for b in result["baselines"]["bare_copy"])
    ledger = median(b["records_per_s"] for b in result["baselines"]["copy_ledger"])
    p = result["parameters"]

    def cpu(d: dict[str, float], *keys: str) -> str:
        return " / ".join(f"{d[k]:.1f}" for k in keys) + f" ({' / '.join(keys)})"

    rows = [
        {
            "path": "bare COPY (psycopg 3, temp table LIKE billing_usagerecord)",
            "workers": "-",
            "rps": bare,
            "ratio": 1.0,
            "cpu": cpu(median_cpu(result["baselines"]["bare_copy"]), "python", "postgres"),
        },
        {
            "path": "COPY into billing_usagerecord (indexes, FKs, WAL)",
            "workers": "-",
            "rps": ledger,
            "ratio": ledger / bare,
            "cpu": cpu(median_cpu(result["baselines"]["copy_ledger"]), "python", "postgres"),
        },
    ]
    for api in result["api"]:
        rows.append(
            {
                "path": f"API: POST {protocol.USAGE_PATH}, gunicorn gthread",
                "workers": api["workers"],
                "rps": api["records_per_s"],
                "ratio": api["records_per_s"] / bare,
                "p50": api["batch_ms"]["p50"],
                "p99": api["batch_ms"]["p99"],
                "cpu": cpu(api["cpu_us_per_record"], "server", "postgres", "client"),
                "busy": f"{api['cores_busy']:.2f} ({api['cores_busy_elsewhere']:.2f})",
            }
        )
        api["ratio_to_bare_copy"] = api["records_per_s"] / bare
        api["ratio_to_copy_ledger"] = api["records_per_s"] / ledger
    rows.append(
        {
            "path": "Lago, PostgreSQL only (published; not measured here)",
            "workers": "-",
            "rps": float(LAGO_REFERENCE),
            "ratio": LAGO_REFERENCE / bare,
        }
    )
    print()
    print_table(
        [
            ("path", "path", ""),
            ("workers", "workers", ""),
            ("rps", "records/s", ",.0f"),
            ("ratio", "÷ bare COPY", ".2f"),
            ("p50", "batch p50 ms", ".0f"),
            ("p99", "batch p99 ms", ".0f"),
            ("cpu", "CPU µs/record", ""),
            ("busy", "cores busy (not metered)", ""),
        ],
        rows,
        title=(
            f"usage ingest, {p['batches']} batches × {BATCH:,} records "
            f"({p['batches'] * BATCH:,} records, {p['batch_body_bytes'] / 1e6:.2f} MB per batch), "
            f"{p['nodes']} nodes uploading at once, {p['threads']} threads per worker"
        ),
    )
    best = max(result["api"], key=lambda a: a["records_per_s"])
    targets = [
        {
            "target": f"API records/s ≥ {RECORDS_TARGET:,} (best: {best['workers']} worker(s))",
            "measured": best["records_per_s"],
            "limit": RECORDS_TARGET,
            "unit": "records/s",
            "result": "PASS" if best["records_per_s"] >= RECORDS_TARGET else "MISS",
        },
        {
            "target": f"API ÷ bare COPY ≥ {COPY_RATIO_TARGET} ({best['workers']} worker(s))",
            "measured": best["records_per_s"] / bare,
            "limit": COPY_RATIO_TARGET,
            "unit": "×",
            "result": "PASS" if best["records_per_s"] / bare >= COPY_RATIO_TARGET else "MISS",
        },
    ]
    result["summary"] = {
        "bare_copy_records_per_s": bare,
        "copy_ledger_records_per_s": ledger,
        "api_records_per_s": {str(a["workers"]): a["records_per_s"] for a in result["api"]},
        "best_workers": best["workers"],
    }
    result["results"] = targets
    print_table(
        [
            ("target", "target", ""),
            ("measured_s", "measured", ""),
            ("result", "result", ""),
        ],
        [
            {
                **t,
                "measured_s": (
                    f"{t['measured']:,.0f} {t['unit']}"
                    if t["unit"] == "records/s"
                    else f"{t['measured']:.2f}{t['unit']}"
                ),
            }
            for t in targets
        ],
        title="targets",
    )
    for api in result["api"]:
        if api["profile"]:
            print_profile(api["workers"], api["profile"])


def median_cpu(measurements: list[dict[str, Any]]) -> dict[str, float]:
    keys = measurements[0]["cpu_us_per_record"].keys()
    return {k: median(m["cpu_us_per_record"][k] for m in measurements) for k in keys}


def print_profile(workers: int, profile: dict[str, Any]) -> None:
    title = f"server profile, {workers} worker(s), {profile['samples']:,} samples (py-spy)"
    for key, header in (
        ("steps", "step of the ingest"),
        ("inclusive", "function (inclusive)"),
        ("own", "function (own time)"),
    ):
        label = "step" if key == "steps" else "function"
        rows = [{"name": o[label][:90], "share": o["share"] * 100} for o in profile[key]]
        print_table([("name", header, ""), ("share", "% samples", ".1f")], rows, title=title)
        title = None


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0], duration=10, warmup=2)
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        help="batches in the measured pass (default: --duration × the target rate ÷ 5,000, "
        "i.e. 200, 1,000,000 records; 40 with --quick)",
    )
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=None,
        help="batches in the warm-up pass (default: --warmup × the target rate ÷ 5,000)",
    )
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated gunicorn worker counts (default 1,2)"
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="gthread threads per worker (default 4)"
    )
    parser.add_argument(
        "--nodes", type=int, default=8, help="enrolled nodes uploading at once (default 8)"
    )
    parser.add_argument(
        "--tenants", type=int, default=20, help="tenants the records name (default 20)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
        help=f"PostgreSQL server URL without a database (default {DEFAULT_POSTGRES}, or "
        "$BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"the database to drop and create (default {DEFAULT_DATABASE}; its name must "
        "contain 'bench')",
    )
    parser.add_argument(
        "--keep-database", action="store_true", help="leave the database in place at the end"
    )
    parser.add_argument(
        "--profile", action="store_true", help="add a py-spy pass per worker count (unmeasured)"
    )
    parser.add_argument(
        "--profile-batches", type=int, default=None, help="batches of the profiling pass"
    )
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="keep py-spy's raw files here"
    )
    parser.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more gunicorn argument, to try a server setting without editing the repo "
        "(repeatable; write it with '=', e.g. --gunicorn-arg=--config=/tmp/conf.py)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the records")
    args = parser.parse_args(argv)
    resolve_timing(args)
    per_second = RECORDS_TARGET // BATCH
    if args.batches is None:
        args.batches = args.duration * per_second
    if args.warmup_batches is None:
        args.warmup_batches = max(args.nodes, args.warmup * per_second)
    if args.profile_batches is None:
        args.profile_batches = max(args.nodes * 2, args.batches // 2)
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        parser.error("--workers takes comma-separated whole numbers, e.g. 1,2")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers must name at least one count >= 1")
    if min(args.batches, args.nodes, args.threads, args.tenants, args.profile_batches) < 1:
        parser.error("--batches, --nodes, --threads, --tenants must be >= 1")
    if args.warmup_batches < 0:
        parser.error("--warmup-batches must be >= 0")
    check_bench_database(parser, args.database)
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
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "batches": args.batches,
            "warmup_batches": args.warmup_batches,
            "records_per_batch": BATCH,
            "workers": args.workers,
            "threads": args.threads,
            "server": "gunicorn --worker-class gthread console.wsgi:application",
            "gunicorn_extra_args": args.gunicorn_arg,
            "nodes": args.nodes,
            "tenants": args.tenants,
            "model_versions": sum(len(vs) for _, vs in MODELS.values()),
            "database": args.database,
            "seed": args.seed,
            "profile": args.profile,
        },
        "targets": {
            "api_records_per_s_at_least": RECORDS_TARGET,
            "api_over_bare_copy_at_least": COPY_RATIO_TARGET,
            "reference": {"lago_postgres_events_per_s": LAGO_REFERENCE, "source": LAGO_SOURCE},
        },
    }
    signal.signal(signal.SIGTERM, raise_interrupt)
    return run_recorded(NAME, output, result, lambda result: run(args, result))


if __name__ == "__main__":
    sys.exit(main())
