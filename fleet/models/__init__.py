"""The fleet's models: nodes and their history (nodes.py), the model registry (registry.py),
deployments (rollouts.py), drift telemetry (drift.py), per-tenant pins (pins.py), tenant
policies, accelerator pools and their histories (policies.py), signed policy bundles and the
decisions nodes report (bundles.py), export-control data and compliance findings
(compliance.py)."""

from fleet.models.bundles import (
    BundleCompileFailure,
    BundleRequest,
    DecisionLog,
    PolicyBundleRecord,
)
from fleet.models.compliance import (
    ComplianceFinding,
    ComplianceRun,
    ExportClassification,
    ExportRule,
)
from fleet.models.drift import DriftAlert, DriftWindow
from fleet.models.nodes import (
    EnrollmentToken,
    Node,
    NodeClass,
    NodeQuerySet,
    NodeSample,
    NodeStatusChange,
    Region,
)
from fleet.models.pins import TenantPin
from fleet.models.policies import (
    AcceleratorPool,
    FleetSettingChange,
    PolicyChange,
    TenantPolicy,
)
from fleet.models.registry import Model, ModelVersion
from fleet.models.rollouts import Deployment, DeploymentEvent

__all__ = [
    "AcceleratorPool",
    "BundleCompileFailure",
    "BundleRequest",
    "ComplianceFinding",
    "ComplianceRun",
    "DecisionLog",
    "Deployment",
    "DeploymentEvent",
    "DriftAlert",
    "DriftWindow",
    "EnrollmentToken",
    "ExportClassification",
    "ExportRule",
    "FleetSettingChange",
    "Model",
    "ModelVersion",
    "Node",
    "NodeClass",
    "NodeQuerySet",
    "NodeSample",
    "NodeStatusChange",
    "PolicyBundleRecord",
    "PolicyChange",
    "Region",
    "TenantPin",
    "TenantPolicy",
]
