"""Usage metering, the pure parts: per-minute aggregates, the journal's line format, energy.

Every inference an enrolled node answers is billed exactly once, by the node that served it
(DESIGN §4). The agent counts each answer into an `Aggregate` for its key — tenant, model,
version, grade, served_by, offload reason — within the window (the minute, UTC) of its answer,
and writes one journal line for it (`encode_line`) before the response leaves
(`inference/usage_spool.py`). Closed windows become `protocol.UsageRecord`s (`build_records`),
their energy measured by RAPL when the node can read it, else estimated from the node class's
power model (`window_energy`).

Nothing here does I/O except `read_rapl`, which reads a few sysfs files; everything else is a
function of its arguments, tested in tests/inference/test_usage.py.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from pydantic import ValidationError

from inference import protocol

# (tenant, model, version, grade, served_by, offload_reason)
Key = tuple[str, str, str, str, str, str | None]
# A window's start (whole seconds since the epoch, UTC) and a key.
WindowKey = tuple[int, Key]

_BOUNDS = protocol.LATENCY_BOUNDS_S
_BUCKETS = protocol.LATENCY_BUCKETS
_LINE = orjson.OPT_APPEND_NEWLINE
# Fields of a journal line (encode_line), in order.
LINE_FIELDS = (
    "window",
    "tenant",
    "model",
    "version",
    "grade",
    "served_by",
    "offload_reason",
    "status",
    "latency_us",
    "run_us",
    "tokenised",
    "request_id",
)
_GRADES = frozenset(("tiny", "medium", "large"))
_SERVED_BY = frozenset(("local", "regional"))


def window_start(now: float, window_s: int) -> int:
    """The start of the window holding `now` (seconds since the epoch): windows are aligned
    to the epoch, so with 60 s they are UTC minutes."""
    return int(now // window_s) * window_s


def latency_bucket(seconds: float) -> int:
    """Index into `latency_counts`: the first bound >= seconds (Prometheus' `le`), or the
    last bucket (+Inf) for slower answers."""
    return bisect_left(_BOUNDS, seconds)


class Aggregate:
    """The answers of one key in one window. Updated on the event loop, once per answer."""

    __slots__ = ("count", "errors", "latency_counts", "latency_sum_s", "run_s", "tokenised")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.latency_counts = [0] * _BUCKETS
        self.latency_sum_s = 0.0
        # Model run time these answers took (their share of the batches they ran in): what
        # the window's measured energy is divided by.
        self.run_s = 0.0
        self.tokenised = 0

    def add(self, status: int, latency_s: float, run_s: float, tokenised: bool) -> None:
        if status < 400:
            self.count += 1
            self.latency_counts[bisect_left(_BOUNDS, latency_s)] += 1
            self.latency_sum_s += latency_s
            if tokenised:
                self.tokenised += 1
        else:
            self.errors += 1
        self.run_s += run_s

    def merge(self, other: Aggregate) -> None:
        self.count += other.count
        self.errors += other.errors
        for i, count in enumerate(other.latency_counts):
            self.latency_counts[i] += count
        self.latency_sum_s += other.latency_sum_s
        self.run_s += other.run_s
        self.tokenised += other.tokenised


def merge_windows(parts: Iterable[dict[WindowKey, Aggregate]]) -> dict[WindowKey, Aggregate]:
    """One aggregate per (window, key) from several (segments of the journal)."""
    merged: dict[WindowKey, Aggregate] = {}
    for part in parts:
        for wkey, aggregate in part.items():
            mine = merged.get(wkey)
            if mine is None:
                mine = merged[wkey] = Aggregate()
            mine.merge(aggregate)
    return merged


# --- the journal's lines -------------------------------------------------------------------


def to_micros(seconds: float) -> int:
    """Latency and run time travel in the journal as whole microseconds; the hot path counts
    the rounded value too, so a replayed line adds up exactly as the live one did."""
    return round(seconds * 1_000_000)


def encode_line(
    window: int,
    key: Key,
    status: int,
    latency_us: int,
    run_us: int,
    tokenised: bool,
    request_id: str,
) -> bytes:
    """One answered request as one compact JSON line (LINE_FIELDS), newline included."""
    tenant, model, version, grade, served_by, reason = key
    return orjson.dumps(
        (
            window,
            tenant,
            model,
            version,
            grade,
            served_by,
            reason,
            status,
            latency_us,
            run_us,
            1 if tokenised else 0,
            request_id,
        ),
        option=_LINE,
    )


class Parsed:
    """What a journal segment holds: the aggregates of its lines, and what was unreadable."""

    __slots__ = ("windows", "lines", "bad", "torn", "request_ids")

    def __init__(self) -> None:
        self.windows: dict[WindowKey, Aggregate] = {}
        self.lines = 0
        # Complete lines that are not a journal line (they are skipped, and logged).
        self.bad = 0
        # The last line had no newline: a write cut short. It is ignored (see parse_segment).
        self.torn = False
        self.request_ids: list[str] = []


def parse_segment(data: bytes, parsed: Parsed | None = None, *, keep_ids: bool = False) -> Parsed:
    """Add the lines of one journal segment to `parsed` (a new one if None).

    A segment is only ever appended to, one whole line per `os.write`, so the only damage a
    crash can leave is a last line without its newline: a write the kernel cut short (disk
    full, or power lost before the page cache reached the disk). Such a line is ignored: the
    agent saw the short write and counted the answer in memory, and after a power loss its
    answer may never have left either. Any other line that is not a journal line is skipped
    and counted in `bad`.
    """
    parsed = parsed if parsed is not None else Parsed()
    lines = data.split(b"\n")
    if lines[-1]:
        parsed.torn = True
    for raw in lines[:-1]:
        if not raw:
            continue
        row = _decode(raw)
        if row is None:
            parsed.bad += 1
            continue
        window, key, status, latency_us, run_us, tokenised, request_id = row
        wkey = (window, key)
        aggregate = parsed.windows.get(wkey)
        if aggregate is None:
            aggregate = parsed.windows[wkey] = Aggregate()
        aggregate.add(status, latency_us / 1_000_000, run_us / 1_000_000, tokenised)
        parsed.lines += 1
        if keep_ids:
            parsed.request_ids.append(request_id)
    return parsed


def _decode(raw: bytes) -> tuple[int, Key, int, int, int, bool, str] | None:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, list) or len(row) != len(LINE_FIELDS):
        return None
    window, tenant, model, version, grade, served_by, reason, status, lat, run, tok, rid = row
    if not (
        type(window) is int
        and isinstance(tenant, str)
        and isinstance(model, str)
        and isinstance(version, str)
        and grade in _GRADES
        and served_by in _SERVED_BY
        and (reason is None or reason in protocol.OFFLOAD_REASONS)
        and type(status) is int
        and type(lat) is int
        and lat >= 0
        and type(run) is int
        and run >= 0
        and tok in (0, 1)
        and isinstance(rid, str)
    ):
        return None
    return (
        window,
        (tenant, model, version, grade, served_by, reason),
        status,
        lat,
        run,
        tok == 1,
        rid,
    )


# --- energy --------------------------------------------------------------------------------

RAPL_ROOT = Path("/sys/class/powercap")
# Top-level RAPL domains are packages (intel-rapl:0, intel-rapl:1); intel-rapl:0:0 and the like
# are parts of a package (cores, uncore, dram) already counted in it.
_PACKAGE = re.compile(r"intel-rapl:\d+")

# Per package: (energy_uj, max_energy_range_uj).
RaplReading = tuple[tuple[int, int], ...]


def read_rapl(root: Path = RAPL_ROOT) -> RaplReading | None:
    """The packages' energy counters, or None when there are none or one is unreadable
    (since Linux 5.10 `energy_uj` is readable by root only)."""
    try:
        domains = sorted(p for p in root.iterdir() if _PACKAGE.fullmatch(p.name))
    except OSError:
        return None
    if not domains:
        return None
    reading = []
    for domain in domains:
        try:
            energy = int((domain / "energy_uj").read_text())
            limit = int((domain / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            return None
        reading.append((energy, limit))
    return tuple(reading)


def rapl_joules(before: RaplReading, after: RaplReading) -> float | None:
    """Joules spent between two readings; a counter that passed its range wrapped around
    once (readings are taken every window, far more often than a counter wraps). None when
    the readings do not describe the same packages."""
    if len(before) != len(after):
        return None
    total_uj = 0
    for (was, limit), (now, limit_now) in zip(before, after, strict=True):
        if limit != limit_now:
            return None
        total_uj += now - was if now >= was else now + limit - was
    return total_uj / 1_000_000


def window_energy(
    run_s: list[float], measured_j: float | None, peak_watts: float | None
) -> list[float]:
    """The energy of each record of one window, given each one's model run time.

    Measured (RAPL for the whole window): divided by the records' shares of the run time
    (evenly when none ran, e.g. only errors). Not measured: each record's run time at the
    node class's peak power, the busy part of its power model; without one, 0.0.
    """
    if measured_j is not None:
        total = sum(run_s)
        if total > 0:
            return [measured_j * s / total for s in run_s]
        return [measured_j / len(run_s)] * len(run_s) if run_s else []
    watts = peak_watts or 0.0
    return [s * watts for s in run_s]


# --- records and batches -------------------------------------------------------------------


def build_records(
    windows: dict[WindowKey, Aggregate],
    measured_j: dict[int, float] | None = None,
    peak_watts: float | None = None,
) -> tuple[list[protocol.UsageRecord], list[str]]:
    """The usage records of these aggregates in a stable order (window, then key), with
    their energy; and why any aggregate the protocol refuses (a name too long, say) was left
    out, so that one bad key cannot hold back the others."""
    measured_j = measured_j or {}
    by_window: dict[int, list[tuple[Key, Aggregate]]] = {}
    for (window, key), aggregate in sorted(windows.items(), key=_order):
        by_window.setdefault(window, []).append((key, aggregate))
    records, problems = [], []
    for window, rows in by_window.items():
        energies = window_energy([a.run_s for _, a in rows], measured_j.get(window), peak_watts)
        minute = datetime.fromtimestamp(window, UTC)
        for (key, aggregate), energy in zip(rows, energies, strict=True):
            try:
                records.append(record(minute, key, aggregate, energy))
            except ValidationError as exc:
                problems.append(
                    f"usage of {key[:3]} at {minute.isoformat()} left out: {exc.errors()[0]['msg']}"
                )
    return records, problems


def _order(item: tuple[WindowKey, Aggregate]) -> tuple:
    (window, (tenant, model, version, grade, served_by, reason)), _ = item
    return (window, tenant, model, version, grade, served_by, reason or "")


def record(
    minute: datetime, key: Key, aggregate: Aggregate, energy_j: float
) -> protocol.UsageRecord:
    tenant, model, version, grade, served_by, reason = key
    return protocol.UsageRecord(
        tenant=tenant,
        model=model,
        version=version,
        grade=grade,  # type: ignore[arg-type]
        served_by=served_by,  # type: ignore[arg-type]
        offload_reason=reason,  # type: ignore[arg-type]
        minute=minute,
        count=aggregate.count,
        errors=aggregate.errors,
        latency_counts=list(aggregate.latency_counts),
        latency_sum_s=aggregate.latency_sum_s,
        energy_j=energy_j,
        tokenised=aggregate.tokenised,
    )


def chunks(items: list, size: int = protocol.USAGE_MAX_RECORDS) -> Iterator[list]:
    """`items` cut into lists of at most `size` (a batch holds USAGE_MAX_RECORDS records)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
