"""What the node agent costs on top of onnxruntime, and what it saves over a hand-written server.

Measured on the same machine, in one run (the machine is shared and noisy, so every result is
read as a ratio against a baseline from the same run):

- raw:         in-process `session.run`, batch 1, in a tight loop (per-call latency, calls/s);
- floor:       a raw ASGI app on uvicorn + uvloop + httptools that answers every request with a
               fixed small JSON without doing anything (bench/floor_server.py) - the cheapest
               any Python server on this stack can be;
- handwritten: FastAPI + uvicorn + onnxruntime written the way a user would
               (bench/handwritten_server.py), uvicorn with its default settings;
- agent:       the Outpost node agent, `python -m inference serve`,

on a tiny and a medium model, at 1 and 32 concurrent connections. The HTTP servers each run as
their own process on a free 127.0.0.1 port; the load comes from wrk, POSTing the same Open
Inference Protocol v2 JSON body to every server; a Lua done() hook reports the percentiles.

Choices, and why:
- wrk runs with one thread (-t1) by default. The machine has 2 cores and every server under
  test is a single Python process whose event loop saturates about one core; a single wrk
  thread drives far more requests per second than any of them can answer, so a second wrk
  thread would only take CPU away from the server being measured.
- Nothing is pinned to cores. With 2 cores, pinning wrk to one and the server to the other
  would starve the server's onnxruntime and FastAPI threadpool threads of the second core a
  real deployment has, and it cannot keep out the other work running on a shared machine.
- The cells are interleaved (for each model and connection count, the servers one after the
  other, all servers up at once), so a burst of background load hits neighbouring cells rather
  than one server's whole series. Each cell gets a short warm-up run before the measured one.
- wrk (not wrk2) is a closed-loop generator: at 32 connections the latency percentiles include
  queueing in the server; compare them between servers, not with the raw per-call latency.

Run: .venv/bin/python bench/node_overhead.py [--duration S] [--quick]
Writes bench/results/node_overhead.json. Exit 0 even when a target is missed; non-zero when
something failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    ServerProcess,
    WrkResult,
    base_parser,
    find_wrk,
    free_port,
    http_request,
    log,
    machine_info,
    median,
    percentile,
    print_table,
    resolve_timing,
    run_wrk,
    write_json,
    write_wrk_script,
    wrk_version,
)

NAME = "node_overhead"

# Benchmark key -> model file name (without .onnx) written by `python -m inference demo-models`.
MODELS = {"tiny": "tiny-classifier", "medium": "random-mlp-medium"}
SERVERS = ("floor", "handwritten", "agent")
CONNECTIONS = (1, 32)

# The targets: (model, connections, metric, comparison, target).
RPS_TARGETS = {"tiny": 4.0, "medium": 3.5}  # agent req/s / hand-written req/s at 32 conns, >=
P50_TARGET = 0.7  # agent p50 / hand-written p50 at 1 conn, <=, for every model

PACKAGES = (
    "onnxruntime",
    "numpy",
    "onnx",
    "uvicorn",
    "uvloop",
    "httptools",
    "fastapi",
    "pydantic",
    "starlette",
    "orjson",
)


# --- inputs ---------------------------------------------------------------------------------


@dataclass
class ModelCase:
    """One model under test: the request body every server gets, and the expected answer."""

    key: str
    name: str
    path: Path
    input_name: str
    shape: list[int]
    data: Any  # numpy float32 array of `shape`
    body_path: Path
    expected: dict[str, Any] = field(default_factory=dict)  # output name -> numpy array

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.path.name,
            "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
            "input": self.input_name,
            "shape": self.shape,
            "datatype": "FP32",
            "body_bytes": self.body_path.stat().st_size,
            "outputs": sorted(self.expected),
        }


def prepare_models(models_dir: Path | None, names: list[str], workdir: Path) -> Path:
    """A directory holding exactly the models under test, for every server to serve.

    The models come from the given directory, or are freshly written by the agent's own
    `demo-models` command. Only the benchmarked ones are copied over, so that the other demo
    models (the large convnet) cost no server start-up time or memory during the run.
    """
    source = models_dir
    if source is None:
        source = workdir / "demo-models"
        source.mkdir()
        cmd = [sys.executable, "-m", "inference", "demo-models", str(source)]
        log(f"writing demo models: {' '.join(cmd)}")
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr}")
    target = workdir / "models"
    target.mkdir()
    for name in names:
        path = source / f"{name}.onnx"
        if not path.exists():
            raise BenchError(f"model {path} not found")
        shutil.copy2(path, target / path.name)
    return target


def load_case(key: str, name: str, models_dir: Path, workdir: Path) -> ModelCase:
    """Read the model's input from the model itself; build a batch-1 body and its answer."""
    import numpy as np
    import onnxruntime as ort

    path = models_dir / f"{name}.onnx"
    if not path.exists():
        raise BenchError(f"model {path} not found")
    session = ort.InferenceSession(str(path))
    inp = session.get_inputs()[0]
    if inp.type != "tensor(float)":
        raise BenchError(f"{path.name}: input {inp.name} is {inp.type}, the bench sends FP32")
    # Batch 1: every symbolic or unknown dimension becomes 1.
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    rng = np.random.default_rng(20240601)
    data = rng.standard_normal(shape).astype(np.float32)
    body = {
        "inputs": [
            {"name": inp.name, "shape": shape, "datatype": "FP32", "data": data.ravel().tolist()}
        ]
    }
    body_path = workdir / f"{key}-body.json"
    body_path.write_text(json.dumps(body, separators=(",", ":")))
    # The answer, from the very floats in the body (JSON round trip of float32 is exact).
    sent = np.array(body["inputs"][0]["data"], dtype=np.float32).reshape(shape)
    outputs = session.run(None, {inp.name: sent})
    expected = {
        meta.name: value for meta, value in zip(session.get_outputs(), outputs, strict=True)
    }
    return ModelCase(key, name, path, inp.name, shape, sent, body_path, expected)


# --- raw baseline ---------------------------------------------------------------------------


def measure_raw(case: ModelCase, duration: float, warmup: float) -> dict[str, Any]:
    """In-process session.run, batch 1, tight loop; default session options (as the
    hand-written server uses)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(case.path))
    feeds = {case.input_name: case.data}
    run = session.run
    clock = time.perf_counter_ns
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        run(None, feeds)
    latencies: list[int] = []
    append = latencies.append
    start = clock()
    stop_at = start + int(duration * 1e9)
    now = start
    while now < stop_at:
        t0 = clock()
        run(None, feeds)
        now = clock()
        append(now - t0)
    elapsed = (now - start) / 1e9
    latencies.sort()
    calls = len(latencies)
    return {
        "calls": calls,
        "duration_s": round(elapsed, 3),
        "calls_per_s": calls / elapsed,
        "mean_ms": sum(latencies) / calls / 1e6,
        "p50_ms": percentile(latencies, 50) / 1e6,
        "p90_ms": percentile(latencies, 90) / 1e6,
        "p99_ms": percentile(latencies, 99) / 1e6,
        "intra_op_threads": "default",
    }


# --- servers --------------------------------------------------------------------------------


def make_servers(names: list[str], models_dir: Path, workdir: Path) -> dict[str, ServerProcess]:
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1"]
    servers: dict[str, ServerProcess] = {}
    for name in names:
        port = free_port()
        if name == "floor":
            # The floor is the stack's minimum cost, so no access log either.
            argv = [*uvicorn, "--port", str(port), "--no-access-log", "floor_server:app"]
            env = {}
        elif name == "handwritten":
            # uvicorn defaults, as a user runs it: one worker, loop/http "auto", access log on.
            argv = [*uvicorn, "--port", str(port), "handwritten_server:app"]
            env = {"MODEL_DIR": str(models_dir)}
        elif name == "agent":
            state = workdir / "agent-state"
            state.mkdir(exist_ok=True)
            argv = [py, "-m", "inference", "serve", "--models", str(models_dir),
                    "--port", str(port), "--state-dir", str(state)]  # fmt: skip
            env = {}
        else:
            raise BenchError(f"unknown server {name!r}")
        servers[name] = ServerProcess(name, argv, port=port, log_dir=workdir, env=env)
    return servers


def check_answer(server: ServerProcess, case: ModelCase) -> dict[str, Any]:
    """One request before the load: the server must answer 200 with the right outputs
    (the floor answers a fixed body by design, so only its status is checked)."""
    import numpy as np

    url = server.url(f"/v2/models/{case.name}/infer")
    resp = http_request(
        "POST", url, case.body_path.read_bytes(), {"Content-Type": "application/json"}
    )
    if resp.status != 200:
        raise BenchError(
            f"{server.name} answered HTTP {resp.status} for {url}: {resp.body[:500]!r}"
        )
    if server.name == "floor":
        return {}
    got = {out["name"]: out for out in resp.json().get("outputs", [])}
    for name, want in case.expected.items():
        if name not in got:
            raise BenchError(f"{server.name}: output {name!r} missing from {resp.body[:300]!r}")
        value = np.asarray(got[name]["data"]).reshape(want.shape)
        if not np.allclose(value, want, rtol=1e-4, atol=1e-5):
            raise BenchError(f"{server.name}: output {name!r} differs from onnxruntime's")
    return {k: v for k, v in resp.headers.items() if k.startswith("x-outpost")}


# --- the run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--connections",
        default=",".join(map(str, CONNECTIONS)),
        help="comma-separated concurrent connection counts (default 1,32)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)} (default: all)",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of tiny,medium"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="use the .onnx files here instead of `python -m inference demo-models`",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every cell N times (interleaved rounds) and report the median",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads (default 1: one wrk thread outdrives these single-process servers and leaves the other core to them)",
    )
    parser.add_argument(
        "--install-wrk",
        action="store_true",
        help="if wrk is missing, install it with apt-get (needs root)",
    )
    args = parser.parse_args(argv)
    resolve_timing(args)
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.servers = [s for s in args.servers.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    for s in args.servers:
        if s not in SERVERS:
            parser.error(f"unknown server {s!r}")
    for m in args.models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}")
    if args.repeats < 1 or not args.connections or min(args.connections) < 1:
        parser.error("--repeats and --connections must be >= 1")
    return args


def summarize_cell(runs: list[WrkResult]) -> dict[str, Any]:
    """Median over repeats of each figure (a single run is reported as is)."""
    keys = ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms", "max_ms")
    row: dict[str, Any] = {k: median(getattr(r, k) for r in runs) for k in keys}
    row["requests"] = sum(r.requests for r in runs)
    row["errors"] = sum(r.error_count for r in runs)
    row["runs"] = [r.to_dict() for r in runs]
    return row


def compute_ratios(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """The issue's targets, each with its value and PASS/MISS (None when not measured)."""
    cell = {(r["model"], r["connections"], r["server"]): r for r in rows}

    def ratio(model: str, conns: int, metric: str) -> float | None:
        agent = cell.get((model, conns, "agent"))
        hand = cell.get((model, conns, "handwritten"))
        if not agent or not hand or not hand[metric]:
            return None
        return agent[metric] / hand[metric]

    ratios = []
    for model in models:
        value = ratio(model, 32, "req_per_s")
        ratios.append({
            "name": f"{model}: agent req/s / hand-written req/s @32",
            "model": model, "connections": 32, "metric": "req_per_s",
            "value": value, "target": RPS_TARGETS[model], "comparison": ">=",
            "result": None if value is None else ("PASS" if value >= RPS_TARGETS[model] else "MISS"),
        })  # fmt: skip
    for model in models:
        value = ratio(model, 1, "p50_ms")
        ratios.append({
            "name": f"{model}: agent p50 / hand-written p50 @1",
            "model": model, "connections": 1, "metric": "p50_ms",
            "value": value, "target": P50_TARGET, "comparison": "<=",
            "result": None if value is None else ("PASS" if value <= P50_TARGET else "MISS"),
        })  # fmt: skip
    return ratios


def context_figures(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Informational: how close the agent gets to the floor of its own server stack."""
    cell = {(r["model"], r["connections"], r["server"]): r for r in rows}
    out = []
    for model in models:
        for conns in sorted({r["connections"] for r in rows}):
            agent, floor = cell.get((model, conns, "agent")), cell.get((model, conns, "floor"))
            if agent and floor:
                out.append({
                    "model": model, "connections": conns,
                    "agent_rps_over_floor_rps": agent["req_per_s"] / floor["req_per_s"],
                    "agent_p50_minus_floor_p50_ms": agent["p50_ms"] - floor["p50_ms"],
                })  # fmt: skip
    return out


def print_report(
    rows: list[dict[str, Any]],
    raw: dict[str, Any],
    ratios: list[dict[str, Any]],
    context: list[dict[str, Any]],
    args: Any,
) -> None:
    table: list[dict[str, Any]] = []
    for model in args.models:
        r = raw[model]
        table.append({
            "model": model, "conns": "-", "server": "raw session.run",
            "req_per_s": r["calls_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
        })  # fmt: skip
        for row in rows:
            if row["model"] == model:
                table.append({**row, "conns": row["connections"]})
    print_table(
        [
            ("model", "model", ""),
            ("conns", "conns", ""),
            ("server", "server", ""),
            ("req_per_s", "req/s", ",.0f"),
            ("p50_ms", "p50 ms", ".3f"),
            ("p99_ms", "p99 ms", ".3f"),
            ("p50_over_raw_ms", "p50-raw ms", "+.3f"),
            ("p50_over_raw_x", "p50/raw", ".1f"),
            ("rps_of_raw", "req/s/raw", ".2f"),
            ("errors", "errors", ""),
        ],
        table,
        title=(
            f"\nnode overhead: {args.duration}s per cell after {args.warmup}s warm-up, "
            f"wrk -t{args.wrk_threads}, repeats {args.repeats}"
            " (raw = in-process per-call latency and calls/s)"
        ),
    )
    lines = []
    for r in ratios:
        value = "not measured" if r["value"] is None else f"{r['value']:.2f}x"
        result = r["result"] or "-"
        lines.append(f"  {r['name']:<46} {value:>13}  target {r['comparison']} "
                     f"{r['target']:.1f}x  {result}")  # fmt: skip
    print("key ratios:")
    print("\n".join(lines))
    if context:
        print("agent vs the floor of its server stack (informational):")
        for c in context:
            print(f"  {c['model']:<6} @{c['connections']:<3} req/s {c['agent_rps_over_floor_rps']:.2f}x "
                  f"of floor, p50 +{c['agent_p50_minus_floor_p50_ms']:.3f} ms over floor")  # fmt: skip
    print(flush=True)


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    wrk = find_wrk(install=args.install_wrk)
    result["parameters"]["wrk"] = wrk_version(wrk)
    with (
        tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        script = write_wrk_script(workdir)
        models_dir = prepare_models(args.models_dir, [MODELS[k] for k in args.models], workdir)
        cases = {key: load_case(key, MODELS[key], models_dir, workdir) for key in args.models}
        result["parameters"]["models"] = {key: case.describe() for key, case in cases.items()}

        servers = make_servers(args.servers, models_dir, workdir)
        result["parameters"]["servers"] = {n: s.argv for n, s in servers.items()}
        for server in servers.values():
            stack.enter_context(server)
        for server in servers.values():
            for case in cases.values():
                headers = check_answer(server, case)
                if headers:  # the agent's X-Outpost-* headers on a first, cold request
                    result.setdefault("outpost_headers", {})[f"{server.name}/{case.key}"] = headers

        # Raw in-process baseline: the servers are up (so a broken one fails the run early)
        # but idle.
        raw: dict[str, Any] = {}
        for key, case in cases.items():
            log(f"raw session.run on {case.name} for {args.duration}s")
            raw[key] = measure_raw(case, args.duration, args.warmup)
        result["raw"] = raw

        runs: dict[tuple[str, int, str], list[WrkResult]] = {}
        total = args.repeats * len(cases) * len(args.connections) * len(servers)
        done = 0
        for _ in range(args.repeats):
            for key, case in cases.items():
                for conns in args.connections:
                    for name, server in servers.items():
                        url = server.url(f"/v2/models/{case.name}/infer")
                        common = {"script": script, "body_path": case.body_path,
                                  "connections": conns, "threads": args.wrk_threads}  # fmt: skip
                        if args.warmup:
                            run_wrk(wrk, url, duration=args.warmup, **common)
                        res = run_wrk(wrk, url, duration=args.duration, **common)
                        server.check_alive()
                        done += 1
                        log(f"[{done}/{total}] {key} c={conns} {name}: {res.req_per_s:,.0f} req/s "
                            f"p50 {res.p50_ms:.3f} ms p99 {res.p99_ms:.3f} ms"
                            + (f" errors {res.errors}" if res.error_count else ""))  # fmt: skip
                        if res.errors.get("status"):
                            raise BenchError(
                                f"{name} answered {res.errors['status']} non-2xx responses under "
                                f"load ({key}, c={conns}); log tail:\n{server.log_tail()}"
                            )
                        runs.setdefault((key, conns, name), []).append(res)

    rows = []
    for (key, conns, name), cell_runs in runs.items():
        row = {"model": key, "connections": conns, "server": name, **summarize_cell(cell_runs)}
        base = raw[key]
        row["p50_over_raw_ms"] = row["p50_ms"] - base["p50_ms"]
        row["p50_over_raw_x"] = row["p50_ms"] / base["p50_ms"]
        row["rps_of_raw"] = row["req_per_s"] / base["calls_per_s"]
        rows.append(row)
    result["rows"] = rows
    result["ratios"] = compute_ratios(rows, args.models)
    result["agent_vs_floor"] = context_figures(rows, args.models)
    print_report(rows, raw, result["ratios"], result["agent_vs_floor"], args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS_DIR / f"{NAME}.json"
    result: dict[str, Any] = {
        "benchmark": NAME,
        "status": "running",
        "machine": machine_info(PACKAGES),
        "parameters": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "repeats": args.repeats,
            "connections": args.connections,
            "server_names": args.servers,
            "model_keys": args.models,
            "wrk_threads": args.wrk_threads,
            "onnxruntime_session_options": "defaults (raw and hand-written)",
            "pinning": "none",
        },
        "targets": {
            "agent_rps_over_handwritten_rps_at_32": RPS_TARGETS,
            "agent_p50_over_handwritten_p50_at_1": P50_TARGET,
        },
    }
    code = 0
    try:
        run(args, result)
        result["status"] = "ok"
    except BenchError as exc:
        result["status"] = "failed"
        result["error"] = str(exc)
        print(f"node_overhead: FAILED: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        code = 130
    finally:
        result["machine"]["loadavg_at_end"] = list(os.getloadavg())
        write_json(output, result)
        log(f"wrote {output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
