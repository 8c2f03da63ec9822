"""Drift telemetry in the database: store the nodes' output windows, measure each version
against its baseline, raise and close alerts. The arithmetic is pure (fleet.drift)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from fleet import drift
from fleet.models import Deployment, DriftAlert, DriftWindow, ModelVersion, Node
from inference.protocol import DRIFT_WINDOW_S, HeartbeatReport

log = logging.getLogger(__name__)

MINUTE = timedelta(seconds=DRIFT_WINDOW_S)
# A minute is judged once every node has had the time to report it: windows leave a node at
# its first heartbeat after the minute ends.
SETTLE = timedelta(seconds=15)
# Versions whose newest window is older than this are not checked any more (nothing new).
ACTIVE_FOR = timedelta(minutes=10)


def drift_settings() -> drift.DriftSettings:
    value = settings.OUTPOST_DRIFT
    if value is None:
        return drift.DriftSettings()
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object such as {"threshold": 0.25}')
    known = {f.name for f in fields(drift.DriftSettings)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known keys are {sorted(known)}")
    return drift.DriftSettings(**value)


def drift_soak_s() -> int:
    """The shortest step soak that lets a deployment be judged on drift: the sustained
    minutes, the minute under way, and the settling time after the last one."""
    return (drift_settings().sustained_minutes + 2) * DRIFT_WINDOW_S


# --- ingest -----------------------------------------------------------------------------------


def record_windows(node: Node, report: HeartbeatReport) -> int:
    """Store the output windows a heartbeat carried; returns how many. Windows of versions
    the registry does not know (a node's own local models) are skipped."""
    reported = [m for m in report.models if m.outputs]
    if not reported:
        return 0
    candidates = ModelVersion.objects.filter(
        sha256__in={m.sha256 for m in reported}
    ).select_related("model__owner")
    by_identity = {(v.model.served_name, str(v.version), v.sha256): v for v in candidates}
    rows = []
    for loaded in reported:
        version = by_identity.get((loaded.name, loaded.version, loaded.sha256))
        if version is None:
            continue
        for window in loaded.outputs:
            rows.append(
                DriftWindow(
                    version=version,
                    node=node,
                    minute=window.minute,
                    rows=window.rows,
                    classes=window.classes,
                    values=[v.model_dump() for v in window.values] if window.values else None,
                )
            )
    if rows:
        DriftWindow.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["version", "node", "minute"],
            update_fields=["rows", "classes", "values"],
        )
    return len(rows)


def _as_mapping(row: DriftWindow | dict) -> dict:
    if isinstance(row, dict):
        return row
    return {"rows": row.rows, "classes": row.classes, "values": row.values}


# --- baselines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    summary: drift.Summary
    label: str


def previous_version(version: ModelVersion) -> ModelVersion | None:
    """What this version replaced: the previous version of its latest deployment, else the
    newest earlier version of the model that has outputs on record."""
    deployment = (
        Deployment.objects.filter(version=version, previous__isnull=False)
        .select_related("previous")
        .order_by("-created_at")
        .first()
    )
    if deployment is not None:
        return deployment.previous
    return (
        ModelVersion.objects.filter(
            model_id=version.model_id, version__lt=version.version, windows__isnull=False
        )
        .distinct()
        .order_by("-version")
        .first()
    )


def baseline_for(
    version: ModelVersion, cfg: drift.DriftSettings, *, now: datetime
) -> Baseline | None:
    previous = previous_version(version)
    if previous is not None:
        span = timedelta(minutes=cfg.baseline_minutes)
        summary = drift.merge(
            _as_mapping(w) for w in previous.windows.filter(minute__gte=now - span)
        )
        if summary.rows < cfg.min_rows:
            # It no longer serves (a completed rollout): its last hour on record.
            last = previous.windows.aggregate(last=Max("minute"))["last"]
            if last is not None:
                summary = drift.merge(
                    _as_mapping(w) for w in previous.windows.filter(minute__gt=last - span)
                )
        if summary.rows >= cfg.min_rows:
            return Baseline(summary, f"version {previous.version}")
    reference = version.drift_reference or _capture_reference(version, cfg)
    if reference is None:
        return None
    return Baseline(
        drift.Summary.from_json(reference["summary"]),
        f"its own first minute ({reference['minute'][11:16]} UTC)",
    )


def _capture_reference(version: ModelVersion, cfg: drift.DriftSettings) -> dict | None:
    """The version's first minute with enough rows (over all nodes), kept for good."""
    by_minute: dict[datetime, list[DriftWindow]] = defaultdict(list)
    for window in version.windows.order_by("minute")[:500]:
        by_minute[window.minute].append(window)
    for minute, windows in sorted(by_minute.items()):
        summary = drift.merge(_as_mapping(w) for w in windows)
        if summary.rows >= cfg.min_rows:
            reference = {"minute": minute.isoformat(), "summary": summary.to_json()}
            version.drift_reference = reference
            version.save(update_fields=["drift_reference"])
            return reference
    return None


# --- measurement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    minute: datetime
    rows: int
    psi: float | None  # None: too few rows that minute, or nothing to compare with


def series(
    version: ModelVersion,
    *,
    since: datetime,
    now: datetime,
    cfg: drift.DriftSettings | None = None,
    baseline: Baseline | None = None,
) -> tuple[list[Point], Baseline | None]:
    """PSI per settled minute since `since`, oldest first, against the version's baseline."""
    cfg = cfg or drift_settings()
    baseline = baseline or baseline_for(version, cfg, now=now)
    by_minute: dict[datetime, drift.Summary] = defaultdict(drift.Summary)
    settled_before = now - MINUTE - SETTLE
    for window in version.windows.filter(minute__gte=since, minute__lte=settled_before):
        by_minute[window.minute].add(_as_mapping(window))
    points = []
    for minute, summary in sorted(by_minute.items()):
        value = None
        if baseline is not None and summary.rows >= cfg.min_rows:
            value = drift.summary_psi(baseline.summary, summary)
        points.append(Point(minute, summary.rows, value))
    return points, baseline


def check_version(version: ModelVersion, *, now: datetime | None = None) -> drift.Verdict:
    """Measure the version's recent minutes; open, update or close its drift alert."""
    now = now or timezone.now()
    cfg = drift_settings()
    since = now - MINUTE * (cfg.sustained_minutes + 5)
    points, baseline = series(version, since=since, now=now, cfg=cfg)
    verdict = drift.judge([(p.minute, p.psi) for p in points], cfg)
    note = verdict.reason if baseline is None else f"{verdict.reason}, against {baseline.label}"
    if baseline is None and points:
        note = f"no baseline yet: waiting for a minute with {cfg.min_rows} rows"
    with transaction.atomic():
        version.drift_psi = verdict.latest
        version.drift_note = note[:300]
        version.drift_checked_at = now
        version.save(update_fields=["drift_psi", "drift_note", "drift_checked_at"])
        alert = DriftAlert.objects.select_for_update().open().filter(version=version).first()
        if verdict.sustained and alert is None:
            DriftAlert.objects.create(
                version=version,
                opened_at=now,
                baseline=baseline.label if baseline else "",
                peak_psi=verdict.latest,
                last_psi=verdict.latest,
                reason=verdict.reason[:300],
            )
            log.warning("drift alert for %s: %s", version, note)
        elif alert is not None and verdict.latest is not None:
            alert.last_psi = verdict.latest
            alert.peak_psi = max(alert.peak_psi, verdict.latest)
            update = ["last_psi", "peak_psi"]
            if verdict.latest <= cfg.threshold:
                alert.closed_at = now
                update.append("closed_at")
                log.info("drift alert for %s closed: %s", version, note)
            alert.save(update_fields=update)
        elif alert is not None and not points:
            # Nothing reported for minutes: the version no longer serves (rolled back or
            # replaced), so there is no drift left to watch.
            alert.closed_at = now
            alert.save(update_fields=["closed_at"])
            log.info("drift alert for %s closed: the version no longer reports outputs", version)
    return verdict


def check_all(*, now: datetime | None = None) -> int:
    """Check every version with recent outputs or an open alert; returns how many."""
    now = now or timezone.now()
    recent = ModelVersion.objects.filter(windows__minute__gte=now - ACTIVE_FOR)
    alerted = ModelVersion.objects.filter(drift_alerts__closed_at__isnull=True)
    versions = (recent | alerted).distinct().select_related("model__owner")
    checked = 0
    for version in versions:
        check_version(version, now=now)
        checked += 1
    return checked


def drift_gate(deployment: Deployment) -> DriftAlert | None:
    """The open drift alert that should roll this deployment back, if it asks for that."""
    if not deployment.rollback_on_drift:
        return None
    return (
        DriftAlert.objects.open()
        .filter(version_id=deployment.version_id, opened_at__gte=deployment.created_at)
        .first()
    )


def prune_windows(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.OUTPOST_DRIFT_RETENTION_H)
    deleted, _ = DriftWindow.objects.filter(minute__lt=cutoff).delete()
    return deleted


def overview(version: ModelVersion, *, now: datetime | None = None, minutes: int = 60) -> dict:
    """What a version's page shows about drift: PSI per minute over the last `minutes`, the
    baseline, the recent distribution next to the baseline's, and the alerts."""
    from inference.protocol import DRIFT_MAX_CLASSES, DRIFT_VALUE_EDGES

    now = now or timezone.now()
    cfg = drift_settings()
    points, baseline = series(version, since=now - timedelta(minutes=minutes), now=now, cfg=cfg)
    recent = drift.merge(
        _as_mapping(w) for w in version.windows.filter(minute__gte=now - timedelta(minutes=10))
    )
    compared = None
    if baseline is not None:
        compared = drift.compared_bins(
            baseline.summary, recent, edges=DRIFT_VALUE_EDGES, max_classes=DRIFT_MAX_CLASSES
        )
    return {
        "settings": cfg,
        "points": points,
        "baseline": baseline,
        "recent_rows": recent.rows,
        "compared": compared,
        "alerts": list(version.drift_alerts.all()[:10]),
    }
