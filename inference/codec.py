"""OIP v2 inference bodies: JSON (and the binary tensor extension) in, numpy out, and back.

Pure functions over bytes and a `ModelSpec`; every way a request can be wrong becomes a
`RequestError` whose message says exactly what is wrong, so `inference/server.py` only turns
it into `{"error": ...}` with the status. This is the hot path: one `orjson.loads`, one
`np.asarray` per input, a handful of dict lookups, one `orjson.dumps`.

Signals. A model version may declare a signal schema (`ModelSpec.signals`, from the model's
registration): named fields a tenant sends in the request's top-level `parameters` for
personalisation, e.g. `{"tier": "string", "visits": "int"}`. When the schema is not empty:

- a parameter the schema names must have the declared JSON type: `string` a string; `int` an
  integer (not `true`/`false`) within 64 bits; `float` a number, integer or not (not a bool),
  finite, handed on as a float; `bool` `true` or `false`. `null` means "not given".
- every signal is optional: a request may leave out any or all of them.
- any other parameter is refused as an unknown signal, unless OIP, Triton or Outpost reserves
  its name (`RESERVED_PARAMETERS`, `RESERVED_PREFIXES`): tritonclient sends some of those on
  its own. A signal the schema declares is checked as a signal even if its name is reserved.
- the signals given come back in `InferRequest.signals` (name -> value, nulls left out) for
  what uses them; nothing here logs their values.

A model without signals pays one falsy check, and whatever its requests put in `parameters`
is accepted, as before.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inference.datatypes import BY_OIP, DataType, describe_kind
from inference.enforcement import TOKEN_PATTERN
from inference.specs import ModelSpec, TensorSpec


class RequestError(Exception):
    """A request the client got wrong; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class InferRequest:
    id: str | None
    # One array per model input, in the model's input order.
    arrays: tuple[np.ndarray, ...]
    # Rows along the batch dimension (1 for models that do not batch).
    rows: int
    # Requests with equal keys can be concatenated along the batch dimension.
    key: tuple[tuple[int, ...], ...] | None
    # (output index, as binary) pairs the client asked for; None means all outputs.
    outputs: tuple[tuple[int, bool], ...] | None
    binary_outputs: bool
    # The model's signals the request gave, validated (see the module docstring); empty when
    # the model declares none.
    signals: dict[str, object]


_NOT_GIVEN = object()

# Request parameters that are never signals, whatever a model declares: the OIP/Triton
# request parameters (tritonclient.http sends binary_data_output, sequence_*, priority and
# timeout by itself; TRITON_RESERVED_REQUEST_PARAMS in tritonclient.utils) and those of
# Triton's extensions (binary data, classification, shared memory).
RESERVED_PARAMETERS = frozenset(
    {
        "binary_data_output",
        "binary_data",
        "binary_data_size",
        "classification",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
    }
)
# Prefixes of reserved names: Triton's shared-memory extension, Triton's own (`triton_`, which
# tritonclient refuses in user parameters) and ours (`outpost_`, for future agent options).
RESERVED_PREFIXES = ("shared_memory_", "triton_", "outpost_")

# The range of an `int` signal: what a downstream int64 tensor or column can hold.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SIGNAL_ARTICLE = {"string": "a string", "int": "an int", "float": "a float", "bool": "a bool"}


@dataclass(slots=True)
class InferBody:
    """An infer request body parsed, not yet checked against a model. A model's versions may
    take different requests (inputs, outputs, signals), so `inference/server.py` picks the
    version from `id` (the traffic split) first, then decodes the body for that version."""

    doc: dict
    # The binary tensor data after the JSON header (empty without the extension).
    binary: memoryview | bytes
    id: str | None


def decode_infer_request(body: bytes, json_length: int | None, spec: ModelSpec) -> InferRequest:
    """Parse and validate an infer request body against the model it is addressed to."""
    return decode_infer_body(parse_infer_body(body, json_length), spec)


def parse_infer_body(body: bytes, json_length: int | None) -> InferBody:
    """The JSON of an infer request and its binary part; RequestError when it is no request.

    `json_length` is the `Inference-Header-Content-Length` header: when present the JSON is
    only the first that many bytes and binary tensors follow it.
    """
    binary: memoryview | bytes = b""
    header = body
    if json_length is not None:
        if json_length > len(body):
            raise RequestError(
                f"Inference-Header-Content-Length is {json_length} but the body has only "
                f"{len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:json_length], view[json_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("the request body must be a JSON object with an 'inputs' list")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    return InferBody(doc, binary, request_id)


def decode_infer_body(
    parsed: InferBody, spec: ModelSpec, *, tokenised: frozenset[str] | None = None
) -> InferRequest:
    """Validate a parsed request against the model version it is addressed to. `tokenised`
    names signals another node replaced by HMAC tokens before offloading the request here
    (inference/gate.py): a token stands in for a value of any declared type."""
    doc, binary = parsed.doc, parsed.binary
    params = doc.get("parameters")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise RequestError("'parameters' must be a JSON object")
    # Before the inputs: a request with a bad signal is refused without decoding its tensors.
    signals = _check_signals(params, spec, tokenised) if spec.signal_types else {}

    inputs = doc.get("inputs", _NOT_GIVEN)
    if inputs is _NOT_GIVEN:
        raise RequestError("the request has no 'inputs'")
    if not isinstance(inputs, list):
        raise RequestError("'inputs' must be a list")

    arrays: list[np.ndarray | None] = [None] * len(spec.inputs)
    offset = 0
    given = 0
    for position, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise RequestError(f"inputs[{position}] must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str):
            raise RequestError(f"inputs[{position}] has no 'name' string")
        index = spec.input_index.get(name)
        if index is None:
            raise RequestError(
                f"unexpected input '{name}'; model '{spec.name}' takes: {spec.input_names()}"
            )
        if arrays[index] is not None:
            raise RequestError(f"input '{name}' is given twice")
        tensor = spec.inputs[index]
        shape = _check_header(item, tensor, spec.name)
        arrays[index], offset = _decode_data(item, tensor, shape, binary, offset)
        given += 1

    if offset != len(binary):
        raise RequestError(
            f"the body has {len(binary) - offset} bytes of binary data after the JSON header "
            "that no input claims"
        )
    if given != len(arrays):
        missing = [spec.inputs[i].describe() for i, a in enumerate(arrays) if a is None]
        raise RequestError(f"missing input {', '.join(missing)} for model '{spec.name}'")
    # Every slot is filled: each input was given once and none is missing.
    complete: tuple[np.ndarray, ...] = tuple(arrays)  # type: ignore[arg-type]

    if spec.batchable:
        rows = complete[0].shape[0]
        if len(complete) == 1:
            key: tuple[tuple[int, ...], ...] | None = (complete[0].shape[1:],)
        else:
            for tensor, array in zip(spec.inputs, complete, strict=True):
                if array.shape[0] != rows:
                    raise RequestError(
                        f"inputs disagree on the batch size: '{spec.inputs[0].name}' has "
                        f"{rows} rows but '{tensor.name}' has {array.shape[0]}"
                    )
            key = tuple(a.shape[1:] for a in complete)
    else:
        rows, key = 1, None

    binary_default = params.get("binary_data_output") is True
    return InferRequest(
        id=parsed.id,
        arrays=complete,
        rows=rows,
        key=key,
        outputs=_requested_outputs(doc.get("outputs"), spec, binary_default),
        binary_outputs=binary_default,
        signals=signals,
    )


def _check_signals(
    params: dict, spec: ModelSpec, tokenised: frozenset[str] | None = None
) -> dict[str, object]:
    """The request's signals, checked against the model's schema (rules: module docstring)."""
    declared = spec.signal_types
    signals: dict[str, object] = {}
    for name, value in params.items():
        kind = declared.get(name)
        if kind is None:
            if name in RESERVED_PARAMETERS or name.startswith(RESERVED_PREFIXES):
                continue
            raise RequestError(
                f"unknown signal '{name}'; model '{spec.name}' accepts: {spec.signal_names()}"
            )
        if value is None:
            continue
        if tokenised and name in tokenised and type(value) is str and TOKEN_PATTERN.match(value):
            signals[name] = value
        else:
            signals[name] = _signal_value(name, kind, value, spec.name)
    return signals


def _signal_value(name: str, kind: str, value: Any, model: str) -> object:
    # Exact type checks: JSON true/false arrive as bool, which isinstance(_, int) would pass.
    cls = type(value)
    if kind == "string":
        if cls is str:
            return value
    elif kind == "int":
        if cls is int:
            if _INT64_MIN <= value <= _INT64_MAX:
                return value
            raise RequestError(
                f"signal '{name}' must be an int (the model '{model}' declares it so), got "
                f"{value}, which does not fit in 64 bits"
            )
    elif kind == "float":
        if cls is float and math.isfinite(value):
            return value
        if cls is int:
            return float(value)
    elif kind == "bool":
        if cls is bool:
            return value
    raise RequestError(
        f"signal '{name}' must be {_SIGNAL_ARTICLE.get(kind, kind)} (the model '{model}' "
        f"declares it so), got {_show(value)}"
    )


def _show(value: object) -> str:
    """A value as the client wrote it (JSON), cut short: error messages echo what was sent."""
    if type(value) is float and not math.isfinite(value):
        text = str(value)  # orjson would write null
    else:
        text = orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def _check_header(item: dict, tensor: TensorSpec, model: str) -> tuple[int, ...]:
    datatype = item.get("datatype")
    if datatype != tensor.datatype.oip:
        if not isinstance(datatype, str):
            raise RequestError(f"input '{tensor.name}' has no 'datatype' string")
        known = "" if datatype in BY_OIP else " (not an OIP datatype)"
        raise RequestError(
            f"input '{tensor.name}' has datatype {datatype}{known} but model '{model}' "
            f"expects {tensor.datatype.oip}"
        )
    shape = item.get("shape")
    # Plain loops: this runs for every input of every request.
    if type(shape) is not list:
        raise RequestError(f"input '{tensor.name}' needs 'shape': a list of non-negative integers")
    for dim in shape:
        if type(dim) is not int or dim < 0:  # bool and float are not dimensions
            raise RequestError(
                f"input '{tensor.name}' needs 'shape': a list of non-negative integers"
            )
    if len(shape) != len(tensor.shape):
        raise _shape_mismatch(shape, tensor, model)
    for index, size in tensor.fixed_dims:
        if shape[index] != size:
            raise _shape_mismatch(shape, tensor, model)
    return tuple(shape)


def _shape_mismatch(shape: list[int], tensor: TensorSpec, model: str) -> RequestError:
    return RequestError(
        f"input '{tensor.name}' has shape {shape} but model '{model}' expects "
        f"{list(tensor.shape)} (-1 is any size)"
    )


def _decode_data(
    item: dict, tensor: TensorSpec, shape: tuple[int, ...], binary: memoryview | bytes, offset: int
) -> tuple[np.ndarray, int]:
    params = item.get("parameters")
    if isinstance(params, dict) and "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size < 0:  # noqa: E721
            raise RequestError(f"input '{tensor.name}': binary_data_size must be an integer >= 0")
        if offset + size > len(binary):
            raise RequestError(
                f"input '{tensor.name}' claims {size} bytes of binary data but only "
                f"{len(binary) - offset} remain after the JSON header"
            )
        array = binary_to_array(binary[offset : offset + size], tensor, shape)
        return array, offset + size
    data = item.get("data", _NOT_GIVEN)
    if data is _NOT_GIVEN:
        raise RequestError(f"input '{tensor.name}' has no 'data'")
    return json_to_array(data, tensor, shape), offset


def json_to_array(data: object, tensor: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Turn OIP JSON `data` (flat or nested lists) into an array of `shape` and the model's type."""
    datatype = tensor.datatype
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise RequestError(
            f"data of input '{tensor.name}' is not a regular array (nested lists of "
            "different lengths?)"
        ) from None
    kind = array.dtype.kind
    if kind not in datatype.json_kinds and array.size:
        raise RequestError(
            f"input '{tensor.name}' is {datatype.oip} but its data contains {describe_kind(kind)}"
        )
    expected = math.prod(shape)
    if array.size != expected:
        raise RequestError(
            f"input '{tensor.name}' has {array.size} values but shape {list(shape)} needs "
            f"{expected}"
        )
    if kind in "iu" and datatype.numpy.kind in "iu" and array.size:
        _check_int_range(array, tensor.name, datatype)
    return array.astype(datatype.numpy, copy=False).reshape(shape)


def _check_int_range(array: np.ndarray, name: str, datatype: DataType) -> None:
    info = np.iinfo(datatype.numpy)
    low, high = int(array.min()), int(array.max())
    if low < info.min or high > info.max:
        raise RequestError(
            f"input '{name}' has values outside the range of {datatype.oip} "
            f"({info.min}..{info.max})"
        )


def binary_to_array(
    raw: memoryview | bytes, tensor: TensorSpec, shape: tuple[int, ...]
) -> np.ndarray:
    """Binary tensor extension: raw little-endian elements, or length-prefixed strings."""
    datatype = tensor.datatype
    count = math.prod(shape)
    if datatype.oip == "BYTES":
        return np.array(_split_bytes_elements(raw, count, tensor.name), dtype=object).reshape(shape)
    itemsize = datatype.numpy.itemsize
    if len(raw) != count * itemsize:
        raise RequestError(
            f"input '{tensor.name}' has {len(raw)} bytes of binary data but shape {list(shape)} "
            f"of {datatype.oip} needs {count * itemsize}"
        )
    array = np.frombuffer(raw, dtype=datatype.numpy.newbyteorder("<"), count=count)
    if not array.dtype.isnative or not array.flags.aligned:
        array = array.astype(datatype.numpy)
    return array.reshape(shape)


def _split_bytes_elements(raw: memoryview | bytes, count: int, name: str) -> list[str]:
    values: list[str] = []
    position = 0
    raw = bytes(raw)
    for _ in range(count):
        if position + 4 > len(raw):
            raise RequestError(f"input '{name}': binary BYTES data ends before {count} elements")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        chunk = raw[position : position + length]
        if len(chunk) != length:
            raise RequestError(f"input '{name}': binary BYTES element is cut short")
        position += length
        try:
            values.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"input '{name}': BYTES elements must be UTF-8 text") from None
    if position != len(raw):
        raise RequestError(f"input '{name}': binary BYTES data has bytes beyond {count} elements")
    return values


def _requested_outputs(
    outputs: object, spec: ModelSpec, binary_default: bool
) -> tuple[tuple[int, bool], ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise RequestError("'outputs' must be a list")
    chosen: list[tuple[int, bool]] = []
    for position, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(f"outputs[{position}] must be an object with a 'name' string")
        name = item["name"]
        index = spec.output_index.get(name)
        if index is None:
            raise RequestError(
                f"unknown output '{name}'; model '{spec.name}' has: {spec.output_names()}"
            )
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"parameters of output '{name}' must be a JSON object")
        if params.get("classification"):
            raise RequestError("the classification extension is not supported")
        binary = params.get("binary_data", binary_default) is True
        chosen.append((index, binary))
    return tuple(chosen)


# --- responses ------------------------------------------------------------------------------

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def encode_infer_response(
    spec: ModelSpec, request: InferRequest, outputs: list[np.ndarray]
) -> tuple[bytes, int | None]:
    """The OIP response body, and the JSON header's length when binary tensors follow it."""
    selected = request.outputs
    if selected is None:
        binary = request.binary_outputs
        selected = tuple((i, binary) for i in range(len(spec.outputs)))
    documents = []
    blobs: list[bytes] = []
    for index, as_binary in selected:
        tensor = spec.outputs[index]
        array = outputs[index]
        if as_binary:
            blob = array_to_binary(array, tensor.datatype)
            blobs.append(blob)
            documents.append(
                {
                    "name": tensor.name,
                    "datatype": tensor.datatype.oip,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        else:
            documents.append(
                {
                    "name": tensor.name,
                    "datatype": tensor.datatype.oip,
                    "shape": list(array.shape),
                    "data": array_to_json_data(array, tensor.datatype),
                }
            )
    response: dict[str, object] = {"model_name": spec.name, "model_version": spec.version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = documents
    header = orjson.dumps(response, option=_DUMPS_OPTIONS)
    if blobs:
        return b"".join([header, *blobs]), len(header)
    return header, None


def array_to_json_data(array: np.ndarray, datatype: DataType) -> object:
    """OIP wants flat row-major data; orjson writes a contiguous numpy array directly."""
    if datatype.oip == "BYTES":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.ravel().tolist()
        ]
    flat = array.ravel()
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat


def array_to_binary(array: np.ndarray, datatype: DataType) -> bytes:
    if datatype.oip == "BYTES":
        parts = []
        for value in array.ravel().tolist():
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=datatype.numpy.newbyteorder("<")).tobytes()
