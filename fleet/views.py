"""The operator's fleet pages: the node list, a node's page (with its thermal simulation),
and enrollment.

Views gather querysets and hand them to declared filters and tables (fleet.filters,
fleet.tables) or to pure functions (fleet.rates, fleet.charts); they decide nothing.
Live parts refresh with htmx: the same view answers a poll with the partial template.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_tables2 import RequestConfig

from billing.roles import operator_required
from fleet.actions import request_credential_rotation
from fleet.charts import NODE_CHART_TITLES, figure_json, node_figures
from fleet.filters import NodeFilterSet
from fleet.forms import ChartRangeForm, EnrollForm, ThermalSimulationForm
from fleet.models import EnrollmentToken, Node
from fleet.tables import (
    EnrollmentTokenTable,
    NodeTable,
    StatusHistoryTable,
    format_duration,
    status_badge,
)

NODES_PER_PAGE = 50
TOKENS_PER_PAGE = 10
STATUS_HISTORY_LENGTH = 50
# Readings from before a chart's range anchor the request counter of its first minutes
# (fleet.rates needs a previous reading); a few minutes covers a missed heartbeat or two.
COUNTER_ANCHOR = timedelta(minutes=5)


def wants_partial(request: HttpRequest) -> bool:
    """Whether htmx asked for the live part of a page rather than the whole page.

    A history restore (back button after htmx's cache was evicted) needs the whole page.
    """
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def render_live(
    request: HttpRequest, page: str, partial: str, context: dict[str, object]
) -> HttpResponse:
    """The page, or only its live partial when htmx polls; used by console.views too."""
    response = render(request, partial if wants_partial(request) else page, context)
    # The same address answers with two bodies: caches must keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


@operator_required
def nodes(request: HttpRequest) -> HttpResponse:
    queryset = Node.objects.with_status().select_related("region", "node_class")
    filterset = NodeFilterSet(request.GET or None, queryset=queryset)
    table = NodeTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": NODES_PER_PAGE}).configure(table)
    return render_live(
        request,
        "fleet/nodes.html",
        "fleet/_nodes_table.html",
        {"filter": filterset, "table": table},
    )


@operator_required
def node(request: HttpRequest, uid: str) -> HttpResponse:
    return _node_page(request, uid)


@require_POST
@operator_required
def simulate_temperature(request: HttpRequest, uid: str) -> HttpResponse:
    """Set or stop the node's simulated temperature (the node page's Thermal simulation card);
    refused, the page comes back with the reason on the card."""
    found = get_object_or_404(Node, uid=uid)
    form = ThermalSimulationForm(request.POST, node=found)
    if form.is_valid() and (changed := form.save(actor=request.user)) is not None:
        target = form.target
        if not changed:
            messages.info(request, "Nothing changed: the simulation is already so.")
        elif target is None:
            messages.success(
                request, f"{found.name} reads its sensors again from its next heartbeat."
            )
        else:
            messages.success(
                request,
                f"{found.name} simulates {target:g} °C: its reading moves there at 1 °C/s from "
                "its next heartbeat. This is a simulation; the machine is not hotter.",
            )
        return redirect(f"{reverse('fleet:node', args=[found.uid])}#thermal-simulation")
    return _node_page(request, uid, simulation_form=form)


@require_POST
@operator_required
def rotate_credential(request: HttpRequest, uid: str) -> HttpResponse:
    """Ask the node for a new credential (the node page's Credential card)."""
    found = get_object_or_404(Node, uid=uid)
    if request_credential_rotation(found, actor=request.user):
        messages.success(
            request,
            f"{found.name} gets a new credential with its next heartbeat; the current one is "
            "refused once the node uses the new one.",
        )
    else:
        messages.info(request, f"A rotation is already waiting for {found.name}'s next heartbeat.")
    return redirect(f"{reverse('fleet:node', args=[found.uid])}#credential")


def _node_page(
    request: HttpRequest, uid: str, *, simulation_form: ThermalSimulationForm | None = None
) -> HttpResponse:
    """The node's page; a refused simulation form comes back in place of the blank one."""
    now = timezone.now()
    node = get_object_or_404(
        Node.objects.with_status(now).select_related("region", "node_class"), uid=uid
    )
    chart_range = ChartRangeForm(request.GET)
    since = now - chart_range.window
    readings = (
        node.samples.filter(at__gte=since - COUNTER_ANCHOR)
        .order_by("at")
        .values_list("at", "cpu_load", "memory_pressure", "temperature_c", "requests_total")
    )
    figures = node_figures(
        list(readings),
        node_id=node.pk,
        since=since,
        now=now,
        heartbeat=timedelta(seconds=settings.OUTPOST_HEARTBEAT_INTERVAL_S),
    )
    context = {
        "node": node,
        "range": chart_range.key,
        "ranges": list(ChartRangeForm.RANGES),
        "status_badge": status_badge(node.current_status),
        "uptime": format_duration(node.uptime_s),
        "history": StatusHistoryTable(node.status_changes.order_by("-at")[:STATUS_HISTORY_LENGTH]),
        "chart_titles": NODE_CHART_TITLES,
        "charts": {name: figure_json(fig) for name, fig in figures.items()},
        "simulation_form": simulation_form or ThermalSimulationForm(node=node),
    }
    return render_live(request, "fleet/node.html", "fleet/_node_live.html", context)


@require_http_methods(["GET", "POST"])
@never_cache  # the answer to a POST holds a secret; no cache, and no back-button copy of it
@operator_required
def enroll(request: HttpRequest) -> HttpResponse:
    """Issue a one-time enrollment token. The secret is shown in the answer to the POST and
    never again (only its hash is stored), so there is no redirect to a page that shows it."""
    form = EnrollForm(request.POST if request.method == "POST" else None)
    issued = None
    if request.method == "POST" and form.is_valid():
        token, secret = form.issue(created_by=request.user)
        issued = {"token": token, "secret": secret, "command": EnrollmentToken.command_for(secret)}
        form = EnrollForm()

    tokens = EnrollmentTokenTable(
        EnrollmentToken.objects.select_related("region", "node_class", "created_by", "node"),
        prefix="tokens-",
    )
    RequestConfig(request, paginate={"per_page": TOKENS_PER_PAGE}).configure(tokens)
    template = "fleet/enroll_done.html" if issued else "fleet/enroll.html"
    return render(request, template, {"form": form, "issued": issued, "tokens": tokens})
