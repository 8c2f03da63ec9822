"""The compliance checks of the fleet's hygiene: nodes on an old policy bundle, keys and
node credentials past their rotation period, node endpoints without TLS. Plain functions over
fleet.compliance_context.Context, like those of fleet.compliance_checks."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import urlparse

from fleet.compliance_checks import Violation, duration
from fleet.compliance_context import Context, NodeFacts

# --- stale policy ------------------------------------------------------------------------------


def _behind_since(ctx: Context, node: NodeFacts) -> datetime | None:
    """Since when the node has not enforced the newest bundle: when the first revision after
    the one it enforces was issued (or the first revision, for a node enforcing none), and
    never before it enrolled. None when it is current."""
    if ctx.newest_revision is None or node.bundle_revision == ctx.newest_revision:
        return None
    numbers = [revision for revision, _ in ctx.revisions]
    after = node.bundle_revision if node.bundle_revision is not None else 0
    index = bisect.bisect_right(numbers, after)
    if index >= len(ctx.revisions):
        return None  # it reports a revision newer than any the console signed
    return max(ctx.revisions[index][1], node.enrolled_at)


def policy_stale(ctx: Context) -> Iterator[Violation]:
    """Online and degraded nodes that have enforced an older bundle than the newest (or
    none) for longer than OUTPOST_POLICY_MAX_STALENESS_S."""
    allowed = timedelta(seconds=ctx.thresholds.policy_max_staleness_s)
    for node in ctx.nodes:
        if not node.reporting:
            continue
        since = _behind_since(ctx, node)
        if since is None or ctx.now - since <= allowed:
            continue
        enforced = (
            f"bundle r{node.bundle_revision}" if node.bundle_revision is not None else "no bundle"
        )
        problem = f" It says: {node.bundle_problem}" if node.bundle_problem else ""
        yield Violation(
            subject_key=f"node:{node.uid}",
            subject=node.name,
            message=f"{node.name} enforces {enforced}, not the newest r{ctx.newest_revision}, "
            f"and has for {duration((ctx.now - since).total_seconds())} (allowed "
            f"{duration(allowed.total_seconds())}).{problem}",
            fix="A node fetches the newest bundle with its next heartbeat: check that it "
            "reaches the console and verifies the bundle (its clock, the console key it "
            "pinned at enrollment) and was not started with --hold-bundle (a freeze ends with "
            "a restart without it); the bundle page shows what it reports.",
            region=node.region,
            details={
                "enforced": node.bundle_revision,
                "newest": ctx.newest_revision,
                "behind_since": since.isoformat(),
            },
        )


# --- keys --------------------------------------------------------------------------------------


def api_key_age(ctx: Context) -> Iterator[Violation]:
    """API keys not revoked and older than OUTPOST_API_KEY_ROTATION_DAYS."""
    period = timedelta(days=ctx.thresholds.api_key_rotation_days)
    for key in ctx.api_keys:
        age = ctx.now - key.created_at
        if age <= period:
            continue
        tenant = ctx.tenants.get(key.tenant_id)
        slug = tenant.slug if tenant is not None else "?"
        yield Violation(
            subject_key=f"api_key:{key.pk}",
            subject=f"{slug} key {key.prefix}… ({key.name})",
            message=f"{slug}'s API key {key.prefix}… “{key.name}” is {age.days} days old and "
            f"not revoked; keys are rotated every {period.days} days.",
            fix=f"In {slug}'s portal (API keys), create a new key, move the clients to it, then "
            f"revoke {key.prefix}….",
            tenant_id=key.tenant_id,
            details={"created_at": key.created_at.isoformat(), "age_days": age.days},
        )


def node_credentials(ctx: Context) -> Iterator[Violation]:
    """Node credentials never rotated since enrollment, or last rotated, longer ago than
    OUTPOST_NODE_CREDENTIAL_ROTATION_DAYS."""
    period = timedelta(days=ctx.thresholds.node_credential_rotation_days)
    for node in ctx.nodes:
        since = node.credential_rotated_at or node.enrolled_at
        age = ctx.now - since
        if age <= period:
            continue
        what = (
            f"was last rotated {age.days} days ago"
            if node.credential_rotated_at
            else f"has never been rotated since it enrolled {age.days} days ago"
        )
        yield Violation(
            subject_key=f"node:{node.uid}",
            subject=node.name,
            message=f"{node.name}'s credential {what}; credentials are rotated every "
            f"{period.days} days.",
            fix=f"Rotate it from {node.name}'s page (Rotate credential): the node takes the new "
            "credential with its next heartbeat, and the old one is refused once it has used "
            "the new one.",
            region=node.region,
            details={"since": since.isoformat(), "rotated": node.credential_rotated_at is not None},
        )


# --- transport ---------------------------------------------------------------------------------


def node_tls(ctx: Context) -> Iterator[Violation]:
    """Node endpoints that are not https:// while the console requires TLS to nodes
    (OUTPOST_REQUIRE_NODE_TLS, on in production): pushes, forwards and tokens travel there."""
    if not ctx.thresholds.require_node_tls:
        return
    for node in ctx.nodes:
        scheme = urlparse(node.endpoint).scheme.lower()
        if scheme == "https":
            continue
        yield Violation(
            subject_key=f"node:{node.uid}",
            subject=node.name,
            message=f"{node.name} serves at {node.endpoint}, without TLS: requests, tokens and "
            "the bundles pushed to it travel in clear.",
            fix=f"Serve {node.name} behind TLS (a reverse proxy with a certificate, or the "
            "agent's own) and advertise its https:// address (--advertise); the console "
            "stores the address the node enrolled with.",
            region=node.region,
            details={"endpoint": node.endpoint},
        )
