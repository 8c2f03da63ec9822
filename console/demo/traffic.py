"""Demo traffic: a modest, steady stream of inference requests to some nodes over OIP v2.

    python console/demo/traffic.py --nodes http://127.0.0.1:8101,http://127.0.0.1:8102 --rate 2

(`python -m console.demo.traffic` works too, but imports the `console` package and with it
Celery and Django; `manage.py demo` runs the file directly so this stays a plain process.)

Each node gets its own rate around `--rate` requests per second (a fixed factor per node, times
a slow wave so charts have a shape), Poisson arrivals, and at most a few requests in flight;
when the bound is reached a request is skipped, never queued, so the rate stays bounded
whatever the nodes do. Models are discovered per node (Triton's repository index, else the
names given) and their inputs built from `GET /v2/models/{name}`, batch 1. A node that is down
is retried with backoff while the others carry on. SIGINT or SIGTERM stops it cleanly.

With `--console` and tenants' API keys in `OUTPOST_DEMO_TENANT_KEYS` (`acme=opk_…,globex=…`),
requests carry a tenant's ephemeral token (exchanged at the console and renewed before it
expires), as real tenants call nodes: a tenant's own model (`acme.churn`) with its owner's
token, a catalogue model with a tenant drawn at random, so rollouts' per-tenant pins apply.

Only httpx and numpy: no Django, nothing of the console (this runs as a plain process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlparse

import httpx
import numpy as np

# Used when a node does not answer Triton's repository index (it is node-admin only).
DEFAULT_MODELS = ("tiny-classifier", "random-mlp-medium", "random-convnet-large")
# How often a model is picked relative to the others, by the grade word in its name: small
# models are called often, large ones now and then, as on a real edge fleet.
GRADE_WEIGHTS = {"tiny": 6.0, "medium": 3.0, "large": 1.0}
OTHER_WEIGHT = 2.0
MAX_IN_FLIGHT = 4
MAX_RATE = 50.0
# Distinct random bodies per model, built at each discovery: many for small inputs, so the
# outputs vary as real traffic's do (drift is measured on them), a few for large ones.
MAX_BODIES_PER_MODEL = 256
MIN_BODIES_PER_MODEL = 4
BODY_ELEMENTS_BUDGET = 65_536
REPORT_EVERY_S = 30.0
MAX_BACKOFF_S = 30.0
# Nodes gain and lose models as deployments roll out: each node's models are looked up again
# this often.
REDISCOVER_S = 15.0
# Requests carry one of this many session ids, so a canary's split sticks per session.
SESSIONS = 500
# Tenants' tokens are renewed when they have less than this left (seconds).
TOKEN_RENEW_S = 120.0
TOKENS_PATH = "/api/v1/tokens"

_FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
_INT_TYPES = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}


class UnsupportedModel(ValueError):
    """The model's metadata asks for something this generator cannot make up."""


# --- pure parts (tests/console/test_demo_traffic.py) ----------------------------------------


def concrete_shape(shape: Sequence[int], *, batch: int = 1) -> list[int]:
    """A shape to send for metadata's shape: the dynamic first dimension is the batch, and any
    other dynamic dimension takes its smallest meaningful size, 1."""
    result = []
    for i, dim in enumerate(shape):
        if dim is None or dim < 0:
            result.append(batch if i == 0 else 1)
        else:
            result.append(int(dim))
    return result


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> list:
    """Flat, row-major random data of an OIP datatype (what `data` holds in a JSON request)."""
    count = math.prod(shape)
    if datatype in _FLOAT_TYPES:
        # Four decimals keep the JSON small; the values stay in a typical feature range.
        return np.round(rng.standard_normal(count), 4).tolist()
    if datatype in _INT_TYPES:
        # Small non-negative integers are valid for any integer type, and as indices.
        return rng.integers(0, 16, size=count).tolist()
    if datatype == "BOOL":
        return rng.integers(0, 2, size=count).astype(bool).tolist()
    if datatype == "BYTES":
        return [f"demo-{v}" for v in rng.integers(0, 1000, size=count)]
    raise UnsupportedModel(f"datatype {datatype!r} is not an OIP v2 datatype")


def build_infer_request(
    metadata: dict, rng: np.random.Generator, *, batch: int = 1
) -> dict[str, object]:
    """An OIP v2 inference request body with random inputs matching a model's metadata."""
    inputs = metadata.get("inputs") or []
    if not inputs:
        raise UnsupportedModel(f"model {metadata.get('name')!r} declares no inputs")
    body_inputs = []
    for spec in inputs:
        shape = concrete_shape(spec["shape"], batch=batch)
        body_inputs.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": spec["datatype"],
                "data": random_tensor(spec["datatype"], shape, rng),
            }
        )
    return {"inputs": body_inputs}


def bodies_for(metadata: dict) -> int:
    """How many distinct bodies to build for a model: as many as fit a budget of elements."""
    elements = sum(math.prod(concrete_shape(s["shape"])) for s in metadata.get("inputs") or [])
    fitting = BODY_ELEMENTS_BUDGET // max(elements, 1)
    return max(MIN_BODIES_PER_MODEL, min(MAX_BODIES_PER_MODEL, fitting))


def model_weight(name: str) -> float:
    for grade, weight in GRADE_WEIGHTS.items():
        if grade in name:
            return weight
    return OTHER_WEIGHT


def rate_at(base: float, t: float, *, period: float, phase: float, depth: float = 0.3) -> float:
    """The request rate at time t: `base` moved up and down by a slow wave of ±`depth`."""
    return base * (1 + depth * math.sin(2 * math.pi * t / period + phase))


# --- talking to nodes ---------------------------------------------------------------------------


@dataclass
class ModelTarget:
    name: str
    url: str
    weight: float
    bodies: list[bytes]


def parse_tenant_keys(text: str) -> dict[str, str]:
    """ "acme=opk_1,globex=opk_2" → {"acme": "opk_1", "globex": "opk_2"}."""
    keys = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        slug, sep, key = part.partition("=")
        if not sep or not slug or not key:
            raise ValueError(f"tenant keys are slug=key pairs separated by commas, not {part!r}")
        keys[slug.strip()] = key.strip()
    return keys


def tenant_for(model: str, tenants: Sequence[str], rng: np.random.Generator) -> str | None:
    """Who calls `model`: the owner of a tenant's own model (served as `owner.name`), else
    any tenant; None when there is none to call as."""
    owner, sep, _ = model.partition(".")
    if sep:
        return owner if owner in tenants else None
    return tenants[rng.integers(len(tenants))] if tenants else None


class TenantTokens:
    """The demo tenants' ephemeral tokens, exchanged at the console for their API keys and
    renewed in the background before they expire."""

    def __init__(self, console_url: str, keys: dict[str, str]) -> None:
        self.console_url = console_url.rstrip("/")
        self.keys = keys
        self.tokens: dict[str, tuple[str, float]] = {}  # slug -> (token, expires at, epoch s)

    @property
    def tenants(self) -> list[str]:
        return sorted(self.tokens)

    def header(self, tenant: str | None) -> dict[str, str]:
        found = self.tokens.get(tenant) if tenant else None
        return {"Authorization": f"Bearer {found[0]}"} if found else {}

    async def renew(self, client: httpx.AsyncClient) -> None:
        for slug, key in self.keys.items():
            current = self.tokens.get(slug)
            if current is not None and current[1] - time.time() > TOKEN_RENEW_S:
                continue
            try:
                response = await client.post(
                    self.console_url + TOKENS_PATH, headers={"Authorization": f"Bearer {key}"}
                )
                response.raise_for_status()
                body = response.json()
                expires = time.time() + max(TOKEN_RENEW_S, 600.0)
                with contextlib.suppress(KeyError, ValueError):
                    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
                self.tokens[slug] = (body["token"], expires)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log(f"no token for {slug} from {self.console_url}: {exc}")

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while True:
            await self.renew(client)
            if not await _sleep(30.0, stop):
                return


@dataclass
class NodeDriver:
    """Sends one node its share of the traffic, and finds its models again after an outage."""

    url: str
    rate: float
    model_names: Sequence[str]
    rng: np.random.Generator
    period: float = 180.0
    phase: float = 0.0
    models: list[ModelTarget] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    in_flight: int = 0
    up: bool = True
    # Set when a model disappeared (404): the node's models are looked up again.
    stale: bool = False
    # The models last announced, so a rediscovery that changes nothing says nothing.
    calling: str = ""
    tokens: TenantTokens | None = None

    @property
    def label(self) -> str:
        return urlparse(self.url).netloc or self.url

    async def discover(self, client: httpx.AsyncClient) -> list[ModelTarget]:
        names = list(self.model_names)
        if not names:
            names = await self._indexed_models(client) or list(DEFAULT_MODELS)
        targets = []
        for name in names:
            response = await client.get(f"{self.url}/v2/models/{name}")
            if response.status_code == 404:
                continue
            response.raise_for_status()
            metadata = response.json()
            try:
                bodies = [
                    json.dumps(build_infer_request(metadata, self.rng)).encode()
                    for _ in range(bodies_for(metadata))
                ]
            except (UnsupportedModel, KeyError, TypeError) as exc:
                log(f"{self.label}: skipping model {name}: {exc}")
                continue
            targets.append(
                ModelTarget(
                    name=name,
                    url=f"{self.url}/v2/models/{name}/infer",
                    weight=model_weight(name) * self.rng.uniform(0.5, 1.5),
                    bodies=bodies,
                )
            )
        return targets

    async def _indexed_models(self, client: httpx.AsyncClient) -> list[str]:
        try:
            response = await client.post(f"{self.url}/v2/repository/index", json={"ready": True})
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        # A model served in two versions (a canary) is listed twice: call it once.
        return list(
            dict.fromkeys(
                row["name"] for row in response.json() if row.get("state", "READY") == "READY"
            )
        )

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        backoff = 1.0
        tasks: set[asyncio.Task] = set()
        while not stop.is_set():
            try:
                self.models = await self.discover(client)
            except (httpx.HTTPError, ValueError) as exc:
                self._went_down(exc)
                await _sleep(backoff, stop)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if not self.models:
                log(f"{self.label}: no models to call yet")
                await _sleep(backoff, stop)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            names = ", ".join(m.name for m in self.models)
            if not self.up:
                log(f"{self.label}: reachable again, calling {names}")
            elif names != self.calling:
                log(f"{self.label}: calling {names} at about {self.rate:.1f}/s")
            self.calling = names
            self.up, self.stale, backoff = True, False, 1.0
            weights = np.array([m.weight for m in self.models])
            weights /= weights.sum()
            started = time.monotonic()
            while self.up and not self.stale and not stop.is_set():
                if time.monotonic() - started > REDISCOVER_S and not self.model_names:
                    break  # look again: a deployment may have added or removed a model
                rate = rate_at(
                    self.rate, time.monotonic() - started, period=self.period, phase=self.phase
                )
                if not await _sleep(self.rng.exponential(1 / max(rate, 0.01)), stop):
                    break
                if self.in_flight >= MAX_IN_FLIGHT:
                    self.stats["skipped"] += 1
                    continue
                model = self.models[self.rng.choice(len(self.models), p=weights)]
                body = model.bodies[self.rng.integers(len(model.bodies))]
                task = asyncio.create_task(self._send(client, model, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, client: httpx.AsyncClient, model: ModelTarget, body: bytes) -> None:
        self.in_flight += 1
        try:
            response = await client.post(
                model.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Session-Id": f"demo-{self.rng.integers(SESSIONS)}",
                    **self._authorization(model.name),
                },
            )
        except httpx.HTTPError as exc:
            self.stats["failed"] += 1
            self._went_down(exc)
            return
        finally:
            self.in_flight -= 1
        if response.status_code == 200:
            self.stats["ok"] += 1
        else:
            self.stats[f"http {response.status_code}"] += 1
            if response.status_code == 404:
                self.stale = True  # the model went away: find out what the node serves now

    def _authorization(self, model: str) -> dict[str, str]:
        if self.tokens is None:
            return {}
        return self.tokens.header(tenant_for(model, self.tokens.tenants, self.rng))

    def _went_down(self, exc: Exception) -> None:
        if self.up:
            log(f"{self.label}: unreachable ({type(exc).__name__}: {exc}); retrying with backoff")
        self.up = False


async def _sleep(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep, or return False early when asked to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return not stop.is_set()


def log(message: str) -> None:
    print(message, flush=True)


def make_drivers(
    urls: Sequence[str], *, rate: float, model_names: Sequence[str], seed: int | None
) -> list[NodeDriver]:
    """One driver per node, each with its own rate (±40 % of `rate`) and wave."""
    rng = np.random.default_rng(seed)
    drivers = []
    for url in urls:
        node_rng = np.random.default_rng(rng.integers(2**63))
        drivers.append(
            NodeDriver(
                url=url.rstrip("/"),
                rate=rate * node_rng.uniform(0.6, 1.4),
                model_names=model_names,
                rng=node_rng,
                period=node_rng.uniform(90, 240),
                phase=node_rng.uniform(0, 2 * math.pi),
            )
        )
    return drivers


async def _report(drivers: Sequence[NodeDriver], stop: asyncio.Event, every: float) -> None:
    previous = {d.url: Counter() for d in drivers}
    while await _sleep(every, stop):
        parts = []
        for d in drivers:
            delta = d.stats - previous[d.url]
            previous[d.url] = d.stats.copy()
            ok = delta.pop("ok", 0)
            other = ", ".join(f"{v} {k}" for k, v in sorted(delta.items()))
            parts.append(f"{d.label} {ok / every:.1f}/s" + (f" ({other})" if other else ""))
        log(f"last {every:.0f} s: " + "; ".join(parts))


async def run_traffic(
    urls: Sequence[str],
    *,
    rate: float = 2.0,
    model_names: Sequence[str] = (),
    duration: float | None = None,
    seed: int | None = None,
    report_every: float = REPORT_EVERY_S,
    stop: asyncio.Event | None = None,
    tokens: TenantTokens | None = None,
) -> list[NodeDriver]:
    """Send traffic until `stop` is set, `duration` has passed or a signal arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    drivers = make_drivers(urls, rate=rate, model_names=model_names, seed=seed)
    for driver in drivers:
        driver.tokens = tokens
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT * len(drivers) + 4)
    timeout = httpx.Timeout(10.0, connect=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(d.run(client, stop)) for d in drivers]
        tasks.append(asyncio.create_task(_report(drivers, stop, report_every)))
        if tokens is not None:
            await tokens.renew(client)  # the first requests already carry tokens
            tasks.append(asyncio.create_task(tokens.run(client, stop)))
        await asyncio.gather(*tasks)
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)
    return drivers


def _rate(value: str) -> float:
    rate = float(value)
    if not 0 < rate <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"the rate must be above 0 and at most {MAX_RATE:g}/s")
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        required=True,
        help="comma-separated base URLs of nodes, e.g. http://127.0.0.1:8101",
    )
    parser.add_argument(
        "--rate", type=_rate, default=2.0, help="average requests per second per node (default 2)"
    )
    parser.add_argument(
        "--models", default="", help="comma-separated model names (default: ask each node)"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    parser.add_argument(
        "--console",
        default=None,
        help="the console's URL: call as the tenants whose API keys are in "
        "OUTPOST_DEMO_TENANT_KEYS (slug=key,…), with their ephemeral tokens",
    )
    args = parser.parse_args(argv)
    tokens = None
    if args.console:
        try:
            keys = parse_tenant_keys(os.environ.get("OUTPOST_DEMO_TENANT_KEYS", ""))
        except ValueError as exc:
            parser.error(f"OUTPOST_DEMO_TENANT_KEYS: {exc}")
        if keys:
            tokens = TenantTokens(args.console, keys)
            log(f"calling as tenants {', '.join(sorted(keys))} with their ephemeral tokens")
    urls = [u.strip() for u in args.nodes.split(",") if u.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not urls:
        parser.error("--nodes needs at least one URL")
    log(f"sending about {args.rate:g} requests/s to each of {len(urls)} nodes")
    drivers = asyncio.run(
        run_traffic(
            urls,
            rate=args.rate,
            model_names=models,
            duration=args.duration,
            seed=args.seed,
            tokens=tokens,
        )
    )
    total = sum((d.stats for d in drivers), Counter())
    log(f"stopped after {total['ok']} answered requests ({sum(total.values()) - total['ok']} not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
