"""The one table that maps tensor element types between OIP v2, ONNX Runtime and numpy.

OIP names (`FP32`, `INT64`, ...) are what clients send and see; ONNX Runtime describes
tensors as `tensor(float)`, `tensor(int64)`, ...; numpy is what we compute with. Triton's
model-configuration names (`TYPE_FP32`) are here too for `GET /v2/models/{m}/config`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    oip: str
    ort: str
    numpy: np.dtype
    triton_config: str
    # numpy dtype kinds that JSON data may arrive as for this type (see inference/codec.py):
    # JSON has only bools, integers, floats and strings, and np.asarray picks the kind.
    json_kinds: frozenset[str]


_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")

_TYPES = (
    DataType("BOOL", "tensor(bool)", np.dtype(np.bool_), "TYPE_BOOL", frozenset("b")),
    DataType("UINT8", "tensor(uint8)", np.dtype(np.uint8), "TYPE_UINT8", _INT_KINDS),
    DataType("UINT16", "tensor(uint16)", np.dtype(np.uint16), "TYPE_UINT16", _INT_KINDS),
    DataType("UINT32", "tensor(uint32)", np.dtype(np.uint32), "TYPE_UINT32", _INT_KINDS),
    DataType("UINT64", "tensor(uint64)", np.dtype(np.uint64), "TYPE_UINT64", _INT_KINDS),
    DataType("INT8", "tensor(int8)", np.dtype(np.int8), "TYPE_INT8", _INT_KINDS),
    DataType("INT16", "tensor(int16)", np.dtype(np.int16), "TYPE_INT16", _INT_KINDS),
    DataType("INT32", "tensor(int32)", np.dtype(np.int32), "TYPE_INT32", _INT_KINDS),
    DataType("INT64", "tensor(int64)", np.dtype(np.int64), "TYPE_INT64", _INT_KINDS),
    DataType("FP16", "tensor(float16)", np.dtype(np.float16), "TYPE_FP16", _FLOAT_KINDS),
    DataType("FP32", "tensor(float)", np.dtype(np.float32), "TYPE_FP32", _FLOAT_KINDS),
    DataType("FP64", "tensor(double)", np.dtype(np.float64), "TYPE_FP64", _FLOAT_KINDS),
    # ONNX Runtime takes and returns string tensors as numpy object arrays of str.
    DataType("BYTES", "tensor(string)", np.dtype(object), "TYPE_STRING", frozenset("U")),
)

BY_OIP: dict[str, DataType] = {t.oip: t for t in _TYPES}
BY_ORT: dict[str, DataType] = {t.ort: t for t in _TYPES}


class UnsupportedType(ValueError):
    pass


def from_oip(name: str) -> DataType:
    try:
        return BY_OIP[name]
    except KeyError:
        raise UnsupportedType(
            f"unknown datatype {name!r}; expected one of {', '.join(BY_OIP)}"
        ) from None


def from_ort(type_string: str) -> DataType:
    try:
        return BY_ORT[type_string]
    except KeyError:
        raise UnsupportedType(f"ONNX type {type_string} is not supported by the agent") from None


def from_numpy(dtype: np.dtype) -> DataType:
    dtype = np.dtype(dtype)
    if dtype.kind in "USO":
        return BY_OIP["BYTES"]
    for t in _TYPES:
        if t.numpy == dtype:
            return t
    raise UnsupportedType(f"numpy dtype {dtype} has no OIP datatype")


# JSON names a kind of value by what the client wrote, for error messages.
KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floating-point numbers",
    "U": "strings",
    "S": "bytes",
    "O": "nulls or mixed values",
}


def describe_kind(kind: str) -> str:
    return KIND_NAMES.get(kind, f"values of numpy kind {kind!r}")
