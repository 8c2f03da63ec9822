"""Drift: does a version answer differently from its baseline? Pure functions over plain data.

Nodes summarise each version's outputs per minute (`inference/drift.py`, the wire format in
`inference.protocol.OutputWindow`): top-class counts for classifiers, per-output histograms
over fixed bounds otherwise. The console merges a minute's windows from every node and
compares the merged distribution with the version's *baseline* by the noise-corrected
population stability index (`summary_psi`). That arithmetic — `Summary`, `merge`, `psi`,
`sampling_noise`, `corrected_psi`, `summary_psi` — lives in inference/drift.py, where the
node computes its `outpost_model_drift_psi` gauge with it against the reference the console
sends (protocol.DesiredVersion.drift_reference); it is re-exported here so both sides are one
arithmetic. The usual reading: under 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a
significant one. For several outputs the largest PSI counts.

The baseline is the previous version's outputs (over the same recent period when it still
serves, as in a canary, else its last hour), or for a first version a reference captured
from its own first well-filled minute. Drift is *sustained* when the last
`sustained_minutes` judged minutes (each with at least `min_rows` rows) are all above the
threshold; fleet.drift_actions raises an alert then, and a deployment with
`rollback_on_drift` rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Re-exported: the console's drift measurement and the node's gauge share this arithmetic.
from inference.drift import (  # noqa: F401
    CLASSES,
    SMOOTHING,
    VALUES,
    Summary,
    corrected_psi,
    merge,
    psi,
    sampling_noise,
    summary_psi,
)


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
