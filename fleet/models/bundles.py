"""The policy plane's records: every bundle the console signed, the compiles it refused, and
the routing decisions nodes report.

All three are append-only. A bundle is written once by fleet.policy_plane.publish_bundle and
never changed; nodes fetch its `signed` text byte for byte (fleet/api.py).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from fleet.choices import DecisionAction
from inference.protocol import PolicyBundle, SignedBundle


class PolicyBundleRecordQuerySet(models.QuerySet["PolicyBundleRecord"]):
    def latest_revision(self) -> int | None:
        return self.order_by("-revision").values_list("revision", flat=True).first()


class PolicyBundleRecord(models.Model):
    """One signed revision of the policy bundle, with why it was compiled and what changed."""

    revision = models.PositiveBigIntegerField(unique=True)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    key_id = models.CharField(max_length=16, help_text="The signing key's id")
    # The SignedBundle JSON exactly as nodes receive it.
    signed = models.TextField()
    # sha256 of the bundle without its revision and dates: equal digests, equal policy.
    content_digest = models.CharField(max_length=64)
    size_bytes = models.PositiveIntegerField()
    tenant_count = models.PositiveIntegerField()
    # What made the console compile it ("policy of acme changed", "periodic reissue", …).
    reasons = models.JSONField(default=list)
    # fleet.bundles.diff_bundles against the revision before, one line per change.
    changes = models.JSONField(default=list)
    # fleet.bundles.bundle_warnings: what the bundle lets through but an operator should fix.
    warnings = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = PolicyBundleRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-revision"]

    def __str__(self) -> str:
        return f"bundle r{self.revision}"

    @property
    def signed_bundle(self) -> SignedBundle:
        return SignedBundle.model_validate_json(self.signed)

    @property
    def bundle(self) -> PolicyBundle:
        return self.signed_bundle.bundle


class BundleRequest(models.Model):
    """Why a compile was asked for: written by fleet.signals in the same transaction as the
    change it names, and consumed by the next compile (fleet.policy_plane.publish_bundle), so
    a revision's reasons are the changes it includes, whichever Celery task compiled it."""

    at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=200)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.reason


class BundleCompileFailure(models.Model):
    """A compile the compiler refused (fleet.bundles.CompileError): nothing was signed, nodes
    keep the previous revision, and the operators' bundle page shows the rules broken."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    reasons = models.JSONField(default=list)
    problems = models.JSONField(default=list)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"compile refused at {self.at:%Y-%m-%d %H:%M:%S}: {'; '.join(self.problems)}"


class DecisionLogQuerySet(models.QuerySet["DecisionLog"]):
    def for_request(self, request_id: str) -> DecisionLogQuerySet:
        return self.filter(request_id=request_id).select_related("node").order_by("at")


class DecisionLog(models.Model):
    """A routing decision a node sampled and reported (protocol.DecisionRecord): why a request
    was served here, offloaded or refused, under which bundle revision."""

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="decisions")
    request_id = models.CharField(max_length=100, db_index=True)
    at = models.DateTimeField(db_index=True)
    tenant = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=200)
    action = models.CharField(max_length=10, choices=DecisionAction.choices)
    rule = models.CharField(max_length=40)
    reason = models.CharField(max_length=500)
    status = models.PositiveSmallIntegerField()
    served_by = models.CharField(max_length=10, blank=True)
    target = models.CharField(max_length=40, blank=True, help_text="Pool node offloaded to")
    bundle_revision = models.PositiveBigIntegerField(null=True, blank=True)
    price = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    queue_depth = models.PositiveIntegerField(null=True, blank=True)

    objects = DecisionLogQuerySet.as_manager()

    class Meta:
        ordering = ["-at"]
        constraints = [
            # A heartbeat retried after a lost answer carries the same records again.
            models.UniqueConstraint(
                fields=["node", "request_id", "at"], name="one_decision_per_node_request_time"
            )
        ]

    def __str__(self) -> str:
        return f"{self.request_id} on {self.node_id}: {self.action} ({self.rule})"
