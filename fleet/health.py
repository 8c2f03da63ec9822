"""How a node's status follows from its heartbeats: a pure function, used by the model
methods and mirrored by the SQL annotation in fleet.models.NodeQuerySet.with_status()."""

from __future__ import annotations

from datetime import datetime

from fleet.choices import NodeStatus
from inference.protocol import HeartbeatReport

# Past this share of memory in use a node is degraded: it will soon start to fail loads.
MEMORY_PRESSURE_LIMIT = 0.95


def report_is_healthy(report: HeartbeatReport) -> tuple[bool, str]:
    """Whether a fresh report describes a node that can serve everything it holds, and why not."""
    not_ready = [m.name for m in report.models if not m.ready]
    if not_ready:
        return False, f"models not ready: {', '.join(sorted(not_ready))}"
    if report.memory_pressure >= MEMORY_PRESSURE_LIMIT:
        return False, f"memory pressure {report.memory_pressure:.0%}"
    return True, "heartbeat"


def derive_status(
    last_heartbeat_at: datetime | None,
    healthy: bool,
    now: datetime,
    *,
    online_after_s: int,
    offline_after_s: int,
) -> NodeStatus:
    if last_heartbeat_at is None:
        return NodeStatus.PENDING
    age = (now - last_heartbeat_at).total_seconds()
    if age > offline_after_s:
        return NodeStatus.OFFLINE
    if age > online_after_s or not healthy:
        return NodeStatus.DEGRADED
    return NodeStatus.ONLINE
