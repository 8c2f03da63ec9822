"""The model repository: which models this node serves, their load state, and their runners.

Two kinds of models:

- *Local* models are the `*.onnx` files of `--models`, each served under its file stem as
  version "1". The initial load and Triton's repository extension (`load`/`unload`) go through
  here. Readiness is strict, as Triton's default: the node is ready only when every local model
  is loaded and warmed up; one that fails to load keeps it not ready until it is fixed and
  loaded again, or unloaded.
- *Console-managed* versions are what the console's heartbeat reply lists in `desired_models`
  (`apply_desired`). `plan_desired` (pure) decides what to fetch, load, unload and refuse;
  fetching (`inference/artifacts.py`) and loading run in the background, and a version takes
  traffic only once it is warmed up. They do not affect `/v2/health/ready` (the console reads
  their state per version from the heartbeat). When a managed model has the name of a local
  one, the managed versions take the name's traffic once one is ready (warned once).

`routes` is the hot path's lookup: model name -> its ready versions and their traffic split
(`inference/routing.py`), rebuilt whenever a version becomes ready or goes away.

Memory budget: a version is estimated to need `MEMORY_FACTOR` x its file size (the ONNX
Runtime session holds the weights, plus arenas and the optimised graph; measured at 1.3-2x on
the demo models). A new version that does not fit evicts the least recently used managed
version that is not the last ready version of its model; if it still does not fit it is
refused with a problem in the heartbeat instead of being loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from inference import protocol
from inference.agent import backoff_delay
from inference.artifacts import ArtifactError, ArtifactMismatch
from inference.batching import ModelRunner
from inference.config import BatchSettings, SessionSettings, SettingsError, load_sidecar
from inference.metrics import AgentMetrics
from inference.models import MODEL_VERSION, ModelLoadError, file_sha256, load_model
from inference.routing import SplitTable, version_sort_key
from inference.specs import signal_schema

log = logging.getLogger(__name__)

# A model name is also a file name and a URL segment: keep it to safe characters.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"

# Estimated memory of a loaded version, as a multiple of its file size (see the docstring).
MEMORY_FACTOR = 2
# A failed download or load of a managed version is retried after 2, 4, 8 ... s, at most 5 min.
RETRY_BASE_S = 2.0
RETRY_CAP_S = 300.0

Key = tuple[str, str]  # (model name, version)
Fetch = Callable[[protocol.DesiredVersion], Awaitable[Path]]


def default_memory_budget() -> int:
    """Half of this machine's memory: the rest is for the OS, the agent and the batches."""
    return psutil.virtual_memory().total // 2


def estimate_memory(size_bytes: int) -> int:
    return size_bytes * MEMORY_FACTOR


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# --- pure parts: what to do about the desired state -----------------------------------------


@dataclass(frozen=True)
class Held:
    """A console-managed version the repository has (loading, ready or failed)."""

    model: str
    version: str
    sha256: str
    state: str
    memory_bytes: int = 0
    last_used: float = 0.0
    # For UNAVAILABLE versions: no new attempt before this (time.monotonic()).
    retry_at: float = 0.0

    @property
    def key(self) -> Key:
        return (self.model, self.version)


@dataclass(frozen=True)
class Plan:
    load: tuple[protocol.DesiredVersion, ...] = ()
    unload: tuple[Key, ...] = ()
    # Versions not loaded because they do not fit the memory budget, with the reason.
    refuse: dict[Key, str] = field(default_factory=dict)


def plan_desired(
    held: Sequence[Held],
    desired: Sequence[protocol.DesiredVersion],
    *,
    budget_bytes: int,
    other_bytes: int = 0,
    now: float = 0.0,
) -> Plan:
    """Given the managed versions held, the console's desired list and the memory budget
    (`other_bytes` is what the local models take), decide what to load, unload and refuse.

    - A held version that is no longer desired is unloaded, except the ready ones of a model
      that is still desired while none of its desired versions is ready yet: they keep
      serving until the replacement is (never a gap in a rollout).
    - A desired version not held, or held as failed with its retry time passed, is loaded if
      it fits; when it does not, the least recently used ready versions that are not the last
      ready version of their model are evicted, if that makes it fit; otherwise it is refused.
    """
    wanted: dict[Key, protocol.DesiredVersion] = {}
    for item in desired:
        wanted.setdefault((item.model, item.version), item)
    desired_models = {model for model, _ in wanted}

    def current(h: Held) -> bool:
        item = wanted.get(h.key)
        return item is not None and item.sha256 == h.sha256

    ready_current = {h.model for h in held if h.state == READY and current(h)}
    unload: list[Key] = []
    for h in held:
        if current(h):
            continue
        keeps_serving = (
            h.state == READY
            and h.model in desired_models
            and h.model not in ready_current
            and h.key not in wanted  # same version with other bytes: replaced in place
        )
        if not keeps_serving:
            unload.append(h.key)
    gone = set(unload)
    remaining = [h for h in held if h.key not in gone]
    by_key = {h.key: h for h in remaining}
    used = other_bytes + sum(h.memory_bytes for h in remaining if h.state in (LOADING, READY))
    ready_count: dict[str, int] = {}
    for h in remaining:
        if h.state == READY:
            ready_count[h.model] = ready_count.get(h.model, 0) + 1

    load: list[protocol.DesiredVersion] = []
    refuse: dict[Key, str] = {}
    for key, item in wanted.items():
        existing = by_key.get(key)
        if existing is not None and (existing.state != UNAVAILABLE or existing.retry_at > now):
            continue
        need = estimate_memory(item.size_bytes)
        evict: list[Held] = []
        free = budget_bytes - used
        if need > free:
            counts = dict(ready_count)
            candidates = sorted(
                (h for h in remaining if h.state == READY and h.key not in gone),
                key=lambda h: h.last_used,
            )
            for h in candidates:
                if free >= need:
                    break
                if counts[h.model] <= 1:
                    continue
                counts[h.model] -= 1
                evict.append(h)
                free += h.memory_bytes
        if need > free:
            refuse[key] = (
                f"does not fit the memory budget: needs {format_bytes(need)} of "
                f"{format_bytes(budget_bytes)} ({format_bytes(max(budget_bytes - used, 0))} "
                "free, nothing more can be evicted)"
            )
            continue
        for h in evict:
            gone.add(h.key)
            unload.append(h.key)
            ready_count[h.model] -= 1
            used -= h.memory_bytes
        used += need
        load.append(item)
    return Plan(load=tuple(load), unload=tuple(unload), refuse=refuse)


# --- the repository ---------------------------------------------------------------------------


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
    version: str = MODEL_VERSION
    # Estimated memory (see MEMORY_FACTOR), counted against the budget while loading or ready.
    memory_bytes: int = 0
    # Console-managed versions only:
    share: float = 1.0
    # Tenants whose requests go to this version whatever the split (a rollout's pins).
    tenants: tuple[str, ...] = ()
    failures: int = 0
    retry_at: float = 0.0
    task: asyncio.Task | None = field(default=None, repr=False)


class Route:
    """The ready versions of one model name and how unversioned requests split between them;
    `pins` sends a tenant's requests to one version whatever the split."""

    __slots__ = ("versions", "table", "single", "primary", "pins")

    def __init__(
        self,
        ready: Sequence[tuple[str, float, ModelRunner]],
        pins: dict[str, ModelRunner] | None = None,
    ) -> None:
        self.versions: dict[str, ModelRunner] = {v: runner for v, _, runner in ready}
        self.pins: dict[str, ModelRunner] = pins or {}
        self.table = SplitTable.build([(v, share) for v, share, _ in ready])
        # The one runner every unversioned request goes to, when there is only one.
        self.single = (
            self.versions[self.table.versions[0]] if len(self.table.versions) == 1 else None
        )
        # Answers unversioned metadata: the version with the largest share (latest on a tie).
        best = max(ready, key=lambda item: (item[1], version_sort_key(item[0])))
        self.primary: ModelRunner = best[2]

    def pick(self, key: str | None) -> ModelRunner:
        if self.single is not None:
            return self.single
        return self.versions[self.table.pick(key)]  # type: ignore[index]


class ModelRepository:
    def __init__(
        self,
        models_dir: Path,
        session_settings: SessionSettings,
        batch_defaults: BatchSettings,
        executor: Executor,
        metrics: AgentMetrics,
        *,
        memory_budget_bytes: int | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.session_settings = session_settings
        self.batch_defaults = batch_defaults
        self.executor = executor
        self.metrics = metrics
        self.memory_budget_bytes = (
            default_memory_budget() if memory_budget_bytes is None else memory_budget_bytes
        )
        # A budget given on the command line is the operator's word on this machine; the
        # console's (from the node class) applies only when none was given.
        self.memory_budget_pinned = memory_budget_bytes is not None
        # Local models (--models), by name.
        self.entries: dict[str, Entry] = {}
        # Console-managed versions, by (name, version).
        self.managed: dict[Key, Entry] = {}
        # The hot path's lookup: names with at least one READY version.
        self.routes: dict[str, Route] = {}
        # Set by the console link (inference/agent.py) once the node has a credential.
        self.fetch: Fetch | None = None
        self.desired: list[protocol.DesiredVersion] | None = None
        self._shadow_warned: set[str] = set()
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
            runner = ModelRunner(
                model,
                self.executor,
                self.metrics.stats(name),
                self.metrics.health(name, MODEL_VERSION),
            )
            entry.state, entry.reason, entry.sha256, entry.runner = READY, "", model.sha256, runner
            entry.memory_bytes = estimate_memory(path.stat().st_size)
            self._rebuild_route(name)
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
        self._rebuild_route(name)

    def is_ready(self) -> bool:
        return self.initial_load_done and all(e.state == READY for e in self.entries.values())

    # --- routes ---------------------------------------------------------------------------------

    def _rebuild_route(self, name: str) -> None:
        entries = [
            e
            for (model, _), e in sorted(self.managed.items())
            if model == name and e.state == READY and e.runner is not None
        ]
        ready = [(e.version, e.share, e.runner) for e in entries]
        pins = {tenant: e.runner for e in entries for tenant in e.tenants}
        if not ready:
            local = self.entries.get(name)
            if local is not None and local.state == READY and local.runner is not None:
                ready = [(local.version, 1.0, local.runner)]
        if ready:
            self.routes[name] = Route(ready, pins)
        else:
            self.routes.pop(name, None)

    def loaded_count(self) -> int:
        """Model versions loaded and ready (the `outpost_models_loaded` gauge)."""
        return sum(e.state == READY for e in self.all_entries())

    def all_entries(self) -> Iterable[Entry]:
        yield from self.entries.values()
        yield from self.managed.values()

    def versions_of(self, name: str) -> list[Entry]:
        """Every version of a name this node knows (for errors and metadata)."""
        managed = [e for (model, _), e in sorted(self.managed.items()) if model == name]
        local = self.entries.get(name)
        return managed + ([local] if local is not None else [])

    # --- console-managed versions ---------------------------------------------------------------

    def apply_desired(self, desired: list[protocol.DesiredVersion] | None) -> None:
        """Make the managed set the console's desired list (None: the console manages nothing
        here, keep whatever is there). Returns at once; fetching and loading go on in tasks."""
        if desired is None:
            return
        self.desired = list(desired)
        self.reconcile()

    def reconcile(self) -> None:
        desired = self.desired
        if desired is None:
            return
        now = time.monotonic()
        held = [
            Held(
                model=e.name,
                version=e.version,
                sha256=e.sha256 or "",
                state=e.state,
                memory_bytes=e.memory_bytes,
                last_used=e.runner.health.last_used if e.runner is not None else 0.0,
                retry_at=e.retry_at,
            )
            for e in self.managed.values()
        ]
        other = sum(e.memory_bytes for e in self.entries.values() if e.state == READY)
        plan = plan_desired(
            held, desired, budget_bytes=self.memory_budget_bytes, other_bytes=other, now=now
        )
        touched: set[str] = set()
        for key in plan.unload:
            self._drop_managed(key)
            touched.add(key[0])
        shares = {(d.model, d.version): d.traffic_share for d in desired}
        pinned = {(d.model, d.version): tuple(d.tenants) for d in desired}
        for key, entry in self.managed.items():
            share = shares.get(key, 0.0)  # a version kept until its replacement is ready: 0
            tenants = pinned.get(key, ())
            if entry.share != share or entry.tenants != tenants:
                entry.share, entry.tenants = share, tenants
                touched.add(key[0])
        self._update_signals(desired)
        for key, problem in plan.refuse.items():
            entry = self.managed.get(key)
            item = next(d for d in desired if (d.model, d.version) == key)
            if entry is None:
                entry = self.managed[key] = Entry(
                    key[0],
                    UNAVAILABLE,
                    version=key[1],
                    sha256=item.sha256,
                    share=item.traffic_share,
                )
            if entry.reason != problem:
                log.error("model %s version %s not loaded: %s", key[0], key[1], problem)
            entry.state, entry.reason, entry.memory_bytes = UNAVAILABLE, problem, 0
        for item in plan.load:
            self._start_load(item)
        for name in {d.model for d in desired} & set(self.entries):
            if name not in self._shadow_warned:
                self._shadow_warned.add(name)
                log.warning(
                    "model %s is both in --models and managed by the console; the console's "
                    "versions take its traffic once one of them is ready",
                    name,
                )
        for name in touched:
            self._rebuild_route(name)

    def _update_signals(self, desired: list[protocol.DesiredVersion]) -> None:
        """A model's signal schema can change after its versions loaded (the console keeps one
        per model): ready versions take the new one at once, without a reload."""
        for item in desired:
            entry = self.managed.get((item.model, item.version))
            runner = entry.runner if entry is not None else None
            if runner is None or entry.sha256 != item.sha256:
                continue
            try:
                schema = signal_schema(item.signals)
            except ValueError as exc:
                log.error("model %s version %s: %s", item.model, item.version, exc)
                continue
            if runner.spec.signals != schema:
                runner.spec = dataclasses.replace(runner.spec, signals=schema)
                log.info("model %s version %s: signal schema updated", item.model, item.version)

    def _drop_managed(self, key: Key) -> None:
        entry = self.managed.pop(key, None)
        if entry is None:
            return
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        if entry.state == READY:
            log.info("model %s version %s unloaded", key[0], key[1])
        # Requests already queued on its runner still complete; the session is freed with the
        # last reference to the runner.
        entry.runner = None

    def _start_load(self, item: protocol.DesiredVersion) -> None:
        key = (item.model, item.version)
        entry = self.managed.get(key)
        if entry is None:
            entry = self.managed[key] = Entry(item.model, LOADING, version=item.version)
        entry.state, entry.sha256, entry.share = LOADING, item.sha256, item.traffic_share
        entry.tenants = tuple(item.tenants)
        entry.memory_bytes = estimate_memory(item.size_bytes)
        entry.task = asyncio.get_running_loop().create_task(
            self._fetch_and_load(entry, item), name=f"load-{item.model}-{item.version}"
        )

    async def _fetch_and_load(self, entry: Entry, item: protocol.DesiredVersion) -> None:
        key = (item.model, item.version)
        loop = asyncio.get_running_loop()
        try:
            if self.fetch is None:
                raise ArtifactError("the node has no console credential yet")
            path = await self.fetch(item)
            if self.managed.get(key) is not entry:
                return
            size = path.stat().st_size
            model = await loop.run_in_executor(
                self._loader,
                _load_version,
                path,
                item.model,
                self.session_settings,
                self.batch_defaults,
                item.sha256,
                item.version,
                item.signals,
            )
        except asyncio.CancelledError:
            raise
        except ArtifactMismatch as exc:
            log.error(
                "!!! MODEL %s VERSION %s: THE DOWNLOADED ARTIFACT DOES NOT MATCH ITS SHA256 "
                "(%s); it was deleted and will not be served !!!",
                item.model,
                item.version,
                exc,
            )
            self._failed(entry, key, str(exc))
            return
        except (ArtifactError, ModelLoadError, OSError) as exc:
            log.error("model %s version %s failed to load: %s", item.model, item.version, exc)
            self._failed(entry, key, str(exc))
            return
        except Exception as exc:  # never leave a version LOADING forever
            log.exception("model %s version %s failed to load", item.model, item.version)
            self._failed(entry, key, f"internal error while loading: {exc}")
            return
        if self.managed.get(key) is not entry:  # no longer desired while it loaded
            return
        entry.runner = ModelRunner(
            model,
            self.executor,
            self.metrics.stats(item.model),
            self.metrics.health(item.model, item.version),
        )
        entry.state, entry.reason, entry.failures, entry.task = READY, "", 0, None
        entry.memory_bytes = estimate_memory(size)
        log.info(
            "model %s version %s ready (%s, batch-1 run %.0f µs)",
            item.model,
            item.version,
            item.sha256[:12],
            model.warmup_seconds.get(1, 0) * 1e6,
        )
        self._rebuild_route(item.model)
        # Versions this one replaces can go now.
        self.reconcile()

    def _failed(self, entry: Entry, key: Key, reason: str) -> None:
        if self.managed.get(key) is not entry:
            return
        entry.failures += 1
        delay = backoff_delay(entry.failures, RETRY_BASE_S, RETRY_CAP_S)
        entry.state, entry.reason, entry.memory_bytes, entry.task = UNAVAILABLE, reason, 0, None
        entry.retry_at = time.monotonic() + delay
        log.warning("model %s version %s: next attempt in %.0f s", key[0], key[1], delay)

    def offer_memory_budget(self, budget_bytes: int) -> None:
        """The console's budget for this node (from its class), unless one was pinned."""
        if not self.memory_budget_pinned and budget_bytes != self.memory_budget_bytes:
            log.info("memory budget for console-managed versions: %d bytes", budget_bytes)
            self.memory_budget_bytes = budget_bytes

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
        for (name, version), entry in sorted(self.managed.items()):
            if not ready_only or entry.state == READY:
                rows.append(
                    {"name": name, "version": version, "state": entry.state, "reason": entry.reason}
                )
        return rows

    def run_seconds(self) -> dict[str, float]:
        """Per served model name, the measured seconds of one batch-1 run of the version that
        answers unversioned metadata (what an inference of it costs here: inference/gate.py)."""
        seconds = {}
        for name, route in self.routes.items():
            measured = route.primary.batch1_run_s
            if measured is not None:
                seconds[name] = measured
        return seconds

    def queue_depth(self) -> int:
        return sum(e.runner.depth for e in self.all_entries() if e.runner is not None)

    def close(self) -> None:
        for entry in self.managed.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        self._loader.shutdown(wait=False, cancel_futures=True)


def _load(path: Path, name: str, settings: SessionSettings, batching: BatchSettings, digest: str):
    return load_model(path, name, settings, batching, sha256=digest)


def _load_version(
    path: Path,
    name: str,
    settings: SessionSettings,
    batching: BatchSettings,
    digest: str,
    version: str,
    signals: dict[str, str],
):
    # The file was verified against `digest` when it was fetched (inference/artifacts.py).
    return load_model(
        path, name, settings, batching, sha256=digest, version=version, signals=signals
    )
