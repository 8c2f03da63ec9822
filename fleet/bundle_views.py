"""The policy plane's pages, for operators:

- `/fleet/bundles/`: the newest signed revision and why it was compiled, the compiler's
  refusal when the last compile was refused, the revision each node reports it enforces
  (current, behind or stale: how the console proves what the fleet enforces), a button that
  publishes now, and every revision before;
- `/fleet/bundles/<revision>/`: one revision, readably, with what changed from the previous
  one or from any other (`?against=N`), and the signed JSON as nodes receive it;
- `/fleet/decisions/`: the routing decisions nodes report, to look up why a request id was
  offloaded or refused.

Views gather querysets and hand them to declared filters and tables (fleet.filters,
fleet.tables); publishing is fleet.actions', comparing is fleet.bundles'. The node table
refreshes itself with htmx (fleet.views.render_live).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from django_tables2 import RequestConfig

from billing.roles import operator_required
from fleet.actions import publish_bundle_now
from fleet.bundles import diff_bundles
from fleet.filters import DecisionLogFilterSet
from fleet.forms import BundleCompareForm
from fleet.grading import format_bytes
from fleet.models import BundleCompileFailure, DecisionLog, Node, PolicyBundleRecord
from fleet.policy_plane import revision_states
from fleet.tables import (
    DecisionLogTable,
    NodeRevisionTable,
    PolicyBundleRecordTable,
    revision_state,
)
from fleet.views import render_live, wants_partial
from inference import protocol
from inference.protocol import PolicyBundle, Pool, TenantRules

REVISIONS_PER_PAGE = 25
NODES_PER_PAGE = 100
DECISIONS_PER_PAGE = 50
# The node table lists the nodes that need a look first.
STATE_ORDER = {"stale": 0, "behind": 1, "current": 2}


def _revisions():
    # The signed text is the bundle itself (kilobytes per revision): lists never need it.
    return PolicyBundleRecord.objects.defer("signed")


@operator_required
def bundles(request: HttpRequest) -> HttpResponse:
    newest = _revisions().order_by("-revision").first()
    latest = newest.revision if newest is not None else None
    failure = BundleCompileFailure.objects.order_by("-at").first()
    if failure is not None and newest is not None and failure.at <= newest.created_at:
        failure = None  # a later compile succeeded: the refusal is history
    nodes = Node.objects.with_status().select_related("region", "node_class")
    rows = sorted(
        revision_states(nodes, latest),
        key=lambda row: (
            STATE_ORDER[revision_state(row)],
            row["node"].region.code,
            row["node"].name,
        ),
    )
    node_table = NodeRevisionTable(rows, latest=latest, prefix="nodes-")
    RequestConfig(request, paginate={"per_page": NODES_PER_PAGE}).configure(node_table)
    context = {
        "newest": newest,
        "newest_size": format_bytes(newest.size_bytes) if newest is not None else None,
        "failure": failure,
        "node_table": node_table,
        "counts": Counter(revision_state(row) for row in rows) if latest is not None else {},
    }
    if not wants_partial(request):  # the history is not part of the live refresh
        history = PolicyBundleRecordTable(_revisions(), prefix="history-")
        RequestConfig(request, paginate={"per_page": REVISIONS_PER_PAGE}).configure(history)
        context["history"] = history
    return render_live(request, "fleet/bundles/bundles.html", "fleet/bundles/_live.html", context)


@require_POST
@operator_required
def publish(request: HttpRequest) -> HttpResponse:
    done = publish_bundle_now(acting_user=request.user)
    if done.record is not None:
        messages.success(
            request,
            f"Revision {done.record.revision} published: the nodes are being sent it now.",
        )
    elif done.refused is not None:
        kept = f"nodes keep revision {done.latest}" if done.latest else "no bundle exists yet"
        messages.error(
            request,
            f"The compiler refused to publish, and {kept}: {'; '.join(done.refused.problems)}.",
        )
    else:
        messages.info(
            request, f"Nothing changed since revision {done.latest}: no new revision was signed."
        )
    return redirect("bundles:list")


@operator_required
def revision(request: HttpRequest, revision: int) -> HttpResponse:
    record = get_object_or_404(PolicyBundleRecord, revision=revision)
    bundle = record.bundle
    others = PolicyBundleRecord.objects.values_list("revision", flat=True)
    previous = others.filter(revision__lt=revision).order_by("-revision").first()
    following = others.filter(revision__gt=revision).order_by("revision").first()
    compare_form = BundleCompareForm(request.GET if "against" in request.GET else None)
    comparison = None
    if compare_form.is_bound and compare_form.is_valid():
        other = compare_form.cleaned_data["against"]
        comparison = {"revision": other.revision, "lines": diff_bundles(other.bundle, bundle)}
    return render(
        request,
        "fleet/bundles/revision.html",
        {
            "record": record,
            "bundle": bundle,
            "size": format_bytes(record.size_bytes),
            "newest": following is None,
            "previous": previous,
            "following": following,
            "compare_form": compare_form,
            "comparison": comparison,
            "content": bundle_content(bundle),
            "signed_json": json.dumps(json.loads(record.signed), indent=2, ensure_ascii=False),
        },
    )


@operator_required
def decisions(request: HttpRequest) -> HttpResponse:
    # The name of the node an offload went to, in the same query (nodes report its uid).
    target_name = Node.objects.filter(uid=OuterRef("target")).values("name")[:1]
    decisions = DecisionLog.objects.select_related("node").annotate(
        target_name=Subquery(target_name)
    )
    filterset = DecisionLogFilterSet(request.GET or None, queryset=decisions)
    table = DecisionLogTable(filterset.qs)
    RequestConfig(request, paginate={"per_page": DECISIONS_PER_PAGE}).configure(table)
    return render(
        request,
        "fleet/decisions/list.html",
        {
            "filter": filterset,
            "table": table,
            "local_sample": protocol.DECISIONS_LOCAL_SAMPLE,
            "retention_h": settings.OUTPOST_DECISION_RETENTION_H,
        },
    )


# --- what a revision's page shows, from plain data ---------------------------------------------


@dataclass(frozen=True)
class PoolView:
    pool: Pool
    # (uid, endpoint, the node's name or None when it is no longer enrolled)
    nodes: list[tuple[str, str, str | None]]


@dataclass(frozen=True)
class TrustedKey:
    key: str
    key_id: str | None  # None: not a readable Ed25519 public key


def bundle_content(bundle: PolicyBundle) -> dict[str, object]:
    """The bundle arranged for reading: tenants with their routes, pools with their nodes'
    names (one query), and the rest sorted."""
    uids = {node.uid for pool in bundle.pools for node in pool.nodes}
    names = dict(Node.objects.filter(uid__in=uids).values_list("uid", "name"))
    routes: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for route in sorted(bundle.routes, key=lambda r: (r.tenant, r.region)):
        routes[route.tenant].append((route.region, list(route.pools)))
    tenants: list[tuple[TenantRules, list[tuple[str, list[str]]]]] = [
        (tenant, routes.get(tenant.slug, [])) for tenant in sorted(bundle.tenants, key=_slug)
    ]
    return {
        "tenants": tenants,
        "pools": [
            PoolView(pool, [(n.uid, n.endpoint, names.get(n.uid)) for n in pool.nodes])
            for pool in sorted(bundle.pools, key=lambda p: p.region)
        ],
        "prices": sorted(bundle.prices, key=lambda p: (p.currency, p.grade, p.serving)),
        "thresholds": sorted(bundle.thresholds, key=lambda t: t.node_class),
        "models": sorted(bundle.models, key=lambda m: m.name),
        "revoked_tokens": len(bundle.revoked_tokens),
        "trusted_keys": [TrustedKey(key, _key_id(key)) for key in bundle.trusted_keys],
    }


def _slug(tenant: TenantRules) -> str:
    return tenant.slug


def _key_id(key: str) -> str | None:
    try:
        return protocol.key_id(protocol.public_key_from_b64(key))
    except ValueError:
        return None
