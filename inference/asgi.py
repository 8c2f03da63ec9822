"""The small HTTP toolkit under `inference/server.py`: raw ASGI responses, bounded body
reading, the headers the agent reads, and who may use model control.

Kept framework-free on purpose: on the hot path a response is two `send` calls and a body is
one `receive` (see the module docstring of server.py).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from inference.codec import RequestError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]

JSON = b"application/json"
OCTETS = b"application/octet-stream"
# Sent when the request body may be unread: the connection cannot be reused safely.
CLOSE = ((b"connection", b"close"),)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def respond(
    send: Send, status: int, body: bytes, content_type: bytes = JSON, extra: Headers = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole request body, refusing more than `limit` bytes before reading them: a declared
    Content-Length is checked up front, a chunked body is counted as it streams in."""
    if declared is not None and declared > limit:
        raise BodyTooLarge(
            f"the request body is {declared} bytes; this node accepts at most {limit} "
            "(--max-body-bytes)"
        )
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(
                f"the request body exceeds {limit} bytes, the most this node accepts "
                "(--max-body-bytes)"
            )
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def length_headers(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, int | None]:
    """Content-Length and Inference-Header-Content-Length (binary tensor extension)."""
    declared = json_length = None
    for key, value in headers:
        if key == b"content-length":
            declared = int(value)  # httptools has already refused a malformed one
        elif key == b"inference-header-content-length":
            try:
                json_length = int(value)
            except ValueError:
                json_length = -1
            if json_length < 0:
                raise RequestError("Inference-Header-Content-Length must be a non-negative integer")
    return declared, json_length


def method_ok(method: str, allowed: str) -> bool:
    return method == allowed or (allowed == "GET" and method == "HEAD")


async def method_not_allowed(send: Send, method: str, path: str, allowed: str) -> None:
    allow = b"GET, HEAD" if allowed == "GET" else allowed.encode()
    await respond(
        send,
        405,
        error_body(f"{method} is not allowed on {path}; use {allowed}"),
        extra=((b"allow", allow), *CLOSE),
    )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_denied(scope: Scope, admin_token: bytes | None) -> tuple[int, str] | None:
    """None when the caller may use model control, else (status, reason).

    With an admin token the bearer must match it; without one only loopback peers may (the
    agent runs without proxy-header rewriting, so the peer is the real one).
    """
    if admin_token is not None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None:
            return 401, "model control needs 'Authorization: Bearer <admin token>'"
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), admin_token):
            return 403, "the admin token is not valid"
        return None
    client = scope.get("client")
    if client is None or is_loopback(client[0]):
        return None
    return 403, (
        "model control is only allowed from this machine (loopback) unless the agent runs "
        "with --admin-token"
    )
