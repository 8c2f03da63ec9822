"""The usage journal and spool on a real disk (inference/usage_spool.py): what a fold makes
of closed windows, what a restart replays, and that a crash at either side of the fold's
commit neither loses nor repeats a line."""

import shutil
from datetime import UTC, datetime

import orjson
import pytest

from inference import protocol
from inference.metrics import UsageCounters
from inference.usage import encode_line
from inference.usage_spool import (
    JOURNAL_DIR,
    SPOOL_FILE,
    Journal,
    Spool,
    batch_body,
    fold,
    prepare,
    segment_ids,
    segment_path,
)

MINUTE = int(datetime(2026, 12, 1, 9, 30, tzinfo=UTC).timestamp())


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def start(state):
    """What the meter does at start: the spool, covered segments gone, the journal."""
    spool = Spool(state / SPOOL_FILE)
    replay, first = prepare(state / JOURNAL_DIR, spool)
    clock = Clock(MINUTE + 1)
    journal = Journal(state / JOURNAL_DIR, 60, UsageCounters(), first_segment=first, clock=clock)
    return spool, replay, journal, clock


def answer(journal, status=200, model="doubler", request_id="r", latency_s=0.0002):
    journal.append(
        "acme", model, "1", "tiny", "local", None, status, latency_s, 0.0001, False, request_id
    )


def batches(spool):
    return {seq: orjson.loads(spool.get(seq)[1]) for seq in spool.pending()}  # seq -> records


def test_a_closed_window_becomes_one_batch_and_its_segment_file_goes(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    for i in range(3):
        answer(journal, request_id=f"r{i}")
    answer(journal, status=500)
    assert journal.counters.journal_lines == 4
    (segment,) = segment_ids(tmp_path / JOURNAL_DIR)
    assert segment_path(tmp_path / JOURNAL_DIR, segment).read_bytes().count(b"\n") == 4

    journal.seal_if_closed(clock.now)  # still the same minute: nothing to fold yet
    assert journal.take_sealed() == {}
    clock.now += 60
    journal.seal_if_closed(clock.now)
    result = fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)

    assert result.batches == [1]
    ((record,),) = batches(spool).values()
    assert (record["tenant"], record["model"], record["count"], record["errors"]) == (
        "acme",
        "doubler",
        3,
        1,
    )
    assert record["minute"] == "2026-12-01T09:30:00Z"
    assert sum(record["latency_counts"]) == 3
    assert segment_ids(tmp_path / JOURNAL_DIR) == []
    assert spool.sealed_through == segment


def test_each_window_writes_its_own_segment_and_one_fold_covers_them_all(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    answer(journal)
    clock.now += 60
    answer(journal)
    answer(journal)
    assert len(segment_ids(tmp_path / JOURNAL_DIR)) == 2
    clock.now += 60
    journal.seal_if_closed(clock.now)
    fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)
    ((first, second),) = batches(spool).values()
    assert (first["minute"], first["count"]) == ("2026-12-01T09:30:00Z", 1)
    assert (second["minute"], second["count"]) == ("2026-12-01T09:31:00Z", 2)


def test_a_killed_run_is_replayed_once_and_its_torn_last_line_ignored(tmp_path):
    _, _, journal, _ = start(tmp_path)
    for i in range(5):
        answer(journal, request_id=f"r{i}")
    # kill -9: no fold, no close; a write cut short left half a line at the end.
    (segment,) = segment_ids(tmp_path / JOURNAL_DIR)
    path = segment_path(tmp_path / JOURNAL_DIR, segment)
    torn = encode_line(
        MINUTE, ("acme", "doubler", "1", "tiny", "local", None), 200, 1, 1, False, "x"
    )
    with path.open("ab") as handle:
        handle.write(torn[: len(torn) // 2])

    spool, replay, journal, clock = start(tmp_path)
    assert replay == [segment]
    assert journal.segment > segment  # the new run never writes into an old segment
    result = fold(spool, tmp_path / JOURNAL_DIR, replay, {}, now=clock.now)
    assert result.replayed_lines == 5
    ((record,),) = batches(spool).values()
    assert record["count"] == 5

    spool.close()
    spool, replay, _, _ = start(tmp_path)
    assert replay == []  # replayed once
    assert len(spool.pending()) == 1


def test_a_crash_between_the_commit_and_the_file_cleanup_counts_nothing_twice(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    answer(journal)
    (segment,) = segment_ids(tmp_path / JOURNAL_DIR)
    kept = tmp_path / "kept"
    shutil.copy(segment_path(tmp_path / JOURNAL_DIR, segment), kept)
    clock.now += 60
    journal.seal_if_closed(clock.now)
    fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)
    spool.close()
    # As if the process died after COMMIT and before deleting the segment.
    shutil.copy(kept, segment_path(tmp_path / JOURNAL_DIR, segment))

    spool, replay, _, clock = start(tmp_path)
    assert replay == []
    assert segment_ids(tmp_path / JOURNAL_DIR) == []
    assert list(spool.pending()) == [1]


def test_a_crash_before_the_commit_leaves_the_lines_to_the_next_start(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    answer(journal)
    clock.now += 60
    journal.seal_if_closed(clock.now)
    own = journal.take_sealed()
    spool.db.execute("BEGIN IMMEDIATE")  # another writer holds the spool: the fold cannot commit
    spool.db.execute("PRAGMA busy_timeout = 0")
    other = Spool(tmp_path / SPOOL_FILE)
    other.db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(Exception, match="locked"):
        fold(other, tmp_path / JOURNAL_DIR, replay, own, now=clock.now)
    spool.db.execute("ROLLBACK")
    other.close()
    spool.close()

    spool, replay, _, clock = start(tmp_path)
    assert len(replay) == 1
    fold(spool, tmp_path / JOURNAL_DIR, replay, {}, now=clock.now)
    ((record,),) = batches(spool).values()
    assert record["count"] == 1


def test_batch_numbers_are_never_reused_across_acks_and_restarts(tmp_path):
    seqs = []
    for _ in range(3):
        spool, replay, journal, clock = start(tmp_path)
        answer(journal)
        clock.now += 60
        journal.seal_if_closed(clock.now)
        seqs += fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed()).batches
        for seq in spool.pending():  # acknowledged by the console: deleted
            spool.delete(seq)
        journal.close()
        spool.close()
    assert seqs == [1, 2, 3]


def test_more_keys_than_a_batch_holds_are_split_into_numbered_batches_in_one_fold(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    for i in range(protocol.USAGE_MAX_RECORDS + 3):
        answer(journal, model=f"model-{i:05d}")
    clock.now += 60
    journal.seal_if_closed(clock.now)
    result = fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)
    assert result.batches == [1, 2]
    assert [len(records) for records in batches(spool).values()] == [protocol.USAGE_MAX_RECORDS, 3]


def test_an_answer_the_journal_cannot_write_is_still_counted(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    shutil.rmtree(tmp_path / JOURNAL_DIR)  # the disk went away under the agent
    answer(journal)
    answer(journal)
    assert (journal.counters.journal_lines, journal.counters.journal_errors) == (0, 2)
    clock.now += 60
    journal.seal_if_closed(clock.now)
    fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)
    ((record,),) = batches(spool).values()
    assert record["count"] == 2


def test_a_spooled_batch_is_sent_as_the_same_usage_batch_every_time(tmp_path):
    spool, replay, journal, clock = start(tmp_path)
    answer(journal)
    clock.now += 60
    journal.seal_if_closed(clock.now)
    fold(spool, tmp_path / JOURNAL_DIR, replay, journal.take_sealed(), now=clock.now)
    created_at, records = spool.get(1)
    body = batch_body("node-0001", 1, created_at, records)
    batch = protocol.UsageBatch.model_validate_json(body)
    assert (batch.node_uid, batch.batch_seq, batch.records[0].count) == ("node-0001", 1, 1)
    assert batch.created_at == datetime.fromtimestamp(clock.now, UTC)
    assert batch_body("node-0001", 1, *spool.get(1)) == body
