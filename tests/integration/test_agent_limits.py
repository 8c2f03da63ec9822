"""Whatever a client sends, a real agent answers with an error and stays up: bodies over the
limit are refused before they are read, and random garbage never gets a 5xx."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from tests.inference.harness import add_sub_model, identity_model, running_agent

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    add_sub_model(models / "add-sub.onnx")
    identity_model(models / "identity-bytes.onnx", "BYTES")
    identity_model(models / "identity-int8.onnx", "INT8")
    state = tmp_path_factory.mktemp("state")
    with running_agent(
        models, state, "--max-body-bytes", str(MAX_BODY), log_path=state / "agent.log"
    ) as running:
        yield running


def _raw_request(agent, request: bytes, *, then: bytes = b"", timeout: float = 5) -> bytes:
    host, port = agent.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        if then:
            try:
                sock.sendall(then)
            except OSError:
                pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_it_rejects_a_body_over_the_limit_without_reading_it(agent):
    started = time.monotonic()
    answer = _raw_request(
        agent,
        b"POST /v2/models/add-sub/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n",
    )
    # The socket closes after the answer although 10 GB were announced and none was sent.
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"accepts at most 1048576" in answer
    assert time.monotonic() - started < 5


def test_it_stops_a_chunked_body_at_the_limit(agent):
    chunk = b"x" * 65536
    stream = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 40  # 2.5 MiB, over the 1 MiB limit
    answer = _raw_request(
        agent,
        b"POST /v2/models/add-sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        then=stream,
    )
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"exceeds 1048576 bytes" in answer


def test_garbage_does_not_kill_the_server(agent):
    rng = random.Random(1234)
    targets = [
        "/v2/models/add-sub/infer",
        "/v2/models/identity-bytes/infer",
        "/v2/models/identity-int8/infer",
        "/v2/repository/index",
    ]

    keys = [
        "name",
        "shape",
        "datatype",
        "data",
        "inputs",
        "outputs",
        "parameters",
        "id",
        "binary_data_size",
        "binary_data",
    ]
    makers = [
        lambda d: None,
        lambda d: rng.random() * 1e308,
        lambda d: rng.randrange(-(2**70), 2**70),
        lambda d: "s" * rng.randrange(5),
        lambda d: rng.choice([True, False]),
        lambda d: [junk_value(d + 1) for _ in range(rng.randrange(4))],
        lambda d: {rng.choice(keys): junk_value(d + 1) for _ in range(rng.randrange(5))},
        lambda d: {
            "inputs": [
                {
                    "name": rng.choice(["a", "b", "x"]),
                    "shape": junk_value(d + 1),
                    "datatype": rng.choice(["FP32", "BYTES", "INT8", "X"]),
                    "data": junk_value(d + 1),
                }
            ]
        },
    ]

    def junk_value(depth=0):
        return makers[rng.randrange(8 if depth < 3 else 5)](depth)

    statuses = set()
    for _ in range(300):
        if rng.random() < 0.3:
            body = rng.randbytes(rng.randrange(200))
        else:
            body = json.dumps(junk_value()).encode()
        headers = {}
        if rng.random() < 0.2:
            headers["inference-header-content-length"] = str(rng.randrange(-5, len(body) + 5))
        response = agent.post(rng.choice(targets), content=body, headers=headers)
        statuses.add(response.status_code)
        assert response.status_code < 500, response.text
        assert "error" in response.json() or response.status_code == 200
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"\x00\xff" * 100 + b"\r\n\r\n",
    ):
        _raw_request(agent, raw, timeout=2)
    assert agent.get("/v2/health/live").status_code == 200
    assert statuses >= {400}
