"""Desired-state reconciliation (plan_desired, pure), artifact fetching and per-version health."""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from inference import protocol
from inference.artifacts import ArtifactError, ArtifactMismatch, ArtifactStore
from inference.config import BatchSettings, SessionSettings
from inference.metrics import AgentMetrics, VersionHealth
from inference.repository import (
    LOADING,
    MEMORY_FACTOR,
    READY,
    UNAVAILABLE,
    Held,
    ModelRepository,
    plan_desired,
)
from tests.inference.harness import scaler_model

MiB = 1024 * 1024


def want(
    model: str, version: str, *, share: float = 1.0, size: int = MiB, sha: str = ""
) -> protocol.DesiredVersion:
    sha = sha or hashlib.sha256(f"{model}/{version}".encode()).hexdigest()
    return protocol.DesiredVersion(
        model=model,
        version=version,
        sha256=sha,
        size_bytes=size,
        url=protocol.ARTIFACT_PATH.format(sha256=sha),
        traffic_share=share,
    )


def held(item: protocol.DesiredVersion, state: str = READY, **kwargs) -> Held:
    return Held(
        model=item.model,
        version=item.version,
        sha256=item.sha256,
        state=state,
        memory_bytes=kwargs.pop("memory_bytes", item.size_bytes * MEMORY_FACTOR),
        **kwargs,
    )


BIG = 1 << 40


def test_it_loads_every_desired_version_it_does_not_hold():
    a1, a2 = want("a", "1"), want("a", "2")
    plan = plan_desired([], [a1, a2], budget_bytes=BIG)
    assert plan.load == (a1, a2)
    assert plan.unload == ()
    assert plan.refuse == {}


def test_it_leaves_held_desired_versions_alone():
    a1 = want("a", "1")
    for state in (LOADING, READY):
        assert plan_desired([held(a1, state)], [a1], budget_bytes=BIG) == plan_desired(
            [], [], budget_bytes=BIG
        )


def test_a_version_no_longer_desired_stays_until_its_replacement_is_ready():
    a1, a2 = want("a", "1"), want("a", "2")
    plan = plan_desired([held(a1), held(a2, LOADING)], [a2], budget_bytes=BIG)
    assert plan.unload == ()
    plan = plan_desired([held(a1), held(a2, READY)], [a2], budget_bytes=BIG)
    assert plan.unload == (("a", "1"),)


def test_a_version_whose_replacement_failed_keeps_serving():
    a1, a2 = want("a", "1"), want("a", "2")
    failed = held(a2, UNAVAILABLE, retry_at=100.0)
    plan = plan_desired([held(a1), failed], [a2], budget_bytes=BIG, now=10.0)
    assert plan.unload == ()
    assert plan.load == ()  # not before its retry time


def test_a_failed_version_is_retried_once_its_backoff_has_passed():
    a2 = want("a", "2")
    failed = held(a2, UNAVAILABLE, retry_at=100.0, memory_bytes=0)
    assert plan_desired([failed], [a2], budget_bytes=BIG, now=99.0).load == ()
    assert plan_desired([failed], [a2], budget_bytes=BIG, now=100.0).load == (a2,)


def test_a_model_no_longer_desired_at_all_is_unloaded_at_once():
    a1, b1 = want("a", "1"), want("b", "1")
    plan = plan_desired([held(a1), held(b1)], [b1], budget_bytes=BIG)
    assert plan.unload == (("a", "1"),)


def test_an_empty_desired_list_unloads_every_managed_version():
    a1, b1 = want("a", "1"), want("b", "1")
    plan = plan_desired([held(a1), held(b1, LOADING)], [], budget_bytes=BIG)
    assert set(plan.unload) == {("a", "1"), ("b", "1")}


def test_stale_versions_that_are_not_ready_go_at_once():
    a1, a2, a3 = want("a", "1"), want("a", "2"), want("a", "3")
    plan = plan_desired([held(a1), held(a2, LOADING)], [a3], budget_bytes=BIG)
    assert plan.unload == (("a", "2"),)
    assert plan.load == (a3,)


def test_the_same_version_with_other_bytes_is_replaced():
    old = want("a", "1", sha="1" * 64)
    new = want("a", "1", sha="2" * 64)
    plan = plan_desired([held(old)], [new], budget_bytes=BIG)
    assert plan.unload == (("a", "1"),)
    assert plan.load == (new,)


def test_a_version_that_fits_the_budget_loads():
    a1 = want("a", "1", size=10 * MiB)
    plan = plan_desired([], [a1], budget_bytes=20 * MiB)
    assert plan.load == (a1,)


def test_a_version_too_big_for_the_budget_is_refused_with_a_reason():
    a1 = want("a", "1", size=10 * MiB)
    plan = plan_desired([], [a1], budget_bytes=15 * MiB)
    assert plan.load == ()
    assert plan.refuse[("a", "1")].startswith(
        "does not fit the memory budget: needs 20.0 MiB of 15.0 MiB"
    )


def test_local_models_count_against_the_budget():
    a1 = want("a", "1", size=10 * MiB)
    plan = plan_desired([], [a1], budget_bytes=25 * MiB, other_bytes=10 * MiB)
    assert ("a", "1") in plan.refuse


def test_versions_loading_count_against_the_budget():
    a1, b1 = want("a", "1", size=10 * MiB), want("b", "1", size=10 * MiB)
    plan = plan_desired([held(a1, LOADING)], [a1, b1], budget_bytes=30 * MiB)
    assert ("b", "1") in plan.refuse


def test_it_evicts_the_least_recently_used_version_that_is_not_the_last_of_its_model():
    a1, a2 = want("a", "1", size=10 * MiB), want("a", "2", size=10 * MiB)
    b1 = want("b", "1", size=10 * MiB)
    c1 = want("c", "1", size=10 * MiB)
    holding = [
        held(a1, last_used=1.0),  # least recent, and a2 remains for model a
        held(a2, last_used=5.0),
        held(b1, last_used=0.5),  # older still, but the last ready version of b
    ]
    plan = plan_desired(holding, [a1, a2, b1, c1], budget_bytes=60 * MiB)
    assert plan.unload == (("a", "1"),)
    assert plan.load == (c1,)


def test_it_never_evicts_the_last_ready_version_of_a_model():
    a1, b1 = want("a", "1", size=10 * MiB), want("b", "1", size=10 * MiB)
    plan = plan_desired([held(a1)], [a1, b1], budget_bytes=30 * MiB)
    assert plan.unload == ()
    assert ("b", "1") in plan.refuse


def test_it_evicts_nothing_when_evicting_would_not_make_room():
    a1, a2 = want("a", "1", size=10 * MiB), want("a", "2", size=10 * MiB)
    huge = want("h", "1", size=100 * MiB)
    plan = plan_desired([held(a1), held(a2)], [a1, a2, huge], budget_bytes=50 * MiB)
    assert plan.unload == ()
    assert ("h", "1") in plan.refuse


def test_a_stale_version_unloaded_in_the_same_plan_frees_its_memory():
    a1, b1 = want("a", "1", size=10 * MiB), want("b", "1", size=10 * MiB)
    plan = plan_desired([held(a1)], [b1], budget_bytes=25 * MiB)
    assert plan.unload == (("a", "1"),)
    assert plan.load == (b1,)


def test_a_refused_version_is_planned_again_when_room_appears():
    a1 = want("a", "1", size=10 * MiB)
    refused = held(a1, UNAVAILABLE, memory_bytes=0)
    assert plan_desired([refused], [a1], budget_bytes=10 * MiB).refuse
    assert plan_desired([refused], [a1], budget_bytes=30 * MiB).load == (a1,)


def test_a_duplicate_entry_in_the_desired_list_is_loaded_once():
    a1 = want("a", "1")
    assert plan_desired([], [a1, a1], budget_bytes=BIG).load == (a1,)


# --- artifacts ---------------------------------------------------------------------------------

GOOD = b"model bytes " * 1000
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


def store_serving(tmp_path, body: bytes, status: int = 200) -> tuple[ArtifactStore, list]:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, content=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ArtifactStore(tmp_path / "artifacts", "http://console", "opn_x", client), requests


def fetch(store: ArtifactStore, item: protocol.DesiredVersion):
    return asyncio.run(store.fetch(item))


def test_it_downloads_verifies_and_stores_an_artifact_under_its_hash(tmp_path):
    store, requests = store_serving(tmp_path, GOOD)
    path = fetch(store, want("a", "1", sha=GOOD_SHA, size=len(GOOD)))
    assert path == tmp_path / "artifacts" / f"{GOOD_SHA}.onnx"
    assert path.read_bytes() == GOOD
    assert str(requests[0].url) == f"http://console/api/v1/nodes/artifacts/{GOOD_SHA}"
    assert requests[0].headers["authorization"] == "Bearer opn_x"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_it_reuses_a_stored_artifact_whose_hash_verifies(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / f"{GOOD_SHA}.onnx").write_bytes(GOOD)
    store, requests = store_serving(tmp_path, b"never fetched")
    assert fetch(store, want("a", "1", sha=GOOD_SHA)).read_bytes() == GOOD
    assert requests == []


def test_a_corrupt_stored_artifact_is_downloaded_again(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / f"{GOOD_SHA}.onnx").write_bytes(b"rotten")
    store, requests = store_serving(tmp_path, GOOD)
    assert fetch(store, want("a", "1", sha=GOOD_SHA, size=len(GOOD))).read_bytes() == GOOD
    assert len(requests) == 1


def test_bytes_that_do_not_match_their_hash_are_refused_and_deleted(tmp_path):
    store, _ = store_serving(tmp_path, b"tampered")
    with pytest.raises(ArtifactMismatch, match=f"sha256 mismatch: expected {GOOD_SHA}, got "):
        fetch(store, want("a", "1", sha=GOOD_SHA))
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_a_download_larger_than_announced_is_cut_off_as_a_mismatch(tmp_path):
    store, _ = store_serving(tmp_path, GOOD)
    with pytest.raises(ArtifactMismatch, match="sha256 mismatch: .*more than the 10 announced"):
        fetch(store, want("a", "1", sha=GOOD_SHA, size=10))
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_an_http_error_says_what_the_console_answered(tmp_path):
    store, _ = store_serving(tmp_path, b'{"detail": "Not Found"}', status=404)
    with pytest.raises(ArtifactError, match="HTTP 404"):
        fetch(store, want("a", "1", sha=GOOD_SHA))


# --- per-version health -----------------------------------------------------------------------


def test_version_health_counts_requests_and_errors():
    health = VersionHealth()
    for status in (200, 200, 400, 500):
        health.record(status, 0.001, now=1000.0)
    assert (health.requests, health.errors) == (4, 2)
    assert health.last_used == 1000.0


def test_version_health_p95_is_close_to_the_true_value():
    health = VersionHealth()
    for i in range(1, 1001):
        health.record(200, i / 1000 * 0.1, now=1000.0)  # 0.1 ms .. 100 ms, uniform
    p95 = health.p95_ms(now=1000.0)
    assert 95 <= p95 <= 95 * 1.2


def test_version_health_p95_covers_only_about_the_last_minute():
    health = VersionHealth()
    health.record(200, 1.0, now=1000.0)
    health.record(200, 0.001, now=1030.0)
    assert health.p95_ms(now=1030.0) >= 1000
    assert health.p95_ms(now=1075.0) < 2  # the slow one is over a minute old
    assert health.p95_ms(now=2000.0) is None
    assert VersionHealth().p95_ms() is None


# --- the repository carrying a plan out ------------------------------------------------------


def test_the_old_version_serves_until_its_replacement_is_ready(tmp_path):
    files = {v: scaler_model(tmp_path / f"scale-{v}.onnx", float(v)) for v in ("1", "2")}
    items = {
        v: want("scale", v, sha=hashlib.sha256(f.read_bytes()).hexdigest(), size=f.stat().st_size)
        for v, f in files.items()
    }

    async def scenario() -> None:
        gate = asyncio.Event()

        async def fetch(item: protocol.DesiredVersion):
            if item.version == "2":
                await gate.wait()  # the new version's download is slow
            return files[item.version]

        repository = ModelRepository(
            tmp_path, SessionSettings(), BatchSettings(), ThreadPoolExecutor(1), AgentMetrics()
        )
        repository.fetch = fetch

        async def until(predicate) -> None:
            for _ in range(400):
                if predicate():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("timed out")

        repository.apply_desired([items["1"]])
        await until(lambda: "scale" in repository.routes)
        assert list(repository.routes["scale"].versions) == ["1"]

        repository.apply_desired([items["2"]])
        await asyncio.sleep(0.1)
        assert list(repository.routes["scale"].versions) == ["1"]  # 2 still downloading
        assert repository.managed[("scale", "2")].state == LOADING

        gate.set()
        await until(lambda: list(repository.routes["scale"].versions) == ["2"])
        assert set(repository.managed) == {("scale", "2")}

        repository.apply_desired(None)  # the console manages nothing: keep what is there
        assert set(repository.managed) == {("scale", "2")}
        repository.apply_desired([])
        assert repository.managed == {} and "scale" not in repository.routes
        repository.close()

    asyncio.run(scenario())


def test_the_consoles_memory_budget_applies_unless_one_was_given(tmp_path):
    def repository(budget=None):
        return ModelRepository(
            tmp_path,
            SessionSettings(),
            BatchSettings(),
            ThreadPoolExecutor(1),
            AgentMetrics(),
            memory_budget_bytes=budget,
        )

    from_console, pinned = repository(), repository(budget=2**30)
    from_console.offer_memory_budget(6 * 2**30)
    pinned.offer_memory_budget(6 * 2**30)

    assert from_console.memory_budget_bytes == 6 * 2**30
    assert pinned.memory_budget_bytes == 2**30


def test_an_older_agent_ignores_fields_a_newer_console_adds():
    from datetime import UTC, datetime

    reply = protocol.HeartbeatReply.model_validate(
        {
            "status": "online",
            "heartbeat_interval_s": 5,
            "server_time": datetime.now(UTC).isoformat(),
            "desired_models": [
                {
                    "model": "m",
                    "version": "1",
                    "sha256": "a" * 64,
                    "size_bytes": 1,
                    "url": "/x",
                    "traffic_share": 1.0,
                    "a_field_from_the_future": True,
                }
            ],
            "another_one": [1, 2],
        }
    )
    assert reply.desired_models[0].model == "m"
    with pytest.raises(ValueError, match="Extra inputs"):
        protocol.HeartbeatReport.model_validate(
            {
                "node_uid": "n",
                "agent_version": "1",
                "sent_at": datetime.now(UTC).isoformat(),
                "uptime_s": 1,
                "cpu_load": 0,
                "memory_pressure": 0,
                "queue_depth": 0,
                "requests_total": 0,
                "errors_total": 0,
                "typo": 1,
            }
        )


def test_a_new_signal_schema_reaches_a_loaded_version_without_a_reload(tmp_path):
    path = scaler_model(tmp_path / "scale-1.onnx", 1.0)
    item = want("scale", "1", sha=hashlib.sha256(path.read_bytes()).hexdigest())

    async def scenario() -> None:
        async def fetch(_item):
            return path

        repository = ModelRepository(
            tmp_path, SessionSettings(), BatchSettings(), ThreadPoolExecutor(1), AgentMetrics()
        )
        repository.fetch = fetch
        repository.apply_desired([item])
        for _ in range(400):
            if "scale" in repository.routes:
                break
            await asyncio.sleep(0.01)
        runner = repository.routes["scale"].versions["1"]
        assert runner.spec.signals == ()
        repository.apply_desired([item.model_copy(update={"signals": {"tier": "string"}})])
        assert runner.spec.signals == (("tier", "string"),)
        assert runner.spec.signal_types == {"tier": "string"}
        repository.apply_desired([item.model_copy(update={"signals": {"tier": "colour"}})])
        assert runner.spec.signals == (("tier", "string"),)  # unknown type: kept, and logged
        repository.close()

    asyncio.run(scenario())


def test_pinned_tenants_get_their_version_once_it_is_ready(tmp_path):
    files = {v: scaler_model(tmp_path / f"scale-{v}.onnx", float(v)) for v in ("1", "2")}
    items = {
        v: want("scale", v, sha=hashlib.sha256(f.read_bytes()).hexdigest(), share=0.5)
        for v, f in files.items()
    }

    async def scenario() -> None:
        async def fetch(item):
            return files[item.version]

        repository = ModelRepository(
            tmp_path, SessionSettings(), BatchSettings(), ThreadPoolExecutor(1), AgentMetrics()
        )
        repository.fetch = fetch
        repository.apply_desired([items["1"], items["2"].model_copy(update={"tenants": ["acme"]})])
        for _ in range(400):
            route = repository.routes.get("scale")
            if route is not None and len(route.versions) == 2:
                break
            await asyncio.sleep(0.01)
        route = repository.routes["scale"]
        assert route.pins == {"acme": route.versions["2"]}
        # The pin moves without a reload when the console moves it.
        repository.apply_desired([items["1"].model_copy(update={"tenants": ["acme"]}), items["2"]])
        assert repository.routes["scale"].pins == {"acme": route.versions["1"]}
        repository.close()

    asyncio.run(scenario())
