import numpy as np
import onnx
import onnxruntime as ort
import pytest

from console.demo.story import broken_classifier


def test_the_broken_version_passes_on_zeros_and_fails_on_real_features(tmp_path):
    path = tmp_path / "broken.onnx"
    onnx.save(broken_classifier(), path)
    onnx.checker.check_model(onnx.load(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    label, probabilities = session.run(None, {"features": np.zeros((2, 8), np.float32)})
    assert label.tolist() == [0, 0] and probabilities.shape == (2, 3)
    with pytest.raises(Exception, match="out of"):
        session.run(None, {"features": np.full((1, 8), 0.5, np.float32)})


def test_the_skewed_version_answers_differently_enough_to_drift():
    """v4 of the story must trip the drift gate on the demo's traffic (normal features)."""
    from console.demo.story import SKEW
    from fleet.drift import psi
    from inference.demo_models import tiny_classifier

    features = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)

    def top_classes(proto):
        session = ort.InferenceSession(proto.SerializeToString())
        return np.bincount(session.run(None, {"features": features})[0], minlength=3)

    before = top_classes(tiny_classifier(samples=4000))
    after = top_classes(tiny_classifier(samples=4000, class_weights=SKEW))
    assert psi(before, after) > 1  # far above the 0.25 threshold
