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
