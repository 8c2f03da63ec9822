"""How programs authenticate to the console's API as a tenant: a Bearer API key."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer
from ninja.security.session import SessionAuthIsStaff

from billing.models import API_KEY_PREFIX, ApiKey


class ApiKeyAuth(HttpBearer):
    openapi_scheme = "bearer"

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        if not token.startswith(f"{API_KEY_PREFIX}_"):
            return None  # another scheme's token (a node credential): let the next auth try
        return ApiKey.authenticate(token)


class StaffSession(SessionAuthIsStaff):
    """An operator's browser session. A request that carries an Authorization header chose
    another scheme: it is not judged (and not CSRF-checked) as a session, so a wrong API key
    is answered 401, not "CSRF check failed"."""

    def __call__(self, request: HttpRequest):
        if request.headers.get("Authorization"):
            return None
        return super().__call__(request)


staff_session = StaffSession()
