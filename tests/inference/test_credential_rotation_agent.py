"""The agent's side of credential rotation, against the fake console: asked by a heartbeat
answer, it fetches its next credential, saves it and only then uses it; when the console fails
to give one, it keeps the credential it has and asks again."""

from __future__ import annotations

import json

import pytest

from inference import protocol
from tests.inference.harness import (
    FakeConsole,
    doubler_model,
    enrollment,
    running_agent,
    wait_until,
)

NEW = "opn_the-next-credential"


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


def test_the_agent_keeps_its_credential_until_it_saved_a_new_one(tmp_path, console):
    old = enrollment()["credential"]
    answers = ["503", "ok"]

    def heartbeat(call):
        status, reply = FakeConsole.heartbeat_ok(console, call)
        rotate = call.headers.get("authorization") == f"Bearer {old}"
        return status, {**reply, "rotate_credential": rotate}

    def credential(call):
        if answers.pop(0) == "503":
            return 503, {"error": "the console is busy"}
        return 200, {"credential": NEW}

    console.answers[protocol.HEARTBEAT_PATH] = heartbeat
    console.answers[protocol.CREDENTIAL_PATH] = credential
    doubler_model(tmp_path / "models" / "doubler.onnx")
    state = tmp_path / "state"
    with running_agent(
        tmp_path / "models",
        state,
        "--console",
        console.url,
        "--enroll",
        "enroll-token-1234",
        log_path=tmp_path / "agent.log",
    ) as agent:

        def heartbeats_with(credential: str) -> list:
            return [
                c
                for c in console.calls_to(protocol.HEARTBEAT_PATH)
                if c.headers.get("authorization") == f"Bearer {credential}"
            ]

        wait_until(lambda: heartbeats_with(NEW), timeout=20, what="a heartbeat with the new one")
        asked = console.calls_to(protocol.CREDENTIAL_PATH)
        assert len(asked) == 2  # the 503, then the answer
        assert all(c.headers["authorization"] == f"Bearer {old}" for c in asked)
        # After the 503 it went on with the old credential; after the answer, only the new.
        first_new = console.calls.index(heartbeats_with(NEW)[0])
        assert console.calls.index(asked[0]) < console.calls.index(heartbeats_with(old)[-1])
        assert console.calls.index(heartbeats_with(old)[-1]) < first_new
        assert json.loads((state / "identity.json").read_text())["credential"] == NEW
        assert "asking for a new credential answered HTTP 503" in agent.log()
        assert "node credential rotated" in agent.log()
