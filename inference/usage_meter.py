"""The usage meter of an enrolled node: the journal, the fold of closed windows into the spool,
and the upload of spooled batches to the console.

Three parts, all off the request path except `journal.append` (inference/usage_spool.py):

- `open()` (before the server starts): locks `STATE_DIR/usage.lock` (two agents on one state
  dir would number segments and batches twice), opens the spool, deletes covered segments and
  notes the killed run's segments for replay.
- `run_folding()`: wakes just after each window boundary, reads RAPL (when readable) for the
  window that closed, seals the journal's segment and folds every sealed segment (and, the first
  time, the replayed ones) into batches, in the worker thread. The records' energy is added to
  the `outpost_inference_energy_joules` counter by model once the fold committed them.
- `run_uploads()`: POSTs the oldest spooled batch to `console_url + protocol.USAGE_PATH` with
  the node credential; deletes it only after a 200 whose `UsageAck` names its batch_seq
  (stored, duplicate or conflict). Network errors, 429 and 5xx are retried with capped
  exponential backoff and jitter; any other answer means the console refuses the batch: it
  is logged loudly with the console's message and kept, and the upload backs off.

Blocking work (SQLite, reading segments, sysfs) runs on one worker thread, so the spool's
connection is only ever used by that thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError

from inference import protocol
from inference.agent import backoff_delay, error_text
from inference.metrics import UsageCounters
from inference.usage import RAPL_ROOT, RaplReading, rapl_joules, read_rapl, window_start
from inference.usage_spool import (
    JOURNAL_DIR,
    SPOOL_FILE,
    Folded,
    Journal,
    Spool,
    batch_body,
    fold,
    prepare,
)

log = logging.getLogger(__name__)

LOCK_FILE = "usage.lock"
# The fold runs this long after a window closes (the boundary itself may find a line being
# stamped with the old window in the same loop step).
TICK_AFTER_BOUNDARY_S = 0.02
UPLOAD_TIMEOUT_S = 30.0
# How often an idle uploader looks again without being woken (identity known, spool empty).
IDLE_POLL_S = 1.0
T = TypeVar("T")


class UsageError(Exception):
    pass


class UsageMeter:
    def __init__(
        self,
        state_dir: Path,
        *,
        console_url: str,
        identity: Callable[[], protocol.EnrollResponse | None],
        counters: UsageCounters | None = None,
        window_s: int = protocol.USAGE_WINDOW_S,
        peak_watts: Callable[[], float | None] = lambda: None,
        client: httpx.AsyncClient | None = None,
        rapl_root: Path = RAPL_ROOT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.url = console_url.rstrip("/") + protocol.USAGE_PATH
        self.identity = identity
        self.counters = counters if counters is not None else UsageCounters()
        self.window_s = window_s
        self.peak_watts = peak_watts
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(UPLOAD_TIMEOUT_S))
        self.rapl_root = rapl_root
        self.clock = clock
        self.journal: Journal | None = None
        self.spool: Spool | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outpost-usage")
        self._replay: list[int] = []
        self._lock_fd: int | None = None
        self._wake: asyncio.Event | None = None
        # Joules RAPL measured per window start, and the reading the next window starts from.
        self.measured_j: dict[int, float] = {}
        self._rapl: tuple[int, RaplReading] | None = None
        self._fold_lock: asyncio.Lock | None = None
        self._inflight: asyncio.Future | None = None

    # --- start and stop ------------------------------------------------------------------

    def open(self) -> None:
        """Take the state dir's usage lock, open the spool, prepare the journal; raises
        UsageError saying what is wrong (before the agent serves anything)."""
        directory = self.state_dir / JOURNAL_DIR
        lock = self.state_dir / LOCK_FILE
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot open {lock}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(
                f"another agent is using {self.state_dir} (it holds {lock}); two agents on one "
                "state dir would count the same usage twice"
            ) from None
        self._lock_fd = fd

        def start() -> tuple[Spool, list[int], int]:
            spool = Spool(self.state_dir / SPOOL_FILE)
            replay, first = prepare(directory, spool)
            self.counters.pending = spool.pending()
            return spool, replay, first

        try:
            self.spool, self._replay, first = self._worker.submit(start).result()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(
                f"cannot open the usage spool in {self.state_dir}: {type(exc).__name__}: {exc}"
            ) from exc
        self.journal = Journal(directory, self.window_s, self.counters, first_segment=first)
        if self._replay:
            log.info(
                "usage: %d journal segment(s) of the previous run to replay; %d batch(es) "
                "waiting for the console",
                len(self._replay),
                len(self.counters.pending),
            )

    async def close(self) -> None:
        """Fold what is left (the open window too: the next run starts its own segments) and
        let go of the files. Unfolded lines stay in the journal for the next start."""
        if self.journal is not None:
            self.journal.seal()
            try:
                await self.fold_now()
            except Exception:
                log.exception(
                    "usage: the last fold failed; the journal keeps it for the next start"
                )
            self.journal.close()
        spool = self.spool
        if spool is not None:
            await self._in_worker(spool.close)
        self._worker.shutdown(wait=True)
        await self.client.aclose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _in_worker(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *args)

    # --- folding -------------------------------------------------------------------------

    async def run_folding(self) -> None:
        await self.sample_energy()
        while True:
            now = self.clock()
            boundary = window_start(now, self.window_s) + self.window_s
            await asyncio.sleep(max(0.0, boundary - now) + TICK_AFTER_BOUNDARY_S)
            await self.sample_energy()
            try:
                await self.fold_now()
            except (OSError, sqlite3.Error) as exc:
                log.error(
                    "usage: folding into the spool failed (%s: %s); the journal keeps the "
                    "usage and the next window tries again",
                    type(exc).__name__,
                    exc,
                )
            except Exception:  # a bug must not stop metering: the next window tries again
                log.exception("usage: folding into the spool failed")

    async def sample_energy(self) -> None:
        """Read RAPL; with the reading taken in the window before, the joules of that window."""
        reading = await self._in_worker(read_rapl, self.rapl_root)
        window = window_start(self.clock(), self.window_s)
        if reading is None:
            self._rapl = None
            return
        previous = self._rapl
        if previous is not None and previous[0] == window - self.window_s:
            joules = rapl_joules(previous[1], reading)
            if joules is not None:
                self.measured_j[window - self.window_s] = joules
        self._rapl = (window, reading)

    async def fold_now(self) -> Folded:
        """Seal a closed window and fold every sealed segment into the spool."""
        assert self.journal is not None and self.spool is not None
        if self._fold_lock is None:
            self._fold_lock = asyncio.Lock()
        async with self._fold_lock:
            if self._inflight is not None:
                # A fold whose caller was cancelled (shutdown) is still running in the worker:
                # its outcome decides what is left to fold.
                await asyncio.wait([self._inflight])
            journal, spool = self.journal, self.spool
            journal.seal_if_closed(self.clock())
            own = journal.take_sealed()
            replay, self._replay = self._replay, []
            if not own and not replay:
                return Folded()
            measured, peak, now = dict(self.measured_j), self.peak_watts(), self.clock()
            future = asyncio.get_running_loop().run_in_executor(
                self._worker,
                lambda: fold(
                    spool,
                    journal.directory,
                    replay,
                    own,
                    measured_j=measured,
                    peak_watts=peak,
                    now=now,
                ),
            )
            self._inflight = future
            # Settled by a callback, not after the await: a cancelled caller must not decide
            # whether the segments count, since the worker commits (or not) regardless.
            future.add_done_callback(lambda done: self._settle(done, own, replay))
            return await asyncio.shield(future)

    def _settle(self, done: asyncio.Future, own: dict, replay: list[int]) -> None:
        if self._inflight is done:
            self._inflight = None
        assert self.journal is not None
        if done.cancelled() or done.exception() is not None:
            # fold() raises only before its commit: the segments are folded again next time.
            self.journal.give_back(own)
            self._replay = replay + self._replay
            return
        result: Folded = done.result()
        oldest = window_start(self.clock(), self.window_s) - 2 * self.window_s
        for window in [w for w in self.measured_j if w < oldest]:
            del self.measured_j[window]
        energy = self.counters.energy_j
        for model, joules in result.energy_j.items():
            energy[model] = energy.get(model, 0.0) + joules
        if result.pending is not None:
            self.counters.pending = result.pending
        else:  # the spool could not be read back after the commit: what we know was added
            self.counters.pending.update(dict.fromkeys(result.batches, result.created))
        for problem in result.problems:
            log.error("usage: %s", problem)
        if result.replayed_lines:
            log.info(
                "usage: replayed %d journal line(s) of the previous run", result.replayed_lines
            )
        if result.batches:
            log.debug("usage: spooled batch(es) %s (%d records)", result.batches, result.records)
            if self._wake is not None:
                self._wake.set()

    # --- upload --------------------------------------------------------------------------

    async def run_uploads(self) -> None:
        self._wake = wake = asyncio.Event()
        failures = 0
        while True:
            wake.clear()
            if not self.counters.pending or self.identity() is None:
                try:
                    await asyncio.wait_for(wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass
                continue
            if await self.upload_next():
                failures = 0
                continue
            failures += 1
            await asyncio.sleep(backoff_delay(failures))

    async def upload_next(self) -> bool:
        """Upload the oldest pending batch; True when the console acknowledged it (it is gone
        from the spool), False when it stays for a retry."""
        identity = self.identity()
        pending = self.counters.pending
        if identity is None or not pending:
            return False
        assert self.spool is not None
        seq = min(pending)
        row = await self._in_worker(self.spool.get, seq)
        if row is None:
            pending.pop(seq, None)
            return True
        created_at, records = row
        body = batch_body(identity.node_uid, seq, created_at, records)
        try:
            response = await self.client.post(
                self.url,
                content=body,
                headers={
                    "authorization": f"Bearer {identity.credential}",
                    "content-type": "application/json",
                },
            )
        except httpx.HTTPError as exc:
            return self._failed(seq, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if status == 200:
            try:
                ack = protocol.UsageAck.model_validate_json(response.content)
            except ValidationError as exc:
                return self._failed(seq, f"the console's answer is not a usage ack: {exc}")
            if ack.batch_seq != seq:
                return self._failed(
                    seq, f"the console acknowledged batch {ack.batch_seq}, not {seq}"
                )
            if ack.outcome == "conflict":
                log.error(
                    "!!! THE CONSOLE HAD ANOTHER USAGE BATCH NUMBERED %d FROM THIS NODE: it kept "
                    "this one aside (%d record(s) quarantined) for an operator to resolve. Was "
                    "%s reset, or is another agent using this node's identity? !!!",
                    seq,
                    ack.quarantined,
                    self.state_dir,
                )
            await self._in_worker(self.spool.delete, seq)
            pending.pop(seq, None)
            self.counters.uploaded += 1
            return True
        if status == 429 or status >= 500:
            return self._failed(seq, f"HTTP {status}: {error_text(response)}")
        self.counters.upload_failures += 1
        log.error(
            "!!! THE CONSOLE REFUSED USAGE BATCH %d (HTTP %d: %s). It stays in %s and is "
            "offered again with backoff; nothing is deleted until the console takes it. !!!",
            seq,
            status,
            error_text(response),
            self.state_dir / SPOOL_FILE,
        )
        return False

    def _failed(self, seq: int, reason: str) -> bool:
        self.counters.upload_failures += 1
        log.warning("usage: uploading batch %d to %s failed (%s); retrying", seq, self.url, reason)
        return False
