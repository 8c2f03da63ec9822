"""The one API object for /api/v1/: every app's router is mounted here."""

from __future__ import annotations

from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from billing.account_api import invoices_router, usage_router
from billing.api import keys_router, tokens_router
from billing.prices_api import prices_router
from fleet.api import deployments_router, fleet_router, models_router, node_router
from fleet.policy_api import policy_router
from fleet.slo_api import slo_router

api = NinjaAPI(
    title="Outpost API",
    version="1",
    description=(
        "Node-facing (enroll, heartbeat), tenant-facing and operator-facing endpoints. "
        'Errors are `{"error": "..."}` with a 4xx status.'
    ),
    urls_namespace="api",
)


def _where(loc: list) -> str:
    # ("body", "body", "cpu_load") → "cpu_load"; the first parts name the source, not the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError):
    problems = "; ".join(f"{_where(e.get('loc', []))}: {e.get('msg')}" for e in exc.errors)
    return api.create_response(
        request, {"error": f"invalid request: {problems}", "detail": exc.errors}, status=400
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError):
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError):
    return api.create_response(
        request, {"error": "authentication required or credential not valid"}, status=401
    )


api.add_router("/nodes", node_router)
api.add_router("/fleet", fleet_router)
api.add_router("/models", models_router)
api.add_router("/deployments", deployments_router)
api.add_router("/tokens", tokens_router)
api.add_router("/keys", keys_router)
api.add_router("/usage", usage_router)
api.add_router("/invoices", invoices_router)
api.add_router("/prices", prices_router)
api.add_router("/policy", policy_router)
api.add_router("/slo", slo_router)
