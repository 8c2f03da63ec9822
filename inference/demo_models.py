"""The demo models, generated locally and deterministically (fixed seeds, nothing downloaded).

- `tiny-classifier.onnx`: a scikit-learn logistic regression trained on synthetic data
  (8 float features `features` -> `label` int64 and `probabilities` float32), grade tiny.
- `random-mlp-medium.onnx`: an MLP with *random* weights (it computes nothing meaningful; it
  exists to cost a realistic ~0.3-1 ms per batch-1 run), `input` [N, 256] -> `logits` [N, 16].
- `random-convnet-large.onnx`: a conv net with random weights, tens of ms per run,
  `image` [N, 3, 128, 128] -> `logits` [N, 100].

All have a dynamic batch dimension. scikit-learn and skl2onnx are imported inside the function
that needs them: a node install has neither (they are dev dependencies).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset and IR version every supported onnxruntime (>= 1.19) loads.
OPSET = 17
IR_VERSION = 8
PRODUCER = "outpost-demo-models"


def tiny_classifier(
    samples: int = 2000, class_weights: tuple[float, ...] | None = None
) -> onnx.ModelProto:
    """A 3-class logistic regression; `class_weights` skews the training data's classes (the
    demo's drifting version: same signature, healthy, but it answers differently)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    features, labels = make_classification(
        n_samples=samples,
        n_features=8,
        n_informative=6,
        n_redundant=1,
        n_classes=3,
        weights=list(class_weights) if class_weights else None,
        random_state=7,
    )
    classifier = LogisticRegression(max_iter=1000).fit(features.astype(np.float32), labels)
    model = convert_sklearn(
        classifier,
        name="tiny-classifier",
        initial_types=[("features", FloatTensorType([None, 8]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER
    model.producer_version = "1"
    model.doc_string = (
        f"LogisticRegression on make_classification(n_samples={samples}, random_state=7), 3 classes"
        + (f", class weights {list(class_weights)}" if class_weights else "")
    )
    return model


def _dense(
    rng: np.random.Generator, name: str, fan_in: int, fan_out: int
) -> list[onnx.TensorProto]:
    # He-style scaling keeps activations finite through the random layers.
    weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    bias = np.zeros(fan_out, dtype=np.float32)
    return [
        numpy_helper.from_array(weight, f"{name}_w"),
        numpy_helper.from_array(bias, f"{name}_b"),
    ]


def random_mlp_medium(width: int = 1024, inputs: int = 256, outputs: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(20240611)
    sizes = [inputs, width, width, width, outputs]
    nodes = []
    initializers: list[onnx.TensorProto] = []
    current = "input"
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        name = f"dense{layer}"
        initializers += _dense(rng, name, fan_in, fan_out)
        last = layer == len(sizes) - 2
        out = "logits" if last else f"{name}_out"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"{name}_w", f"{name}_b"], [out if last else f"{name}_pre"]
            )
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"{name}_pre"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "random-mlp-medium",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])],
        initializers,
    )
    return _finish(graph, "Random-weight MLP (no meaning); sized to cost ~0.5 ms per batch-1 run")


def random_convnet_large(size: int = 128, classes: int = 100) -> onnx.ModelProto:
    rng = np.random.default_rng(20240612)
    channels = [3, 32, 64, 128, 256]
    nodes = []
    initializers: list[onnx.TensorProto] = []
    current = "image"
    for layer, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
        for repeat in range(2):
            name = f"conv{layer}_{repeat}"
            fan_in = (cin if repeat == 0 else cout) * 9
            weight = rng.standard_normal((cout, fan_in // 9, 3, 3)) * np.sqrt(2.0 / fan_in)
            initializers += [
                numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"),
                numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"),
            ]
            stride = 2 if repeat == 0 and layer > 0 else 1
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, f"{name}_w", f"{name}_b"],
                    [f"{name}_pre"],
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    strides=[stride, stride],
                )
            )
            nodes.append(helper.make_node("Relu", [f"{name}_pre"], [f"{name}_out"]))
            current = f"{name}_out"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    initializers += _dense(rng, "head", channels[-1], classes)
    nodes.append(helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "random-convnet-large",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    return _finish(graph, "Random-weight conv net (no meaning); tens of ms per run")


def _finish(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version="1",
        ir_version=IR_VERSION,
    )
    model.doc_string = doc
    onnx.checker.check_model(model)
    return model


DEMO_MODELS = {
    "tiny-classifier": tiny_classifier,
    "random-mlp-medium": random_mlp_medium,
    "random-convnet-large": random_convnet_large,
}


def write_demo_models(directory: Path) -> list[tuple[Path, str]]:
    """Write the three demo models; returns (path, sha256) of each."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DEMO_MODELS.items():
        data = build().SerializeToString()
        path = directory / f"{name}.onnx"
        temporary = path.with_suffix(".onnx.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        written.append((path, hashlib.sha256(data).hexdigest()))
    return written
