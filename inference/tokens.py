"""Tenant tokens on the node: who is calling, checked offline and once per token.

A request names its tenant with `Authorization: Bearer <ephemeral token>` (the format and the
signature check are `inference/protocol.py`'s). The first request with a token pays for the
Ed25519 verification (~100 µs) and the parsing; the verifier then keeps the claims under the
raw header bytes in a bounded LRU, so every later request with that token costs a dict lookup
and a float comparison with `time.time()`: no pydantic, no datetime on that path.

An enrolled node requires a token on every inference request (`required`); a standalone one
(no console) has no keys and ignores the header. Revoked token ids arrive with the signed
policy bundle (inference/bundle_store.py sets `revoked`), and a revoked token is refused even
when its verification is cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inference import protocol
from inference.protocol import TokenClaims, TokenError

DEFAULT_CACHE_ENTRIES = 4096
# What a node answers while it cannot check tokens yet (see NotReady).
RETRY_AFTER_S = 5

_AUTHORIZATION = b"authorization"


class NotReady(TokenError):
    """The node does not know its console's key yet (enrollment has not finished): the token
    may be fine, so the answer is 503 with Retry-After, not 401."""


class InsufficientScope(TokenError):
    """A valid token whose scopes do not include the one the request needs: 403."""


def rejection(exc: TokenError) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
    """The HTTP status and headers for a refused token (RFC 6750 §3 for the challenges)."""
    if isinstance(exc, NotReady):
        return 503, ((b"retry-after", b"%d" % RETRY_AFTER_S),)
    if isinstance(exc, InsufficientScope):
        return 403, (
            (
                b"www-authenticate",
                b'Bearer error="insufficient_scope", scope="%s"' % protocol.SCOPE_INFER.encode(),
            ),
        )
    return 401, ((b"www-authenticate", b'Bearer error="invalid_token"'),)


class TokenVerifier:
    """The console keys a node trusts, and the tokens it has already verified.

    Created empty when the node has not enrolled yet: `trust()` adds the console's key once
    the enrollment answer (or the saved identity) names it. Until then a presented token is
    answered with NotReady. Runs on the event loop only, so it needs no lock.
    """

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey] = (),
        *,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        scope: str = protocol.SCOPE_INFER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.max_entries = max_entries
        self.scope = scope
        self.clock = clock
        # raw Authorization header -> (expiry as a timestamp, claims); oldest use first.
        self._cache: OrderedDict[bytes, tuple[float, TokenClaims]] = OrderedDict()
        # Full verifications (signature and parsing) so far: the cache's tests count them.
        self.verifications = 0
        # Token ids the console revoked (from the active policy bundle).
        self.revoked: frozenset[str] = frozenset()
        # A request without a token is refused (an enrolled node); else it has no tenant.
        self.required = False
        for key in keys:
            self.trust(key)

    @property
    def ready(self) -> bool:
        return bool(self.keys)

    def trust(self, key: Ed25519PublicKey) -> str:
        """Accept tokens signed by `key` from now on; returns its key id."""
        kid = protocol.key_id(key)
        self.keys[kid] = key
        return kid

    def __len__(self) -> int:
        return len(self._cache)

    def tenant(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The tenant slug a request's token names; None without an Authorization header.
        Raises TokenError (NotReady, InsufficientScope, or a plain one) for a token that
        cannot be accepted. `headers` are the ASGI ones: lowercase names, raw values."""
        for name, value in headers:
            if name == _AUTHORIZATION:
                return self.claims(value).tenant
        if self.required:
            raise TokenError(
                "this node serves tenants only: send 'Authorization: Bearer <token>' with a "
                f"token from the console's {protocol.TOKENS_PATH}"
            )
        return None

    def claims(self, header: bytes) -> TokenClaims:
        """The claims of the token in an Authorization header's raw value: from the cache
        while unexpired, else verified (and then cached)."""
        entry = self._cache.get(header)
        if entry is not None:
            expires, claims = entry
            if self.clock() < expires:
                if claims.token_id in self.revoked:
                    raise _revoked(claims)
                self._cache.move_to_end(header)
                return claims
            del self._cache[header]
            raise protocol.token_expired(
                claims.expires_at, datetime.fromtimestamp(self.clock(), UTC)
            )
        return self._verify(header)

    def _verify(self, header: bytes) -> TokenClaims:
        if not self.keys:
            raise NotReady(
                "this node is still enrolling with its console and cannot check tenant "
                f"tokens yet; retry in {RETRY_AFTER_S} s"
            )
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenError("the Authorization header must be 'Bearer <token>'")
        if token.startswith("opk_"):
            raise TokenError(
                f"this is an API key, not a token: exchange it for one at the console's "
                f"{protocol.TOKENS_PATH} and send the token; API keys never go to nodes"
            )
        self.verifications += 1
        claims = protocol.verify_token(self.keys, token, datetime.fromtimestamp(self.clock(), UTC))
        if claims.token_id in self.revoked:
            raise _revoked(claims)
        if self.scope not in claims.scopes:
            raise InsufficientScope(
                f"the token allows {', '.join(claims.scopes)}, not {self.scope}"
            )
        self._cache[header] = (claims.expires_at.timestamp(), claims)
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return claims


def _revoked(claims: TokenClaims) -> TokenError:
    return TokenError(
        f"the token {claims.token_id} was revoked by the console; get a new one from "
        f"{protocol.TOKENS_PATH}"
    )
