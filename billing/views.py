"""Billing pages: the tenant portal (a member sees and manages only their own tenant) and
the finance view of every account."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from django_tables2 import RequestConfig

from billing.choices import MemberRole
from billing.filters import TenantFilter
from billing.forms import ApiKeyForm
from billing.models import ApiKey, Membership, Tenant
from billing.roles import finance_required, tenant_member_required
from billing.tables import ApiKeyTable, TenantTable

# Viewers may look; owners and developers may issue and revoke keys.
KEY_MANAGERS = {MemberRole.OWNER, MemberRole.DEVELOPER}


@login_required
def portal_index(request):
    memberships = list(Membership.objects.for_user(request.user))
    if len(memberships) == 1:
        return redirect("portal:home", tenant=memberships[0].tenant.slug)
    return render(request, "portal/index.html", {"memberships": memberships})


@tenant_member_required
def portal_home(request, membership: Membership):
    tenant = membership.tenant
    context = {
        "membership": membership,
        "tenant": tenant,
        "members": tenant.memberships.select_related("user").order_by("user__username"),
        "active_keys": tenant.api_keys.active().count(),
    }
    return render(request, "portal/home.html", context)


@tenant_member_required
def api_keys(request, membership: Membership):
    tenant = membership.tenant
    can_manage = membership.role in KEY_MANAGERS
    form = ApiKeyForm(request.POST or None)
    new_secret = None
    if request.method == "POST":
        if not can_manage:
            return HttpResponseForbidden("Viewers cannot issue API keys.")
        if form.is_valid():
            key, new_secret = ApiKey.issue(
                tenant, form.cleaned_data["name"], created_by=request.user
            )
            form = ApiKeyForm()
    table = ApiKeyTable(tenant.api_keys.select_related("created_by"))
    RequestConfig(request, paginate={"per_page": 25}).configure(table)
    context = {
        "membership": membership,
        "tenant": tenant,
        "table": table,
        "form": form,
        "can_manage": can_manage,
        # Rendered in the response to the POST only: the secret is never stored or shown again.
        "new_secret": new_secret,
    }
    return render(request, "portal/api_keys.html", context)


@require_POST
@tenant_member_required
def revoke_api_key(request, membership: Membership, pk: int):
    if membership.role not in KEY_MANAGERS:
        return HttpResponseForbidden("Viewers cannot revoke API keys.")
    key = get_object_or_404(ApiKey, pk=pk, tenant=membership.tenant)
    key.revoke()
    messages.success(request, f"Key {key.prefix}… ({key.name}) is revoked.")
    return redirect("portal:api_keys", tenant=membership.tenant.slug)


@finance_required
def accounts(request):
    """Every tenant with its members and active keys: two annotations, one query."""
    tenants = Tenant.objects.with_account_counts()
    filterset = TenantFilter(request.GET, queryset=tenants)
    table = TenantTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    return render(request, "finance/accounts.html", {"filter": filterset, "table": table})
