"""Per-minute summaries of a version's outputs, for the console's drift measurement.

The console cannot see predictions (payloads never leave the node), but it must notice when a
version starts answering differently from its baseline. So each node keeps, per version and
per minute, a summary small enough for the heartbeat (`protocol.OutputWindow`):

- a *classifier* (see `summary_kind`) is summarised by how many rows got each top class: the
  class index from an integer label output ([N] or [N, 1]), else the argmax over the last
  axis of a [N, K] output whose name says it holds scores (`SCORE_NAMES`: probabilities,
  logits, scores...);
- any other model by, per output (at most `DRIFT_MAX_OUTPUTS`), the mean and a histogram over
  the fixed bounds `protocol.DRIFT_VALUE_EDGES`; non-finite values are skipped.

Counting runs on the event loop when the batch finishes: a small batch is counted in plain
Python (~1 µs), a large one with one `bincount` per output (`inference/batching.py`), so no lock is needed. A window closes
when a row of a later minute arrives or when the heartbeat asks for pending windows after its
minute has passed; closed windows wait in a bounded queue until the console acknowledges
them (`ack`), and the oldest are dropped when the console is away for long: this is
telemetry, not billing. The last `DRIFT_RECENT_WINDOWS` closed windows are also kept, acked or
not, for the agent's own `outpost_model_drift_psi` gauge (`OutputSketch.recent`).

The comparison of outputs with a reference is here too, pure (the console's fleet/drift.py
re-exports it, so the node's gauge and the console's drift measurement are one arithmetic):
windows merge into a `Summary`, and `summary_psi` compares two summaries by the population
stability index,

    PSI = Σ (a_i − e_i) · ln(a_i / e_i)

over the bins either side uses, with `a` and `e` the shares of rows in each bin now and in the
reference, each count smoothed by half a row (Jeffreys), so a class that appears from nowhere
counts, but finitely, and a thin minute's empty bins do not explode the sum. For several
outputs the largest PSI counts. A PSI measured on samples is biased upwards by sampling noise
alone: for small differences it is close to a chi-square statistic, so two samples of the
*same* distribution over k bins give about (k − 1)(1/n_now + 1/n_reference) on average.
`summary_psi` subtracts that expected noise (never below 0), so a quiet model with many
classes does not look drifted by arithmetic alone; with thousands of rows the correction
vanishes.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from inference import protocol
from inference.specs import ModelSpec, TensorSpec

CLASSES, VALUES = "classes", "values"

_EDGES = np.asarray(protocol.DRIFT_VALUE_EDGES, dtype=np.float64)
_VALUE_BINS = len(protocol.DRIFT_VALUE_EDGES) + 1
_CLASS_BINS = protocol.DRIFT_MAX_CLASSES + 1
_INTEGER_KINDS = ("i", "u")
# The agent's drift gauge compares the merge of this many most recent closed windows (minutes)
# with the version's reference: enough rows to judge, recent enough to show a shift soon.
DRIFT_RECENT_WINDOWS = 5


def _rows_dims(tensor: TensorSpec) -> tuple[int, ...]:
    return tensor.shape[1:] if tensor.shape else ()


def label_output(spec: ModelSpec) -> int | None:
    """Index of an integer output with one value per row (shape [N] or [N, 1]), if any."""
    for index, tensor in enumerate(spec.outputs):
        if tensor.datatype.numpy.kind in _INTEGER_KINDS and _rows_dims(tensor) in ((), (1,)):
            return index
    return None


# A floating [N, K] output is read as scores per class only when its name says so: a
# regression or an embedding has the same shape, and its argmax means nothing.
SCORE_NAMES = ("prob", "logit", "score", "softmax", "class")


def score_output(spec: ModelSpec) -> int | None:
    """Index of a floating output of shape [N, K] with a fixed K >= 2 whose name says it holds
    scores per class (probabilities, logits, scores...)."""
    for index, tensor in enumerate(spec.outputs):
        dims = _rows_dims(tensor)
        if (
            tensor.datatype.numpy.kind == "f"
            and len(dims) == 1
            and dims[0] >= 2
            and any(word in tensor.name.lower() for word in SCORE_NAMES)
        ):
            return index
    return None


def summary_kind(spec: ModelSpec) -> tuple[str, int | None]:
    """(CLASSES, output index) for a classifier, else (VALUES, None). Only batchable models
    (first dimension = rows) are read as classifiers: for the others a row is not a sample."""
    if spec.batchable:
        for find in (label_output, score_output):
            index = find(spec)
            if index is not None:
                return CLASSES, index
    return VALUES, None


# Up to this many values, counting in Python beats numpy's per-call overhead (a batch of one
# costs ~1 µs this way against ~8 µs through bincount); larger batches go through numpy.
_SMALL = 64
_EDGE_LIST = list(protocol.DRIFT_VALUE_EDGES)
_OTHER_CLASS = _CLASS_BINS - 1


def top_classes(output: np.ndarray, from_scores: bool) -> np.ndarray:
    """The top class of each row: the label itself, or the argmax of the row's scores."""
    if from_scores:
        return np.argmax(output.reshape(output.shape[0], -1), axis=1)
    return output.reshape(-1)


def add_class_counts(counts: list[int], output: np.ndarray, from_scores: bool) -> None:
    """Count each row's top class into `counts` (`_CLASS_BINS` bins; the last takes labels
    out of range, negative ones included)."""
    top = top_classes(output, from_scores)
    if top.size <= _SMALL:
        for value in top.tolist():
            counts[value if 0 <= value < _OTHER_CLASS else _OTHER_CLASS] += 1
        return
    top = top.astype(np.int64, copy=False)
    top = np.where((top < 0) | (top >= _OTHER_CLASS), _OTHER_CLASS, top)
    for i, count in enumerate(np.bincount(top, minlength=_CLASS_BINS).tolist()):
        counts[i] += count


def class_counts(output: np.ndarray, from_scores: bool) -> list[int]:
    """Rows per top class, folded into `_CLASS_BINS` bins."""
    counts = [0] * _CLASS_BINS
    add_class_counts(counts, output, from_scores)
    return counts


def add_values(counts: list[int], output: np.ndarray) -> tuple[float, int]:
    """Count one output's finite values into the value bins; returns (their sum, how many)."""
    flat = np.asarray(output, dtype=np.float64).reshape(-1)
    if flat.size <= _SMALL:
        total, size = 0.0, 0
        for value in flat.tolist():
            if math.isfinite(value):
                counts[bisect_right(_EDGE_LIST, value)] += 1
                total += value
                size += 1
        return total, size
    finite = flat[np.isfinite(flat)]
    binned = np.bincount(np.searchsorted(_EDGES, finite, side="right"), minlength=_VALUE_BINS)
    for i, count in enumerate(binned.tolist()):
        counts[i] += count
    return float(finite.sum()), int(finite.size)


def value_histogram(output: np.ndarray) -> tuple[list[int], float, int]:
    """(counts over the value bins, sum, number of finite values) of one output."""
    counts = [0] * _VALUE_BINS
    total, size = add_values(counts, output)
    return counts, total, size


def minute_of(epoch_s: float) -> int:
    return int(epoch_s // protocol.DRIFT_WINDOW_S)


class _Window:
    __slots__ = ("minute", "rows", "classes", "sums", "sizes", "histograms")

    def __init__(self, minute: int, outputs: int) -> None:
        self.minute = minute
        self.rows = 0
        self.classes = [0] * _CLASS_BINS
        self.sums = [0.0] * outputs
        self.sizes = [0] * outputs
        self.histograms = [[0] * _VALUE_BINS for _ in range(outputs)]


class OutputSketch:
    """The output summaries of one loaded version. Use from the event loop only."""

    def __init__(self, spec: ModelSpec) -> None:
        self.kind, self._index = summary_kind(spec)
        self._from_scores = self.kind == CLASSES and label_output(spec) is None
        # Numeric outputs only (a string output has no mean), at most DRIFT_MAX_OUTPUTS.
        numeric = [
            (i, t.name) for i, t in enumerate(spec.outputs) if t.datatype.numpy.kind in "biuf"
        ][: protocol.DRIFT_MAX_OUTPUTS]
        self._value_indices = [i for i, _ in numeric]
        self._names = [name for _, name in numeric]
        self._current: _Window | None = None
        self._closed: deque[protocol.OutputWindow] = deque(maxlen=protocol.DRIFT_MAX_PENDING)
        # The latest closed windows whether acknowledged or not (the drift gauge's input).
        self._recent: deque[protocol.OutputWindow] = deque(maxlen=DRIFT_RECENT_WINDOWS)

    def observe(self, outputs: list[np.ndarray], rows: int, now: float | None = None) -> None:
        """Count one batch's outputs (model order)."""
        minute = minute_of(time.time() if now is None else now)
        window = self._current
        if window is None or window.minute != minute:
            self._close()
            window = self._current = _Window(minute, len(self._names))
        window.rows += rows
        if self.kind == CLASSES:
            add_class_counts(window.classes, outputs[self._index], self._from_scores)
            return
        for i, index in enumerate(self._value_indices):
            total, size = add_values(window.histograms[i], outputs[index])
            window.sums[i] += total
            window.sizes[i] += size

    def pending(self, now: float | None = None) -> list[protocol.OutputWindow]:
        """Closed windows the console has not acknowledged, oldest first; the current window
        closes here once its minute is over."""
        window = self._current
        if window is not None and window.minute < minute_of(time.time() if now is None else now):
            self._close()
        return list(self._closed)

    def recent(self, now: float | None = None) -> list[protocol.OutputWindow]:
        """The last DRIFT_RECENT_WINDOWS closed windows, oldest first (acknowledged or not);
        the current window closes here once its minute is over, as in `pending`."""
        window = self._current
        if window is not None and window.minute < minute_of(time.time() if now is None else now):
            self._close()
        return list(self._recent)

    def ack(self, windows: list[protocol.OutputWindow]) -> None:
        """The console stored these windows: forget them."""
        sent = {w.minute for w in windows}
        while self._closed and self._closed[0].minute in sent:
            self._closed.popleft()

    def _close(self) -> None:
        window, self._current = self._current, None
        if window is None or window.rows == 0:
            return
        start = datetime.fromtimestamp(window.minute * protocol.DRIFT_WINDOW_S, UTC)
        if self.kind == CLASSES:
            self._keep(
                protocol.OutputWindow(
                    minute=start, rows=window.rows, classes=_trimmed(window.classes)
                )
            )
            return
        values = [
            protocol.ValueSummary(
                name=name,
                mean=_finite(window.sums[i] / window.sizes[i]) if window.sizes[i] else 0.0,
                histogram=window.histograms[i],
            )
            for i, name in enumerate(self._names)
        ]
        self._keep(protocol.OutputWindow(minute=start, rows=window.rows, values=values))

    def _keep(self, window: protocol.OutputWindow) -> None:
        self._closed.append(window)
        self._recent.append(window)


def _trimmed(counts: list[int]) -> list[int]:
    """Class counts without trailing empty bins (most classifiers have a handful of classes)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return counts[:end]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# --- comparing outputs with a reference (the console's fleet/drift.py re-exports these) ------

# Half a row added to every used bin's count on both sides (Jeffreys smoothing).
SMOOTHING = 0.5


@dataclass
class Summary:
    """Outputs of one version over some minutes and nodes, merged. Its JSON form (`to_json`)
    is what the console stores as a version's drift reference and sends to nodes
    (protocol.DriftReference)."""

    kind: str | None = None
    rows: int = 0
    classes: list[int] = field(default_factory=list)
    # output name -> (histogram, sum of means weighted by rows, rows)
    values: dict[str, tuple[list[int], float, int]] = field(default_factory=dict)

    def add(self, window: Mapping | protocol.OutputWindow) -> None:
        """Add one window: an OutputWindow, or a dict with its keys (a stored row)."""
        if isinstance(window, protocol.OutputWindow):
            window = {
                "rows": window.rows,
                "classes": window.classes,
                "values": None
                if window.values is None
                else [v.model_dump() for v in window.values],
            }
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


def merge(windows: Iterable[Mapping | protocol.OutputWindow]) -> Summary:
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
