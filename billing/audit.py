"""Writing the audit log (billing.models.AuditEntry): `record()` is the one writer.

Every action that changes money, policy, deployments or access calls `record()` INSIDE its own
transaction, beside the row it writes, so the action and its entry commit or roll back
together. Reads, heartbeats and usage ingest are not audited.

Who acted is worked out from what the caller has: a user (kind by role: operator, finance,
else a tenant's member), an ApiKey (the tenant-facing API acts as a key), an `Actor` (a node),
or None (the console itself: beat tasks, automatic rollbacks, Stripe's webhooks, the demo).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from uuid import UUID

from django.db import models
from django.utils import timezone

from billing.choices import ActorKind
from billing.models import ApiKey, AuditEntry, Tenant
from billing.roles import is_finance, is_operator


@dataclass(frozen=True)
class Actor:
    """Who acted, as the log keeps it."""

    kind: str
    label: str
    user: object | None = None


SYSTEM = Actor(ActorKind.SYSTEM, "system")


def node_actor(uid: str) -> Actor:
    """A node acting with its own credential (enrollment)."""
    return Actor(ActorKind.NODE, uid)


@dataclass(frozen=True)
class Subject:
    """What was acted on when it is not one model row: a setting, a month."""

    type: str
    id: str
    label: str


def actor_of(actor) -> Actor:
    """The log's view of whoever the caller says acted (see the module docstring)."""
    if actor is None:
        return SYSTEM
    if isinstance(actor, Actor):
        return actor
    if isinstance(actor, ApiKey):
        return Actor(ActorKind.API_KEY, f"{actor.prefix}… ({actor.name})"[:150])
    if not getattr(actor, "is_authenticated", False):
        raise ValueError(f"{actor!r} is not a signed-in user: it cannot have acted")
    if is_operator(actor):
        kind = ActorKind.OPERATOR
    elif is_finance(actor):
        kind = ActorKind.FINANCE
    else:
        # Every other user who can change anything does it as a member of a tenant.
        kind = ActorKind.TENANT
    return Actor(kind, actor.get_username(), user=actor)


def subject_of(subject) -> Subject:
    if isinstance(subject, Subject):
        return subject
    if isinstance(subject, models.Model):
        meta = subject._meta
        return Subject(f"{meta.app_label}.{meta.model_name}", str(subject.pk or ""), str(subject))
    raise TypeError(f"an audit subject is a model row or a Subject, not {subject!r}")


def tenant_of(subject, actor) -> Tenant | None:
    """Whose account an entry concerns when the caller does not say: the subject itself when
    it is a tenant, else the tenant the subject belongs to, else the acting key's."""
    if isinstance(subject, Tenant):
        return subject
    if isinstance(subject, models.Model):
        field = next(
            (f for f in subject._meta.concrete_fields if f.name == "tenant" and f.is_relation),
            None,
        )
        if field is not None and field.related_model is Tenant:
            return getattr(subject, "tenant", None)
    if isinstance(actor, ApiKey):
        return actor.tenant
    return None


def record(
    action: str,
    *,
    category: str,
    actor,
    subject,
    before: Mapping | None = None,
    after: Mapping | None = None,
    tenant: Tenant | None = None,
    note: str = "",
    at: datetime | None = None,
) -> AuditEntry:
    """Append one entry. `before` and `after` are snapshots (made JSON-safe here: Decimal →
    str, datetime → ISO in UTC); None before a creation and after a deletion. `at` is when
    (default now): an action run with its own `now` gives it, so the entry and the row agree."""
    who = actor_of(actor)
    what = subject_of(subject)
    return AuditEntry.objects.create(
        at=at or timezone.now(),
        actor=who.user,
        actor_kind=who.kind,
        actor_label=who.label[:150],
        tenant=tenant or tenant_of(subject, actor),
        category=category,
        action=action,
        subject_type=what.type[:60],
        subject_id=what.id[:64],
        subject_label=what.label[:200],
        before=None if before is None else json_safe(before),
        after=None if after is None else json_safe(after),
        note=note[:500],
    )


# --- snapshots --------------------------------------------------------------------------------


def json_safe(value):
    """`value` as JSON keeps it without losing what matters to an auditor: exact amounts
    (Decimal as its string), instants in UTC (ISO 8601), sets sorted."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(json_safe(v) for v in value)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    raise TypeError(f"cannot keep {type(value).__name__} in an audit snapshot: {value!r}")


def fields_of(obj: models.Model, names: Iterable[str] | None = None) -> dict[str, object]:
    """A row's fields as a snapshot: the named ones, or every concrete field but the primary
    key and hashed secrets (`*_hash`). A foreign key is shown as its row's name, a decimal
    with the places its column keeps."""
    wanted = list(names) if names is not None else None
    snapshot: dict[str, object] = {}
    for field in obj._meta.concrete_fields:
        if wanted is not None and field.name not in wanted:
            continue
        if wanted is None and (field.primary_key or field.name.endswith("_hash")):
            continue
        value = getattr(obj, field.attname)
        if field.is_relation:
            snapshot[field.name] = None if value is None else str(getattr(obj, field.name))
            continue
        if isinstance(field, models.DecimalField) and isinstance(value, Decimal):
            # As the database keeps it, whether the row was read back or just typed in.
            value = value.quantize(Decimal(1).scaleb(-field.decimal_places))
        snapshot[field.name] = json_safe(value)
    return snapshot


# --- reading ----------------------------------------------------------------------------------


def changes(before: Mapping | None, after: Mapping | None) -> list[tuple[str, object, object]]:
    """(field, old, new) for each field that differs, in the snapshots' order (as written on
    SQLite; PostgreSQL's jsonb keeps its own key order); a dict-valued field is opened one
    level ("cost_ceilings.tiny"). A creation lists every field of `after` (old None); a
    deletion every field of `before` (new None)."""
    before, after = before or {}, after or {}
    rows: list[tuple[str, object, object]] = []
    for name in dict.fromkeys([*before, *after]):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, dict) or isinstance(new, dict):
            old_map = old if isinstance(old, dict) else {}
            new_map = new if isinstance(new, dict) else {}
            for key in dict.fromkeys([*old_map, *new_map]):
                if old_map.get(key) != new_map.get(key):
                    rows.append((f"{name}.{key}", old_map.get(key), new_map.get(key)))
        else:
            rows.append((name, old, new))
    return rows


def shown(value: object) -> str:
    """A snapshot value as one short piece of text ("—" for nothing)."""
    if value is None or value == [] or value == {}:
        return "—"
    if isinstance(value, list):
        return ", ".join(shown(v) for v in value)
    return str(value)


def summary_of(before: Mapping | None, after: Mapping | None) -> str:
    """The changes in a line: "privacy_mode: any → in_region; monthly_budget: — → 500.00"."""
    return "; ".join(
        f"{name}: {shown(old)} → {shown(new)}" for name, old, new in changes(before, after)
    )
