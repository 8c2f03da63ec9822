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
telemetry, not billing.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import deque
from datetime import UTC, datetime

import numpy as np

from inference import protocol
from inference.specs import ModelSpec, TensorSpec

CLASSES, VALUES = "classes", "values"

_EDGES = np.asarray(protocol.DRIFT_VALUE_EDGES, dtype=np.float64)
_VALUE_BINS = len(protocol.DRIFT_VALUE_EDGES) + 1
_CLASS_BINS = protocol.DRIFT_MAX_CLASSES + 1
_INTEGER_KINDS = ("i", "u")


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
            self._closed.append(
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
        self._closed.append(protocol.OutputWindow(minute=start, rows=window.rows, values=values))


def _trimmed(counts: list[int]) -> list[int]:
    """Class counts without trailing empty bins (most classifiers have a handful of classes)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return counts[:end]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
