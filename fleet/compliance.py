"""The compliance checks: small named checks, each a plain function from the fleet's facts
(fleet.compliance_context.Context) to the violations it finds, with what it found and how to
fix it. docs/compliance.md lists them for people.

| id | severity | what it finds |
|---|---|---|
| residency.routes | critical | a route nodes enforce takes a zone-bound tenant to a pool in another zone |
| residency.pools | critical | a pool a zone-bound tenant is routed to holds a node of another zone |
| residency.deployments | high | a zone-bound tenant's own model deployed to a region of another zone |
| residency.traffic | critical | a zone-bound tenant's requests served in another zone (last day) |
| tokenisation.bundle | high | declared sensitive fields the newest bundle does not carry |
| tokenisation.nodes | high | a node that served such a tenant (last day) without tokenising for it |
| export.deployments | critical | a classified model deployed where a rule forbids its classification |
| export.loaded | critical | a node reporting such a model loaded where a rule forbids it |
| policy.stale | high | a reporting node behind the newest bundle for longer than allowed |
| keys.api_keys | medium | an API key older than the rotation period, not revoked |
| keys.node_credentials | medium | a node credential never rotated (or not lately) past the period |
| transport.node_tls | high | a node endpoint without TLS while the console requires it |

The check functions are in fleet.compliance_checks (residency, tokenisation, export) and
fleet.compliance_hygiene (stale policy, keys, transport); the facts they read are loaded by
fleet.compliance_context. fleet.compliance_actions.run_checks runs them and keeps the
findings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fleet.choices import Severity
from fleet.compliance_checks import (
    Violation,
    export_deployments,
    export_loaded,
    residency_deployments,
    residency_pools,
    residency_routes,
    residency_traffic,
    tokenisation_bundle,
    tokenisation_nodes,
)
from fleet.compliance_context import Context
from fleet.compliance_hygiene import api_key_age, node_credentials, node_tls, policy_stale

__all__ = ["CHECKS", "CHECKS_BY_ID", "Check", "Outcome", "Violation", "evaluate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: Severity
    run: Callable[[Context], Iterable[Violation]]
    # Whether the check means anything in this configuration (transport only in production):
    # a check that does not apply is not run, and its earlier findings are left as they are —
    # a run from a developer's shell must not resolve what production found.
    applies: Callable[[Context], bool] = lambda ctx: True


# --- the registry -------------------------------------------------------------------------------


CHECKS: tuple[Check, ...] = (
    Check("residency.routes", "Routes stay in the tenant's zone", Severity.CRITICAL,
          residency_routes),
    Check("residency.pools", "Pools a bound tenant reaches hold nodes of its zone",
          Severity.CRITICAL, residency_pools),
    Check("residency.deployments", "A bound tenant's models stay in its zone", Severity.HIGH,
          residency_deployments),
    Check("residency.traffic", "A bound tenant is served in its zone", Severity.CRITICAL,
          residency_traffic),
    Check("tokenisation.bundle", "The bundle carries declared sensitive fields", Severity.HIGH,
          tokenisation_bundle),
    Check("tokenisation.nodes", "Nodes that serve a tenant tokenise for it", Severity.HIGH,
          tokenisation_nodes),
    Check("export.deployments", "Classified models are not deployed where forbidden",
          Severity.CRITICAL, export_deployments),
    Check("export.loaded", "Nodes do not hold classified models where forbidden",
          Severity.CRITICAL, export_loaded),
    Check("policy.stale", "Nodes enforce the newest bundle", Severity.HIGH, policy_stale),
    Check("keys.api_keys", "API keys are rotated", Severity.MEDIUM, api_key_age),
    Check("keys.node_credentials", "Node credentials are rotated", Severity.MEDIUM,
          node_credentials),
    Check("transport.node_tls", "Node endpoints use TLS", Severity.HIGH, node_tls,
          applies=lambda ctx: ctx.thresholds.require_node_tls),
)  # fmt: skip
CHECKS_BY_ID = {check.id: check for check in CHECKS}


@dataclass(frozen=True)
class Outcome:
    """What running the checks gave: each check's violations, the checks that failed (their
    error) and those that did not apply; the earlier findings of both are left as they are."""

    violations: dict[str, list[Violation]]
    errors: dict[str, str]
    skipped: tuple[str, ...] = ()


def evaluate(ctx: Context, checks: Iterable[Check] = CHECKS) -> Outcome:
    """Run every check on the facts. A check that raises is logged and reported, not fatal:
    the others still run. A check naming one subject twice keeps its first violation."""
    violations: dict[str, list[Violation]] = {}
    errors: dict[str, str] = {}
    skipped: list[str] = []
    for check in checks:
        if not check.applies(ctx):
            skipped.append(check.id)
            continue
        try:
            found = list(check.run(ctx))
        except Exception as exc:  # one broken check must not stop the others
            log.exception("compliance check %s failed", check.id)
            errors[check.id] = f"{type(exc).__name__}: {exc}"
            continue
        unique: dict[str, Violation] = {}
        for violation in found:
            unique.setdefault(violation.subject_key, violation)
        violations[check.id] = list(unique.values())
    return Outcome(violations=violations, errors=errors, skipped=tuple(skipped))
