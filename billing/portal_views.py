"""The tenant's money in the portal: this month so far and its forecast, the measured p95
against the band's target, credits earned, and the invoices. Every query is scoped to the
member's own tenant (tenant_member_required)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from billing import rating
from billing.alerts import month_alerts
from billing.choices import InvoiceStatus, MemberRole
from billing.invoicing import P95_BEYOND, forecast, month_of
from billing.models import (
    FeatureActivation,
    FeatureBundle,
    Invoice,
    LatencyBand,
    Membership,
    Subscription,
    UsageHourly,
)
from billing.roles import tenant_member_required

CREDIT_KINDS = ("quality_credit", "sla_credit")


@tenant_member_required
def billing_home(request, membership: Membership):
    tenant = membership.tenant
    now = timezone.now()
    year, month = month_of(tenant, now)
    draft = (
        Invoice.objects.filter(tenant=tenant, year=year, month=month)
        .exclude(status=InvoiceStatus.VOID)
        .prefetch_related("lines")
        .first()
    )
    start, end = rating.month_bounds(year, month, tenant.time_zone)
    usage = UsageHourly.objects.of(tenant, start, end)
    by_model = list(usage.summed_by("model", "served_by"))
    by_reason = sorted(
        usage.filter(served_by="regional").summed_by("offload_reason"),
        key=lambda row: -row["inferences"],
    )
    local = sum(r["inferences"] for r in by_model if r["served_by"] == "local")
    regional = sum(r["inferences"] for r in by_model if r["served_by"] == "regional")
    lines = list(draft.lines.all()) if draft is not None else []
    context = {
        "membership": membership,
        "tenant": tenant,
        "draft": draft,
        "lines": lines,
        "credits": sum((line.amount for line in lines if line.kind in CREDIT_KINDS), start=0),
        "forecast": forecast(draft, now) if draft is not None else None,
        "by_model": by_model,
        "by_reason": by_reason,
        "local": local,
        "regional": regional,
        "p95_beyond": P95_BEYOND,
        "alerts": month_alerts(tenant, now),
        "month_label": f"{year}-{month:02d}",
        "addons": addons(tenant, now),
        "can_switch": membership.role == MemberRole.OWNER,
        "bands": bands(tenant, now),
        "subscription": Subscription.objects.filter(tenant=tenant)
        .current(now)
        .select_related("band")
        .first(),
        "invoices": Invoice.objects.for_tenant(tenant).settled_or_open().order_by("-period_start"),
    }
    return render(request, "portal/billing.html", context)


@tenant_member_required
def invoice_detail(request, membership: Membership, pk: int):
    invoice = get_object_or_404(
        Invoice.objects.for_tenant(membership.tenant).prefetch_related("lines"), pk=pk
    )
    return render(
        request,
        "portal/invoice.html",
        {"membership": membership, "tenant": membership.tenant, "invoice": invoice},
    )


@tenant_member_required
def invoice_download(request, membership: Membership, pk: int):
    from billing.pdf import invoice_pdf

    invoice = get_object_or_404(
        Invoice.objects.for_tenant(membership.tenant).select_related("tenant"), pk=pk
    )
    name = invoice.number or f"draft-{membership.tenant.slug}-{invoice.label}"
    response = HttpResponse(invoice_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="invoice-{name}.pdf"'
    return response


@tenant_member_required
def portal_export(request, membership: Membership):
    """The member's own tenant's invoices, lines or usage, as CSV or XLSX."""
    from billing.exports import Scope
    from billing.finance_views import stream_export

    return stream_export(request, Scope.of(membership.tenant), tenant=membership.tenant)


def bands(tenant, now) -> list[dict]:
    return [
        {"band": band, "terms": band.terms_at(tenant.currency, now)}
        for band in LatencyBand.objects.order_by("position", "name")
    ]


def addons(tenant, now) -> list[dict]:
    active = {a.bundle_id: a for a in FeatureActivation.objects.filter(tenant=tenant).current(now)}
    return [
        {
            "bundle": bundle,
            "price": bundle.price_at(tenant.currency, now),
            "active": active.get(bundle.pk),
        }
        for bundle in FeatureBundle.objects.order_by("name")
    ]


@tenant_member_required
@require_POST
def switch_addon(request, membership: Membership, slug: str):
    from billing.features import FeatureError, switch

    if membership.role != MemberRole.OWNER:
        return HttpResponseForbidden("Only the tenant's owners switch add-ons.")
    bundle = get_object_or_404(FeatureBundle, slug=slug)
    on = request.POST.get("on") == "1"
    try:
        switch(membership.tenant, bundle, on, actor=request.user)
    except FeatureError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"{bundle.name} is {'on' if on else 'off'}; every node applies it within seconds.",
        )
    return redirect("portal:billing", tenant=membership.tenant.slug)


@tenant_member_required
@require_POST
def change_band_view(request, membership: Membership):
    from billing.plans import PlanError, change_band

    if membership.role != MemberRole.OWNER:
        return HttpResponseForbidden("Only the tenant's owners change its band.")
    band = LatencyBand.objects.filter(slug=request.POST.get("band", "")).first()
    if band is None:
        messages.error(request, "Choose one of the bands offered.")
    else:
        try:
            change_band(membership.tenant, band, actor=request.user)
        except PlanError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(
                request, f"You are on the {band.name} band from now; this month is prorated."
            )
    return redirect("portal:billing", tenant=membership.tenant.slug)
