"""Dynamic batching: many requests, one `session.run`, outputs split back.

The rule, per model (`ModelRunner`):

- Requests queue by *group key* (their non-batch dimensions); only requests with equal keys are
  concatenated. A model without a dynamic batch dimension gets one request per run.
- A request that arrives when the model is idle (nothing queued, nothing running) does not
  wait for companions: its batch is dispatched at the end of the current event-loop iteration,
  which still gathers every request that arrived in the same read burst. Waiting there would
  only add latency at low load.
- Requests that arrive while a batch is running wait until the model is free, then go as one
  batch once it is full (`max_batch_size` rows) or the oldest has waited `max_queue_delay_ms`.
- A batch whose estimated run time (EWMA of measured runs, seeded by warm-up) is under
  `inline_threshold_us` runs on the event loop itself: for a tiny model the hand-off to a
  worker thread and back costs more than the run. A batch of requests that found the model
  idle gets the larger `idle_inline_threshold_us`: at low load nothing else waits for the
  loop. Longer batches run in the thread pool (onnxruntime releases the GIL), so the loop
  keeps parsing the next requests meanwhile.

The pure parts (`merge_inputs`, `split_outputs`, `take_batch`, `estimate`) are tested alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import onnxruntime as ort

from inference.codec import RequestError
from inference.drift import OutputSketch
from inference.metrics import ModelStats, VersionHealth
from inference.models import LoadedModel

log = logging.getLogger(__name__)

_EWMA_ALPHA = 0.2

# onnxruntime reports bad input values (e.g. an index out of range) as InvalidArgument.
_INVALID_ARGUMENT = getattr(ort.capi.onnxruntime_pybind11_state, "InvalidArgument", ValueError)


class RunFailed(Exception):
    """The model raised while running; `status` is 400 for bad input values, else 500."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- pure parts ------------------------------------------------------------------------------


def merge_inputs(parts: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate each input along the batch dimension, in request order."""
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(column, axis=0) for column in zip(*parts, strict=True))


def split_outputs(outputs: Sequence[np.ndarray], rows: Sequence[int]) -> list[list[np.ndarray]]:
    """Cut each output back into per-request views, by each request's row count."""
    if len(rows) == 1:
        return [list(outputs)]
    result: list[list[np.ndarray]] = []
    start = 0
    for count in rows:
        end = start + count
        result.append([out[start:end] for out in outputs])
        start = end
    return result


def take_batch(queue: deque[Pending], max_rows: int) -> list[Pending]:
    """Pop requests from the front while they fit in `max_rows`; always at least one, so a
    request larger than the limit runs alone instead of waiting forever."""
    batch = [queue.popleft()]
    rows = batch[0].rows
    while queue and rows + queue[0].rows <= max_rows:
        item = queue.popleft()
        rows += item.rows
        batch.append(item)
    return batch


def bucket(rows: int) -> int:
    """Run-time estimates are kept per power-of-two bucket of rows."""
    return max(rows, 1).bit_length()


def estimate(ewma: dict[int, float], rows: int) -> float:
    """Seconds one run of `rows` is expected to take; infinity when nothing is known, so an
    unmeasured model never runs on the event loop."""
    b = bucket(rows)
    if b in ewma:
        return ewma[b]
    known = [k for k in ewma if k < b]
    if not known:
        return float("inf")
    nearest = max(known)
    # Linear in rows is pessimistic (batches are cheaper per row), which is the safe side.
    return ewma[nearest] * rows / (1 << (nearest - 1))


# --- the runner --------------------------------------------------------------------------------


class Pending:
    __slots__ = ("arrays", "rows", "future", "enqueued", "idle_arrival")

    def __init__(
        self,
        arrays: tuple[np.ndarray, ...],
        rows: int,
        future: asyncio.Future,
        enqueued: float,
        idle_arrival: bool,
    ) -> None:
        self.arrays = arrays
        self.rows = rows
        self.future = future
        self.enqueued = enqueued
        self.idle_arrival = idle_arrival


class _Group:
    __slots__ = ("items", "rows")

    def __init__(self) -> None:
        self.items: deque[Pending] = deque()
        self.rows = 0


# A batch's result for one request: the outputs (model order), the run's duration, and the
# request's share of it (by rows: what the usage meter charges its energy by, inference/usage.py).
RunResult = tuple[list[np.ndarray], float, float]


class ModelRunner:
    """Queues and runs the requests of one loaded model. Use from the event loop only."""

    def __init__(
        self,
        model: LoadedModel,
        executor: Executor,
        stats: ModelStats,
        health: VersionHealth | None = None,
    ) -> None:
        self.model = model
        self.spec = model.spec
        # This version's request counters (the server records into it, the heartbeat reads it).
        self.health = health if health is not None else VersionHealth()
        # Per-minute summaries of this version's outputs (drift telemetry, inference/drift.py).
        self.outputs = OutputSketch(model.spec)
        self.health.outputs = self.outputs
        self._executor = executor
        self._stats = stats
        self._run = model.session.run
        self._input_names = [t.name for t in model.spec.inputs]
        settings = model.batching
        self._max_rows = settings.max_batch_size if model.spec.batchable else 1
        self._delay = settings.max_queue_delay_ms / 1000
        self._inline_below = settings.inline_threshold_us / 1_000_000
        self._idle_inline_below = settings.idle_inline_threshold_us / 1_000_000
        self._ewma = {bucket(rows): s for rows, s in model.warmup_seconds.items()}
        self._groups: dict[object, _Group] = {}
        self._solo_seq = 0
        self.depth = 0
        self._running = False
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def batch1_run_s(self) -> float | None:
        """The current estimate of one single-row run (warm-up seeded, then measured)."""
        return self._ewma.get(bucket(1))

    async def infer(self, arrays: tuple[np.ndarray, ...], rows: int, key: object) -> RunResult:
        """Run one request (possibly batched with others); raises RunFailed."""
        loop = self._loop
        future = loop.create_future()
        idle = not self._running and self.depth == 0
        if key is None:
            # No batch dimension: a key of its own keeps the request out of every batch.
            self._solo_seq += 1
            key = self._solo_seq
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        group.items.append(Pending(arrays, rows, future, time.perf_counter(), idle))
        group.rows += rows
        self.depth += 1
        if not self._scheduled and not self._running:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    # Everything below runs as event-loop callbacks.

    def _dispatch(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.depth and not self._running:
            key, group = self._oldest_group()
            head = group.items[0]
            waited = time.perf_counter() - head.enqueued
            if not head.idle_arrival and group.rows < self._max_rows and waited < self._delay:
                self._timer = self._loop.call_later(self._delay - waited, self._dispatch)
                return
            batch = take_batch(group.items, self._max_rows)
            rows = 0
            for item in batch:
                rows += item.rows
            group.rows -= rows
            if not group.items:
                del self._groups[key]
            self.depth -= len(batch)
            idle = head.idle_arrival and all(item.idle_arrival for item in batch)
            limit = self._idle_inline_below if idle else self._inline_below
            if estimate(self._ewma, rows) < limit:
                self._finish(batch, self._execute(batch, rows))
            else:
                self._running = True
                self._executor.submit(self._execute_in_thread, batch, rows)

    def _oldest_group(self) -> tuple[object, _Group]:
        if len(self._groups) == 1:
            return next(iter(self._groups.items()))
        return min(self._groups.items(), key=lambda kv: kv[1].items[0].enqueued)

    def _execute_in_thread(self, batch: list[Pending], rows: int) -> None:
        try:
            outcome = self._execute(batch, rows)
        except BaseException as exc:  # never lose a batch: its futures must resolve
            outcome = _Outcome(time.perf_counter(), 0.0, [exc] * len(batch), rows)
        try:
            self._loop.call_soon_threadsafe(self._finish_threaded, batch, outcome)
        except RuntimeError:  # the loop closed during shutdown; nobody is waiting any more
            pass

    def _execute(self, batch: list[Pending], rows: int) -> _Outcome:
        started = time.perf_counter()
        try:
            merged = merge_inputs([item.arrays for item in batch])
            outputs = self._run(None, dict(zip(self._input_names, merged, strict=True)))
            elapsed = time.perf_counter() - started
            if len(batch) == 1:
                return _Outcome(started, elapsed, [(outputs, elapsed, elapsed)], rows, outputs)
            parts = split_outputs(outputs, [item.rows for item in batch])
            if rows:
                shares = [elapsed * item.rows / rows for item in batch]
            else:  # requests of zero rows: nothing to weigh them by
                shares = [elapsed / len(batch)] * len(batch)
            return _Outcome(
                started,
                elapsed,
                [(p, elapsed, share) for p, share in zip(parts, shares, strict=True)],
                rows,
                outputs,
            )
        except Exception as exc:
            if len(batch) == 1:
                return _Outcome(started, 0.0, [_run_failed(exc)], rows)
        # One bad request must not fail the others it was batched with: run them one by one.
        results: list[RunResult | BaseException] = []
        for item in batch:
            one_started = time.perf_counter()
            try:
                outputs = self._run(None, dict(zip(self._input_names, item.arrays, strict=True)))
                took = time.perf_counter() - one_started
                results.append((outputs, took, took))
            except Exception as exc:
                results.append(_run_failed(exc))
        return _Outcome(started, 0.0, results, rows)

    def _finish_threaded(self, batch: list[Pending], outcome: _Outcome) -> None:
        self._running = False
        self._finish(batch, outcome)
        if self.depth and not self._scheduled:
            # Next iteration, so requests whose tasks are already runnable join this batch.
            self._scheduled = True
            self._loop.call_soon(self._dispatch)

    def _finish(self, batch: list[Pending], outcome: _Outcome) -> None:
        stats = self._stats
        if outcome.elapsed > 0:
            b = bucket(outcome.rows)
            previous = self._ewma.get(b)
            self._ewma[b] = (
                outcome.elapsed
                if previous is None
                else previous + _EWMA_ALPHA * (outcome.elapsed - previous)
            )
            stats.run.observe(outcome.elapsed)
        stats.batch.observe(outcome.rows)
        observe_queue = stats.queue.observe
        for item, result in zip(batch, outcome.results, strict=True):
            observe_queue(outcome.started - item.enqueued)
            future = item.future
            if future.done():  # the waiting request was cancelled (shutdown)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if outcome.outputs is not None:
            try:
                self.outputs.observe(outcome.outputs, outcome.rows)
            except Exception:  # telemetry must never fail a batch
                log.exception("summarising the outputs of %s failed", self.spec.name)


class _Outcome:
    __slots__ = ("started", "elapsed", "results", "rows", "outputs")

    def __init__(
        self,
        started: float,
        elapsed: float,
        results: list[RunResult | BaseException],
        rows: int,
        outputs: list[np.ndarray] | None = None,
    ) -> None:
        self.started = started
        self.elapsed = elapsed
        self.results = results
        self.rows = rows
        # The whole batch's outputs when it ran as one (for the output summaries).
        self.outputs = outputs


def _run_failed(exc: Exception) -> RunFailed:
    if isinstance(exc, _INVALID_ARGUMENT | RequestError):
        return RunFailed(f"the model rejected the input: {exc}", 400)
    log.exception("model run failed", exc_info=exc)
    return RunFailed(f"the model failed to run: {exc}", 500)
