"""The model registry's pages: every version for operators (/fleet/models/), a tenant's own
models and the catalogue in its portal (/portal/<tenant>/models/), and a version's page in
both, with its grade, the reasons for it and its latency per node class.

They live in fleet, not billing, although the portal's other pages are billing's: the
import-linter layers let fleet use billing's roles and tenants, never the other way round.
Views gather querysets and hand them to declared filters, tables and forms
(fleet.filters, fleet.tables, fleet.forms); the upload itself is fleet.actions'.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from django_tables2 import RequestConfig

from billing.choices import MemberRole
from billing.models import Membership, Tenant
from billing.roles import operator_required, tenant_member_required
from fleet.charts import distribution_figure, drift_figure, figure_json, grading_figure
from fleet.choices import VersionStatus
from fleet.drift_actions import overview
from fleet.filters import ModelVersionFilterSet
from fleet.forms import ModelUploadForm, registration_message
from fleet.grading import ClassLatency, format_bytes, format_flops, format_seconds
from fleet.models import Model, ModelVersion
from fleet.tables import (
    ModelVersionTable,
    OtherVersionsTable,
    drift_badge,
    grade_badge,
    op_histogram_summary,
    version_status_badge,
)
from fleet.views import render_live

VERSIONS_PER_PAGE = 50
# Viewers may look; owners and developers may register models (as with API keys).
UPLOADERS = {MemberRole.OWNER, MemberRole.DEVELOPER}


# --- operators -------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@operator_required
def models(request: HttpRequest) -> HttpResponse:
    """Every version of every model; operators upload catalogue models here."""
    form = _upload_form(request)
    if request.method == "POST" and form.is_valid():
        registered = form.register(owner=None, uploaded_by=request.user)
        if registered is not None:
            return _registered(request, registered, "registry:version", {})
    return _versions_page(
        request,
        ModelVersion.objects.all(),
        page="fleet/registry/versions.html",
        tenant=None,
        form=form,
        version_url=lambda version: reverse("registry:version", args=[version.pk]),
        context={"list_url": reverse("registry:models"), "can_upload": True},
    )


@operator_required
def version(request: HttpRequest, pk: int) -> HttpResponse:
    return _version_page(
        request,
        ModelVersion.objects.all(),
        pk,
        page="fleet/registry/version.html",
        version_url=lambda other: reverse("registry:version", args=[other.pk]),
        context={"list_url": reverse("registry:models")},
    )


# --- a tenant's portal -----------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@tenant_member_required
def portal_models(request: HttpRequest, membership: Membership) -> HttpResponse:
    """The tenant's own models and the catalogue; owners and developers upload here."""
    tenant = membership.tenant
    can_upload = membership.role in UPLOADERS
    form = _upload_form(request)
    if request.method == "POST":
        if not can_upload:
            raise PermissionDenied("Viewers can look at models; owners and developers upload.")
        if form.is_valid():
            registered = form.register(owner=tenant, uploaded_by=request.user)
            if registered is not None:
                return _registered(
                    request, registered, "portal_models:version", {"tenant": tenant.slug}
                )
    return _versions_page(
        request,
        _visible_to(tenant),
        page="portal/models/versions.html",
        tenant=tenant,
        form=form,
        version_url=_portal_version_url(tenant),
        context={
            "tenant": tenant,
            "membership": membership,
            "list_url": reverse("portal_models:models", kwargs={"tenant": tenant.slug}),
            "can_upload": can_upload,
        },
    )


@tenant_member_required
def portal_version(request: HttpRequest, membership: Membership, pk: int) -> HttpResponse:
    """A version the tenant may see; another tenant's is a 404, as if it did not exist."""
    tenant = membership.tenant
    return _version_page(
        request,
        _visible_to(tenant),
        pk,
        page="portal/models/version.html",
        version_url=_portal_version_url(tenant),
        context={
            "tenant": tenant,
            "membership": membership,
            "list_url": reverse("portal_models:models", kwargs={"tenant": tenant.slug}),
        },
    )


def _visible_to(tenant: Tenant) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(model__in=Model.objects.visible_to(tenant))


def _portal_version_url(tenant: Tenant) -> Callable[[ModelVersion], str]:
    return lambda version: reverse(
        "portal_models:version", kwargs={"tenant": tenant.slug, "pk": version.pk}
    )


# --- the two pages, for either audience -------------------------------------------------------


def _upload_form(request: HttpRequest) -> ModelUploadForm:
    if request.method == "POST":
        return ModelUploadForm(request.POST, request.FILES)
    return ModelUploadForm()


def _registered(
    request: HttpRequest, registered: tuple[ModelVersion, bool], url_name: str, kwargs: dict
) -> HttpResponse:
    version, created = registered
    (messages.success if created else messages.info)(
        request, registration_message(version, created)
    )
    return redirect(url_name, pk=version.pk, **kwargs)


def _versions_page(
    request: HttpRequest,
    versions: QuerySet[ModelVersion],
    *,
    page: str,
    tenant: Tenant | None,
    form: ModelUploadForm,
    version_url: Callable[[ModelVersion], str],
    context: dict[str, object],
) -> HttpResponse:
    queryset = versions.select_related("model__owner", "node_class")
    # Filters read the address only: a POST's fields are the upload form's.
    filterset = ModelVersionFilterSet(request.GET or None, queryset=queryset, tenant=tenant)
    table = ModelVersionTable(filterset.qs, version_url=version_url)
    RequestConfig(request, paginate={"per_page": VERSIONS_PER_PAGE}).configure(table)
    return render_live(
        request,
        page,
        "fleet/registry/_versions_table.html",
        {**context, "filter": filterset, "table": table, "form": form},
    )


def _version_page(
    request: HttpRequest,
    versions: QuerySet[ModelVersion],
    pk: int,
    *,
    page: str,
    version_url: Callable[[ModelVersion], str],
    context: dict[str, object],
) -> HttpResponse:
    version = get_object_or_404(
        versions.select_related("model__owner", "node_class", "uploaded_by"), pk=pk
    )
    graded = version.status == VersionStatus.GRADED
    # A list, not a queryset: the page asks whether there are any, and a table of a queryset
    # would count them in a query of its own.
    others = list(
        version.model.versions.exclude(pk=version.pk)
        .select_related("node_class")
        .order_by("-version")
    )
    context = {
        **context,
        "version": version,
        "model": version.model,
        "size": format_bytes(version.size_bytes),
        "status_badge": version_status_badge(version.status),
        "grade_badge": grade_badge(version.grade),
        "others": OtherVersionsTable(others, version_url=version_url) if others else None,
        **(graded_facts(version) if graded else {}),
        **drift_facts(version),
    }
    return render_live(request, page, "fleet/registry/_version_live.html", context)


def graded_facts(version: ModelVersion) -> dict[str, object]:
    """What a graded version's page shows, read from its stored grade (fleet.actions.
    grade_version writes it): the latency per class as a chart and a table, and the graph's
    statistics in the words fleet.grading uses in its reasons."""
    latencies = [
        ClassLatency(
            node_class=row["node_class"],
            p50_s=row["p50_ms"] / 1000,
            p95_s=row["p95_ms"] / 1000,
            fits_memory=row["fits_memory"],
            meets_target=row["meets_target"],
        )
        for row in version.latency
    ]
    chosen = version.node_class.name if version.node_class_id else None
    stats = version.stats
    return {
        "chosen": chosen,
        "target": format_seconds(version.target_s) if version.target_s is not None else None,
        "latencies": [
            {
                "node_class": row.node_class,
                "p50": format_seconds(row.p50_s),
                "p95": format_seconds(row.p95_s),
                "fits_memory": row.fits_memory,
                "meets_target": row.meets_target,
                "chosen": row.node_class == chosen,
            }
            for row in latencies
        ],
        "chart": (
            figure_json(grading_figure(latencies, version.target_s, chosen))
            if latencies and version.target_s is not None
            else None
        ),
        "stats": [
            (label, fmt(stats[key]))
            for key, label, fmt in STATS_SHOWN
            if stats.get(key) is not None
        ],
        "operators": op_histogram_summary(stats.get("op_histogram") or {}),
    }


def drift_facts(version: ModelVersion) -> dict[str, object]:
    """The drift card: PSI per minute against the baseline, the recent distribution beside
    the baseline's, and the alerts (fleet.drift_actions.overview). Nothing, and no query, for
    a version the drift check has never looked at (no node reported its outputs)."""
    if version.drift_checked_at is None:
        return {"drift": None}
    facts = overview(version)
    if not facts["points"] and not facts["alerts"]:
        return {"drift": None}
    threshold = facts["settings"].threshold
    compared = facts["compared"]
    return {
        "drift": {
            "baseline": facts["baseline"].label if facts["baseline"] else None,
            "threshold": threshold,
            "badge": drift_badge(version.drift_psi, threshold),
            "recent_rows": facts["recent_rows"],
            "alerts": facts["alerts"],
            "open_alert": next((a for a in facts["alerts"] if a.is_open), None),
            "chart": figure_json(
                drift_figure([(p.minute, p.psi, p.rows) for p in facts["points"]], threshold)
            ),
            "compared": compared[0] if compared else None,
            "distribution": (
                figure_json(
                    distribution_figure(
                        compared[1], {"baseline": compared[2], "last 10 minutes": compared[3]}
                    )
                )
                if compared
                else None
            ),
        }
    }


# The graph statistics a graded version's page lists (fleet.grading.GraphStats), in order.
STATS_SHOWN = [
    ("parameters", "Parameters", lambda n: f"{n:,}"),
    ("initializer_bytes", "Weights", format_bytes),
    ("flops", "FLOPs per inference", format_flops),
    ("peak_memory_bytes", "Peak memory", format_bytes),
    ("dynamic_batch", "Dynamic batch", lambda b: "yes" if b else "no, a fixed batch size"),
]
