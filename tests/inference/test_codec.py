"""Request validation and response encoding, as pure functions over a hand-made ModelSpec."""

import struct

import numpy as np
import orjson
import pytest

from inference.codec import (
    RequestError,
    array_to_binary,
    decode_infer_request,
    encode_infer_response,
    json_to_array,
)
from inference.datatypes import BY_OIP
from inference.specs import ModelSpec, TensorSpec

FP32, INT8, INT64, BYTES = BY_OIP["FP32"], BY_OIP["INT8"], BY_OIP["INT64"], BY_OIP["BYTES"]

CLASSIFIER = ModelSpec(
    name="classifier",
    version="1",
    inputs=(TensorSpec("features", FP32, (-1, 4)),),
    outputs=(TensorSpec("label", INT64, (-1,)), TensorSpec("scores", FP32, (-1, 2))),
    batchable=True,
)
PAIR = ModelSpec(
    name="pair",
    version="1",
    inputs=(TensorSpec("a", FP32, (-1, 2)), TensorSpec("b", INT8, (-1, 2))),
    outputs=(TensorSpec("y", FP32, (-1, 2)),),
    batchable=True,
)


def body(*inputs, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def features(data, shape=(1, 4), datatype="FP32", name="features") -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


def rejected(raw: bytes, spec: ModelSpec = CLASSIFIER, json_length=None) -> str:
    with pytest.raises(RequestError) as caught:
        decode_infer_request(raw, json_length, spec)
    assert caught.value.status == 400
    return caught.value.message


# --- what is accepted ----------------------------------------------------------------------


def test_it_accepts_flat_data_and_reshapes_it():
    request = decode_infer_request(
        body(features([1, 2, 3, 4, 5, 6, 7, 8], shape=(2, 4))), None, CLASSIFIER
    )
    (array,) = request.arrays
    assert array.dtype == np.float32 and array.shape == (2, 4)
    assert request.rows == 2
    assert request.key == ((4,),)


def test_it_accepts_nested_data_and_flattens_it():
    request = decode_infer_request(
        body(features([[1, 2, 3, 4], [5, 6, 7, 8]], shape=(2, 4))), None, CLASSIFIER
    )
    np.testing.assert_array_equal(
        request.arrays[0], np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    )


def test_it_echoes_the_id_and_reads_the_selected_outputs():
    raw = body(features([0] * 4), id="req-7", outputs=[{"name": "scores"}])
    request = decode_infer_request(raw, None, CLASSIFIER)
    assert request.id == "req-7"
    assert request.outputs == ((1, False),)


def test_binary_outputs_follow_the_request_parameter_unless_an_output_says_otherwise():
    raw = body(
        features([0] * 4),
        parameters={"binary_data_output": True},
        outputs=[{"name": "label"}, {"name": "scores", "parameters": {"binary_data": False}}],
    )
    assert decode_infer_request(raw, None, CLASSIFIER).outputs == ((0, True), (1, False))


def test_integers_are_accepted_for_float_inputs():
    request = decode_infer_request(body(features([1, 2, 3, 4])), None, CLASSIFIER)
    assert request.arrays[0].dtype == np.float32


def test_it_reads_binary_tensors_after_the_json_header():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    raw = header + np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    request = decode_infer_request(raw, len(header), CLASSIFIER)
    np.testing.assert_array_equal(request.arrays[0], [[1, 2, 3, 4]])


def test_it_reads_binary_strings_as_length_prefixed_utf8():
    spec = ModelSpec(
        "text", "1", (TensorSpec("x", BYTES, (-1,)),), (TensorSpec("y", BYTES, (-1,)),), True
    )
    blob = b"".join(struct.pack("<I", len(s)) + s for s in (b"hi", "h\u00e9".encode()))
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    request = decode_infer_request(header + blob, len(header), spec)
    assert request.arrays[0].tolist() == ["hi", "h\u00e9"]


# --- what is rejected, and how it is explained ------------------------------------------------


def test_it_explains_malformed_json():
    assert rejected(b'{"inputs": [').startswith("malformed JSON in request body")


def test_a_body_that_is_not_an_object_is_rejected():
    assert "must be a JSON object" in rejected(b"[1, 2]")


def test_it_names_the_inputs_a_model_takes_when_given_an_unknown_one():
    message = rejected(body(features([0] * 4, name="pixels")))
    assert message == "unexpected input 'pixels'; model 'classifier' takes: 'features'"


def test_it_names_a_missing_input_with_its_type_and_shape():
    message = rejected(
        body({"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}), PAIR
    )
    assert message == "missing input 'b' (INT8, shape [-1, 2]) for model 'pair'"


def test_no_inputs_at_all_is_rejected():
    assert rejected(b"{}") == "the request has no 'inputs'"


def test_an_input_given_twice_is_rejected():
    assert rejected(body(features([0] * 4), features([0] * 4))) == "input 'features' is given twice"


def test_it_rejects_a_wrong_datatype_naming_both():
    message = rejected(body(features([0] * 4, datatype="FP64")))
    assert message == "input 'features' has datatype FP64 but model 'classifier' expects FP32"


def test_it_says_when_a_datatype_is_not_an_oip_one():
    assert "FLOAT (not an OIP datatype)" in rejected(body(features([0] * 4, datatype="FLOAT")))


def test_it_rejects_a_shape_that_does_not_match_the_model():
    message = rejected(body(features([0] * 3, shape=(1, 3))))
    assert message == (
        "input 'features' has shape [1, 3] but model 'classifier' expects [-1, 4] (-1 is any size)"
    )


def test_it_rejects_a_shape_of_the_wrong_rank():
    assert "has shape [4]" in rejected(body(features([0] * 4, shape=(4,))))


@pytest.mark.parametrize("shape", [[1, -4], [1, 4.0], [True, 4], "1,4", None])
def test_it_rejects_shapes_that_are_not_lists_of_non_negative_integers(shape):
    item = {"name": "features", "shape": shape, "datatype": "FP32", "data": [0] * 4}
    assert "needs 'shape': a list of non-negative integers" in rejected(body(item))


def test_it_rejects_data_whose_length_does_not_match_the_shape():
    message = rejected(body(features([0] * 7, shape=(2, 4))))
    assert message == "input 'features' has 7 values but shape [2, 4] needs 8"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (["a", "b", "c", "d"], "strings"),
        ([1, None, 3, 4], "nulls or mixed values"),
        ([True, False, True, False], "booleans"),
        ([{"x": 1}, 2, 3, 4], "nulls or mixed values"),
    ],
)
def test_it_rejects_non_numeric_data_for_numeric_inputs(data, what):
    message = rejected(body(features(data)))
    assert message == f"input 'features' is FP32 but its data contains {what}"


def test_it_rejects_ragged_nested_data():
    assert "is not a regular array" in rejected(body(features([[1, 2, 3], [4]], shape=(1, 4))))


def test_it_rejects_fractions_for_integer_inputs():
    item = {"name": "b", "shape": [1, 2], "datatype": "INT8", "data": [1.5, 2]}
    a = {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    assert rejected(body(a, item), PAIR) == (
        "input 'b' is INT8 but its data contains floating-point numbers"
    )


def test_it_rejects_integers_out_of_range_instead_of_wrapping_them():
    item = {"name": "b", "shape": [1, 2], "datatype": "INT8", "data": [1, 300]}
    a = {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}
    assert (
        rejected(body(a, item), PAIR)
        == "input 'b' has values outside the range of INT8 (-128..127)"
    )


def test_inputs_must_agree_on_the_batch_size():
    a = {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    b = {"name": "b", "shape": [1, 2], "datatype": "INT8", "data": [1, 2]}
    assert (
        rejected(body(a, b), PAIR)
        == "inputs disagree on the batch size: 'a' has 2 rows but 'b' has 1"
    )


def test_it_names_the_outputs_when_asked_for_an_unknown_one():
    message = rejected(body(features([0] * 4), outputs=[{"name": "probabilities"}]))
    assert message == "unknown output 'probabilities'; model 'classifier' has: 'label', 'scores'"


def test_an_id_that_is_not_a_string_is_rejected():
    assert rejected(body(features([0] * 4), id=7)) == "'id' must be a string"


def test_binary_data_of_the_wrong_size_is_rejected():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12},
                }
            ]
        }
    )
    message = rejected(header + b"\0" * 12, json_length=len(header))
    assert (
        message == "input 'features' has 12 bytes of binary data but shape [1, 4] of FP32 needs 16"
    )


def test_binary_data_that_no_input_claims_is_rejected():
    raw = body(features([0] * 4))
    assert "4 bytes of binary data after the JSON header" in rejected(
        raw + b"\0" * 4, json_length=len(raw)
    )


def test_a_json_header_length_beyond_the_body_is_rejected():
    raw = body(features([0] * 4))
    assert "Inference-Header-Content-Length is 999" in rejected(raw, json_length=999)


def test_json_to_array_builds_each_numeric_type():
    for oip in ("UINT8", "INT16", "INT64", "FP16", "FP64", "UINT64"):
        spec = TensorSpec("x", BY_OIP[oip], (2,))
        assert json_to_array([1, 2], spec, (2,)).dtype == BY_OIP[oip].numpy
    assert (
        json_to_array([True, False], TensorSpec("x", BY_OIP["BOOL"], (2,)), (2,)).dtype == np.bool_
    )


# --- responses ---------------------------------------------------------------------------------


def test_the_response_is_oip_shaped_with_flat_data_and_the_id():
    request = decode_infer_request(body(features([0] * 8, shape=(2, 4)), id="r1"), None, CLASSIFIER)
    outputs = [
        np.array([1, 0], dtype=np.int64),
        np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
    ]
    payload, header_length = encode_infer_response(CLASSIFIER, request, outputs)
    assert header_length is None
    assert orjson.loads(payload) == {
        "model_name": "classifier",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
            {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]},
        ],
    }


def test_the_response_has_only_the_selected_outputs_and_no_id_when_none_was_sent():
    request = decode_infer_request(
        body(features([0] * 4), outputs=[{"name": "scores"}]), None, CLASSIFIER
    )
    outputs = [np.array([1]), np.array([[0.5, 0.5]], dtype=np.float32)]
    document = orjson.loads(encode_infer_response(CLASSIFIER, request, outputs)[0])
    assert "id" not in document
    assert [o["name"] for o in document["outputs"]] == ["scores"]


def test_binary_outputs_follow_the_json_header():
    raw = body(features([0] * 4), parameters={"binary_data_output": True})
    request = decode_infer_request(raw, None, CLASSIFIER)
    outputs = [np.array([1], dtype=np.int64), np.array([[0.5, 0.25]], dtype=np.float32)]
    payload, header_length = encode_infer_response(CLASSIFIER, request, outputs)
    header = orjson.loads(payload[:header_length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 8]
    assert payload[header_length:] == outputs[0].tobytes() + outputs[1].tobytes()


def test_strings_are_length_prefixed_in_binary():
    assert array_to_binary(np.array(["ab", ""], dtype=object), BYTES) == b"\x02\0\0\0ab\0\0\0\0"
