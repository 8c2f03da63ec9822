"""`manage.py demo` (what `make run` runs): the whole product on one machine, Ctrl-C stops it.

In order: migrate, seed (console/demo/seed.py), generate the demo ONNX models if absent, then
start under one supervisor (console/demo/supervisor.py), each process in its own group:

- the console: `manage.py runserver --noreload`. runserver rather than uvicorn because in
  DEBUG it serves static files by itself and runs each request in its own thread, so a slow
  page never holds up the nodes' heartbeats (under uvicorn, Django runs sync views one at a
  time on a single thread); `--noreload` so that the process started is the server itself
  (the autoreloader runs the server in a child process and restarts it on every saved file).
- a real Celery worker and beat, on the filesystem broker of the embedded default;
- the node agents, once the console answers (they enroll with it), each enrolling with its
  one-time token the first time and reusing its identity in `var/nodes/<name>/` after that;
- the traffic generator (console/demo/traffic.py), once the nodes are ready;
- Prometheus, when a `prometheus` binary is on PATH (Debian's package; `--no-prometheus` skips
  it): it scrapes the nodes through the file_sd targets the worker writes, and the console
  reads its dashboards from it (PROMETHEUS_URL). Without it the dashboards read the console's
  own rollups, which is the embedded default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from billing.models import ApiKey, Tenant
from console.demo import seed as demo_seed
from console.demo.supervisor import ChildSpec, Supervisor
from console.demo.traffic import build_infer_request
from fleet.models import Node
from fleet.observability.targets import write_targets
from fleet.policy_plane import publish_bundle

PYTHON = sys.executable
# Routine lines that would drown everything else, hidden from the terminal: a successful
# heartbeat, as the console's access log and the agent's HTTP client each log it (every node,
# every few seconds), and the worker's status-flip check when nothing flipped (every 10 s).
# Failures and flips still show.
CONSOLE_MUTE = re.compile(r'"POST /api/v1/nodes/heartbeat HTTP/[\d.]+" 200 ')
AGENT_MUTE = re.compile(
    r'INFO httpx: HTTP Request: POST \S+/api/v1/nodes/heartbeat "HTTP/[\d.]+ 200 '
)
WORKER_MUTE = re.compile(
    r"Task fleet\.tasks\.detect_status_flips_task\[[^\]]+\] (received|succeeded in \S+: 0)$"
)
CONSOLE_START_TIMEOUT_S = 60
NODE_START_TIMEOUT_S = 120
DEMO_DRIFT = '{"min_rows": 10}'
DEMO_MODEL = "tiny-classifier"
# The banner's example calls a node as this tenant, with a key minted for it on each run.
BANNER_TENANT = "globex"
BANNER_KEY_NAME = "demo banner"
PROMETHEUS_CONFIG = """# Written by `manage.py demo`: the nodes come from the console's file_sd targets.
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: outpost-nodes
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 10s
"""


class Command(BaseCommand):
    help = (
        "Run the demo: console, Celery worker and beat, node agents in two regions and a "
        "traffic generator. Ctrl-C stops every process it started."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--nodes",
            type=int,
            default=4,
            metavar="N",
            help="how many node agents to run (default 4, at most 20)",
        )
        parser.add_argument("--no-traffic", action="store_true", help="start no traffic generator")
        parser.add_argument(
            "--rate",
            type=float,
            default=2.0,
            metavar="R",
            help="average inference requests per second per node (default 2)",
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="port of the console on 127.0.0.1 (default 8000)"
        )
        parser.add_argument(
            "--prometheus-port",
            type=int,
            default=9090,
            help="port of Prometheus on 127.0.0.1, when it is installed (default 9090)",
        )
        parser.add_argument(
            "--no-prometheus",
            action="store_true",
            help="do not start Prometheus even if installed: dashboards read the rollups",
        )

    def handle(self, *args, **options):
        count, port, rate = options["nodes"], options["port"], options["rate"]
        if not 1 <= count <= 20:
            raise CommandError("--nodes must be between 1 and 20")
        if not 0 < rate <= 50:
            raise CommandError("--rate must be above 0 and at most 50 requests per second")
        self.root = Path(settings.BASE_DIR)
        self.var = Path(settings.VAR_DIR)
        self.console_url = f"http://{demo_seed.LOOPBACK}:{port}"
        nodes = demo_seed.demo_nodes(count)
        _check_ports_free(port, [n.port for n in nodes])
        self.prometheus = None if options["no_prometheus"] else shutil.which("prometheus")
        self.prometheus_url = f"http://{demo_seed.LOOPBACK}:{options['prometheus_port']}"
        if self.prometheus and not _port_free(options["prometheus_port"]):
            self.stdout.write(
                f"port {options['prometheus_port']} is taken: the demo runs without Prometheus "
                "(the dashboards read the console's rollups); free it or pass --prometheus-port"
            )
            self.prometheus = None
        self._make_folders()

        try:
            self._migrate()
            report = demo_seed.seed(
                node_count=count,
                state_root=self.var / "nodes",
                token_root=self.var / "demo" / "tokens",
            )
            for change in report.changes:
                self.stdout.write(change)
            repositories = self._model_repositories(nodes)
            models_report = demo_seed.SeedReport()
            demo_seed.register_demo_models(self.var / "models", models_report)
            for change in models_report.changes:
                self.stdout.write(change)
            # Enrolled nodes serve tenants by a policy bundle: one is there before they start.
            published = publish_bundle(["demo seeded"])
            if published is not None:
                self.stdout.write(f"published policy bundle r{published.revision}")
        except KeyboardInterrupt:
            raise CommandError("interrupted before anything was started") from None
        # Children open their own connections; ours would only hold SQLite's file open.
        connections.close_all()

        width = max(len(name) for name in [n.name for n in nodes] + ["console", "traffic"])
        # A Celery worker's warm shutdown on the filesystem broker takes 5-10 s.
        supervisor = Supervisor(stop_timeout=20, name_width=width)
        supervisor.install_signal_handlers()
        with supervisor:
            try:
                code = self._run(supervisor, nodes, report.enrollment, repositories, options)
            except TimeoutError as exc:
                supervisor.log(f"giving up: {exc}")
                code = 1
        if code:
            raise CommandError("the demo stopped because one of its processes failed (see above)")

    # --- before anything starts -------------------------------------------------------------------

    def _make_folders(self) -> None:
        for folder in ("nodes", "models", "demo/tokens", "demo/repositories", "celery"):
            (self.var / folder).mkdir(parents=True, exist_ok=True)
        # The filesystem transport fails at start when its folders are missing.
        for key, value in settings.CELERY_BROKER_TRANSPORT_OPTIONS.items():
            if key.endswith("folder") or key.startswith("data_folder"):
                Path(value).mkdir(parents=True, exist_ok=True)

    def _migrate(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if plan:
            self.stdout.write(f"applying {len(plan)} database migrations")
        call_command("migrate", interactive=False, verbosity=0)

    def _model_repositories(self, nodes: list[demo_seed.DemoNode]) -> dict[str, Path]:
        """One model directory per node class, holding links to the models it serves.

        The demo models are generated into var/models once; each class's directory links the
        ones of the grades it serves, so a nano node does not load the large model. Models you
        drop into var/models yourself are served by every class that fits their name.
        """
        models = self.var / "models"
        if not any(models.glob("*.onnx")):
            self.stdout.write(f"generating the demo models into {models}")
            result = subprocess.run(
                [PYTHON, "-m", "inference", "demo-models", str(models)],
                cwd=self.root,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise CommandError(f"generating the demo models failed:\n{result.stderr}")
        repositories = {}
        for node_class in sorted({n.node_class for n in nodes}):
            folder = self.var / "demo" / "repositories" / node_class
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():
                stale.unlink()
            for model in sorted(models.glob("*.onnx")):
                if demo_seed.class_serves(node_class, model.stem):
                    for path in (model, model.with_suffix(".json")):
                        if path.exists():
                            (folder / path.name).symlink_to(path.resolve())
            repositories[node_class] = folder
        return repositories

    # --- the processes ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # OUTPOST_PUBLIC_URL: enrollment commands shown in the console name the demo's port.
        prometheus = {"PROMETHEUS_URL": self.prometheus_url} if self.prometheus else {}
        return {
            **prometheus,
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "OUTPOST_PUBLIC_URL": self.console_url,
            # A model gets a few requests a minute from the demo's traffic: judge drift on
            # minutes of 10 rows (the default, 30, suits real traffic).
            "OUTPOST_DRIFT": os.environ.get("OUTPOST_DRIFT", DEMO_DRIFT),
            # The compliance story (console/demo/compliance_seed.py): the demo's loopback nodes
            # serve plain http, which production must not; a frozen node counts as stale after
            # five minutes, and the checks run every ten besides after each relevant change.
            "OUTPOST_REQUIRE_NODE_TLS": os.environ.get("OUTPOST_REQUIRE_NODE_TLS", "true"),
            "OUTPOST_POLICY_MAX_STALENESS_S": os.environ.get(
                "OUTPOST_POLICY_MAX_STALENESS_S", "300"
            ),
            "OUTPOST_COMPLIANCE_INTERVAL_S": os.environ.get("OUTPOST_COMPLIANCE_INTERVAL_S", "600"),
        }

    def _run(self, supervisor, nodes, enrollment, repositories, options) -> int:
        self._start_platform(supervisor, options["port"])
        ready = supervisor.wait_for(
            lambda: _http_ok(f"{self.console_url}/api/v1/openapi.json"),
            timeout=CONSOLE_START_TIMEOUT_S,
            what="the console answering",
        )
        if not ready:
            return supervisor.wait()
        supervisor.log(f"console is up at {self.console_url}")

        for node in nodes:
            argv = [
                PYTHON,
                "-m",
                "inference",
                "serve",
                "--models",
                str(repositories[node.node_class]),
                "--host",
                demo_seed.LOOPBACK,
                "--port",
                str(node.port),
                "--state-dir",
                str(self.var / "nodes" / node.name),
                "--console",
                self.console_url,
                "--advertise",
                node.endpoint,
            ]
            argv += node.agent_flags
            secret = enrollment.get(node.name)
            if secret:
                argv += ["--enroll", secret]
            supervisor.start(
                ChildSpec(node.name, argv, env=self._env(), cwd=self.root, mute=AGENT_MUTE, stage=1)
            )
        ready = supervisor.wait_for(
            lambda: all(_http_ok(f"{n.endpoint}/v2/health/ready") for n in nodes),
            timeout=NODE_START_TIMEOUT_S,
            what="every node loading its models",
        )
        if not ready:
            return supervisor.wait()
        ready = supervisor.wait_for(
            lambda: Node.objects.filter(name__in=[n.name for n in nodes]).count() == len(nodes),
            timeout=30,
            what="every node enrolling with the console",
        )
        connections.close_all()
        if not ready:
            return supervisor.wait()
        # The regions' accelerator pools take in the accelerators that just enrolled; the
        # nodes learn of them in the next bundle.
        demo_seed.seed_accelerator_pools(demo_seed.SeedReport())
        # Prometheus scrapes the nodes from now on, not from the worker's first beat.
        write_targets(settings.OUTPOST_PROMETHEUS_TARGETS_FILE)
        published = publish_bundle(["accelerator pools seeded"])
        if published is not None:
            supervisor.log(f"published policy bundle r{published.revision} with the pools")
        connections.close_all()

        if not options["no_traffic"]:
            argv = [
                PYTHON,
                str(self.root / "console" / "demo" / "traffic.py"),
                "--nodes",
                ",".join(n.endpoint for n in nodes),
                "--rate",
                str(options["rate"]),
                "--console",
                self.console_url,
            ]
            # The tenants call as themselves, with tokens for these keys (in the environment,
            # not the command line, where any user of the machine could read them).
            keys = demo_seed.traffic_keys()
            env = {"OUTPOST_DEMO_TENANT_KEYS": ",".join(f"{s}={k}" for s, k in keys.items())}
            supervisor.start(ChildSpec("traffic", argv, env=env, cwd=self.root, stage=2))
            story = [PYTHON, "manage.py", "demo_story", "--console", self.console_url]
            supervisor.start(
                ChildSpec("story", story, env=self._env(), cwd=self.root, stage=3, one_shot=True)
            )
            policy_story = [PYTHON, "manage.py", "demo_policy_story", "--console", self.console_url]
            supervisor.start(
                ChildSpec(
                    "policy", policy_story, env=self._env(), cwd=self.root, stage=3, one_shot=True
                )
            )
        supervisor.print_block(self._banner(nodes, traffic=not options["no_traffic"]))
        return supervisor.wait()

    def _start_platform(self, supervisor: Supervisor, port: int) -> None:
        supervisor.start(
            ChildSpec(
                "console",
                [PYTHON, "manage.py", "runserver", "--noreload", f"{demo_seed.LOOPBACK}:{port}"],
                env=self._env(),
                cwd=self.root,
                mute=CONSOLE_MUTE,
            )
        )
        supervisor.start(
            ChildSpec(
                "worker",
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "console",
                    "worker",
                    "--loglevel=INFO",
                    "--concurrency=2",
                ],
                env=self._env(),
                cwd=self.root,
                mute=WORKER_MUTE,
            )
        )
        # Beat logs each task it sends at INFO (one every 10 s); its default, WARNING, is enough.
        supervisor.start(
            ChildSpec(
                "beat",
                [PYTHON, "-m", "celery", "-A", "console", "beat"],
                env=self._env(),
                cwd=self.root,
            )
        )
        if self.prometheus:
            folder = self.var / "prometheus"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "prometheus.yml"
            targets = settings.OUTPOST_PROMETHEUS_TARGETS_FILE
            config.write_text(PROMETHEUS_CONFIG.format(targets=targets))
            supervisor.start(
                ChildSpec(
                    "prometheus",
                    [
                        self.prometheus,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={folder / 'tsdb'}",
                        f"--web.listen-address={self.prometheus_url.removeprefix('http://')}",
                        "--log.level=warn",
                    ],
                    cwd=self.root,
                )
            )

    # --- the banner -------------------------------------------------------------------------------

    def _banner(self, nodes: list[demo_seed.DemoNode], *, traffic: bool) -> str:
        url = self.console_url
        login_width = max(len(f"{x.username} / {x.password}") for x in demo_seed.LOGINS)
        lines = [
            "",
            "Outpost demo is running. Ctrl-C stops every process.",
            "",
            f"  Console    {url}/",
            f"  API docs   {url}/api/v1/docs",
            f"  Admin      {url}/admin/",
            "  Metrics    "
            + (
                f"Prometheus at {self.prometheus_url}/ scrapes every node; the dashboards read it"
                if self.prometheus
                else "the console's own rollups (install Debian's prometheus to use it)"
            ),
            "",
        ]
        for i, login in enumerate(demo_seed.LOGINS):
            label = "Logins" if i == 0 else ""
            pair = f"{login.username} / {login.password}"
            lines.append(f"  {label:<10} {pair:<{login_width}}   {login.role}")
        lines.append("")
        name_width = max(len(n.name) for n in nodes)
        for i, node in enumerate(nodes):
            label = "Nodes" if i == 0 else ""
            lines.append(
                f"  {label:<10} {node.name:<{name_width}}  {node.region:<8} "
                f"{node.node_class:<12} {node.endpoint}"
            )
        lines += [
            "",
            f"  {'Traffic':<10} "
            + (
                "a few requests per second to each node (console/demo/traffic.py)"
                if traffic
                else "off (--no-traffic)"
            ),
        ]
        lines += [
            "",
            f"  {'Policy':<10} every node's enforced bundle revision: {url}/fleet/bundles/",
            f"  {'':<10} why a request was offloaded or refused: {url}/fleet/decisions/",
            f"  {'':<10} the same decision, simulated: {url}/fleet/policies/simulator/",
            f"  {'':<10} the policy story heats {nodes[0].name} every five minutes",
            "",
            f"  Call a node yourself, as {BANNER_TENANT} (an enrolled node wants a token):",
            *[f"    {line}" for line in self._curl_example(nodes[0])],
            "",
        ]
        return "\n".join(lines)

    def _curl_example(self, node: demo_seed.DemoNode) -> list[str]:
        """Two commands: exchange a (fresh) API key of the banner's tenant for a token, then
        call the node's demo model with it."""
        tenant = Tenant.objects.filter(slug=BANNER_TENANT).first()
        try:
            with urllib.request.urlopen(  # noqa: S310 - a loopback URL we built
                f"{node.endpoint}/v2/models/{DEMO_MODEL}", timeout=2
            ) as response:
                metadata = json.load(response)
            body = build_infer_request(metadata, np.random.default_rng(7))
            for tensor in body["inputs"]:
                if isinstance(tensor["data"][0], float):
                    tensor["data"] = [round(v, 2) for v in tensor["data"]]
            payload = json.dumps(body, separators=(",", ":"))
        except (OSError, ValueError, KeyError, IndexError):
            return [f"curl -s {node.endpoint}/v2/health/ready -o /dev/null -w '%{{http_code}}\\n'"]
        if tenant is None:
            return [f"curl -s {node.endpoint}/v2/models/{DEMO_MODEL}"]
        for old in ApiKey.objects.active().filter(tenant=tenant, name=BANNER_KEY_NAME):
            old.revoke()
        _, secret = ApiKey.issue(tenant, BANNER_KEY_NAME)
        connections.close_all()
        return [
            f"TOKEN=$(curl -s -X POST {self.console_url}/api/v1/tokens -H 'Authorization: "
            f"Bearer {secret}' | {PYTHON} -c 'import json,sys; print(json.load(sys.stdin)"
            '["token"])\')',
            f'curl -s -i {node.endpoint}/v2/models/{DEMO_MODEL}/infer -H "Authorization: '
            f"Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{payload}'",
        ]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URLs
            return response.status == 200
    except (OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers bind: a port left in TIME_WAIT by the last run is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((demo_seed.LOOPBACK, port))
        except OSError:
            return False
    return True


def _check_ports_free(console_port: int, node_ports: list[int]) -> None:
    taken = [port for port in [console_port, *node_ports] if not _port_free(port)]
    if taken:
        hint = (
            "run the console on another port with --port"
            if console_port in taken
            else f"free ports {node_ports[0]}-{node_ports[-1]}, which the nodes use"
        )
        raise CommandError(
            f"port{'s' if len(taken) > 1 else ''} {', '.join(map(str, taken))} on "
            f"{demo_seed.LOOPBACK} {'are' if len(taken) > 1 else 'is'} in use. Is another demo "
            f"running? Stop it, or {hint}."
        )
