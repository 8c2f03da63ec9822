"""Billing pages: the tenant portal (a member sees and manages only their own tenant), the
finance view of every account, and the price book (operators set prices, finance reads)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_tables2 import RequestConfig

from billing.alerts import month_alerts
from billing.choices import MemberRole, PriceGrade, Serving
from billing.filters import PriceFilter, TenantFilter
from billing.forms import ApiKeyForm, PriceForm
from billing.models import ApiKey, Membership, Price, PriceInEffectError, Tenant
from billing.roles import (
    finance_required,
    is_operator,
    operator_required,
    tenant_member_required,
)
from billing.tables import ApiKeyTable, PriceTable, TenantTable

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
        "alerts": month_alerts(tenant),
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
    key.revoke(actor=request.user)
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


def price_grid(current: list[Price]) -> list[dict]:
    """The prices in effect as rows of (currency, grade) with a cell per serving, None where
    no price is set: the page shows gaps rather than hiding them."""
    by_key = {(p.currency, p.grade, p.serving): p for p in current}
    currencies = sorted({p.currency for p in current})
    return [
        {
            "currency": currency,
            "grade": grade,
            "cells": [by_key.get((currency, grade.value, serving)) for serving in Serving],
        }
        for currency in currencies
        for grade in PriceGrade
    ]


@finance_required
def prices(request):
    """The price book: what is in effect now, what is scheduled, and the full history.
    Operators schedule prices here; finance reads. A constant number of queries."""
    can_edit = is_operator(request.user)
    # Its own ids: the history's filter bar on the same page has fields of the same names.
    form = PriceForm(request.POST or None, auto_id="price_%s")
    if request.method == "POST":
        if not can_edit:
            return HttpResponseForbidden("Finance reads the price book; operators set prices.")
        if form.is_valid():
            price = form.schedule(created_by=request.user)
            messages.success(request, f"Scheduled: {price}.")
            return redirect("finance:prices")
    now = timezone.now()
    current = list(Price.objects.in_effect(now))
    in_effect = {(p.grade, p.serving, p.currency): p for p in current}
    scheduled = [
        (price, in_effect.get((price.grade, price.serving, price.currency)))
        for price in Price.objects.scheduled(now).select_related("created_by")
    ]
    filterset = PriceFilter(request.GET, queryset=Price.objects.select_related("created_by"))
    table = PriceTable(filterset.qs, current_ids={p.pk for p in current}, now=now)
    RequestConfig(request, paginate={"per_page": 50}).configure(table)
    context = {
        "grid": price_grid(current),
        "servings": Serving,
        "scheduled": scheduled,
        "filter": filterset,
        "table": table,
        "form": form if can_edit else None,
        "can_edit": can_edit,
    }
    return render(request, "finance/prices.html", context)


@require_POST
@operator_required
def delete_price(request, pk: int):
    """Withdraw a scheduled price. One that has taken effect is history and stays."""
    price = get_object_or_404(Price, pk=pk)
    try:
        price.withdraw(actor=request.user)
    except PriceInEffectError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Withdrawn: {price}.")
    return redirect("finance:prices")
