"""The fleet's models: nodes and their history (nodes.py), the model registry (registry.py)."""

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

__all__ = [
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
