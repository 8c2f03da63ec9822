"""Loading one ONNX file: hash it, build its session, read its spec, warm it up.

The spec also takes the version's signal schema, which the console sends with the desired
state (`protocol.DesiredVersion.signals`; local `--models` files have none); a schema with a
type this agent does not know fails the load, since it could not be enforced.

Everything here is blocking and runs in a worker thread (see `inference/repository.py`);
the result, a `LoadedModel`, is immutable and shared with the batcher.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.config import BatchSettings, SessionSettings
from inference.datatypes import UnsupportedType, from_ort
from inference.specs import (
    ModelSpec,
    TensorSpec,
    dims_from_ort,
    has_dynamic_batch_dim,
    signal_schema,
)

log = logging.getLogger(__name__)

MODEL_VERSION = "1"

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Warm-up stops after this many batch-1 runs or this much time, whichever comes first.
_WARMUP_RUNS = 5
_WARMUP_BUDGET_S = 0.25


class ModelLoadError(Exception):
    pass


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    session: ort.InferenceSession
    path: Path
    sha256: str
    batching: BatchSettings
    # Measured run time (seconds) by batch rows, from warm-up; seeds the batcher's estimates.
    warmup_seconds: dict[int, float] = field(default_factory=dict)
    warmed_up: bool = False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def session_options(settings: SessionSettings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    # One graph runs at a time per session; parallelism comes from intra-op threads.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPTIMIZATION[settings.graph_optimization]
    # Spinning is bounded: unbounded, the threads keep the core the event loop needs to parse
    # the next requests (p99 at 32 connections ~5x worse); not at all, each run pays for waking
    # them (see SessionSettings and inference/README.md).
    spin_us = settings.intra_op_spin_us
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    options.log_severity_level = 3
    return options


def load_model(
    path: Path,
    name: str,
    session_settings: SessionSettings,
    batching: BatchSettings,
    *,
    sha256: str | None = None,
    version: str = MODEL_VERSION,
    signals: Mapping[str, str] | None = None,
) -> LoadedModel:
    """Build and warm up a model; raises ModelLoadError with a readable reason."""
    try:
        schema = signal_schema(signals or {})
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    digest = sha256 or file_sha256(path)
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(session_settings),
            providers=list(session_settings.execution_providers),
        )
    except Exception as exc:  # ORT raises several pybind exception types for bad files
        raise ModelLoadError(f"onnxruntime could not load {path.name}: {exc}") from exc
    try:
        inputs = tuple(_tensor_spec(t) for t in session.get_inputs())
        outputs = tuple(_tensor_spec(t) for t in session.get_outputs())
    except UnsupportedType as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from exc
    candidate = bool(inputs) and all(has_dynamic_batch_dim(t) for t in inputs + outputs)
    spec = ModelSpec(
        name=name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        batchable=candidate,
        max_batch_size=batching.max_batch_size,
        signals=schema,
    )
    model = LoadedModel(spec=spec, session=session, path=path, sha256=digest, batching=batching)
    return warm_up(model)


def _tensor_spec(node: ort.NodeArg) -> TensorSpec:
    return TensorSpec(name=node.name, datatype=from_ort(node.type), shape=dims_from_ort(node.shape))


def zeros_for(spec: TensorSpec, rows: int) -> np.ndarray:
    """A warm-up input: the batch dim is `rows`, other dynamic dims are 1."""
    shape = [1 if d == -1 else d for d in spec.shape]
    if shape and spec.shape[0] == -1:
        shape[0] = rows
    if spec.datatype.oip == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.datatype.numpy)


def warm_up(model: LoadedModel) -> LoadedModel:
    """Run the model on zeros so the first real request does not pay for lazy initialisation,
    measure its run time, and confirm that the first dimension really is a batch dimension
    (some graphs declare it dynamic but reduce over it)."""
    spec = model.spec
    session = model.session

    def run(rows: int) -> tuple[float, list[np.ndarray]]:
        feed = {t.name: zeros_for(t, rows) for t in spec.inputs}
        start = time.perf_counter()
        result = session.run(None, feed)
        return time.perf_counter() - start, result

    timings: dict[int, float] = {}
    try:
        samples: list[float] = []
        began = time.perf_counter()
        while len(samples) < _WARMUP_RUNS and (
            not samples or time.perf_counter() - began < _WARMUP_BUDGET_S
        ):
            elapsed, _ = run(1)
            samples.append(elapsed)
        # The first run includes one-off allocations; the median of the rest is typical.
        timings[1] = statistics.median(samples[1:] or samples)
        batchable = spec.batchable
        if batchable:
            elapsed, result = run(2)
            batchable = all(r.ndim >= 1 and r.shape[0] == 2 for r in result)
            timings[2] = elapsed
            if not batchable:
                log.warning(
                    "model %s: the first dimension is dynamic but not a batch dimension; "
                    "requests will run one at a time",
                    spec.name,
                )
        top = model.batching.max_batch_size
        if batchable and top > 2 and timings[1] * top < _WARMUP_BUDGET_S:
            run(top)
            timings[top] = run(top)[0]
    except Exception as exc:  # a model may reject zeros (e.g. as indices); it can still serve
        log.warning("model %s: warm-up run on zeros failed (%s); serving it anyway", spec.name, exc)
        return replace(model, spec=replace(spec, batchable=False), warmed_up=True)
    return replace(
        model, spec=replace(spec, batchable=batchable), warmup_seconds=timings, warmed_up=True
    )


def resolve_providers(requested: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The providers to use, and warnings for requested ones this onnxruntime lacks."""
    available = set(ort.get_available_providers())
    chosen: list[str] = []
    warnings: list[str] = []
    for name in requested:
        if name not in available:
            warnings.append(
                f"execution provider {name} is not available in this onnxruntime "
                f"(available: {', '.join(sorted(available))}); using CPU"
            )
        elif name not in chosen:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return tuple(chosen), warnings
