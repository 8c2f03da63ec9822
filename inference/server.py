"""The agent's HTTP surface: a raw ASGI app speaking Open Inference Protocol v2.

No framework on the hot path: routing is a dict lookup and a split, bodies are read straight
from ASGI messages, and responses are two `send` calls. Request validation lives in
`inference/codec.py`, batching in `inference/batching.py`; this module maps their results and
errors to HTTP. Whatever a client sends, the worst it gets is an error response: every
handler's failure is caught and answered with a 500, and the server stays up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from inference import __version__, protocol
from inference.asgi import (
    CLOSE,
    JSON,
    OCTETS,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    admin_denied,
    error_body,
    length_headers,
    method_not_allowed,
    method_ok,
    read_body,
    respond,
)
from inference.batching import RunFailed
from inference.codec import (
    RequestError,
    decode_infer_body,
    encode_infer_response,
    parse_infer_body,
)
from inference.enforcement import TOKEN_PATTERN
from inference.metrics import AgentMetrics
from inference.repository import LOADING, LoadFailed, ModelRepository, UnknownModel
from inference.routing import version_sort_key
from inference.specs import model_config, model_metadata
from inference.tokens import TokenVerifier, rejection

if TYPE_CHECKING:
    from inference.gate import Admission, PolicyGate
    from inference.usage_spool import Journal

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]
PushHandler = Callable[[bytes, str | None], tuple[int, str]]
BundleHandler = Callable[[bytes], tuple[int, str]]

SERVER_NAME = "outpost-agent"
EXTENSIONS = ["model_repository", "model_configuration", "binary_tensor_data"]

_SERVED_BY = (b"x-outpost-served-by", b"local")
_SERVED_REGIONALLY = (b"x-outpost-served-by", b"regional")
_LOOPBACK = ("127.", "::1", "::ffff:127.")
# The rules that refuse because the model is not here and may or cannot be served elsewhere.
_MOVE = ("model_not_local", "privacy")
_MODELS_PREFIX = "/v2/models/"
_REPOSITORY_PREFIX = "/v2/repository/models/"


class AgentApp:
    def __init__(
        self,
        repository: ModelRepository,
        metrics: AgentMetrics,
        *,
        max_body_bytes: int,
        admin_token: str | None,
        on_startup: list[Hook] | None = None,
        on_shutdown: list[Hook] | None = None,
        push_handler: PushHandler | None = None,
        bundle_handler: BundleHandler | None = None,
        token_verifier: TokenVerifier | None = None,
        gate: PolicyGate | None = None,
        usage: Journal | None = None,
    ) -> None:
        self.repository = repository
        # Activates a policy bundle the console pushed (ConsoleLink.accept_bundle_push).
        self.bundle_handler = bundle_handler
        # Verifies and applies a desired state the console pushed (ConsoleLink.accept_push);
        # None when the agent runs standalone.
        self.push_handler = push_handler
        # Names the tenant of a request from its bearer token (inference/tokens.py); None when
        # the agent runs standalone: then Authorization headers are ignored.
        self.token_verifier = token_verifier
        # Decides each inference request by the signed policy (inference/gate.py); None when
        # the agent runs standalone, which then serves this machine only.
        self.gate = gate
        # Meters every answer an enrolled node serves (inference/usage_spool.py); None when
        # standalone: no tenant, nothing to bill.
        self.usage = usage
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._admin_token = admin_token.encode() if admin_token else None
        self.on_startup = on_startup or []
        self.on_shutdown = on_shutdown or []
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
        )
        # path -> (method, handler) for the fixed paths; model paths are parsed in _model_route.
        self._routes: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
            "/v2/health/live": ("GET", self._live),
            "/v2/health/ready": ("GET", self._ready),
            "/v2": ("GET", self._server_meta),
            "/v2/": ("GET", self._server_meta),
            "/metrics": ("GET", self._metrics),
            "/v2/repository/index": ("POST", self._repository_index),
            protocol.DESIRED_PUSH_PATH: ("POST", self._desired_push),
            protocol.BUNDLE_PUSH_PATH: ("POST", self._bundle_push),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                await self._http(scope, receive, send)
            except ClientGone:
                pass
            except Exception:
                log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
                try:
                    await respond(send, 500, error_body("internal error in the agent"), extra=CLOSE)
                except Exception:  # the response had already started; nothing more to say
                    log.debug("could not send the 500 response", exc_info=True)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(_MODELS_PREFIX):
            await self._model_route(path[len(_MODELS_PREFIX) :], method, scope, receive, send)
            return
        if path.startswith(_REPOSITORY_PREFIX):
            await self._repository_route(
                path[len(_REPOSITORY_PREFIX) :], method, scope, receive, send
            )
            return
        route = self._routes.get(path)
        if route is None:
            await respond(send, 404, error_body(f"no such endpoint: {path}"))
            return
        allowed, handler = route
        if not method_ok(method, allowed):
            await method_not_allowed(send, method, path, allowed)
            return
        await handler(scope, receive, send)

    # --- health, metadata, metrics -----------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"{}")

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.repository.is_ready():
            await respond(send, 503, error_body("models are still loading or failed to load"))
        elif self.gate is not None and self.gate.bundles.view is None:
            # An enrolled node serves tenants by its policy: without one it would refuse all.
            await respond(send, 503, error_body("no policy bundle from the console yet"))
        else:
            await respond(send, 200, b"{}")

    async def _server_meta(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, self._server_metadata)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, self.metrics.render(), CONTENT_TYPE_PLAIN_0_0_4.encode())

    # --- /v2/models/... ---------------------------------------------------------------------

    async def _model_route(
        self, rest: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        parts = rest.split("/")
        name = parts[0]
        version: str | None = None
        if len(parts) >= 3 and parts[1] == "versions":
            version = parts[2]
            action = parts[3:]
        else:
            action = parts[1:]
        if not name or len(action) > 1 or (version is not None and not version):
            await respond(send, 404, error_body(f"no such endpoint: {scope['path']}"))
            return
        verb = action[0] if action else ""
        if verb == "infer":
            if method != "POST":
                await method_not_allowed(send, method, scope["path"], "POST")
                return
            await self._infer(scope, receive, send, name, version)
            return
        if verb not in ("", "ready", "config"):
            await respond(send, 404, error_body(f"no such endpoint: {scope['path']}"))
            return
        if not method_ok(method, "GET"):
            await method_not_allowed(send, method, scope["path"], "GET")
            return
        route = self.repository.routes.get(name)
        runner = None
        if route is not None:
            runner = route.primary if version is None else route.versions.get(version)
        if route is None or runner is None:
            status, message = self._unavailable(name, version)
            await respond(send, status, error_body(message))
        elif verb == "ready":
            await respond(send, 200, b"{}")
        elif verb == "config":
            await respond(
                send, 200, model_config(runner.spec, runner.model.batching.max_queue_delay_ms)
            )
        elif version is None and len(route.versions) > 1:
            # OIP metadata lists every version served under the name.
            document = orjson.loads(model_metadata(runner.spec))
            document["versions"] = sorted(route.versions, key=version_sort_key)
            await respond(send, 200, orjson.dumps(document))
        else:
            await respond(send, 200, model_metadata(runner.spec))

    def _unavailable(self, name: str, version: str | None) -> tuple[int, str]:
        entries = self.repository.versions_of(name)
        if not entries:
            return 404, f"unknown model '{name}'"
        if version is not None:
            matching = [e for e in entries if e.version == version]
            if not matching:
                known = sorted({e.version for e in entries}, key=version_sort_key)
                plural = "s" if len(known) > 1 else ""
                return 404, (
                    f"model '{name}' has no version '{version}' (this node serves "
                    f"version{plural} {', '.join(known)})"
                )
            entries = matching
        if any(e.state == LOADING for e in entries):
            return 503, f"model '{name}' is loading"
        reason = "; ".join(e.reason for e in entries if e.reason) or "not loaded"
        return 503, f"model '{name}' is unavailable: {reason}"

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        tenant: str | None = None
        if self.token_verifier is not None:
            try:
                tenant = self.token_verifier.tenant(scope["headers"])
            except protocol.TokenError as exc:
                await self._refuse_token(send, name, exc, started)
                return
        if self.gate is None and not _from_loopback(scope):
            self.metrics.record_request(None, 403, time.perf_counter() - started)
            await respond(
                send,
                403,
                error_body(
                    "this agent runs standalone (no console, no tenant policy) and serves "
                    "this machine only; enroll it with --console to serve others"
                ),
                extra=CLOSE,
            )
            return
        route = self.repository.routes.get(name)
        runner = None
        session_key: str | None = None
        # True once the version is settled: named, the only one, or a tenant's pin.
        chosen = version is not None
        if route is not None:
            if version is not None:
                runner = route.versions.get(version)
            elif route.single is not None:
                runner, chosen = route.single, True
            elif tenant is not None and tenant in route.pins:
                # A rollout pinned this tenant to one version, whatever the split.
                runner, chosen = route.pins[tenant], True
            else:
                session_key = _session_id(scope["headers"])
                runner = route.pick(session_key) if session_key is not None else route.primary
        admission: Admission | None = None
        gate = self.gate
        # A model this node lacks may be served by the pool, if the console knows it; a
        # request for one version is this node's to answer.
        if gate is not None and (runner is not None or (version is None and gate.knows(name))):
            admission = gate.admit(tenant, name, runner is not None, scope["headers"])
            action = admission.decision.action
            if action == "offload":
                await self._offload(scope, receive, send, name, admission, started)
                return
            # A model loading or broken here that may not go elsewhere: say what is wrong
            # with it rather than why it may not travel.
            local_problem = runner is None and self.repository.versions_of(name)
            if action == "refuse" and not (local_problem and admission.decision.rule in _MOVE):
                await self._refuse(send, name, admission, started)
                return
        if runner is None:
            status, message = self._unavailable(name, version)
            self.metrics.record_request(None, status, time.perf_counter() - started)
            # The body was not read; closing the connection spares us reading it.
            await respond(send, status, error_body(message), extra=CLOSE)
            return
        stats = self.metrics.models[name]
        extra: tuple[tuple[bytes, bytes], ...] = ()
        run_seconds = run_share = 0.0
        tokenised = False
        try:
            declared, json_length = length_headers(scope["headers"])
            body = await read_body(receive, self.max_body_bytes, declared)
            parsed = parse_infer_body(body, json_length)
            if not chosen and session_key is None:
                # No session: split by the request id (or at random), then check the request
                # against the version that serves it (its inputs and signals may differ).
                runner = route.pick(parsed.id)
            request = decode_infer_body(
                parsed,
                runner.spec,
                # Values another node tokenised before offloading (inference/gate.py).
                tokenised=admission.sensitive if admission and admission.forwarded else None,
            )
            if request.signals and admission is not None and not admission.signals_allowed:
                raise RequestError(
                    "personalisation signals are an add-on this tenant has not switched on "
                    "(a feature bundle with 'signals', in the portal's Usage & billing)",
                    403,
                )
            if admission is not None and admission.forwarded and admission.sensitive:
                tokenised = _carries_tokens(parsed.doc, admission.sensitive)
            outputs, run_seconds, run_share = await runner.infer(
                request.arrays, request.rows, request.key
            )
            payload, header_length = encode_infer_response(runner.spec, request, outputs)
            status = 200
            if header_length is None:
                content_type = JSON
            else:
                content_type = OCTETS
                extra = ((b"inference-header-content-length", b"%d" % header_length),)
        except BodyTooLarge as exc:
            status, payload, content_type, extra = 413, error_body(str(exc)), JSON, CLOSE
        except (RequestError, RunFailed) as exc:
            status, payload, content_type = exc.status, error_body(exc.message), JSON
        except ClientGone:
            if admission is not None:  # nothing was answered: give the reservation back
                self.gate.settle(admission, 499)  # type: ignore[union-attr]
            raise
        except Exception:  # counted as a server error below, and the server stays up
            log.exception("inference on model %s failed unexpectedly", name)
            status, payload, content_type = 500, error_body("internal error in the agent"), JSON
        now = time.perf_counter()
        elapsed = now - started
        self.metrics.record_request(stats, status, elapsed)
        runner.health.record(status, elapsed, now)
        headers = [
            *extra,
            _SERVED_REGIONALLY if admission is not None and admission.forwarded else _SERVED_BY,
            (b"x-outpost-overhead-ms", b"%.3f" % ((elapsed - run_seconds) * 1000)),
        ]
        if admission is not None:
            self.gate.settle(admission, status)  # type: ignore[union-attr]
            headers += admission.headers()
            usage = self.usage
            if usage is not None and admission.tenant is not None:
                # Before the answer leaves: once a client has it, it is billed (usage_spool.py).
                usage.append(
                    admission.tenant,
                    runner.spec.name,
                    runner.spec.version,
                    admission.grade,
                    "regional" if admission.forwarded else "local",
                    admission.offload_reason,
                    status,
                    elapsed,
                    run_share,
                    tokenised,
                    admission.request_id,
                )
        await respond(send, status, payload, content_type, headers)

    async def _refuse(self, send: Send, name: str, admission: Admission, started: float) -> None:
        """Answer a request the policy refuses, without reading its body."""
        decision = admission.decision
        self.gate.settle(admission, decision.status)  # type: ignore[union-attr]
        self.metrics.record_request(
            self.metrics.models.get(name), decision.status, time.perf_counter() - started
        )
        extra = [*admission.headers(), (b"x-outpost-rule", decision.rule.encode())]
        if decision.retry_after_s is not None:
            extra.append((b"retry-after", b"%d" % decision.retry_after_s))
        await respond(send, decision.status, error_body(decision.reason), extra=(*extra, *CLOSE))

    async def _offload(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        admission: Admission,
        started: float,
    ) -> None:
        """Send the request to the region's accelerator pool and relay its answer."""
        gate = self.gate
        assert gate is not None
        declared, _ = length_headers(scope["headers"])
        try:
            body = await read_body(receive, self.max_body_bytes, declared)
        except BodyTooLarge as exc:
            gate.settle(admission, 413)
            await respond(send, 413, error_body(str(exc)), extra=CLOSE)
            return
        except ClientGone:
            gate.settle(admission, 499)  # nothing forwarded: give the reservation back
            raise
        answer = await gate.forward(admission, scope["path"], body, scope["headers"])
        if admission.decision.action == "refuse":  # no pool node answered
            await self._refuse(send, name, admission, started)
            return
        gate.settle(admission, answer.status, target=answer.target)
        elapsed = time.perf_counter() - started
        self.metrics.record_request(self.metrics.models.get(name), answer.status, elapsed)
        await respond(
            send,
            answer.status,
            answer.body,
            answer.content_type,
            [
                *answer.headers,
                _SERVED_REGIONALLY,
                (b"x-outpost-node", (answer.target or "").encode()),
                (b"x-outpost-overhead-ms", b"%.3f" % ((elapsed - answer.run_s) * 1000)),
                *admission.headers(),
            ],
        )

    async def _refuse_token(
        self, send: Send, name: str, exc: protocol.TokenError, started: float
    ) -> None:
        status, extra = rejection(exc)
        # A model this node does not serve is counted without its name (see metrics.py).
        stats = self.metrics.models.get(name)
        self.metrics.record_request(stats, status, time.perf_counter() - started)
        # The body was not read; closing the connection spares us reading it.
        await respond(send, status, error_body(exc.message), extra=(*extra, *CLOSE))

    # --- the console's pushes ----------------------------------------------------------------

    async def _desired_push(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.push_handler is None:
            await respond(send, 404, error_body("this agent runs standalone: nothing to push"))
            return
        body = await self._push_body(scope, receive, send)
        if body is None:
            return
        signature = next(
            (v.decode() for k, v in scope["headers"] if k == protocol.SIGNATURE_HEADER.encode()),
            None,
        )
        status, message = self.push_handler(body, signature)
        await respond(send, status, b"{}" if status == 200 else error_body(message))

    async def _bundle_push(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.bundle_handler is None:
            await respond(send, 404, error_body("this agent runs standalone: it has no policy"))
            return
        body = await self._push_body(scope, receive, send)
        if body is None:
            return
        status, message = self.bundle_handler(body)
        await respond(send, status, b"{}" if status == 200 else error_body(message))

    async def _push_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body of a console push; answers 413 and returns None when it is too large."""
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        try:
            return await read_body(receive, self.max_body_bytes, declared)
        except BodyTooLarge as exc:
            await respond(send, 413, error_body(str(exc)), extra=CLOSE)
            return None

    # --- /v2/repository/... (Triton's model repository extension) ---------------------------

    async def _admin_body(self, scope: Scope, receive: Receive, send: Send) -> dict | None:
        """Authorise and parse a model-control request; answers and returns None on failure."""
        denied = admin_denied(scope, self._admin_token)
        if denied is not None:
            status, message = denied
            extra = ((b"www-authenticate", b"Bearer"),) if status == 401 else ()
            await respond(send, status, error_body(message), extra=(*extra, *CLOSE))
            return None
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        try:
            body = await read_body(receive, self.max_body_bytes, declared)
        except BodyTooLarge as exc:
            await respond(send, 413, error_body(str(exc)), extra=CLOSE)
            return None
        if not body.strip():
            return {}
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await respond(send, 400, error_body(f"malformed JSON in request body: {exc}"))
            return None
        if not isinstance(document, dict):
            await respond(send, 400, error_body("the request body must be a JSON object"))
            return None
        return document

    async def _repository_index(self, scope: Scope, receive: Receive, send: Send) -> None:
        document = await self._admin_body(scope, receive, send)
        if document is None:
            return
        ready_only = document.get("ready") is True
        await respond(send, 200, orjson.dumps(self.repository.index(ready_only)))

    async def _repository_route(
        self, rest: str, method: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        name, _, action = rest.partition("/")
        if not name or action not in ("load", "unload"):
            await respond(send, 404, error_body(f"no such endpoint: {scope['path']}"))
            return
        if method != "POST":
            await method_not_allowed(send, method, scope["path"], "POST")
            return
        document = await self._admin_body(scope, receive, send)
        if document is None:
            return
        parameters = document.get("parameters") or {}
        if (
            action == "load"
            and isinstance(parameters, dict)
            and any(k == "config" or k.startswith("file:") for k in parameters)
        ):
            await respond(
                send, 400, error_body("loading with a config override or files is not supported")
            )
            return
        try:
            if action == "load":
                await self.repository.load(name)
            else:
                await self.repository.unload(name)
        except UnknownModel as exc:
            await respond(send, 404, error_body(str(exc)))
            return
        except LoadFailed as exc:
            await respond(send, 400, error_body(f"failed to load '{name}': {exc}"))
            return
        await respond(send, 200, b"")

    # --- lifespan -------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        await hook()
                except Exception as exc:
                    log.exception("agent startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.on_shutdown:
                    try:
                        await hook()
                    except Exception:
                        log.exception("agent shutdown step failed")
                await send({"type": "lifespan.shutdown.complete"})
                return


def _from_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    return client is None or str(client[0]).startswith(_LOOPBACK)


def _carries_tokens(doc: dict, sensitive: frozenset[str]) -> bool:
    """A forwarded request whose sensitive parameters arrived as tokens (inference/gate.py
    tokenises them before an offload): counted as `tokenised` on its usage record."""
    parameters = doc.get("parameters")
    if not isinstance(parameters, dict):
        return False
    for field in sensitive:
        value = parameters.get(field)
        if isinstance(value, str) and TOKEN_PATTERN.fullmatch(value):
            return True
    return False


def _session_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"x-session-id":
            return value.decode("latin-1")
    return None
