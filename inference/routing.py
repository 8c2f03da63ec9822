"""The traffic split between the versions of one model: pure functions over plain data.

A request to `/v2/models/{name}/infer` without a version goes to one of the model's *ready*
versions, chosen against their `traffic_share`s (normalised over the ready versions) by a
stable hash of a key: the `X-Session-Id` header, else the request's `id`, else a random draw.
The same key always lands on the same version while the set of ready versions and their
shares stay the same, so a session does not flip between versions mid-conversation, and over
many keys the split matches the shares.

- A version with share 0 gets no unversioned traffic (it still answers
  `/versions/{v}/infer`).
- When every ready version has share 0 (e.g. the only version with a share is still loading),
  the ready versions split the traffic equally: answering from a version the console put on
  the node beats a 503.
- Versions are ordered by name before the cumulative table is built, so the mapping does not
  depend on the order the console listed them in.

`inference/server.py` calls `SplitTable.pick` on the hot path only when a model has more than
one eligible version; building tables happens when versions load or unload
(`inference/repository.py`).
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_SCALE = float(1 << 64)


def stable_fraction(key: str) -> float:
    """A fraction in [0, 1) that depends only on `key` (the same on every node and run,
    unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def normalised_shares(versions: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """(version, share) pairs of the versions that get unversioned traffic, sorted by version,
    with shares summing to 1; empty when `versions` is empty."""
    ordered = sorted(versions, key=lambda item: version_sort_key(item[0]))
    positive = [(v, s) for v, s in ordered if s > 0]
    if not positive:
        return [(v, 1 / len(ordered)) for v, _ in ordered]
    total = sum(s for _, s in positive)
    return [(v, s / total) for v, s in positive]


@dataclass(frozen=True)
class SplitTable:
    """The cumulative split over the ready versions of one model."""

    versions: tuple[str, ...]
    # Upper bounds of each version's slice of [0, 1); the last is 1.
    bounds: tuple[float, ...]

    @classmethod
    def build(cls, ready: Sequence[tuple[str, float]]) -> SplitTable:
        shares = normalised_shares(ready)
        bounds: list[float] = []
        total = 0.0
        for _, share in shares:
            total += share
            bounds.append(total)
        if bounds:
            bounds[-1] = 1.0  # rounding must not leave a sliver that maps past the end
        return cls(tuple(v for v, _ in shares), tuple(bounds))

    def pick(self, key: str | None, rand: Callable[[], float] = random.random) -> str | None:
        """The version for a request with this key (None: a random draw); None when no
        version is ready."""
        if not self.versions:
            return None
        if len(self.versions) == 1:
            return self.versions[0]
        point = stable_fraction(key) if key is not None else rand()
        index = bisect_right(self.bounds, point)
        return self.versions[min(index, len(self.versions) - 1)]


def choose_version(
    ready: Sequence[tuple[str, float]],
    key: str | None,
    rand: Callable[[], float] = random.random,
) -> str | None:
    """One-shot form of `SplitTable.build(ready).pick(key)`, for tests and simulators."""
    return SplitTable.build(ready).pick(key, rand)


def version_sort_key(version: str) -> tuple[int, int | str]:
    # Numeric versions in numeric order ("2" < "10"), then any others by name.
    return (0, int(version)) if version.isdigit() else (1, version)
