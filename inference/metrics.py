"""Prometheus metrics of the agent, cheap enough for the hot path.

All updates happen on the event loop thread (the batcher reports back there), so the counters
and histograms are plain Python numbers without locks: an `observe` is a bisect and two
additions. A custom collector turns them into Prometheus families only when `/metrics` is
scraped, through prometheus_client's own registry and text format.

Labels are model names, versions and outcomes only; never tenant or request ids (unbounded
cardinality). Requests for models that do not exist are counted without a model label, for the
same reason.

The node's own state (memory pressure, temperature, loaded versions, drift, tokenisation) is
read from callables the CLI sets (`inference/cli.py`) when `/metrics` is scraped, so nothing
on the hot path pays for it; the node's energy counter (`NodeEnergy`) advances at each scrape.
"""

from __future__ import annotations

import math
import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from inference import __version__, protocol
from inference.drift import Summary, merge, summary_psi
from inference.usage import RaplReading, rapl_joules, read_rapl

if TYPE_CHECKING:
    from inference.drift import OutputSketch

OUTCOMES = ("success", "client_error", "server_error")

# The usage records' latency buckets (inference/protocol.py), so both sources agree.
DURATION_BUCKETS = protocol.LATENCY_BOUNDS_S
QUEUE_BUCKETS = (
    0.00001,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    0.1,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left finds the first bound >= value, which is Prometheus' `le` bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets


class ModelStats:
    """Counters of one model; kept after an unload so counters never go backwards."""

    __slots__ = ("outcomes", "duration", "queue", "batch", "run")

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.duration = Histogram(DURATION_BUCKETS)
        self.queue = Histogram(QUEUE_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)
        self.run = Histogram(DURATION_BUCKETS)


# Per-version health for the console's rollout gates (`LoadedModel.requests_total`,
# `errors_total`, `latency_p95_ms` in the heartbeat). Latencies go into a fixed histogram per
# time slot: recording is a bisect and two additions, no allocation; the p95 over the window is
# computed only when a heartbeat is built. Bounds grow by 2**(1/4) (~19 %) from 50 µs to ~100 s,
# so the p95 read back is within ~10 % of the true value.
HEALTH_BOUNDS = tuple(0.00005 * 2 ** (i / 4) for i in range(84))
HEALTH_SLOT_S = 10.0
HEALTH_SLOTS = 6  # the p95 covers the last 50-60 s


class VersionHealth:
    """Requests, errors and recent latency of one (model, version); kept after an unload so
    the totals never go backwards."""

    __slots__ = ("requests", "errors", "last_used", "outputs", "_slots", "_slot_ids")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        # perf_counter() of the latest request; the memory budget evicts the least recent.
        self.last_used = 0.0
        # The loaded runner's output summaries (inference/drift.py), reported per heartbeat.
        self.outputs: OutputSketch | None = None
        self._slots = [[0] * (len(HEALTH_BOUNDS) + 1) for _ in range(HEALTH_SLOTS)]
        self._slot_ids = [-1] * HEALTH_SLOTS

    def record(self, status: int, seconds: float, now: float) -> None:
        """`now` is time.perf_counter() (the server has it already)."""
        self.requests += 1
        if status >= 400:
            self.errors += 1
        self.last_used = now
        slot_id = int(now // HEALTH_SLOT_S)
        index = slot_id % HEALTH_SLOTS
        counts = self._slots[index]
        if self._slot_ids[index] != slot_id:
            self._slot_ids[index] = slot_id
            for i in range(len(counts)):
                counts[i] = 0
        counts[bisect_left(HEALTH_BOUNDS, seconds)] += 1

    def p95_ms(self, now: float | None = None) -> float | None:
        """The 95th percentile latency (ms) over the last minute; None without requests."""
        now = time.perf_counter() if now is None else now
        current = int(now // HEALTH_SLOT_S)
        merged = [0] * (len(HEALTH_BOUNDS) + 1)
        for slot_id, counts in zip(self._slot_ids, self._slots, strict=True):
            if current - HEALTH_SLOTS < slot_id <= current:
                for i, count in enumerate(counts):
                    merged[i] += count
        total = sum(merged)
        if not total:
            return None
        rank = math.ceil(0.95 * total)
        seen = 0
        for i, count in enumerate(merged):
            seen += count
            if seen >= rank:
                # The bucket's upper bound (the last, open bucket reports the highest bound):
                # never under-reports, which is the safe side for a health gate.
                return HEALTH_BOUNDS[min(i, len(HEALTH_BOUNDS) - 1)] * 1000
        return None  # unreachable: seen reaches total


class UsageCounters:
    """The usage meter's counters (inference/usage_spool.py, usage_meter.py), read at scrape
    time. `pending` mirrors the spool: batch_seq -> when the batch was made (epoch seconds)."""

    __slots__ = (
        "journal_lines",
        "journal_errors",
        "uploaded",
        "upload_failures",
        "pending",
        "energy_j",
    )

    def __init__(self) -> None:
        self.journal_lines = 0
        self.journal_errors = 0
        self.uploaded = 0
        self.upload_failures = 0
        self.pending: dict[int, float] = {}
        # Model name -> joules of the usage records spooled so far (their `energy_j`, summed
        # when a fold builds them: inference/usage_meter.py), so Prometheus and the console's
        # usage rollups count the same energy.
        self.energy_j: dict[str, float] = {}


# (idle watts, peak watts) of the node's class, from the policy bundle; None: not known yet.
PowerModel = Callable[[], "tuple[float, float] | None"]


class NodeEnergy:
    """The node's energy since the agent started, in joules (`outpost_node_energy_joules`).

    It advances whenever it is read (each scrape), by the interval since the last read: RAPL's
    package counters when both ends of the interval could read them, else the node class's
    power model — idle watts over the interval's wall time plus (peak − idle) watts over the
    model-run time in it (at most the wall time: the machine draws at most its peak). An
    interval with neither adds nothing. It only ever adds, so the counter never goes back.
    """

    __slots__ = ("busy_s", "power_model", "read", "clock", "joules", "_at", "_busy", "_rapl")

    def __init__(
        self,
        *,
        busy_s: Callable[[], float],
        power_model: PowerModel,
        read: Callable[[], RaplReading | None] = read_rapl,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy_s = busy_s
        self.power_model = power_model
        self.read = read
        self.clock = clock
        self.joules = 0.0
        self._at = clock()
        self._busy = busy_s()
        self._rapl = read()

    def advance(self) -> float:
        """Add the energy of the interval since the last call; returns the total."""
        now, busy, reading = self.clock(), self.busy_s(), self.read()
        wall = max(0.0, now - self._at)
        measured = None
        if self._rapl is not None and reading is not None:
            measured = rapl_joules(self._rapl, reading)
        if measured is not None:
            self.joules += measured
        else:
            model = self.power_model()
            if model is not None:
                idle, peak = model
                run = min(max(0.0, busy - self._busy), wall)
                self.joules += idle * wall + max(0.0, peak - idle) * run
        self._at, self._busy, self._rapl = now, busy, reading
        return self.joules


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    return "client_error" if status < 500 else "server_error"


class AgentMetrics:
    def __init__(self) -> None:
        self.models: dict[str, ModelStats] = {}
        self.versions: dict[tuple[str, str], VersionHealth] = {}
        # Infer requests for models that do not exist, by outcome (no model label, see above).
        self.unknown_model_requests = 0
        self.requests_total = 0
        self.errors_total = 0
        self.heartbeats = {"success": 0, "failure": 0}
        self.mode = "standalone"
        # Filled by the server: callables reading live state at scrape time.
        self.models_loaded = lambda: 0
        self.queue_depth = lambda: 0
        # The policy bundle enforced (None: none yet) and seconds since it was last known
        # current (inference/bundle_store.py).
        self.bundle_revision: Callable[[], int | None] = lambda: None
        self.bundle_age_s: Callable[[], float | None] = lambda: None
        # Routing decisions by (action, rule): both come from small fixed sets (policy.py).
        self.decisions: dict[tuple[str, str], int] = {}
        # Usage metering, on an enrolled node only (None: standalone meters nothing).
        self.usage: UsageCounters | None = None
        # The node's state, read at scrape time (set by inference/cli.py); None: not known.
        self.memory_pressure: Callable[[], float | None] = lambda: None
        # (°C or None, whether the console simulates it).
        self.temperature: Callable[[], tuple[float | None, bool]] = lambda: (None, False)
        # (model, version, ready) of each version this node holds, as its heartbeat reports.
        self.loaded_versions: Callable[[], list[tuple[str, str, bool]]] = lambda: []
        self.tokenisation_active: Callable[[], bool] = lambda: False
        self.power_model: PowerModel = lambda: None
        self.energy = NodeEnergy(busy_s=self.busy_seconds, power_model=lambda: self.power_model())
        # (model, version) -> the reference outputs the console sent for it
        # (protocol.DesiredVersion.drift_reference), set by inference/agent.py.
        self.drift_references: dict[tuple[str, str], Summary] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        ProcessCollector(namespace="outpost", registry=self.registry)

    def stats(self, model: str) -> ModelStats:
        stats = self.models.get(model)
        if stats is None:
            stats = self.models[model] = ModelStats()
        return stats

    def health(self, model: str, version: str) -> VersionHealth:
        health = self.versions.get((model, version))
        if health is None:
            health = self.versions[(model, version)] = VersionHealth()
        return health

    def busy_seconds(self) -> float:
        """Model-run time since start, all models (their run histograms' sums)."""
        return sum(stats.run.sum for stats in self.models.values())

    def drift_psi(self) -> list[tuple[str, str, float]]:
        """(model, version, PSI) of each version with a reference and recent outputs: the
        noise-corrected PSI (inference.drift.summary_psi) of the merge of its last closed
        one-minute windows against the reference."""
        values = []
        for (model, version), reference in sorted(self.drift_references.items()):
            health = self.versions.get((model, version))
            if health is None or health.outputs is None:
                continue
            windows = health.outputs.recent()
            if not windows:
                continue
            value = summary_psi(reference, merge(windows))
            if value is not None:
                values.append((model, version, value))
        return values

    def record_request(self, stats: ModelStats | None, status: int, seconds: float) -> None:
        self.requests_total += 1
        if status >= 400:
            self.errors_total += 1
        if stats is None:
            self.unknown_model_requests += 1
            return
        stats.outcomes[outcome_of(status)] += 1
        stats.duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = InfoMetricFamily("outpost_agent", "The node agent's version and mode")
        info.add_metric(
            [],
            {"version": __version__, "mode": m.mode, "python": platform.python_version()},
        )
        yield info

        requests = CounterMetricFamily(
            "outpost_inference_requests",
            "Inference requests answered, by model and outcome",
            labels=["model", "outcome"],
        )
        for name, stats in sorted(m.models.items()):
            for outcome, count in stats.outcomes.items():
                requests.add_metric([name, outcome], count)
        yield requests

        unknown = CounterMetricFamily(
            "outpost_inference_unknown_model_requests",
            "Inference requests for a model or version this node does not serve",
        )
        unknown.add_metric([], m.unknown_model_requests)
        yield unknown

        for attr, name, help_text in (
            (
                "duration",
                "outpost_inference_request_duration_seconds",
                "Time from receiving an inference request to answering it",
            ),
            (
                "queue",
                "outpost_inference_queue_duration_seconds",
                "Time a request waited in the batcher before its model run started",
            ),
            ("run", "outpost_inference_run_duration_seconds", "Time of one model run (one batch)"),
            (
                "batch",
                "outpost_inference_batch_size",
                "Rows in one model run (requests gathered by the dynamic batcher)",
            ),
        ):
            family = HistogramMetricFamily(name, help_text, labels=["model"])
            for model, stats in sorted(m.models.items()):
                histogram: Histogram = getattr(stats, attr)
                family.add_metric([model], histogram.cumulative(), histogram.sum)
            yield family

        loaded = GaugeMetricFamily("outpost_models_loaded", "Models loaded and ready to serve")
        loaded.add_metric([], m.models_loaded())
        yield loaded

        depth = GaugeMetricFamily(
            "outpost_inference_queue_depth", "Requests waiting in the batcher right now"
        )
        depth.add_metric([], m.queue_depth())
        yield depth

        heartbeats = CounterMetricFamily(
            "outpost_console_heartbeats",
            "Heartbeats sent to the console, by outcome",
            labels=["outcome"],
        )
        for outcome, count in m.heartbeats.items():
            heartbeats.add_metric([outcome], count)
        yield heartbeats

        revision = m.bundle_revision()
        if revision is not None:
            gauge = GaugeMetricFamily(
                "outpost_policy_bundle_revision", "Revision of the policy bundle enforced"
            )
            gauge.add_metric([], revision)
            yield gauge
            age = GaugeMetricFamily(
                "outpost_policy_bundle_age_seconds",
                "Seconds since the enforced bundle was issued or last confirmed current",
            )
            age.add_metric([], m.bundle_age_s() or 0.0)
            yield age

        decisions = CounterMetricFamily(
            "outpost_routing_decisions",
            "Routing decisions by action (local, offload, refuse) and the rule that made them",
            labels=["action", "rule"],
        )
        for (action, rule), count in sorted(m.decisions.items()):
            decisions.add_metric([action, rule], count)
        yield decisions

        if m.usage is not None:
            yield from _usage_families(m.usage, m.models)

        yield from _node_families(m)


def _node_families(m: AgentMetrics) -> Iterator[Metric]:
    """The node's state for the console's dashboards (issue 6): memory, heat, energy, the
    versions it holds and their drift, and whether it tokenises."""
    memory = m.memory_pressure()
    if memory is not None:
        gauge = GaugeMetricFamily(
            "outpost_node_memory_pressure", "Share of the node's memory in use, 0..1"
        )
        gauge.add_metric([], memory)
        yield gauge
    temperature, simulated = m.temperature()
    if temperature is not None:
        gauge = GaugeMetricFamily(
            "outpost_node_temperature_celsius",
            "The node's hottest sensor, or the console's simulated temperature while one runs",
        )
        gauge.add_metric([], temperature)
        yield gauge
    gauge = GaugeMetricFamily(
        "outpost_node_temperature_simulated",
        "1 while the console simulates this node's temperature, else 0",
    )
    gauge.add_metric([], 1 if simulated else 0)
    yield gauge
    energy = CounterMetricFamily(
        "outpost_node_energy_joules",
        "Energy the node spent since the agent started: RAPL when readable, else the node "
        "class's power model (idle watts over time plus the rest up to peak over model runs)",
    )
    energy.add_metric([], m.energy.advance())
    yield energy
    loaded = GaugeMetricFamily(
        "outpost_model_loaded",
        "1 per model version loaded and ready, 0 for one held but not ready (loading, failed)",
        labels=["model", "version"],
    )
    for model, version, ready in sorted(m.loaded_versions()):
        loaded.add_metric([model, version], 1 if ready else 0)
    yield loaded
    drift = GaugeMetricFamily(
        "outpost_model_drift_psi",
        "Noise-corrected PSI of the version's last closed one-minute output windows against "
        "the reference the console sent",
        labels=["model", "version"],
    )
    for model, version, value in m.drift_psi():
        drift.add_metric([model, version], value)
    yield drift
    gauge = GaugeMetricFamily(
        "outpost_tokenisation_active",
        "1 when the node has a tokenisation key: it replaces sensitive fields by tokens "
        "before a request leaves it",
    )
    gauge.add_metric([], 1 if m.tokenisation_active() else 0)
    yield gauge


def _usage_families(usage: UsageCounters, models: Iterable[str]) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "outpost_usage_batches_pending",
        "Usage batches spooled on this node and not yet acknowledged by the console",
    )
    pending.add_metric([], len(usage.pending))
    yield pending
    oldest = GaugeMetricFamily(
        "outpost_usage_oldest_pending_age_seconds",
        "Age of the oldest usage batch waiting for the console (0 when none waits)",
    )
    oldest.add_metric(
        [], max(0.0, time.time() - min(usage.pending.values())) if usage.pending else 0.0
    )
    yield oldest
    for name, help_text, value in (
        (
            "outpost_usage_batches_uploaded",
            "Usage batches the console acknowledged (stored, duplicate or conflict)",
            usage.uploaded,
        ),
        (
            "outpost_usage_upload_failures",
            "Usage uploads that failed (network, 429, 5xx, refused) and will be retried",
            usage.upload_failures,
        ),
        (
            "outpost_usage_journal_lines",
            "Answered inferences written to the usage journal",
            usage.journal_lines,
        ),
        (
            "outpost_usage_journal_errors",
            "Answered inferences the usage journal could not write (counted in memory only)",
            usage.journal_errors,
        ),
    ):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], value)
        yield counter
    energy = CounterMetricFamily(
        "outpost_inference_energy_joules",
        "Energy attributed to answered inferences (their usage records' energy_j), by model",
        labels=["model"],
    )
    # Every model the node serves starts at 0, so Prometheus' increase() counts the first
    # minute folded (a series that appears with a value hides its first increment).
    for model in sorted(set(models) | set(usage.energy_j)):
        energy.add_metric([model], usage.energy_j.get(model, 0.0))
    yield energy
