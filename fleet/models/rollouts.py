"""Deployments: a model version rolled out to a selector of nodes, step by step."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.choices import DeploymentState, Strategy
from fleet.models.nodes import Node, NodeClass, Region
from fleet.models.registry import ModelVersion

# States in which a deployment still decides what its nodes serve.
LIVE_STATES = (
    DeploymentState.ROLLING,
    DeploymentState.PAUSED,
    DeploymentState.COMPLETED,
    DeploymentState.ROLLED_BACK,
)


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def active(self) -> DeploymentQuerySet:
        return self.filter(state__in=[DeploymentState.ROLLING, DeploymentState.PAUSED])

    def affecting(self, node: Node) -> DeploymentQuerySet:
        """Deployments whose selector takes in this node (an empty selector takes in all)."""
        return (
            self.filter(state__in=LIVE_STATES)
            .filter(Q(regions__isnull=True) | Q(regions=node.region_id))
            .filter(Q(node_classes__isnull=True) | Q(node_classes=node.node_class_id))
            .distinct()
        )


class Deployment(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    # The version the nodes served before; it keeps the rest of the traffic during a canary
    # and gets all of it back on a rollback. Empty for a model's first deployment.
    previous = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    regions = models.ManyToManyField(Region, blank=True, help_text="Empty: every region")
    node_classes = models.ManyToManyField(NodeClass, blank=True, help_text="Empty: every class")
    strategy = models.CharField(max_length=12, choices=Strategy.choices)
    steps = models.JSONField(help_text="Percentages of traffic per step, ending at 100")
    soak_s = models.PositiveIntegerField(default=60, help_text="Seconds per step before judging")
    max_error_rate_increase = models.FloatField(default=0.02)
    max_p95_ratio = models.FloatField(default=1.5)
    min_requests = models.PositiveIntegerField(default=50)
    rollback_on_drift = models.BooleanField(
        default=False,
        help_text="Roll back when the new version's outputs drift from the previous version's",
    )

    state = models.CharField(
        max_length=12, choices=DeploymentState.choices, default=DeploymentState.ROLLING
    )
    step_index = models.PositiveIntegerField(default=0)
    step_started_at = models.DateTimeField(default=timezone.now)
    # Per-sha256 request and error totals the nodes had reported when the step began.
    step_baseline = models.JSONField(default=dict, blank=True)
    # The last word of the health gates, for the deployment page.
    gate_note = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"deployment {self.pk}: {self.version}"

    @property
    def current_percent(self) -> int:
        return int(self.steps[min(self.step_index, len(self.steps) - 1)])

    @property
    def new_share(self) -> float:
        """The share of the model's traffic the new version takes on the selected nodes."""
        if self.state == DeploymentState.COMPLETED:
            return 1.0
        if self.state == DeploymentState.ROLLED_BACK:
            return 0.0
        return self.current_percent / 100

    @property
    def is_last_step(self) -> bool:
        return self.step_index >= len(self.steps) - 1

    def nodes(self):
        """The nodes this deployment's selector takes in."""
        nodes = Node.objects.all()
        region_ids = [r.pk for r in self.regions.all()]
        class_ids = [c.pk for c in self.node_classes.all()]
        if region_ids:
            nodes = nodes.filter(region_id__in=region_ids)
        if class_ids:
            nodes = nodes.filter(node_class_id__in=class_ids)
        return nodes


class DeploymentEvent(models.Model):
    """Append-only history of a deployment: every transition, with its reason."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    from_state = models.CharField(max_length=12, blank=True)
    to_state = models.CharField(max_length=12)
    step_index = models.PositiveIntegerField()
    percent = models.PositiveIntegerField()
    reason = models.CharField(max_length=300)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="Empty when the rollout decided by itself",
    )

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.deployment_id}: {self.from_state} → {self.to_state} ({self.reason})"
