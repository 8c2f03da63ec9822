import hashlib

import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from inference.config import BatchSettings, SessionSettings
from inference.datatypes import BY_OIP
from inference.models import ModelLoadError, load_model, resolve_providers, zeros_for
from inference.specs import TensorSpec
from tests.inference.harness import fixed_model, identity_model, make_model, save


def test_a_model_loads_with_its_hash_its_spec_and_measured_run_time(tmp_path):
    path = identity_model(tmp_path / "echo.onnx", "INT16")
    model = load_model(path, "echo", SessionSettings(), BatchSettings(max_batch_size=8))
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(t.name, t.datatype.oip, t.shape) for t in model.spec.inputs] == [
        ("x", "INT16", (-1, 3))
    ]
    assert model.spec.batchable and model.warmed_up
    assert set(model.warmup_seconds) == {1, 2, 8}


def test_a_model_without_a_dynamic_first_dimension_does_not_batch(tmp_path):
    model = load_model(fixed_model(tmp_path / "f.onnx"), "f", SessionSettings(), BatchSettings())
    assert not model.spec.batchable


def test_a_dynamic_first_dimension_that_is_not_a_batch_is_found_out_at_warm_up(tmp_path):
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    path = save(
        make_model(
            [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
            "pool",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 3])],
            [axes],
        ),
        tmp_path / "pool.onnx",
    )
    model = load_model(path, "pool", SessionSettings(), BatchSettings())
    assert not model.spec.batchable


def test_a_file_that_is_not_onnx_is_a_load_error_naming_it(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="onnxruntime could not load junk.onnx"):
        load_model(path, "junk", SessionSettings(), BatchSettings())


def test_warm_up_inputs_use_one_for_every_dynamic_dimension_but_the_batch():
    spec = TensorSpec("x", BY_OIP["FP16"], (-1, -1, 4))
    assert zeros_for(spec, rows=3).shape == (3, 1, 4)
    assert zeros_for(TensorSpec("s", BY_OIP["BYTES"], (-1,)), rows=2).tolist() == ["", ""]


def test_an_unavailable_provider_falls_back_to_cpu_with_a_warning():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    providers, warnings = resolve_providers(["CUDAExecutionProvider"])
    assert providers == ("CPUExecutionProvider",)
    assert "CUDAExecutionProvider is not available" in warnings[0]
    assert "using CPU" in warnings[0]


def test_intra_op_threads_spin_for_a_bounded_time_after_a_run_unless_told_not_to():
    from inference.models import session_options

    spinning = session_options(SessionSettings(intra_op_threads=2, intra_op_spin_us=250))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.get_session_config_entry("session.intra_op.spin_duration_us") == "250"
    still = session_options(SessionSettings(intra_op_threads=2, intra_op_spin_us=0))
    assert still.get_session_config_entry("session.intra_op.allow_spinning") == "0"
