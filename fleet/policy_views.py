"""Tenant policies and the thresholds the policy bundle carries, as pages.

- In a tenant's portal, `/portal/<tenant>/policy/`: the policy, the form that edits it (owners
  and developers; viewers read), and its history.
- For operators, `/fleet/policies/`: every tenant's policy (with the operators' own settings,
  fail closed after a staleness, a rate limit and a residency zone), each node class's thermal
  envelope and cost ceilings, each region's accelerator pool, and the recent changes. Each form
  posts to its own address and, when refused, the page comes back with the reasons on that
  form.
- For operators, `/fleet/policies/simulator/`: what a node would decide for a request under
  the newest bundle (fleet.simulator, which runs the nodes' own inference.policy.decide).

Every write is an action of fleet.policies, which validates and audits it.
"""

from __future__ import annotations

from collections import defaultdict

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_tables2 import RequestConfig

from billing.models import Membership, Tenant
from billing.roles import operator_required, tenant_member_required
from fleet.choices import NodeClassKind
from fleet.filters import TenantPolicyFilterSet
from fleet.forms import (
    AcceleratorPoolForm,
    FailClosedForm,
    NodeClassThresholdsForm,
    PolicyForm,
    RateLimitForm,
    ResidencyZoneForm,
    SimulatorForm,
)
from fleet.models import (
    FleetSettingChange,
    Node,
    NodeClass,
    PolicyBundleRecord,
    PolicyChange,
    Region,
    TenantPolicy,
)
from fleet.models.policies import format_amount
from fleet.registry_views import UPLOADERS
from fleet.simulator import simulate
from fleet.tables import (
    FleetSettingChangeTable,
    PolicyChangeTable,
    TenantPolicyTable,
    decision_badge,
)

# Who edits a tenant's policy: the roles that register its models (viewers read).
EDITORS = UPLOADERS
HISTORY_PER_PAGE = 25
POLICIES_PER_PAGE = 50
RECENT_CHANGES = 20


# --- a tenant's portal -----------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@tenant_member_required
def portal_policy(request: HttpRequest, membership: Membership) -> HttpResponse:
    tenant = membership.tenant
    can_edit = membership.role in EDITORS
    policy = TenantPolicy.objects.for_tenant(tenant)
    policy.tenant = tenant  # the membership's, already loaded
    form = None
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("Viewers can read the policy; owners and developers change it.")
        form = PolicyForm(request.POST, policy=policy)
        if form.is_valid():
            saved = form.save(actor=request.user)
            if saved is not None:
                if saved.revision == policy.revision:
                    messages.info(request, "Nothing changed: the policy is as it was.")
                else:
                    messages.success(
                        request,
                        f"Policy saved as revision {saved.revision}. Nodes apply it with "
                        "their next policy bundle.",
                    )
                return redirect("portal_policy:policy", tenant=tenant.slug)
            policy.refresh_from_db()  # it may have changed meanwhile (the form says so)
            policy.tenant = tenant
    elif can_edit:
        form = PolicyForm(policy=policy)
    history = PolicyChangeTable(
        PolicyChange.objects.filter(tenant=tenant).select_related("actor", "api_key")
    )
    RequestConfig(request, paginate={"per_page": HISTORY_PER_PAGE}).configure(history)
    return render(
        request,
        "portal/policy.html",
        {
            "tenant": tenant,
            "membership": membership,
            "policy": policy,
            "max_spend": format_amount(policy.max_spend_per_session),
            "form": form,
            "can_edit": can_edit,
            "history": history,
        },
    )


# --- operators -------------------------------------------------------------------------------


@operator_required
def policies(request: HttpRequest) -> HttpResponse:
    return _operator_page(request)


@require_POST
@operator_required
def fail_closed(request: HttpRequest, tenant: str) -> HttpResponse:
    def said(slug: str, after: int | None) -> str:
        if after:
            return (
                f"{slug}: nodes now refuse its requests when their bundle is older than {after} s."
            )
        return f"{slug}: nodes keep serving it whatever the age of their bundle."

    return _save_operator_field(request, tenant, FailClosedForm, said, "fail_closed_error")


@require_POST
@operator_required
def rate_limit(request: HttpRequest, tenant: str) -> HttpResponse:
    def said(slug: str, limit: int | None) -> str:
        if limit:
            return (
                f"{slug}: each node now admits at most {limit:,} of its requests per second "
                "and answers 429 beyond."
            )
        return f"{slug}: no rate limit."

    return _save_operator_field(request, tenant, RateLimitForm, said, "rate_limit_error")


@require_POST
@operator_required
def residency_zone(request: HttpRequest, tenant: str) -> HttpResponse:
    def said(slug: str, zone: str) -> str:
        if zone:
            return f"{slug}: bound to zone {zone}; its requests and models stay in it."
        return f"{slug}: no longer bound to a residency zone."

    return _save_operator_field(request, tenant, ResidencyZoneForm, said, "residency_error")


def _save_operator_field(request, tenant: str, form_class, said, error_key: str) -> HttpResponse:
    """Save one operator-only policy field of a tenant from its form on the operator page:
    back to the page with what changed, or the page with the refused form in its row."""
    found = get_object_or_404(Tenant, slug=tenant)
    form = form_class(request.POST)
    if form.is_valid() and (saved := form.save(found, actor=request.user)) is not None:
        messages.success(request, said(found.slug, getattr(saved, form_class.field)))
        return redirect(f"{reverse('policies:list')}#tenant-{found.slug}")
    return _operator_page(request, **{error_key: {"slug": found.slug, "form": form}})


@require_POST
@operator_required
def node_class_thresholds(request: HttpRequest, name: str) -> HttpResponse:
    node_class = get_object_or_404(NodeClass, name=name)
    form = NodeClassThresholdsForm(request.POST, node_class=node_class)
    if form.is_valid() and form.save(actor=request.user) is not None:
        messages.success(request, f"Thresholds of the {node_class.name} class saved.")
        return redirect(f"{reverse('policies:list')}#class-{node_class.name}")
    return _operator_page(request, bound={("class", node_class.name): form})


@require_POST
@operator_required
def accelerator_pool(request: HttpRequest, region: str) -> HttpResponse:
    found = get_object_or_404(Region, code=region)
    form = AcceleratorPoolForm(
        request.POST,
        region=found,
        pool=None,
        candidates=_accelerators().get(found.pk, []),
        regions=list(Region.objects.all()),
    )
    if form.is_valid() and form.save(actor=request.user) is not None:
        messages.success(request, f"The {found.code} accelerator pool is saved.")
        return redirect(f"{reverse('policies:list')}#pool-{found.code}")
    return _operator_page(request, bound={("pool", found.code): form})


def _accelerators() -> dict[int, list[Node]]:
    """Accelerator nodes by region id: what each pool's form offers."""
    by_region: dict[int, list[Node]] = defaultdict(list)
    nodes = Node.objects.filter(node_class__name=NodeClassKind.ACCELERATOR).order_by("name")
    for node in nodes:
        by_region[node.region_id].append(node)
    return by_region


def _operator_page(
    request: HttpRequest,
    *,
    fail_closed_error: dict | None = None,
    rate_limit_error: dict | None = None,
    residency_error: dict | None = None,
    bound: dict[tuple[str, str], object] | None = None,
) -> HttpResponse:
    """The page, with a refused form (`bound`, `fail_closed_error`) in place of its blank one.
    Its queries do not grow with the number of tenants, classes or regions."""
    bound = bound or {}
    TenantPolicy.objects.create_missing()
    queryset = TenantPolicy.objects.select_related("tenant")
    # Filters read the address only: a POST's fields are a form's.
    filterset = TenantPolicyFilterSet(request.GET or None, queryset=queryset)
    table = TenantPolicyTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": POLICIES_PER_PAGE}).configure(table)

    class_forms = [
        bound.get(("class", node_class.name)) or NodeClassThresholdsForm(node_class=node_class)
        for node_class in NodeClass.objects.all()
    ]
    accelerators = _accelerators()
    regions = list(
        Region.objects.select_related(
            "accelerator_pool", "accelerator_pool__fallback"
        ).prefetch_related("accelerator_pool__nodes")
    )
    pools = []
    for region in regions:
        pool = getattr(region, "accelerator_pool", None)
        form = bound.get(("pool", region.code)) or AcceleratorPoolForm(
            region=region, pool=pool, candidates=accelerators.get(region.pk, []), regions=regions
        )
        pools.append({"region": region, "pool": pool, "form": form})
    recent_policy_changes = PolicyChangeTable(
        list(PolicyChange.objects.select_related("tenant", "actor", "api_key")[:RECENT_CHANGES]),
        operator_view=True,
    )
    recent_setting_changes = FleetSettingChangeTable(
        list(FleetSettingChange.objects.select_related("actor")[:RECENT_CHANGES])
    )
    return render(
        request,
        "fleet/policies/policies.html",
        {
            "filter": filterset,
            "table": table,
            "fail_closed_error": fail_closed_error,
            "rate_limit_error": rate_limit_error,
            "residency_error": residency_error,
            # What the residency cells offer: the zones the regions have.
            "residency_zones": sorted({region.residency_zone for region in regions}),
            "class_forms": class_forms,
            "pools": pools,
            "recent_policy_changes": recent_policy_changes,
            "recent_setting_changes": recent_setting_changes,
        },
    )


@operator_required
def simulator(request: HttpRequest) -> HttpResponse:
    """A GET form, so that a scenario is a link: bound once it names a tenant; before that,
    the address may preselect fields (the node page links here with ?node=<uid>)."""
    record = PolicyBundleRecord.objects.order_by("-revision").first()
    if record is None:
        return render(request, "fleet/policies/simulator.html", {"record": None})
    bundle = record.bundle
    if "tenant" in request.GET:
        form = SimulatorForm(request.GET, bundle=bundle)
    else:
        form = SimulatorForm(bundle=bundle, initial=request.GET.dict())
    simulation = simulate(bundle, form.scenario()) if form.is_bound and form.is_valid() else None
    return render(
        request,
        "fleet/policies/simulator.html",
        {
            "record": record,
            "form": form,
            "simulation": simulation,
            "action_badge": decision_badge(simulation.decision.action) if simulation else None,
        },
    )
