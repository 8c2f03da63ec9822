"""The pure parts of usage metering (inference/usage.py): aggregates and their histogram, the
journal's lines, energy from RAPL or the power model, records and batches."""

from datetime import UTC, datetime

import pytest

from inference import protocol
from inference.usage import (
    Aggregate,
    build_records,
    chunks,
    encode_line,
    latency_bucket,
    merge_windows,
    parse_segment,
    rapl_joules,
    read_rapl,
    window_energy,
    window_start,
)

MINUTE = int(datetime(2026, 12, 1, 9, 30, tzinfo=UTC).timestamp())
KEY = ("acme", "doubler", "1", "tiny", "local", None)
REGIONAL = ("acme", "big", "3", "medium", "regional", "thermal")


def test_windows_are_utc_minutes_aligned_to_the_epoch():
    assert window_start(MINUTE + 59.999, 60) == MINUTE
    assert window_start(MINUTE + 60, 60) == MINUTE + 60
    assert window_start(MINUTE + 1.5, 1) == MINUTE + 1


def test_latency_buckets_follow_prometheus_le_and_end_in_inf():
    bounds = protocol.LATENCY_BOUNDS_S
    assert latency_bucket(0.0) == 0
    assert latency_bucket(bounds[0]) == 0  # le: a value equal to a bound is in its bucket
    assert latency_bucket(bounds[0] * 1.01) == 1
    assert latency_bucket(bounds[-1]) == len(bounds) - 1
    assert latency_bucket(60.0) == len(bounds) == protocol.LATENCY_BUCKETS - 1


def test_an_aggregate_counts_successes_in_its_histogram_and_errors_apart():
    aggregate = Aggregate()
    for latency in (0.0002, 0.0002, 0.003, 7.0):
        aggregate.add(200, latency, run_s=0.0001, tokenised=False)
    aggregate.add(201, 0.0004, run_s=0.0001, tokenised=True)
    aggregate.add(400, 0.0001, run_s=0.0, tokenised=True)
    aggregate.add(500, 0.02, run_s=0.0005, tokenised=False)

    assert (aggregate.count, aggregate.errors, aggregate.tokenised) == (5, 2, 1)
    assert sum(aggregate.latency_counts) == aggregate.count
    assert aggregate.latency_counts[latency_bucket(0.0002)] == 2
    assert aggregate.latency_counts[-1] == 1  # 7 s: slower than the last bound
    assert aggregate.latency_sum_s == pytest.approx(0.0002 * 2 + 0.003 + 7.0 + 0.0004)
    # Errors are not in the latency histogram, but their model time is in the run time.
    assert aggregate.run_s == pytest.approx(0.001)


def test_aggregates_of_the_same_window_and_key_merge_and_others_stay_apart():
    first, second, other = Aggregate(), Aggregate(), Aggregate()
    first.add(200, 0.001, 0.0001, False)
    second.add(200, 0.001, 0.0001, False)
    second.add(503, 0.001, 0.0, False)
    other.add(200, 0.001, 0.0001, False)
    merged = merge_windows(
        [{(MINUTE, KEY): first}, {(MINUTE, KEY): second, (MINUTE + 60, KEY): other}]
    )
    assert {k: (a.count, a.errors) for k, a in merged.items()} == {
        (MINUTE, KEY): (2, 1),
        (MINUTE + 60, KEY): (1, 0),
    }
    assert first.count == 1  # the inputs are not changed


def test_a_journal_line_replays_to_what_was_counted_live():
    live = Aggregate()
    data = b""
    for status, latency_us, run_us, tokenised in ((200, 183, 57, True), (400, 90, 0, False)):
        live.add(status, latency_us / 1e6, run_us / 1e6, tokenised)
        data += encode_line(MINUTE, REGIONAL, status, latency_us, run_us, tokenised, "req-1")
    assert data.count(b"\n") == 2

    parsed = parse_segment(data, keep_ids=True)
    replayed = parsed.windows[(MINUTE, REGIONAL)]
    assert (parsed.lines, parsed.bad, parsed.torn) == (2, 0, False)
    assert parsed.request_ids == ["req-1", "req-1"]
    for field in ("count", "errors", "latency_counts", "latency_sum_s", "run_s", "tokenised"):
        assert getattr(replayed, field) == getattr(live, field)


def test_a_torn_last_line_is_ignored_and_a_garbled_one_is_skipped():
    good = encode_line(MINUTE, KEY, 200, 100, 50, False, "a")
    garbled = b'[1,"x"]\n'
    torn = encode_line(MINUTE, KEY, 200, 100, 50, False, "b")[:-9]
    parsed = parse_segment(good + garbled + good + torn)
    assert (parsed.lines, parsed.bad, parsed.torn) == (2, 1, True)
    assert parsed.windows[(MINUTE, KEY)].count == 2
    # A line complete but for its newline is torn too: the write was cut short.
    assert parse_segment(good[:-1]).lines == 0


def test_a_line_with_an_unknown_offload_reason_or_grade_is_not_a_journal_line():
    reason = encode_line(MINUTE, (*KEY[:4], "regional", "because"), 200, 1, 1, False, "a")
    grade = encode_line(MINUTE, ("acme", "m", "1", "huge", "local", None), 200, 1, 1, False, "a")
    assert parse_segment(reason + grade).bad == 2


def test_rapl_packages_are_read_and_their_parts_left_out(tmp_path):
    for domain, energy in (("intel-rapl:0", 1_000_000), ("intel-rapl:1", 5), ("intel-rapl:0:0", 9)):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "energy_uj").write_text(f"{energy}\n")
        (tmp_path / domain / "max_energy_range_uj").write_text("262143328850\n")
    assert read_rapl(tmp_path) == ((1_000_000, 262143328850), (5, 262143328850))


def test_rapl_that_is_absent_or_unreadable_is_none(tmp_path):
    assert read_rapl(tmp_path / "missing") is None
    assert read_rapl(tmp_path) is None
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "max_energy_range_uj").write_text("100\n")
    assert read_rapl(tmp_path) is None  # no energy_uj (unreadable looks the same to us)


def test_rapl_joules_add_up_packages_and_survive_a_wrap_around():
    limit = 262_143_328_850
    before = ((limit - 1_000_000, limit), (10_000_000, limit))
    after = ((2_000_000, limit), (13_000_000, limit))  # the first counter wrapped
    assert rapl_joules(before, after) == pytest.approx(3.0 + 3.0)
    assert rapl_joules(before, after[:1]) is None  # not the same packages


def test_measured_energy_is_shared_by_run_time_and_estimated_without_it():
    assert window_energy([0.3, 0.1, 0.0], 8.0, None) == pytest.approx([6.0, 2.0, 0.0])
    # Only errors ran nothing: the window's joules are shared evenly.
    assert window_energy([0.0, 0.0], 8.0, 100.0) == pytest.approx([4.0, 4.0])
    # No reading: run time at the class's peak power; no power model: 0.
    assert window_energy([0.5, 0.25], None, 40.0) == pytest.approx([20.0, 10.0])
    assert window_energy([0.5], None, None) == [0.0]


def test_records_carry_the_key_the_minute_and_their_share_of_the_energy():
    local, regional = Aggregate(), Aggregate()
    local.add(200, 0.0002, 0.003, False)
    regional.add(200, 0.004, 0.001, True)
    regional.add(500, 0.004, 0.0, False)
    records, problems = build_records(
        {(MINUTE + 60, KEY): local, (MINUTE, REGIONAL): regional, (MINUTE + 60, REGIONAL): local},
        measured_j={MINUTE + 60: 10.0},
        peak_watts=100.0,
    )
    assert problems == []
    # By minute, then key (tenant, model, ...): big before doubler.
    assert [(r.minute.timestamp(), r.model) for r in records] == [
        (MINUTE, "big"),
        (MINUTE + 60, "big"),
        (MINUTE + 60, "doubler"),
    ]
    first = records[0]
    assert (first.tenant, first.model, first.version, first.grade) == ("acme", "big", "3", "medium")
    assert (first.offload_reason, first.count, first.errors, first.tokenised) == (
        "thermal",
        1,
        1,
        1,
    )
    assert first.minute == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert first.energy_j == pytest.approx(0.1)  # estimated: 1 ms at 100 W
    assert records[2].offload_reason is None
    assert [r.energy_j for r in records[1:]] == pytest.approx([5.0, 5.0])  # measured, halved


def test_a_record_the_protocol_refuses_is_left_out_with_a_reason_and_the_rest_kept():
    aggregate = Aggregate()
    aggregate.add(200, 0.001, 0.001, False)
    long_name = ("acme", "m" * 201, "1", "tiny", "local", None)
    records, problems = build_records({(MINUTE, KEY): aggregate, (MINUTE, long_name): aggregate})
    assert [r.model for r in records] == ["doubler"]
    assert len(problems) == 1 and "left out" in problems[0]


def test_batches_hold_at_most_the_protocols_number_of_records():
    parts = list(chunks(list(range(protocol.USAGE_MAX_RECORDS * 2 + 1))))
    assert [len(p) for p in parts] == [protocol.USAGE_MAX_RECORDS, protocol.USAGE_MAX_RECORDS, 1]
    assert list(chunks([])) == []
