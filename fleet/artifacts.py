"""Uploaded ONNX artifacts: what one is (inspect) and where it is kept (store, path_for).

Artifacts are content-addressed: a file's name is its sha256, so the same bytes are kept once
whoever uploads them, and a node can verify what it downloads against the name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from django.conf import settings
from google.protobuf.message import DecodeError

from inference.codec import RESERVED_PARAMETERS, RESERVED_PREFIXES
from inference.protocol import SIGNAL_TYPES

_SIGNAL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DEFAULT_DOMAINS = ("", "ai.onnx")


class InvalidArtifact(ValueError):
    """The upload is refused; the message says why, for the person who sent it."""


@dataclass(frozen=True)
class Signature:
    opset: int
    inputs: list[dict]
    outputs: list[dict]


def _tensor_info(value: onnx.ValueInfoProto, role: str) -> dict:
    if not value.type.HasField("tensor_type"):
        raise InvalidArtifact(f"{role} '{value.name}' is not a tensor")
    tensor = value.type.tensor_type
    if tensor.elem_type == onnx.TensorProto.UNDEFINED:
        raise InvalidArtifact(f"{role} '{value.name}' has no element type")
    if not tensor.HasField("shape"):
        raise InvalidArtifact(f"{role} '{value.name}' has no shape")
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    datatype = onnx.helper.tensor_dtype_to_string(tensor.elem_type).removeprefix("TensorProto.")
    return {"name": value.name, "datatype": datatype, "shape": shape}


def inspect(data: bytes) -> tuple[onnx.ModelProto, Signature]:
    """Parse and check an upload before anything is stored; raises InvalidArtifact."""
    if not data:
        raise InvalidArtifact("the file is empty")
    if len(data) > settings.OUTPOST_MAX_MODEL_BYTES:
        raise InvalidArtifact(
            f"the file is {len(data)} bytes; models may be at most "
            f"{settings.OUTPOST_MAX_MODEL_BYTES} bytes (OUTPOST_MAX_MODEL_BYTES)"
        )
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError) as exc:
        raise InvalidArtifact(f"not an ONNX model: {exc}") from None
    if not model.graph.node:
        raise InvalidArtifact("not an ONNX model: the file holds no graph")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise InvalidArtifact(f"the ONNX checker refused the model: {first_line}") from None
    opsets = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    opset = max(opsets, default=0)
    if not opset:
        raise InvalidArtifact("the model imports no version of the default ONNX operator set")
    if opset > settings.OUTPOST_MAX_OPSET:
        raise InvalidArtifact(
            f"the model uses opset {opset}; the fleet's onnxruntime supports opsets up to "
            f"{settings.OUTPOST_MAX_OPSET}"
        )
    weights = {init.name for init in model.graph.initializer}
    inputs = [_tensor_info(v, "input") for v in model.graph.input if v.name not in weights]
    outputs = [_tensor_info(v, "output") for v in model.graph.output]
    if not inputs:
        raise InvalidArtifact("the model has no inputs")
    if not outputs:
        raise InvalidArtifact("the model has no outputs")
    return model, Signature(opset=opset, inputs=inputs, outputs=outputs)


def check_signals(signals: object) -> dict[str, str]:
    """A signal schema: {"field": "type"} with types from inference.protocol.SIGNAL_TYPES."""
    if not isinstance(signals, dict):
        raise InvalidArtifact('signals must be a JSON object such as {"tier": "string"}')
    for name, kind in signals.items():
        if not _SIGNAL_NAME.match(str(name)):
            raise InvalidArtifact(
                f"signal name {name!r} must start with a letter or _ and hold only letters, "
                "digits and _ (at most 64)"
            )
        if name in RESERVED_PARAMETERS or str(name).startswith(RESERVED_PREFIXES):
            raise InvalidArtifact(
                f"signal name {name!r} is reserved for the inference protocol (names such as "
                "binary_data_output, priority, timeout, and those starting with "
                f"{', '.join(RESERVED_PREFIXES)}); choose another"
            )
        if kind not in SIGNAL_TYPES:
            raise InvalidArtifact(
                f"signal {name!r} has type {kind!r}; types are {', '.join(SIGNAL_TYPES)}"
            )
    return dict(signals)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_for(digest: str) -> Path:
    return Path(settings.OUTPOST_ARTIFACT_DIR) / digest[:2] / f"{digest}.onnx"


def store(data: bytes, digest: str) -> Path:
    """Write the bytes under their digest, atomically; a second store of the same bytes is a
    no-op."""
    path = path_for(digest)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
