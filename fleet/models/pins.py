"""Per-tenant pins of a deployment: a controlled rollout keeps a tenant on the old version,
or moves it to the new one ahead of the canary's share."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from billing.models import Tenant
from fleet.choices import PinSide
from fleet.models.rollouts import Deployment


class TenantPin(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="pins")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    side = models.CharField(max_length=3, choices=PinSide.choices)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    class Meta:
        ordering = ["tenant__slug"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "tenant"], name="one_pin_per_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug} → {self.side} in deployment {self.deployment_id}"
