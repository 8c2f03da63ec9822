"""How long a rollout takes: from starting a deployment to every node serving the new version.

For 1 and for 20 agents on loopback, each enrolled with a real token against a real console
(runserver on a SQLite database of its own), the bench registers a fresh version of the medium
demo model, grades it, starts an all-at-once deployment to every node and measures:

- serving: until every agent answers `GET /v2/models/{m}/versions/{v}/ready` with 200
  (polled directly, every 20 ms);
- confirmed: until the console has heard from every node that the version is ready (the
  heartbeat that follows), which is what its deployment page shows.

The baseline, measured in the same run, is the work a node cannot avoid: hashing the artifact
and loading and warming it with onnxruntime in-process, plus one heartbeat interval (the desired
state travels in the heartbeat answer). The ratio says how much the rollout machinery adds.

Run: .venv/bin/python bench/rollout.py [--agents 1,20] [--quick]
Writes bench/results/rollout.json.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench.common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPBACK,
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    ServerProcess,
    base_parser,
    free_port,
    http_request,
    log,
    machine_info,
    print_table,
    resolve_timing,
    write_json,
)

HEARTBEAT_S = 1


def django_env(var_dir: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "OUTPOST_VAR_DIR": str(var_dir),
        "DATABASE_URL": f"sqlite:///{var_dir / 'bench.sqlite3'}",
        "CELERY_BROKER_URL": "memory://",
        "OUTPOST_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "OUTPOST_LOG_LEVEL": "WARNING",
    }


def baseline_seconds(path: Path) -> float:
    """Hash, load and warm the artifact in-process: what any node must do at least."""
    import numpy as np
    import onnxruntime as ort

    started = time.perf_counter()
    hashlib.sha256(path.read_bytes()).hexdigest()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) or d < 0 else d for d in spec.shape]
    session.run(None, {spec.name: np.zeros(shape, dtype=np.float32)})
    return time.perf_counter() - started


def run_phase(count: int, width: int, work: Path, console: ServerProcess) -> dict:
    """Start `count` agents, roll a new version out to them, time it, stop them."""
    import onnx
    from django.db import connections

    from fleet.actions import grade_version, register_model_version
    from fleet.models import EnrollmentToken, Node, NodeClass, Region
    from fleet.policy_plane import publish_bundle
    from fleet.rollout_actions import promote, start_rollout
    from inference.demo_models import random_mlp_medium

    region = Region.objects.get(code="bench")
    node_class = NodeClass.objects.get(name="standard")
    # Enrolled agents are ready once they hold a policy bundle: one exists before they start.
    publish_bundle(["bench"])
    agents: list[ServerProcess] = []
    names = []
    try:
        for index in range(count):
            name = f"bench-{width}-{index}"
            _, secret = EnrollmentToken.issue(node_name=name, region=region, node_class=node_class)
            (work / name / "models").mkdir(parents=True)
            port = free_port()
            agent = ServerProcess(
                name,
                [
                    sys.executable,
                    "-m",
                    "inference",
                    "serve",
                    "--models",
                    str(work / name / "models"),
                    "--port",
                    str(port),
                    "--state-dir",
                    str(work / name / "state"),
                    "--console",
                    console.base_url,
                    "--enroll",
                    secret,
                ],
                port=port,
                log_dir=work,
            )
            agent.start()
            agents.append(agent)
            names.append(name)
        for agent in agents:
            agent.wait_ready(timeout=120)
        deadline = time.monotonic() + 120
        while Node.objects.filter(name__in=names, last_heartbeat_at__isnull=False).count() < count:
            if time.monotonic() > deadline:
                raise BenchError("agents did not enroll and report within 120 s")
            time.sleep(0.1)
        connections.close_all()

        model_path = work / f"medium-{width}.onnx"
        onnx.save(random_mlp_medium(width=width), model_path)
        version, _ = register_model_version(
            owner=None, name="bench-medium", data=model_path.read_bytes()
        )
        grade_version(version)
        version.refresh_from_db()
        if version.status != "graded":
            raise BenchError(f"grading failed: {version.failure}")
        baseline = baseline_seconds(model_path) + HEARTBEAT_S

        path = f"/v2/models/bench-medium/versions/{version.version}/ready"
        pending = {a.name: a for a in agents}
        serving: dict[str, float] = {}
        started = time.monotonic()
        deployment = start_rollout(version, regions=[region], strategy="all_at_once")
        while pending:
            now = time.monotonic()
            if now - started > 180:
                raise BenchError(f"{len(pending)} agents never served the version")
            for name, agent in list(pending.items()):
                try:
                    if http_request("GET", agent.url(path), timeout=2).status == 200:
                        serving[name] = now - started
                        del pending[name]
                except OSError:
                    pass
            time.sleep(0.02)
        while True:
            ready = sum(
                1
                for loaded in Node.objects.filter(name__in=names).values_list(
                    "models_loaded", flat=True
                )
                if any(r["sha256"] == version.sha256 and r["ready"] for r in loaded)
            )
            if ready == count:
                confirmed = time.monotonic() - started
                break
            if time.monotonic() - started > 180:
                raise BenchError("the console never heard that every node is ready")
            time.sleep(0.05)
        promote(deployment)  # done with it: the next phase rolls out another version
        times = sorted(serving.values())
        return {
            "agents": count,
            "artifact_bytes": model_path.stat().st_size,
            "baseline_s": baseline,
            "first_serving_s": times[0],
            "median_serving_s": statistics.median(times),
            "all_serving_s": times[-1],
            "console_confirmed_s": confirmed,
            "ratio_all_serving_to_baseline": times[-1] / baseline,
        }
    finally:
        for agent in agents:
            agent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1,20", help="agent counts to measure (default 1,20)")
    args = parser.parse_args(argv)
    resolve_timing(args)
    counts = [int(c) for c in args.agents.split(",") if c.strip()]
    if args.quick:
        counts = [c for c in counts if c <= 4] or [1]

    with tempfile.TemporaryDirectory(prefix="outpost-rollout-") as tmp:
        work = Path(tmp)
        os.environ.update(django_env(work))
        sys.path.insert(0, str(REPO_ROOT))
        import django

        django.setup()
        from django.core.management import call_command

        from fleet.models import NodeClass, Region

        call_command("migrate", interactive=False, verbosity=0)
        Region.objects.create(code="bench", name="Bench", jurisdiction="DE", residency_zone="EU")
        NodeClass.objects.create(
            name="standard",
            capex=5000,
            amortisation_months=48,
            idle_watts=90,
            peak_watts=350,
            energy_price_per_kwh="0.25",
            expected_utilisation="0.5",
            memory_bytes=64 * 2**30,
        )
        port = free_port()
        console = ServerProcess(
            "console",
            [sys.executable, "manage.py", "runserver", "--noreload", f"{LOOPBACK}:{port}"],
            port=port,
            log_dir=work,
            ready_path="/api/v1/openapi.json",
            env=django_env(work),
        )
        rows = []
        with console:
            for index, count in enumerate(counts):
                log(f"rolling a version out to {count} agent(s)")
                rows.append(run_phase(count, 1024 + 8 * index, work, console))

    print_table(
        [
            ("agents", "agents", ""),
            ("artifact_bytes", "artifact bytes", ","),
            ("baseline_s", "baseline s", ".2f"),
            ("first_serving_s", "first serving s", ".2f"),
            ("median_serving_s", "median serving s", ".2f"),
            ("all_serving_s", "all serving s", ".2f"),
            ("console_confirmed_s", "console confirmed s", ".2f"),
            ("ratio_all_serving_to_baseline", "all/baseline", ".2f"),
        ],
        rows,
        title=f"rollout: start of an all-at-once deployment → every agent serving "
        f"(heartbeat {HEARTBEAT_S} s; baseline = hash + load + warm-up in-process + one heartbeat)",
    )
    output = args.output or RESULTS_DIR / "rollout.json"
    write_json(
        output,
        {
            "benchmark": "rollout",
            "machine": machine_info(["onnxruntime", "django"]),
            "heartbeat_interval_s": HEARTBEAT_S,
            "rows": rows,
        },
    )
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
