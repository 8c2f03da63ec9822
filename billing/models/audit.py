"""The audit log: one row per operator, finance, tenant, API key, node or system action that
changed money, policy, deployments or access — who, what, before and after, when.

It lives in billing, the lowest Django layer, because both billing and fleet write to it
(billing.audit.record). Append-only: a row is inserted with the action it records, in the same
transaction, and never changed or deleted afterwards; the model and its queryset refuse both.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.choices import ActorKind, AuditCategory
from billing.models.accounts import Tenant


class AuditLogIsAppendOnly(Exception):
    """An attempt to change or delete an audit entry: corrections are new entries."""


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def for_tenant(self, tenant: Tenant) -> AuditEntryQuerySet:
        return self.filter(tenant=tenant)

    def between(self, start: datetime | None, end: datetime | None) -> AuditEntryQuerySet:
        """Entries at or after `start` and before `end` (either may be None: open)."""
        rows = self
        if start is not None:
            rows = rows.filter(at__gte=start)
        if end is not None:
            rows = rows.filter(at__lt=end)
        return rows

    # Bulk writes skip save() and delete(): they keep the same rule.
    def update(self, **kwargs) -> int:
        raise AuditLogIsAppendOnly("audit entries are never changed; record a new entry")

    def delete(self):
        raise AuditLogIsAppendOnly("audit entries are never deleted")


class AuditEntry(models.Model):
    at = models.DateTimeField(default=timezone.now, db_index=True)
    # The person who acted, when a person did; their name stays in `actor_label` when the user
    # is deleted (the only change a row ever sees, made by the database's SET NULL).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_kind = models.CharField(max_length=10, choices=ActorKind.choices)
    # The username, "opk_12345678… (name)" for an API key, the node's uid, or "system".
    actor_label = models.CharField(max_length=150)
    # Whose account the action concerns (None: the provider's own settings); the portal shows
    # a tenant its own. PROTECT: an account with an audit history is kept, like its invoices.
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_entries",
    )
    category = models.CharField(max_length=10, choices=AuditCategory.choices)
    # A dotted verb: "policy.updated", "price.created", "deployment.rolled_back"…
    action = models.CharField(max_length=60)
    # What was acted on: "<app>.<model>" and its primary key, or a name for a setting.
    subject_type = models.CharField(max_length=60)
    subject_id = models.CharField(max_length=64, blank=True)
    subject_label = models.CharField(max_length=200, blank=True)
    # JSON snapshots of what changed; None before a creation and after a deletion.
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-pk"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["tenant", "at"], name="audit_tenant_at"),
            models.Index(fields=["category", "at"], name="audit_category_at"),
            models.Index(fields=["subject_type", "subject_id"], name="audit_subject"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label}: {self.action} {self.subject_label}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AuditLogIsAppendOnly("audit entries are never changed; record a new entry")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditLogIsAppendOnly("audit entries are never deleted")
