"""Billing's part of /api/v1: a tenant exchanges its API key for an ephemeral token.

Nodes never see API keys. A program asks `POST /api/v1/tokens` with its key and calls nodes
with the short-lived token it gets back (`Authorization: Bearer opt_…`); nodes check the
token offline against the console key they pinned at enrollment (inference/tokens.py).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Router
from ninja.errors import HttpError

from billing.auth import ApiKeyAuth
from billing.models import ApiKey, IssuedToken, Tenant
from billing.signing import console_private_key
from inference import protocol

tokens_router = Router(tags=["tokens"], auth=ApiKeyAuth())


def issue_tenant_token(
    tenant: Tenant, ttl_s: int, *, api_key: ApiKey | None = None
) -> protocol.TokenResponse:
    """A token for `tenant` to call inference on nodes, signed with the console's key and
    recorded (IssuedToken) so that it can be revoked, alone or with its API key."""
    key = console_private_key()
    # Whole seconds: the token is shorter, and nothing needs finer expiry.
    issued_at = timezone.now().replace(microsecond=0)
    claims = protocol.TokenClaims(
        tenant=tenant.slug,
        scopes=[protocol.SCOPE_INFER],
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
        token_id=secrets.token_urlsafe(12),
        key_id=protocol.key_id(key.public_key()),
    )
    IssuedToken.objects.create(
        token_id=claims.token_id,
        tenant=tenant,
        api_key=api_key,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
    )
    return protocol.TokenResponse(
        token=protocol.issue_token(key, claims),
        tenant=claims.tenant,
        scopes=claims.scopes,
        expires_at=claims.expires_at,
    )


@tokens_router.post(
    "",
    response={200: protocol.TokenResponse, 400: protocol.ErrorBody, 401: protocol.ErrorBody},
    summary="Exchange the tenant's API key for a short-lived token to call nodes with",
)
def create_token(
    request: HttpRequest, response: HttpResponse, body: protocol.TokenRequest | None = None
):
    """The body is optional: without `ttl_s` the token lives OUTPOST_TOKEN_TTL_S seconds,
    which is also the longest a token may live."""
    api_key: ApiKey = request.auth
    longest = settings.OUTPOST_TOKEN_TTL_S
    ttl_s = longest if body is None or body.ttl_s is None else body.ttl_s
    if not protocol.TOKEN_MIN_TTL_S <= ttl_s <= longest:
        raise HttpError(
            400,
            f"ttl_s must be between {protocol.TOKEN_MIN_TTL_S} and {longest} seconds, got {ttl_s}",
        )
    # A bearer credential: no cache may keep it (RFC 6749 §5.1).
    response["Cache-Control"] = "no-store"
    return issue_tenant_token(api_key.tenant, ttl_s, api_key=api_key)


class ConsoleKeyOut(protocol.WireModel):
    key_id: str
    public_key: str


keys_router = Router(tags=["keys"], auth=None)


@keys_router.get(
    "",
    response={200: ConsoleKeyOut},
    summary="The console's Ed25519 public key: verifies bundles, tokens and alert webhooks",
)
def console_key(request: HttpRequest):
    public = console_private_key().public_key()
    return ConsoleKeyOut(
        key_id=protocol.key_id(public), public_key=protocol.public_key_to_b64(public)
    )
