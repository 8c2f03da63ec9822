"""Drift telemetry: per-minute output summaries from the nodes, and the alerts they raise."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from fleet.models.nodes import Node
from fleet.models.registry import ModelVersion


class DriftWindow(models.Model):
    """One node's summary of one version's outputs over one minute (as reported, see
    inference.protocol.OutputWindow). A resent window replaces the stored one."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="windows")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="drift_windows")
    minute = models.DateTimeField(help_text="Start of the minute, UTC")
    rows = models.PositiveIntegerField()
    # Exactly one is set: a classifier's top-class counts, or per-output summaries
    # ([{name, mean, histogram}]).
    classes = models.JSONField(null=True, blank=True)
    values = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "node", "minute"], name="drift_window_unique"
            )
        ]
        indexes = [models.Index(fields=["version", "minute"])]

    def __str__(self) -> str:
        return f"{self.version} on {self.node_id} at {self.minute:%H:%M}"


class DriftAlertQuerySet(models.QuerySet["DriftAlert"]):
    def open(self) -> DriftAlertQuerySet:
        return self.filter(closed_at__isnull=True)


class DriftAlert(models.Model):
    """Sustained drift of a version against its baseline: opened when it starts, closed when
    the PSI is back under the threshold. At most one open alert per version."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="drift_alerts")
    opened_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    baseline = models.CharField(max_length=100, help_text="What the outputs were compared with")
    peak_psi = models.FloatField()
    last_psi = models.FloatField()
    reason = models.CharField(max_length=300)

    objects = DriftAlertQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["version"],
                condition=models.Q(closed_at__isnull=True),
                name="one_open_drift_alert_per_version",
            )
        ]

    def __str__(self) -> str:
        return f"drift of {self.version} since {self.opened_at:%Y-%m-%d %H:%M}"

    @property
    def is_open(self) -> bool:
        return self.closed_at is None
