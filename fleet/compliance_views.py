"""The compliance pages, under /fleet/compliance/ (fleet/compliance_urls.py):

- `/fleet/compliance/`: the findings, open ones first and the worst first, filtered by check,
  severity, status, tenant, region and words; how many are open per severity; the latest runs;
  for operators, a button that runs the checks now (in Celery);
- `/fleet/compliance/export.csv`: the same filtered findings as CSV, streamed;
- `/fleet/compliance/<id>/`: one finding, its details, and every occurrence of the same
  violation (a finding resolved and found again is a new row).

Operators, finance and auditors read them (billing.roles.audit_reader_required); only
operators run the checks. The findings are written by fleet.compliance_actions.run_checks.
"""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_tables2 import RequestConfig

from billing.roles import audit_reader_required, is_operator, operator_required
from fleet.choices import SEVERITY_RANK, ComplianceTrigger, Severity
from fleet.compliance import CHECKS_BY_ID
from fleet.compliance_export import csv_chunks
from fleet.compliance_tables import ComplianceFindingTable, ComplianceRunTable, severity_badge
from fleet.filters import ComplianceFindingFilterSet
from fleet.models import ComplianceFinding, ComplianceRun

FINDINGS_PER_PAGE = 50
RECENT_RUNS = 5
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def _filtered(request: HttpRequest) -> ComplianceFindingFilterSet:
    queryset = ComplianceFinding.objects.ranked().select_related("tenant")
    return ComplianceFindingFilterSet(request.GET or None, queryset=queryset)


@audit_reader_required
def findings(request: HttpRequest) -> HttpResponse:
    filterset = _filtered(request)
    table = ComplianceFindingTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": FINDINGS_PER_PAGE}).configure(table)
    counts = dict(
        ComplianceFinding.objects.open().values_list("severity").annotate(n=Count("pk")).order_by()
    )
    open_by_severity = [
        {"severity": s, "badge": severity_badge(s), "count": counts.get(s, 0)}
        for s in sorted(Severity.values, key=lambda s: -SEVERITY_RANK[s])
    ]
    recent = list(ComplianceRun.objects.all()[:RECENT_RUNS])
    return render(
        request,
        "fleet/compliance/findings.html",
        {
            "filter": filterset,
            "table": table,
            "open_by_severity": open_by_severity,
            "open_total": sum(counts.values()),
            "runs": ComplianceRunTable(recent),
            "last_run": recent[0] if recent else None,
            "can_run": is_operator(request.user),
            "export_query": request.GET.urlencode(),
        },
    )


@audit_reader_required
def export(request: HttpRequest) -> StreamingHttpResponse:
    """The findings the same filters select, as CSV (finance and auditors file them)."""
    filterset = _filtered(request)
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(csv_chunks(filterset.qs), content_type=CSV_CONTENT_TYPE)
    response["Content-Disposition"] = f'attachment; filename="compliance-findings-{stamp}.csv"'
    return response


@audit_reader_required
def finding(request: HttpRequest, pk: int) -> HttpResponse:
    found = get_object_or_404(ComplianceFinding.objects.select_related("tenant"), pk=pk)
    occurrences = ComplianceFinding.objects.filter(
        check_id=found.check_id, subject_key=found.subject_key
    ).order_by("-first_seen_at", "-pk")
    check = CHECKS_BY_ID.get(found.check_id)
    return render(
        request,
        "fleet/compliance/finding.html",
        {
            "finding": found,
            "check": check,
            "badge": severity_badge(found.severity),
            "occurrences": list(occurrences),
        },
    )


@require_POST
@operator_required
def run_now(request: HttpRequest) -> HttpResponse:
    """Ask Celery for a run of every check now; the page shows it once it has run."""
    from fleet.tasks import run_compliance_task

    reason = f"run by {request.user.get_username()}"
    transaction.on_commit(
        lambda: run_compliance_task.delay(trigger=ComplianceTrigger.MANUAL, reason=reason)
    )
    messages.success(
        request, "The checks are running; reload this page in a few seconds to see what they found."
    )
    return redirect("compliance:findings")
