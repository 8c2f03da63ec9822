"""Workload grading: what an ONNX model costs, how fast it runs, and which node class serves it.

Three steps, each usable alone (fleet.tasks.grade_version_task runs them after an upload):

- `analyse(model)`: static analysis of the graph — weights, an operator histogram, FLOPs per
  inference and a peak-memory estimate, all at batch 1. Pure.
- `measure(path)`: latency of the model on *this* host with onnxruntime, at batch 1 and at the
  batch size with the best throughput. The only impure function here.
- `verdict(stats, measurement, classes, thresholds)`: the grade (the first rule whose FLOPs and
  memory bounds admit the model) and the smallest node class whose scaled latency meets the
  grade's p95 target within its memory budget, with the reasons in sentences. Pure.

A node class runs `speed_factor` times faster than the console host (a class's latency is the
host's divided by it); `calibrate_speed_factor` moves that factor towards what nodes of the
class report for versions they have loaded.
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, inliner

KiB = 2**10
MiB = 2**20
GiB = 2**30

GRADES = ("tiny", "medium", "large")

# The defaults, in the plain-dict form settings use (OUTPOST_GRADING overrides them whole).
# - tiny, "classification-sized": classic ML over tabular features (logistic regression, tree
#   ensembles, small MLPs) costs well under 1 MFLOP a row; 32 MiB leaves room for big
#   ensembles or hashed embeddings. 10 ms p95 keeps an API call interactive.
# - medium, "ASR-sized": a streaming speech chunk or a MobileNet-class vision model, up to
#   1 GFLOP and 1 GiB (whisper-small is ~0.97 GB in fp32); 1 GFLOP is ~20-50 ms on one CPU core,
#   inside the 100 ms a streaming ASR step may take.
# - large, "multimodal-sized": everything above; 1 s is an interactive multimodal request.
# The demo models (inference/demo_models.py) sit well inside these bands: ~0.1 kFLOPs, ~4.7
# MFLOPs and ~2 GFLOPs (tests/fleet/test_grading.py checks that they grade as named).
# memory_budget_share: a node keeps several models loaded next to the agent and the OS, so one
# model may take at most half of a class's memory.
DEFAULT_THRESHOLDS: dict = {
    "grades": {
        "tiny": {"max_flops": 1_000_000, "max_peak_memory_bytes": 32 * MiB, "p95_target_s": 0.010},
        "medium": {
            "max_flops": 1_000_000_000,
            "max_peak_memory_bytes": 1 * GiB,
            "p95_target_s": 0.100,
        },
        "large": {"max_flops": None, "max_peak_memory_bytes": None, "p95_target_s": 1.0},
    },
    "memory_budget_share": 0.5,
}

# Speed factors are clamped to this range: a report claiming a node is 1000x faster or slower
# than the console host is a broken measurement, not a fact to converge to.
SPEED_FACTOR_RANGE = (0.05, 100.0)


# --- static analysis ------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphStats:
    parameters: int  # elements of the weights (see _weights for what counts)
    initializer_bytes: int
    op_histogram: dict[str, int]  # op_type -> count, by count descending then name
    flops: int  # estimated FLOPs per inference at batch 1 (a multiply-add is 2)
    peak_memory_bytes: int  # weights + the largest live set of activations at batch 1
    dynamic_batch: bool  # every input's first dimension is symbolic


Shape = tuple[int, ...]

# Bits per element by ONNX element type. Strings count as a std::string (32 bytes) in
# activations; string weights count their actual length. Types this onnx lacks are skipped.
_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in [
        ("FLOAT", 32), ("UINT8", 8), ("INT8", 8), ("UINT16", 16), ("INT16", 16),
        ("INT32", 32), ("INT64", 64), ("STRING", 256), ("BOOL", 8), ("FLOAT16", 16),
        ("DOUBLE", 64), ("UINT32", 32), ("UINT64", 64), ("COMPLEX64", 64), ("COMPLEX128", 128),
        ("BFLOAT16", 16), ("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8),
        ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4),
        ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6),
    ]
    if hasattr(TensorProto, name)
}  # fmt: skip

# Initializers up to this many elements stay in the copy given to shape inference (they may be
# shapes or axes it needs to propagate); bigger ones are replaced by typed inputs, so a 500 MB
# model is not serialised to C++ and back just to learn its shapes.
_KEEP_FOR_INFERENCE = 1024


def analyse(model: onnx.ModelProto) -> GraphStats:
    """Weights, operators, FLOPs and peak memory of a model at batch 1.

    Symbolic dimensions (the batch, but also e.g. a sequence length) count as 1; a tensor whose
    shape cannot be inferred counts as 0 FLOPs and 0 bytes. Load big models with
    `onnx.load(path, load_external_data=False)`: no weight values are read here.
    """
    graph = model.graph
    weight_names = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    inputs = [v for v in graph.input if v.name not in weight_names]
    parameters, weight_bytes = _weights(graph)
    inferred = _infer_shapes(model, weight_names)
    shapes = _shapes(inferred.graph)
    histogram = Counter(_op_name(node) for node in _all_nodes(inferred.graph))
    return GraphStats(
        parameters=parameters,
        initializer_bytes=weight_bytes,
        op_histogram=dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        flops=_graph_flops(inferred.graph, shapes),
        peak_memory_bytes=weight_bytes
        + _peak_activation_bytes(inferred.graph, shapes, weight_names),
        dynamic_batch=bool(inputs) and all(_first_dim_is_symbolic(v) for v in inputs),
    )


def _op_name(node: onnx.NodeProto) -> str:
    # Operators of other domains keep their domain: com.microsoft.Attention is not Attention.
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for subgraph in _subgraphs(node):
            yield from _all_nodes(subgraph)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def _weights(graph: onnx.GraphProto) -> tuple[int, int]:
    """(elements, bytes) of the weights stored in the graph and its subgraphs: initializers,
    sparse initializers (values and indices), Constant nodes' values, and the float attributes
    of ai.onnx.ml operators (skl2onnx keeps a LinearClassifier's coefficients and a tree
    ensemble's thresholds and leaf weights there)."""
    elements = size = 0

    def add_tensor(tensor: onnx.TensorProto) -> None:
        nonlocal elements, size
        count = math.prod(tensor.dims)
        elements += count
        if tensor.data_type == TensorProto.STRING:
            size += sum(len(s) for s in tensor.string_data)
        else:
            size += _tensor_bytes(tensor.data_type, count)

    for tensor in graph.initializer:
        add_tensor(tensor)
    for sparse in graph.sparse_initializer:
        add_tensor(sparse.values)
        size += _tensor_bytes(sparse.indices.data_type, math.prod(sparse.indices.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    add_tensor(attribute.t)
                elif attribute.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS):
                    count = len(attribute.floats) + len(attribute.ints)
                    elements += count
                    size += count * (4 if attribute.floats else 8)
        elif node.domain == "ai.onnx.ml":
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.FLOATS:
                    elements += len(attribute.floats)
                    size += 4 * len(attribute.floats)
                elif attribute.type == onnx.AttributeProto.TENSOR:
                    add_tensor(attribute.t)
        for subgraph in _subgraphs(node):
            more_elements, more_bytes = _weights(subgraph)
            elements += more_elements
            size += more_bytes
    return elements, size


def _tensor_bytes(data_type: int, elements: int) -> int:
    return math.ceil(elements * _BITS.get(data_type, 0) / 8)


def _infer_shapes(model: onnx.ModelProto, weight_names: set[str]) -> onnx.ModelProto:
    """A copy of the model with inferred shapes, every symbolic input dimension pinned to 1 so
    that shapes downstream come out concrete."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    declared = {v.name for v in graph.input}
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= _KEEP_FOR_INFERENCE:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    for value in graph.input:
        if value.name in weight_names:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    if skeleton.functions:
        try:
            skeleton = inliner.inline_local_functions(skeleton)
        except Exception:  # noqa: S110 - without inlining, function calls just count 0 FLOPs
            pass
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(skeleton, data_prop=data_prop)
        except Exception:  # noqa: S112 - a graph onnx cannot infer still has a histogram
            continue
    return skeleton


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, Shape | None]]:
    """(element type, shape) of every tensor known in the graph and its subgraphs; a symbolic
    dimension left after inference counts as 1, an unknown rank as None."""
    known: dict[str, tuple[int, Shape | None]] = {}
    for tensor in graph.initializer:
        known[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        if tensor_type.HasField("shape"):
            shape: Shape | None = tuple(
                d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim
            )
        else:
            shape = None
        known[value.name] = (tensor_type.elem_type, shape)
    for node in graph.node:
        for subgraph in _subgraphs(node):
            for name, entry in _shapes(subgraph).items():
                known.setdefault(name, entry)
    return known


def _first_dim_is_symbolic(value: onnx.ValueInfoProto) -> bool:
    dims = value.type.tensor_type.shape.dim
    return len(dims) >= 1 and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)


# FLOPs per output element of the cheap operators. Activations count 1 like arithmetic does
# (the usual convention of FLOP counters); normalisations count their few passes over the data.
_PER_OUTPUT_ELEMENT = {
    **dict.fromkeys(
        "Add Sub Mul Div Pow Mod Neg Abs Sign Reciprocal Sqrt Exp Log Erf Floor Ceil Round "
        "Sin Cos Tan Relu LeakyRelu PRelu Elu Selu Celu ThresholdedRelu Sigmoid HardSigmoid "
        "Tanh Softplus Softsign HardSwish Mish Gelu Swish Clip Where Equal Less Greater "
        "LessOrEqual GreaterOrEqual And Or Xor Not BitShift Resize Upsample".split(),
        1,
    ),
    "BatchNormalization": 2,  # folded to one scale and one shift per element at inference
    "Softmax": 3,  # exp, sum, divide
    "LogSoftmax": 3,
    "Hardmax": 1,
    "LpNormalization": 3,
    "LayerNormalization": 5,  # mean, variance, normalise, scale, shift
    "InstanceNormalization": 5,
    "GroupNormalization": 5,
    "MeanVarianceNormalization": 5,
    "RMSNormalization": 4,
}
# Operators that read every input element once (reductions, global pooling).
_PER_INPUT_ELEMENT = {
    **dict.fromkeys(
        "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
        "ReduceLogSumExp ReduceSumSquare GlobalAveragePool GlobalMaxPool GlobalLpPool ArgMax "
        "ArgMin CumSum TopK".split(),
        1,
    ),
    "ai.onnx.ml.Normalizer": 2,
}
_VARIADIC = {"Sum", "Mean", "Max", "Min"}  # n inputs: n - 1 operations per element

ShapeOf = Callable[[str], Shape | None]


def _graph_flops(graph: onnx.GraphProto, shapes: dict[str, tuple[int, Shape | None]]) -> int:
    def shape_of(name: str) -> Shape | None:
        entry = shapes.get(name) if name else None
        return entry[1] if entry else None

    total = 0
    for node in graph.node:
        if node.op_type == "If":
            # One branch runs: count the dearer one.
            total += max((_graph_flops(g, shapes) for g in _subgraphs(node)), default=0)
            continue
        # Loop and Scan bodies are counted once: the trip count is rarely known statically.
        total += sum(_graph_flops(g, shapes) for g in _subgraphs(node))
        try:
            total += _node_flops(node, shape_of)
        except (IndexError, ValueError, ZeroDivisionError):
            continue  # a malformed or unexpected node counts 0 rather than failing the upload
    return total


def _node_flops(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    op = _op_name(node)
    inputs, outputs = list(node.input), list(node.output)

    def size(name: str) -> int:
        shape = shape_of(name)
        return math.prod(shape) if shape is not None else 0

    def present(index: int) -> bool:
        return len(inputs) > index and inputs[index] != ""

    out = size(outputs[0]) if outputs else 0
    if op == "Gemm":
        a = shape_of(inputs[0])
        if a is None or len(a) != 2:
            return 0
        k = a[0] if _attribute(node, "transA", 0) else a[1]
        return 2 * out * k + (out if present(2) else 0)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape_of(inputs[0])
        return 2 * out * a[-1] if a else 0
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape_of(inputs[3 if op == "QLinearConv" else 1])
        bias = present(8) if op == "QLinearConv" else op == "Conv" and present(2)
        # Each output element sums (input channels / group) x kernel products: w[1:].
        return 2 * out * math.prod(w[1:]) + (out if bias else 0) if w else 0
    if op == "ConvTranspose":
        w = shape_of(inputs[1])
        # Each input element is scattered into (output channels / group) x kernel outputs.
        return 2 * size(inputs[0]) * math.prod(w[1:]) + (out if present(2) else 0) if w else 0
    if op in ("RNN", "GRU", "LSTM"):
        x, w, r = shape_of(inputs[0]), shape_of(inputs[1]), shape_of(inputs[2])
        if not (x and w and r) or len(x) != 3:
            return 0
        # Every step of every row multiplies the input by W and the hidden state by R.
        return 2 * x[0] * x[1] * (math.prod(w) + math.prod(r))
    if op == "Einsum":
        return _einsum_flops(_attribute(node, "equation", b"").decode(), inputs, shape_of)
    if op == "Attention":
        q, k, v = (shape_of(name) for name in inputs[:3])
        if not (q and k and v) or len(q) < 3:
            return 0
        # Scores Q.K^T, then their weighted sum of V, both over the key length k[-2].
        return 2 * math.prod(q) * k[-2] + 2 * math.prod(q[:-1]) * k[-2] * v[-1]
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return out * math.prod(_attribute(node, "kernel_shape", [1]))
    if op in ("ai.onnx.ml.LinearClassifier", "ai.onnx.ml.LinearRegressor"):
        x = shape_of(inputs[0])
        rows = x[0] if x and len(x) == 2 else 1
        return 2 * rows * len(_attribute(node, "coefficients", []))
    if op in (
        "ai.onnx.ml.TreeEnsembleClassifier",
        "ai.onnx.ml.TreeEnsembleRegressor",
        "ai.onnx.ml.TreeEnsemble",
    ):
        x = shape_of(inputs[0])
        rows = x[0] if x else 1
        nodes = len(_attribute(node, "nodes_featureids", []))
        trees = len(_attribute(node, "tree_roots", [])) or len(
            set(_attribute(node, "nodes_treeids", []))
        )
        # One comparison per level walked: about log2 of the nodes in a (balanced) tree.
        return rows * trees * math.ceil(math.log2(nodes / trees + 1)) if trees else 0
    if op in _PER_OUTPUT_ELEMENT:
        return out * _PER_OUTPUT_ELEMENT[op]
    if op in _VARIADIC:
        return out * max(1, len(inputs) - 1)
    if op in _PER_INPUT_ELEMENT:
        return size(inputs[0]) * _PER_INPUT_ELEMENT[op]
    return 0  # data movement (Reshape, Transpose, Gather, ...) and operators not estimated


def _einsum_flops(equation: str, inputs: Sequence[str], shape_of: ShapeOf) -> int:
    """Every point of the joint index space is one multiply-add per extra operand."""
    left = equation.replace(" ", "").split("->")[0]
    terms = left.split(",")
    if len(terms) != len(inputs):
        return 0
    sizes: dict[str, int] = {}
    for term, name in zip(terms, inputs, strict=True):
        shape = shape_of(name)
        if shape is None:
            return 0
        letters = list(term.replace("...", ""))
        if "..." in term:
            # The ellipsis stands for the dims the letters leave; label them from the right
            # so broadcast dimensions of different operands line up.
            before, after = term.split("...")
            extra = len(shape) - len(before) - len(after)
            letters = list(before) + [f".{extra - i}" for i in range(extra)] + list(after)
        if len(letters) != len(shape):
            return 0
        for letter, dim in zip(letters, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    return math.prod(sizes.values()) * max(1, 2 * (len(inputs) - 1))


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _peak_activation_bytes(
    graph: onnx.GraphProto, shapes: dict[str, tuple[int, Shape | None]], weights: set[str]
) -> int:
    """The largest sum of activation sizes alive at once, walking the nodes in topological
    order: a tensor is alive from the step that produces it (graph inputs: from the start) to
    its last consumer (graph outputs: to the end). An upper bound of sorts, since onnxruntime
    reuses buffers in place; its arena and the runtime itself add their own overhead on top."""
    order = _topological_order(graph)
    weights = set(weights)
    born: dict[str, int] = {v.name: -1 for v in graph.input if v.name not in weights}
    last_use: dict[str, int] = {}
    for step, node in enumerate(order):
        for name in _consumed(node):
            last_use[name] = step
        if node.op_type == "Constant":
            weights.update(node.output)  # counted with the weights already
            continue
        for name in node.output:
            if name:
                born.setdefault(name, step)
    end = len(order) - 1
    for value in graph.output:
        last_use[value.name] = max(end, 0)
    delta = [0] * (len(order) + 3)
    for name, start in born.items():
        if name in weights:
            continue
        entry = shapes.get(name)
        if entry is None or entry[1] is None:
            continue
        data_type, shape = entry
        stop = max(last_use.get(name, start), start)
        delta[start + 1] += _tensor_bytes(data_type, math.prod(shape))
        delta[stop + 2] -= _tensor_bytes(data_type, math.prod(shape))
    peak = alive = 0
    for change in delta:
        alive += change
        peak = max(peak, alive)
    return peak


def _consumed(node: onnx.NodeProto) -> set[str]:
    """The names a node reads, including those its subgraphs capture from the outer scope."""
    names = {name for name in node.input if name}
    for subgraph in _subgraphs(node):
        for inner in _all_nodes(subgraph):
            names.update(name for name in inner.input if name)
    return names


def _topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where each comes after its producers: always the lowest-numbered
    ready node next, which is the graph's own order when it is already sorted (the ONNX
    checker requires it), with the stragglers of a malformed (cyclic) graph at the end."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    waiting = [
        {producer[name] for name in _consumed(node) if name in producer and producer[name] != i}
        for i, node in enumerate(graph.node)
    ]
    consumers: dict[int, list[int]] = {}
    for i, needs in enumerate(waiting):
        for j in needs:
            consumers.setdefault(j, []).append(i)
    ready = [i for i, needs in enumerate(waiting) if not needs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, []):
            waiting[j].discard(i)
            if not waiting[j]:
                heapq.heappush(ready, j)
    done = set(order)
    order += [i for i in range(len(graph.node)) if i not in done]
    return [graph.node[i] for i in order]


# --- measurement on the console host --------------------------------------------------------


class MeasurementError(Exception):
    """The model cannot be timed here (does not load, or fails on zeros); says why."""


@dataclass(frozen=True)
class Measurement:
    batch1_p50_s: float
    batch1_p95_s: float
    best_batch: int  # the batch size with the best throughput among those tried
    best_batch_p50_s: float  # p50 of one run at best_batch (the whole batch)
    throughput_per_s: float  # rows per second at best_batch


# Untimed runs before timing: the first run allocates and initialises lazily.
_WARMUP_RUNS = 2
_MIN_BATCH1_RUNS = 20
_MAX_RUNS = 1000


def measure(
    path: str | Path,
    *,
    batch_sizes: Sequence[int] = (1, 4, 16, 32),
    budget_s: float = 3.0,
    intra_op_threads: int = 1,
) -> Measurement:
    """Time the model with onnxruntime on this host, on zeros, the way a node warms it up.

    Batch 1 gets half the budget (all of it for a model without a dynamic batch dimension);
    the other batch sizes share the rest, and a size whose predicted run would not fit its
    share is skipped with the sizes above it. The budget covers the runs, not loading the
    session. Raises MeasurementError when the model cannot be loaded or run.
    """
    # Imported here: onnxruntime is only needed by the worker that grades, not by the web
    # processes that import this module for the verdict.
    from inference.config import SessionSettings
    from inference.datatypes import UnsupportedType, from_ort
    from inference.models import session_options, zeros_for
    from inference.specs import TensorSpec, dims_from_ort, has_dynamic_batch_dim

    if budget_s <= 0:
        raise ValueError("budget_s must be positive")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(SessionSettings(intra_op_threads=intra_op_threads)),
            providers=["CPUExecutionProvider"],
        )
        specs = [
            TensorSpec(name=t.name, datatype=from_ort(t.type), shape=dims_from_ort(t.shape))
            for t in session.get_inputs()
        ]
    except UnsupportedType as exc:
        raise MeasurementError(str(exc)) from exc
    except Exception as exc:  # onnxruntime raises several pybind exception types
        raise MeasurementError(f"onnxruntime could not load the model: {exc}") from exc

    def runner(rows: int) -> Callable[[], list]:
        feed = {spec.name: zeros_for(spec, rows) for spec in specs}
        return lambda: session.run(None, feed)

    batchable = bool(specs) and all(has_dynamic_batch_dim(spec) for spec in specs)
    began = time.perf_counter()
    deadline = began + budget_s
    run1 = runner(1)
    try:
        for _ in range(_WARMUP_RUNS):
            run1()
        batch1 = _timed(
            run1,
            until=began + budget_s * (0.5 if batchable else 1.0),
            at_least=3,
            at_most=_MAX_RUNS,
        )
        if len(batch1) < _MIN_BATCH1_RUNS:
            # A p95 of a handful of runs is their maximum: borrow from the batch sizes' share.
            batch1 += _timed(
                run1,
                until=deadline,
                at_least=0,
                at_most=_MIN_BATCH1_RUNS - len(batch1),
                guess=batch1[-1],
            )
    except Exception as exc:
        raise MeasurementError(f"the model fails on zeros at batch 1: {exc}") from exc
    p50 = statistics.median(batch1)
    results = {1: p50}  # batch size -> p50 of one run
    larger = sorted({b for b in batch_sizes if b > 1}) if batchable else []
    for index, rows in enumerate(larger):
        now = time.perf_counter()
        share = (deadline - now) / (len(larger) - index)
        last = max(results)
        predicted = results[last] / last * rows  # no better per row than the last size
        if 2 * predicted > share:
            break
        run = runner(rows)
        try:
            outputs = run()  # warm-up, and proof that the first dimension is the batch
            if not all(len(output) == rows for output in outputs):
                break
            results[rows] = statistics.median(
                _timed(run, until=now + share, at_least=2, at_most=_MAX_RUNS // 4)
            )
        except Exception:  # a batch the model rejects is not one it will be served at
            break
    best = max(results, key=lambda rows: (rows / results[rows], -rows))
    return Measurement(
        batch1_p50_s=p50,
        batch1_p95_s=_nearest_rank(batch1, 0.95),
        best_batch=best,
        best_batch_p50_s=results[best],
        throughput_per_s=best / results[best],
    )


def _timed(
    run: Callable[[], object], *, until: float, at_least: int, at_most: int, guess: float = 0.0
) -> list[float]:
    """Wall-clock seconds of repeated runs: as many as fit before `until` (predicting the next
    run takes as long as the last, or `guess` before the first), at least `at_least`, at most
    `at_most`."""
    samples: list[float] = []
    while len(samples) < at_most:
        start = time.perf_counter()
        if len(samples) >= at_least and start + (samples[-1] if samples else guess) > until:
            break
        run()
        samples.append(time.perf_counter() - start)
    return samples


def _nearest_rank(samples: Sequence[float], quantile: float) -> float:
    # Nearest rank, not interpolation: the p95 is a latency some run really had, and it is
    # never below the median.
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# --- the verdict ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassProfile:
    name: str  # "nano" | "standard" | "accelerator"
    memory_bytes: int
    speed_factor: float  # how many times faster than the console host (> 1 is faster)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speed_factor) and self.speed_factor > 0):
            raise ValueError(f"{self.name}: speed_factor must be positive, got {self.speed_factor}")


@dataclass(frozen=True)
class GradeRule:
    grade: str  # "tiny" | "medium" | "large"
    max_flops: int | None  # None: no upper bound
    max_peak_memory_bytes: int | None
    p95_target_s: float  # the latency SLO of this grade on its node class

    def admits(self, stats: GraphStats) -> bool:
        return _within(stats.flops, self.max_flops) and _within(
            stats.peak_memory_bytes, self.max_peak_memory_bytes
        )


def _within(value: int, bound: int | None) -> bool:
    return bound is None or value <= bound


_RULE_KEYS = ("max_flops", "max_peak_memory_bytes", "p95_target_s")


@dataclass(frozen=True)
class Thresholds:
    rules: tuple[GradeRule, ...]  # ordered tiny, medium, large
    memory_budget_share: float  # share of a class's memory one model may use

    @classmethod
    def from_setting(cls, value: object) -> Thresholds:
        """Parse the plain-dict form (DEFAULT_THRESHOLDS, or OUTPOST_GRADING's JSON); a bad
        value raises ValueError naming the field, e.g. `grades.tiny.max_flops: ...`."""
        top = _mapping(value, "grading thresholds", ("grades", "memory_budget_share"))
        grades = _mapping(top["grades"], "grades", GRADES)
        rules = []
        for grade in GRADES:
            rule = _mapping(grades[grade], f"grades.{grade}", _RULE_KEYS)
            rules.append(
                GradeRule(
                    grade=grade,
                    max_flops=_bound(rule["max_flops"], f"grades.{grade}.max_flops"),
                    max_peak_memory_bytes=_bound(
                        rule["max_peak_memory_bytes"], f"grades.{grade}.max_peak_memory_bytes"
                    ),
                    p95_target_s=_positive(rule["p95_target_s"], f"grades.{grade}.p95_target_s"),
                )
            )
        for field in ("max_flops", "max_peak_memory_bytes"):
            for smaller, bigger in zip(rules, rules[1:], strict=False):
                low, high = getattr(smaller, field), getattr(bigger, field)
                if low is None and high is not None:
                    raise ValueError(
                        f"grades.{bigger.grade}.{field}: must be null (no bound) like "
                        f"grades.{smaller.grade}'s; a bigger grade needs a bound at least as high"
                    )
                if None not in (low, high) and high < low:
                    raise ValueError(
                        f"grades.{bigger.grade}.{field}: {high} is below "
                        f"grades.{smaller.grade}.{field} ({low}); a bigger grade needs a "
                        "bound at least as high"
                    )
            if getattr(rules[-1], field) is not None:
                raise ValueError(
                    f"grades.{rules[-1].grade}.{field}: must be null (no bound), so that "
                    "every model has a grade"
                )
        share = _positive(top["memory_budget_share"], "memory_budget_share")
        if share > 1:
            raise ValueError(f"memory_budget_share: must be at most 1, got {share}")
        return cls(rules=tuple(rules), memory_budget_share=share)


def _mapping(value: object, where: str, keys: Sequence[str]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object with {', '.join(keys)}")
    missing = [key for key in keys if key not in value]
    unknown = sorted(str(key) for key in value if key not in keys)
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise ValueError(f"{where}: {'; '.join(problems)} (expected {', '.join(keys)})")
    return value


def _bound(value: object, where: str) -> int | None:
    if value is None:
        return None
    # JSON writes 1e9 as a float; an integral one is fine.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: must be a positive integer or null, got {value!r}")
    return value


def _positive(value: object, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where}: must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ClassLatency:
    node_class: str
    p50_s: float
    p95_s: float
    fits_memory: bool
    meets_target: bool


@dataclass(frozen=True)
class Verdict:
    grade: str
    node_class: str | None  # the smallest class that meets the target within memory, or None
    latencies: tuple[ClassLatency, ...]  # one per class, in the order given
    target_s: float
    reasons: tuple[str, ...]  # why this grade, why each smaller class was not enough, why this


def verdict(
    stats: GraphStats,
    measurement: Measurement,
    classes: Sequence[ClassProfile],
    thresholds: Thresholds,
) -> Verdict:
    """Grade the model and pick the first class, in the order given (cheapest first), whose
    batch-1 p95 (the host's divided by its speed factor) meets the grade's target and whose
    memory budget holds the model's peak memory."""
    rule = next((r for r in thresholds.rules if r.admits(stats)), thresholds.rules[-1])
    reasons = [_grade_reason(stats, rule, thresholds.rules)]
    reasons.append(
        f"On the console host it takes {format_seconds(measurement.batch1_p50_s)} p50 and "
        f"{format_seconds(measurement.batch1_p95_s)} p95 at batch 1"
        + (
            f", and serves {_rate(measurement.throughput_per_s)} rows/s at batch "
            f"{measurement.best_batch}."
            if measurement.best_batch > 1
            else "."
        )
    )
    target = rule.p95_target_s
    share = thresholds.memory_budget_share
    latencies = []
    chosen: str | None = None
    for profile in classes:
        budget = profile.memory_bytes * share
        latency = ClassLatency(
            node_class=profile.name,
            p50_s=measurement.batch1_p50_s / profile.speed_factor,
            p95_s=measurement.batch1_p95_s / profile.speed_factor,
            fits_memory=stats.peak_memory_bytes <= budget,
            meets_target=measurement.batch1_p95_s / profile.speed_factor <= target,
        )
        latencies.append(latency)
        if chosen is not None:
            continue
        speed = f"{profile.speed_factor:.3g}x the host's speed"
        if latency.fits_memory and latency.meets_target:
            chosen = profile.name
            reasons.append(
                f"{profile.name} serves it: p95 {format_seconds(latency.p95_s)} ({speed}) "
                f"meets the {format_seconds(target)} target, and "
                f"{format_bytes(stats.peak_memory_bytes)} fits its {format_bytes(budget)} "
                f"budget ({share:.0%} of {format_bytes(profile.memory_bytes)})."
            )
            continue
        problems = []
        if not latency.meets_target:
            problems.append(
                f"p95 {format_seconds(latency.p95_s)} ({speed}) is over the "
                f"{format_seconds(target)} target"
            )
        if not latency.fits_memory:
            problems.append(
                f"{format_bytes(stats.peak_memory_bytes)} is over its "
                f"{format_bytes(budget)} memory budget ({share:.0%} of "
                f"{format_bytes(profile.memory_bytes)})"
            )
        reasons.append(f"Not {profile.name}: {' and '.join(problems)}.")
    if chosen is None:
        reasons.append(
            "No node class meets the "
            f"{format_seconds(target)} p95 target of {rule.grade} within its memory budget"
            + (
                f"; the fastest, {min(latencies, key=lambda c: c.p95_s).node_class}, takes "
                f"{format_seconds(min(c.p95_s for c in latencies))}."
                if latencies
                else " (no node classes are defined)."
            )
        )
    return Verdict(
        grade=rule.grade,
        node_class=chosen,
        latencies=tuple(latencies),
        target_s=target,
        reasons=tuple(reasons),
    )


def _grade_reason(stats: GraphStats, chosen: GradeRule, rules: Sequence[GradeRule]) -> str:
    parts = []
    for rule in rules:
        if rule is chosen:
            break
        exceeded = []
        if not _within(stats.flops, rule.max_flops):
            exceeded.append(format_flops(rule.max_flops or 0))
        if not _within(stats.peak_memory_bytes, rule.max_peak_memory_bytes):
            exceeded.append(format_bytes(rule.max_peak_memory_bytes or 0))
        parts.append(f"over {rule.grade}'s {' and '.join(exceeded)}")
    bounds = [format_flops(chosen.max_flops)] if chosen.max_flops is not None else []
    if chosen.max_peak_memory_bytes is not None:
        bounds.append(format_bytes(chosen.max_peak_memory_bytes))
    if not chosen.admits(stats):  # only when the last rule has bounds (not from a setting)
        parts.append(f"over every grade's bounds, so the last one, {chosen.grade}")
    elif bounds:
        parts.append(f"within {chosen.grade}'s {' and '.join(bounds)}")
    else:
        parts.append(f"{chosen.grade} has no upper bound")
    return (
        f"Graded {chosen.grade}: {format_flops(stats.flops)} per inference and "
        f"{format_bytes(stats.peak_memory_bytes)} peak memory; {'; '.join(parts)}."
    )


# --- calibration from node reports ----------------------------------------------------------


def calibrate_speed_factor(
    current: float, host_p50_s: float, node_p50_s: float, *, weight: float = 0.2
) -> float:
    """One step of a class's speed factor towards what a node's report says
    (host p50 / node p50 of the same version), clamped to SPEED_FACTOR_RANGE.

    The step is an exponentially weighted moving average of the logarithm: speed factors are
    ratios, so a node 2x faster and one 2x slower cancel out, and one wild report moves the
    factor only `weight` of the way towards it, in orders of magnitude. Non-positive or
    non-finite latencies are ignored (the current factor is returned); a current factor that
    is not a positive number is replaced by the observed ratio.
    """
    if not 0 < weight <= 1:
        raise ValueError(f"weight must be in (0, 1], got {weight}")
    low, high = SPEED_FACTOR_RANGE
    if not all(math.isfinite(x) and x > 0 for x in (host_p50_s, node_p50_s)):
        return current
    observed = min(max(host_p50_s / node_p50_s, low), high)
    if not (math.isfinite(current) and current > 0):
        return observed
    step = math.exp((1 - weight) * math.log(current) + weight * math.log(observed))
    return min(max(step, low), high)


# --- how the numbers read -------------------------------------------------------------------


def format_flops(flops: float) -> str:
    """`4.72 MFLOPs`: three significant digits, SI prefixes."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {prefix}FLOPs"
    return f"{flops:.3g} FLOPs"


def format_bytes(size: float) -> str:
    """`9.08 MiB`: three significant digits, binary prefixes (memory sizes are powers of 2)."""
    for prefix, scale in (("Ti", 2**40), ("Gi", GiB), ("Mi", MiB), ("Ki", KiB)):
        if size >= scale:
            return f"{size / scale:.3g} {prefix}B"
    return f"{size:.0f} B"


def _rate(per_s: float) -> str:
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def format_seconds(seconds: float) -> str:
    """`423 µs`, `12.3 ms`, `1.2 s`."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"
