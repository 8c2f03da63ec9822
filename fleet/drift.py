"""Drift: does a version answer differently from its baseline? Pure functions over plain data.

Nodes summarise each version's outputs per minute (`inference/drift.py`, the wire format in
`inference.protocol.OutputWindow`): top-class counts for classifiers, per-output histograms
over fixed bounds otherwise. The console merges a minute's windows from every node and
compares the merged distribution with the version's *baseline* by the population stability
index,

    PSI = Σ (a_i − e_i) · ln(a_i / e_i)

over the bins either side uses, with `a` and `e` the shares of rows in each bin now and in the
baseline, each count smoothed by half a row (Jeffreys), so a class that appears from nowhere
counts, but finitely, and a thin minute's empty bins do not explode the sum. The
usual reading: under 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a significant one. For
several outputs the largest PSI counts.

A PSI measured on samples is biased upwards by sampling noise alone: for small differences it
is close to a chi-square statistic, so two samples of the *same* distribution over k bins give
about (k − 1)(1/n_now + 1/n_baseline) on average — 0.5 for 16 classes and 30 rows a minute,
twice the alert threshold. `summary_psi` subtracts that expected noise (never below 0), so a
quiet model with many classes does not raise alerts that are only arithmetic; with thousands
of rows the correction vanishes.

The baseline is the previous version's outputs (over the same recent period when it still
serves, as in a canary, else its last hour), or for a first version a reference captured
from its own first well-filled minute. Drift is *sustained* when the last
`sustained_minutes` judged minutes (each with at least `min_rows` rows) are all above the
threshold; fleet.drift_actions raises an alert then, and a deployment with
`rollback_on_drift` rolls back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Half a row added to every used bin's count on both sides (Jeffreys smoothing).
SMOOTHING = 0.5
CLASSES, VALUES = "classes", "values"


@dataclass(frozen=True)
class DriftSettings:
    threshold: float = 0.25
    # This many judged minutes in a row above the threshold make an alert.
    sustained_minutes: int = 3
    # A minute with fewer rows (over all nodes) is not judged: too few to say anything.
    min_rows: int = 30
    # How far back the previous version's outputs are taken for its baseline.
    baseline_minutes: int = 60

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError("the drift threshold must be above 0 (0.25 is the usual choice)")
        if self.sustained_minutes < 1 or self.min_rows < 1 or self.baseline_minutes < 1:
            raise ValueError("sustained_minutes, min_rows and baseline_minutes must be ≥ 1")


@dataclass
class Summary:
    """Outputs of one version over some minutes and nodes, merged."""

    kind: str | None = None
    rows: int = 0
    classes: list[int] = field(default_factory=list)
    # output name -> (histogram, sum of means weighted by rows, rows)
    values: dict[str, tuple[list[int], float, int]] = field(default_factory=dict)

    def add(self, window: Mapping) -> None:
        """Add one window (an OutputWindow as a dict, or a stored row with the same keys)."""
        rows = int(window.get("rows") or 0)
        classes = window.get("classes")
        values = window.get("values")
        kind = CLASSES if classes is not None else VALUES if values is not None else None
        if kind is None or (self.kind is not None and kind != self.kind):
            return  # a version does not change kind; a stray window is ignored
        self.kind = kind
        self.rows += rows
        if kind == CLASSES:
            if len(classes) > len(self.classes):
                self.classes.extend([0] * (len(classes) - len(self.classes)))
            for i, count in enumerate(classes):
                self.classes[i] += int(count)
            return
        for item in values:
            histogram, weighted, counted = self.values.get(item["name"], ([], 0.0, 0))
            merged = _added(histogram, item["histogram"])
            self.values[item["name"]] = (merged, weighted + item["mean"] * rows, counted + rows)

    def means(self) -> dict[str, float]:
        return {name: (w / n if n else 0.0) for name, (_, w, n) in self.values.items()}

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "classes": self.classes,
            "values": {k: list(v) for k, v in self.values.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Summary:
        return cls(
            kind=data.get("kind"),
            rows=int(data.get("rows") or 0),
            classes=list(data.get("classes") or []),
            values={k: (list(h), float(w), int(n)) for k, (h, w, n) in data["values"].items()},
        )


def merge(windows: Iterable[Mapping]) -> Summary:
    summary = Summary()
    for window in windows:
        summary.add(window)
    return summary


def _added(a: Sequence[int], b: Sequence[int]) -> list[int]:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    result = list(longer)
    for i, count in enumerate(shorter):
        result[i] += count
    return result


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """Population stability index of `actual` against `expected` (counts per bin), over the
    bins either uses, counts smoothed by `SMOOTHING`."""
    size = max(len(expected), len(actual))
    pairs = [
        (expected[i] if i < len(expected) else 0, actual[i] if i < len(actual) else 0)
        for i in range(size)
    ]
    pairs = [(e, a) for e, a in pairs if e or a]
    e_total, a_total = sum(e for e, _ in pairs), sum(a for _, a in pairs)
    if not e_total or not a_total:
        return 0.0
    e_norm = e_total + SMOOTHING * len(pairs)
    a_norm = a_total + SMOOTHING * len(pairs)
    result = 0.0
    for e, a in pairs:
        e_share = (e + SMOOTHING) / e_norm
        a_share = (a + SMOOTHING) / a_norm
        result += (a_share - e_share) * math.log(a_share / e_share)
    return result


def sampling_noise(expected: Sequence[int], actual: Sequence[int]) -> float:
    """The PSI two samples of one distribution show on average, from their sizes and the
    number of bins either uses (see the module docstring)."""
    size = max(len(expected), len(actual))
    used = sum(
        1
        for i in range(size)
        if (i < len(expected) and expected[i]) or (i < len(actual) and actual[i])
    )
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total or used < 2:
        return 0.0
    return (used - 1) * (1 / e_total + 1 / a_total)


def corrected_psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """PSI less its expected sampling noise, never below 0."""
    return max(0.0, psi(expected, actual) - sampling_noise(expected, actual))


def summary_psi(baseline: Summary, current: Summary) -> float | None:
    """Noise-corrected PSI of `current` against `baseline`; None when they cannot be compared
    (no rows, or different kinds or outputs)."""
    if not baseline.rows or not current.rows or baseline.kind != current.kind:
        return None
    if current.kind == CLASSES:
        return corrected_psi(baseline.classes, current.classes)
    common = sorted(set(baseline.values) & set(current.values))
    if not common:
        return None
    return max(corrected_psi(baseline.values[n][0], current.values[n][0]) for n in common)


@dataclass(frozen=True)
class Verdict:
    sustained: bool
    latest: float | None
    reason: str


def judge(series: Sequence[tuple[object, float | None]], settings: DriftSettings) -> Verdict:
    """From (minute, psi) pairs, oldest first (None: the minute had too few rows to judge),
    whether drift is sustained now."""
    judged = [(minute, value) for minute, value in series if value is not None]
    if not judged:
        return Verdict(False, None, "no minute with enough traffic to judge yet")
    latest = judged[-1][1]
    recent = [value for _, value in judged[-settings.sustained_minutes :]]
    if len(recent) == settings.sustained_minutes and all(v > settings.threshold for v in recent):
        return Verdict(
            True,
            latest,
            f"PSI above {settings.threshold:g} for {settings.sustained_minutes} minutes in a row "
            f"(latest {latest:.2f})",
        )
    if latest > settings.threshold:
        return Verdict(
            False, latest, f"PSI {latest:.2f} above {settings.threshold:g}, not yet sustained"
        )
    return Verdict(False, latest, f"PSI {latest:.2f}, within {settings.threshold:g}")


def level(value: float | None, threshold: float = 0.25) -> str:
    """The reading of a PSI, for badges: none (under 0.1, or under the threshold when it is
    set lower), moderate (up to the threshold) or significant (above it)."""
    if value is None:
        return "unknown"
    if value < min(0.1, threshold):
        return "none"
    return "moderate" if value <= threshold else "significant"


def shares(counts: Sequence[int], size: int) -> list[float]:
    total = sum(counts)
    padded = list(counts) + [0] * (size - len(counts))
    return [c / total if total else 0.0 for c in padded[:size]]


def value_bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the value histogram's bins: below the first edge, each [a, b), the rest."""
    labels = [f"< {edges[0]:g}"]
    labels += [f"{a:g} … {b:g}" for a, b in zip(edges, edges[1:], strict=False)]
    labels.append(f"≥ {edges[-1]:g}")
    return labels


def compared_bins(
    baseline: Summary, current: Summary, *, edges: Sequence[float], max_classes: int
) -> tuple[str, list[str], list[float], list[float]] | None:
    """(what is compared, bin labels, baseline shares, current shares) for a chart: the
    classes both saw, or the value bins of the output whose PSI is largest."""
    if baseline.kind != current.kind or not baseline.rows or not current.rows:
        return None
    if current.kind == CLASSES:
        size = max(len(baseline.classes), len(current.classes))
        labels = [f"class {i}" if i < max_classes else "other" for i in range(size)]
        return (
            "top class",
            labels,
            shares(baseline.classes, size),
            shares(current.classes, size),
        )
    common = sorted(set(baseline.values) & set(current.values))
    if not common:
        return None
    name = max(common, key=lambda n: corrected_psi(baseline.values[n][0], current.values[n][0]))
    labels = value_bin_labels(edges)
    return (
        f"values of output '{name}'",
        labels,
        shares(baseline.values[name][0], len(labels)),
        shares(current.values[name][0], len(labels)),
    )
