"""The metrics interface's two backends agree: a real Prometheus (Debian's package) scrapes
two real agents through the file_sd targets the console writes, the agents' usage reaches the
console's ledger, and the same scope read from each gives the same percentiles within the
histogram's resolution, the same error rate, energy per inference and memory pressure.

Counts are compared loosely: Prometheus' increase() extrapolates each step to its edges.
Takes about three minutes: the ledger's resolution is the minute."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.db.models import Sum

from billing.api import issue_tenant_token
from billing.models import UsageRecord
from fleet.models import EnrollmentToken, Model, ModelVersion, Node
from fleet.observability.frames import BOUNDS, Scope
from fleet.observability.prometheus import MetricsUnavailable, PrometheusBackend
from fleet.observability.rollups import RollupBackend
from fleet.observability.targets import write_targets
from fleet.policy_plane import publish_bundle
from tests.conftest import require_binary
from tests.inference.harness import doubler_model, running_agent, wait_until
from tests.integration.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

# The ledger's resolution: nodes report usage per minute.
STEP = timedelta(minutes=1)
GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
BAD = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}

CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: outpost-nodes
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""


@contextlib.contextmanager
def running_prometheus(tmp_path, targets):
    binary = require_binary("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(targets=targets))
    log = (tmp_path / "prometheus.log").open("wb")
    import subprocess

    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "prometheus.log").read_text())
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            return False

        wait_until(ready, timeout=30, what="Prometheus ready")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        print((tmp_path / "prometheus.log").read_text()[-3000:])


def up_targets(url: str) -> int:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": "sum(up)"}, timeout=5).json()
    result = answer["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def next_boundary(step: timedelta) -> datetime:
    now = datetime.now(UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + step * ((now - epoch) // step + 1)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def resolution(seconds: float) -> float:
    """The width of the histogram bucket `seconds` falls in."""
    for i, bound in enumerate(BOUNDS):
        if seconds <= bound:
            return bound - (BOUNDS[i - 1] if i else 0.0)
    return BOUNDS[-1]


def test_prometheus_and_the_rollups_agree_on_the_same_scope(
    live_server, tmp_path, settings, eu_west, us_east, nano, standard, acme
):
    settings.OUTPOST_HEARTBEAT_INTERVAL_S = 1
    doubler_model(tmp_path / "models" / "doubler.onnx")
    ModelVersion.objects.create(
        model=Model.objects.create(name="doubler"), version=1, sha256="1" * 64,
        size_bytes=1, opset=17, status="graded", grade="tiny",
    )  # fmt: skip
    publish_bundle(["test"])
    headers = {"Authorization": f"Bearer {issue_tenant_token(acme, 600).token}"}

    with contextlib.ExitStack() as stack:
        agents = {}
        for name, region, node_class in (
            ("fra-nano-1", eu_west, nano),
            ("nyc-standard-1", us_east, standard),
        ):
            _, secret = EnrollmentToken.issue(node_name=name, region=region, node_class=node_class)
            agents[region.code] = stack.enter_context(
                running_agent(
                    tmp_path / "models",
                    tmp_path / name,
                    "--console", live_server.url, "--enroll", secret,
                    log_path=tmp_path / f"{name}.log",
                    headers=headers,
                )
            )  # fmt: skip
        wait_until(
            lambda: Node.objects.filter(bundle_revision__isnull=False).count() == 2,
            what="both agents enrolled and enforcing the bundle",
        )
        targets = tmp_path / "targets.json"
        assert write_targets(targets)
        assert not write_targets(targets), "an unchanged fleet rewrites nothing"
        prometheus = stack.enter_context(running_prometheus(tmp_path, targets))
        wait_until(lambda: up_targets(prometheus) == 2, timeout=30, what="both agents scraped")

        # Every series exists from the model's load at zero (inference/metrics.py), so the
        # first requests count in increase(). The traffic stays inside one minute.
        time.sleep(2)
        start = datetime.now(UTC).replace(second=0, microsecond=0)
        if datetime.now(UTC) > start + timedelta(seconds=35):
            start += STEP
            sleep_until(start + timedelta(seconds=0.5))
        traffic_end = datetime.now(UTC) + timedelta(seconds=15)
        sent = {"eu-west": 0, "us-east": 0}
        errors = {"eu-west": 0, "us-east": 0}

        def drive(region: str) -> None:
            agent = agents[region]
            i = 0
            while datetime.now(UTC) < traffic_end:
                bad = i % (10 if region == "eu-west" else 25) == 0
                answer = agent.post("/v2/models/doubler/infer", json=BAD if bad else GOOD)
                assert answer.status_code == (400 if bad else 200), answer.text
                sent[region] += 1
                errors[region] += bad
                i += 1

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(drive, agents))
        # Two steps: a node folds a minute's energy into its counter just after the minute
        # (with the usage records it bills), so Prometheus sees it in the next step.
        end = start + 2 * STEP
        sleep_until(end + timedelta(seconds=3))

        def ledger_complete() -> bool:
            rows = UsageRecord.objects.filter(minute__gte=start, minute__lt=end)
            totals = rows.aggregate(n=Sum("count"), e=Sum("errors"))
            return (totals["n"] or 0) + (totals["e"] or 0) == sum(sent.values())

        wait_until(ledger_complete, timeout=30, what="the minute's usage in the ledger")
        time.sleep(2)  # the scrapes just after the minute

        scope = Scope(start=start, end=end, step=STEP, by="region", models=("doubler",))
        rollups = RollupBackend().usage(scope)
        from_prometheus = PrometheusBackend(prometheus).usage(scope)
        memory_rollups = RollupBackend().gauge(scope, "memory_pressure", "region")
        memory_prometheus = PrometheusBackend(prometheus).gauge(scope, "memory_pressure", "region")

    assert sorted(rollups.keys()) == sorted(from_prometheus.keys()) == ["eu-west", "us-east"]
    for region in ("eu-west", "us-east"):
        ours, theirs = rollups.total(region), from_prometheus.total(region)
        assert ours.requests == sent[region], "the ledger counts every answer once"
        assert ours.errors == errors[region]
        assert theirs.requests == pytest.approx(sent[region], rel=0.2)
        assert theirs.error_rate == pytest.approx(ours.error_rate, abs=0.02)
        for q in (0.5, 0.95, 0.99):
            mine, prom = ours.quantile(q), theirs.quantile(q)
            assert mine is not None and prom is not None
            assert abs(mine - prom) <= resolution(mine), (region, q, mine, prom)
        assert theirs.energy_per_inference_j == pytest.approx(
            ours.energy_per_inference_j, rel=0.25, abs=1e-9
        )
        ours_memory = [v for _, v in memory_rollups[region] if v is not None]
        theirs_memory = [v for _, v in memory_prometheus[region] if v is not None]
        assert ours_memory and theirs_memory
        assert sum(theirs_memory) / len(theirs_memory) == pytest.approx(
            sum(ours_memory) / len(ours_memory), abs=0.1
        )


def test_an_unreachable_prometheus_says_so():
    scope = Scope(
        start=datetime(2026, 12, 1, tzinfo=UTC), end=datetime(2026, 12, 1, 1, tzinfo=UTC),
        step=timedelta(minutes=5),
    )  # fmt: skip
    backend = PrometheusBackend(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(MetricsUnavailable, match="did not answer"):
        backend.usage(scope)
