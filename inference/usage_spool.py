"""Usage on the node's disk: the journal the hot path appends to, and the spool of batches.

Exactly once, whatever moment `kill -9` picks:

- **Journal** (`STATE_DIR/usage-journal/NNNNNNNNNNNN.jsonl`): each answered inference is
  counted in memory and written as one line with one `os.write` *before* its response is sent.
  A killed process's writes are in the page cache, so they survive it; there is no fsync per
  request. Segments are numbered and rotate with the window (UTC minute): a segment holds the
  lines of one window, and the in-memory aggregate of a segment is exactly its lines.
- **Spool** (`STATE_DIR/usage.sqlite`, WAL, synchronous=NORMAL): a closed window's sealed
  segments become numbered batches in ONE transaction that also records the highest segment
  it covers (`sealed_through`). Segment files up to it are deleted after the commit. A crash
  before the commit leaves the segments to be replayed; a crash after it leaves files that the
  next start deletes unread, since the spool says they are counted. Never both.
- **Replay**: at start, segments above `sealed_through` (the killed run's) are parsed and go
  into the first fold of the new run, before any of its own; a torn last line (a write cut
  short) is ignored. New segments are numbered above every old one.
- `batch_seq` is 1, 2, 3… per node: `last_seq` lives in the spool and moves in the same
  transaction as the batches, so a number is never reused, also after a batch is deleted.

`Journal` runs on the event loop (it is the per-request part); `Spool` and `fold` are blocking
and run on the meter's single worker thread (inference/usage_meter.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from inference.metrics import UsageCounters
from inference.usage import (
    Aggregate,
    Key,
    Parsed,
    WindowKey,
    build_records,
    chunks,
    encode_line,
    merge_windows,
    parse_segment,
    window_start,
)

log = logging.getLogger(__name__)

JOURNAL_DIR = "usage-journal"
SPOOL_FILE = "usage.sqlite"
SEGMENT_SUFFIX = ".jsonl"
# After a failed journal write, lines are counted in memory only for this long before the
# disk is tried again (a full disk must not cost every request a failing system call).
WRITE_RETRY_S = 1.0
_LOG_EVERY_S = 10.0
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:012d}{SEGMENT_SUFFIX}"


def segment_ids(directory: Path) -> list[int]:
    ids = []
    for path in directory.iterdir():
        stem, suffix = path.stem, path.suffix
        if suffix == SEGMENT_SUFFIX and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


class Journal:
    """The per-request half of metering: `append` counts one answer into its window's
    aggregate and writes its line. Event loop only (no locks)."""

    def __init__(
        self,
        directory: Path,
        window_s: int,
        counters: UsageCounters,
        *,
        first_segment: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.window_s = window_s
        self.counters = counters
        self.clock = clock
        # The active segment: its id, file (opened at its first line), window and aggregates.
        self.segment = first_segment
        self._fd: int | None = None
        self._start = 0
        self._end = 0
        self._current: dict[Key, Aggregate] = {}
        # Segments no line goes to any more, waiting for the fold: id -> their aggregates.
        self.sealed: dict[int, dict[WindowKey, Aggregate]] = {}
        self._disk_retry_at = 0.0
        self._logged_at = 0.0
        self._unlogged_errors = 0

    def append(
        self,
        tenant: str,
        model: str,
        version: str,
        grade: str,
        served_by: str,
        offload_reason: str | None,
        status: int,
        latency_s: float,
        run_s: float,
        tokenised: bool,
        request_id: str,
    ) -> None:
        now = self.clock()
        if not self._start <= now < self._end:
            self._roll(now)
        key = (tenant, model, version, grade, served_by, offload_reason)
        latency_us = round(latency_s * 1_000_000)
        run_us = round(run_s * 1_000_000)
        aggregate = self._current.get(key)
        if aggregate is None:
            aggregate = self._current[key] = Aggregate()
        aggregate.add(status, latency_us / 1_000_000, run_us / 1_000_000, tokenised)
        if now < self._disk_retry_at:
            self._failed(now, "the disk failed just before; trying again shortly")
            return
        try:
            line = encode_line(self._start, key, status, latency_us, run_us, tokenised, request_id)
        except TypeError as exc:  # orjson refuses a name that is not UTF-8 (a file's stem)
            self._failed(now, f"cannot encode the line: {exc}")
            return
        try:
            fd = self._fd
            if fd is None:
                fd = self._fd = os.open(
                    segment_path(self.directory, self.segment), _OPEN_FLAGS, 0o600
                )
            written = os.write(fd, line)
        except OSError as exc:
            self._failed(now, str(exc), disk=True)
            return
        if written != len(line):
            self._failed(now, f"short write: {written} of {len(line)} bytes", disk=True)
            return
        self.counters.journal_lines += 1

    def _failed(self, now: float, reason: str, *, disk: bool = False) -> None:
        """The line is not on disk: it still counts (the aggregate has it) and is billed unless
        the process dies before its window is folded. After a disk error the segment is sealed,
        so a torn line is last in its file and the next lines start a new one."""
        self.counters.journal_errors += 1
        self._unlogged_errors += 1
        if disk:
            self._disk_retry_at = now + WRITE_RETRY_S
            self.seal()
        if now - self._logged_at >= _LOG_EVERY_S:
            log.error(
                "cannot write the usage journal in %s (%s): %d answer(s) counted in memory "
                "only; they are lost if the agent stops before they are folded into the spool",
                self.directory,
                reason,
                self._unlogged_errors,
            )
            self._logged_at = now
            self._unlogged_errors = 0

    def _roll(self, now: float) -> None:
        self.seal()
        self._start = window_start(now, self.window_s)
        self._end = self._start + self.window_s

    def seal(self) -> None:
        """No more lines go to the active segment; the next line starts a new one."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                log.warning("closing usage journal segment %d failed", self.segment, exc_info=True)
            self._fd = None
            opened = True
        else:
            opened = False
        if self._current:
            start = self._start
            self.sealed[self.segment] = {(start, key): agg for key, agg in self._current.items()}
            self._current = {}
        if opened or self.segment in self.sealed:
            self.segment += 1

    def seal_if_closed(self, now: float) -> None:
        """Seal the active segment once its window has passed (the folder's tick: a window
        with no answer after it would otherwise stay open)."""
        if not self._start <= now < self._end:
            self.seal()

    def take_sealed(self) -> dict[int, dict[WindowKey, Aggregate]]:
        """The sealed segments' aggregates, handed to a fold (give them back if it fails)."""
        taken, self.sealed = self.sealed, {}
        return taken

    def give_back(self, segments: dict[int, dict[WindowKey, Aggregate]]) -> None:
        """A fold failed: its segments wait for the next one."""
        self.sealed.update(segments)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- the spool -----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    created_at TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    records BLOB NOT NULL
);
"""


class Spool:
    """Numbered batches waiting for the console. Blocking: use from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL syncs at checkpoints, not at every commit: a commit survives the
        # process being killed (it is in the OS's cache); only a power cut may lose the latest.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def _meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def last_seq(self) -> int:
        return self._meta("last_seq")

    @property
    def sealed_through(self) -> int:
        """The highest journal segment already counted in a batch."""
        return self._meta("sealed_through")

    def commit(
        self, batches: list[tuple[bytes, int]], sealed_through: int, now: float
    ) -> list[int]:
        """Store `batches` (records JSON, record count) under the next numbers and move
        `sealed_through`, in one transaction; returns the new batch numbers."""
        created_at = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_seq
            numbers = []
            for records, count in batches:
                seq += 1
                db.execute(
                    "INSERT INTO batches (seq, created, created_at, record_count, records) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (seq, now, created_at, count, records),
                )
                numbers.append(seq)
            for key, value in (("last_seq", seq), ("sealed_through", sealed_through)):
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                    (key, value),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return numbers

    def pending(self) -> dict[int, float]:
        """batch_seq -> when it was made, of every batch not yet acknowledged."""
        return dict(self.db.execute("SELECT seq, created FROM batches ORDER BY seq"))

    def get(self, seq: int) -> tuple[str, bytes] | None:
        row = self.db.execute(
            "SELECT created_at, records FROM batches WHERE seq = ?", (seq,)
        ).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def delete(self, seq: int) -> None:
        self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def close(self) -> None:
        self.db.close()


def batch_body(node_uid: str, seq: int, created_at: str, records: bytes) -> bytes:
    """The `protocol.UsageBatch` JSON of a spooled batch: the same bytes at every attempt, so
    a repeat is a duplicate to the console, never a conflict."""
    return b'{"node_uid":%s,"batch_seq":%d,"created_at":%s,"records":%s}' % (
        orjson.dumps(node_uid),
        seq,
        orjson.dumps(created_at),
        records,
    )


# --- start and fold (the worker thread) ----------------------------------------------------


def prepare(directory: Path, spool: Spool) -> tuple[list[int], int]:
    """At start: delete the segments a batch already covers (a fold committed, then the
    process died before deleting them); return the segments left to replay, and the id the
    new run's first segment takes (above every id ever used)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    sealed_through = spool.sealed_through
    replay = []
    for segment in segment_ids(directory):
        if segment <= sealed_through:
            segment_path(directory, segment).unlink(missing_ok=True)
        else:
            replay.append(segment)
    return replay, max([sealed_through, *replay]) + 1


class Folded:
    """What one fold did, for the meter's metrics and logs."""

    __slots__ = (
        "batches",
        "created",
        "records",
        "replayed_lines",
        "problems",
        "pending",
        "energy_j",
    )

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.created = 0.0
        self.records = 0
        # Model name -> the energy_j of its records spooled (the outpost_inference_energy_joules
        # counter adds it: inference/usage_meter.py).
        self.energy_j: dict[str, float] = {}
        self.replayed_lines = 0
        self.problems: list[str] = []
        # The spool's pending batches after the fold; None if they could not be read back.
        self.pending: dict[int, float] | None = None


def fold(
    spool: Spool,
    directory: Path,
    replay: list[int],
    own: dict[int, dict[WindowKey, Aggregate]],
    *,
    measured_j: dict[int, float] | None = None,
    peak_watts: float | None = None,
    now: float | None = None,
) -> Folded:
    """Turn segments into batches: `replay` (a killed run's segments, read from disk) and
    `own` (this run's sealed segments, from memory). One transaction for all of it, then the
    segment files go. Raises only before the commit (the caller keeps both inputs for the next
    try); after it, nothing may raise, or the caller would fold the segments twice."""
    now = time.time() if now is None else now
    result = Folded()
    parts = list(own.values())
    replayed = Parsed()
    for segment in replay:
        try:
            data = segment_path(directory, segment).read_bytes()
        except FileNotFoundError:
            continue
        parse_segment(data, replayed)
        if replayed.torn:
            log.warning("usage journal segment %d ends in a torn line; ignored", segment)
            replayed.torn = False
    if replayed.bad:
        result.problems.append(f"{replayed.bad} unreadable usage journal line(s) skipped")
    result.replayed_lines = replayed.lines
    parts.append(replayed.windows)
    covered = [*replay, *own]
    if not covered:
        return result
    # Replayed windows are estimated: the killed run's energy readings died with it.
    records, problems = build_records(merge_windows(parts), measured_j, peak_watts)
    result.problems += problems
    batches = [
        (orjson.dumps([r.model_dump(mode="json") for r in chunk]), len(chunk))
        for chunk in chunks(records)
    ]
    result.batches = spool.commit(batches, max(covered), now)
    result.created, result.records = now, len(records)
    for record in records:
        result.energy_j[record.model] = result.energy_j.get(record.model, 0.0) + record.energy_j
    for segment in covered:
        try:
            segment_path(directory, segment).unlink(missing_ok=True)
        except OSError as exc:  # counted already; the next start deletes it
            log.warning("could not delete usage journal segment %d: %s", segment, exc)
    try:
        result.pending = spool.pending()
    except sqlite3.Error:
        log.warning("could not read the usage spool back after a fold", exc_info=True)
    return result
