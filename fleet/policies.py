"""Writes of tenant policies and of the operators' fleet settings (thresholds per node class,
accelerator pools). Each validates with the rules of fleet.models.policies, writes the row and
its history row in one transaction, and writes nothing when nothing changes.

These are the only writers: the portal (fleet.policy_views), the tenant API (fleet.policy_api),
the operator page and the demo seed all call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from billing.models import ApiKey, Tenant
from fleet.choices import PolicyActorKind, SettingKind
from fleet.models import (
    AcceleratorPool,
    FleetSettingChange,
    Node,
    NodeClass,
    PolicyChange,
    Region,
    TenantPolicy,
)
from fleet.models.policies import (
    OPERATOR_FIELDS,
    POLICY_FIELDS,
    clean_cost_ceilings,
    clean_policy,
    clean_thermal_envelope,
    pool_node_problems,
    summarise_change,
)

OPERATOR_ONLY = "Only the provider's operators change this."


class StalePolicy(Exception):
    """The policy changed since the caller read it (its revision moved on)."""

    def __init__(self, policy: TenantPolicy, expected: int) -> None:
        super().__init__(
            f"the policy is at revision {policy.revision}, not {expected}: it changed since "
            "it was read; read it again and reapply the change"
        )
        self.policy = policy


def update_policy(
    tenant: Tenant,
    changes: Mapping[str, object],
    *,
    actor,
    actor_kind: str,
    api_key: ApiKey | None = None,
    expected_revision: int | None = None,
) -> TenantPolicy:
    """Apply `changes` (policy field → new value; the others keep theirs) to the tenant's
    policy, creating it with the defaults first if need be.

    Raises ValidationError (messages per field) when the result breaks a rule or a member or
    API key tries to change an operator's field, and StalePolicy when `expected_revision` is
    given and the policy is at another. A change bumps the revision and writes a PolicyChange
    with the whole policy before and after; no change writes nothing.
    """
    if actor_kind not in PolicyActorKind.values:
        raise ValueError(f"unknown actor kind {actor_kind!r}")
    if (actor_kind == PolicyActorKind.API_KEY) != (api_key is not None):
        raise ValueError("an API key acts as actor_kind api_key, and only it")
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise ValidationError(f"Unknown policy fields: {', '.join(unknown)}.")
    with transaction.atomic():
        TenantPolicy.objects.get_or_create(tenant=tenant)
        policy = TenantPolicy.objects.select_for_update().get(tenant=tenant)
        if expected_revision is not None and expected_revision != policy.revision:
            raise StalePolicy(policy, expected_revision)
        if actor_kind != PolicyActorKind.OPERATOR:
            # Sending the current value back (a GET's body PUT again) is not a change.
            refused = [
                f for f in OPERATOR_FIELDS if f in changes and _changes(policy, f, changes[f])
            ]
            if refused:
                raise ValidationError({name: [OPERATOR_ONLY] for name in refused})
        before = policy.snapshot()
        cleaned = clean_policy({**policy.values(), **changes}, zones=_zones_for(policy, changes))
        for name, value in cleaned.items():
            setattr(policy, name, value)
        after = policy.snapshot()
        if after == before:
            return policy
        policy.revision += 1
        policy.updated_at = timezone.now()
        policy.updated_by = actor
        policy.save()
        PolicyChange.objects.create(
            tenant=tenant,
            at=policy.updated_at,
            revision=policy.revision,
            actor=actor,
            actor_kind=actor_kind,
            api_key=api_key,
            api_key_prefix=api_key.prefix if api_key else "",
            before=before,
            after=after,
            summary=summarise_change(before, after),
        )
        audit.record(
            "policy.updated",
            category=AuditCategory.POLICY,
            actor=api_key or actor,
            subject=policy,
            before=before,
            after=after,
            tenant=tenant,
            note=f"revision {policy.revision}",
        )
    return policy


def _changes(policy: TenantPolicy, name: str, value: object) -> bool:
    """Whether sending `value` for an operator's field changes it: the current value sent
    back is no change, and for the residency zone neither is null for an unbound one."""
    current = getattr(policy, name)
    if name == "residency_zone":
        return (value or "") != current
    return value != current


def _zones_for(policy: TenantPolicy, changes: Mapping[str, object]) -> set[str] | None:
    """The regions' residency zones, when the change binds the tenant to a new one (a
    binding must name a zone some region has); None, and no query, otherwise."""
    zone = changes.get("residency_zone")
    if not isinstance(zone, str) or not zone.strip() or zone.strip() == policy.residency_zone:
        return None
    return set(Region.objects.values_list("residency_zone", flat=True).distinct())


# --- the operators' settings ------------------------------------------------------------------


def thresholds_snapshot(node_class: NodeClass) -> dict[str, object]:
    envelope = node_class.thermal_envelope_c
    return {
        "thermal_envelope_c": None if envelope is None else format(envelope.normalize(), "f"),
        "cost_ceilings": dict(node_class.cost_ceilings),
    }


def set_node_class_thresholds(
    node_class: NodeClass,
    *,
    thermal_envelope_c: object,
    cost_ceilings: Mapping[str, object] | None,
    actor,
) -> NodeClass:
    """Set a class's thermal envelope (°C, None for no limit) and its cost ceilings per grade
    (per 1,000 inferences, in the class's currency; a grade left out has none).

    Raises ValidationError keyed `thermal_envelope_c` and `cost_ceilings.<grade>` (or
    `cost_ceilings` when it is not grade → amount at all). A change writes a
    FleetSettingChange; no change writes nothing.
    """
    errors: dict[str, list[str]] = {}
    try:
        envelope = clean_thermal_envelope(thermal_envelope_c)
    except ValidationError as exc:
        errors["thermal_envelope_c"] = exc.messages
    try:
        ceilings = clean_cost_ceilings(cost_ceilings)
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            for grade, messages in exc.message_dict.items():
                errors[f"cost_ceilings.{grade}"] = messages
        else:
            errors["cost_ceilings"] = exc.messages
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        locked = NodeClass.objects.select_for_update().get(pk=node_class.pk)
        before = thresholds_snapshot(locked)
        locked.thermal_envelope_c = envelope
        locked.cost_ceilings = ceilings
        after = thresholds_snapshot(locked)
        if after != before:
            locked.save(update_fields=["thermal_envelope_c", "cost_ceilings"])
            _record(SettingKind.NODE_CLASS, locked.name, before, after, actor)
    node_class.thermal_envelope_c, node_class.cost_ceilings = envelope, ceilings
    return node_class


def pool_snapshot(pool: AcceleratorPool | None) -> dict[str, object]:
    if pool is None:
        return {"name": None, "nodes": [], "fallback": None}
    return {
        "name": pool.name,
        "nodes": sorted(node.name for node in pool.nodes.all()),
        "fallback": pool.fallback.code if pool.fallback_id else None,
    }


def fallback_problem(region: Region, fallback: Region | None) -> str | None:
    """Why `region` may not fall back to `fallback`: itself, or a cycle with the fallbacks the
    other pools have now (the compiler refuses a cycle too; this says it at the form)."""
    if fallback is None:
        return None
    if fallback.pk == region.pk:
        return f"{region.code} cannot fall back to itself."
    fallbacks = dict(
        AcceleratorPool.objects.filter(fallback__isnull=False).values_list(
            "region__code", "fallback__code"
        )
    )
    fallbacks[region.code] = fallback.code
    chain = [region.code]
    while chain[-1] in fallbacks:
        following = fallbacks[chain[-1]]
        if following in chain:
            cycle = " → ".join([*chain[chain.index(following) :], following])
            return f"That makes a fallback cycle: {cycle}."
        chain.append(following)
    return None


def set_accelerator_pool(
    region: Region,
    *,
    name: str,
    nodes: Iterable[Node],
    actor,
    fallback: Region | None = None,
) -> AcceleratorPool:
    """Create or change the region's accelerator pool: its name, its nodes (each an
    accelerator node of the region) and the region it falls back to. Raises ValidationError
    keyed `name`, `nodes` and `fallback`. A change writes a FleetSettingChange; no change
    writes nothing."""
    name = (name or "").strip()
    chosen = list(
        Node.objects.filter(pk__in=[node.pk for node in nodes])
        .select_related("region", "node_class")
        .order_by("name")
    )
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Give the pool a name, e.g. “Frankfurt accelerators”."]
    elif len(name) > 100:
        errors["name"] = ["At most 100 characters."]
    problems = pool_node_problems(region.code, chosen)
    if problems:
        errors["nodes"] = problems
    problem = fallback_problem(region, fallback)
    if problem:
        errors["fallback"] = [problem]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        pool = AcceleratorPool.objects.select_for_update().filter(region=region).first()
        before = pool_snapshot(pool)
        if pool is None:
            pool = AcceleratorPool.objects.create(region=region, name=name)
        after = {
            "name": name,
            "nodes": [node.name for node in chosen],
            "fallback": fallback.code if fallback else None,
        }
        if after != before:
            pool.name = name
            pool.fallback = fallback
            pool.updated_at = timezone.now()
            pool.save(update_fields=["name", "fallback", "updated_at"])
            pool.nodes.set(chosen)
            _record(SettingKind.ACCELERATOR_POOL, region.code, before, after, actor)
    return pool


def _record(kind: str, subject: str, before: dict, after: dict, actor) -> None:
    FleetSettingChange.objects.create(
        kind=kind,
        subject=subject,
        actor=actor,
        before=before,
        after=after,
        summary=summarise_change(before, after),
    )
    audit.record(
        f"{kind}.changed",
        category=AuditCategory.POLICY,
        actor=actor,
        subject=audit.Subject(f"fleet.{kind}", subject, subject),
        before=before,
        after=after,
    )
