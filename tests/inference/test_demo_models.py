import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from inference.demo_models import write_demo_models
from tests.inference.harness import ROOT


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    return directory, dict((p.stem, digest) for p, digest in write_demo_models(directory))


def test_the_demo_models_are_the_same_bytes_every_time(demo, tmp_path):
    _, first = demo
    result = subprocess.run(
        [sys.executable, "-m", "inference", "demo-models", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name, digest in first.items():
        assert f"{name}.onnx  sha256 {digest}" in result.stdout


def io(session: ort.InferenceSession) -> tuple[list, list]:
    return (
        [(t.name, t.type, t.shape) for t in session.get_inputs()],
        [(t.name, t.type, t.shape) for t in session.get_outputs()],
    )


def test_the_tiny_classifier_gives_labels_and_probabilities_for_8_features(demo):
    directory, _ = demo
    session = ort.InferenceSession(str(directory / "tiny-classifier.onnx"))
    inputs, outputs = io(session)
    assert inputs == [("features", "tensor(float)", [None, 8])]
    assert [(n, t) for n, t, _ in outputs] == [
        ("label", "tensor(int64)"),
        ("probabilities", "tensor(float)"),
    ]
    label, probabilities = session.run(None, {"features": np.ones((5, 8), np.float32)})
    assert label.shape == (5,) and probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "input_shape", "output_shape"),
    [
        ("random-mlp-medium", ["batch", 256], ["batch", 16]),
        ("random-convnet-large", ["batch", 3, 128, 128], ["batch", 100]),
    ],
)
def test_the_random_models_have_a_dynamic_batch_and_finite_outputs(
    demo, name, input_shape, output_shape
):
    directory, _ = demo
    session = ort.InferenceSession(str(directory / f"{name}.onnx"))
    inputs, outputs = io(session)
    assert inputs[0][2] == input_shape and outputs[0][2] == output_shape
    x = np.random.default_rng(0).random([2, *input_shape[1:]], dtype=np.float32)
    (y,) = session.run(None, {inputs[0][0]: x})
    assert y.shape == (2, output_shape[1]) and np.isfinite(y).all()
