"""Who may do what: operators (staff), finance (a group), and tenant members.

These live in billing, the lowest Django layer, because it owns memberships; fleet and
console views both use them. Every view and API operation names its role explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

FINANCE_GROUP = "finance"


def is_operator(user) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def is_finance(user) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    # Cached on the user object for the request: templates ask this several times.
    cached = getattr(user, "_outpost_is_finance", None)
    if cached is None:
        cached = user.groups.filter(name=FINANCE_GROUP).exists()
        user._outpost_is_finance = cached
    return cached


def is_tenant_member(user) -> bool:
    return bool(user.is_authenticated and user.is_active and user.memberships.exists())


def _role_required(check: Callable[[object], bool], role: str):
    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not check(request.user):
                raise PermissionDenied(f"This page is for {role}.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


operator_required = _role_required(is_operator, "operators")
finance_required = _role_required(lambda u: is_finance(u) or is_operator(u), "finance")
