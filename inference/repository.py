"""The model repository: which models this node serves, their load state, and their runners.

Models are the `*.onnx` files of one directory, each served under its file stem as version
"1". The initial load and Triton's repository extension (`load`/`unload`) go through here.
Readiness is strict, as Triton's default: the node is ready only when every model it should
serve is loaded and warmed up; a model that fails to load keeps it not ready until the model
is fixed and loaded again, or unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference.batching import ModelRunner
from inference.config import BatchSettings, SessionSettings, SettingsError, load_sidecar
from inference.metrics import AgentMetrics
from inference.models import MODEL_VERSION, ModelLoadError, file_sha256, load_model

log = logging.getLogger(__name__)

# A model name is also a file name and a URL segment: keep it to safe characters.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"


class UnknownModel(LookupError):
    pass


class LoadFailed(Exception):
    pass


@dataclass
class Entry:
    name: str
    state: str
    reason: str = ""
    sha256: str | None = None
    runner: ModelRunner | None = None


class ModelRepository:
    def __init__(
        self,
        models_dir: Path,
        session_settings: SessionSettings,
        batch_defaults: BatchSettings,
        executor: Executor,
        metrics: AgentMetrics,
    ) -> None:
        self.models_dir = models_dir
        self.session_settings = session_settings
        self.batch_defaults = batch_defaults
        self.executor = executor
        self.metrics = metrics
        self.entries: dict[str, Entry] = {}
        # The hot path's lookup: only models that are READY.
        self.runners: dict[str, ModelRunner] = {}
        self.initial_load_done = False
        self._locks: dict[str, asyncio.Lock] = {}
        # Loading is CPU-heavy; one thread of its own keeps it from delaying inference runs.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outpost-load")

    def discover(self) -> list[str]:
        """Model names in the directory, in name order; odd file names are skipped loudly."""
        names = []
        for path in sorted(self.models_dir.glob("*.onnx")):
            if MODEL_NAME.match(path.stem):
                names.append(path.stem)
            else:
                log.warning("skipping %s: model names may only use letters, digits, _ . -", path)
        return names

    def path_of(self, name: str) -> Path:
        return self.models_dir / f"{name}.onnx"

    async def load_all(self) -> None:
        started = time.perf_counter()
        names = self.discover()
        for name in names:
            self.entries[name] = Entry(name, LOADING)
        for name in names:
            try:
                await self.load(name)
            except (LoadFailed, UnknownModel) as exc:
                log.error("model %s failed to load: %s", name, exc)
        self.initial_load_done = True
        ready = [n for n, e in self.entries.items() if e.state == READY]
        log.info(
            "%d of %d models ready in %.2f s%s",
            len(ready),
            len(names),
            time.perf_counter() - started,
            "" if self.is_ready() else " (node NOT ready: a model failed to load)",
        )

    async def load(self, name: str) -> None:
        """Load (or reload) a model from its file; the old version serves until the new one is
        warmed up. Raises UnknownModel when there is no such file, LoadFailed otherwise."""
        path = self.path_of(name)
        if not MODEL_NAME.match(name) or not path.is_file():
            raise UnknownModel(f"no model file '{name}.onnx' in the model repository")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self.entries.get(name)
            if entry is None:
                entry = self.entries[name] = Entry(name, LOADING)
            elif entry.state != READY:
                entry.state = LOADING
            loop = asyncio.get_running_loop()
            try:
                batching = load_sidecar(path.with_suffix(".json"), self.batch_defaults)
                digest = await loop.run_in_executor(self._loader, file_sha256, path)
                entry.sha256 = digest
                model = await loop.run_in_executor(
                    self._loader, _load, path, name, self.session_settings, batching, digest
                )
            except (SettingsError, ModelLoadError, OSError) as exc:
                if entry.state != READY:
                    entry.state, entry.reason = UNAVAILABLE, str(exc)
                raise LoadFailed(str(exc)) from exc
            if self.entries.get(name) is not entry:  # unloaded while loading
                return
            runner = ModelRunner(model, self.executor, self.metrics.stats(name))
            entry.state, entry.reason, entry.sha256, entry.runner = READY, "", model.sha256, runner
            self.runners[name] = runner
            log.info(
                "model %s ready (%s, batch-1 run %.0f µs%s)",
                name,
                model.sha256[:12],
                model.warmup_seconds.get(1, 0) * 1e6,
                f", batches up to {batching.max_batch_size}" if model.spec.batchable else "",
            )

    async def unload(self, name: str) -> None:
        """Stop serving a model; requests already queued for it still complete."""
        if name not in self.entries:
            raise UnknownModel(f"model '{name}' is not loaded")
        del self.entries[name]
        self.runners.pop(name, None)

    def is_ready(self) -> bool:
        return self.initial_load_done and all(e.state == READY for e in self.entries.values())

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model file, and its state here."""
        names = sorted(set(self.discover()) | set(self.entries))
        rows = []
        for name in names:
            entry = self.entries.get(name)
            if entry is None:
                row = {
                    "name": name,
                    "version": MODEL_VERSION,
                    "state": UNAVAILABLE,
                    "reason": "unloaded",
                }
            else:
                row = {
                    "name": name,
                    "version": MODEL_VERSION,
                    "state": entry.state,
                    "reason": entry.reason,
                }
            if not ready_only or row["state"] == READY:
                rows.append(row)
        return rows

    def queue_depth(self) -> int:
        return sum(r.depth for r in self.runners.values())

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def _load(path: Path, name: str, settings: SessionSettings, batching: BatchSettings, digest: str):
    return load_model(path, name, settings, batching, sha256=digest)
