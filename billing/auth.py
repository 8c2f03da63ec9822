"""How programs authenticate to the console's API as a tenant: a Bearer API key."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from billing.models import API_KEY_PREFIX, ApiKey


class ApiKeyAuth(HttpBearer):
    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        if not token.startswith(f"{API_KEY_PREFIX}_"):
            return None  # another scheme's token (a node credential): let the next auth try
        return ApiKey.authenticate(token)
