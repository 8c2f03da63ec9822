"""Requests per minute from heartbeat counters: pure functions over plain data.

A node reports `requests_total`, the inferences it answered since its agent started, in every
heartbeat (kept as `NodeSample` rows). The number of requests in a minute is therefore the
increase of that counter across the minute, summed over nodes, with two complications:

- **resets**: when the agent restarts the counter starts again from 0, so a reading lower than
  the one before means "restarted, and served `current` requests since" (the same rule as
  Prometheus' `increase()`). Two restarts between two readings cannot be seen; heartbeats are
  seconds apart, so that undercount is negligible.
- **gaps**: between two readings the requests are spread evenly over the time between them,
  so a node that stopped reporting for ten minutes and then sends a large increase shows the
  average rate over those minutes, not a spike in the minute it came back.

Counts are floats because of that spreading; over any interval fully inside the window the
per-minute counts add up to exactly the counter increase; `observed` drops the minutes no
reading covers, which would otherwise read as 0. Used by the home dashboard
(console.views) and the node page (fleet.views); tested without a database in
tests/fleet/test_rates.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from datetime import datetime, timedelta

MINUTE = timedelta(minutes=1)

# (node id, when the heartbeat was received, requests_total at that moment)
Sample = tuple[Hashable, datetime, int]
# (start of the minute, requests answered in it)
Series = list[tuple[datetime, float]]


def floor_minute(moment: datetime) -> datetime:
    """The start of the minute that contains `moment` (time zone kept)."""
    return moment.replace(second=0, microsecond=0)


def minutes_between(start: datetime, end: datetime) -> list[datetime]:
    """Every whole minute that begins in [floor_minute(start), end)."""
    minute = floor_minute(start)
    minutes = []
    while minute < end:
        minutes.append(minute)
        minute += MINUTE
    return minutes


def last_complete_minute_end(now: datetime, settle: timedelta) -> datetime:
    """The end of the latest minute whose heartbeats have all arrived.

    The minute in progress would show a misleading drop, and the heartbeat that closes a
    minute arrives up to one interval (`settle`) after it ends.
    """
    return floor_minute(now - settle)


def counter_increase(previous: int, current: int) -> int:
    """Requests answered between two readings of one node's counter.

    A reading lower than the previous one means the agent restarted and counted from zero.
    """
    if current >= previous:
        return current - previous
    return current


def requests_per_minute(samples: Iterable[Sample], start: datetime, end: datetime) -> Series:
    """Requests answered in each whole minute that begins in [start, end), over all nodes.

    `samples` may come in any order and mix nodes. Each node's first reading only anchors its
    counter (what came before it is unknown), so pass readings from a little before `start`
    for the first minute to be complete. Minutes without readings count 0.
    """
    minutes = minutes_between(start, end)
    if not minutes:
        return []
    window_start, window_end = minutes[0], minutes[-1] + MINUTE
    counts = dict.fromkeys(minutes, 0.0)

    readings: dict[Hashable, list[tuple[datetime, int]]] = defaultdict(list)
    for node_id, at, total in samples:
        readings[node_id].append((at, total))

    for node_readings in readings.values():
        node_readings.sort(key=lambda reading: reading[0])
        for (t0, total0), (t1, total1) in zip(node_readings, node_readings[1:], strict=False):
            increase = counter_increase(total0, total1)
            if increase:
                _spread(counts, increase, t0, t1, window_start, window_end)

    return [(minute, counts[minute]) for minute in minutes]


def observed(series: Series, samples: Iterable[Sample]) -> Series:
    """The minutes of `series` that the readings fully cover, from the first to the last.

    Outside that span `requests_per_minute` says 0, which would claim knowledge we lack: the
    node had not started reporting yet, or has stopped (it may be serving, unheard). Charts
    show those minutes as a gap instead.
    """
    moments = [at for _, at, _ in samples]
    if not moments:
        return []
    first, last = min(moments), max(moments)
    return [
        (minute, count) for minute, count in series if first <= minute and minute + MINUTE <= last
    ]


def total(series: Series) -> float:
    """All the requests in a series."""
    return sum(count for _, count in series)


def _spread(
    counts: dict[datetime, float],
    increase: int,
    t0: datetime,
    t1: datetime,
    window_start: datetime,
    window_end: datetime,
) -> None:
    """Add `increase`, served during (t0, t1], to the minutes of the window, pro rata."""
    duration = (t1 - t0).total_seconds()
    if duration <= 0:
        # Two readings at the same instant: nothing to spread over; it belongs to that minute.
        minute = floor_minute(t1)
        if minute in counts:
            counts[minute] += increase
        return
    # Only the part of the interval inside the window matters; clipping also keeps a reading
    # after a days-long gap from walking through thousands of minutes.
    lo, hi = max(t0, window_start), min(t1, window_end)
    minute = floor_minute(lo)
    while minute < hi:
        overlap = (min(hi, minute + MINUTE) - max(lo, minute)).total_seconds()
        if overlap > 0:
            counts[minute] += increase * overlap / duration
        minute += MINUTE
