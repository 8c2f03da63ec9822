from django.contrib import admin

from fleet.models import (
    AcceleratorPool,
    ComplianceFinding,
    ComplianceRun,
    Deployment,
    DeploymentEvent,
    EnrollmentToken,
    ExportClassification,
    ExportRule,
    FleetSettingChange,
    Model,
    ModelVersion,
    Node,
    NodeClass,
    NodeSample,
    NodeStatusChange,
    PolicyChange,
    Region,
    TenantPolicy,
)


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "jurisdiction", "residency_zone"]
    search_fields = ["code", "name"]


@admin.register(NodeClass)
class NodeClassAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "capex",
        "amortisation_months",
        "idle_watts",
        "peak_watts",
        "energy_price_per_kwh",
        "expected_utilisation",
        "memory_bytes",
        "has_gpu",
        "hourly_cost",
    ]
    # Thresholds change on /fleet/policies/, where every change is audited.
    readonly_fields = ["thermal_envelope_c", "cost_ceilings"]


class NodeStatusChangeInline(admin.TabularInline):
    model = NodeStatusChange
    extra = 0
    can_delete = False
    readonly_fields = ["old_status", "new_status", "at", "reason"]
    ordering = ["-at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "uid", "region", "node_class", "status", "last_heartbeat_at"]
    list_filter = ["region", "node_class", "status"]
    list_select_related = ["region", "node_class"]
    search_fields = ["name", "uid", "hostname"]
    readonly_fields = [
        "uid",
        "credential_hash",
        "enrolled_at",
        "status",
        "last_heartbeat_at",
        "last_report_healthy",
        "agent_version",
        "uptime_s",
        "cpu_load",
        "memory_pressure",
        "temperature_c",
        "queue_depth",
        "requests_total",
        "errors_total",
        "models_loaded",
        "bundle_revision",
        "bundle_problem",
        "temperature_simulated",
        # Set on the node page or with the API (Node.simulate_temperature), which audit it.
        "simulated_temperature_c",
    ]
    inlines = [NodeStatusChangeInline]


@admin.register(NodeStatusChange)
class NodeStatusChangeAdmin(admin.ModelAdmin):
    list_display = ["node", "old_status", "new_status", "at", "reason"]
    list_filter = ["new_status"]
    list_select_related = ["node"]

    def has_change_permission(self, request, obj=None):
        return False  # history is append-only


@admin.register(NodeSample)
class NodeSampleAdmin(admin.ModelAdmin):
    list_display = ["node", "at", "cpu_load", "memory_pressure", "temperature_c", "queue_depth"]
    list_filter = ["node"]
    list_select_related = ["node"]
    date_hierarchy = "at"

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    # Tokens are created in the console's enrollment page, where the secret is shown once.
    list_display = ["prefix", "node_name", "region", "node_class", "expires_at", "used_at", "node"]
    list_select_related = ["region", "node_class", "node"]
    readonly_fields = ["prefix", "secret_hash", "created_by", "created_at", "used_at", "node"]

    def has_add_permission(self, request):
        return False


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "export_classification", "created_at"]
    list_filter = ["owner", "export_classification"]
    list_select_related = ["owner", "export_classification"]
    search_fields = ["name", "description"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    # Versions are uploaded through the console or the API, never edited: the bytes are immutable.
    list_display = ["model", "version", "status", "grade", "node_class", "size_bytes", "created_at"]
    list_filter = ["status", "grade", "node_class"]
    list_select_related = ["model__owner", "node_class"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request):
        return False


class DeploymentEventInline(admin.TabularInline):
    model = DeploymentEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "from_state", "to_state", "step_index", "percent", "reason", "actor"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    # Deployments move through fleet.rollout_actions (history rows, gates); here they are read.
    list_display = ["pk", "version", "previous", "strategy", "state", "step_index", "created_at"]
    list_filter = ["state", "strategy"]
    list_select_related = ["version__model", "previous__model"]
    readonly_fields = [f.name for f in Deployment._meta.fields]
    inlines = [DeploymentEventInline]

    def has_add_permission(self, request):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Policies, pools and their histories are read here; they change on /fleet/policies/ and
    in the tenants' portal (fleet.policies), which validate and audit every change."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TenantPolicy)
class TenantPolicyAdmin(ReadOnlyAdmin):
    list_display = [
        "tenant",
        "privacy_mode",
        "fallback",
        "quality",
        "max_spend_per_session",
        "on_budget_exhausted",
        "fail_closed_after_s",
        "rate_limit_per_s",
        "residency_zone",
        "revision",
        "updated_at",
    ]
    list_filter = ["privacy_mode", "fallback", "quality", "on_budget_exhausted"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__slug", "tenant__name"]


@admin.register(PolicyChange)
class PolicyChangeAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "revision", "at", "actor_kind", "actor", "api_key_prefix", "summary"]
    list_filter = ["actor_kind"]
    list_select_related = ["tenant", "actor"]
    search_fields = ["tenant__slug", "summary"]
    date_hierarchy = "at"


@admin.register(AcceleratorPool)
class AcceleratorPoolAdmin(ReadOnlyAdmin):
    list_display = ["region", "name", "updated_at"]
    list_select_related = ["region"]


@admin.register(FleetSettingChange)
class FleetSettingChangeAdmin(ReadOnlyAdmin):
    list_display = ["at", "kind", "subject", "actor", "summary"]
    list_filter = ["kind"]
    list_select_related = ["actor"]


# --- export control and compliance ------------------------------------------------------------


class ExportRuleInline(admin.TabularInline):
    model = ExportRule
    extra = 1
    fields = ["jurisdiction", "effect", "note"]


@admin.register(ExportClassification)
class ExportClassificationAdmin(admin.ModelAdmin):
    """Classifications and their jurisdiction rules are data: a change here makes the
    compliance checks run again (fleet.signals)."""

    list_display = ["code", "name"]
    search_fields = ["code", "name", "description"]
    inlines = [ExportRuleInline]


@admin.register(ExportRule)
class ExportRuleAdmin(admin.ModelAdmin):
    list_display = ["classification", "jurisdiction", "effect", "note"]
    list_filter = ["effect", "classification"]
    list_select_related = ["classification"]
    search_fields = ["jurisdiction", "note", "classification__code"]


@admin.register(ComplianceRun)
class ComplianceRunAdmin(ReadOnlyAdmin):
    """Runs and findings are written by fleet.compliance_actions.run_checks only."""

    list_display = [
        "started_at",
        "trigger",
        "reason",
        "checks_run",
        "open_count",
        "opened_count",
        "resolved_count",
    ]
    list_filter = ["trigger"]
    date_hierarchy = "started_at"


@admin.register(ComplianceFinding)
class ComplianceFindingAdmin(ReadOnlyAdmin):
    list_display = [
        "check_id",
        "severity",
        "subject",
        "tenant",
        "region",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
    ]
    list_filter = ["severity", "check_id"]
    list_select_related = ["tenant"]
    search_fields = ["subject", "message", "subject_key"]
