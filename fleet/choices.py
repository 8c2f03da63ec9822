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


# --- tenant policies (fleet.models.policies) ---------------------------------------------------


class PrivacyMode(models.TextChoices):
    """Where a tenant's requests may be served (DESIGN.md §3)."""

    LOCAL_ONLY = "local_only", "Local only"
    IN_REGION = "in_region", "In region"
    ANY = "any", "Any region"


class Fallback(models.TextChoices):
    """What a node does with a request it cannot serve itself."""

    REGIONAL = "regional", "Offload to the regional pool"
    REJECT = "reject", "Reject the request"


class QualityObjective(models.TextChoices):
    BEST_EFFORT = "best_effort", "Best effort"
    HIGH = "high", "High"


class BudgetAction(models.TextChoices):
    """What happens once the tenant's monthly budget is spent (DESIGN.md §6)."""

    ALERT = "alert", "Alert only"
    DOWNGRADE = "downgrade", "Downgrade"
    BLOCK = "block", "Block"


# What each choice means, for the portal's help texts and the operator page's tooltips.
PRIVACY_HELP = {
    PrivacyMode.LOCAL_ONLY: "Requests are served on the node that received them, never elsewhere.",
    PrivacyMode.IN_REGION: "Requests may move to another node of the same region, never out of it.",
    PrivacyMode.ANY: "Requests may be served in any region.",
}
FALLBACK_HELP = {
    Fallback.REGIONAL: "When the node cannot serve a request (model not there, too hot, too "
    "costly, busy), it goes to the region's accelerator pool.",
    Fallback.REJECT: "When the node cannot serve a request, it is refused.",
}
QUALITY_HELP = {
    QualityObjective.BEST_EFFORT: "Serve where it is cheapest within the latency band.",
    QualityObjective.HIGH: "Prefer the regional accelerator pool when it serves a model better "
    "than the local node; such offloads are charged at the regional price.",
}
BUDGET_ACTION_HELP = {
    BudgetAction.ALERT: "Keep serving as before; the tenant is alerted.",
    BudgetAction.DOWNGRADE: "Serve locally only, on the cheapest grade.",
    BudgetAction.BLOCK: "Refuse requests (HTTP 402 on the node) until the next month.",
}

PRIVACY_BADGE = {
    PrivacyMode.LOCAL_ONLY: "dark",
    PrivacyMode.IN_REGION: "primary",
    PrivacyMode.ANY: "light border",
}


class PolicyActorKind(models.TextChoices):
    """Who changed a tenant's policy, as its history shows it."""

    MEMBER = "member", "Member"
    OPERATOR = "operator", "Operator"
    API_KEY = "api_key", "API key"


class SettingKind(models.TextChoices):
    """What an operator's change of fleet settings was about (fleet.models.FleetSettingChange)."""

    NODE_CLASS = "node_class", "Node class"
    ACCELERATOR_POOL = "accelerator_pool", "Accelerator pool"
    # An operator simulating a node's temperature (fleet.models.Node.simulate_temperature).
    THERMAL_SIMULATION = "thermal_simulation", "Thermal simulation"


# --- the policy plane (fleet.models.bundles) ------------------------------------------------


class DecisionAction(models.TextChoices):
    """What a node did with a request (inference/policy.py's Decision.action)."""

    LOCAL = "local", "Served here"
    OFFLOAD = "offload", "Offloaded"
    REFUSE = "refuse", "Refused"


DECISION_BADGE = {
    DecisionAction.LOCAL: "success",
    DecisionAction.OFFLOAD: "primary",
    DecisionAction.REFUSE: "danger",
}


# --- compliance (fleet.compliance, fleet.models.compliance) -----------------------------------


class Severity(models.TextChoices):
    """How bad a compliance finding is; `--fail-on` and the list order read SEVERITY_RANK."""

    CRITICAL = "critical", "Critical"
    HIGH = "high", "High"
    MEDIUM = "medium", "Medium"
    LOW = "low", "Low"


SEVERITY_RANK = {
    Severity.CRITICAL: 4,
    Severity.HIGH: 3,
    Severity.MEDIUM: 2,
    Severity.LOW: 1,
}

SEVERITY_BADGE = {
    Severity.CRITICAL: "danger",
    Severity.HIGH: "warning",
    Severity.MEDIUM: "info",
    Severity.LOW: "secondary",
}


class ComplianceTrigger(models.TextChoices):
    """What started a compliance run (fleet.models.ComplianceRun)."""

    SCHEDULE = "schedule", "Daily schedule"
    CHANGE = "change", "After a change"
    COMMAND = "command", "Command line"
    MANUAL = "manual", "Run by an operator"


class ExportEffect(models.TextChoices):
    """What an export rule does to a classification in a jurisdiction."""

    FORBID = "forbid", "Forbid deployment"
