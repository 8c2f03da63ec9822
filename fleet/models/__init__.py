"""The fleet's models: nodes and their history (nodes.py), the model registry (registry.py),
deployments (rollouts.py)."""

from fleet.models.nodes import (
    EnrollmentToken,
    Node,
    NodeClass,
    NodeQuerySet,
    NodeSample,
    NodeStatusChange,
    Region,
)
from fleet.models.registry import Model, ModelVersion
from fleet.models.rollouts import Deployment, DeploymentEvent

__all__ = [
    "Deployment",
    "DeploymentEvent",
    "EnrollmentToken",
    "Model",
    "ModelVersion",
    "Node",
    "NodeClass",
    "NodeQuerySet",
    "NodeSample",
    "NodeStatusChange",
    "Region",
]
