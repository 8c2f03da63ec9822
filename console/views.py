"""The console's own pages: the operators' home dashboard, and a welcome for everyone else."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from billing.roles import (
    finance_required,
    is_finance,
    is_operator,
    is_tenant_member,
    operator_required,
)
from console.charts import fleet_traffic, status_matrix
from fleet import rates
from fleet.charts import figure_json
from fleet.choices import NodeStatus
from fleet.models import Node, NodeSample
from fleet.tables import AttentionTable
from fleet.views import COUNTER_ANCHOR, render_live

TRAFFIC_WINDOW = timedelta(hours=1)
ATTENTION_LIMIT = 10


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Everyone lands on what their role is for: operators on the fleet at a glance, finance
    on the accounts, tenant members in their portal; anyone else is told they have no role."""
    user = request.user
    if is_operator(user):
        return fleet_overview(request)
    if is_finance(user):
        return redirect("finance:accounts")
    if is_tenant_member(user):
        return redirect("portal:index")
    return render(request, "console/welcome.html")


@operator_required
def fleet_overview(request: HttpRequest) -> HttpResponse:
    """The operators' home (home() answers with it): status grid, traffic, trouble."""
    now = timezone.now()
    nodes = Node.objects.with_status(now)
    # One GROUP BY for the whole grid, whatever the size of the fleet.
    counts = nodes.values_list("region__code", "node_class__name", "current_status").annotate(
        n=Count("pk")
    )
    # Longest silent first: offline, then degraded, then nodes that never reported.
    attention = AttentionTable(
        list(
            nodes.exclude(current_status=NodeStatus.ONLINE)
            .select_related("region", "node_class")
            .order_by(F("last_heartbeat_at").asc(nulls_last=True), "name")[:ATTENTION_LIMIT]
        )
    )

    end = rates.last_complete_minute_end(
        now, timedelta(seconds=settings.OUTPOST_HEARTBEAT_INTERVAL_S)
    )
    start = end - TRAFFIC_WINDOW
    # No upper bound: the reading just after `end` carries the last minute's tail.
    samples = NodeSample.objects.filter(at__gte=start - COUNTER_ANCHOR).values_list(
        "node_id", "node__region__code", "at", "requests_total"
    )
    traffic = fleet_traffic(samples, start, end)

    context = {
        "matrix": status_matrix(counts),
        "attention": attention,
        "traffic": traffic,
        "traffic_chart": figure_json(traffic.figure),
    }
    return render_live(request, "console/home.html", "console/_home_live.html", context)


@finance_required
def margins(request: HttpRequest) -> HttpResponse:
    """Revenue against the node classes' cost model, per currency (fleet/margins.py)."""
    from billing.finance_views import month_param
    from fleet.margins import margin_report

    year, month = month_param(request)
    report = margin_report(year, month, include_drafts=request.GET.get("drafts") == "1")
    return render(
        request, "finance/margins.html", {"report": report, "label": f"{year}-{month:02d}"}
    )
