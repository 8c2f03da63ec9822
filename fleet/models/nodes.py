"""What runs where: regions, node classes and their cost model, nodes and their history."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.db.models import Case, Q, Value, When
from django.utils import timezone

from billing import audit
from billing.choices import AuditCategory
from fleet import costs
from fleet.choices import NodeClassKind, NodeStatus, SettingKind
from fleet.health import derive_status, report_is_healthy
from fleet.models.policies import (
    THERMAL_MAX_C,
    THERMAL_MIN_C,
    FleetSettingChange,
    clean_cost_ceilings,
    summarise_change,
)
from inference.protocol import HeartbeatReport, hash_secret, new_secret

NODE_CREDENTIAL_PREFIX = "opn"
ENROLLMENT_TOKEN_PREFIX = "ope"  # noqa: S105 - a label, not a secret
# What an operator may simulate, °C: the range the heartbeat answer allows
# (protocol.HeartbeatReply.simulated_temperature_c), wide enough to push any class past its
# thermal envelope (at most THERMAL_MAX_C) and to cool it below ambient.
SIMULATED_MIN_C = -50
SIMULATED_MAX_C = 200


class Region(models.Model):
    code = models.SlugField(max_length=40, unique=True, help_text="e.g. eu-west")
    name = models.CharField(max_length=100)
    jurisdiction = models.CharField(
        max_length=10,
        help_text="Legal jurisdiction, ISO 3166 code (e.g. DE, US-CA)",
        validators=[RegexValidator(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$", "An ISO 3166 code, e.g. DE")],
    )
    residency_zone = models.CharField(
        max_length=10, help_text="Data residency zone, e.g. EU or US", db_index=True
    )

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class NodeClass(models.Model):
    """A kind of machine and what it costs to own and run."""

    name = models.CharField(max_length=20, choices=NodeClassKind.choices, unique=True)
    description = models.CharField(max_length=200, blank=True)
    capex = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Purchase price of one machine",
    )
    currency = models.CharField(max_length=3, default="EUR")
    amortisation_months = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    idle_watts = models.DecimalField(max_digits=8, decimal_places=1)
    peak_watts = models.DecimalField(max_digits=8, decimal_places=1)
    energy_price_per_kwh = models.DecimalField(max_digits=8, decimal_places=4)
    expected_utilisation = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(1))],
        help_text="Share of the time busy, 0..1",
    )
    memory_bytes = models.BigIntegerField(validators=[MinValueValidator(1)])
    has_gpu = models.BooleanField(default=False)
    # How many times faster than the console host this class runs a model: grading scales
    # its measured latency by it (fleet.grading), and node reports calibrate it over time.
    speed_factor = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(1000)]
    )
    # Thresholds the policy bundle carries to the nodes of this class; operators set them on
    # /fleet/policies/ (fleet.policies.set_node_class_thresholds, which audits the change).
    thermal_envelope_c = models.DecimalField(
        max_digits=4,
        decimal_places=1,
        null=True,
        blank=True,
        validators=[MinValueValidator(THERMAL_MIN_C), MaxValueValidator(THERMAL_MAX_C)],
        verbose_name="thermal envelope (°C)",
        help_text="Above this temperature a node offloads instead of serving; empty: no limit",
    )
    cost_ceilings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per grade, the most 1,000 inferences may cost to serve on this class, in its "
        'currency, e.g. {"tiny": "0.05"}; a grade left out has no ceiling',
    )

    class Meta:
        ordering = ["capex"]
        verbose_name_plural = "node classes"
        constraints = [
            models.CheckConstraint(
                condition=Q(peak_watts__gte=models.F("idle_watts")), name="peak_at_least_idle"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        try:
            self.cost_ceilings = clean_cost_ceilings(self.cost_ceilings)
        except ValidationError as exc:
            raise ValidationError({"cost_ceilings": _messages_by_key(exc)}) from None

    @property
    def cost_model(self) -> costs.CostModel:
        return costs.CostModel(
            capex=self.capex,
            amortisation_months=self.amortisation_months,
            idle_watts=self.idle_watts,
            peak_watts=self.peak_watts,
            energy_price_per_kwh=self.energy_price_per_kwh,
            expected_utilisation=self.expected_utilisation,
        )

    @property
    def hourly_cost(self) -> Decimal:
        return costs.hourly_cost(self.cost_model)

    @property
    def monthly_cost(self) -> Decimal:
        return costs.monthly_cost(self.cost_model)


def _messages_by_key(exc: ValidationError) -> list[str]:
    """A ValidationError keyed by grade (or anything else) as "key: message" lines."""
    if hasattr(exc, "error_dict"):
        return [f"{key}: {m}" for key, messages in exc.message_dict.items() for m in messages]
    return exc.messages


def _thresholds(now: datetime) -> tuple[datetime, datetime]:
    return (
        now - timedelta(seconds=settings.OUTPOST_NODE_ONLINE_AFTER_S),
        now - timedelta(seconds=settings.OUTPOST_NODE_OFFLINE_AFTER_S),
    )


class NodeQuerySet(models.QuerySet["Node"]):
    """Status derives from the last heartbeat; these filters mirror fleet.health.derive_status."""

    def online(self, now: datetime | None = None) -> NodeQuerySet:
        online_since, _ = _thresholds(now or timezone.now())
        return self.filter(last_heartbeat_at__gte=online_since, last_report_healthy=True)

    def degraded(self, now: datetime | None = None) -> NodeQuerySet:
        online_since, offline_before = _thresholds(now or timezone.now())
        return self.filter(last_heartbeat_at__gte=offline_before).exclude(
            last_heartbeat_at__gte=online_since, last_report_healthy=True
        )

    def offline(self, now: datetime | None = None) -> NodeQuerySet:
        _, offline_before = _thresholds(now or timezone.now())
        return self.filter(last_heartbeat_at__lt=offline_before)

    def pending(self) -> NodeQuerySet:
        return self.filter(last_heartbeat_at__isnull=True)

    def with_status(self, now: datetime | None = None) -> NodeQuerySet:
        """Annotate `current_status`, computed in SQL so a list of any length is one query."""
        online_since, offline_before = _thresholds(now or timezone.now())
        return self.annotate(
            current_status=Case(
                When(last_heartbeat_at__isnull=True, then=Value(NodeStatus.PENDING)),
                When(last_heartbeat_at__lt=offline_before, then=Value(NodeStatus.OFFLINE)),
                When(
                    last_heartbeat_at__gte=online_since,
                    last_report_healthy=True,
                    then=Value(NodeStatus.ONLINE),
                ),
                default=Value(NodeStatus.DEGRADED),
                output_field=models.CharField(),
            )
        )

    def in_region(self, code: str) -> NodeQuerySet:
        return self.filter(region__code=code)


class Node(models.Model):
    uid = models.SlugField(max_length=40, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="nodes")
    node_class = models.ForeignKey(NodeClass, on_delete=models.PROTECT, related_name="nodes")
    endpoint = models.URLField(max_length=500, help_text="Where the node serves OIP v2")
    hostname = models.CharField(max_length=255, blank=True)
    credential_hash = models.CharField(max_length=64, unique=True, editable=False)
    enrolled_at = models.DateTimeField(default=timezone.now)
    # Credential rotation: the next credential's hash waits here until the node first
    # authenticates with it; then it replaces `credential_hash` and this records when.
    # None: the node still uses the credential it enrolled with.
    # Indexed: a node's first call with its new credential finds the node by it.
    pending_credential_hash = models.CharField(
        max_length=64, blank=True, editable=False, db_index=True
    )
    credential_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    # An operator asked for a new credential (fleet.actions.request_credential_rotation): the
    # heartbeat answer says so until the node uses its new one. None: nothing asked.
    credential_rotation_requested_at = models.DateTimeField(null=True, blank=True)

    # The status last recorded, so that a change of the derived status writes one history row.
    status = models.CharField(max_length=10, choices=NodeStatus.choices, default=NodeStatus.PENDING)
    # The reported state, from the latest heartbeat.
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_report_healthy = models.BooleanField(default=False)
    agent_version = models.CharField(max_length=50, blank=True)
    uptime_s = models.FloatField(default=0)
    cpu_load = models.FloatField(null=True, blank=True)
    memory_pressure = models.FloatField(null=True, blank=True)
    temperature_c = models.FloatField(null=True, blank=True)
    queue_depth = models.PositiveIntegerField(default=0)
    requests_total = models.BigIntegerField(default=0)
    errors_total = models.BigIntegerField(default=0)
    models_loaded = models.JSONField(default=list, blank=True)
    bundle_revision = models.BigIntegerField(null=True, blank=True)
    # Why the node refused the last bundle offered to it (tampered, expired, older…), if it did.
    bundle_problem = models.CharField(max_length=500, blank=True)
    # The reported temperature came from the simulation below, not from a sensor.
    temperature_simulated = models.BooleanField(default=False)
    # The node has a tokenisation key (it replaces sensitive fields by tokens before a request
    # leaves it), and the tenants of its bundle whose sensitive fields it tokenises: the
    # tokenisation compliance check reads both (HeartbeatReport.tokenisation_active).
    tokenisation_active = models.BooleanField(default=False)
    tokenised_tenants = models.JSONField(default=list, blank=True)
    # An operator's simulated temperature for this node (a demo of thermal offload), sent in
    # every heartbeat answer; empty: the node reads its sensors.
    simulated_temperature_c = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(SIMULATED_MIN_C), MaxValueValidator(SIMULATED_MAX_C)],
        verbose_name="simulated temperature (°C)",
    )

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["region__code", "name"]

    def __str__(self) -> str:
        return self.name

    def derived_status(self, now: datetime | None = None) -> NodeStatus:
        return derive_status(
            self.last_heartbeat_at,
            self.last_report_healthy,
            now or timezone.now(),
            online_after_s=settings.OUTPOST_NODE_ONLINE_AFTER_S,
            offline_after_s=settings.OUTPOST_NODE_OFFLINE_AFTER_S,
        )

    @classmethod
    def new_credential(cls) -> tuple[str, str]:
        """A node credential and the hash stored for it."""
        secret = new_secret(NODE_CREDENTIAL_PREFIX)
        return secret, hash_secret(secret)

    @classmethod
    def authenticate(cls, credential: str) -> Node | None:
        """The node whose credential this is: its current one, or the next one it was given
        (`issue_next_credential`), which then becomes its only one (`_take_pending`)."""
        digest = hash_secret(credential)
        nodes = cls.objects.select_related("node_class", "region")
        node = nodes.filter(credential_hash=digest).first()
        if node is not None:
            return node
        node = nodes.filter(pending_credential_hash=digest).first()
        if node is None:
            return None
        return node._take_pending(digest)

    def _take_pending(self, digest: str) -> Node | None:
        """The node's first call with its next credential: it replaces the old one, which is
        refused from now on. Locked, so concurrent first calls swap once."""
        with transaction.atomic():
            node = Node.objects.select_for_update().get(pk=self.pk)
            if node.pending_credential_hash == digest:
                node.credential_hash = digest
                node.pending_credential_hash = ""
                node.credential_rotated_at = timezone.now()
                node.credential_rotation_requested_at = None
                node.save(
                    update_fields=[
                        "credential_hash",
                        "pending_credential_hash",
                        "credential_rotated_at",
                        "credential_rotation_requested_at",
                    ]
                )
                audit.record(
                    "node.credential_rotated",
                    category=AuditCategory.ACCESS,
                    actor=audit.node_actor(node.uid),
                    subject=node,
                    after={"credential_rotated_at": node.credential_rotated_at},
                    note="the node used its new credential; the old one is refused from now on",
                )
            elif node.credential_hash != digest:
                return None  # replaced meanwhile by a newer pending credential
        for field in (
            "credential_hash",
            "pending_credential_hash",
            "credential_rotated_at",
            "credential_rotation_requested_at",
        ):
            setattr(self, field, getattr(node, field))
        return self

    def issue_next_credential(self) -> str:
        """A new credential for this node, shown once: it is accepted beside the current one
        until the node first uses it (then only it is). A newer one replaces an unused one."""
        secret, digest = Node.new_credential()
        Node.objects.filter(pk=self.pk).update(pending_credential_hash=digest)
        self.pending_credential_hash = digest
        return secret

    def record_heartbeat(self, report: HeartbeatReport, *, now: datetime | None = None) -> None:
        """Store a report, keep a sample of it, and record a status flip if there is one.

        The row is locked so that concurrent heartbeats and the flip detector
        (fleet.tasks.detect_status_flips_task) cannot write two history rows for one change.
        """
        now = now or timezone.now()
        healthy, reason = report_is_healthy(report)
        with transaction.atomic():
            node = Node.objects.select_for_update().get(pk=self.pk)
            node.last_heartbeat_at = now
            node.last_report_healthy = healthy
            node.agent_version = report.agent_version
            node.uptime_s = report.uptime_s
            node.cpu_load = report.cpu_load
            node.memory_pressure = report.memory_pressure
            node.temperature_c = report.temperature_c
            node.temperature_simulated = report.temperature_simulated
            node.queue_depth = report.queue_depth
            node.requests_total = report.requests_total
            node.errors_total = report.errors_total
            # The output windows go to DriftWindow rows (fleet.drift_actions), not here.
            node.models_loaded = [m.model_dump(exclude={"outputs"}) for m in report.models]
            node.bundle_revision = report.bundle_revision
            node.bundle_problem = report.bundle_problem or ""
            node.tokenisation_active = report.tokenisation_active
            node.tokenised_tenants = list(report.tokenised_tenants)
            node._flip_to(node.derived_status(now), reason, now)
            node.save()
            NodeSample.objects.create(
                node=node,
                at=now,
                cpu_load=report.cpu_load,
                memory_pressure=report.memory_pressure,
                temperature_c=report.temperature_c,
                queue_depth=report.queue_depth,
                requests_total=report.requests_total,
                errors_total=report.errors_total,
            )
        self.refresh_from_db()

    def simulate_temperature(self, value: float | None, *, actor) -> bool:
        """Simulate this node's temperature (°C), or stop with None: the node is told in its
        next heartbeat answer and moves its reading toward the value at 1 °C/s, reporting it
        as simulated. Saves only that field, and a change writes a FleetSettingChange.

        Raises ValidationError when the value is not a number within SIMULATED_MIN_C..
        SIMULATED_MAX_C. Returns whether anything changed."""
        value = clean_simulated_temperature(value)
        with transaction.atomic():
            node = Node.objects.select_for_update().get(pk=self.pk)
            before = {"simulated_temperature_c": node.simulated_temperature_c}
            after = {"simulated_temperature_c": value}
            changed = after != before
            if changed:
                node.simulated_temperature_c = value
                node.save(update_fields=["simulated_temperature_c"])
                FleetSettingChange.objects.create(
                    kind=SettingKind.THERMAL_SIMULATION,
                    subject=node.name,
                    actor=actor,
                    before=before,
                    after=after,
                    summary=summarise_change(before, after),
                )
        self.simulated_temperature_c = value
        return changed

    def sync_status(self, *, now: datetime | None = None) -> NodeStatusChange | None:
        """Record the flip of a node that stopped reporting (it cannot tell us itself)."""
        now = now or timezone.now()
        with transaction.atomic():
            node = Node.objects.select_for_update().get(pk=self.pk)
            change = node._flip_to(node.derived_status(now), "heartbeats missing", now)
            if change is not None:
                node.save(update_fields=["status"])
        self.refresh_from_db(fields=["status"])
        return change

    def _flip_to(self, status: str, reason: str, now: datetime) -> NodeStatusChange | None:
        if status == self.status:
            return None
        change = NodeStatusChange.objects.create(
            node=self, old_status=self.status, new_status=status, at=now, reason=reason
        )
        self.status = status
        return change


def clean_simulated_temperature(value: object) -> float | None:
    """A simulated temperature in °C, or None (no simulation). Raises ValidationError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValidationError(f"{value!r} is not a temperature: give a number of °C.")
    if not math.isfinite(value):
        raise ValidationError(f"{value} is not a temperature: give a number of °C.")
    if not SIMULATED_MIN_C <= value <= SIMULATED_MAX_C:
        raise ValidationError(
            f"{value:g} °C is outside {SIMULATED_MIN_C}–{SIMULATED_MAX_C} °C, the range a node "
            "can simulate."
        )
    return float(value)


class NodeStatusChange(models.Model):
    """Append-only history of a node's status; one row per flip."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="status_changes")
    old_status = models.CharField(max_length=10, choices=NodeStatus.choices)
    new_status = models.CharField(max_length=10, choices=NodeStatus.choices)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.node}: {self.old_status} → {self.new_status}"


class NodeSampleQuerySet(models.QuerySet["NodeSample"]):
    def since(self, moment: datetime) -> NodeSampleQuerySet:
        return self.filter(at__gte=moment)


class NodeSample(models.Model):
    """One heartbeat's metrics, kept for charts for OUTPOST_SAMPLE_RETENTION_H hours."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField()
    cpu_load = models.FloatField()
    memory_pressure = models.FloatField()
    temperature_c = models.FloatField(null=True)
    queue_depth = models.PositiveIntegerField()
    requests_total = models.BigIntegerField()
    errors_total = models.BigIntegerField()

    objects = NodeSampleQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["node", "at"]), models.Index(fields=["at"])]

    def __str__(self) -> str:
        return f"{self.node_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class EnrollmentTokenQuerySet(models.QuerySet["EnrollmentToken"]):
    def usable(self, now: datetime | None = None) -> EnrollmentTokenQuerySet:
        return self.filter(used_at__isnull=True, expires_at__gt=now or timezone.now())


class EnrollmentToken(models.Model):
    """A one-time, expiring secret that lets one machine join the fleet as a node."""

    prefix = models.CharField(max_length=12, editable=False)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    node_name = models.CharField(max_length=100, help_text="Name the node will have")
    region = models.ForeignKey(Region, on_delete=models.PROTECT)
    node_class = models.ForeignKey(NodeClass, on_delete=models.PROTECT)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    node = models.OneToOneField(
        Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="enrollment_token"
    )

    objects = EnrollmentTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… for {self.node_name}"

    @classmethod
    def issue(
        cls,
        *,
        node_name: str,
        region: Region,
        node_class: NodeClass,
        created_by=None,
        ttl: timedelta | None = None,
    ) -> tuple[EnrollmentToken, str]:
        secret = new_secret(ENROLLMENT_TOKEN_PREFIX)
        ttl = ttl or timedelta(hours=settings.OUTPOST_ENROLLMENT_TOKEN_TTL_H)
        token = cls.objects.create(
            prefix=secret[:12],
            secret_hash=hash_secret(secret),
            node_name=node_name,
            region=region,
            node_class=node_class,
            created_by=created_by,
            expires_at=timezone.now() + ttl,
        )
        return token, secret

    @staticmethod
    def command_for(secret: str) -> str:
        """The command an operator runs on the new machine (shown once, with the secret)."""
        return (
            "python -m inference serve --models /var/lib/outpost/models "
            "--state-dir /var/lib/outpost/state --host 0.0.0.0 --port 8001 "
            "--advertise http://$(hostname -f):8001 "
            f"--console {settings.OUTPOST_PUBLIC_URL} --enroll {secret}"
        )

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        if self.expires_at <= timezone.now():
            return "expired"
        return "usable"
