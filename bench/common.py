"""Shared helpers for the benchmarks in bench/.

A benchmark is a script `bench/<name>.py` that defines `main(argv=None) -> int` and is
runnable alone (`.venv/bin/python bench/<name>.py [--duration S] [--quick]`); `bench/run_all.py`
runs every such script in order. This module gives them the common parts: command-line
options, free loopback ports, server processes started and stopped by the bench, the wrk load
generator and its parsed output, Prometheus samples, the state of an enrolled agent made
without a console (`write_enrolled_state`), machine information, a text table and the JSON
result file.

Conventions:
- A benchmark measures; it exits 0 even when a target is missed and non-zero only when
  something failed to run (raise `BenchError` for that).
- Results are ratios against a baseline measured in the same run: the machine is shared and
  noisy, so absolute numbers from different runs are not comparable.
- Servers listen on 127.0.0.1 only, on a port picked by `free_port()`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """Something needed for the measurement failed to run (as opposed to a missed target)."""


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the results."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- command line ---------------------------------------------------------------------------


def base_parser(description: str, *, duration: int = 8, warmup: int = 2) -> argparse.ArgumentParser:
    """The options every benchmark accepts (run_all.py passes them through)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        metavar="S",
        help=f"seconds per measurement, a whole number (default {duration}; 2 with --quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="S",
        help=f"seconds of warm-up load before each measurement (default {warmup}; 1 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run: numbers are indicative only"
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON result")
    parser.set_defaults(_default_duration=duration, _default_warmup=warmup)
    return parser


def resolve_timing(args: argparse.Namespace) -> None:
    """Fill in --duration/--warmup from --quick or the defaults; validate them."""
    if args.duration is None:
        args.duration = 2 if args.quick else args._default_duration
    if args.warmup is None:
        args.warmup = 1 if args.quick else args._default_warmup
    if args.duration < 1 or args.warmup < 0:
        raise SystemExit("--duration must be >= 1 and --warmup >= 0 (whole seconds: wrk's -d)")


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One plain HTTP/1.1 request (stdlib only; used for readiness and sanity checks)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class ServerProcess:
    """A server under test: its own process, started and stopped by the bench.

    Output goes to a log file (never a pipe nobody reads, which would block the server once
    full); the tail of it is shown when the server fails to start.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        log_dir: Path,
        ready_path: str = "/v2/health/ready",
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.ready_path = ready_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> None:
        log(f"starting {self.name}: {' '.join(self.argv)}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(
                f"{self.name} is not running (exit code {code}); log tail:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll the readiness path until it answers 200; return the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                resp = http_request("GET", self.url(self.ready_path), timeout=2.0)
                if resp.status == 200:
                    waited = time.monotonic() - start
                    log(f"{self.name} ready on port {self.port} after {waited:.1f}s")
                    return waited
                last_error = f"HTTP {resp.status}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} not ready after {timeout:.0f}s ({last_error}); log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {timeout:.0f}s; killing it")
            self.proc.kill()
            self.proc.wait(timeout=timeout)

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(servers: Iterable[ServerProcess], timeout: float = 10.0) -> None:
    """Stop many servers at once: SIGTERM to every one first, then wait for each (SIGKILL for
    those still running at the deadline), so N servers take one shutdown, not N in a row."""
    running = [s for s in servers if s.proc is not None and s.proc.poll() is None]
    for server in running:
        with contextlib.suppress(ProcessLookupError):
            server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    for server in running:
        proc = server.proc
        assert proc is not None
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{server.name} ignored SIGTERM for {timeout:.0f}s; killing it")
            proc.kill()
            proc.wait(timeout=timeout)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (labels must match exactly, in the order
    given); None when the sample is absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :].split()[0])
    return None


def metric_samples(text: str, name: str) -> dict[str, float]:
    """Every sample of one metric family: {'label="v",...' or '': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            out[head[len(name) :].strip("{}")] = float(value)
    return out


# --- an enrolled agent without a console ----------------------------------------------------


# EUR per 1,000 inferences by grade: (local, regional), as bench/policy.py's price book.
BENCH_PRICES = {
    "tiny": ("0.05", "0.08"),
    "medium": ("0.40", "0.65"),
    "large": ("2.00", "3.20"),
}


@dataclass
class EnrolledState:
    """What `write_enrolled_state` put in an agent's state dir, and what a client must send."""

    state_dir: Path
    console_url: str
    node_uid: str
    tenant: str
    session_id: str
    token: str
    key_id: str
    bundle_revision: int

    @property
    def headers(self) -> dict[str, str]:
        """Tenant context for every request (DESIGN §4): the token and a session, so the
        agent's spend ledger is exercised too."""
        return {"Authorization": f"Bearer {self.token}", "X-Session-Id": self.session_id}

    def describe(self) -> dict[str, Any]:
        return {
            "console_url": self.console_url,
            "console": "down (nothing listens there; the agent retries its heartbeats with "
            "backoff and serves on its saved identity and bundle)",
            "node_uid": self.node_uid,
            "tenant": self.tenant,
            "session_id": self.session_id,
            "key_id": self.key_id,
            "bundle_revision": self.bundle_revision,
        }


def write_enrolled_state(
    state_dir: Path,
    grades: Mapping[str, str],
    *,
    console_url: str | None = None,
    tenant: str = "bench",
    region: str = "bench",
    node_class: str = "standard",
    node_uid: str = "bench-node-00000001",
    session_id: str = "bench-session-1",
    valid_for: timedelta = timedelta(days=1),
) -> EnrolledState:
    """Make `state_dir` the state of an agent that enrolled with a console and holds a policy
    bundle, without any console: an identity naming a freshly generated Ed25519 console key,
    and a bundle signed by it that lets `tenant` use the models of `grades` (served name ->
    grade) locally. The agent started on it with `--console <console_url>` requires a token on
    every request and decides each by the bundle, as in production; `console_url` defaults to
    a free loopback port where nothing listens (the console is down, which an agent tolerates).

    Plain protocol calls (inference/protocol.py, inference/agent.py), no Django: the bundle is
    what fleet/policy_plane.py would compile for one tenant with privacy `any`, fallback
    `reject`, `best_effort`, a spend cap no run reaches, prices for every grade served locally
    and regionally, and class thresholds with no thermal envelope and ceilings no run reaches.
    """
    from inference import protocol
    from inference.agent import save_identity
    from inference.bundle_store import BUNDLE_FILE

    key = protocol.generate_private_key()
    public_b64 = protocol.public_key_to_b64(key.public_key())
    kid = protocol.key_id(key.public_key())
    console_url = console_url or f"http://{LOOPBACK}:{free_port()}"
    save_identity(
        state_dir,
        protocol.EnrollResponse(
            node_uid=node_uid,
            name="bench-agent",
            region=region,
            node_class=node_class,
            credential=protocol.new_secret("opn"),
            console_public_key=public_b64,
            heartbeat_interval_s=protocol.DEFAULT_HEARTBEAT_INTERVAL_S,
        ),
    )
    now = datetime.now(UTC)
    used = sorted(set(grades.values()))
    bundle = protocol.PolicyBundle(
        revision=1,
        issued_at=now,
        expires_at=now + valid_for,
        tenants=[
            protocol.TenantRules(
                slug=tenant,
                privacy="any",
                fallback="reject",
                quality="best_effort",
                max_spend_per_session="1000000",  # EUR: ~10^10 tiny inferences
                currency="EUR",
                on_budget_exhausted="alert",
            )
        ],
        prices=[
            protocol.PriceRow(grade=grade, serving=serving, currency="EUR", per_1000=price)
            for grade in used
            for serving, price in zip(("local", "regional"), BENCH_PRICES[grade], strict=True)
        ],
        thresholds=[
            protocol.ClassThresholds(
                node_class=node_class,
                thermal_envelope_c=None,
                cost_ceilings={grade: "1000" for grade in used},
                hourly_cost="0.15",
            )
        ],
        models=[protocol.ModelGrade(name=n, grade=g) for n, g in sorted(grades.items())],
        trusted_keys=[public_b64],
    )
    signed = protocol.sign_bundle(key, bundle)
    path = state_dir / BUNDLE_FILE
    path.write_text(signed.model_dump_json())
    path.chmod(0o600)
    token = protocol.issue_token(
        key,
        protocol.TokenClaims(
            tenant=tenant,
            scopes=[protocol.SCOPE_INFER],
            issued_at=now,
            expires_at=now + valid_for,
            token_id="bench-token-00000001",
            key_id=kid,
        ),
    )
    return EnrolledState(
        state_dir=state_dir,
        console_url=console_url,
        node_uid=node_uid,
        tenant=tenant,
        session_id=session_id,
        token=token,
        key_id=kid,
        bundle_revision=bundle.revision,
    )


# --- wrk ------------------------------------------------------------------------------------

WRK_INSTALL_HINT = "apt-get update && apt-get install -y wrk   (Debian/Ubuntu package 'wrk')"

# POSTs the same body (read from the file named by the first script argument) on every request
# and prints one machine-readable line from done(). Latencies are in microseconds in wrk.
WRK_LUA = r"""
-- Generated by bench/common.py: POST one fixed body, report a JSON summary.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.3f,"mean":%.3f,"max":%.3f,"stdev":%.3f,' ..
    '"p50":%.3f,"p90":%.3f,"p99":%.3f,"p999":%.3f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def find_wrk(install: bool = False) -> str:
    """Path of wrk. If missing: install it with apt when asked to (and root), else fail.

    Installing system packages is opt-in (`--install-wrk`), not automatic: a benchmark that
    silently runs apt-get changes the machine it measures, needs the network, and on a shared
    box would contend for the dpkg lock and CPU with other people's work.
    """
    path = shutil.which("wrk")
    if path:
        return path
    if install:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError(
                f"--install-wrk needs root and apt-get; install it with: {WRK_INSTALL_HINT}"
            )
        log("wrk not found; installing it with apt-get (--install-wrk)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, env=env)
        path = shutil.which("wrk")
        if path:
            return path
    raise BenchError(
        "wrk (the HTTP load generator) is not installed. Install it with:\n"
        f"    {WRK_INSTALL_HINT}\n"
        "or re-run as root with --install-wrk to let the bench install it."
    )


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


def write_wrk_script(directory: Path) -> Path:
    path = directory / "post_body.lua"
    path.write_text(WRK_LUA)
    return path


@dataclass
class WrkResult:
    connections: int
    threads: int
    duration_s: float
    requests: int
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_wrk(
    wrk: str,
    url: str,
    *,
    script: Path,
    body_path: Path,
    connections: int,
    duration: int,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    timeout_s: int = 10,
) -> WrkResult:
    """Run wrk against `url`, POSTing the body in `body_path`; parse the done() summary."""
    threads = max(1, min(threads, connections))  # wrk needs at least one connection per thread
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s}s"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += ["-s", str(script), url, "--", str(body_path)]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout_s + 30
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"
        )
    data = json.loads(line.removeprefix("WRK_JSON "))
    lat = data["latency_us"]
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        connections=connections,
        threads=threads,
        duration_s=round(seconds, 3),
        requests=int(data["requests"]),
        req_per_s=data["requests"] / seconds if seconds else 0.0,
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        p999_ms=lat["p999"] / 1000,
        mean_ms=lat["mean"] / 1000,
        max_ms=lat["max"] / 1000,
        errors={k: int(v) for k, v in data["errors"].items()},
    )


# --- statistics -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# --- reporting ------------------------------------------------------------------------------


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def machine_info(packages: Iterable[str] = ()) -> dict[str, Any]:
    """Where and when the numbers were taken."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": package_versions(packages),
    }


def fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    return format(value, spec) if spec else str(value)


def print_table(
    columns: Sequence[tuple[str, str, str]],
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    file: Any = None,
) -> None:
    """Print rows as an aligned text table. columns: (key, header, format spec)."""
    out = file or sys.stdout
    cells = [[fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    # Text columns are left-aligned, numeric columns (every cell a number or "-") right-aligned.
    numeric = [all(_numeric(r[i]) or r[i] == "-" for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    if title:
        print(title, file=out)
    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)
    print(file=out, flush=True)


def _numeric(text: str) -> bool:
    stripped = text.lstrip("+-").rstrip("x%").replace(".", "", 1).replace(",", "")
    return stripped.isdigit()


def run_recorded(name: str, output: Path, result: dict[str, Any], body) -> int:
    """Run `body(result)`, record how it ended in `result["status"]` (ok, failed with the
    error, interrupted) and the load at the end, and write `result` to `output` whatever
    happened. The exit code: 0 ok, 1 failed, 130 interrupted."""
    code = 0
    try:
        body(result)
        result["status"] = "ok"
    except BenchError as exc:
        result["status"] = "failed"
        result["error"] = str(exc)
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        code = 130
    finally:
        result["machine"]["loadavg_at_end"] = list(os.getloadavg())
        write_json(output, result)
        log(f"wrote {output}")
    return code


def write_json(path: Path, data: Any) -> Path:
    """Write the result file atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


# --- a PostgreSQL database of a benchmark's own (bench/ingest.py, bench/billing_run.py) -------


def database_url(server: str, name: str) -> str:
    return f"{server.rstrip('/')}/{name}"


def check_bench_database(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse a --database a benchmark should not drop: only plain names containing 'bench'."""
    if "bench" not in name or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        parser.error(
            "--database must be a plain lower-case name containing 'bench' (it is dropped)"
        )


def recreate_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint(conn) -> None:
    """Start a timed pass with the WAL of the one before flushed (it would otherwise be
    written during this one)."""
    conn.commit()
    conn.execute("CHECKPOINT")
    conn.commit()


def raise_interrupt(signum: int, frame: object) -> None:
    """A SIGTERM handler: stop as Ctrl-C does, so cleanup (dropping the database) runs."""
    raise KeyboardInterrupt
