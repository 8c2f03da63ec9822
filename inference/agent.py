"""The node's link to the console: enrollment once, then heartbeats forever.

Runs as one asyncio task in the server's event loop (httpx.AsyncClient), so a slow or dead
console never blocks serving. The wire formats are `inference/protocol.py`'s.

- Identity: `STATE_DIR/identity.json` holds the console's `EnrollResponse` (mode 0600, written
  atomically). When it exists it is used and no enrollment happens, whatever `--enroll` says:
  enrollment tokens are one-time, the credential is the node's identity.
- Enrollment: network errors, 429 and 5xx are retried with capped exponential backoff and
  jitter; any other 4xx means the token is bad and the agent exits with a clear message.
- Heartbeats: every `heartbeat_interval_s` (from the enrollment, then from each reply). Failures
  back off the same way; a 401 means the credential was revoked and is logged loudly.
- Credential rotation: a reply with `rotate_credential` (an operator asked) makes the node
  fetch its next credential (`POST protocol.CREDENTIAL_PATH`, with the current one), write it
  into `identity.json` (atomically, as at enrollment) and only then use it for every call. The
  console accepts the old credential until the new one is first used, so a node that dies
  between the two keeps working with the old one and is asked again.
- Desired models: a reply's `desired_models` goes to `ModelRepository.apply_desired`, which
  fetches artifacts through `inference/artifacts.py` with this node's credential and loads
  them in the background; each report lists every version with its health and any problem.
- Policy bundles: a reply naming a newer `desired_bundle_revision` than the node enforces makes
  it fetch the bundle (`If-None-Match`: a 304 costs nothing); the console also pushes each new
  bundle (`accept_bundle_push`). Both go through `BundleStore.offer`, which verifies, keeps the
  last good bundle on disk and refuses anything else; each report says the revision enforced
  and why the last offered bundle was refused, if it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
from pydantic import ValidationError

from inference import __version__, protocol
from inference.artifacts import ARTIFACTS_DIR, ArtifactStore

if TYPE_CHECKING:  # the CLI checks the identity before it imports onnxruntime and the rest
    from inference.bundle_store import BundleStore
    from inference.gate import PolicyGate
    from inference.metrics import AgentMetrics
    from inference.repository import Entry, ModelRepository
    from inference.tokens import TokenVerifier

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
MIN_INTERVAL_S = 1.0


class IdentityError(Exception):
    pass


class EnrollmentRefused(Exception):
    pass


# --- pure parts ------------------------------------------------------------------------------


def backoff_delay(
    attempt: int,
    base: float = BACKOFF_BASE_S,
    cap: float = BACKOFF_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, with "equal jitter"
    (half fixed, half random) so a fleet that lost its console does not return in lockstep."""
    ceiling = min(cap, base * (2 ** min(attempt - 1, 30)))
    return ceiling / 2 + rand() * ceiling / 2


def load_identity(state_dir: Path) -> protocol.EnrollResponse | None:
    path = state_dir / IDENTITY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from exc
    try:
        identity = protocol.EnrollResponse.model_validate_json(raw)
    except ValidationError as exc:
        raise IdentityError(
            f"{path} is not a valid node identity ({exc.error_count()} problem(s)); move it "
            "away and enroll again with a new token"
        ) from exc
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); it holds the node credential", path, mode)
    return identity


def save_identity(state_dir: Path, identity: protocol.EnrollResponse) -> Path:
    """Write the identity atomically (temp file, fsync, rename), readable by the owner only."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / IDENTITY_FILE
    temporary = state_dir / f".{IDENTITY_FILE}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(identity.model_dump_json(indent=2).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def hottest_temperature() -> float | None:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except Exception:  # some kernels expose broken sensor files
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current is not None]
    return float(max(readings)) if readings else None


def memory_pressure() -> float:
    """Share of the machine's memory in use, 0..1: the heartbeat's reading and the
    `outpost_node_memory_pressure` gauge's."""
    return min(max(psutil.virtual_memory().percent / 100, 0.0), 1.0)


def system_readings() -> tuple[float, float, float | None]:
    """CPU load (1-min load average per core), memory pressure (0..1), hottest sensor."""
    cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(cpu, 0.0), memory_pressure(), hottest_temperature()


def reported_entries(repository: ModelRepository) -> list[Entry]:
    """The versions a heartbeat reports (repository Entry objects): the local models that no
    console-managed version of the same name shadows, then the managed ones; each with a
    known sha256."""
    managed_names = {name for name, _ in repository.managed}
    local = [e for e in repository.entries.values() if e.name not in managed_names]
    return [e for e in [*local, *repository.managed.values()] if e.sha256 is not None]


def loaded_versions(repository: ModelRepository) -> list[tuple[str, str, bool]]:
    """(model, version, ready) of each reported version: the `outpost_model_loaded` gauge."""
    from inference.repository import READY

    return [(e.name, e.version, e.state == READY) for e in reported_entries(repository)]


def tokenisation(gate: PolicyGate | None) -> tuple[bool, list[str]]:
    """Whether the node tokenises (it has a tokenisation key: only an enrolled node's gate
    has one), and the tenants of its enforced bundle that declared sensitive fields, which
    it therefore tokenises before a request of theirs leaves it (none when it cannot)."""
    if gate is None or gate.tokeniser is None:
        return False, []
    view = gate.bundles.view
    if view is None:
        return True, []
    return True, sorted(slug for slug, fields in view.sensitive.items() if fields)[:10_000]


def remember_drift_references(
    metrics: AgentMetrics, desired: list[protocol.DesiredVersion] | None
) -> None:
    """Keep the reference outputs the console sent with its desired versions, for the
    `outpost_model_drift_psi` gauge (None: the console manages nothing here, keep them)."""
    if desired is None:
        return
    from inference.drift import Summary

    metrics.drift_references = {
        (item.model, item.version): Summary.from_json(item.drift_reference.model_dump())
        for item in desired
        if item.drift_reference is not None
    }


def build_report(
    identity: protocol.EnrollResponse,
    repository: ModelRepository,
    metrics: AgentMetrics,
    *,
    uptime_s: float,
    readings: tuple[float, float, float | None],
    bundles: BundleStore | None = None,
    gate: PolicyGate | None = None,
) -> protocol.HeartbeatReport:
    from inference.repository import READY

    cpu, memory, temperature = readings
    simulated = False
    if gate is not None and gate.temperature_simulated:
        temperature, simulated = gate.temperature_c, True
    models = []
    for entry in reported_entries(repository):
        health = metrics.versions.get((entry.name, entry.version))
        ready = entry.state == READY
        models.append(
            protocol.LoadedModel(
                name=entry.name,
                version=entry.version,
                sha256=entry.sha256,
                ready=ready,
                requests_total=health.requests if health else 0,
                errors_total=health.errors if health else 0,
                latency_p95_ms=health.p95_ms() if health else None,
                run_ms_batch1=_run_ms(entry.runner),
                problem=(entry.reason[:500] or None) if not ready else None,
                outputs=health.outputs.pending() if health and health.outputs else [],
            )
        )
    models = models[:1000]
    tokenising, tokenised_tenants = tokenisation(gate)
    return protocol.HeartbeatReport(
        node_uid=identity.node_uid,
        agent_version=__version__,
        sent_at=datetime.now(UTC),
        uptime_s=uptime_s,
        models=models,
        cpu_load=cpu,
        memory_pressure=memory,
        temperature_c=temperature,
        temperature_simulated=simulated,
        queue_depth=repository.queue_depth(),
        requests_total=metrics.requests_total,
        errors_total=metrics.errors_total,
        bundle_revision=bundles.revision if bundles is not None else None,
        bundle_problem=bundles.problem if bundles is not None else None,
        decisions=gate.sampler.pending() if gate is not None else [],
        tokenisation_active=tokenising,
        tokenised_tenants=tokenised_tenants,
    )


# --- the task --------------------------------------------------------------------------------


class ConsoleLink:
    def __init__(
        self,
        console_url: str,
        state_dir: Path,
        *,
        enroll_token: str | None,
        endpoint: str,
        repository: ModelRepository,
        metrics: AgentMetrics,
        on_fatal: Callable[[str], None],
        client: httpx.AsyncClient | None = None,
        token_verifier: TokenVerifier | None = None,
        bundles: BundleStore | None = None,
        gate: PolicyGate | None = None,
    ) -> None:
        self.console_url = console_url.rstrip("/")
        self.state_dir = state_dir
        self.enroll_token = enroll_token
        self.endpoint = endpoint
        self.repository = repository
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self.identity: protocol.EnrollResponse | None = None
        # Given the console's key as soon as the identity is known (saved or just enrolled);
        # until then the server answers requests that carry a token with 503.
        self.token_verifier = token_verifier
        # The policy bundle the node enforces; None for a link that only reports (tests).
        self.bundles = bundles
        # Enforces the bundle on requests; learns the node's region and class from identity.
        self.gate = gate
        self.started = time.monotonic()

    def accept_push(self, body: bytes, signature: str | None) -> tuple[int, str]:
        """A desired state the console pushed (protocol.DesiredPush): applied only when signed
        by the pinned console key, meant for this node, and fresh. Returns (status, message)."""
        identity = self.identity
        if identity is None:
            return 503, "this node has not enrolled yet"
        if not signature:
            return 401, f"a push needs the {protocol.SIGNATURE_HEADER} header"
        key = protocol.public_key_from_b64(identity.console_public_key)
        if not protocol.verify(key, body, signature):
            log.warning("refused a desired-state push whose signature does not verify")
            return 401, "the signature does not verify against the console's key"
        try:
            push = protocol.DesiredPush.model_validate_json(body)
        except ValidationError as exc:
            return 400, f"not a desired-state push: {exc.errors()[0]['msg']}"
        if push.node_uid != identity.node_uid:
            return 403, f"this push is for node {push.node_uid}, not {identity.node_uid}"
        age = (datetime.now(UTC) - push.issued_at).total_seconds()
        if not -protocol.PUSH_MAX_AGE_S < age < protocol.PUSH_MAX_AGE_S:
            return (
                400,
                f"this push was issued {age:.0f} s ago; pushes older than a minute are refused",
            )
        if push.memory_budget_bytes is not None:
            self.repository.offer_memory_budget(push.memory_budget_bytes)
        self.repository.apply_desired(push.desired_models)
        remember_drift_references(self.metrics, push.desired_models)
        return 200, "applied"

    def accept_bundle_push(self, body: bytes) -> tuple[int, str]:
        """A policy bundle the console pushed: the bundle's own signature authenticates it
        (BundleStore.offer verifies it against the pinned key and refuses older revisions, so
        a replayed bundle changes nothing). Returns (status, message)."""
        if self.identity is None or self.bundles is None:
            return 503, "this node has not enrolled yet"
        try:
            signed = protocol.SignedBundle.model_validate_json(body)
        except ValidationError as exc:
            return 400, f"not a signed policy bundle: {exc.errors()[0]['msg']}"
        try:
            self.bundles.offer(signed)
        except protocol.BundleError as exc:
            return 409, str(exc)
        return 200, "enforcing"

    def _authorization(self) -> dict[str, str]:
        """The header of every call to the console: the node's current credential."""
        assert self.identity is not None
        return {"authorization": f"Bearer {self.identity.credential}"}

    def _use_identity(self, identity: protocol.EnrollResponse) -> None:
        """From now on, call the console with this identity's credential (heartbeats, bundle
        fetches, artifact downloads; the usage meter reads `identity` itself)."""
        self.identity = identity
        self.repository.fetch = ArtifactStore(
            self.state_dir / ARTIFACTS_DIR, self.console_url, identity.credential, self.client
        ).fetch

    async def fetch_bundle(self) -> None:
        """Pull the console's newest bundle; a 304 means this node has it already."""
        assert self.bundles is not None
        headers = self._authorization()
        if self.bundles.etag is not None:
            headers["if-none-match"] = self.bundles.etag
        try:
            response = await self.client.get(
                self.console_url + protocol.BUNDLE_PATH, headers=headers
            )
        except httpx.HTTPError as exc:
            log.warning("fetching the policy bundle failed: %s: %s", type(exc).__name__, exc)
            return
        if response.status_code == 304:
            self.bundles.confirm(self.bundles.revision)
            return
        if response.status_code != 200:
            log.warning(
                "fetching the policy bundle answered HTTP %d: %s",
                response.status_code,
                error_text(response),
            )
            return
        try:
            signed = protocol.SignedBundle.model_validate_json(response.content)
        except ValidationError as exc:
            log.warning("the console sent a policy bundle this agent cannot read: %s", exc)
            return
        try:
            self.bundles.offer(signed)
        except protocol.BundleError:
            pass  # logged and reported by the store; the node keeps its last good bundle

    async def run(self) -> None:
        try:
            identity = load_identity(self.state_dir)
            if identity is None:
                if not self.enroll_token:
                    raise IdentityError(
                        f"no node identity in {self.state_dir} and no --enroll token to get one"
                    )
                identity = await self.enroll(self.enroll_token)
                path = save_identity(self.state_dir, identity)
                log.info(
                    "enrolled as node %s (%s); identity saved to %s",
                    identity.name,
                    identity.node_uid,
                    path,
                )
            else:
                log.info(
                    "using the identity in %s: node %s (%s)",
                    self.state_dir / IDENTITY_FILE,
                    identity.name,
                    identity.node_uid,
                )
            self._use_identity(identity)
            if self.gate is not None:
                self.gate.bind_identity(identity)
            self._trust_console_key(identity)
            await self.heartbeat_forever()
        except (IdentityError, EnrollmentRefused) as exc:
            self.on_fatal(str(exc))
        finally:
            await self.client.aclose()

    def _trust_console_key(self, identity: protocol.EnrollResponse) -> None:
        if self.token_verifier is None and self.bundles is None:
            return
        try:
            key = protocol.public_key_from_b64(identity.console_public_key)
        except ValueError as exc:
            log.error(
                "the console public key in %s is unusable (%s): tenant tokens cannot be "
                "checked, and requests that carry one are refused with 503",
                self.state_dir / IDENTITY_FILE,
                exc,
            )
            return
        if self.bundles is not None:
            self.bundles.trust(key)
            # A bundle saved by an earlier run is verified with the pinned key, now known.
            if self.bundles.signed is None:
                self.bundles.load()
        if self.token_verifier is not None:
            log.info(
                "checking tenant tokens against the console key %s",
                self.token_verifier.trust(key),
            )

    async def enroll(self, token: str) -> protocol.EnrollResponse:
        request = protocol.EnrollRequest(
            token=token,
            hostname=socket.gethostname(),
            endpoint=self.endpoint,
            agent_version=__version__,
        )
        url = self.console_url + protocol.ENROLL_PATH
        attempt = 0
        while True:
            try:
                response = await self.client.post(
                    url,
                    content=request.model_dump_json(),
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in (200, 201):
                    try:
                        return protocol.EnrollResponse.model_validate_json(response.content)
                    except ValidationError as exc:
                        raise EnrollmentRefused(
                            f"the console at {self.console_url} answered enrollment with a body "
                            f"this agent does not understand: {exc}"
                        ) from exc
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise EnrollmentRefused(
                        f"the console refused enrollment (HTTP {response.status_code}: "
                        f"{error_text(response)}); check the --enroll token, which is "
                        "one-time and expires"
                    )
                reason = f"HTTP {response.status_code}"
            attempt += 1
            delay = backoff_delay(attempt)
            log.warning("enrollment at %s failed (%s); retrying in %.1f s", url, reason, delay)
            await asyncio.sleep(delay)

    async def heartbeat_forever(self) -> None:
        assert self.identity is not None
        url = self.console_url + protocol.HEARTBEAT_PATH
        interval = max(float(self.identity.heartbeat_interval_s), MIN_INTERVAL_S)
        failures = 0
        while True:
            readings = await asyncio.to_thread(system_readings)
            # Built anew each time: a rotation changes the credential.
            headers = {**self._authorization(), "content-type": "application/json"}
            report = build_report(
                self.identity,
                self.repository,
                self.metrics,
                uptime_s=time.monotonic() - self.started,
                readings=readings,
                bundles=self.bundles,
                gate=self.gate,
            )
            ok, reply = await self._send_heartbeat(url, headers, report)
            new_interval = reply.heartbeat_interval_s if reply is not None else None
            if reply is not None:
                if reply.memory_budget_bytes is not None:
                    self.repository.offer_memory_budget(reply.memory_budget_bytes)
                self.repository.apply_desired(reply.desired_models)
                remember_drift_references(self.metrics, reply.desired_models)
                if self.gate is not None:
                    self.gate.simulate(reply.simulated_temperature_c)
                await self._follow_bundle(reply.desired_bundle_revision)
                if reply.rotate_credential:
                    await self.rotate_credential()
            if ok:
                acknowledge_outputs(report, self.metrics)
                if self.gate is not None and report.decisions:
                    self.gate.sampler.ack(report.decisions)
                if failures:
                    log.info("console reachable again after %d failed heartbeat(s)", failures)
                failures = 0
                self.metrics.heartbeats["success"] += 1
                if new_interval is not None:
                    interval = max(float(new_interval), MIN_INTERVAL_S)
                delay = interval
            else:
                failures += 1
                self.metrics.heartbeats["failure"] += 1
                delay = backoff_delay(failures)
            await asyncio.sleep(delay)

    async def _follow_bundle(self, desired: int | None) -> None:
        if self.bundles is None or desired is None:
            return
        current = self.bundles.revision
        if self.bundles.hold and current is not None and desired > current:
            self.bundles.problem = self.bundles.held_message(desired)
            return
        if current is None or desired > current:
            await self.fetch_bundle()
        else:
            self.bundles.confirm(desired)

    async def rotate_credential(self) -> bool:
        """Get the next credential from the console, save it, then use it; True when the node
        now uses a new one. Nothing changes on a failure: the current credential keeps
        working until the new one is first used, and the next heartbeat asks again."""
        identity = self.identity
        assert identity is not None
        url = self.console_url + protocol.CREDENTIAL_PATH
        try:
            response = await self.client.post(url, headers=self._authorization())
        except httpx.HTTPError as exc:
            log.warning("asking for a new credential failed: %s: %s", type(exc).__name__, exc)
            return False
        if response.status_code != 200:
            log.warning(
                "asking for a new credential answered HTTP %d: %s",
                response.status_code,
                error_text(response),
            )
            return False
        try:
            issued = protocol.NodeCredential.model_validate_json(response.content)
        except ValidationError as exc:
            log.warning("the console sent a credential this agent cannot read: %s", exc)
            return False
        rotated = identity.model_copy(update={"credential": issued.credential})
        try:
            path = await asyncio.to_thread(save_identity, self.state_dir, rotated)
        except OSError as exc:
            log.error(
                "could not save the new node credential in %s (%s); the node keeps using the "
                "current one, which the console still accepts, and tries again",
                self.state_dir / IDENTITY_FILE,
                exc,
            )
            return False
        self._use_identity(rotated)
        log.info("node credential rotated: the new one is saved in %s and used from now on", path)
        return True

    async def _send_heartbeat(
        self, url: str, headers: dict[str, str], report: protocol.HeartbeatReport
    ) -> tuple[bool, protocol.HeartbeatReply | None]:
        try:
            response = await self.client.post(
                url, content=report.model_dump_json(), headers=headers
            )
        except httpx.HTTPError as exc:
            log.warning("heartbeat to %s failed: %s: %s", url, type(exc).__name__, exc)
            return False, None
        if response.status_code == 401:
            log.error(
                "!!! THE CONSOLE REJECTED THIS NODE'S CREDENTIAL (HTTP 401: %s). The node may "
                "have been revoked; it keeps serving but is not reporting. Re-enroll it with a "
                "new token after moving %s away. !!!",
                error_text(response),
                self.state_dir / IDENTITY_FILE,
            )
            return False, None
        if response.status_code != 200:
            log.warning(
                "heartbeat answered HTTP %d: %s", response.status_code, error_text(response)
            )
            return False, None
        try:
            reply = protocol.HeartbeatReply.model_validate_json(response.content)
        except ValidationError as exc:
            log.warning("heartbeat reply not understood (%s); keeping the interval", exc)
            return True, None
        return True, reply


def error_text(response: httpx.Response) -> str:
    """The console's message in an error answer (its `error`/`detail`), for a log line."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or "no body"
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                return str(body[key])[:200]
    return str(body)[:200]


def acknowledge_outputs(report: protocol.HeartbeatReport, metrics: AgentMetrics) -> None:
    """The console took the heartbeat: the output windows it carried are stored there."""
    for model in report.models:
        health = metrics.versions.get((model.name, model.version))
        if model.outputs and health is not None and health.outputs is not None:
            health.outputs.ack(model.outputs)


def _run_ms(runner) -> float | None:
    seconds = runner.batch1_run_s if runner is not None else None
    return None if seconds is None else round(seconds * 1000, 4)
