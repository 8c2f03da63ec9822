"""The model registry: models and their immutable, sha256-addressed versions."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from billing.models import Tenant
from fleet.choices import Grade, VersionStatus
from fleet.models.compliance import ExportClassification
from fleet.models.nodes import NodeClass


class ModelQuerySet(models.QuerySet["Model"]):
    def visible_to(self, tenant: Tenant | None) -> ModelQuerySet:
        """What a tenant may see: its own models and the catalogue. None means an operator."""
        if tenant is None:
            return self
        return self.filter(Q(owner=tenant) | Q(owner__isnull=True))

    def catalogue(self) -> ModelQuerySet:
        return self.filter(owner__isnull=True)


class Model(models.Model):
    """A named model, owned by a tenant or in the provider's catalogue (owner empty)."""

    owner = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="models"
    )
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    # The named fields a tenant may send in OIP `parameters` with a request: {"tier": "string"}.
    signal_schema = models.JSONField(default=dict, blank=True)
    # Export control: where its classification's rules forbid it, it must not run
    # (fleet.compliance's export checks). PROTECT: deleting a classification in use would
    # silently lift its rules.
    export_classification = models.ForeignKey(
        ExportClassification,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="models",
        help_text="Empty: not export-controlled",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="model_name_unique_per_owner"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(owner__isnull=True), name="catalogue_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.name if self.owner_id is None else f"{self.owner.slug}/{self.name}"

    @property
    def owner_slug(self) -> str | None:
        return None if self.owner_id is None else self.owner.slug

    @property
    def served_name(self) -> str:
        """The OIP model name on the nodes: tenants' models are prefixed with the tenant, so
        two tenants' "churn" never meet on a node."""
        return self.name if self.owner_id is None else f"{self.owner.slug}.{self.name}"


def known_served_versions(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Of these (served name, version) pairs, the ones the registry has: usage ingest counts
    only those (billing/ingest.py). A served name is a catalogue model's name or
    "<tenant slug>.<name>" for a tenant's own (Model.served_name)."""
    wanted = Q(pk__in=[])
    for name, version in pairs:
        if not version.isdigit():
            continue
        owner, dot, short = name.partition(".")
        if dot:
            wanted |= Q(model__owner__slug=owner, model__name=short, version=int(version))
        else:
            wanted |= Q(model__owner__isnull=True, model__name=name, version=int(version))
    found = ModelVersion.objects.filter(wanted).select_related("model__owner")
    return {(v.model.served_name, str(v.version)) for v in found}


# Set at upload and never changed: the bytes and what they are.
IMMUTABLE_FIELDS = frozenset(
    {"model_id", "version", "sha256", "size_bytes", "opset", "inputs", "outputs", "created_at"}
)


class ModelVersion(models.Model):
    """One uploaded ONNX artifact. Its bytes and signature never change; its grade is added
    once, by the grading task (fleet.tasks.grade_version_task)."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    opset = models.PositiveIntegerField()
    inputs = models.JSONField(default=list)
    outputs = models.JSONField(default=list)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    status = models.CharField(
        max_length=10, choices=VersionStatus.choices, default=VersionStatus.GRADING
    )
    grade = models.CharField(max_length=10, choices=Grade.choices, blank=True)
    node_class = models.ForeignKey(
        NodeClass, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stats = models.JSONField(default=dict, blank=True)
    measurement = models.JSONField(default=dict, blank=True)
    latency = models.JSONField(default=list, blank=True)
    target_s = models.FloatField(null=True, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    failure = models.TextField(blank=True)
    graded_at = models.DateTimeField(null=True, blank=True)

    # Drift (fleet.drift_actions): the reference captured from the version's first well-filled
    # minute (used when there is no previous version to compare with), and the latest check.
    drift_reference = models.JSONField(null=True, blank=True)
    drift_psi = models.FloatField(null=True, blank=True)
    drift_note = models.CharField(max_length=300, blank=True)
    drift_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="version_unique_per_model"),
            models.UniqueConstraint(fields=["model", "sha256"], name="bytes_unique_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model} v{self.version}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            fields = kwargs.get("update_fields")
            if fields is None or IMMUTABLE_FIELDS & set(fields):
                raise ValueError("a model version's artifact and signature are immutable")
        super().save(*args, **kwargs)

    def record_grade(self, *, grade, node_class, stats, measurement, latency, target_s, reasons):
        self.status = VersionStatus.GRADED
        self.grade = grade
        self.node_class = node_class
        self.stats = stats
        self.measurement = measurement
        self.latency = latency
        self.target_s = target_s
        self.reasons = reasons
        self.failure = ""
        self.graded_at = timezone.now()
        self.save(update_fields=[*GRADE_FIELDS, "graded_at"])

    def record_failure(self, reason: str) -> None:
        self.status = VersionStatus.FAILED
        self.failure = reason
        self.graded_at = timezone.now()
        self.save(update_fields=["status", "failure", "graded_at"])


GRADE_FIELDS = (
    "status",
    "grade",
    "node_class",
    "stats",
    "measurement",
    "latency",
    "target_s",
    "reasons",
    "failure",
)
