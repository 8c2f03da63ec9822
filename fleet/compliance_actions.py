"""Running the compliance checks and keeping their findings (the one writer of
ComplianceRun and ComplianceFinding).

A run, in one transaction: read the facts (fleet.compliance_context), run every check
(fleet.compliance), then for each (check, subject) compare with the open findings: one still
found has its `last_seen_at` (and its words) brought up to date, a new one is opened, one no
longer found is resolved. Nothing is deleted; a violation found again after it was resolved
opens a new row, so each occurrence keeps its own first and last sighting. The findings of a
check that failed to run are left exactly as they were: not knowing is not resolving.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet.compliance import CHECKS, Check, Violation, evaluate
from fleet.compliance_context import Thresholds, load_context
from fleet.models import ComplianceFinding, ComplianceRun

log = logging.getLogger(__name__)

SUBJECT_MAX = 200
REASON_MAX = 200
# Fields a run brings up to date on a finding it still finds.
SEEN_FIELDS = [
    "last_seen_at",
    "severity",
    "tenant",
    "region",
    "subject",
    "message",
    "fix",
    "details",
]


def run_checks(
    *,
    trigger: str,
    reason: str = "",
    now: datetime | None = None,
    thresholds: Thresholds | None = None,
) -> ComplianceRun:
    """Run every check as of `now` and record what they find; returns the run."""
    now = now or timezone.now()
    for attempt in range(2):
        try:
            return _run(trigger, reason[:REASON_MAX], now, thresholds)
        except IntegrityError:
            # Two runs opened the same finding at once (only possible when there was no
            # earlier run to lock): the loser runs again, after the winner committed.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _run(trigger: str, reason: str, now: datetime, thresholds: Thresholds | None) -> ComplianceRun:
    with transaction.atomic():
        # One run at a time: the next waits here for this one's findings.
        ComplianceRun.objects.select_for_update().order_by("-pk").first()
        run = ComplianceRun.objects.create(trigger=trigger, reason=reason, started_at=now)
        outcome = evaluate(load_context(now, thresholds))
        open_findings = {
            (f.check_id, f.subject_key): f
            for f in ComplianceFinding.objects.open().select_for_update()
        }
        checks = {check.id: check for check in CHECKS}
        seen, opened = [], []
        for check_id, violations in outcome.violations.items():
            for violation in violations:
                finding = open_findings.pop((check_id, violation.subject_key), None)
                if finding is None:
                    opened.append(_opened(checks[check_id], violation, now))
                else:
                    _refresh(finding, checks[check_id], violation, now)
                    seen.append(finding)
        # What is left was not found again, except by a check that failed or did not run.
        kept = set(outcome.errors) | set(outcome.skipped)
        gone = [f for f in open_findings.values() if f.check_id not in kept]
        ComplianceFinding.objects.bulk_create(opened)
        ComplianceFinding.objects.bulk_update(seen, SEEN_FIELDS, batch_size=500)
        ComplianceFinding.objects.filter(pk__in=[f.pk for f in gone]).update(resolved_at=now)

        run.finished_at = timezone.now()
        run.checks_run = len(outcome.violations)
        run.opened_count = len(opened)
        run.resolved_count = len(gone)
        run.open_count = len(opened) + len(seen) + (len(open_findings) - len(gone))
        run.errors = [{"check": c, "error": e} for c, e in sorted(outcome.errors.items())]
        run.save()
    log.info(
        "compliance run %s (%s): %d open, %d opened, %d resolved%s",
        run.pk,
        trigger,
        run.open_count,
        run.opened_count,
        run.resolved_count,
        f", {len(run.errors)} checks failed" if run.errors else "",
    )
    return run


def _opened(check: Check, violation: Violation, now: datetime) -> ComplianceFinding:
    finding = ComplianceFinding(
        check_id=check.id,
        subject_key=violation.subject_key,
        first_seen_at=now,
    )
    _refresh(finding, check, violation, now)
    return finding


def _refresh(finding: ComplianceFinding, check: Check, violation: Violation, now: datetime):
    finding.last_seen_at = now
    finding.severity = check.severity
    finding.tenant_id = violation.tenant_id
    finding.region = violation.region
    finding.subject = violation.subject[:SUBJECT_MAX]
    finding.message = violation.message
    finding.fix = violation.fix
    finding.details = dict(violation.details)
