import numpy as np
import onnxruntime as ort
import pytest

from inference.datatypes import BY_OIP, UnsupportedType, from_numpy, from_oip, from_ort
from tests.inference.harness import ONNX_TYPES, identity_model

NUMERIC = [t for t in ONNX_TYPES if t != "BYTES"]


@pytest.mark.parametrize("oip", [*NUMERIC, "BYTES"])
def test_every_oip_type_maps_to_ort_and_back(oip):
    datatype = from_oip(oip)
    assert from_ort(datatype.ort) is datatype


@pytest.mark.parametrize("oip", NUMERIC)
def test_every_numeric_oip_type_maps_to_numpy_and_back(oip):
    datatype = from_oip(oip)
    assert from_numpy(datatype.numpy).oip == oip


def test_string_arrays_are_bytes():
    assert from_numpy(np.array(["a"]).dtype).oip == "BYTES"
    assert from_numpy(np.dtype(object)).oip == "BYTES"


@pytest.mark.parametrize("oip", [*NUMERIC, "BYTES"])
def test_the_ort_type_names_are_the_ones_onnxruntime_reports(oip, tmp_path):
    path = identity_model(tmp_path / "m.onnx", oip)
    session = ort.InferenceSession(str(path))
    assert session.get_inputs()[0].type == BY_OIP[oip].ort


def test_it_names_the_valid_types_when_given_an_unknown_one():
    with pytest.raises(UnsupportedType, match="expected one of BOOL, UINT8"):
        from_oip("FLOAT32")


def test_an_unsupported_onnx_type_is_a_clear_error():
    with pytest.raises(UnsupportedType, match=r"tensor\(complex64\) is not supported"):
        from_ort("tensor(complex64)")
