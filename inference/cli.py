"""`python -m inference serve|demo-models|register`: the agent's command line.

`serve` binds the socket itself (so a taken port fails before anything loads, and `--port 0`
picks a free one), prints one start line, and runs the raw ASGI app of `inference/server.py`
under uvicorn with uvloop and httptools. Models load in the background: `/v2/health/live`
answers at once, `/v2/health/ready` once every model is warmed up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from inference import __version__
from inference.config import (
    DEFAULT_MAX_BODY_BYTES,
    GRAPH_OPTIMIZATION_LEVELS,
    PROVIDER_ALIASES,
    BatchSettings,
    SessionSettings,
    SettingsError,
    parse_batch_size,
    parse_delay_ms,
)

if TYPE_CHECKING:  # `register` imports the SDK (httpx, pydantic) only when it runs
    from inference.agent import ConsoleLink
    from inference.gate import PolicyGate
    from inference.metrics import AgentMetrics
    from inference.protocol import ModelVersionInfo
    from inference.usage_meter import UsageMeter

log = logging.getLogger("inference")

ADMIN_TOKEN_ENV = "OUTPOST_NODE_ADMIN_TOKEN"  # noqa: S105 - the name of the variable, not a secret
API_KEY_ENV = "OUTPOST_API_KEY"
# The node's key for tokenising sensitive parameters (inference/enforcement.py), in --state-dir.
TOKENISE_KEY_FILE = "tokenise.key"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference", description="Outpost node agent (OIP v2 over ONNX Runtime)"
    )
    parser.add_argument("--version", action="version", version=f"outpost-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the ONNX models of a directory")
    serve.add_argument("--models", required=True, type=Path, help="directory of *.onnx files")
    serve.add_argument("--port", required=True, type=int, help="TCP port (0 picks a free one)")
    serve.add_argument(
        "--state-dir", required=True, type=Path, help="where the node keeps its identity and state"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--console", help="console base URL; enables enrollment and heartbeats")
    serve.add_argument(
        "--enroll",
        metavar="TOKEN",
        help="one-time enrollment token (ignored when the state dir has an identity)",
    )
    serve.add_argument(
        "--advertise", metavar="URL", help="base URL the console should use to reach this node"
    )
    serve.add_argument(
        "--admin-token",
        help=f"bearer token for model control (or env {ADMIN_TOKEN_ENV}); "
        "without one, model control is allowed from loopback only",
    )
    tuning = serve.add_argument_group("tuning")
    tuning.add_argument("--max-batch-size", type=int, default=32)
    tuning.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=1.0,
        help="longest a request that arrived while its model was busy waits "
        "for companions (default 1.0)",
    )
    tuning.add_argument(
        "--inline-threshold-us",
        type=float,
        default=150.0,
        help="batches expected to run faster than this run on the event loop (default 150)",
    )
    tuning.add_argument(
        "--idle-inline-threshold-us",
        type=float,
        default=1000.0,
        help="the same for requests that found their model idle, where no other request "
        "waits for the event loop (default 1000)",
    )
    tuning.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="ONNX Runtime threads per run (default: cores - 1, at least 2 where there are 2 "
        "cores; 0 lets ONNX Runtime choose)",
    )
    tuning.add_argument(
        "--intra-op-spin-us",
        type=int,
        default=300,
        help="how long ONNX Runtime threads spin for more work after a run before they sleep, "
        "in microseconds (default 300; 0: never spin)",
    )
    tuning.add_argument("--graph-optimization", choices=GRAPH_OPTIMIZATION_LEVELS, default="all")
    tuning.add_argument(
        "--execution-provider",
        action="append",
        default=[],
        metavar="NAME",
        help="cpu, cuda, or a full ONNX Runtime provider name; repeatable, in order of preference",
    )
    tuning.add_argument(
        "--memory-budget-bytes",
        type=int,
        default=None,
        help="most memory console-managed model versions may take, estimated as 2x their "
        "file size (default: half of this machine's memory)",
    )
    tuning.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body accepted (default 32 MiB)",
    )
    tuning.add_argument(
        "--queue-limit",
        type=int,
        default=64,
        help="requests waiting in the batcher beyond which an enrolled node offloads "
        "(offload reason `capacity`; default 64)",
    )
    tuning.add_argument(
        "--hold-bundle",
        action="store_true",
        help="keep enforcing the policy bundle this node has and refuse newer ones (an "
        "incident freeze); the node reports why, and the console's compliance checks flag it "
        "as stale once the freeze outlives the allowed staleness",
    )
    tuning.add_argument(
        "--no-tokenisation",
        action="store_true",
        help="do not tokenise tenants' sensitive fields: their requests are then never "
        "offloaded from this node, and it reports tokenisation inactive (the console's "
        "compliance checks flag it for tenants that declared sensitive fields)",
    )
    tuning.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    # Tests fold usage every second instead of every minute (tests/integration/test_agent_usage.py).
    tuning.add_argument("--usage-window-s", type=int, default=None, help=argparse.SUPPRESS)

    demo = commands.add_parser("demo-models", help="write the demo ONNX models into a directory")
    demo.add_argument("directory", type=Path)

    register = commands.add_parser(
        "register",
        help="register an ONNX model with the console and wait for its grade",
        description="Upload an ONNX file as a new version of one of your models, then wait "
        "while the console grades it. Exit status: 0 graded (or --no-wait), 1 grading failed, "
        "2 bad arguments, a console error, or a grading timeout.",
    )
    register.add_argument("file", type=Path, help="the .onnx file")
    register.add_argument(
        "--name", required=True, help="model name: lowercase letters, digits and dashes"
    )
    register.add_argument("--console", required=True, metavar="URL", help="console base URL")
    register.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"tenant API key (or env {API_KEY_ENV}, which keeps it out of the process list)",
    )
    register.add_argument(
        "--signal",
        action="append",
        default=[],
        metavar="NAME:TYPE",
        help="a field the model's callers send in `parameters`; TYPE is one of "
        "string, int, float, bool; repeatable",
    )
    register.add_argument("--description", default="", help="shown in the console")
    register.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="return once uploaded; grading carries on in the console",
    )
    register.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="longest wait for the grade, in seconds (default 300)",
    )
    register.add_argument(
        "--json", action="store_true", help="print the version as JSON instead of a summary"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo-models":
        return demo_models(args.directory)
    if args.command == "register":
        return register(args)
    return serve(args)


def demo_models(directory: Path) -> int:
    from inference.demo_models import write_demo_models

    for path, digest in write_demo_models(directory):
        print(f"{path}  sha256 {digest}")
    return 0


def _fail(message: str) -> int:
    print(f"outpost-agent: error: {message}", file=sys.stderr)
    return 2


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: one line per heartbeat. Failures are logged by the
    # agent itself (inference/agent.py), with what it will do about them.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from inference.agent import (
        ConsoleLink,
        IdentityError,
        hottest_temperature,
        load_identity,
        loaded_versions,
        memory_pressure,
        tokenisation,
    )

    models_dir: Path = args.models
    if not models_dir.is_dir():
        return _fail(f"--models {models_dir} is not a directory")
    if args.enroll and not args.console:
        return _fail("--enroll needs --console URL")
    if not 0 <= args.port <= 65535:
        return _fail("--port must be 0..65535")
    try:
        batching = BatchSettings(
            max_batch_size=parse_batch_size(args.max_batch_size, "--max-batch-size"),
            max_queue_delay_ms=parse_delay_ms(args.max_queue_delay_ms, "--max-queue-delay-ms"),
            inline_threshold_us=max(0.0, args.inline_threshold_us),
            idle_inline_threshold_us=max(0.0, args.idle_inline_threshold_us),
        )
    except SettingsError as exc:
        return _fail(str(exc))
    if args.intra_op_threads is None:
        # Leave the event loop (parsing, batching, encoding) a core where there are cores to
        # spare; on 2 cores, two threads with bounded spinning measured faster than one (medium
        # model: run 57 µs instead of 98 µs, and more req/s at 32 connections, bench/node_overhead.py).
        cores = os.cpu_count() or 2
        args.intra_op_threads = min(cores, max(2, cores - 1))
    elif args.intra_op_threads < 0:
        return _fail("--intra-op-threads must be >= 0")
    if not 0 <= args.intra_op_spin_us <= 100_000:
        return _fail("--intra-op-spin-us must be 0..100000")
    if args.queue_limit < 1:
        return _fail("--queue-limit must be at least 1")
    if args.max_body_bytes < 1024:
        return _fail("--max-body-bytes must be at least 1024")
    if args.memory_budget_bytes is not None and args.memory_budget_bytes < 0:
        return _fail("--memory-budget-bytes must be >= 0")
    if args.usage_window_s is not None and not 1 <= args.usage_window_s <= 3600:
        return _fail("--usage-window-s must be 1..3600")
    state_dir: Path = args.state_dir
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        return _fail(f"cannot create --state-dir {state_dir}: {exc}")
    if args.console:
        try:
            identity = load_identity(state_dir)
        except IdentityError as exc:
            return _fail(str(exc))
        if identity is None and not args.enroll:
            return _fail(f"{state_dir} has no node identity yet: pass --enroll TOKEN")

    # The heavy imports come after the cheap checks, so a wrong flag fails fast.
    import uvicorn

    from inference.http_protocol import CoalescingHttpToolsProtocol
    from inference.metrics import AgentMetrics
    from inference.models import resolve_providers
    from inference.repository import ModelRepository
    from inference.server import AgentApp

    requested = [PROVIDER_ALIASES.get(p.lower(), p) for p in args.execution_provider]
    providers, warnings = resolve_providers(requested)
    for warning in warnings:
        log.warning(warning)
    session = SessionSettings(
        intra_op_threads=args.intra_op_threads,
        graph_optimization=args.graph_optimization,
        intra_op_spin_us=args.intra_op_spin_us,
        execution_providers=providers,
    )
    admin_token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None

    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}")
    host, port = sock.getsockname()[:2]
    url = _url(host, port)

    metrics = AgentMetrics()
    metrics.mode = "enrolled" if args.console else "standalone"
    # onnxruntime releases the GIL while running, so runs of different models overlap here.
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="outpost-run")
    repository = ModelRepository(
        models_dir,
        session,
        batching,
        executor,
        metrics,
        memory_budget_bytes=args.memory_budget_bytes,
    )
    metrics.models_loaded = repository.loaded_count
    metrics.queue_depth = repository.queue_depth
    metrics.memory_pressure = memory_pressure
    metrics.loaded_versions = lambda: loaded_versions(repository)
    # A standalone node reads its sensors at scrape time; an enrolled one's gate reads them
    # (or follows the console's simulation) every second, and the gauge shows that.
    metrics.temperature = lambda: (hottest_temperature(), False)

    exit_code = 0
    server: uvicorn.Server | None = None
    tasks: list[asyncio.Task] = []

    def fatal(message: str) -> None:
        nonlocal exit_code
        log.critical(message)
        print(f"outpost-agent: error: {message}", file=sys.stderr, flush=True)
        exit_code = 1
        if server is not None:
            server.should_exit = True

    link = None
    token_verifier = None
    bundles = None
    gate = None
    usage = None
    if args.console:
        from inference.bundle_store import BundleStore
        from inference.enforcement import Tokeniser, load_or_create_key
        from inference.gate import PolicyGate
        from inference.tokens import TokenVerifier
        from inference.usage_meter import UsageError

        # Empty until the link knows the console's key (from the saved identity or enrollment).
        token_verifier = TokenVerifier()
        # An enrolled node serves tenants, each known by its token.
        token_verifier.required = True
        verifier = token_verifier

        def revoke(bundle) -> None:
            verifier.revoked = frozenset(bundle.revoked_tokens)

        # The bundle store and the token verifier trust the same console keys.
        bundles = BundleStore(
            state_dir, keys=token_verifier.keys, on_activate=[revoke], hold=args.hold_bundle
        )
        store = bundles
        metrics.bundle_revision = lambda: store.revision
        metrics.bundle_age_s = store.age_s
        tokeniser = None
        if not args.no_tokenisation:
            try:
                tokeniser = Tokeniser(load_or_create_key(state_dir / TOKENISE_KEY_FILE))
            except (OSError, ValueError) as exc:
                return _fail(f"cannot read or create the tokenisation key in {state_dir}: {exc}")
        gate = PolicyGate(
            bundles,
            metrics,
            queue_depth=repository.queue_depth,
            run_seconds=repository.run_seconds,
            tokeniser=tokeniser,
            queue_limit=args.queue_limit,
            read_sensor=hottest_temperature,
        )
        policy = gate
        metrics.temperature = lambda: (policy.temperature_c, policy.temperature_simulated)
        metrics.tokenisation_active = lambda: tokenisation(policy)[0]
        metrics.power_model = lambda: class_power_model(policy)
        # Bound to every interface: the console can only reach us by a real name.
        wildcard = host in ("0.0.0.0", "::")  # noqa: S104
        advertise = args.advertise or _url(socket.gethostname() if wildcard else host, port)
        link = ConsoleLink(
            args.console,
            state_dir,
            enroll_token=args.enroll,
            endpoint=advertise,
            repository=repository,
            metrics=metrics,
            on_fatal=fatal,
            token_verifier=token_verifier,
            bundles=bundles,
            gate=gate,
        )
        try:
            usage = _usage_meter(args, state_dir, metrics, link, gate)
        except UsageError as exc:
            return _fail(str(exc))
    else:
        log.warning(
            "standalone: no console, so no tenant tokens and no policy; this agent answers "
            "inference requests from this machine only (for local development). Start it "
            "with --console to serve tenants"
        )

    async def startup() -> None:
        tasks.append(asyncio.create_task(repository.load_all(), name="load-models"))
        if link is not None:
            tasks.append(asyncio.create_task(link.run(), name="console-link"))
        if gate is not None:
            tasks.append(asyncio.create_task(gate.run_ticker(), name="policy-ticker"))
        if usage is not None:
            tasks.append(asyncio.create_task(usage.run_folding(), name="usage-fold"))
            tasks.append(asyncio.create_task(usage.run_uploads(), name="usage-upload"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if usage is not None:
            await usage.close()
        repository.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app = AgentApp(
        repository,
        metrics,
        max_body_bytes=args.max_body_bytes,
        admin_token=admin_token,
        on_startup=[startup],
        on_shutdown=[shutdown],
        push_handler=link.accept_push if link is not None else None,
        bundle_handler=link.accept_bundle_push if link is not None else None,
        token_verifier=token_verifier,
        gate=gate,
        usage=usage.journal if usage is not None else None,
    )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        # No proxy-header rewriting: it costs per request, and the loopback check of model
        # control must see the real peer (behind a reverse proxy, use --admin-token).
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    names = repository.discover()
    mode = f"enrolled with {args.console}" if args.console else "standalone"
    print(
        f"outpost-agent {__version__} listening on {url} ({mode}); "
        f"models: {', '.join(names) or 'none'} (loading)",
        flush=True,
    )
    server.run(sockets=[sock])
    return exit_code


def class_power_model(gate: PolicyGate) -> tuple[float, float] | None:
    """(idle watts, peak watts) of this node's class by the enforced bundle, for the node's
    energy counter (inference/metrics.py NodeEnergy); None until the bundle says both."""
    signed = gate.bundles.signed
    if signed is None or gate.node_class is None:
        return None
    for thresholds in signed.bundle.thresholds:
        if thresholds.node_class == gate.node_class:
            if thresholds.idle_watts is None or thresholds.peak_watts is None:
                return None
            return thresholds.idle_watts, thresholds.peak_watts
    return None


def _usage_meter(
    args: argparse.Namespace,
    state_dir: Path,
    metrics: AgentMetrics,
    link: ConsoleLink,
    gate: PolicyGate,
) -> UsageMeter:
    """The enrolled node's usage meter, open: its state dir locked, the spool ready, the
    killed run's journal noted for replay. Raises UsageError saying what is wrong."""
    from inference.metrics import UsageCounters
    from inference.protocol import USAGE_WINDOW_S
    from inference.usage_meter import UsageMeter

    def peak_watts() -> float | None:
        view = gate.bundles.view
        return view.peak_watts.get(gate.node_class or "") if view is not None else None

    metrics.usage = UsageCounters()
    meter = UsageMeter(
        state_dir,
        console_url=args.console,
        identity=lambda: link.identity,
        counters=metrics.usage,
        window_s=args.usage_window_s or USAGE_WINDOW_S,
        peak_watts=peak_watts,
    )
    meter.open()
    return meter


# --- register: the SDK (inference/sdk.py) behind a command line -------------------------------


def parse_signals(values: list[str]) -> dict[str, str]:
    """`--signal tier:string --signal visits:int` → {"tier": "string", "visits": "int"}."""
    signals: dict[str, str] = {}
    for value in values:
        field, colon, kind = value.rpartition(":")
        if not colon or not field.strip() or not kind:
            raise ValueError(f"--signal {value!r} is not NAME:TYPE, e.g. tier:string")
        if field in signals:
            raise ValueError(f"--signal {field!r} is given twice")
        signals[field] = kind
    return signals


def _size(count: float) -> str:
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} GiB"


class RegisterProgress:
    """Draws the upload and grading progress on stderr.

    On a terminal: one line redrawn in place (a bar with percentage and bytes for the upload,
    elapsed seconds and a spinner for the grading), at most every 50 ms. Elsewhere (a log, CI):
    one plain line when each phase starts and ends, so logs stay readable.
    """

    WIDTH = 30
    SPINNER = "|/-\\"

    def __init__(self, stream: TextIO, *, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.phase = ""
        self.drawn_at = 0.0
        self.ticks = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        started = phase != self.phase
        if started:
            self.finish()
            self.phase = phase
        if not self.tty:
            if started and phase == "upload":
                self._line(f"uploading {_size(total)}")
            elif started and phase == "grading":
                self._line(f"grading (waiting up to {total} s)")
            elif phase == "upload" and done == total:
                self._line(f"uploaded {_size(total)}")
            return
        now = time.monotonic()
        final = phase == "upload" and done == total
        if not (started or final) and now - self.drawn_at < 0.05:
            return
        self.drawn_at = now
        if phase == "upload":
            share = done / total if total else 1.0
            filled = round(share * self.WIDTH)
            text = (
                f"upload  [{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%}  "
                f"{_size(done)} / {_size(total)}"
            )
        else:
            self.ticks += 1
            text = f"grading {self.SPINNER[self.ticks % 4]} {done} s (waiting up to {total} s)"
        self.stream.write(f"\r\x1b[2K{text}")
        self.stream.flush()

    def finish(self) -> None:
        """End the line being redrawn, so what follows starts on its own line."""
        if self.tty and self.phase:
            self.stream.write("\n")
            self.stream.flush()
        self.phase = ""

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def format_version(info: ModelVersionInfo) -> str:
    """A readable summary of a registered version (inference.protocol.ModelVersionInfo)."""
    owner = f" (tenant {info.owner})" if info.owner else " (catalogue)"
    rows = [
        ("model", f"{info.model}{owner}"),
        (
            "version",
            f"{info.version}, "
            + ("new" if info.created else "already registered: these exact bytes"),
        ),
        ("sha256", f"{info.sha256[:16]}…  ({_size(info.size_bytes)}, opset {info.opset})"),
        ("status", info.status),
    ]
    if info.signals:
        rows.append(("signals", ", ".join(f"{k}:{v}" for k, v in info.signals.items())))
    if info.grade is not None:
        rows.append(("grade", info.grade))
    if info.node_class is not None:
        rows.append(("node class", f"{info.node_class} (the smallest class that serves it)"))
    if info.failure:
        rows.append(("failure", info.failure))
    lines = [f"{label:<11} {value}" for label, value in rows]
    for index, latency in enumerate(info.latency):
        verdict = (
            "does not fit in memory"
            if not latency.fits_memory
            else "meets the p95 target"
            if latency.meets_target
            else "misses the p95 target"
        )
        lines.append(
            f"{'latency' if index == 0 else '':<11} {latency.node_class:<12} "
            f"p50 {latency.p50_ms:8.2f} ms  p95 {latency.p95_ms:8.2f} ms  {verdict}"
        )
    for index, reason in enumerate(info.reasons):
        lines.append(f"{'why' if index == 0 else '':<11} - {reason}")
    if info.status == "grading":
        lines.append(
            f"{'':<11} grading carries on in the console; "
            f"see {info.model} version {info.version} there"
        )
    return "\n".join(lines)


def register(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    if not api_key.strip():
        return _fail(f"an API key is needed: --api-key KEY or env {API_KEY_ENV}")
    if not args.timeout > 0:
        return _fail("--timeout must be a positive number of seconds")
    try:
        signals = parse_signals(args.signal)
    except ValueError as exc:
        return _fail(str(exc))

    # httpx and pydantic only now: `serve` and `demo-models` do not pay for them.
    from inference.sdk import Outpost, OutpostError

    progress = RegisterProgress(sys.stderr, tty=sys.stderr.isatty())
    try:
        with Outpost(args.console, api_key) as outpost:
            info = outpost.register_model(
                args.file,
                name=args.name,
                signals=signals,
                description=args.description,
                wait=args.wait,
                timeout=args.timeout,
                on_progress=progress,
            )
    except OutpostError as exc:
        progress.finish()
        if exc.info is not None and not args.json:
            print(format_version(exc.info))
        return _fail(str(exc))
    except KeyboardInterrupt:
        progress.finish()
        return _fail("interrupted; an uploaded version keeps grading in the console")
    progress.finish()
    print(info.model_dump_json(indent=2) if args.json else format_version(info))
    return 1 if info.status == "failed" else 0
