"""Tables of the compliance pages (django-tables2). Cells read the row and its joined tenant
only, so a page of any length costs the same queries (tests/fleet/test_compliance_views.py)."""

from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django_tables2 import Column, Table

from fleet.choices import SEVERITY_BADGE, Severity
from fleet.models import ComplianceFinding, ComplianceRun
from fleet.tables import TEMPLATE, NumberColumn, choice_badge, history_time


def severity_badge(value: str) -> SafeString:
    return choice_badge(value, Severity, SEVERITY_BADGE)


class ComplianceFindingTable(Table):
    """Findings, open ones first and the worst first (ComplianceFinding.objects.ranked())."""

    severity = Column(order_by=("rank",), verbose_name="Severity")
    check_id = Column(verbose_name="Check")
    subject = Column(verbose_name="Subject")
    message = Column(verbose_name="What was found", orderable=False)
    fix = Column(verbose_name="How to fix it", orderable=False)
    first_seen_at = Column(verbose_name="First seen", attrs={"td": {"class": "text-nowrap"}})
    last_seen_at = Column(verbose_name="Last seen", attrs={"td": {"class": "text-nowrap"}})
    resolved_at = Column(
        verbose_name="Status", empty_values=(), attrs={"td": {"class": "text-nowrap"}}
    )

    class Meta:
        model = ComplianceFinding
        template_name = TEMPLATE
        fields = ()
        attrs = {"class": "table table-sm table-hover align-middle mb-0"}
        empty_text = "No finding matches these filters."
        row_attrs = {
            "id": lambda record: f"finding-{record.pk}",
            "data-check": lambda record: record.check_id,
            "data-subject": lambda record: record.subject,
        }

    # django-tables2 hands render_* the choice's label; the badge needs the value.
    def render_severity(self, record: ComplianceFinding) -> SafeString:
        return severity_badge(record.severity)

    def render_check_id(self, value: str) -> SafeString:
        return format_html("<code>{}</code>", value)

    def render_subject(self, record: ComplianceFinding) -> SafeString:
        where = " · ".join(
            part for part in (record.tenant.slug if record.tenant_id else "", record.region) if part
        )
        return format_html(
            '<a href="{}" class="fw-semibold">{}</a><div class="small text-body-secondary">{}</div>',
            reverse("compliance:finding", args=[record.pk]),
            record.subject,
            where,
        )

    def render_message(self, value: str) -> SafeString:
        return format_html('<span class="small">{}</span>', value)

    def render_fix(self, value: str) -> SafeString:
        return format_html('<span class="small text-body-secondary">{}</span>', value)

    def render_first_seen_at(self, value) -> SafeString:
        return history_time(value)

    def render_last_seen_at(self, value) -> SafeString:
        return history_time(value)

    def render_resolved_at(self, record: ComplianceFinding) -> SafeString:
        if record.resolved_at is None:
            return format_html('<span class="badge text-bg-danger">{}</span>', "open")
        return format_html(
            '<span class="badge text-bg-success">resolved</span> <span class="small">{}</span>',
            history_time(record.resolved_at),
        )


class ComplianceRunTable(Table):
    """The latest runs: what started each and what it changed."""

    started_at = Column(verbose_name="Started (UTC)", attrs={"td": {"class": "text-nowrap"}})
    trigger = Column(verbose_name="Trigger")
    reason = Column(verbose_name="Why", orderable=False)
    open_count = NumberColumn(verbose_name="Open")
    opened_count = NumberColumn(verbose_name="Opened")
    resolved_count = NumberColumn(verbose_name="Resolved")
    errors = Column(verbose_name="Checks failed", orderable=False, empty_values=())

    class Meta:
        model = ComplianceRun
        template_name = TEMPLATE
        fields = ()
        orderable = False
        attrs = {"class": "table table-sm align-middle mb-0"}
        empty_text = "The checks have not run yet."

    def render_started_at(self, value) -> SafeString:
        return history_time(value)

    def render_trigger(self, record: ComplianceRun) -> str:
        return record.get_trigger_display()

    def render_errors(self, record: ComplianceRun) -> SafeString:
        if not record.errors:
            return format_html('<span class="text-body-secondary">{}</span>', "none")
        return format_html(
            '<span class="text-danger" title="{}">{}</span>',
            "; ".join(f"{e['check']}: {e['error']}" for e in record.errors),
            ", ".join(e["check"] for e in record.errors),
        )
