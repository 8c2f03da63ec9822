"""The demo's traffic generator: valid OIP v2 bodies from model metadata, a bounded rate, and
nodes that are down tolerated. Pure functions, plus one short run against a fake node."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from console.demo.traffic import (
    UnsupportedModel,
    build_infer_request,
    concrete_shape,
    model_weight,
    rate_at,
    run_traffic,
)
from inference.codec import decode_infer_request
from inference.datatypes import from_oip
from inference.specs import ModelSpec, TensorSpec, model_metadata

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny-classifier",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
}


def spec_of(*inputs: tuple[str, str, tuple[int, ...]]) -> ModelSpec:
    return ModelSpec(
        name="m",
        version="1",
        inputs=tuple(TensorSpec(n, from_oip(t), s) for n, t, s in inputs),
        outputs=(TensorSpec("y", from_oip("FP32"), (-1,)),),
        batchable=True,
    )


def test_dynamic_dimensions_become_a_batch_of_one():
    assert concrete_shape([-1, 8]) == [1, 8]
    assert concrete_shape([-1, 3, -1, 4]) == [1, 3, 1, 4]
    assert concrete_shape([2, 8]) == [2, 8]
    assert concrete_shape([-1, 8], batch=4) == [4, 8]


def test_it_builds_a_request_matching_the_metadata():
    body = build_infer_request(TINY, np.random.default_rng(1))

    assert body["inputs"][0]["name"] == "features"
    assert body["inputs"][0]["shape"] == [1, 8]
    assert body["inputs"][0]["datatype"] == "FP32"
    assert len(body["inputs"][0]["data"]) == 8
    assert all(isinstance(v, float) for v in body["inputs"][0]["data"])
    json.dumps(body)  # plain JSON types only


@pytest.mark.parametrize(
    "datatype", ["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES"]
)
def test_the_agent_accepts_what_it_builds_for_each_datatype(datatype):
    spec = spec_of(("x", datatype, (-1, 3, -1)), ("mask", "BOOL", (-1, 2)))
    metadata = orjson.loads(model_metadata(spec))

    body = build_infer_request(metadata, np.random.default_rng(2))
    decoded = decode_infer_request(json.dumps(body).encode(), None, spec)

    assert [a.shape for a in decoded.arrays] == [(1, 3, 1), (1, 2)]
    assert decoded.rows == 1


def test_a_model_it_cannot_feed_is_refused():
    with pytest.raises(UnsupportedModel):
        build_infer_request({"name": "m", "inputs": []}, np.random.default_rng())
    with pytest.raises(UnsupportedModel):
        build_infer_request(
            {"name": "m", "inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1]}]},
            np.random.default_rng(),
        )


def test_small_models_are_called_more_often_than_large_ones():
    assert model_weight("tiny-classifier") > model_weight("random-mlp-medium")
    assert model_weight("random-mlp-medium") > model_weight("random-convnet-large")


def test_the_rate_moves_within_bounds():
    rates = [rate_at(2.0, t, period=60, phase=0.5) for t in range(0, 120)]
    assert min(rates) >= 2.0 * 0.7 - 1e-9
    assert max(rates) <= 2.0 * 1.3 + 1e-9
    assert max(rates) - min(rates) > 1.0


def test_it_runs_without_django():
    code = (
        "import sys; sys.path.insert(0, 'console/demo'); import traffic; "
        "assert 'django' not in sys.modules, 'traffic imported django'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


class FakeNode(BaseHTTPRequestHandler):
    """Serves one model's metadata and checks each inference body against it."""

    spec = spec_of(("features", "FP32", (-1, 8)))
    received: list[int] = []
    bad: list[str] = []

    def do_GET(self):
        if self.path == "/v2/models/tiny-classifier":
            self._answer(200, model_metadata(self.spec))
        else:
            self._answer(404, b'{"error": "no such model"}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v2/repository/index":
            self._answer(403, b'{"error": "node-admin only"}')
            return
        try:
            decode_infer_request(body, None, self.spec)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            self.bad.append(str(exc))
        self.received.append(len(body))
        self._answer(200, b'{"model_name": "tiny-classifier", "outputs": []}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_node():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_it_calls_a_live_node_and_carries_on_past_a_dead_one(fake_node):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed

    live_driver, dead_driver = asyncio.run(
        run_traffic([fake_node, dead], rate=20, duration=1.5, seed=3, report_every=60)
    )

    assert FakeNode.bad == []
    assert 5 <= len(FakeNode.received) <= 80  # about 20/s for 1.5 s, never a flood
    assert live_driver.stats["ok"] == len(FakeNode.received)
    assert [m.name for m in live_driver.models] == ["tiny-classifier"]
    assert not dead_driver.up
    assert dead_driver.stats["ok"] == 0


def test_tenant_keys_are_slug_key_pairs():
    from console.demo.traffic import parse_tenant_keys

    assert parse_tenant_keys("acme=opk_1, globex=opk_2,") == {"acme": "opk_1", "globex": "opk_2"}
    assert parse_tenant_keys("") == {}
    with pytest.raises(ValueError, match="slug=key pairs"):
        parse_tenant_keys("acme")


def test_a_tenants_own_model_is_called_as_its_owner_and_the_catalogue_as_anyone():
    from console.demo.traffic import tenant_for

    rng = np.random.default_rng(1)
    tenants = ["acme", "globex", "nakamura"]
    assert tenant_for("acme.churn", tenants, rng) == "acme"
    assert tenant_for("initech.churn", tenants, rng) is None  # not ours to call
    assert {tenant_for("tiny-classifier", tenants, rng) for _ in range(60)} == set(tenants)
    assert tenant_for("tiny-classifier", [], rng) is None


@pytest.mark.django_db(transaction=True)
def test_tenant_tokens_come_from_the_console_and_name_their_tenant(live_server, acme):
    from billing.models import ApiKey
    from billing.signing import console_private_key
    from console.demo.traffic import TenantTokens
    from inference import protocol

    tokens = TenantTokens(live_server.url, {"acme": ApiKey.issue(acme, "t")[1], "ghost": "opk_x"})

    async def renew():
        async with httpx.AsyncClient() as client:
            await tokens.renew(client)

    asyncio.run(renew())
    assert tokens.tenants == ["acme"]  # the bad key got no token, and the rest carried on
    header = tokens.header("acme")["Authorization"]
    claims = protocol.verify_token(
        console_private_key().public_key(), header.removeprefix("Bearer "), datetime.now(UTC)
    )
    assert claims.tenant == "acme"
    assert tokens.header("ghost") == {} and tokens.header(None) == {}


def test_small_models_get_many_distinct_bodies_and_large_ones_a_few():
    from console.demo.traffic import bodies_for

    assert bodies_for(TINY) == 256
    image = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 128, 128]}]}
    assert bodies_for(image) == 4
