"""Helpers for tests that start real processes: agents, Celery workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url_for_processes() -> str:
    """The URL of the database this test runs on, for processes the test starts."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{s['NAME']}"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{s['USER']}{password}@{host}:{port}/{s['NAME']}"


def wait_until(predicate, *, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def start_process(tmp_path):
    """start_process(name, args, env=...) → Popen; every process is stopped after the test."""
    processes: list[tuple[subprocess.Popen, object]] = []

    def start(name: str, args: list[str], *, env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w+b")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        proc.log_path = tmp_path / f"{name}.log"
        processes.append((proc, log))
        start.by_name[name] = proc
        return proc

    start.by_name = {}
    yield start
    for proc, log in processes:
        # Printed output is shown only when the test fails: then it says what the process did.
        log.flush()
        print(f"--- {proc.log_path.name} (exit {proc.poll()}) ---")
        print(proc.log_path.read_text(errors="replace")[-4000:])
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def python() -> str:
    return sys.executable


def start_celery_worker(start_process, name: str = "celery-worker"):
    """A real Celery worker on the configured broker and the test's database, listening on a
    queue of its own (so a demo on the same machine cannot take the test's tasks); returns
    (queue, process)."""
    import uuid

    from django.conf import settings

    queue = f"test-{uuid.uuid4().hex[:8]}"
    proc = start_process(
        name,
        [
            python(),
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "--pool=solo",
            f"--queues={queue}",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],  # fmt: skip
        env={
            "DATABASE_URL": database_url_for_processes(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        },
    )
    return queue, proc


def serve_enrolled(
    start_process, console_url: str, root, name: str, region, node_class, models=()
) -> int:
    """Start a real agent that enrolls with the console under `name` with a fresh one-time
    token and a --models folder holding copies of `models` (ONNX files; none: the console gives
    it its versions); returns its port."""
    from fleet.models import EnrollmentToken

    _, secret = EnrollmentToken.issue(node_name=name, region=region, node_class=node_class)
    (root / name / "models").mkdir(parents=True)
    for model in models:
        shutil.copy(model, root / name / "models" / Path(model).name)
    port = free_port()
    start_process(
        name,
        [
            python(),
            "-m",
            "inference",
            "serve",
            "--models",
            str(root / name / "models"),
            "--port",
            str(port),
            "--state-dir",
            str(root / name / "state"),
            "--console",
            console_url,
            "--enroll",
            secret,
        ],
    )
    return port


def enforced_tokens(*tenants, timeout: float = 20) -> dict[str, str]:
    """A token for each tenant (a Tenant or a slug, created if need be) once every node
    enforces a policy bundle that knows them: enrolled agents serve tenants only."""
    from billing.api import issue_tenant_token
    from billing.models import Tenant
    from fleet.models import Node, PolicyBundleRecord
    from fleet.policy_plane import publish_bundle

    found = [
        t if isinstance(t, Tenant) else Tenant.objects.get_or_create(slug=t, name=t.title())[0]
        for t in tenants
    ]
    record = publish_bundle(["test"]) or PolicyBundleRecord.objects.order_by("-revision")[0]
    wait_until(
        lambda: all((n.bundle_revision or 0) >= record.revision for n in Node.objects.all()),
        timeout=timeout,
        what=f"every node enforcing bundle {record.revision}",
    )
    return {t.slug: issue_tenant_token(t, 600).token for t in found}
