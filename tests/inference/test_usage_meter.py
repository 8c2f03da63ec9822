"""The usage meter (inference/usage_meter.py) against the fake console, a real HTTP server:
what it uploads, what it deletes and when, and what it keeps."""

import asyncio
import logging

import pytest

from inference import protocol
from inference.usage_meter import UsageError, UsageMeter
from tests.inference.harness import FakeConsole, enrollment

IDENTITY = protocol.EnrollResponse.model_validate(enrollment())


class Clock:
    def __init__(self, now: float = 1_796_117_401.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


def meter_for(state, console, clock, **kwargs) -> UsageMeter:
    meter = UsageMeter(
        state, console_url=console.url, identity=lambda: IDENTITY, clock=clock, **kwargs
    )
    meter.open()
    meter.journal.clock = clock
    return meter


def serve(meter, count, *, status=200, model="doubler"):
    for i in range(count):
        meter.journal.append(
            "acme", model, "1", "tiny", "local", None, status, 0.0003, 0.0001, False, f"r{i}"
        )


async def spool_a_window(meter, clock, count=3) -> list[int]:
    serve(meter, count)
    clock.now += 60
    return (await meter.fold_now()).batches


def test_it_uploads_the_oldest_batch_first_and_deletes_it_once_acknowledged(tmp_path, console):
    clock = Clock()

    async def scenario():
        meter = meter_for(tmp_path, console, clock)
        assert await spool_a_window(meter, clock, 3) == [1]
        assert await spool_a_window(meter, clock, 2) == [2]
        assert sorted(meter.counters.pending) == [1, 2]
        assert await meter.upload_next()
        assert sorted(meter.counters.pending) == [2]
        assert await meter.upload_next()
        assert not await meter.upload_next()  # nothing left
        await meter.close()
        return meter

    meter = asyncio.run(scenario())
    assert [seq for _, seq, _ in console.usage_outcomes] == [1, 2]
    assert console.billed() == 5
    assert (meter.counters.uploaded, meter.counters.upload_failures) == (2, 0)
    (call, _) = console.calls_to(protocol.USAGE_PATH)
    assert call.headers["authorization"] == f"Bearer {IDENTITY.credential}"


def test_failed_and_unanswered_uploads_are_retried_and_a_repeat_is_counted_once(tmp_path, console):
    clock = Clock()
    console.usage_script = ["503", "drop", "stored-drop"]

    async def scenario():
        meter = meter_for(tmp_path, console, clock)
        await spool_a_window(meter, clock, 4)
        outcomes = [await meter.upload_next() for _ in range(4)]
        await meter.close()
        return meter, outcomes

    meter, outcomes = asyncio.run(scenario())
    assert outcomes == [False, False, False, True]
    assert console.usage_outcomes == [("node-0001", 1, "stored"), ("node-0001", 1, "duplicate")]
    assert console.billed() == 4
    assert (meter.counters.uploaded, meter.counters.upload_failures) == (1, 3)
    assert meter.counters.pending == {}


def test_a_batch_the_console_refuses_is_kept_and_said_loudly(tmp_path, console, caplog):
    clock = Clock()
    console.usage_refusal = "records[0].tenant: unknown tenant acme"

    async def scenario():
        meter = meter_for(tmp_path, console, clock)
        await spool_a_window(meter, clock)
        refused = await meter.upload_next()
        console.usage_refusal = None
        accepted = await meter.upload_next()
        await meter.close()
        return refused, accepted

    with caplog.at_level(logging.ERROR, logger="inference.usage_meter"):
        assert asyncio.run(scenario()) == (False, True)
    assert "THE CONSOLE REFUSED USAGE BATCH 1 (HTTP 400: records[0].tenant: unknown" in caplog.text
    assert console.billed() == 3


def test_an_ack_for_another_batch_deletes_nothing(tmp_path, console):
    clock = Clock()
    console.answers[protocol.USAGE_PATH] = lambda call: (
        200,
        {"batch_seq": 99, "outcome": "stored"},
    )

    async def scenario():
        meter = meter_for(tmp_path, console, clock)
        await spool_a_window(meter, clock)
        uploaded = await meter.upload_next()
        pending = dict(meter.counters.pending)
        await meter.close()
        return uploaded, pending

    uploaded, pending = asyncio.run(scenario())
    assert not uploaded
    assert list(pending) == [1]


def test_a_conflicting_batch_is_deleted_since_the_console_kept_it_aside(tmp_path, console, caplog):
    clock = Clock()
    console.usage[("node-0001", 1)] = {"another": "batch"}

    async def scenario():
        meter = meter_for(tmp_path, console, clock)
        await spool_a_window(meter, clock)
        uploaded = await meter.upload_next()
        await meter.close()
        return uploaded

    with caplog.at_level(logging.ERROR, logger="inference.usage_meter"):
        uploaded = asyncio.run(scenario())
    assert uploaded
    assert console.usage_outcomes == [("node-0001", 1, "conflict")]
    assert "ANOTHER USAGE BATCH NUMBERED 1" in caplog.text


def test_spooled_batches_wait_for_the_next_run_and_keep_their_numbers(tmp_path, console):
    clock = Clock()

    async def first_run():
        meter = meter_for(tmp_path, console, clock)
        await spool_a_window(meter, clock, 2)
        serve(meter, 1)  # the open window: folded when the agent stops
        await meter.close()

    async def second_run():
        meter = meter_for(tmp_path, console, clock)
        pending = sorted(meter.counters.pending)
        while await meter.upload_next():
            pass
        await spool_a_window(meter, clock, 1)
        await meter.close()
        return pending

    asyncio.run(first_run())
    assert asyncio.run(second_run()) == [1, 2]
    assert console.billed() == 3
    assert asyncio.run(second_run()) == [3]  # the previous run's last fold
    assert sorted(seq for _, seq in console.usage) == [1, 2, 3]


def test_rapl_energy_of_a_window_is_shared_by_its_records(tmp_path, console):
    clock = Clock(1_796_117_400.5)
    rapl = tmp_path / "powercap" / "intel-rapl:0"
    rapl.mkdir(parents=True)
    (rapl / "max_energy_range_uj").write_text("262143328850\n")

    def energy(uj: int) -> None:
        (rapl / "energy_uj").write_text(f"{uj}\n")

    async def scenario():
        meter = meter_for(tmp_path / "state", console, clock, rapl_root=rapl.parent)
        energy(1_000_000)
        await meter.sample_energy()  # at start, mid-window
        serve(meter, 3, model="a")
        serve(meter, 1, model="b")
        clock.now += 60
        energy(7_000_000)  # 6 J over the window
        await meter.sample_energy()
        await meter.fold_now()
        while await meter.upload_next():
            pass
        await meter.close()

    asyncio.run(scenario())
    energies = {r["model"]: r["energy_j"] for r in console.usage_records()}
    assert energies == pytest.approx({"a": 4.5, "b": 1.5})


def test_without_rapl_energy_is_run_time_at_the_class_peak_power(tmp_path, console):
    clock = Clock()

    async def scenario():
        meter = meter_for(
            tmp_path, console, clock, peak_watts=lambda: 50.0, rapl_root=tmp_path / "none"
        )
        await meter.sample_energy()
        await spool_a_window(meter, clock, 4)  # 4 x 100 µs of runs
        await meter.upload_next()
        await meter.close()

    asyncio.run(scenario())
    ((record,),) = [console.usage_records()]
    assert record["energy_j"] == pytest.approx(4 * 0.0001 * 50.0)


def test_two_agents_cannot_meter_one_state_dir(tmp_path, console):
    clock = Clock()
    first = meter_for(tmp_path, console, clock)
    with pytest.raises(UsageError, match="another agent is using"):
        meter_for(tmp_path, console, clock)
    asyncio.run(first.close())
    asyncio.run(meter_for(tmp_path, console, clock).close())  # free again
