"""Workload grading (fleet.grading): static analysis, measurement, the verdict, calibration.

Plain data and small ONNX graphs built in plain sight; no database.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from fleet.charts import grading_figure
from fleet.grading import (
    DEFAULT_THRESHOLDS,
    GiB,
    GraphStats,
    Measurement,
    MeasurementError,
    MiB,
    Thresholds,
    analyse,
    calibrate_speed_factor,
    measure,
    verdict,
)
from fleet.grading import ClassProfile as Class
from inference import demo_models

FLOAT = TensorProto.FLOAT


def value(name: str, shape: list, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name: str, shape: list[int], dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def graph_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model


def gemm_model(*, batch: object = 1, bias: bool = True) -> onnx.ModelProto:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    return graph_model(
        [helper.make_node("Gemm", inputs, ["y"])],
        [value("x", [batch, 8])],
        [value("y", [batch, 4])],
        [weight("w", [8, 4])] + ([weight("b", [4])] if bias else []),
    )


# --- static analysis: FLOPs -----------------------------------------------------------------


def test_a_gemm_costs_two_flops_per_multiply_add_plus_one_per_bias_element():
    assert analyse(gemm_model()).flops == 2 * 8 * 4 + 4
    assert analyse(gemm_model(bias=False)).flops == 2 * 8 * 4


def test_a_transposed_gemm_costs_the_same():
    model = graph_model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        [value("x", [1, 8])],
        [value("y", [1, 4])],
        [weight("w", [4, 8])],
    )

    assert analyse(model).flops == 2 * 8 * 4


def test_a_symbolic_batch_counts_as_one_and_the_model_is_left_as_it_was():
    model = gemm_model(batch="batch")
    before = model.SerializeToString()

    assert analyse(model).flops == 2 * 8 * 4 + 4
    assert model.SerializeToString() == before


def test_an_if_costs_its_dearer_branch():
    def branch(name: str, op: str, *inputs: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, list(inputs), [f"{name}_y"])],
            name,
            [],
            [value(f"{name}_y", [1, 4])],
        )

    model = graph_model(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("then", "MatMul", "x", "w"),
                else_branch=branch("else", "Relu", "z"),
            )
        ],
        [value("cond", [], TensorProto.BOOL), value("x", [1, 8]), value("z", [1, 4])],
        [value("y", [1, 4])],
        [weight("w", [8, 4])],
    )

    assert analyse(model).flops == 2 * 8 * 4


def test_a_matmul_chain_adds_up_its_products():
    model = graph_model(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            helper.make_node("MatMul", ["h", "b"], ["y"]),
        ],
        [value("x", ["n", 16])],
        [value("y", ["n", 8])],
        [weight("a", [16, 32]), weight("b", [32, 8])],
    )

    assert analyse(model).flops == 2 * 16 * 32 + 2 * 32 * 8


def test_a_batched_matmul_and_the_same_einsum_cost_the_same():
    matmul = graph_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [value("a", [2, 3, 4]), value("b", [2, 4, 5])],
        [value("y", [2, 3, 5])],
    )
    einsum = graph_model(
        [helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")],
        [value("a", [2, 3, 4]), value("b", [2, 4, 5])],
        [value("y", [2, 3, 5])],
    )

    assert analyse(matmul).flops == 2 * 2 * 3 * 4 * 5
    assert analyse(einsum).flops == 2 * 2 * 3 * 4 * 5


def test_a_grouped_strided_padded_conv_counts_each_output_over_its_group_and_kernel():
    # 4 input channels in 2 groups, 8 filters of 2 x 3 x 3, stride 2, padding 1: 8 x 8 -> 4 x 4.
    model = graph_model(
        [
            helper.make_node(
                "Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]
            )
        ],
        [value("x", [1, 4, 8, 8])],
        [value("y", [1, 8, 4, 4])],
        [weight("w", [8, 2, 3, 3]), weight("b", [8])],
    )

    outputs = 8 * 4 * 4
    assert analyse(model).flops == 2 * outputs * (2 * 3 * 3) + outputs


def test_a_conv_transpose_scatters_each_input_over_its_kernel():
    model = graph_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
        [value("x", [1, 2, 3, 3])],
        [value("y", [1, 4, 6, 6])],
        [weight("w", [2, 4, 2, 2])],
    )

    assert analyse(model).flops == 2 * (2 * 3 * 3) * (4 * 2 * 2)


def test_cheap_operators_count_per_element_and_pooling_per_window():
    model = graph_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Softmax", ["p"], ["y"]),
            helper.make_node("Reshape", ["y", "shape"], ["flat"]),
        ],
        [value("x", [1, 1, 4, 4])],
        [value("flat", [1, 4])],
        [numpy_helper.from_array(np.array([1, 4], np.int64), "shape")],
    )

    relu, pool, softmax, reshape = 16, 4 * 2 * 2, 3 * 4, 0
    assert analyse(model).flops == relu + pool + softmax + reshape


def test_an_operator_with_unknown_shapes_counts_nothing_and_does_not_crash():
    mystery = helper.make_node("Mystery", ["x"], ["m"], domain="com.example")
    model = graph_model(
        [mystery, helper.make_node("Relu", ["m"], ["y"])],
        [value("x", [1, 8])],
        [value("y", None)],
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))

    stats = analyse(model)

    assert stats.flops == 0
    assert stats.op_histogram == {"Relu": 1, "com.example.Mystery": 1}


# --- static analysis: weights, operators, batch, memory --------------------------------------


def test_parameters_and_bytes_count_every_weight_exactly():
    model = graph_model(
        [
            helper.make_node("Constant", [], ["c"], value=weight("c", [2])),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        [value("x", [1, 2])],
        [value("y", [1, 2])],
        [
            weight("f32", [3, 4]),
            weight("i64", [5], np.int64),
            weight("f16", [10], np.float16),
        ],
    )

    stats = analyse(model)

    assert stats.parameters == 12 + 5 + 10 + 2
    assert stats.initializer_bytes == 12 * 4 + 5 * 8 + 10 * 2 + 2 * 4


def test_the_histogram_counts_operators_most_frequent_first_then_by_name():
    model = graph_model(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"]),
            helper.make_node("Relu", ["g"], ["r1"]),
            helper.make_node("Relu", ["r1"], ["r2"]),
            helper.make_node("Add", ["r2", "r2"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [value("x", [1, 8])],
        [value("y", [1, 4])],
        [weight("w", [8, 4])],
    )

    histogram = analyse(model).op_histogram

    assert list(histogram.items()) == [("Relu", 3), ("Add", 1), ("Gemm", 1)]


def test_a_model_has_a_dynamic_batch_when_every_input_starts_with_a_symbol():
    def model_with(*inputs: list) -> onnx.ModelProto:
        names = [f"x{i}" for i in range(len(inputs))]
        return graph_model(
            [helper.make_node("Concat", names, ["y"], axis=1)],
            [value(name, shape) for name, shape in zip(names, inputs, strict=True)],
            [value("y", None)],
        )

    assert analyse(model_with(["batch", 8])).dynamic_batch
    assert analyse(model_with([None, 8], ["n", 3])).dynamic_batch
    assert not analyse(model_with([1, 8])).dynamic_batch
    assert not analyse(model_with(["batch", 8], [1, 3])).dynamic_batch


def test_weights_listed_as_inputs_are_not_inputs_for_the_batch():
    model = gemm_model(batch="batch")
    model.graph.input.append(value("w", [8, 4]))  # how IR 3 exporters list initializers

    assert analyse(model).dynamic_batch


def test_peak_memory_on_a_chain_is_the_weights_and_two_neighbouring_activations():
    model = graph_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Add", ["b", "w"], ["y"]),
        ],
        [value("x", ["batch", 1000])],
        [value("y", ["batch", 1000])],
        [weight("w", [1000])],
    )

    activation = 1000 * 4
    assert analyse(model).peak_memory_bytes == 1000 * 4 + 2 * activation


def test_a_tensor_read_later_stays_alive_until_its_last_reader():
    model = graph_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Add", ["x", "b"], ["y"]),
        ],
        [value("x", [1, 1000])],
        [value("y", [1, 1000])],
    )

    # While b is computed, x (read again by Add), a and b are all alive.
    assert analyse(model).peak_memory_bytes == 3 * 1000 * 4


# --- static analysis: the demo models --------------------------------------------------------


@pytest.fixture(scope="module")
def demo_stats() -> dict[str, GraphStats]:
    return {name: analyse(build()) for name, build in demo_models.DEMO_MODELS.items()}


def host_measurement(p95_s: float = 0.001) -> Measurement:
    return Measurement(
        batch1_p50_s=p95_s / 2,
        batch1_p95_s=p95_s,
        best_batch=1,
        best_batch_p50_s=p95_s / 2,
        throughput_per_s=2 / p95_s,
    )


def test_the_demo_models_grade_as_their_names_say(demo_stats):
    thresholds = Thresholds.from_setting(DEFAULT_THRESHOLDS)
    classes = [Class("nano", 16 * GiB, 1.0)]

    grades = {
        name: verdict(stats, host_measurement(), classes, thresholds).grade
        for name, stats in demo_stats.items()
    }

    assert grades == {
        "tiny-classifier": "tiny",
        "random-mlp-medium": "medium",
        "random-convnet-large": "large",
    }


def test_the_demo_models_have_plausible_numbers(demo_stats):
    tiny = demo_stats["tiny-classifier"]
    mlp = demo_stats["random-mlp-medium"]
    convnet = demo_stats["random-convnet-large"]

    # Logistic regression over 8 features and 3 classes keeps its weights in attributes.
    assert tiny.parameters == 8 * 3 + 3
    assert tiny.flops < 1_000
    # 256 -> 1024 -> 1024 -> 1024 -> 16, weights and biases.
    assert mlp.parameters == 256 * 1024 + 2 * 1024 * 1024 + 1024 * 16 + 3 * 1024 + 16
    assert mlp.initializer_bytes == 4 * mlp.parameters
    assert 2 * mlp.parameters * 0.99 < mlp.flops < 2 * mlp.parameters * 1.01
    assert 1.5e9 < convnet.flops < 2e9
    assert tiny.flops < mlp.flops < convnet.flops
    assert convnet.op_histogram["Conv"] == 8
    # The first conv's output and its Relu (32 x 128 x 128 floats each) are its largest pair.
    assert convnet.peak_memory_bytes == convnet.initializer_bytes + 2 * 32 * 128 * 128 * 4
    assert all(stats.dynamic_batch for stats in demo_stats.values())


# --- measurement ------------------------------------------------------------------------------


def test_measuring_the_tiny_model_gives_ordered_positive_numbers_within_the_budget(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(demo_models.tiny_classifier(), path)

    began = time.perf_counter()
    result = measure(path, budget_s=0.5)
    elapsed = time.perf_counter() - began

    assert 0 < result.batch1_p50_s <= result.batch1_p95_s
    assert result.best_batch in (1, 4, 16, 32)
    assert result.best_batch_p50_s > 0
    assert result.throughput_per_s == pytest.approx(result.best_batch / result.best_batch_p50_s)
    assert result.throughput_per_s >= 1 / result.batch1_p50_s
    assert elapsed < 0.5 + 1.0  # the budget, plus loading the session


def test_a_model_without_a_dynamic_batch_is_measured_at_batch_one_only(tmp_path):
    path = tmp_path / "fixed.onnx"
    onnx.save(gemm_model(batch=1), path)

    result = measure(path, budget_s=0.2)

    assert result.best_batch == 1
    assert result.best_batch_p50_s == result.batch1_p50_s


def test_a_file_onnxruntime_cannot_load_is_a_measurement_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")

    with pytest.raises(MeasurementError, match="could not load"):
        measure(path, budget_s=0.1)


# --- the verdict ------------------------------------------------------------------------------

THRESHOLDS = Thresholds.from_setting(DEFAULT_THRESHOLDS)
CLASSES = [
    Class("nano", 16 * GiB, 0.5),
    Class("standard", 128 * GiB, 1.0),
    Class("accelerator", 512 * GiB, 4.0),
]


def stats_of(flops: int = 1_000, peak: int = 1 * MiB) -> GraphStats:
    return GraphStats(
        parameters=0,
        initializer_bytes=0,
        op_histogram={},
        flops=flops,
        peak_memory_bytes=peak,
        dynamic_batch=True,
    )


def test_a_model_exactly_at_a_bound_is_admitted_and_one_flop_more_is_not():
    at_bound = verdict(stats_of(flops=1_000_000), host_measurement(), CLASSES, THRESHOLDS)
    over = verdict(stats_of(flops=1_000_001), host_measurement(), CLASSES, THRESHOLDS)

    assert at_bound.grade == "tiny"
    assert over.grade == "medium"
    assert "over tiny's 1 MFLOPs" in over.reasons[0]


def test_a_small_model_with_a_big_memory_footprint_grades_by_its_memory():
    result = verdict(stats_of(flops=10, peak=33 * MiB), host_measurement(), CLASSES, THRESHOLDS)

    assert result.grade == "medium"
    assert result.target_s == 0.1
    assert "over tiny's 32 MiB" in result.reasons[0]
    assert "33 MiB peak memory" in result.reasons[0]


def test_the_smallest_class_that_meets_the_target_is_chosen():
    result = verdict(stats_of(), host_measurement(p95_s=0.004), CLASSES, THRESHOLDS)

    assert result.node_class == "nano"
    assert [c.node_class for c in result.latencies] == ["nano", "standard", "accelerator"]
    assert all(c.meets_target and c.fits_memory for c in result.latencies)
    assert (
        "nano serves it: p95 8 ms (0.5x the host's speed) meets the 10 ms target"
        in (result.reasons[-1])
    )


def test_a_class_too_slow_for_the_target_is_passed_over_with_its_latency():
    result = verdict(stats_of(), host_measurement(p95_s=0.006), CLASSES, THRESHOLDS)

    assert result.node_class == "standard"
    assert "Not nano: p95 12 ms (0.5x the host's speed) is over the 10 ms target." in (
        result.reasons
    )


def test_a_class_without_the_memory_is_skipped_however_fast():
    classes = [Class("nano", 1 * GiB, 10.0), *CLASSES[1:]]
    stats = stats_of(flops=100_000_000, peak=600 * MiB)

    result = verdict(stats, host_measurement(p95_s=0.01), classes, THRESHOLDS)

    assert result.node_class == "standard"
    nano = result.latencies[0]
    assert nano.meets_target and not nano.fits_memory
    assert "Not nano: 600 MiB is over its 512 MiB memory budget (50% of 1 GiB)." in result.reasons


def test_when_no_class_meets_the_target_there_is_no_class_and_the_reason_says_so():
    result = verdict(stats_of(), host_measurement(p95_s=0.2), CLASSES, THRESHOLDS)

    assert result.node_class is None
    assert not any(c.meets_target for c in result.latencies)
    assert result.reasons[-1] == (
        "No node class meets the 10 ms p95 target of tiny within its memory budget; "
        "the fastest, accelerator, takes 50 ms."
    )


def test_with_no_classes_at_all_there_is_no_class_either():
    result = verdict(stats_of(), host_measurement(), [], THRESHOLDS)

    assert result.node_class is None
    assert result.latencies == ()
    assert "no node classes are defined" in result.reasons[-1]


def test_the_reasons_give_the_numbers_behind_the_grade_and_the_measurement():
    measurement = Measurement(0.0004, 0.0005, 16, 0.002, 8000.0)

    result = verdict(stats_of(flops=4_757_520, peak=19 * MiB), measurement, CLASSES, THRESHOLDS)

    assert result.reasons[0] == (
        "Graded medium: 4.76 MFLOPs per inference and 19 MiB peak memory; "
        "over tiny's 1 MFLOPs; within medium's 1 GFLOPs and 1 GiB."
    )
    assert result.reasons[1] == (
        "On the console host it takes 400 µs p50 and 500 µs p95 at batch 1, "
        "and serves 8,000 rows/s at batch 16."
    )


classes_strategy = st.lists(
    st.builds(
        Class,
        name=st.sampled_from(["nano", "standard", "accelerator"]),
        memory_bytes=st.integers(1 * MiB, 64 * GiB),
        speed_factor=st.floats(0.05, 100),
    ),
    min_size=1,
    max_size=4,
)


def chosen_index(result) -> int:
    names = [c.node_class for c in result.latencies]
    # Names may repeat in generated lists: find the first that qualifies, as verdict does.
    for i, c in enumerate(result.latencies):
        if c.fits_memory and c.meets_target:
            assert names[i] == result.node_class
            return i
    assert result.node_class is None
    return len(names)


@given(
    classes=classes_strategy,
    p95_s=st.floats(1e-6, 10),
    peak=st.integers(1, 8 * GiB),
    which=st.integers(0, 3),
    faster=st.floats(1, 1000),
)
def test_a_faster_class_never_makes_the_choice_a_bigger_class(classes, p95_s, peak, which, faster):
    stats = stats_of(peak=peak)
    before = verdict(stats, host_measurement(p95_s), classes, THRESHOLDS)
    which %= len(classes)
    quicker = list(classes)
    quicker[which] = replace(classes[which], speed_factor=classes[which].speed_factor * faster)

    after = verdict(stats, host_measurement(p95_s), quicker, THRESHOLDS)

    assert chosen_index(after) <= chosen_index(before)


@given(classes=classes_strategy, p95_s=st.floats(1e-6, 10))
def test_a_class_latency_is_the_host_latency_divided_by_its_speed_factor(classes, p95_s):
    result = verdict(stats_of(), host_measurement(p95_s), classes, THRESHOLDS)

    for profile, latency in zip(classes, result.latencies, strict=True):
        assert latency.p95_s == pytest.approx(p95_s / profile.speed_factor)
        assert latency.p50_s == pytest.approx(p95_s / 2 / profile.speed_factor)


# --- calibration ------------------------------------------------------------------------------


def test_calibration_moves_the_factor_towards_what_the_node_reports():
    # The node runs the version in 10 ms where the host took 20 ms: it is twice as fast.
    once = calibrate_speed_factor(1.0, host_p50_s=0.02, node_p50_s=0.01)
    factor = 1.0
    for _ in range(50):
        factor = calibrate_speed_factor(factor, host_p50_s=0.02, node_p50_s=0.01)

    assert 1.0 < once < 2.0
    assert factor == pytest.approx(2.0, rel=1e-3)


def test_calibration_is_symmetric_for_faster_and_slower_reports():
    up = calibrate_speed_factor(1.0, host_p50_s=0.02, node_p50_s=0.01)
    down = calibrate_speed_factor(1.0, host_p50_s=0.01, node_p50_s=0.02)

    assert up * down == pytest.approx(1.0)


def test_calibration_clamps_absurd_ratios():
    factor = 1.0
    for _ in range(200):
        factor = calibrate_speed_factor(factor, host_p50_s=10.0, node_p50_s=1e-9)

    assert factor == pytest.approx(100.0)
    assert calibrate_speed_factor(
        0.06, host_p50_s=1e-9, node_p50_s=10.0, weight=1
    ) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("host", "node"), [(0.0, 0.01), (0.01, 0.0), (-1.0, 0.01), (0.01, math.nan), (math.inf, 1.0)]
)
def test_calibration_ignores_latencies_that_are_not_positive_numbers(host, node):
    assert calibrate_speed_factor(1.7, host_p50_s=host, node_p50_s=node) == 1.7


def test_calibration_without_a_current_factor_starts_from_the_report():
    assert calibrate_speed_factor(0.0, host_p50_s=0.03, node_p50_s=0.01) == pytest.approx(3.0)


def test_calibration_rejects_a_weight_outside_zero_to_one():
    with pytest.raises(ValueError, match="weight"):
        calibrate_speed_factor(1.0, 0.01, 0.01, weight=1.5)


@given(
    current=st.floats(0.05, 100),
    host=st.floats(1e-6, 10),
    node=st.floats(1e-6, 10),
    weight=st.floats(0.01, 1),
)
def test_a_calibration_step_lands_between_the_current_factor_and_the_clamped_report(
    current, host, node, weight
):
    observed = min(max(host / node, 0.05), 100)

    step = calibrate_speed_factor(current, host, node, weight=weight)

    assert min(current, observed) * (1 - 1e-9) <= step <= max(current, observed) * (1 + 1e-9)


# --- thresholds from settings -----------------------------------------------------------------


def test_the_default_thresholds_parse_into_rules_from_tiny_to_large():
    thresholds = Thresholds.from_setting(DEFAULT_THRESHOLDS)

    assert [r.grade for r in thresholds.rules] == ["tiny", "medium", "large"]
    assert [r.p95_target_s for r in thresholds.rules] == [0.01, 0.1, 1.0]
    assert thresholds.rules[-1].max_flops is None
    assert thresholds.memory_budget_share == 0.5


def test_thresholds_accept_integral_floats_as_json_writes_them():
    setting = {
        "grades": {
            **DEFAULT_THRESHOLDS["grades"],
            "medium": {"max_flops": 2e9, "max_peak_memory_bytes": 2.0 * GiB, "p95_target_s": 1},
        },
        "memory_budget_share": 1,
    }

    medium = Thresholds.from_setting(setting).rules[1]

    assert medium.max_flops == 2_000_000_000
    assert isinstance(medium.max_flops, int)


def with_rule(grade: str, **changes) -> dict:
    grades = dict(DEFAULT_THRESHOLDS["grades"])
    grades[grade] = {**grades[grade], **changes}
    return {**DEFAULT_THRESHOLDS, "grades": grades}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ([], "grading thresholds: expected an object"),
        (
            {"grades": DEFAULT_THRESHOLDS["grades"]},
            "grading thresholds: missing memory_budget_share",
        ),
        ({**DEFAULT_THRESHOLDS, "share": 1}, "grading thresholds: unknown share"),
        (
            {**DEFAULT_THRESHOLDS, "grades": {"tiny": {}, "medium": {}}},
            "grades: missing large",
        ),
        (with_rule("tiny", max_flop=5), "grades.tiny: unknown max_flop"),
        (with_rule("tiny", max_flops=-1), "grades.tiny.max_flops: must be a positive integer"),
        (with_rule("tiny", max_flops=True), "grades.tiny.max_flops"),
        (with_rule("tiny", max_flops=1.5), "grades.tiny.max_flops"),
        (with_rule("medium", p95_target_s="fast"), "grades.medium.p95_target_s"),
        (with_rule("medium", p95_target_s=0), "grades.medium.p95_target_s"),
        (with_rule("medium", max_flops=10), "grades.medium.max_flops: 10 is below grades.tiny"),
        (
            with_rule("tiny", max_peak_memory_bytes=None),
            "grades.medium.max_peak_memory_bytes: must be null (no bound) like grades.tiny's",
        ),
        (with_rule("large", max_flops=10**15), "grades.large.max_flops: must be null"),
        (
            {**DEFAULT_THRESHOLDS, "memory_budget_share": 1.5},
            "memory_budget_share: must be at most 1",
        ),
        (
            {**DEFAULT_THRESHOLDS, "memory_budget_share": 0},
            "memory_budget_share: must be a positive",
        ),
    ],
)
def test_thresholds_reject_a_bad_setting_naming_the_field(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Thresholds.from_setting(setting)


# --- the chart --------------------------------------------------------------------------------


def test_the_grading_chart_shows_latency_per_class_against_the_target():
    result = verdict(stats_of(), host_measurement(p95_s=0.006), CLASSES, THRESHOLDS)

    figure = grading_figure(result.latencies, result.target_s, result.node_class)

    p50, p95 = figure.data
    assert list(p95.x) == ["nano", "standard", "accelerator"]
    assert list(p95.y) == [12.0, 6.0, 1.5]
    assert list(p50.y) == [6.0, 3.0, 0.75]
    assert figure.layout.shapes[0].y0 == figure.layout.shapes[0].y1 == 10.0
    assert list(figure.layout.xaxis.ticktext) == ["nano", "<b>standard</b> (chosen)", "accelerator"]
    assert list(p95.marker.line.width) == [0, 2.5, 0]


def test_a_class_with_no_speed_is_refused():
    with pytest.raises(ValueError, match="nano: speed_factor must be positive"):
        Class("nano", 16 * GiB, 0.0)
