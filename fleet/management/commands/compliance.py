"""`manage.py compliance`: run every compliance check now and print the open findings.

    python manage.py compliance                      # a table for people
    python manage.py compliance --format csv         # the findings page's CSV columns
    python manage.py compliance --format json        # the same, with subject keys and details
    python manage.py compliance --fail-on high       # exit status 1 if a high or critical is open

The run is recorded like any other (trigger "command"): findings open, stay open or resolve
exactly as when Celery runs the checks. `--fail-on` makes it a gate for CI or a cron job.
"""

from __future__ import annotations

import json
import shutil
import textwrap

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from fleet.choices import SEVERITY_RANK, ComplianceTrigger, Severity
from fleet.compliance_actions import run_checks
from fleet.compliance_export import csv_chunks, finding_json
from fleet.models import ComplianceFinding

# The table's narrow columns: (header, width); "what" and "fix" share the rest.
NARROW = (("check", 22), ("severity", 8), ("subject", 28))
MIN_WIDE = 30


def by_severity(findings: list[ComplianceFinding]) -> list[ComplianceFinding]:
    """Worst first, then by check and subject, as the findings page lists them."""
    return sorted(
        findings, key=lambda f: (-SEVERITY_RANK.get(f.severity, 0), f.check_id, f.subject)
    )


def table(findings: list[ComplianceFinding], width: int) -> str:
    """The findings as a fixed-width table whose cells wrap onto as many lines as they need."""
    wide = max(MIN_WIDE, (width - sum(w for _, w in NARROW) - 2 * (len(NARROW) + 1)) // 2)
    widths = [w for _, w in NARROW] + [wide, wide]
    headers = [h for h, _ in NARROW] + ["what", "fix"]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    for finding in findings:
        cells = [finding.check_id, finding.severity, finding.subject, finding.message, finding.fix]
        wrapped = [textwrap.wrap(text, w) or [""] for text, w in zip(cells, widths, strict=True)]
        for i in range(max(len(cell) for cell in wrapped)):
            lines.append(line([cell[i] if i < len(cell) else "" for cell in wrapped]))
        lines.append("")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Run the compliance checks now and print the open findings."

    def add_arguments(self, parser):
        parser.add_argument(
            "--format",
            choices=("table", "csv", "json"),
            default="table",
            help="how to print the open findings (default: a table)",
        )
        parser.add_argument(
            "--fail-on",
            choices=Severity.values,
            metavar="SEVERITY",
            help="exit with status 1 when an open finding is this severe or worse "
            f"({', '.join(Severity.values)})",
        )

    def handle(self, *args, **options):
        run = run_checks(trigger=ComplianceTrigger.COMMAND, reason="manage.py compliance")
        findings = by_severity(list(ComplianceFinding.objects.open().select_related("tenant")))
        fmt = options["format"]
        if fmt == "csv":
            for chunk in csv_chunks(findings):
                self.stdout.write(chunk.decode(), ending="")
        elif fmt == "json":
            self.stdout.write(json.dumps([finding_json(f) for f in findings], indent=2))
        else:
            self._print_table(run, findings)
        for problem in run.errors:
            self.stderr.write(f"check {problem['check']} failed to run: {problem['error']}")
        threshold = options["fail_on"]
        if threshold is not None:
            failing = [f for f in findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[threshold]]
            if failing:
                raise CommandError(
                    f"{len(failing)} open finding{'s' if len(failing) != 1 else ''} at "
                    f"{threshold} or worse",
                    returncode=1,
                )

    def _print_table(self, run, findings: list[ComplianceFinding]) -> None:
        width = shutil.get_terminal_size((160, 40)).columns
        self.stdout.write(
            f"Compliance run {run.pk}: {run.checks_run} checks, {run.open_count} open finding"
            f"{'s' if run.open_count != 1 else ''} ({run.opened_count} new, "
            f"{run.resolved_count} resolved by this run)."
        )
        if not settings.OUTPOST_REQUIRE_NODE_TLS:
            self.stdout.write(
                "transport.node_tls did not run: OUTPOST_REQUIRE_NODE_TLS is off here (it is on "
                "in production and in the demo), so its findings are left as they were."
            )
        if not findings:
            self.stdout.write("Nothing to fix.")
            return
        self.stdout.write("")
        self.stdout.write(table(findings, width))
        counts = {s: sum(f.severity == s for f in findings) for s in Severity.values}
        self.stdout.write(", ".join(f"{n} {s}" for s, n in counts.items() if n))
