"""The SDK and `python -m inference register` against the real console (a live server).

The upload enqueues `fleet.tasks.grade_version_task` once committed; no Celery worker runs
here, so the tests stand in for one: the enqueued id is recorded instead of sent to the broker
(which a demo on the same machine might share) and the task runs in a thread of the test,
as a worker would run it, while the SDK polls the console for the grade.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import onnx
import pytest
from django.db import connection

from billing.models import ApiKey
from fleet.models import ModelVersion
from fleet.tasks import grade_version_task
from inference.demo_models import tiny_classifier
from inference.sdk import Outpost, OutpostError
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def artifact_dir(settings, tmp_path):
    settings.OUTPOST_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def acme_secret(acme):
    return ApiKey.issue(acme, "sdk")[1]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-classifier.onnx"
    onnx.save(tiny_classifier(), path)
    return path


class Worker:
    """Stands in for the Celery worker: records what the console enqueues for grading and,
    when `run` is set, grades it in a thread as the worker would."""

    def __init__(self, *, run: bool) -> None:
        self.run = run
        self.enqueued: list[int] = []
        self.threads: list[threading.Thread] = []

    def delay(self, version_id: int) -> None:
        self.enqueued.append(version_id)
        if self.run:
            thread = threading.Thread(target=self.grade, args=(version_id,))
            self.threads.append(thread)
            thread.start()

    @staticmethod
    def grade(version_id: int) -> None:
        try:
            grade_version_task(version_id)
        finally:
            connection.close()  # this thread's own connection; the test database outlives it

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


@pytest.fixture
def worker(monkeypatch):
    worker = Worker(run=False)
    monkeypatch.setattr(grade_version_task, "delay", worker.delay)
    yield worker
    worker.join()


def test_a_tenant_registers_the_demo_classifier_and_a_repeat_is_recognised(
    live_server, acme_secret, classifier, worker, nano, standard, accelerator
):
    with Outpost(live_server.url, acme_secret) as outpost:
        info = outpost.register_model(
            classifier,
            name="churn",
            signals={"tier": "string", "visits": "int"},
            description="the demo classifier",
            wait=False,
        )
        again = outpost.register_model(classifier, name="churn", wait=False)

        assert (info.model, info.owner, info.version) == ("churn", "acme", 1)
        assert (info.status, info.created) == ("grading", True)
        assert info.signals == {"tier": "string", "visits": "int"}
        assert [i["name"] for i in info.inputs] == ["features"]
        assert (again.version, again.created, again.sha256) == (1, False, info.sha256)
        version = ModelVersion.objects.get()
        assert worker.enqueued == [version.pk]  # graded once, not once per upload

        grade_version_task(version.pk)  # what the worker does with it
        graded = outpost.get_version("churn", 1)

    assert graded.status == "graded", graded.failure
    assert (graded.grade, graded.node_class) == ("tiny", "nano")
    assert {c.node_class for c in graded.latency} == {"nano", "standard", "accelerator"}
    assert graded.reasons


def test_register_waits_while_the_console_grades(
    live_server, acme_secret, classifier, worker, nano, standard, accelerator
):
    worker.run = True
    seen: list[str] = []
    with Outpost(live_server.url, acme_secret) as outpost:
        info = outpost.register_model(
            classifier, name="churn", timeout=60, on_progress=lambda phase, *_: seen.append(phase)
        )
    assert (info.status, info.grade, info.node_class) == ("graded", "tiny", "nano")
    assert seen[0] == "upload" and seen[-1] == "grading"


def test_the_consoles_refusals_reach_the_caller_in_its_words(
    live_server, acme_secret, classifier, worker, tmp_path
):
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_bytes(b"these are not protobuf bytes")
    with (
        Outpost(live_server.url, "opk_not-a-key") as outpost,
        pytest.raises(OutpostError) as bad_key,
    ):
        outpost.register_model(classifier, name="churn")
    with Outpost(live_server.url, acme_secret) as outpost:
        with pytest.raises(OutpostError) as bad_file:
            outpost.register_model(not_onnx, name="churn")
        with pytest.raises(OutpostError) as missing:
            outpost.get_version("churn", 3)

    assert bad_key.value.status == 401
    assert bad_file.value.status == 400 and "ONNX" in bad_file.value.message
    assert missing.value.status == 404 and "churn" in missing.value.message
    assert worker.enqueued == []


def test_the_cli_registers_against_the_console(live_server, acme_secret, classifier, worker):
    command = [
        sys.executable,
        "-m",
        "inference",
        "register",
        str(classifier),
        "--name=churn",
        f"--console={live_server.url}",
        "--signal=tier:string",
        "--no-wait",
    ]
    env = {**os.environ, "OUTPOST_API_KEY": acme_secret}
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    refused = subprocess.run(
        command,
        cwd=ROOT,
        env={**env, "OUTPOST_API_KEY": "opk_wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert first.returncode == 0, first.stderr
    assert "model       churn (tenant acme)" in first.stdout
    assert "version     1, new" in first.stdout
    assert "version     1, already registered: these exact bytes" in again.stdout
    assert refused.returncode == 2
    assert "(HTTP 401)" in refused.stderr
