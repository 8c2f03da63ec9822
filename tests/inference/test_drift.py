"""Per-minute output summaries on the node (inference/drift.py): what counts as a classifier,
how rows are counted, and how windows close, wait for the console and are forgotten."""

import numpy as np
import pytest

from inference import protocol
from inference.datatypes import BY_OIP
from inference.drift import (
    CLASSES,
    VALUES,
    OutputSketch,
    class_counts,
    summary_kind,
    value_histogram,
)
from inference.specs import ModelSpec, TensorSpec

MINUTE = protocol.DRIFT_WINDOW_S
T0 = 1_700_000_040.0  # the start of a minute (divisible by 60)


def spec(*outputs, batchable=True):
    inputs = (TensorSpec("x", BY_OIP["FP32"], (-1, 4)),)
    return ModelSpec("m", "1", inputs, tuple(outputs), batchable)


def tensor(name, oip, shape):
    return TensorSpec(name, BY_OIP[oip], shape)


def test_a_label_output_makes_a_classifier_even_beside_probabilities():
    s = spec(tensor("label", "INT64", (-1,)), tensor("probabilities", "FP32", (-1, 3)))
    assert summary_kind(s) == (CLASSES, 0)


def test_scores_per_class_make_a_classifier():
    assert summary_kind(spec(tensor("logits", "FP32", (-1, 16)))) == (CLASSES, 0)


@pytest.mark.parametrize(
    "outputs, batchable",
    [
        ((tensor("y", "FP32", (-1, 1)),), True),  # a regression
        ((tensor("y", "FP32", (-1, 4, 4)),), True),  # a map, not scores
        ((tensor("embedding", "FP32", (-1, 8)),), True),  # the name does not say scores
        ((tensor("logits", "FP32", (1, 16)),), False),  # no batch dimension: rows unknown
    ],
)
def test_anything_else_is_summarised_by_values(outputs, batchable):
    assert summary_kind(spec(*outputs, batchable=batchable))[0] == VALUES


def test_class_counts_fold_unknown_labels_into_the_last_bin():
    counts = class_counts(np.array([0, 2, 2, -1, 500], dtype=np.int64), from_scores=False)
    assert len(counts) == protocol.DRIFT_MAX_CLASSES + 1
    assert counts[0] == 1 and counts[2] == 2 and counts[-1] == 2 and sum(counts) == 5


def test_class_counts_from_scores_take_the_top_class_per_row():
    scores = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1], [0.0, 0.3, 0.7]], dtype=np.float32)
    assert class_counts(scores, from_scores=True)[:3] == [1, 1, 1]


def test_value_histogram_uses_the_fixed_bounds_and_skips_non_finite_values():
    values = np.array([-2000.0, -0.5, 0.0, 0.005, 0.5, 5000.0, np.nan, np.inf])
    counts, total, size = value_histogram(values)
    edges = protocol.DRIFT_VALUE_EDGES
    assert len(counts) == len(edges) + 1
    assert size == 6 and total == pytest.approx(-2000 - 0.5 + 0.005 + 0.5 + 5000)
    assert counts[0] == 1  # below -1000
    assert counts[-1] == 1  # 1000 and above
    assert counts[edges.index(0.0) + 1] == 2  # [0, 0.01): 0.0 and 0.005
    assert sum(counts) == 6


@pytest.mark.parametrize("rows", [1, 64, 65, 5000])
def test_small_and_large_batches_count_alike(rows):
    """Small batches are counted in Python, large ones with numpy: the same answers."""
    rng = np.random.default_rng(rows)
    labels = rng.integers(-3, 80, size=rows)
    expected = [0] * (protocol.DRIFT_MAX_CLASSES + 1)
    for label in labels.tolist():
        expected[label if 0 <= label < protocol.DRIFT_MAX_CLASSES else -1] += 1
    assert class_counts(labels, from_scores=False) == expected
    values = rng.standard_normal(rows) * 100
    values[::7] = np.nan
    counts, total, size = value_histogram(values)
    finite = values[np.isfinite(values)]
    by_numpy = np.histogram(finite, bins=[-np.inf, *protocol.DRIFT_VALUE_EDGES, np.inf])[0]
    assert counts == by_numpy.tolist()
    assert size == finite.size and total == pytest.approx(finite.sum())


def test_a_window_closes_when_its_minute_is_over_and_waits_for_the_ack():
    sketch = OutputSketch(spec(tensor("label", "INT64", (-1,))))
    sketch.observe([np.array([1, 1, 2])], 3, now=T0 + 5)
    sketch.observe([np.array([2])], 1, now=T0 + 50)
    assert sketch.pending(now=T0 + 59) == []  # the minute is not over
    [window] = sketch.pending(now=T0 + MINUTE + 1)
    assert window.rows == 4 and window.classes == [0, 2, 2]
    assert window.minute.timestamp() == T0 and window.values is None
    assert sketch.pending(now=T0 + MINUTE + 2) == [window]  # not acknowledged: sent again
    sketch.ack([window])
    assert sketch.pending(now=T0 + MINUTE + 3) == []


def test_a_later_row_closes_the_open_window_and_starts_the_next():
    sketch = OutputSketch(spec(tensor("label", "INT64", (-1,))))
    sketch.observe([np.array([0])], 1, now=T0)
    sketch.observe([np.array([1])], 1, now=T0 + MINUTE)
    sketch.observe([np.array([1])], 1, now=T0 + 2 * MINUTE + 1)
    windows = sketch.pending(now=T0 + 3 * MINUTE)
    assert [w.classes for w in windows] == [[1], [0, 1], [0, 1]]
    sketch.ack(windows[:1])
    assert len(sketch.pending(now=T0 + 3 * MINUTE)) == 2


def test_windows_the_console_never_takes_are_bounded():
    sketch = OutputSketch(spec(tensor("label", "INT64", (-1,))))
    for minute in range(protocol.DRIFT_MAX_PENDING + 5):
        sketch.observe([np.array([0])], 1, now=T0 + minute * MINUTE)
    windows = sketch.pending(now=T0 + 100 * MINUTE)
    assert len(windows) == protocol.DRIFT_MAX_PENDING
    assert windows[-1].minute.timestamp() == T0 + (protocol.DRIFT_MAX_PENDING + 4) * MINUTE


def test_values_are_summarised_per_numeric_output_with_their_mean():
    s = spec(tensor("y", "FP32", (-1, 1)), tensor("name", "BYTES", (-1,)))
    sketch = OutputSketch(s)
    sketch.observe([np.array([[1.0], [3.0]]), np.array(["a", "b"], dtype=object)], 2, now=T0)
    sketch.observe([np.array([[5.0], [7.0]]), np.array(["c", "d"], dtype=object)], 2, now=T0 + 1)
    [window] = sketch.pending(now=T0 + MINUTE)
    [summary] = window.values  # the string output has no mean: left out
    assert summary.name == "y" and summary.mean == pytest.approx(4.0)
    assert sum(summary.histogram) == 4


def test_a_quiet_version_reports_nothing():
    sketch = OutputSketch(spec(tensor("label", "INT64", (-1,))))
    assert sketch.pending(now=T0) == []
