"""The SDK (`inference/sdk.py`) and `python -m inference register`, against a fake console.

For the SDK the console is the outside world, so these tests run a small HTTP server of their
own that keeps the console's contract: it parses the multipart body for real (stdlib `email`),
checks the API key, the name, the signals and that the file is ONNX, answers 201 for new bytes
and 200 (`created: false`) for bytes it has, and grades a version after a few polls. The real
console is exercised in tests/integration/test_sdk_live.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference import protocol
from inference.cli import RegisterProgress, format_version, parse_signals
from inference.sdk import CHUNK_BYTES, Outpost, OutpostError
from tests.inference.harness import ROOT, add_sub_model, make_model, save

API_KEY = "opk_acme_secret"
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
VERSION_PATH = re.compile(rf"^{protocol.MODELS_PATH}/([^/]+)/versions/(\d+)$")


# --- the fake console ------------------------------------------------------------------------


class FakeConsole(ThreadingHTTPServer):
    """The console's model registry API, as the contract in inference/protocol.py says."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeConsoleHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.versions: dict[str, list[dict]] = {}
        self.uploads: list[dict] = []  # what each POST carried: headers and form fields
        self.polls: dict[tuple[str, int], int] = {}
        # How grading goes: "graded" or "failed" after `polls_to_grade` GETs, or "never".
        self.outcome = "graded"
        self.polls_to_grade = 2
        self.max_bytes = 10 * 2**20

    def version_info(self, name: str, number: int) -> dict:
        return self.versions[name][number - 1]


class FakeConsoleHandler(BaseHTTPRequestHandler):
    server: FakeConsole

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self.answer(401, {"error": "invalid API key"})
        return False

    def do_GET(self) -> None:
        match = VERSION_PATH.match(self.path)
        if not match:
            return self.answer(404, {"error": f"no route {self.path}"})
        if not self.authorised():
            return None
        name, number = match[1], int(match[2])
        console = self.server
        with console.lock:
            if name not in console.versions or not 1 <= number <= len(console.versions[name]):
                return self.answer(404, {"error": f"no version {number} of a model named {name!r}"})
            info = console.version_info(name, number)
            polls = console.polls[name, number] = console.polls.get((name, number), 0) + 1
            if info["status"] == "grading" and polls >= console.polls_to_grade:
                grade(info, console.outcome)
            return self.answer(200, {**info, "created": True})

    def do_POST(self) -> None:
        if self.path != protocol.MODELS_PATH:
            return self.answer(404, {"error": f"no route {self.path}"})
        if "Content-Length" not in self.headers:
            return self.answer(411, {"error": "a Content-Length is required"})
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.authorised():
            return None
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data; boundary="):
            return self.answer(400, {"error": "expected multipart/form-data"})
        form, files = parse_multipart(content_type, body)
        console = self.server
        console.uploads.append({"headers": dict(self.headers), "form": form, "files": files})
        if "file" not in files:
            return self.answer(400, {"error": "file: this field is required"})
        filename, data = files["file"]
        name = form.get("name", "")
        if not SLUG.match(name):
            return self.answer(400, {"error": "name must be lowercase letters, digits and dashes"})
        signals = json.loads(form["signals"]) if form.get("signals") else {}
        if not isinstance(signals, dict) or any(
            t not in protocol.SIGNAL_TYPES for t in signals.values()
        ):
            return self.answer(400, {"error": "signals must map field names to a signal type"})
        if len(data) > console.max_bytes:
            return self.answer(413, {"error": f"models may be at most {console.max_bytes} bytes"})
        try:
            model = onnx.load_from_string(data)
            onnx.checker.check_model(model)
        except Exception as exc:
            return self.answer(400, {"error": f"{filename} is not a valid ONNX model: {exc}"})
        digest = hashlib.sha256(data).hexdigest()
        with console.lock:
            versions = console.versions.setdefault(name, [])
            for info in versions:
                if info["sha256"] == digest:
                    return self.answer(200, {**info, "created": False})
            info = {
                "model": name,
                "owner": "acme",
                "version": len(versions) + 1,
                "sha256": digest,
                "size_bytes": len(data),
                "status": "grading",
                "created": True,
                "signals": signals,
                "opset": model.opset_import[0].version,
                "inputs": [{"name": i.name} for i in model.graph.input],
                "outputs": [{"name": o.name} for o in model.graph.output],
            }
            versions.append(info)
        return self.answer(201, info)


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict]:
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart() and not message.defects, message.defects
    form: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if part.get_filename() is not None:
            files[name] = (part.get_filename(), data)
        else:
            form[name] = data.decode()
    return form, files


def grade(info: dict, outcome: str) -> None:
    if outcome == "graded":
        info.update(
            status="graded",
            grade="tiny",
            node_class="nano",
            latency=[
                {
                    "node_class": "nano",
                    "p50_ms": 0.21,
                    "p95_ms": 0.48,
                    "fits_memory": True,
                    "meets_target": True,
                },
                {
                    "node_class": "standard",
                    "p50_ms": 0.1,
                    "p95_ms": 0.2,
                    "fits_memory": True,
                    "meets_target": True,
                },
            ],
            reasons=["0.4 MFLOP per row: classification-sized", "nano meets the 20 ms p95"],
        )
    elif outcome == "failed":
        info.update(status="failed", failure="onnxruntime cannot load it: unsupported op Foo")


@pytest.fixture
def console() -> Iterator[FakeConsole]:
    server = FakeConsole()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def model_file(tmp_path) -> Path:
    return add_sub_model(tmp_path / "clf.onnx")


def large_model(path: Path, floats: int = 100_000) -> Path:
    """A valid ONNX file of several upload chunks: `x` + a constant vector."""
    constant = numpy_helper.from_array(np.arange(floats, dtype=np.float32), "c")
    tensor = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [floats])  # noqa: E731
    return save(
        make_model(
            [helper.make_node("Add", ["x", "c"], ["y"])],
            "big",
            [tensor("x")],
            [tensor("y")],
            [constant],
        ),
        path,
    )


# --- the SDK ---------------------------------------------------------------------------------


def test_it_uploads_waits_for_the_grade_and_returns_it(console, model_file):
    console.polls_to_grade = 3
    with Outpost(console.url + "/", API_KEY) as outpost:  # a trailing slash is fine
        info = outpost.register_model(
            model_file, name="churn", signals={"tier": "string", "visits": "int"}
        )
    assert (info.model, info.version, info.status, info.created) == ("churn", 1, "graded", True)
    assert (info.grade, info.node_class) == ("tiny", "nano")
    assert [c.node_class for c in info.latency] == ["nano", "standard"]
    assert info.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert console.polls["churn", 1] == 3
    upload = console.uploads[0]
    assert upload["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert upload["form"] == {"name": "churn", "signals": '{"tier":"string","visits":"int"}'}
    assert upload["files"]["file"] == ("clf.onnx", model_file.read_bytes())


def test_without_waiting_it_returns_the_new_version_still_grading(console, model_file):
    with Outpost(console.url, API_KEY) as outpost:
        info = outpost.register_model(model_file, name="churn", description="v1", wait=False)
    assert (info.status, info.created, info.grade) == ("grading", True, None)
    assert console.uploads[0]["form"] == {"name": "churn", "description": "v1"}
    assert console.polls == {}


def test_the_same_bytes_again_are_recognised_not_registered_twice(console, model_file, tmp_path):
    other = add_sub_model(tmp_path / "other.onnx", width=8)
    with Outpost(console.url, API_KEY) as outpost:
        first = outpost.register_model(model_file, name="churn")
        again = outpost.register_model(model_file, name="churn")
        second = outpost.register_model(other, name="churn", wait=False)
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created, again.status) == (1, False, "graded")
    assert (second.version, second.created) == (2, True)


def test_a_failed_grade_is_returned_not_raised(console, model_file):
    console.outcome = "failed"
    with Outpost(console.url, API_KEY) as outpost:
        info = outpost.register_model(model_file, name="churn")
    assert info.status == "failed"
    assert info.failure == "onnxruntime cannot load it: unsupported op Foo"


def test_get_version_reads_one_version(console, model_file):
    with Outpost(console.url, API_KEY) as outpost:
        outpost.register_model(model_file, name="churn", wait=False)
        assert outpost.get_version("churn", 1).status == "grading"
        with pytest.raises(OutpostError, match="no version 7 of a model named 'churn'") as caught:
            outpost.get_version("churn", 7)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("key", "file_bytes", "status", "message"),
    [
        ("opk_wrong", None, 401, "invalid API key"),
        (API_KEY, b"not onnx at all", 400, "clf.onnx is not a valid ONNX model"),
    ],
)
def test_console_errors_surface_with_their_message_and_status(
    console, model_file, key, file_bytes, status, message
):
    if file_bytes is not None:
        model_file.write_bytes(file_bytes)
    with Outpost(console.url, key) as outpost, pytest.raises(OutpostError) as caught:
        outpost.register_model(model_file, name="churn")
    assert caught.value.status == status
    assert caught.value.message.startswith(message)
    assert str(caught.value).endswith(f"(HTTP {status})")


def test_a_file_over_the_consoles_limit_gets_its_413(console, tmp_path):
    console.max_bytes = 1000
    path = large_model(tmp_path / "big.onnx", floats=1000)
    with Outpost(console.url, API_KEY) as outpost, pytest.raises(OutpostError) as caught:
        outpost.register_model(path, name="churn")
    assert (caught.value.status, caught.value.message) == (413, "models may be at most 1000 bytes")


def test_an_unreachable_console_is_a_clear_error(model_file):
    with Outpost(f"http://127.0.0.1:{unused_port()}", API_KEY) as outpost:
        with pytest.raises(
            OutpostError, match="cannot reach the console at http://127.0.0.1"
        ) as caught:
            outpost.register_model(model_file, name="churn")
    assert caught.value.status is None


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        ({"tier": "text"}, "signal 'tier' has type 'text'; use one of string, int, float, bool"),
        ({"": "int"}, "a signal needs a non-empty field name"),
        ({"  ": "int"}, "a signal needs a non-empty field name"),
        ({" tier": "string"}, "signal name ' tier' has leading or trailing spaces"),
        (["tier"], "signals must be a mapping"),
    ],
)
def test_signals_are_checked_before_anything_is_uploaded(console, model_file, signals, message):
    with Outpost(console.url, API_KEY) as outpost, pytest.raises(OutpostError) as caught:
        outpost.register_model(model_file, name="churn", signals=signals)
    assert caught.value.message.startswith(message)
    assert caught.value.status is None
    assert console.uploads == []


def test_the_file_and_name_are_checked_before_anything_is_uploaded(console, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with Outpost(console.url, API_KEY) as outpost:
        with pytest.raises(OutpostError, match="missing.onnx does not exist"):
            outpost.register_model(tmp_path / "missing.onnx", name="churn")
        with pytest.raises(OutpostError, match="is a directory"):
            outpost.register_model(tmp_path, name="churn")
        with pytest.raises(OutpostError, match="empty.onnx is empty"):
            outpost.register_model(empty, name="churn")
        with pytest.raises(OutpostError, match="model name 'Churn Model' is not a slug"):
            outpost.register_model(empty, name="Churn Model")
    assert console.uploads == []


def test_the_console_url_must_be_http(model_file):
    with pytest.raises(OutpostError, match="must start with http:// or https://"):
        Outpost("console.example", API_KEY)


def test_progress_reports_upload_bytes_then_grading_seconds(console, tmp_path):
    path = large_model(tmp_path / "big.onnx")
    size = path.stat().st_size
    assert size > 4 * CHUNK_BYTES
    events: list[tuple[str, int, int]] = []
    with Outpost(console.url, API_KEY) as outpost:
        outpost.register_model(
            path, name="big", timeout=30, on_progress=lambda *e: events.append(e)
        )
    upload = [(done, total) for phase, done, total in events if phase == "upload"]
    assert upload[0] == (0, size) and upload[-1] == (size, size)
    assert len(upload) >= 6
    assert all(a[0] < b[0] for a, b in zip(upload, upload[1:], strict=False))
    grading = [(done, total) for phase, done, total in events if phase == "grading"]
    assert grading and all(total == 30 for _, total in grading)
    assert [d for d, _ in grading] == sorted(d for d, _ in grading)
    # The phases do not interleave: every upload event comes before the grading ones.
    assert [phase for phase, *_ in events] == ["upload"] * len(upload) + ["grading"] * len(grading)


def test_a_grade_that_takes_too_long_is_a_timeout_carrying_the_version(console, model_file):
    console.outcome = "never"
    with Outpost(console.url, API_KEY) as outpost, pytest.raises(OutpostError) as caught:
        outpost.register_model(model_file, name="churn", timeout=0.6)
    assert "model churn version 1 is still grading after 0.6 s" in caught.value.message
    assert caught.value.status is None
    assert caught.value.info is not None and caught.value.info.status == "grading"
    assert 2 <= console.polls["churn", 1] <= 4  # 0.25 s, then 0.375 s: gentle


# --- the CLI ---------------------------------------------------------------------------------


def register(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "OUTPOST_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "inference", "register", *args],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_registers_waits_and_prints_a_summary(console, model_file):
    result = register(
        str(model_file),
        "--name=churn",
        f"--console={console.url}",
        "--signal=tier:string",
        "--signal=visits:int",
        env={"OUTPOST_API_KEY": API_KEY},  # not on the command line, so not in `ps`
    )
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    out = result.stdout
    assert "model       churn (tenant acme)" in out
    assert "version     1, new" in out
    assert f"sha256      {digest[:16]}…" in out
    assert "grade       tiny" in out
    assert "node class  nano" in out
    assert re.search(
        r"latency\s+nano\s+p50\s+0\.21 ms\s+p95\s+0\.48 ms\s+meets the p95 target", out
    )
    assert "why         - 0.4 MFLOP per row: classification-sized" in out
    # stderr is not a terminal here: plain progress lines, no bar redrawn in place.
    assert "\r" not in result.stderr
    assert "uploading" in result.stderr and "grading (waiting up to 300 s)" in result.stderr
    assert console.uploads[0]["form"]["signals"] == '{"tier":"string","visits":"int"}'


def test_cli_says_when_the_bytes_were_registered_before(console, model_file):
    args = (str(model_file), "--name=churn", f"--console={console.url}", f"--api-key={API_KEY}")
    assert register(*args).returncode == 0
    result = register(*args, "--no-wait")
    assert result.returncode == 0
    assert "version     1, already registered: these exact bytes" in result.stdout


def test_cli_json_prints_the_version_as_the_wire_format(console, model_file):
    result = register(
        str(model_file),
        "--name=churn",
        f"--console={console.url}",
        f"--api-key={API_KEY}",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    info = protocol.ModelVersionInfo.model_validate_json(result.stdout)
    assert (info.status, info.grade) == ("graded", "tiny")


def test_cli_no_wait_returns_at_once(console, model_file):
    result = register(
        str(model_file),
        "--name=churn",
        f"--console={console.url}",
        f"--api-key={API_KEY}",
        "--no-wait",
    )
    assert result.returncode == 0
    assert "status      grading" in result.stdout
    assert console.polls == {}


def test_cli_exits_1_when_grading_fails(console, model_file):
    console.outcome = "failed"
    result = register(
        str(model_file), "--name=churn", f"--console={console.url}", f"--api-key={API_KEY}"
    )
    assert result.returncode == 1
    assert "failure     onnxruntime cannot load it: unsupported op Foo" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "an API key is needed: --api-key KEY or env OUTPOST_API_KEY"),
        (["--api-key=opk_wrong"], "invalid API key (HTTP 401)"),
        ([f"--api-key={API_KEY}", "--signal=tier"], "--signal 'tier' is not NAME:TYPE"),
        ([f"--api-key={API_KEY}", "--signal=tier:text"], "signal 'tier' has type 'text'"),
        ([f"--api-key={API_KEY}", "--timeout=0"], "--timeout must be a positive number"),
    ],
)
def test_cli_exits_2_with_the_reason(console, model_file, args, message):
    result = register(str(model_file), "--name=churn", f"--console={console.url}", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_cli_exits_2_on_a_grading_timeout_and_shows_the_version(console, model_file):
    console.outcome = "never"
    result = register(
        str(model_file),
        "--name=churn",
        f"--console={console.url}",
        f"--api-key={API_KEY}",
        "--timeout=0.5",
    )
    assert result.returncode == 2
    assert "still grading after 0.5 s" in result.stderr
    assert "status      grading" in result.stdout


def test_signal_flags_parse_to_a_mapping():
    assert parse_signals(["tier:string", "visits:int"]) == {"tier": "string", "visits": "int"}
    with pytest.raises(ValueError, match="given twice"):
        parse_signals(["tier:string", "tier:int"])


def test_the_progress_bar_is_drawn_in_place_on_a_terminal():
    stream = io.StringIO()
    progress = RegisterProgress(stream, tty=True)
    for done in (0, 1024, 2048):
        progress("upload", done, 2048)
    progress("grading", 0, 300)
    progress.finish()
    lines = stream.getvalue().split("\n")
    assert lines[0].endswith("upload  [##############################] 100%  2.0 KiB / 2.0 KiB")
    assert "\r\x1b[2Kupload  [" in lines[0]
    assert lines[1] == "\r\x1b[2Kgrading / 0 s (waiting up to 300 s)"
    assert lines[2] == ""


def test_the_summary_of_a_catalogue_version_in_grading():
    info = protocol.ModelVersionInfo(
        model="resnet",
        owner=None,
        version=4,
        sha256="ab" * 32,
        size_bytes=3 * 2**20,
        status="grading",
        created=True,
        opset=17,
    )
    text = format_version(info)
    assert "model       resnet (catalogue)" in text
    assert "sha256      abababababababab…  (3.0 MiB, opset 17)" in text
    assert "grading carries on in the console" in text
