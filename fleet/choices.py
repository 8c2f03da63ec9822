"""Choices and how they show: value → label → badge colour (one place, like NetBox)."""

from django.db import models


class NodeClassKind(models.TextChoices):
    NANO = "nano", "Nano"
    STANDARD = "standard", "Standard"
    ACCELERATOR = "accelerator", "Accelerator"


class NodeStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # enrolled, never heartbeated
    ONLINE = "online", "Online"
    DEGRADED = "degraded", "Degraded"
    OFFLINE = "offline", "Offline"


STATUS_BADGE = {
    NodeStatus.PENDING: "secondary",
    NodeStatus.ONLINE: "success",
    NodeStatus.DEGRADED: "warning",
    NodeStatus.OFFLINE: "danger",
}


class Grade(models.TextChoices):
    TINY = "tiny", "Tiny (classification-sized)"
    MEDIUM = "medium", "Medium (ASR-sized)"
    LARGE = "large", "Large (multimodal-sized)"


class VersionStatus(models.TextChoices):
    GRADING = "grading", "Grading"
    GRADED = "graded", "Graded"
    FAILED = "failed", "Grading failed"


VERSION_BADGE = {
    VersionStatus.GRADING: "info",
    VersionStatus.GRADED: "success",
    VersionStatus.FAILED: "danger",
}


class DeploymentState(models.TextChoices):
    ROLLING = "rolling", "Rolling out"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    ROLLED_BACK = "rolled_back", "Rolled back"


class PinSide(models.TextChoices):
    """Which version of a deployment a pinned tenant's requests go to."""

    NEW = "new", "The new version"
    OLD = "old", "The previous version"


class Strategy(models.TextChoices):
    ALL_AT_ONCE = "all_at_once", "All at once"
    CANARY = "canary", "Canary by steps"


DEPLOYMENT_BADGE = {
    DeploymentState.ROLLING: "primary",
    DeploymentState.PAUSED: "warning",
    DeploymentState.COMPLETED: "success",
    DeploymentState.ROLLED_BACK: "danger",
}
