"""Compliance: the export-control data the checks read, and what the checks found.

Export classifications and their jurisdiction rules are data, edited in the admin: a model
(fleet.models.registry.Model.export_classification) with a classification must not run in a
region whose jurisdiction a rule of that classification forbids. A rule names a country
("CN": every region in China, whatever its subdivision) or a subdivision ("US-CA": that one
only), as ISO 3166 writes them and Region.jurisdiction stores them.

The checks (fleet.compliance) run as a `ComplianceRun`; each violation they find is a
`ComplianceFinding` for its (check, subject). A finding is kept open while runs keep finding
it (they move `last_seen_at`), resolved by the first run that no longer finds it, and never
deleted: a violation that comes back after being resolved is a new row, so the history says
when each occurrence began and ended (fleet.compliance_actions.run_checks writes them).
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from billing.models import Tenant
from fleet.choices import SEVERITY_RANK, ComplianceTrigger, ExportEffect, Severity

ISO_3166 = RegexValidator(
    r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$", "An ISO 3166 code: a country (CN) or a subdivision (US-CA)"
)
CLASSIFICATION_CODE = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    "Letters, digits, dots, dashes and underscores, e.g. 5D002 or EAR99",
)


def jurisdiction_matches(rule: str, region: str) -> bool:
    """Whether a rule's jurisdiction takes in a region's: a country takes in itself and its
    subdivisions (US takes in US-CA), a subdivision only itself."""
    if region == rule:
        return True
    return "-" not in rule and region.startswith(f"{rule}-")


class ExportClassification(models.Model):
    """An export-control classification a model may carry (e.g. an ECCN such as 5D002)."""

    code = models.CharField(max_length=40, unique=True, validators=[CLASSIFICATION_CODE])
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"


class ExportRule(models.Model):
    """Where models of a classification may not run: a jurisdiction and its effect."""

    classification = models.ForeignKey(
        ExportClassification, on_delete=models.CASCADE, related_name="rules"
    )
    jurisdiction = models.CharField(
        max_length=10,
        validators=[ISO_3166],
        help_text="ISO 3166: a country (CN, every region in it) or a subdivision (US-CA)",
    )
    effect = models.CharField(
        max_length=10, choices=ExportEffect.choices, default=ExportEffect.FORBID
    )
    note = models.CharField(
        max_length=300, blank=True, help_text="The regulation or licence condition behind it"
    )

    class Meta:
        ordering = ["classification__code", "jurisdiction"]
        constraints = [
            models.UniqueConstraint(
                fields=["classification", "jurisdiction"], name="one_rule_per_jurisdiction"
            )
        ]

    def __str__(self) -> str:
        return f"{self.classification.code}: {self.effect} in {self.jurisdiction}"


class ComplianceRun(models.Model):
    """One run of every compliance check: what started it and what it found."""

    trigger = models.CharField(max_length=10, choices=ComplianceTrigger.choices)
    # The change behind a run after a change ("policy of acme changed"), or who asked.
    reason = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    checks_run = models.PositiveIntegerField(default=0)
    # Open findings after the run, and how many of them it opened; findings it resolved.
    open_count = models.PositiveIntegerField(default=0)
    opened_count = models.PositiveIntegerField(default=0)
    resolved_count = models.PositiveIntegerField(default=0)
    # Checks that failed to run ([{"check": id, "error": text}]): their findings were left
    # as they were, neither resolved nor seen.
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"compliance run {self.pk} ({self.trigger}) at {self.started_at:%Y-%m-%d %H:%M}"


class ComplianceFindingQuerySet(models.QuerySet["ComplianceFinding"]):
    def open(self) -> ComplianceFindingQuerySet:
        return self.filter(resolved_at__isnull=True)

    def resolved(self) -> ComplianceFindingQuerySet:
        return self.filter(resolved_at__isnull=False)

    def ranked(self) -> ComplianceFindingQuerySet:
        """Annotated with `rank` (critical 4 … low 1) and in the order people read them: open
        ones first, the worst first, the newest first."""
        rank = Case(
            *(When(severity=severity, then=Value(n)) for severity, n in SEVERITY_RANK.items()),
            default=Value(0),
            output_field=models.PositiveSmallIntegerField(),
        )
        return self.annotate(rank=rank).order_by(
            F("resolved_at").desc(nulls_first=True), "-rank", "-first_seen_at", "-pk"
        )


class ComplianceFinding(models.Model):
    """One occurrence of a violation: a check's finding about one subject, from the run that
    first found it until the run that no longer did."""

    check_id = models.CharField(max_length=50, db_index=True, help_text="e.g. residency.routes")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    # Whose account it concerns, for filtering; kept (as the subject's words) if it goes.
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    region = models.CharField(max_length=40, blank=True, help_text="The region's code")
    # What the finding is about, stable from run to run ("node:nd-1a2b"), and in words.
    subject_key = models.CharField(max_length=200)
    subject = models.CharField(max_length=200)
    message = models.TextField(help_text="What the check found")
    fix = models.TextField(help_text="How to fix it")
    details = models.JSONField(default=dict, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = ComplianceFindingQuerySet.as_manager()

    class Meta:
        ordering = [F("resolved_at").desc(nulls_first=True), "-first_seen_at", "-pk"]
        indexes = [
            models.Index(fields=["check_id", "subject_key"]),
            models.Index(fields=["-last_seen_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["check_id", "subject_key"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_finding_per_subject",
            )
        ]

    def __str__(self) -> str:
        state = "open" if self.resolved_at is None else "resolved"
        return f"{self.check_id} {self.subject} ({state})"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None
