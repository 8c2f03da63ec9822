"""Helpers for tests of the node agent: small ONNX models, real agent processes, a fake console.

Used by tests/inference (unit level) and tests/integration/test_agent_*.py (real processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def make_model(nodes, name, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def identity_model(path: Path, datatype: str, shape: tuple = ("batch", 3)) -> Path:
    """`x` -> `y` unchanged: the smallest model of a given element type."""
    kind = ONNX_TYPES[datatype]
    return save(
        make_model(
            [helper.make_node("Identity", ["x"], ["y"])],
            path.stem,
            [helper.make_tensor_value_info("x", kind, list(shape))],
            [helper.make_tensor_value_info("y", kind, list(shape))],
        ),
        path,
    )


def add_sub_model(path: Path, width: int = 4) -> Path:
    """Two FP32 inputs `a`, `b` [batch, width] -> `sum` and `difference`."""
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    return save(
        make_model(
            [
                helper.make_node("Add", ["a", "b"], ["sum"]),
                helper.make_node("Sub", ["a", "b"], ["difference"]),
            ],
            path.stem,
            [tensor("a"), tensor("b")],
            [tensor("sum"), tensor("difference")],
        ),
        path,
    )


def doubler_model(path: Path, width: int = 4) -> Path:
    """`x` [batch, width] FP32 -> `y` = 2x."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    return save(
        make_model(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            path.stem,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
            [two],
        ),
        path,
    )


def scaler_model(path: Path, factor: float, width: int = 4) -> Path:
    """`x` [batch, width] FP32 -> `y` = factor * x: same signature as `doubler_model`, other
    bytes, so versions of one model can be told apart by their answers."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [factor])
    return save(
        make_model(
            [helper.make_node("Mul", ["x", "scale"], ["y"])],
            path.stem,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
            [scale],
        ),
        path,
    )


def sequence_model(path: Path) -> Path:
    """`x` [batch, length] FP32 with a dynamic length -> `total` [batch] (sum over length)."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    return save(
        make_model(
            [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
            path.stem,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
            [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
            [axes],
        ),
        path,
    )


def fixed_model(path: Path) -> Path:
    """`x` [2, 3] FP32 with no batch dimension -> `y` = x + 1."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    return save(
        make_model(
            [helper.make_node("Add", ["x", "one"], ["y"])],
            path.stem,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
            [one],
        ),
        path,
    )


# --- real agent processes ---------------------------------------------------------------------

START_LINE = re.compile(r"listening on (http://[^\s]+) ")


@dataclass
class Agent:
    process: subprocess.Popen
    url: str
    log_path: Path
    client: httpx.Client = field(repr=False)

    @property
    def address(self) -> str:
        """host:port, as tritonclient wants it."""
        return self.url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.client.post(self.url + path, **kwargs)

    def metrics(self) -> str:
        return self.get("/metrics").text


def wait_until(predicate: Callable[[], object], *, timeout: float = 20, what: str = "it") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def agent_command(models: Path, state: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "inference",
        "serve",
        "--models",
        str(models),
        "--port",
        "0",
        "--state-dir",
        str(state),
        *args,
    ]


@contextmanager
def running_agent(
    models: Path,
    state: Path,
    *args: str,
    log_path: Path,
    ready: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> Iterator[Agent]:
    """Start `python -m inference serve` on a free port, wait for its start line (and for
    readiness unless ready=False), and stop it afterwards. `headers` go with every request of
    `agent.get/post` (an enrolled agent wants a tenant's token: FakeConsole.auth())."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            agent_command(models, state, *args),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    client = httpx.Client(timeout=10, headers=headers)
    try:

        def started() -> str | None:
            match = START_LINE.search(log_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if process.poll() is not None:
                raise AssertionError(
                    f"the agent exited with {process.returncode}:\n{log_path.read_text()}"
                )
            return None

        url = wait_until(started, timeout=timeout, what="the agent's start line")
        agent = Agent(process=process, url=str(url), log_path=log_path, client=client)
        if ready:
            wait_until(
                lambda: _status(agent, "/v2/health/ready") == 200,
                timeout=timeout,
                what="the agent to be ready",
            )
        yield agent
    finally:
        client.close()
        stop(process)


def _status(agent: Agent, path: str) -> int | None:
    if agent.process.poll() is not None:
        raise AssertionError(f"the agent exited with {agent.process.returncode}:\n{agent.log()}")
    try:
        return agent.get(path).status_code
    except httpx.HTTPError:
        return None


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- a fake console ----------------------------------------------------------------------------


@dataclass
class ConsoleCall:
    path: str
    headers: dict[str, str]
    body: dict


def enrollment(heartbeat_interval_s: int = 1, public_key: str = "A" * 43 + "=") -> dict:
    """The fake console's EnrollResponse, as JSON."""
    return {
        "node_uid": "node-0001",
        "name": "fra-nano-1",
        "region": "eu-west",
        "node_class": "nano",
        "credential": "opn_secret-credential",
        "console_public_key": public_key,
        "heartbeat_interval_s": heartbeat_interval_s,
    }


# The tenant the fake console's bundle lets call every model (FakeConsole.auth()).
TESTER = "tester"
# An answer callable's way of saying: close the connection without answering.
DROP = object()


class FakeConsole:
    """The console's node endpoints, answering what the test says, recording every call.

    `answers[path]` is a callable (call) -> (status, body dict); defaults enroll everyone and
    accept every heartbeat. Heartbeat replies carry `desired_models` when it is not None (set
    it, or use `offer`), and `GET /api/v1/nodes/artifacts/{sha256}` serves `artifacts[sha256]`.

    Like the real console it has an Ed25519 key: its policy bundle (`GET /api/v1/nodes/bundle`,
    named in every heartbeat answer) lets the tenant TESTER call anything here, and `auth()`
    gives the Authorization header of a token for TESTER that enrolled agents accept;
    `publish()` replaces it. `enrollments[token]` gives the agent enrolling with that token
    another identity (several nodes on one fake console).

    Usage (`POST /api/v1/nodes/usage`): batches are stored by (node_uid, batch_seq) and answered
    with a UsageAck, `duplicate` for a repeat with the same content and `conflict` for another
    content under a number seen. `usage_script` scripts the next uploads: "503" answers 503,
    "drop" closes the connection without storing or answering, "stored-drop" stores the batch
    and then closes the connection unanswered. While `usage_hold` is an Event, a stored batch's
    answer waits for it (the agent can be killed meanwhile). `usage_refusal`, when set, answers
    every upload 400 with that message.
    """

    def __init__(self, port: int = 0, heartbeat_interval_s: int = 1, key=None) -> None:
        from inference import protocol

        self.protocol = protocol
        self.key = key or protocol.generate_private_key()
        self.bundle = protocol.sign_bundle(self.key, tester_bundle())
        self.calls: list[ConsoleCall] = []
        self.heartbeat_interval_s = heartbeat_interval_s
        self.answers: dict[str, Callable[[ConsoleCall], tuple[int, dict] | object]] = {
            protocol.ENROLL_PATH: self.enroll_ok,
            protocol.HEARTBEAT_PATH: self.heartbeat_ok,
            protocol.USAGE_PATH: self.usage_ok,
        }
        # Enrollment token -> fields of the EnrollResponse that differ from enrollment().
        self.enrollments: dict[str, dict] = {}
        self.usage: dict[tuple[str, int], dict] = {}
        # (node_uid, batch_seq, outcome) of every usage upload answered with an ack.
        self.usage_outcomes: list[tuple[str, int, str]] = []
        self.usage_script: list[str] = []
        self.usage_hold: threading.Event | None = None
        self.usage_refusal: str | None = None
        # Set whenever a usage batch has been stored (also one whose answer is held).
        self.usage_received = threading.Event()
        self._lock = threading.Lock()
        # What heartbeat replies ask for (a list of DesiredVersion dicts), None: nothing.
        self.desired_models: list[dict] | None = None
        # sha256 -> the bytes served for it (a test may serve other bytes than the hash says).
        self.artifacts: dict[str, bytes] = {}
        console = self
        artifact_prefix = protocol.ARTIFACT_PATH.split("{")[0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                call = ConsoleCall(self.path, {k.lower(): v for k, v in self.headers.items()}, {})
                console.calls.append(call)
                if self.path == protocol.BUNDLE_PATH:
                    data = console.bundle.model_dump_json().encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                sha256 = self.path.removeprefix(artifact_prefix)
                data = (
                    console.artifacts.get(sha256) if self.path.startswith(artifact_prefix) else None
                )
                if data is None:
                    data, status = b'{"detail": "Not Found"}', 404
                    kind = "application/json"
                else:
                    status, kind = 200, "application/octet-stream"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                if status == 200:
                    self.send_header("x-outpost-sha256", sha256)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                call = ConsoleCall(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw or b"{}"),
                )
                console.calls.append(call)
                answer = console.answers.get(self.path)
                result = answer(call) if answer else (404, {"detail": "Not Found"})
                if result is DROP:
                    self.close_connection = True
                    return
                status, body = result
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller is gone (a test killed the agent while we held the answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls_to(self, path: str) -> list[ConsoleCall]:
        return [c for c in self.calls if c.path == path]

    @property
    def public_key(self) -> str:
        return self.protocol.public_key_to_b64(self.key.public_key())

    def token(self, tenant: str = TESTER, ttl_s: int = 600) -> str:
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC).replace(microsecond=0)
        return self.protocol.issue_token(
            self.key,
            self.protocol.TokenClaims(
                tenant=tenant,
                scopes=[self.protocol.SCOPE_INFER],
                issued_at=now,
                expires_at=now + timedelta(seconds=ttl_s),
                token_id=f"tok-{tenant}-{time.monotonic_ns()}",
                key_id=self.protocol.key_id(self.key.public_key()),
            ),
        )

    def auth(self) -> dict[str, str]:
        """Headers of a request by TESTER, whom the fake console's bundle lets call anything."""
        return {"Authorization": f"Bearer {self.token()}"}

    def publish(self, bundle) -> None:
        """Sign and serve `bundle` (a PolicyBundle); heartbeat answers name its revision."""
        self.bundle = self.protocol.sign_bundle(self.key, bundle)

    def enroll_ok(self, call: ConsoleCall) -> tuple[int, dict]:
        identity = enrollment(self.heartbeat_interval_s, self.public_key)
        return 201, {**identity, **self.enrollments.get(call.body.get("token"), {})}

    def _credentials(self) -> dict[str, str]:
        """node_uid -> the credential it was given at enrollment."""
        default = enrollment()
        known = {default["node_uid"]: default["credential"]}
        for fields in self.enrollments.values():
            known[fields.get("node_uid", default["node_uid"])] = fields.get(
                "credential", default["credential"]
            )
        return known

    def usage_ok(self, call: ConsoleCall) -> tuple[int, dict] | object:
        with self._lock:
            step = self.usage_script.pop(0) if self.usage_script else None
        if step == "503":
            return 503, {"error": "the console is busy"}
        if step == "drop":
            return DROP
        if self.usage_refusal is not None:
            return 400, {"error": self.usage_refusal}
        try:
            batch = self.protocol.UsageBatch.model_validate(call.body)
        except ValueError as exc:
            return 422, {"detail": str(exc)}
        expected = self._credentials().get(batch.node_uid)
        if call.headers.get("authorization") != f"Bearer {expected}":
            return 401, {"detail": "Unauthorized"}
        key = (batch.node_uid, batch.batch_seq)
        with self._lock:
            seen = self.usage.get(key)
            if seen is None:
                self.usage[key] = call.body
                outcome = "stored"
            else:
                outcome = "duplicate" if seen == call.body else "conflict"
            self.usage_outcomes.append((*key, outcome))
        self.usage_received.set()
        if step == "stored-drop":
            return DROP
        hold = self.usage_hold
        if hold is not None:
            hold.wait(30)
        count = len(batch.records)
        return 200, {
            "batch_seq": batch.batch_seq,
            "outcome": outcome,
            "accepted": count if outcome == "stored" else 0,
            "quarantined": count if outcome == "conflict" else 0,
        }

    def usage_records(self, node_uid: str | None = None) -> list[dict]:
        """Every stored usage record (of one node, if given), batch by batch."""
        with self._lock:
            batches = sorted(self.usage.items())
        return [
            record
            for (uid, _), body in batches
            if node_uid is None or uid == node_uid
            for record in body["records"]
        ]

    def billed(self, node_uid: str | None = None, **match) -> int:
        """Inferences counted (`count`) in the stored records matching `match` field values."""
        return sum(
            r["count"]
            for r in self.usage_records(node_uid)
            if all(r[k] == v for k, v in match.items())
        )

    def heartbeat_ok(self, call: ConsoleCall) -> tuple[int, dict]:
        reply = {
            "status": "online",
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "server_time": "2026-01-01T00:00:00Z",
            "desired_bundle_revision": self.bundle.bundle.revision,
        }
        if self.desired_models is not None:
            reply["desired_models"] = list(self.desired_models)
        return 200, reply

    def offer(
        self, model: str, version: str, path: Path, share: float, *, served: bytes | None = None
    ) -> dict:
        """A DesiredVersion (as JSON) for the ONNX file at `path`, its bytes made downloadable.
        `served` replaces the bytes sent for it (a tampered artifact); the hash stays the
        file's."""
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        self.artifacts[sha256] = data if served is None else served
        return {
            "model": model,
            "version": version,
            "sha256": sha256,
            "size_bytes": len(data),
            "url": self.protocol.ARTIFACT_PATH.format(sha256=sha256),
            "traffic_share": share,
        }

    def heartbeat_models(self) -> list[dict]:
        """The `models` of the latest heartbeat (empty before the first)."""
        beats = self.calls_to(self.protocol.HEARTBEAT_PATH)
        return beats[-1].body["models"] if beats else []


def tester_bundle(revision: int = 1):
    """A policy bundle with one tenant, TESTER, whom nothing limits: no pools, no prices."""
    from datetime import UTC, datetime, timedelta

    from inference.protocol import PolicyBundle, TenantRules

    now = datetime.now(UTC)
    return PolicyBundle(
        revision=revision,
        issued_at=now,
        expires_at=now + timedelta(hours=6),
        tenants=[
            TenantRules(
                slug=TESTER,
                privacy="any",
                fallback="reject",
                quality="best_effort",
                currency="EUR",
                on_budget_exhausted="alert",
            )
        ],
    )
