"""Compliance findings as rows, for the CSV export of the findings page and the command line
(`manage.py compliance --format csv|json`): the same columns in both.

CSV is written by billing/exports.py's table export: RFC 4180, UTF-8, streamed in chunks from
a queryset iterator so an export of any length holds only a chunk in memory; datetimes ISO 8601
in UTC. Words that come from people (a tenant's or node's name inside a subject or message)
that would start a spreadsheet formula are prefixed with an apostrophe (OWASP's advice on CSV
injection).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from django.db.models import QuerySet

from billing.exports import Column, Kind, table_export
from fleet.models import ComplianceFinding

COLUMNS = (
    "check",
    "severity",
    "status",
    "tenant",
    "region",
    "subject",
    "what",
    "fix",
    "first_seen_at",
    "last_seen_at",
    "resolved_at",
)
# Columns whose text may come from people.
FREE_TEXT = frozenset({"subject", "what", "fix"})
ITERATOR_CHUNK_ROWS = 500


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def finding_row(finding: ComplianceFinding) -> dict[str, object]:
    """A finding as the export's columns. Reads `finding.tenant`: select it with the rows."""
    return {
        "check": finding.check_id,
        "severity": finding.severity,
        "status": "open" if finding.is_open else "resolved",
        "tenant": finding.tenant.slug if finding.tenant_id else "",
        "region": finding.region,
        "subject": finding.subject,
        "what": finding.message,
        "fix": finding.fix,
        "first_seen_at": iso(finding.first_seen_at),
        "last_seen_at": iso(finding.last_seen_at),
        "resolved_at": iso(finding.resolved_at),
    }


def finding_json(finding: ComplianceFinding) -> dict[str, object]:
    """A row with what a program may want besides: the stable subject key and the details."""
    return {**finding_row(finding), "subject_key": finding.subject_key, "details": finding.details}


# How billing's exports write each column (billing/exports.py: the formula guard on free text).
EXPORT_COLUMNS = tuple(
    Column(name, Kind.FREE_TEXT if name in FREE_TEXT else Kind.TEXT) for name in COLUMNS
)


def csv_chunks(
    findings: QuerySet[ComplianceFinding] | Iterable[ComplianceFinding],
) -> Iterator[bytes]:
    """The findings as CSV, a header then one line each, streamed in chunks."""
    if isinstance(findings, QuerySet):
        findings = findings.select_related("tenant").iterator(chunk_size=ITERATOR_CHUNK_ROWS)
    rows = (finding_row(finding) for finding in findings)
    return table_export("compliance-findings", EXPORT_COLUMNS, lambda: rows, "csv").chunks
