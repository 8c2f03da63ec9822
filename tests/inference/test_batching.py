"""The batcher: the pure merge/split parts, and ModelRunner against a fake session."""

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inference.batching import (
    ModelRunner,
    Pending,
    RunFailed,
    estimate,
    merge_inputs,
    split_outputs,
    take_batch,
)
from inference.config import BatchSettings
from inference.datatypes import BY_OIP
from inference.metrics import ModelStats
from inference.models import LoadedModel
from inference.specs import ModelSpec, TensorSpec

FP32 = BY_OIP["FP32"]


def test_merge_concatenates_each_input_along_the_batch_dimension():
    first = (np.zeros((1, 3)), np.ones((1, 2)))
    second = (np.full((2, 3), 5.0), np.full((2, 2), 6.0))
    merged = merge_inputs([first, second])
    assert [m.shape for m in merged] == [(3, 3), (3, 2)]
    np.testing.assert_array_equal(merged[0][1:], second[0])


def test_merging_a_single_request_does_not_copy():
    only = (np.zeros((1, 3)),)
    assert merge_inputs([only]) is only


def test_split_gives_each_request_its_own_rows():
    outputs = [np.arange(6).reshape(6, 1), np.arange(6)]
    parts = split_outputs(outputs, [1, 3, 2])
    assert [p[0].ravel().tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert [p[1].tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]


def _pending(rows: int) -> Pending:
    return Pending((), rows, None, 0.0, False)  # type: ignore[arg-type]


def test_a_batch_takes_requests_in_order_while_they_fit():
    queue = deque(_pending(r) for r in (2, 3, 4, 1))
    assert [p.rows for p in take_batch(queue, 6)] == [2, 3]
    assert [p.rows for p in queue] == [4, 1]


def test_a_request_larger_than_the_batch_limit_runs_alone():
    queue = deque(_pending(r) for r in (50, 1))
    assert [p.rows for p in take_batch(queue, 32)] == [50]


def test_the_run_time_estimate_scales_from_the_nearest_smaller_measurement():
    assert estimate({}, 4) == float("inf")
    assert estimate({1: 10e-6}, 1) == 10e-6
    assert estimate({1: 10e-6}, 4) == pytest.approx(40e-6)
    assert estimate({1: 10e-6, 3: 20e-6}, 5) == 20e-6


# --- the runner ---------------------------------------------------------------------------------


class FakeSession:
    """y = 2x, recording the batch shapes it was run on and the threads it ran in."""

    def __init__(self, delay: float = 0.0, fail_on: float | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[tuple[int, ...]] = []
        self.threads: list[str] = []

    def run(self, names, feed):
        x = feed["x"]
        self.calls.append(x.shape)
        self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("the fake model refuses this value")
        return [x * 2]


def runner_for(
    session: FakeSession,
    *,
    warmup: dict[int, float],
    batchable: bool = True,
    max_batch_size: int = 32,
    delay_ms: float = 1.0,
) -> tuple[ModelRunner, ModelStats]:
    spec = ModelSpec(
        "m", "1", (TensorSpec("x", FP32, (-1, -1)),), (TensorSpec("y", FP32, (-1, -1)),), batchable
    )
    model = LoadedModel(
        spec=spec,
        session=session,
        path=Path("m.onnx"),
        sha256="0" * 64,  # type: ignore[arg-type]
        batching=BatchSettings(max_batch_size=max_batch_size, max_queue_delay_ms=delay_ms),
        warmup_seconds=warmup,
        warmed_up=True,
    )
    stats = ModelStats()
    return ModelRunner(model, ThreadPoolExecutor(2, thread_name_prefix="run"), stats), stats


def request(value: float, width: int = 3, rows: int = 1):
    x = np.full((rows, width), value, dtype=np.float32)
    return (x,), rows, (x.shape[1:],)


def batch_sizes(stats: ModelStats) -> dict[int, int]:
    bounds = (*stats.batch.bounds, float("inf"))
    return {
        int(b) if b != float("inf") else -1: c
        for b, c in zip(bounds, stats.batch.counts, strict=True)
        if c
    }


def test_concurrent_requests_run_as_one_batch_and_each_gets_its_own_answer():
    session = FakeSession()

    async def scenario():
        runner, stats = runner_for(session, warmup={1: 1e-6})
        results = await asyncio.gather(*(runner.infer(*request(i)) for i in range(10)))
        return results, stats

    results, stats = asyncio.run(scenario())
    assert session.calls == [(10, 3)]
    for i, (outputs, run_seconds, share) in enumerate(results):
        np.testing.assert_array_equal(outputs[0], np.full((1, 3), 2 * i))
        assert run_seconds >= 0
        # Each of the 10 one-row requests is charged a tenth of the run (usage energy).
        assert share == pytest.approx(run_seconds / 10)
    assert stats.batch.sum == 10


def test_requests_whose_other_dimensions_differ_are_not_batched_together():
    session = FakeSession()

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 1e-6})
        return await asyncio.gather(
            runner.infer(*request(1, width=3)),
            runner.infer(*request(2, width=5)),
            runner.infer(*request(3, width=3)),
        )

    results = asyncio.run(scenario())
    assert sorted(session.calls) == [(1, 5), (2, 3)]
    assert [r[0][0].shape for r in results] == [(1, 3), (1, 5), (1, 3)]


def test_a_model_without_a_batch_dimension_runs_one_request_at_a_time():
    session = FakeSession()

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 1e-6}, batchable=False)
        await asyncio.gather(
            *(runner.infer((np.ones((1, 3), np.float32),), 1, None) for _ in range(4))
        )

    asyncio.run(scenario())
    assert session.calls == [(1, 3)] * 4


def test_batches_never_exceed_the_max_batch_size():
    session = FakeSession()

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 1e-6}, max_batch_size=4)
        await asyncio.gather(*(runner.infer(*request(i)) for i in range(10)))

    asyncio.run(scenario())
    assert [c[0] for c in session.calls] == [4, 4, 2]


def test_a_fast_model_runs_on_the_event_loop_and_a_slow_one_in_a_worker_thread():
    fast, slow = FakeSession(), FakeSession()

    async def scenario():
        await runner_for(fast, warmup={1: 1e-6})[0].infer(*request(1))
        await runner_for(slow, warmup={1: 0.01})[0].infer(*request(1))

    asyncio.run(scenario())
    assert fast.threads == ["MainThread"]
    assert slow.threads[0].startswith("run")


def test_a_medium_model_runs_on_the_loop_when_idle_and_in_a_thread_under_load():
    session = FakeSession(delay=0.05)

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 500e-6}, delay_ms=0)
        await runner.infer(*request(0))  # alone on an idle model: 0.5 ms inline is cheapest
        busy = asyncio.create_task(runner.infer(*request(0, rows=8)))  # ~4 ms: a thread
        await asyncio.sleep(0.01)
        await asyncio.gather(busy, runner.infer(*request(1)))  # queued behind a run

    asyncio.run(scenario())
    assert session.threads[0] == "MainThread"
    assert session.threads[1].startswith("run")
    assert session.threads[2].startswith("run")


def test_an_unmeasured_model_never_runs_on_the_event_loop():
    session = FakeSession()

    async def scenario():
        await runner_for(session, warmup={})[0].infer(*request(1))

    asyncio.run(scenario())
    assert session.threads[0].startswith("run")


def test_requests_arriving_during_a_run_are_gathered_into_the_next_batch():
    session = FakeSession(delay=0.05)

    async def scenario():
        runner, stats = runner_for(session, warmup={1: 0.05}, delay_ms=0)
        first = asyncio.create_task(runner.infer(*request(0)))
        await asyncio.sleep(0.01)  # the first request is running now
        rest = [asyncio.create_task(runner.infer(*request(i))) for i in range(1, 6)]
        await asyncio.gather(first, *rest)
        return stats

    stats = asyncio.run(scenario())
    assert [c[0] for c in session.calls] == [1, 5]
    assert batch_sizes(stats) == {1: 1, 8: 1}


def test_an_idle_model_does_not_wait_out_the_queue_delay():
    session = FakeSession()

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 1e-6}, delay_ms=5000)
        started = time.perf_counter()
        await runner.infer(*request(1))
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 0.5


def test_one_bad_request_fails_alone_and_its_batch_companions_are_answered():
    session = FakeSession(fail_on=13.0)

    async def scenario():
        runner, _ = runner_for(session, warmup={1: 1e-6})
        return await asyncio.gather(
            *(runner.infer(*request(v)) for v in (1, 13, 2)), return_exceptions=True
        )

    good, bad, also_good = asyncio.run(scenario())
    assert isinstance(bad, RunFailed) and bad.status == 500
    assert "refuses this value" in bad.message
    np.testing.assert_array_equal(good[0][0], [[2, 2, 2]])
    np.testing.assert_array_equal(also_good[0][0], [[4, 4, 4]])
