"""Settings of the agent: how sessions are built and how requests are batched.

Plain frozen dataclasses, filled by `inference/cli.py` from flags and by `load_sidecar` from a
model's optional `NAME.json`, so the rest of the package never reads argv or files for them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# Short names accepted by --execution-provider; anything else is taken as a full ORT name.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SessionSettings:
    # 0 lets ONNX Runtime pick (one thread per physical core); the CLI defaults to cores - 1.
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    # How long an intra-op thread spins for more work after a run before it sleeps (0: never
    # spins). Waking a sleeping thread, on a VM a halted vCPU, costs more than a small model's
    # run; spinning without bound steals the core the event loop needs under load.
    intra_op_spin_us: int = 300
    # Full ONNX Runtime provider names, in order of preference; CPU is always appended last.
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_batch_size: int = 32
    # How long a request that arrived while the model was busy may wait for companions
    # (see ModelRunner in inference/batching.py for the exact rule).
    max_queue_delay_ms: float = 1.0
    # A batch whose estimated run time is below this runs on the event loop itself: handing it
    # to a worker thread and back costs more than running it (tens of microseconds).
    inline_threshold_us: float = 150.0
    # The same for a batch of requests that arrived while the model was idle: at low load no
    # other request is waiting for the loop, so the hand-off is pure added latency (measured:
    # the medium demo model's p50 at one connection drops from ~0.6 ms to ~0.45 ms).
    idle_inline_threshold_us: float = 1000.0


class SettingsError(ValueError):
    pass


_SIDECAR_KEYS = {"max_batch_size", "max_queue_delay_ms"}


def load_sidecar(path: Path, defaults: BatchSettings) -> BatchSettings:
    """Per-model batching settings from `NAME.json` next to `NAME.onnx`, over the defaults.

    Unknown keys and bad values are errors: a typo in a sidecar must not silently fall back.
    """
    if not path.exists():
        return defaults
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a JSON object")
    unknown = set(raw) - _SIDECAR_KEYS
    if unknown:
        raise SettingsError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_SIDECAR_KEYS))}"
        )
    settings = defaults
    if "max_batch_size" in raw:
        settings = replace(settings, max_batch_size=parse_batch_size(raw["max_batch_size"], path))
    if "max_queue_delay_ms" in raw:
        settings = replace(
            settings, max_queue_delay_ms=parse_delay_ms(raw["max_queue_delay_ms"], path)
        )
    return settings


def parse_batch_size(value: object, where: object = "max_batch_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise SettingsError(f"{where}: max_batch_size must be an integer from 1 to 4096")
    return value


def parse_delay_ms(value: object, where: object = "max_queue_delay_ms") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 10_000
    ):
        raise SettingsError(f"{where}: max_queue_delay_ms must be a number from 0 to 10000")
    return float(value)
