"""The policy plane: read what routing depends on from the database, compile it into the next
policy bundle (fleet.bundles, pure), sign it, store it, and deliver it to the nodes.

`publish_bundle` is the one writer of PolicyBundleRecord. It runs in Celery
(fleet.tasks.publish_bundle_task): right after a change that routing cares about (the signal
handlers in fleet/signals.py enqueue it when the change commits), and every
OUTPOST_BUNDLE_CHECK_S from beat, which catches what no signal announces (a scheduled price
taking effect, a bundle nearing its expiry). A compile whose result equals the latest bundle's
content signs nothing, so enqueuing it too often costs one compile and no revision.

Delivery is push and pull: after the commit every reachable node is pushed the new bundle
(fleet.tasks.push_bundle_task, retried with backoff), and every heartbeat answer names the
newest revision, so a node that missed the push fetches it (fleet/api.py, with ETag).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.utils import timezone

from billing.alerts import exhausted_tenants
from billing.features import features_by_tenant
from billing.models import IssuedToken, Price, Tenant
from billing.signing import console_private_key, fleet_forward_key_b64
from fleet import bundles
from fleet.choices import NodeStatus, VersionStatus
from fleet.models import (
    AcceleratorPool,
    BundleCompileFailure,
    BundleRequest,
    DecisionLog,
    ModelVersion,
    Node,
    NodeClass,
    PolicyBundleRecord,
    Region,
    TenantPolicy,
)
from fleet.models.policies import POLICY_DEFAULTS, format_amount
from inference import protocol
from inference.protocol import (
    ClassThresholds,
    ModelGrade,
    PolicyBundle,
    PriceRow,
    TenantRules,
)

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 3.0
# What beat's compile gives as its reason (console/settings.py): it says nothing when changes
# recorded their own reasons.
PERIODIC_CHECK = "periodic check"


# --- reading the inputs ------------------------------------------------------------------------


def gather_inputs(now: datetime | None = None) -> bundles.Inputs:
    """Everything the compiler needs, as of `now`: a handful of queries whatever the size of
    the fleet (one per kind of input)."""
    now = now or timezone.now()
    policies = {p.tenant_id: p for p in TenantPolicy.objects.all()}
    spent = exhausted_tenants(now)
    unlocked = features_by_tenant(now)
    tenants = [
        _tenant_rules(
            t, policies.get(t.pk), exhausted=t.slug in spent, features=unlocked.get(t.pk, [])
        )
        for t in Tenant.objects.order_by("slug")
    ]
    members = Prefetch("nodes", queryset=Node.objects.select_related("region").order_by("name"))
    pools = {
        pool.region_id: pool
        for pool in AcceleratorPool.objects.select_related("fallback").prefetch_related(members)
    }
    regions = []
    for region in Region.objects.order_by("code"):
        pool = pools.get(region.pk)
        nodes = pool.nodes.all() if pool is not None else ()
        fallback = pool.fallback.code if pool is not None and pool.fallback_id else None
        regions.append(
            bundles.RegionSpec(
                code=region.code,
                residency_zone=region.residency_zone,
                pool=tuple(
                    bundles.PoolMember(uid=n.uid, endpoint=n.endpoint, region=n.region.code)
                    for n in nodes
                ),
                fallback=fallback,
            )
        )
    prices = [
        PriceRow(
            grade=p.grade, serving=p.serving, currency=p.currency, per_1000=_decimal(p.per_1000)
        )
        for p in Price.objects.in_effect(now)
    ]
    thresholds = [
        ClassThresholds(
            node_class=c.name,
            thermal_envelope_c=None
            if c.thermal_envelope_c is None
            else float(c.thermal_envelope_c),
            cost_ceilings=dict(c.cost_ceilings),
            hourly_cost=_decimal(c.hourly_cost.quantize(Decimal("0.000001"))),
            idle_watts=float(c.idle_watts),
            peak_watts=float(c.peak_watts),
        )
        for c in NodeClass.objects.order_by("name")
    ]
    revoked = IssuedToken.objects.live(now).filter(revoked_at__isnull=False)
    return bundles.Inputs(
        tenants=tenants,
        regions=regions,
        prices=prices,
        thresholds=thresholds,
        revoked_tokens=list(revoked.values_list("token_id", flat=True)),
        models=model_grades(),
        trusted_keys=trusted_keys(),
        forward_key=fleet_forward_key_b64(),
    )


def _tenant_rules(
    tenant: Tenant,
    policy: TenantPolicy | None,
    *,
    exhausted: bool = False,
    features: list[str] | None = None,
) -> TenantRules:
    values = policy.values() if policy is not None else dict(POLICY_DEFAULTS)
    return TenantRules(
        slug=tenant.slug,
        privacy=values["privacy_mode"],
        fallback=values["fallback"],
        quality=values["quality"],
        max_spend_per_session=format_amount(values["max_spend_per_session"]),
        currency=tenant.currency,
        sensitive_fields=list(values["sensitive_fields"]),
        on_budget_exhausted=values["on_budget_exhausted"],
        budget_exhausted=exhausted,
        features=features,
        fail_closed_after_s=values["fail_closed_after_s"],
        rate_limit_per_s=values.get("rate_limit_per_s"),
        # Routes out of the zone are never compiled (fleet.bundles.allowed_pools).
        residency_zone=values.get("residency_zone") or None,
    )


def model_grades() -> list[ModelGrade]:
    """The grade of each served model name: its newest graded version's."""
    grades: dict[str, str] = {}
    versions = (
        ModelVersion.objects.filter(status=VersionStatus.GRADED)
        .exclude(grade="")
        .select_related("model__owner")
        .order_by("model_id", "version")
    )
    for version in versions:
        grades[version.model.served_name] = version.grade
    return [ModelGrade(name=name, grade=grade) for name, grade in sorted(grades.items())]


def _decimal(value: Decimal) -> str:
    """A Decimal as the bundle writes amounts: plain digits, no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def trusted_keys() -> list[str]:
    """The console's public key and, during a rotation, the next one published ahead."""
    keys = [protocol.public_key_to_b64(console_private_key().public_key())]
    if settings.OUTPOST_NEXT_PUBLIC_KEY and settings.OUTPOST_NEXT_PUBLIC_KEY not in keys:
        keys.append(settings.OUTPOST_NEXT_PUBLIC_KEY)
    return keys


# --- compiling, signing, storing -----------------------------------------------------------------


def content_digest(bundle: PolicyBundle) -> str:
    document = bundle.model_dump(mode="json", exclude={"revision", "issued_at", "expires_at"})
    return hashlib.sha256(protocol.canonical_json(document)).hexdigest()


def bundle_ttl() -> timedelta:
    return timedelta(seconds=settings.OUTPOST_BUNDLE_TTL_S)


def publish_bundle(
    reasons: list[str] | None = None, *, now: datetime | None = None, force: bool = False
) -> PolicyBundleRecord | None:
    """Compile the bundle for the current inputs and, when its content differs from the
    latest revision's (or that one has passed half its life, or `force`), sign and store it as
    the next revision and push it to the nodes after the commit. Returns the new record, or
    None when nothing needed publishing or the compiler refused (a BundleCompileFailure row
    then says why, and nodes keep the revision they have)."""
    now = now or timezone.now()
    # The requests recorded so far, read before the inputs: every change they name is in
    # what is compiled next (fleet.signals writes them with their change).
    requests = list(BundleRequest.objects.order_by("pk").values_list("pk", "reason"))
    given = [r for r in reasons or [] if not (requests and r == PERIODIC_CHECK)]
    reasons = _unique([*given, *(reason for _, reason in requests)]) or ["compiled by hand"]
    consumed = requests[-1][0] if requests else None
    inputs = gather_inputs(now)
    for attempt in range(2):
        try:
            return _publish(inputs, reasons, now, force, consumed)
        except IntegrityError:
            # Two publishers took the same next revision (only possible for the very first
            # one, when there is no row to lock): the loser compiles again after the winner.
            if attempt:
                raise
    return None


def _publish(
    inputs: bundles.Inputs,
    reasons: list[str],
    now: datetime,
    force: bool,
    consumed: int | None,
) -> PolicyBundleRecord | None:
    with transaction.atomic():
        if consumed is not None:
            # Whatever comes of this compile, these reasons are answered by it.
            BundleRequest.objects.filter(pk__lte=consumed).delete()
        latest = PolicyBundleRecord.objects.select_for_update().order_by("-revision").first()
        revision = latest.revision + 1 if latest is not None else 1
        try:
            bundle = bundles.compile_bundle(
                inputs, revision=revision, issued_at=now, ttl=bundle_ttl()
            )
        except bundles.CompileError as exc:
            log.error("the policy bundle compiler refused: %s", "; ".join(exc.problems))
            BundleCompileFailure.objects.create(at=now, reasons=reasons, problems=exc.problems)
            return None
        digest = content_digest(bundle)
        if latest is not None and not force and digest == latest.content_digest:
            half_life = (latest.expires_at - latest.issued_at) / 2
            if now < latest.issued_at + half_life:
                return None
            reasons = ["reissued before expiry"]
        signed = protocol.sign_bundle(console_private_key(), bundle)
        text = signed.model_dump_json()
        if latest is None:
            changes = ["first bundle"]
        else:
            changes = bundles.diff_bundles(latest.bundle, bundle) or ["no change in policy"]
        record = PolicyBundleRecord.objects.create(
            revision=revision,
            issued_at=bundle.issued_at,
            expires_at=bundle.expires_at,
            key_id=signed.key_id,
            signed=text,
            content_digest=digest,
            size_bytes=len(text.encode()),
            tenant_count=len(bundle.tenants),
            reasons=reasons[:20],
            changes=changes[:500],
            warnings=bundles.bundle_warnings(bundle),
            created_at=now,
        )
        transaction.on_commit(lambda: push_bundle_to_nodes(record.revision))
    log.info("published policy bundle %d: %s", record.revision, "; ".join(record.reasons))
    return record


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- delivering ------------------------------------------------------------------------------------


def reachable_nodes():
    """Nodes worth pushing to: those heard from recently. Silent ones would only cost a
    timeout each; they fetch the bundle from their next heartbeat answer."""
    return Node.objects.filter(status__in=[NodeStatus.ONLINE, NodeStatus.DEGRADED])


# Pushes run in parallel, this many at a time; each waits at most PUSH_TIMEOUT_S.
PUSH_THREADS = 16


def push_bundle_to_nodes(revision: int) -> int:
    """Push the revision to every reachable node at once (threads, one round: a fleet of 20
    takes ~0.1 s, bench/policy.py); a node that could not be reached gets a Celery task that
    retries it with backoff. Returns how many nodes were tried. Called after the commit that
    stored the revision, by whoever published it: the worker, or an operator's Publish now."""
    from fleet.tasks import push_bundle_task

    record = PolicyBundleRecord.objects.filter(revision=revision).first()
    nodes = list(reachable_nodes()) if record is not None else []
    if not nodes:
        return 0

    def unreached(node: Node) -> int | None:
        try:
            push_bundle(node, record)
        except PushFailed as exc:
            log.info("pushing bundle %d failed (%s); retrying in Celery", revision, exc)
            return node.pk
        return None

    with ThreadPoolExecutor(max_workers=min(PUSH_THREADS, len(nodes))) as pool:
        retry = [pk for pk in pool.map(unreached, nodes) if pk is not None]
    for node_id in retry:
        push_bundle_task.apply_async((node_id, revision), countdown=1)
    return len(nodes)


@cache
def node_client() -> httpx.Client:
    """One HTTP client per process for the console's calls to nodes: building one costs
    ~60 ms (its TLS context), far more than a push (bench/policy.py measured both)."""
    return httpx.Client(timeout=PUSH_TIMEOUT_S)


class PushFailed(Exception):
    """The node could not be reached or answered with a server error: worth a retry."""


def push_bundle(node: Node, record: PolicyBundleRecord) -> bool:
    """POST the signed bundle to the node. True when the node enforces it now; False when it
    refused it (it says why, and keeps its last good bundle). Raises PushFailed when the node
    could not be reached or failed, so that the task retries."""
    url = node.endpoint.rstrip("/") + protocol.BUNDLE_PUSH_PATH
    try:
        response = node_client().post(
            url,
            content=record.signed.encode(),
            headers={"Content-Type": "application/json"},
            timeout=PUSH_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        raise PushFailed(f"{node}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise PushFailed(f"{node} answered {response.status_code}: {response.text[:200]}")
    if response.status_code != 200:
        log.warning(
            "%s refused bundle %d: %s %s",
            node,
            record.revision,
            response.status_code,
            response.text[:300],
        )
        return False
    return True


# --- what nodes enforce -------------------------------------------------------------------------


def revision_states(nodes, latest: int | None, *, now: datetime | None = None) -> list[dict]:
    """Per node: the revision it reports against the newest, and whether it is stale (behind
    for longer than two heartbeats, or refusing the newest)."""
    now = now or timezone.now()
    grace = timedelta(seconds=2 * settings.OUTPOST_HEARTBEAT_INTERVAL_S)
    latest_at = (
        PolicyBundleRecord.objects.filter(revision=latest).values_list("created_at", flat=True)
        if latest is not None
        else []
    )
    published_at = next(iter(latest_at), None)
    rows = []
    for node in nodes:
        current = latest is not None and node.bundle_revision == latest
        behind = latest is not None and not current
        stale = behind and (
            bool(node.bundle_problem)
            or published_at is None
            or now - published_at > grace
            or node.bundle_revision is None
        )
        rows.append({"node": node, "current": current, "behind": behind, "stale": stale})
    return rows


def record_decisions(node: Node, report: protocol.HeartbeatReport) -> int:
    """Store the decisions a heartbeat carried; a retried heartbeat's repeats are ignored."""
    if not report.decisions:
        return 0
    rows = [
        DecisionLog(
            node=node,
            request_id=d.request_id,
            at=d.at,
            tenant=d.tenant or "",
            model=d.model,
            action=d.action,
            rule=d.rule,
            reason=d.reason,
            status=d.status,
            served_by=d.served_by or "",
            target=d.target or "",
            bundle_revision=d.bundle_revision,
            price=Decimal(d.price) if d.price is not None else None,
            currency=d.currency or "",
            temperature_c=d.temperature_c,
            queue_depth=d.queue_depth,
        )
        for d in report.decisions
    ]
    DecisionLog.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def prune_decisions(now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(hours=settings.OUTPOST_DECISION_RETENTION_H)
    deleted, _ = DecisionLog.objects.filter(at__lt=cutoff).delete()
    expired, _ = IssuedToken.objects.filter(expires_at__lt=cutoff).delete()
    return deleted + expired
