"""What a model takes and returns, precomputed once so the hot path only does lookups.

`ModelSpec` is plain data (no onnxruntime objects): request validation in
`inference/codec.py` and the metadata documents are pure functions of it.

A spec also carries the version's *signal schema*: the named fields a tenant may send in an
infer request's top-level `parameters` ({"tier": "string", "visits": "int"}), declared when
the model was registered and delivered with the console's desired state
(`protocol.DesiredVersion.signals`). `inference/codec.py` enforces it; the rules are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from inference.datatypes import DataType
from inference.protocol import SIGNAL_TYPES

PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: DataType
    # -1 marks a dynamic dimension, as OIP metadata does.
    shape: tuple[int, ...]
    # (index, size) of every fixed dimension: what a request's shape is checked against.
    fixed_dims: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fixed = tuple((i, d) for i, d in enumerate(self.shape) if d != -1)
        object.__setattr__(self, "fixed_dims", fixed)

    def describe(self) -> str:
        return f"'{self.name}' ({self.datatype.oip}, shape {list(self.shape)})"

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype.oip, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True when every input and output has a dynamic first dimension that is the batch
    # (checked by running the model at two batch sizes during warm-up).
    batchable: bool
    max_batch_size: int = 0
    # The signal schema as (name, type) pairs sorted by name, so two versions declaring the
    # same schema compare equal whatever order it was written in. Empty: no signals, and the
    # request's `parameters` are not looked at (see decode_infer_request).
    signals: tuple[tuple[str, str], ...] = ()
    input_index: dict[str, int] = field(init=False, repr=False)
    output_index: dict[str, int] = field(init=False, repr=False)
    # name -> type: the hot path's lookup for `signals`.
    signal_types: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signals", signal_schema(self.signals))
        object.__setattr__(self, "input_index", {t.name: i for i, t in enumerate(self.inputs)})
        object.__setattr__(self, "output_index", {t.name: i for i, t in enumerate(self.outputs)})
        object.__setattr__(self, "signal_types", dict(self.signals))

    def input_names(self) -> str:
        return ", ".join(f"'{t.name}'" for t in self.inputs) or "none"

    def output_names(self) -> str:
        return ", ".join(f"'{t.name}'" for t in self.outputs) or "none"

    def signal_names(self) -> str:
        return ", ".join(f"'{name}' ({kind})" for name, kind in self.signals) or "none"


def signal_schema(
    signals: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """A signal schema in the form `ModelSpec.signals` keeps; ValueError for a type this agent
    does not know (a console newer than the agent): it cannot enforce what it cannot check."""
    pairs = signals.items() if isinstance(signals, Mapping) else signals
    schema = tuple(sorted((str(name), kind) for name, kind in pairs))
    for name, kind in schema:
        if kind not in SIGNAL_TYPES:
            raise ValueError(
                f"signal '{name}' has type {kind!r}; this agent knows {', '.join(SIGNAL_TYPES)}"
            )
    return schema


def dims_from_ort(shape: Sequence[object] | None) -> tuple[int, ...]:
    """ONNX Runtime reports a dynamic dim as a symbol name or None; OIP wants -1."""
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def has_dynamic_batch_dim(spec: TensorSpec) -> bool:
    return len(spec.shape) >= 1 and spec.shape[0] == -1


def model_metadata(spec: ModelSpec) -> bytes:
    """`GET /v2/models/{m}` as OIP v2 defines it."""
    return orjson.dumps(
        {
            "name": spec.name,
            "versions": [spec.version],
            "platform": PLATFORM,
            "inputs": [t.metadata() for t in spec.inputs],
            "outputs": [t.metadata() for t in spec.outputs],
        }
    )


def model_config(spec: ModelSpec, max_queue_delay_ms: float) -> bytes:
    """`GET /v2/models/{m}/config` in Triton's model-configuration shape.

    Triton reports dims without the batch dimension when max_batch_size > 0; tritonclient
    users (and perf_analyzer) rely on that convention.
    """

    def tensor(t: TensorSpec) -> dict[str, object]:
        dims = list(t.shape[1:] if spec.batchable else t.shape)
        return {"name": t.name, "data_type": t.datatype.triton_config, "dims": dims}

    config: dict[str, object] = {
        "name": spec.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": spec.max_batch_size if spec.batchable else 0,
        "input": [tensor(t) for t in spec.inputs],
        "output": [tensor(t) for t in spec.outputs],
    }
    if spec.batchable:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(max_queue_delay_ms * 1000)
        }
    return orjson.dumps(config)
