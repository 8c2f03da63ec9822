"""Who may do what: operators (staff), finance (a group), auditors (a group) and tenant members.

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
# Auditors read compliance findings and the audit log (and export them); they change nothing.
AUDITOR_GROUP = "auditor"


def is_operator(user) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def _group_names(user) -> frozenset[str]:
    # Read once and cached on the user object for the request: templates and views ask for
    # finance and auditor several times, and both answers cost this one query.
    cached = getattr(user, "_outpost_groups", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user._outpost_groups = cached
    return cached


def is_finance(user) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or FINANCE_GROUP in _group_names(user)


def is_auditor(user) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or AUDITOR_GROUP in _group_names(user)


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
# Compliance findings and the audit log: operators, finance and auditors may read them.
audit_reader_required = _role_required(
    lambda u: is_operator(u) or is_finance(u) or is_auditor(u), "operators, finance and auditors"
)


def tenant_member_required(view):
    """For portal views under /portal/<tenant>/: resolves the tenant through the user's own
    memberships, so another tenant's pages are a 404, exactly like a tenant that does not
    exist. The view receives `membership` instead of the slug."""
    from django.http import Http404

    from billing.models import Membership

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, tenant: str, *args, **kwargs) -> HttpResponse:
        membership = Membership.objects.for_user(request.user).filter(tenant__slug=tenant).first()
        if membership is None:
            raise Http404("No such tenant")
        return view(request, membership, *args, **kwargs)

    return wrapper
