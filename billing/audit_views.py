"""The audit log's pages: every entry for operators, finance and auditors at /audit/, and a
tenant's own entries for its owners at /portal/<tenant>/audit/. Both filter the same way
(billing.filters.AuditEntryFilter) and export what the filters keep, streamed, as CSV or XLSX
(`?format=csv`)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.utils import timezone
from django_tables2 import RequestConfig

from billing import audit
from billing.choices import MemberRole
from billing.exports import FORMATS, Column, ExportError, Kind, table_export
from billing.filters import AuditEntryFilter
from billing.models import AuditEntry, Membership
from billing.roles import audit_reader_required, tenant_member_required
from billing.tables import PROVIDER_KINDS, AuditEntryTable

ENTRIES_PER_PAGE = 50

EXPORT_COLUMNS = [
    Column("at", Kind.DATETIME, 20),
    Column("actor_kind", Kind.TEXT),
    Column("actor", Kind.FREE_TEXT, 24),
    Column("tenant", Kind.TEXT),
    Column("category", Kind.TEXT),
    Column("action", Kind.TEXT, 28),
    Column("subject_type", Kind.TEXT, 20),
    Column("subject_id", Kind.TEXT),
    Column("subject", Kind.FREE_TEXT, 32),
    Column("changes", Kind.FREE_TEXT, 60),
    Column("before", Kind.FREE_TEXT, 40),
    Column("after", Kind.FREE_TEXT, 40),
    Column("note", Kind.FREE_TEXT, 40),
]
_FIELDS = [
    "at",
    "actor_kind",
    "actor_label",
    "tenant__slug",
    "category",
    "action",
    "subject_type",
    "subject_id",
    "subject_label",
    "before",
    "after",
    "note",
]
# Rows read from the database at a time while exporting (a server-side cursor on PostgreSQL).
EXPORT_CHUNK_ROWS = 500


@audit_reader_required
def audit_log(request: HttpRequest) -> HttpResponse:
    entries = AuditEntry.objects.select_related("tenant")
    filterset = AuditEntryFilter(request.GET, queryset=entries)
    if "format" in request.GET:
        return _export(request, filterset.qs, name="outpost-audit-log", portal=False)
    table = AuditEntryTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": ENTRIES_PER_PAGE}).configure(table)
    return render(
        request,
        "audit/log.html",
        {"filter": filterset, "table": table, "export_query": _export_query(request)},
    )


@tenant_member_required
def portal_audit(request: HttpRequest, membership: Membership) -> HttpResponse:
    """The tenant's own entries, for its owners: who changed its keys, policy, band and
    add-ons, and what the provider did to its account."""
    tenant = membership.tenant
    if membership.role != MemberRole.OWNER:
        return HttpResponseForbidden("Only the tenant's owners read its audit log.")
    entries = AuditEntry.objects.for_tenant(tenant).select_related("tenant")
    filterset = AuditEntryFilter(request.GET, queryset=entries, tenants=False)
    if "format" in request.GET:
        return _export(request, filterset.qs, name=f"outpost-{tenant.slug}-audit-log", portal=True)
    table = AuditEntryTable(filterset.qs, portal=True)
    RequestConfig(request, paginate={"per_page": ENTRIES_PER_PAGE}).configure(table)
    return render(
        request,
        "portal/audit.html",
        {
            "membership": membership,
            "tenant": tenant,
            "filter": filterset,
            "table": table,
            "export_query": _export_query(request),
        },
    )


def _export_query(request: HttpRequest) -> str:
    """The page's filters without its page number, for the export links."""
    query = request.GET.copy()
    for name in ("page", "sort", "format"):
        query.pop(name, None)
    return query.urlencode()


def _export(
    request: HttpRequest, entries: QuerySet[AuditEntry], *, name: str, portal: bool
) -> HttpResponse:
    fmt = request.GET.get("format") or "csv"
    if fmt not in FORMATS:
        return HttpResponseBadRequest(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        export = table_export(
            f"{name}-{timezone.now():%Y%m%d-%H%M%S}",
            EXPORT_COLUMNS,
            lambda: _rows(entries, portal=portal),
            fmt,
        )
    except ExportError as exc:
        return HttpResponseBadRequest(str(exc))
    response = StreamingHttpResponse(export.chunks, content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


def _rows(entries: QuerySet[AuditEntry], *, portal: bool) -> Iterator[dict[str, object]]:
    rows = entries.order_by("-at", "-pk").values_list(*_FIELDS)
    for values in rows.iterator(chunk_size=EXPORT_CHUNK_ROWS):
        row = dict(zip(_FIELDS, values, strict=True))
        actor = row["actor_label"]
        if portal and row["actor_kind"] in PROVIDER_KINDS:
            actor = "the provider"
        yield {
            "at": row["at"],
            "actor_kind": row["actor_kind"],
            "actor": actor,
            "tenant": row["tenant__slug"],
            "category": row["category"],
            "action": row["action"],
            "subject_type": row["subject_type"],
            "subject_id": row["subject_id"],
            "subject": row["subject_label"],
            "changes": audit.summary_of(row["before"], row["after"]),
            "before": _json(row["before"]),
            "after": _json(row["after"]),
            "note": row["note"],
        }


def _json(value: object) -> str | None:
    # Sorted: PostgreSQL's jsonb keeps no key order, so the same export reads the same on both.
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
