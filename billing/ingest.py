"""Usage ingest: a node's batch in, each inference counted exactly once.

`ingest_batch` takes the raw body a node POSTed to /api/v1/nodes/usage (fleet/api.py checks
the node's credential and says who it is) and, in ONE transaction:

- refuses a body that is not a usage batch of this node (400: the node keeps it, nothing is
  stored);
- answers a batch number it has seen: the same content is a `duplicate` (acknowledged, not
  counted again); other content under the same number is a `conflict`, kept whole in
  quarantine for an operator (acknowledged, so the node stops resending it; nothing lost);
- otherwise stores the batch (raw, compressed, for audit), its valid records, and its invalid
  records in `QuarantinedUsage` with their reason; marks the (tenant, hour) rollups it touches
  stale for `refresh_rollups`.

The unique constraint on (node_uid, batch_seq) is the guard, not a prior SELECT: two uploads of
one batch racing each other cannot both insert; the loser's transaction rolls back and it is
answered as a repeat.

Records go in with COPY on PostgreSQL (psycopg 3) and bulk_create elsewhere.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import zlib
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from pydantic import TypeAdapter, ValidationError

from billing.models import Tenant
from billing.models.usage import (
    LATENCY_COLUMNS,
    QuarantinedUsage,
    StaleRollup,
    UsageBatch,
    UsageHourly,
    UsageRecord,
)
from inference import protocol

log = logging.getLogger(__name__)

# A window this far ahead of the console's clock is refused (clocks drift; minutes do not
# arrive from the future).
MAX_FUTURE = timedelta(minutes=5)
_BATCH = TypeAdapter(protocol.UsageBatch)
_RECORD = TypeAdapter(protocol.UsageRecord)

# (model name, version) -> known to the console's registry. fleet supplies it (billing does
# not import fleet): given the pairs of a batch, it returns those that exist.
KnownVersions = Callable[[set[tuple[str, str]]], set[tuple[str, str]]]


class BatchRejected(Exception):
    """The body is not a usage batch this node may send; nothing was stored."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class NodeFacts:
    uid: str
    region: str
    node_class: str


class _Envelope(protocol.WireModel):
    # The batch without its records, which are validated one by one (a bad record is
    # quarantined, it does not refuse the batch).
    node_uid: str
    batch_seq: int
    created_at: datetime
    records: list[object]


_ENVELOPE = TypeAdapter(_Envelope)


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A batch as read: its header, the records that parsed, and those that did not (each
    with why)."""

    node_uid: str
    batch_seq: int
    created_at: datetime
    records: list[protocol.UsageRecord]
    malformed: list[tuple[object, str]]

    @property
    def size(self) -> int:
        return len(self.records) + len(self.malformed)


@contextmanager
def _collector_paused():
    """A batch is ~100,000 small objects and no cycles: the collector's passes over them were
    a third of ingest's CPU (bench/ingest.py), for nothing to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse(body: bytes) -> _Parsed:
    with _collector_paused():
        try:
            # The common case: one pass of pydantic-core straight from the bytes.
            batch = _BATCH.validate_json(body)
            return _Parsed(
                batch.node_uid, batch.batch_seq, batch.created_at, list(batch.records), []
            )
        except ValidationError:
            pass
        # Something is wrong: the header refuses the batch, a bad record only itself.
        try:
            envelope = _ENVELOPE.validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise BatchRejected(f"not a usage batch: {where}: {first.get('msg')}") from exc
        if len(envelope.records) > protocol.USAGE_MAX_RECORDS:
            raise BatchRejected(
                f"a batch holds at most {protocol.USAGE_MAX_RECORDS} records, "
                f"this one {len(envelope.records)}"
            )
        records, malformed = [], []
        for raw in envelope.records:
            try:
                records.append(_RECORD.validate_python(raw))
            except ValidationError as exc:
                malformed.append((raw, _first_problem(exc)))
        return _Parsed(
            envelope.node_uid, envelope.batch_seq, envelope.created_at, records, malformed
        )


def ingest_batch(
    body: bytes,
    node: NodeFacts,
    known_versions: KnownVersions,
    *,
    now: datetime | None = None,
) -> protocol.UsageAck:
    now = now or timezone.now()
    parsed = _parse(body)
    if parsed.node_uid != node.uid:
        raise BatchRejected(
            f"this credential belongs to node {node.uid}, not {parsed.node_uid}", 403
        )
    if parsed.batch_seq < 1:
        raise BatchRejected("batch_seq starts at 1")
    digest = hashlib.sha256(body).hexdigest()
    try:
        with transaction.atomic(), _collector_paused():
            return _store(parsed, body, digest, node, known_versions, now)
    except IntegrityError:
        # Another upload of this batch number committed first (or this is a retry).
        if not UsageBatch.objects.filter(node_uid=node.uid, batch_seq=parsed.batch_seq).exists():
            raise
        return _repeat(parsed, body, digest, node, now)


def _repeat(
    envelope: _Parsed, body: bytes, digest: str, node: NodeFacts, now: datetime
) -> protocol.UsageAck:
    stored = UsageBatch.objects.get(node_uid=node.uid, batch_seq=envelope.batch_seq)
    if stored.digest == digest:
        return protocol.UsageAck(
            batch_seq=envelope.batch_seq,
            outcome="duplicate",
            accepted=stored.accepted,
            quarantined=stored.quarantined,
        )
    ack = protocol.UsageAck(
        batch_seq=envelope.batch_seq, outcome="conflict", accepted=0, quarantined=1
    )
    if QuarantinedUsage.objects.filter(batch=stored, reason__contains=digest[:12]).exists():
        return ack  # this conflicting body is in quarantine already
    log.error(
        "node %s sent batch %d again with other content; kept in quarantine",
        node.uid,
        envelope.batch_seq,
    )
    QuarantinedUsage.objects.create(
        batch=stored,
        node_uid=node.uid,
        record={"conflicting_batch": orjson.loads(body)},
        reason=(
            f"batch {envelope.batch_seq} arrived again with other content (sha256 {digest[:12]}, "
            f"stored {stored.digest[:12]}); not counted"
        ),
        received_at=now,
    )
    return ack


def _store(
    envelope: _Parsed,
    body: bytes,
    digest: str,
    node: NodeFacts,
    known_versions: KnownVersions,
    now: datetime,
) -> protocol.UsageAck:
    batch = _insert_batch(
        UsageBatch(
            node_uid=node.uid,
            batch_seq=envelope.batch_seq,
            region=node.region,
            node_class=node.node_class,
            created_at=envelope.created_at,
            received_at=now,
            digest=digest,
            raw=zlib.compress(body, 1),
            records_total=envelope.size,
        )
    )
    valid, rejected = _validate(envelope.records, known_versions, now)
    rejected = [*envelope.malformed, *rejected]
    tenants = dict(
        Tenant.objects.filter(slug__in={r.tenant for r in valid}).values_list("slug", "pk")
    )
    rows: list[protocol.UsageRecord] = []
    for record in valid:
        if record.tenant in tenants:
            rows.append(record)
        else:
            rejected.append((record.model_dump(mode="json"), f"unknown tenant {record.tenant!r}"))
    _insert_records(batch, node, rows, tenants, now)
    QuarantinedUsage.objects.bulk_create(
        QuarantinedUsage(
            batch=batch,
            node_uid=node.uid,
            tenant_slug=str(raw.get("tenant", ""))[:50] if isinstance(raw, dict) else "",
            minute=_minute_of(raw),
            record=raw,
            reason=reason[:500],
            received_at=now,
        )
        for raw, reason in rejected
    )
    if rejected:
        log.warning(
            "batch %d of node %s: %d record(s) quarantined (first: %s)",
            envelope.batch_seq,
            node.uid,
            len(rejected),
            rejected[0][1],
        )
    # A batch holds a few minutes of a few tenants: hours from the distinct pairs only.
    minutes = {(r.tenant, r.minute) for r in rows}
    StaleRollup.objects.bulk_create(
        [
            StaleRollup(tenant_id=tenant_id, hour=hour)
            for tenant_id, hour in {(tenants[t], _hour(m)) for t, m in minutes}
        ],
        ignore_conflicts=True,
    )
    batch.accepted, batch.quarantined = len(rows), len(rejected)
    batch.save(update_fields=["accepted", "quarantined"])
    return protocol.UsageAck(
        batch_seq=envelope.batch_seq,
        outcome="stored",
        accepted=len(rows),
        quarantined=len(rejected),
    )


def _validate(
    parsed: list[protocol.UsageRecord], known_versions: KnownVersions, now: datetime
) -> tuple[list[protocol.UsageRecord], list[tuple[object, str]]]:
    """Of records that parsed, those that may be counted and the others with their reason."""
    rejected: list[tuple[object, str]] = []
    known = known_versions({(r.model, r.version) for r in parsed})
    latest = now + MAX_FUTURE
    valid = []
    for record in parsed:
        problem = _problem(record, known, latest)
        if problem is None:
            valid.append(record)
        else:
            rejected.append((record.model_dump(mode="json"), problem))
    return valid, rejected


def _problem(
    record: protocol.UsageRecord, known: set[tuple[str, str]], latest: datetime
) -> str | None:
    minute = record.minute
    if minute.second or minute.microsecond:
        return f"minute {minute.isoformat()} is not the start of a minute"
    if minute > latest:
        return f"minute {minute.isoformat()} is in the future"
    if sum(record.latency_counts) != record.count:
        return (
            f"the latency histogram holds {sum(record.latency_counts)} inferences, "
            f"the count says {record.count}"
        )
    if record.tokenised > record.count + record.errors:
        return f"tokenised {record.tokenised} is more than the {record.count} inferences"
    if (record.served_by == "local") != (record.offload_reason is None):
        return (
            "an offload reason belongs to regional serving only"
            if record.served_by == "local"
            else "a regional record needs its offload reason"
        )
    if (record.model, record.version) not in known:
        return f"unknown model version {record.model} v{record.version}"
    return None


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "record"
    return f"malformed record: {where}: {first.get('msg')}"


def _minute_of(raw: object) -> datetime | None:
    if not isinstance(raw, dict):
        return None
    try:
        value = datetime.fromisoformat(str(raw.get("minute", "")))
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _hour(minute: datetime) -> datetime:
    return minute.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# --- writing the records -----------------------------------------------------------------------


def _insert_batch(batch: UsageBatch) -> UsageBatch:
    """Insert the batch row. On PostgreSQL its raw body (~200 kB compressed) is bound on the
    server, in binary: Django's client-side binding escapes bytea in Python, which cost a
    sixth of ingest's CPU (bench/ingest.py --profile)."""
    if connection.vendor != "postgresql":
        batch.save(force_insert=True)
        return batch
    import psycopg

    fields = [f for f in UsageBatch._meta.concrete_fields if not f.primary_key]
    q = connection.ops.quote_name
    sql = (
        f"INSERT INTO {q(UsageBatch._meta.db_table)} "  # noqa: S608
        f"({', '.join(q(f.column) for f in fields)}) "
        f"VALUES ({', '.join('%b' if f.name == 'raw' else '%s' for f in fields)}) RETURNING id"
    )
    values = [f.get_db_prep_save(getattr(batch, f.attname), connection) for f in fields]
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        try:
            cursor.execute(sql, values)
        except psycopg.IntegrityError as exc:  # as Django's own cursor would raise it
            raise IntegrityError(*exc.args) from exc
        batch.pk = cursor.fetchone()[0]
    batch._state.adding = False
    return batch


_COLUMNS = (
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
    *LATENCY_COLUMNS,
)


# PostgreSQL types of _COLUMNS, in order, for the binary COPY.
_COPY_TYPES = (
    "int8", "int8", *["text"] * 8, "timestamptz", "timestamptz", "int8", "int8", "int8",
    "float8", "float8", *["int8"] * len(LATENCY_COLUMNS),
)  # fmt: skip
assert len(_COPY_TYPES) == len(_COLUMNS)


def _rows(
    batch: UsageBatch,
    node: NodeFacts,
    records: Iterable[protocol.UsageRecord],
    tenants: dict[str, int],
    now: datetime,
) -> Iterable[tuple]:
    for r in records:
        yield (
            batch.pk,
            tenants[r.tenant],
            node.uid,
            node.region,
            node.node_class,
            r.model,
            r.version,
            r.grade,
            r.served_by,
            r.offload_reason or "",
            r.minute,  # aware; the database stores it in UTC
            now,
            r.count,
            r.errors,
            r.tokenised,
            r.latency_sum_s,
            r.energy_j,
            *r.latency_counts,
        )


def _insert_records(
    batch: UsageBatch,
    node: NodeFacts,
    records: list[protocol.UsageRecord],
    tenants: dict[str, int],
    now: datetime,
) -> None:
    if not records:
        return
    rows = _rows(batch, node, records, tenants, now)
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(UsageRecord._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(c) for c in _COLUMNS)
        sql = f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"  # noqa: S608
        with connection.cursor() as cursor:
            with cursor.cursor.copy(sql) as copy:
                # Binary: psycopg packs each value in C instead of formatting text in Python.
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        return
    UsageRecord.objects.bulk_create(
        (UsageRecord(**dict(zip(_COLUMNS, row, strict=True))) for row in rows), batch_size=500
    )


# --- rollups -----------------------------------------------------------------------------------

_KEY = (
    "tenant_id",
    "region",
    "node_class",
    "model",
    "version",
    "grade",
    "served_by",
    "offload_reason",
)
_FACTS = ("count", "errors", "tokenised", "latency_sum_s", "energy_j", *LATENCY_COLUMNS)


def refresh_rollups(limit: int = 500) -> int:
    """Recompute the hourly rollups of up to `limit` stale (tenant, hour) pairs; returns how
    many. Each pair in its own transaction: its mark is deleted first, so an ingest that
    commits meanwhile marks it again and the next run picks it up (nothing is missed)."""
    done = 0
    for mark_id, tenant_id, hour in StaleRollup.objects.order_by("hour").values_list(
        "pk", "tenant_id", "hour"
    )[:limit]:
        with transaction.atomic():
            if not StaleRollup.objects.filter(pk=mark_id).delete()[0]:
                continue  # another worker took it
            recompute_hour(tenant_id, hour)
        done += 1
    return done


def recompute_hour(tenant_id: int, hour: datetime) -> None:
    """Replace the rollups of one tenant and hour with the sums of its records."""
    UsageHourly.objects.filter(tenant_id=tenant_id, hour=hour).delete()
    q = connection.ops.quote_name
    key = ", ".join(q(c) for c in _KEY)
    sums = ", ".join(f"SUM({q(c)})" for c in _FACTS)
    target = ", ".join(q(c) for c in (*_KEY, "hour", *_FACTS))
    sql = (
        f"INSERT INTO {q(UsageHourly._meta.db_table)} ({target}) "  # noqa: S608
        f"SELECT {key}, %s, {sums} FROM {q(UsageRecord._meta.db_table)} "
        f"WHERE {q('tenant_id')} = %s AND {q('minute')} >= %s AND {q('minute')} < %s "
        f"GROUP BY {key}"
    )
    start, end = (
        connection.ops.adapt_datetimefield_value(t) for t in (hour, hour + timedelta(hours=1))
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, tenant_id, start, end])
