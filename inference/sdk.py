"""The one-line SDK: register an ONNX model with the console and get back its grade.

    from inference.sdk import Outpost

    with Outpost("https://console.example", api_key) as outpost:
        info = outpost.register_model(
            "clf.onnx", name="churn", signals={"tier": "string", "visits": "int"}
        )
    print(info.version, info.grade, info.node_class)

The same client exchanges the API key for the short-lived token that calls nodes:

    token = outpost.token().token       # or outpost.fresh_token(), reused until near expiry
    httpx.post(node_url + "/v2/models/churn/infer", json=..., headers={
        "Authorization": f"Bearer {token}"})

It lives in `inference/` so that a tenant installs only the light package (httpx, pydantic,
orjson; no Django, no onnxruntime). The wire formats are `inference/protocol.py`'s
(`MODELS_PATH`, `SIGNAL_TYPES`, `ModelVersionInfo`); `python -m inference register` (in
`inference/cli.py`) is this module behind a command line.

Every failure is an `OutpostError`: `status` is the console's HTTP status, or None when the
request never got an answer (bad arguments, unreadable file, network error, timeout). A model
whose grading *fails* is not an error of the call: the info comes back with `status="failed"`
and the console's reason in `failure`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from inference import __version__, protocol
from inference.protocol import ModelVersionInfo, TokenResponse

# on_progress(phase, done, total): ("upload", bytes sent, file size) and
# ("grading", whole seconds waited, timeout in whole seconds).
ProgressCallback = Callable[[str, int, int], None]

CHUNK_BYTES = 64 * 1024
# Polling while the console grades: gentle at first (tiny models grade in about a second),
# then no more than one request every two seconds.
POLL_FIRST_S = 0.25
POLL_GROWTH = 1.5
POLL_CAP_S = 2.0
# The grading callback ticks at least this often, so a progress display keeps moving between
# polls.
TICK_S = 0.25
# Statuses worth waiting out while polling: the console restarting or shedding load.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
Answer = TypeVar("Answer", bound=BaseModel)

# fresh_token() gets a new token when the one it has expires within this many seconds.
TOKEN_MIN_VALIDITY_S = 60.0

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

# What the console accepts as a model name (it decides; this only catches typos before a
# large upload).
NAME_PATTERN = re.compile(r"[a-z0-9-]+")


class OutpostError(Exception):
    """A registration or read that did not succeed.

    `status` is the console's HTTP status (400, 401, 413, ...) or None when no answer came
    (validation before upload, network error, timeout); `message` is the console's `error`
    when it gave one. `info` is the last known version info, when there is one (a timeout
    while grading carries the still-grading version).
    """

    def __init__(
        self, message: str, *, status: int | None = None, info: ModelVersionInfo | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.info = info

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


def validate_signals(signals: Mapping[str, str] | None) -> dict[str, str]:
    """The signals as the console wants them, or OutpostError saying which one is wrong."""
    if signals is None:
        return {}
    if not isinstance(signals, Mapping):
        raise OutpostError(
            'signals must be a mapping of field name to type, e.g. {"tier": "string"}'
        )
    checked: dict[str, str] = {}
    for field, kind in signals.items():
        if not isinstance(field, str) or not field.strip():
            raise OutpostError("a signal needs a non-empty field name")
        if field != field.strip():
            raise OutpostError(f"signal name {field!r} has leading or trailing spaces")
        if kind not in protocol.SIGNAL_TYPES:
            raise OutpostError(
                f"signal {field!r} has type {kind!r}; use one of {', '.join(protocol.SIGNAL_TYPES)}"
            )
        checked[field] = kind
    return checked


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise OutpostError(
            f"model name {name!r} is not a slug: use lowercase letters, digits and dashes"
        )
    return name


def _quote(value: str) -> str:
    # Multipart field values, escaped as browsers do (WHATWG HTML, "multipart/form-data").
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _MultipartUpload:
    """A multipart/form-data body that streams one file from disk.

    Its length is known up front, so the request carries `Content-Length` (WSGI servers do
    not all take chunked bodies). Progress is reported after each chunk went to the socket,
    and the file's sha256 is computed on the way, to check what the console says it stored.
    """

    def __init__(
        self,
        fields: Mapping[str, str],
        path: Path,
        size: int,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.boundary = f"outpost-{secrets.token_hex(16)}"
        self.path = path
        self.size = size
        self.on_progress = on_progress
        self.digest = hashlib.sha256()
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields.items()
        )
        self.head = (
            head
            + (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{_quote(path.name)}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        self._report(0)
        yield self.head
        with self.path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                if sent + len(chunk) > self.size:
                    raise OutpostError(f"{self.path} grew while it was being uploaded")
                self.digest.update(chunk)
                yield chunk
                sent += len(chunk)
                self._report(sent)
        if sent != self.size:
            raise OutpostError(f"{self.path} shrank while it was being uploaded")
        yield self.tail

    def _report(self, sent: int) -> None:
        if self.on_progress is not None:
            self.on_progress("upload", sent, self.size)


class Outpost:
    """A tenant's client of the console's model registry (`/api/v1/models`) and of its token
    exchange (`/api/v1/tokens`).

    One `httpx.Client` inside, so calls share connections; use it as a context manager or call
    `close()`. `timeout` is per HTTP request (httpx semantics: connect, read, write, pool).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise OutpostError(f"console URL {url!r} must start with http:// or https://")
        if not api_key or not api_key.strip():
            raise OutpostError("an API key is needed (create one in the console's portal)")
        self.url = url
        self._token: TokenResponse | None = None
        self.client = httpx.Client(
            base_url=url,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {api_key.strip()}",
                "User-Agent": f"outpost-sdk/{__version__}",
                "Accept": "application/json",
            },
        )

    def __enter__(self) -> Outpost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    # --- the calls ---------------------------------------------------------------------------

    def register_model(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        signals: Mapping[str, str] | None = None,
        description: str = "",
        wait: bool = True,
        timeout: float = 300.0,
        on_progress: ProgressCallback | None = None,
    ) -> ModelVersionInfo:
        """Upload an ONNX file as a version of model `name` and (by default) wait for its grade.

        The console answers a new version with `created=True` and status "grading", and bytes
        it already has for this model with the existing version and `created=False` (so
        running this again is safe). With `wait`, it then polls until the grade is known, for
        at most `timeout` seconds (the upload itself is bounded by the client's HTTP
        timeouts), and returns the version with status "graded" (grade, node class, latency
        per class, reasons) or "failed" (`failure` says why): a failed grade is returned,
        not raised. Raises OutpostError for bad arguments, an unreadable file, the console's
        errors (with its message and status), network errors, and a grading timeout.
        """
        checked_name = validate_name(name)
        checked_signals = validate_signals(signals)
        if timeout <= 0:
            raise OutpostError("timeout must be positive")
        file = Path(path)
        size = _readable_size(file)

        fields = {"name": checked_name}
        if description:
            fields["description"] = description
        if checked_signals:
            fields["signals"] = orjson.dumps(checked_signals).decode()
        body = _MultipartUpload(fields, file, size, on_progress)
        response = self._send(
            "POST",
            protocol.MODELS_PATH,
            content=iter(body),
            headers={"Content-Type": body.content_type, "Content-Length": str(body.length)},
        )
        info = self._version_info(response, expect=(200, 201))
        if info.sha256 != body.digest.hexdigest():
            raise OutpostError(
                f"the console reports sha256 {info.sha256[:12]}… for the upload, but "
                f"{file.name} has {body.digest.hexdigest()[:12]}…; the bytes were changed "
                "on the way",
                info=info,
            )
        if wait and info.status == "grading":
            return self.wait_for_grade(
                info.model, info.version, timeout=timeout, on_progress=on_progress
            )
        return info

    def get_version(self, name: str, version: int) -> ModelVersionInfo:
        """One version of one of the tenant's models, as the console has it now."""
        response = self._send("GET", self._version_path(name, version))
        return self._version_info(response, expect=(200,))

    def wait_for_grade(
        self,
        name: str,
        version: int,
        timeout: float = 300.0,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> ModelVersionInfo:
        """Poll until the version leaves "grading"; return it graded or failed.

        Polls after 0.25 s, then 1.5 times longer each time up to every 2 s. A console that
        is briefly unreachable or answers 429/502/503/504 is polled again rather than given
        up on; any other error is raised at once. After `timeout` seconds still grading,
        raises OutpostError with the last info attached.
        """
        started = time.monotonic()
        deadline = started + timeout
        delay = POLL_FIRST_S
        last: ModelVersionInfo | None = None
        problem = ""

        def report() -> None:
            if on_progress is not None:
                elapsed = min(time.monotonic() - started, timeout)
                on_progress("grading", int(elapsed), int(timeout))

        report()
        while True:
            try:
                last = self.get_version(name, version)
            except OutpostError as exc:
                if exc.status is not None and exc.status not in TRANSIENT_STATUSES:
                    raise
                problem = f"; the last poll failed: {exc}"
            else:
                problem = ""
                if last.status != "grading":
                    report()
                    return last
            now = time.monotonic()
            if now >= deadline:
                raise OutpostError(
                    f"model {name} version {version} is still grading after {timeout:g} s"
                    f"{problem}; it carries on in the console, check it later with "
                    "get_version()",
                    info=last,
                )
            wake = min(now + delay, deadline)
            while (left := wake - time.monotonic()) > 0:
                time.sleep(min(TICK_S, left))
                report()
            delay = min(delay * POLL_GROWTH, POLL_CAP_S)

    def token(self, ttl_s: int | None = None) -> TokenResponse:
        """Exchange the API key for an ephemeral token: send `token` to nodes as
        `Authorization: Bearer <token>` until `expires_at`. `ttl_s` asks for a shorter life
        than the console's default (at least 30 s; the console says its range if not)."""
        body = protocol.TokenRequest(ttl_s=ttl_s).model_dump_json(exclude_none=True)
        response = self._send(
            "POST",
            protocol.TOKENS_PATH,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        self._token = self._parsed(response, TokenResponse, expect=(200,))
        return self._token

    def fresh_token(self, min_validity_s: float = TOKEN_MIN_VALIDITY_S) -> str:
        """A token valid for at least `min_validity_s` more seconds: the last one while it is,
        else a new one (which is returned even if the console gives shorter lives than that).
        Call it before each request to a node; it asks the console once per token lifetime."""
        current = self._token
        if current is None or current.expires_at.timestamp() - time.time() < min_validity_s:
            current = self.token()
        return current.token

    # --- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _version_path(name: str, version: int) -> str:
        # Names are slugs, but this one may come from anywhere: a "/" must not change the path.
        return f"{protocol.MODELS_PATH}/{quote(name, safe='')}/versions/{int(version)}"

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise OutpostError(
                f"the console at {self.url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise OutpostError(f"cannot reach the console at {self.url}: {exc}") from exc

    def _version_info(
        self, response: httpx.Response, *, expect: tuple[int, ...]
    ) -> ModelVersionInfo:
        return self._parsed(response, ModelVersionInfo, expect=expect)

    def _parsed(
        self, response: httpx.Response, model: type[Answer], *, expect: tuple[int, ...]
    ) -> Answer:
        if response.status_code not in expect:
            raise OutpostError(_error_message(response), status=response.status_code)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise OutpostError(
                f"the console answered {response.status_code} with a body this SDK "
                f"(outpost {__version__}) does not understand: {exc.error_count()} problem(s), "
                f"first: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}",
                status=response.status_code,
            ) from exc


def _readable_size(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise OutpostError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise OutpostError(f"{path} is a directory, not an ONNX file") from None
    except OSError as exc:
        raise OutpostError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise OutpostError(f"{path} is not a regular file")
    if size == 0:
        raise OutpostError(f"{path} is empty")
    return size


def _error_message(response: httpx.Response) -> str:
    """The console's own words for an error: `{"error": ...}` (django-ninja's `detail` too)."""
    if response.is_redirect:
        return (
            f"the console redirected to {response.headers.get('location', '?')}; "
            "use that URL as the console URL"
        )
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str) and body["error"]:
            return body["error"]
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(
                str(item.get("msg", item)) if isinstance(item, dict) else str(item)
                for item in detail
            )
    text = response.text.strip()
    if text and len(text) <= 200 and "<" not in text:
        return text
    return f"the console answered {response.status_code} {response.reason_phrase}"
