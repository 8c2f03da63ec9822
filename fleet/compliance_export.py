"""Compliance findings as rows, for the CSV export of the findings page and the command line
(`manage.py compliance --format csv|json`): the same columns in both.

CSV follows billing/exports.py: RFC 4180, UTF-8, datetimes ISO 8601 in UTC, streamed in
chunks from a queryset iterator so an export of any length holds only a chunk in memory.
Words that come from people (a tenant's or node's name inside a subject or message) that
would start a spreadsheet formula are prefixed with an apostrophe (OWASP's advice on CSV
injection).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from django.db.models import QuerySet

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
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CHUNK_BYTES = 32 * 1024
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


def _cell(column: str, value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if column in FREE_TEXT and text.startswith(FORMULA_STARTS):
        return f"'{text}"
    return text


class _Pieces:
    """What csv.writer writes to, gathered until handed out as a chunk."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> bytes:
        data = "".join(self.parts).encode()
        self.parts, self.size = [], 0
        return data


def csv_chunks(
    findings: QuerySet[ComplianceFinding] | Iterable[ComplianceFinding],
) -> Iterator[bytes]:
    """The findings as CSV, a header then one line each, in chunks of about CHUNK_BYTES."""
    if isinstance(findings, QuerySet):
        findings = findings.select_related("tenant").iterator(chunk_size=ITERATOR_CHUNK_ROWS)
    pieces = _Pieces()
    writer = csv.writer(pieces)
    writer.writerow(COLUMNS)
    for finding in findings:
        row = finding_row(finding)
        writer.writerow([_cell(column, row[column]) for column in COLUMNS])
        if pieces.size >= CHUNK_BYTES:
            yield pieces.take()
    yield pieces.take()
