"""The operator's deployment pages: every deployment (/fleet/deployments/), the form that
starts one, and a deployment's page with its steps, its progress on each node, its history
and the buttons that pause, resume, promote or roll it back.

Views gather querysets and hand them to declared filters, tables and forms (fleet.filters,
fleet.tables, fleet.forms); every change of a deployment is fleet.rollout_actions', the same
the API (fleet.api) calls. Live parts refresh with htmx (fleet.views.render_live).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django_tables2 import RequestConfig

from billing.models import Tenant
from billing.roles import operator_required
from fleet.choices import DeploymentState, PinSide
from fleet.drift_actions import drift_settings
from fleet.filters import DeploymentFilterSet
from fleet.forms import DeploymentForm, PinForm, RollBackForm, as_sentence
from fleet.models import Deployment, DriftAlert, Node
from fleet.rollout_actions import RolloutError, pause, pin, promote, resume, roll_back, unpin
from fleet.tables import (
    DeploymentEventTable,
    DeploymentTable,
    deployment_badge,
    drift_badge,
    format_duration,
    new_version_percent,
    selector_summary,
    steps_progress,
)
from fleet.views import render_live

DEPLOYMENTS_PER_PAGE = 50
HISTORY_LENGTH = 100
# Which buttons a deployment's page offers in each state; fleet.rollout_actions decides
# whether the action is allowed, and says why not when a stale page asks anyway.
ACTIONS_OFFERED = {
    DeploymentState.ROLLING: ("pause", "promote", "roll_back"),
    DeploymentState.PAUSED: ("resume", "promote", "roll_back"),
    DeploymentState.COMPLETED: ("roll_back",),
    DeploymentState.ROLLED_BACK: (),
}


def _deployments() -> QuerySet[Deployment]:
    return Deployment.objects.select_related(
        "version__model__owner", "previous", "created_by"
    ).prefetch_related("regions", "node_classes")


@operator_required
def deployments(request: HttpRequest) -> HttpResponse:
    filterset = DeploymentFilterSet(request.GET or None, queryset=_deployments())
    table = DeploymentTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": DEPLOYMENTS_PER_PAGE}).configure(table)
    return render_live(
        request,
        "fleet/deployments/list.html",
        "fleet/deployments/_table.html",
        {"filter": filterset, "table": table},
    )


@require_http_methods(["GET", "POST"])
@operator_required
def new(request: HttpRequest) -> HttpResponse:
    """The form that starts a rollout; ?version=<pk> chooses the version (the version page's
    "Deploy this version" link)."""
    if request.method == "POST":
        form = DeploymentForm(request.POST)
        if form.is_valid():
            deployment = form.start(acting_user=request.user)
            if deployment is not None:
                messages.success(
                    request,
                    f"{deployment.version} is rolling out: "
                    f"{deployment.current_percent} % of its traffic first.",
                )
                return redirect("deployments:detail", pk=deployment.pk)
    else:
        form = DeploymentForm(initial={"version": request.GET.get("version")})
    return render(request, "fleet/deployments/new.html", {"form": form})


@operator_required
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    now = timezone.now()
    deployment = get_object_or_404(_deployments(), pk=pk)
    version, previous = deployment.version, deployment.previous
    nodes = deployment.nodes().select_related("region", "node_class").order_by("region", "name")
    context = {
        "deployment": deployment,
        "version": version,
        "model": version.model,
        "state_badge": deployment_badge(deployment.state),
        "selector": selector_summary(deployment),
        "percent": new_version_percent(deployment),
        "progress_bar": steps_progress(deployment),
        "steps": step_rows(deployment),
        "soak_left": soak_left(deployment, now),
        "error_rate_increase": deployment.max_error_rate_increase * 100,
        "progress": node_progress(
            nodes,
            served_name=version.model.served_name,
            new_sha256=version.sha256,
            previous_sha256=previous.sha256 if previous else None,
        ),
        "history": DeploymentEventTable(deployment.events.select_related("actor")[:HISTORY_LENGTH]),
        "actions": ACTIONS_OFFERED.get(deployment.state, ()),
        "roll_back_form": RollBackForm(),
        "drift_badge": drift_badge(version.drift_psi, drift_settings().threshold),
        "drift_alert": DriftAlert.objects.open().filter(version=version).first(),
        "pins": list(deployment.pins.select_related("tenant")),
        "pin_form": PinForm(deployment=deployment)
        if deployment.state != DeploymentState.ROLLED_BACK
        else None,
    }
    return render_live(
        request, "fleet/deployments/detail.html", "fleet/deployments/_live.html", context
    )


# Each button's action and what the operator hears back when it is done.
ACTIONS: dict[str, tuple[Callable[[HttpRequest, Deployment], None], str]] = {
    "pause": (
        lambda request, d: pause(d, acting_user=request.user),
        "Paused: the traffic stays split as it is until you resume.",
    ),
    "resume": (
        lambda request, d: resume(d, acting_user=request.user),
        "Resumed: the step soaks again from now.",
    ),
    "promote": (
        lambda request, d: promote(d, acting_user=request.user),
        "Promoted: the new version takes all the traffic.",
    ),
    "roll_back": (
        lambda request, d: roll_back(
            d, reason=RollBackForm(request.POST).reason_given(), acting_user=request.user
        ),
        "Rolled back: the previous version takes all the traffic again.",
    ),
}


@require_POST
@operator_required
def act(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404("No such action")
    deployment = get_object_or_404(Deployment, pk=pk)
    perform, done = ACTIONS[action]
    try:
        perform(request, deployment)
    except RolloutError as exc:
        messages.error(request, as_sentence(str(exc)))
    else:
        messages.success(request, done)
    return redirect("deployments:detail", pk=pk)


@require_POST
@operator_required
def pin_tenant(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = get_object_or_404(_deployments(), pk=pk)
    form = PinForm(request.POST, deployment=deployment)
    if not form.is_valid():
        problems = "; ".join(e for errors in form.errors.values() for e in errors)
        messages.error(request, as_sentence(problems))
        return redirect("deployments:detail", pk=pk)
    tenant = form.cleaned_data["tenant"]
    try:
        made = pin(deployment, tenant, form.cleaned_data["side"], acting_user=request.user)
    except RolloutError as exc:
        messages.error(request, as_sentence(str(exc)))
    else:
        target = deployment.version if made.side == PinSide.NEW else deployment.previous
        messages.success(request, f"{tenant.slug}'s requests now go to v{target.version}.")
    return redirect("deployments:detail", pk=pk)


@require_POST
@operator_required
def unpin_tenant(request: HttpRequest, pk: int, tenant: str) -> HttpResponse:
    deployment = get_object_or_404(Deployment, pk=pk)
    found = get_object_or_404(Tenant, slug=tenant)
    try:
        unpin(deployment, found, acting_user=request.user)
    except RolloutError as exc:
        messages.error(request, as_sentence(str(exc)))
    else:
        messages.success(request, f"{found.slug}'s requests follow the traffic split again.")
    return redirect("deployments:detail", pk=pk)


# --- what the deployment page shows, from plain data ------------------------------------------


def step_rows(deployment: Deployment) -> list[dict[str, object]]:
    """The steps, each "done", "current" or "next" (all done once completed)."""
    completed = deployment.state == DeploymentState.COMPLETED
    rows = []
    for index, percent in enumerate(deployment.steps):
        if completed or index < deployment.step_index:
            status = "done"
        elif index == deployment.step_index:
            status = "current"
        else:
            status = "next"
        rows.append({"number": index + 1, "percent": percent, "status": status})
    return rows


def soak_left(deployment: Deployment, now: datetime) -> str | None:
    """Time left in the current step's soak, while it is rolling; None otherwise."""
    if deployment.state != DeploymentState.ROLLING:
        return None
    elapsed = (now - deployment.step_started_at).total_seconds()
    return format_duration(max(0.0, deployment.soak_s - elapsed))


@dataclass
class NodeProgress:
    """One node of a deployment's selector: what it reports of the model's two versions."""

    node: Node
    new: Mapping | None = None  # the node's models_loaded row of the new version
    previous: Mapping | None = None  # … of the previous version
    problems: list[str] = field(default_factory=list)

    @property
    def new_ready(self) -> bool:
        return bool(self.new and self.new.get("ready"))

    @property
    def previous_ready(self) -> bool:
        return bool(self.previous and self.previous.get("ready"))


def node_progress(
    nodes: Iterable[Node],
    *,
    served_name: str,
    new_sha256: str,
    previous_sha256: str | None,
) -> list[NodeProgress]:
    """Per node, its `models_loaded` rows (from the heartbeats) of the new and the previous
    version, matched by sha256, and any problem it reports for the model."""
    rows = []
    for node in nodes:
        progress = NodeProgress(node=node)
        for loaded in node.models_loaded or []:
            if loaded.get("name") != served_name:
                continue
            if loaded.get("sha256") == new_sha256:
                progress.new = loaded
            elif previous_sha256 and loaded.get("sha256") == previous_sha256:
                progress.previous = loaded
            if loaded.get("problem"):
                progress.problems.append(f"v{loaded.get('version')}: {loaded['problem']}")
        rows.append(progress)
    return rows
