"""A model's signal schema, enforced on the request's `parameters` by inference/codec.py, and
carried there from the console's desired state through load_model onto the spec."""

import orjson
import pytest

from inference.codec import (
    RESERVED_PARAMETERS,
    RequestError,
    decode_infer_body,
    decode_infer_request,
    parse_infer_body,
)
from inference.config import BatchSettings, SessionSettings
from inference.datatypes import BY_OIP
from inference.models import ModelLoadError, load_model
from inference.protocol import SIGNAL_TYPES, DesiredVersion
from inference.specs import ModelSpec, TensorSpec, signal_schema
from tests.inference.harness import scaler_model

FP32 = BY_OIP["FP32"]


def churn(signals=(("tier", "string"), ("visits", "int"))) -> ModelSpec:
    return ModelSpec(
        name="acme.churn",
        version="1",
        inputs=(TensorSpec("x", FP32, (-1, 2)),),
        outputs=(TensorSpec("y", FP32, (-1, 2)),),
        batchable=True,
        signals=signals,
    )


CHURN = churn()
EVERY_TYPE = churn((("tier", "string"), ("visits", "int"), ("score", "float"), ("premium", "bool")))
PLAIN = churn(())


def body(parameters=None, **extra) -> bytes:
    document = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    if parameters is not None:
        document["parameters"] = parameters
    return orjson.dumps({**document, **extra})


def signals_of(parameters, spec: ModelSpec = EVERY_TYPE) -> dict:
    return decode_infer_request(body(parameters), None, spec).signals


def rejected(parameters, spec: ModelSpec = EVERY_TYPE) -> str:
    with pytest.raises(RequestError) as caught:
        decode_infer_request(body(parameters), None, spec)
    assert caught.value.status == 400
    return caught.value.message


# --- what is accepted ----------------------------------------------------------------------


def test_it_returns_the_signals_given_with_their_declared_types():
    given = {"tier": "gold", "visits": 12, "score": 0.75, "premium": True}
    assert signals_of(given) == given


def test_every_signal_is_optional():
    assert signals_of({}) == {}
    assert signals_of(None) == {}
    assert signals_of({"visits": 3}) == {"visits": 3}


def test_null_means_not_given():
    assert signals_of({"tier": None, "visits": 4, "premium": None}) == {"visits": 4}


def test_a_float_signal_takes_an_integer_and_hands_it_on_as_a_float():
    signals = signals_of({"score": 3})
    assert signals == {"score": 3.0}
    assert type(signals["score"]) is float


def test_an_int_signal_takes_the_whole_64_bit_range():
    assert signals_of({"visits": -(2**63)}) == {"visits": -(2**63)}
    assert signals_of({"visits": 2**63 - 1}) == {"visits": 2**63 - 1}


@pytest.mark.parametrize("name", sorted(RESERVED_PARAMETERS))
def test_reserved_parameters_always_pass(name):
    assert signals_of({name: 1, "tier": "gold"}) == {"tier": "gold"}


@pytest.mark.parametrize(
    "name", ["shared_memory_region", "shared_memory_byte_size", "outpost_trace", "triton_x"]
)
def test_reserved_prefixes_always_pass(name):
    assert signals_of({name: "anything"}) == {}


def test_what_tritonclient_sends_by_itself_passes():
    parameters = {
        "sequence_id": 7,
        "sequence_start": True,
        "sequence_end": False,
        "priority": 1,
        "timeout": 1000,
        "binary_data_output": True,
        "visits": 2,
    }
    request = decode_infer_request(body(parameters), None, CHURN)
    assert request.signals == {"visits": 2}
    assert request.binary_outputs is True


def test_a_declared_signal_with_a_reserved_name_is_checked_as_a_signal():
    spec = churn((("priority", "string"),))
    assert signals_of({"priority": "high"}, spec) == {"priority": "high"}
    assert "signal 'priority' must be a string" in rejected({"priority": 1}, spec)


# --- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("visits", "many", "signal 'visits' must be an int (the model 'acme.churn' declares it so), got \"many\""),
        ("visits", True, "signal 'visits' must be an int (the model 'acme.churn' declares it so), got true"),
        ("visits", 1.5, "signal 'visits' must be an int (the model 'acme.churn' declares it so), got 1.5"),
        ("visits", 2.0, "signal 'visits' must be an int (the model 'acme.churn' declares it so), got 2.0"),
        ("tier", 3, "signal 'tier' must be a string (the model 'acme.churn' declares it so), got 3"),
        ("tier", ["gold"], "signal 'tier' must be a string (the model 'acme.churn' declares it so), got [\"gold\"]"),
        ("score", False, "signal 'score' must be a float (the model 'acme.churn' declares it so), got false"),
        ("score", "0.5", "signal 'score' must be a float (the model 'acme.churn' declares it so), got \"0.5\""),
        ("premium", 1, "signal 'premium' must be a bool (the model 'acme.churn' declares it so), got 1"),
        ("premium", "true", "signal 'premium' must be a bool (the model 'acme.churn' declares it so), got \"true\""),
        ("premium", {"a": 1}, "signal 'premium' must be a bool (the model 'acme.churn' declares it so), got {\"a\":1}"),
    ],
)  # fmt: skip
def test_a_signal_of_the_wrong_type_is_refused_with_what_was_sent(name, value, message):
    assert rejected({name: value}) == message


def test_an_int_beyond_64_bits_is_refused():
    message = rejected({"visits": 2**64 - 1})
    assert message == (
        "signal 'visits' must be an int (the model 'acme.churn' declares it so), got "
        "18446744073709551615, which does not fit in 64 bits"
    )


def test_a_long_value_is_cut_short_in_the_message():
    message = rejected({"visits": "x" * 500})
    assert message.endswith('got "' + "x" * 56 + "...")


def test_an_unknown_parameter_is_refused_with_the_signals_the_model_accepts():
    assert rejected({"tierr": "gold"}, CHURN) == (
        "unknown signal 'tierr'; model 'acme.churn' accepts: 'tier' (string), 'visits' (int)"
    )


def test_the_first_bad_signal_is_refused_before_the_inputs_are_read():
    raw = orjson.dumps({"inputs": "not a list", "parameters": {"visits": "many"}})
    with pytest.raises(RequestError, match="signal 'visits' must be an int"):
        decode_infer_request(raw, None, CHURN)


# --- models without signals ------------------------------------------------------------------


def test_a_model_without_signals_accepts_any_parameters_and_returns_none():
    parameters = {"tierr": [1, 2], "visits": "many", "anything": {"at": "all"}}
    request = decode_infer_request(body(parameters), None, PLAIN)
    assert request.signals == {}
    assert PLAIN.signal_types == {}


def test_a_model_without_signals_never_looks_at_them(monkeypatch):
    import inference.codec as codec

    def fail(*args):
        raise AssertionError("the signal check ran for a model without signals")

    monkeypatch.setattr(codec, "_check_signals", fail)
    assert decode_infer_request(body({"x": 1}), None, PLAIN).signals == {}
    with pytest.raises(AssertionError):
        decode_infer_request(body({"x": 1}), None, CHURN)


# --- the schema on the spec -------------------------------------------------------------------


def test_the_schema_is_kept_sorted_so_equal_schemas_compare_equal():
    one = churn((("visits", "int"), ("tier", "string")))
    other = churn(signal_schema({"tier": "string", "visits": "int"}))
    assert one.signals == (("tier", "string"), ("visits", "int"))
    assert one.signal_types == {"tier": "string", "visits": "int"}
    assert one == other
    assert one != churn((("tier", "string"),))


def test_a_body_parsed_once_is_checked_by_the_version_it_is_decoded_for():
    # inference/server.py picks a version from the parsed id, then decodes for that version.
    parsed = parse_infer_body(body({"tier": "gold"}, id="req-1"), None)
    assert parsed.id == "req-1"
    assert decode_infer_body(parsed, churn((("tier", "string"),))).signals == {"tier": "gold"}
    with pytest.raises(RequestError, match="signal 'tier' must be an int"):
        decode_infer_body(parsed, churn((("tier", "int"),)))
    with pytest.raises(RequestError, match="'id' must be a string"):
        parse_infer_body(body(id=7), None)


def test_a_type_the_agent_does_not_know_is_refused():
    with pytest.raises(ValueError, match="signal 'age' has type 'double'; this agent knows"):
        signal_schema({"age": "double"})
    with pytest.raises(ValueError, match="type 'double'"):
        churn((("age", "double"),))


def test_every_declarable_type_is_enforced():
    # A new type in protocol.SIGNAL_TYPES needs its rule in inference/codec.py.
    assert set(SIGNAL_TYPES) == {"string", "int", "float", "bool"}


# --- from the console's desired state to the loaded spec ---------------------------------------


def test_a_desired_version_carries_the_schema_and_defaults_to_none():
    item = {
        "model": "acme.churn",
        "version": "1",
        "sha256": "0" * 64,
        "size_bytes": 10,
        "url": "/x",
        "traffic_share": 1.0,
    }
    assert DesiredVersion.model_validate(item).signals == {}
    assert DesiredVersion.model_validate({**item, "signals": {"tier": "string"}}).signals == {
        "tier": "string"
    }


def test_a_loaded_version_keeps_its_schema_on_its_spec(tmp_path):
    path = scaler_model(tmp_path / "churn.onnx", 1.0)
    model = load_model(
        path, "acme.churn", SessionSettings(), BatchSettings(), signals={"visits": "int"}
    )
    assert model.spec.signals == (("visits", "int"),)
    assert model.spec.batchable  # warm-up rebuilt the spec; the schema stayed
    assert load_model(path, "plain", SessionSettings(), BatchSettings()).spec.signals == ()


def test_a_schema_the_agent_cannot_enforce_fails_the_load(tmp_path):
    path = scaler_model(tmp_path / "churn.onnx", 1.0)
    with pytest.raises(ModelLoadError, match="signal 'age' has type 'double'"):
        load_model(
            path, "acme.churn", SessionSettings(), BatchSettings(), signals={"age": "double"}
        )
