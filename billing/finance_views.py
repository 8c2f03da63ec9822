"""The finance view: close a month (every tenant's draft with its anomalies, refresh, finalise
in bulk with visible progress), Stripe sync status, and the month's invoices."""

from __future__ import annotations

import re

from django.contrib import messages
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from billing import stripe_sync
from billing.closing import close_rows, month_totals, refresh_month, start_close
from billing.exports import EXPORTS, FORMATS, ExportError, Period, Scope
from billing.invoicing import previous_month
from billing.models import CloseRun, Tenant
from billing.roles import finance_required

MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_param(request) -> tuple[int, int]:
    """?month=YYYY-MM, default the month before this one (UTC): the one to close."""
    match = MONTH.match(request.GET.get("month") or request.POST.get("month") or "")
    if match and 1 <= int(match[2]) <= 12:
        return int(match[1]), int(match[2])
    now = timezone.now()
    return previous_month(now.year, now.month)


@finance_required
def close(request):
    year, month = month_param(request)
    run = CloseRun.objects.filter(year=year, month=month).first()
    context = {
        "year": year,
        "month": month,
        "label": f"{year}-{month:02d}",
        "previous_label": "{}-{:02d}".format(*previous_month(year, month)),
        "next_label": f"{year + (month == 12)}-{month % 12 + 1:02d}",
        "rows": close_rows(year, month),
        "run": run,
        "totals": month_totals(year, month),
        "stripe": stripe_sync.enabled(),
    }
    partial = request.headers.get("HX-Request") == "true"
    response = render(
        request, "finance/_close_live.html" if partial else "finance/close.html", context
    )
    patch_vary_headers(response, ["HX-Request"])
    return response


@finance_required
@require_POST
def close_action(request):
    year, month = month_param(request)
    label = f"{year}-{month:02d}"
    if request.POST.get("action") == "refresh":
        count = refresh_month(year, month)
        messages.success(request, f"{count} draft(s) of {label} refreshed.")
    elif request.POST.get("action") == "finalise":
        run = start_close(year, month, acting_user=request.user)
        if run.total:
            messages.success(request, f"Finalising {run.total} draft(s) of {label}…")
        else:
            messages.info(request, f"No draft of {label} is left to finalise.")
    else:
        messages.error(request, "Unknown action: refresh or finalise.")
    return redirect(f"{reverse('finance:close')}?month={label}")


def stream_export(request, scope: Scope, *, tenant: Tenant | None = None):
    """The export a query string asks for (?kind=&format=&from=YYYY-MM&to=YYYY-MM), streamed;
    a 400 that says what is wrong otherwise."""
    kind = EXPORTS.get(request.GET.get("kind", ""))
    if kind is None:
        return HttpResponseBadRequest(f"kind must be one of {', '.join(EXPORTS)}")
    try:
        period = Period.parse(request.GET.get("from", ""), request.GET.get("to") or None)
        export = kind.build(
            period, scope=scope, fmt=request.GET.get("format", "csv"), tenant=tenant
        )
    except ExportError as exc:
        return HttpResponseBadRequest(str(exc))
    response = StreamingHttpResponse(export.chunks, content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


@finance_required
def exports(request):
    if "kind" in request.GET:
        tenant = None
        if request.GET.get("tenant"):
            tenant = Tenant.objects.filter(slug=request.GET["tenant"]).first()
            if tenant is None:
                return HttpResponseBadRequest(f"no tenant {request.GET['tenant']!r}")
        return stream_export(request, Scope.finance(), tenant=tenant)
    year, month = month_param(request)
    return render(
        request,
        "finance/exports.html",
        {
            "kinds": EXPORTS.values(),
            "formats": FORMATS,
            "default_month": f"{year}-{month:02d}",
            "tenants": Tenant.objects.order_by("name"),
        },
    )
