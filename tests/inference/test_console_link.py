"""The pure parts of the console link: backoff, the identity file, the heartbeat report."""

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference import protocol
from inference.agent import (
    IdentityError,
    backoff_delay,
    build_report,
    load_identity,
    save_identity,
)
from inference.config import BatchSettings, SessionSettings
from inference.metrics import AgentMetrics
from inference.repository import READY, UNAVAILABLE, Entry, ModelRepository

IDENTITY = protocol.EnrollResponse(
    node_uid="node-1",
    name="fra-nano-1",
    region="eu-west",
    node_class="nano",
    credential="opn_secret",
    console_public_key="A" * 43 + "=",
    heartbeat_interval_s=5,
)


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    assert backoff_delay(1, rand=lambda: 0.0) == 0.5
    assert backoff_delay(1, rand=lambda: 1.0) == 1.0
    assert backoff_delay(4, rand=lambda: 1.0) == 8.0
    assert backoff_delay(30, rand=lambda: 1.0) == 60.0
    assert backoff_delay(1000, rand=lambda: 0.0) == 30.0


def test_the_identity_is_saved_readable_by_the_owner_only_and_read_back(tmp_path):
    path = save_identity(tmp_path / "state", IDENTITY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(tmp_path / "state") == IDENTITY
    assert [p.name for p in path.parent.iterdir()] == ["identity.json"]  # no temp file left


def test_no_identity_file_means_not_enrolled(tmp_path):
    assert load_identity(tmp_path) is None


def test_a_corrupt_identity_is_an_error_that_says_what_to_do(tmp_path):
    (tmp_path / "identity.json").write_text('{"node_uid": 1}')
    with pytest.raises(IdentityError, match="move it away and enroll again"):
        load_identity(tmp_path)


def test_the_heartbeat_report_lists_models_and_counters(tmp_path):
    metrics = AgentMetrics()
    repository = ModelRepository(
        tmp_path, SessionSettings(), BatchSettings(), ThreadPoolExecutor(1), metrics
    )
    repository.entries["ok"] = Entry("ok", READY, sha256="a" * 64)
    repository.entries["broken"] = Entry("broken", UNAVAILABLE, reason="bad file", sha256="b" * 64)
    repository.entries["unreadable"] = Entry("unreadable", UNAVAILABLE)
    metrics.requests_total, metrics.errors_total = 10, 2
    report = build_report(IDENTITY, repository, metrics, uptime_s=3.5, readings=(0.25, 0.5, None))
    assert report.node_uid == "node-1"
    assert [(m.name, m.ready) for m in report.models] == [("ok", True), ("broken", False)]
    assert (report.requests_total, report.errors_total) == (10, 2)
    assert (report.cpu_load, report.memory_pressure, report.temperature_c) == (0.25, 0.5, None)
    assert report.bundle_revision is None
    # It is valid on the wire: the console parses the same class.
    assert protocol.HeartbeatReport.model_validate_json(report.model_dump_json()) == report
    repository.close()
