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
