"""A real agent process enrolls with a console, heartbeats, and survives the console's absence.

The console here is a small fake HTTP server (tests/inference/harness.py) that records what
the agent sends; the end-to-end test with the real console is test_node_lifecycle.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import stat
import subprocess
import time

import pytest

from inference import protocol
from inference.agent import save_identity
from inference.bundle_store import BUNDLE_FILE
from tests.inference.harness import (
    FakeConsole,
    agent_command,
    doubler_model,
    enrollment,
    running_agent,
    wait_until,
)

TOKEN = "enroll-token-1234"


@pytest.fixture
def models(tmp_path):
    doubler_model(tmp_path / "models" / "doubler.onnx")
    return tmp_path / "models"


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


def heartbeats(console: FakeConsole) -> list:
    return console.calls_to(protocol.HEARTBEAT_PATH)


def doubled(agent) -> list[float]:
    response = agent.post(
        "/v2/models/doubler/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    )
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def test_it_enrolls_saves_its_identity_and_heartbeats(models, tmp_path, console):
    state = tmp_path / "state"
    with running_agent(
        models,
        state,
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        log_path=tmp_path / "agent.log",
        headers=console.auth(),
    ) as agent:
        doubled(agent)
        wait_until(lambda: len(heartbeats(console)) >= 2, what="two heartbeats")

        (enroll,) = console.calls_to(protocol.ENROLL_PATH)
        request = protocol.EnrollRequest.model_validate(enroll.body)
        assert (request.token, request.endpoint) == (TOKEN, agent.url)
        assert request.hostname == socket.gethostname()

        identity = state / "identity.json"
        assert stat.S_IMODE(identity.stat().st_mode) == 0o600
        assert json.loads(identity.read_text())["credential"] == "opn_secret-credential"

        wait_until(
            lambda: heartbeats(console)[-1].body["requests_total"] >= 1,
            what="a heartbeat counting the request",
        )
        last = heartbeats(console)[-1]
        assert last.headers["authorization"] == "Bearer opn_secret-credential"
        report = protocol.HeartbeatReport.model_validate(last.body)
        assert report.node_uid == "node-0001"
        assert [(m.name, m.version, m.ready) for m in report.models] == [("doubler", "1", True)]
        assert (
            report.models[0].sha256
            == hashlib.sha256((models / "doubler.onnx").read_bytes()).hexdigest()
        )
        assert 0 < report.models[0].run_ms_batch1 < 100  # measured: it calibrates the classes
        assert 0 <= report.memory_pressure <= 1
        assert report.bundle_revision == 1  # the fake console's bundle, fetched once named
        assert console.calls_to(protocol.BUNDLE_PATH)
        assert 'outpost_agent_info{mode="enrolled"' in agent.metrics()


def test_a_restart_uses_the_saved_identity_and_does_not_enroll_again(models, tmp_path, console):
    state = tmp_path / "state"
    args = ("--console", console.url, "--enroll", TOKEN)
    with running_agent(models, state, *args, log_path=tmp_path / "first.log"):
        wait_until(lambda: heartbeats(console), what="a heartbeat")
    with running_agent(models, state, *args, log_path=tmp_path / "second.log"):
        count = len(heartbeats(console))
        wait_until(lambda: len(heartbeats(console)) > count, what="a heartbeat after the restart")
    assert len(console.calls_to(protocol.ENROLL_PATH)) == 1


def test_a_refused_token_stops_the_agent_with_a_clear_message(models, tmp_path, console):
    console.answers[protocol.ENROLL_PATH] = lambda call: (
        400,
        {"error": "this token was already used"},
    )
    with running_agent(
        models,
        tmp_path / "state",
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        log_path=tmp_path / "agent.log",
        ready=False,
    ) as agent:
        assert agent.process.wait(15) == 1
        assert (
            "the console refused enrollment (HTTP 400: this token was already used)" in agent.log()
        )
    assert not (tmp_path / "state" / "identity.json").exists()


def test_enrollment_is_retried_while_the_console_answers_5xx(models, tmp_path, console):
    attempts = []

    def flaky(call):
        attempts.append(call)
        return (503, {"error": "starting up"}) if len(attempts) < 3 else console.enroll_ok(call)

    console.answers[protocol.ENROLL_PATH] = flaky
    with running_agent(
        models,
        tmp_path / "state",
        "--console",
        console.url,
        "--enroll",
        TOKEN,
        log_path=tmp_path / "agent.log",
        headers=console.auth(),
    ) as agent:
        # Ready (and serving) once enrolled and holding the console's policy bundle.
        assert doubled(agent) == [2, 4, 6, 8]
        wait_until(lambda: heartbeats(console), timeout=20, what="enrollment after two 503s")
    assert len(attempts) == 3


def enrolled_before(state, console: FakeConsole) -> None:
    """A node enrolled with `console` in an earlier run, holding its policy bundle."""
    save_identity(state, protocol.EnrollResponse.model_validate(enrollment(1, console.public_key)))
    (state / BUNDLE_FILE).write_text(console.bundle.model_dump_json())


def test_it_keeps_serving_while_the_console_is_down_and_reports_when_it_returns(models, tmp_path):
    state = tmp_path / "state"
    with socket.socket() as probe:  # a port nobody listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    earlier = FakeConsole()
    earlier.close()
    enrolled_before(state, earlier)
    with running_agent(
        models,
        state,
        "--console",
        f"http://127.0.0.1:{port}",
        log_path=tmp_path / "agent.log",
        headers=earlier.auth(),
    ) as agent:
        for _ in range(3):
            assert doubled(agent) == [2, 4, 6, 8]  # on the bundle it saved
            time.sleep(0.5)
        assert "heartbeat to" in agent.log()
        assert 'outpost_console_heartbeats_total{outcome="failure"}' in agent.metrics()
        console = FakeConsole(port=port, key=earlier.key)
        try:
            wait_until(
                lambda: heartbeats(console), timeout=20, what="a heartbeat once the console is back"
            )
            assert doubled(agent) == [2, 4, 6, 8]
        finally:
            console.close()
    assert "console reachable again" in agent.log()


def test_a_revoked_credential_is_logged_loudly_and_serving_goes_on(models, tmp_path, console):
    console.answers[protocol.HEARTBEAT_PATH] = lambda call: (401, {"detail": "Unauthorized"})
    enrolled_before(tmp_path / "state", console)
    with running_agent(
        models,
        tmp_path / "state",
        "--console",
        console.url,
        log_path=tmp_path / "agent.log",
        headers=console.auth(),
    ) as agent:
        wait_until(
            lambda: "REJECTED THIS NODE'S CREDENTIAL" in agent.log(), what="the loud log line"
        )
        assert "HTTP 401: Unauthorized" in agent.log()
        assert doubled(agent) == [2, 4, 6, 8]  # on its last good policy bundle


def test_console_without_identity_or_token_is_refused_at_start(models, tmp_path):
    result = subprocess.run(
        agent_command(models, tmp_path / "state", "--console", "http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "has no node identity yet: pass --enroll TOKEN" in result.stderr
