from django.contrib import admin

from billing.models import (
    ApiKey,
    BandTerms,
    FeatureBundle,
    FeatureBundlePrice,
    Invoice,
    LatencyBand,
    Membership,
    Price,
    QuarantinedUsage,
    SpendingAlert,
    StripeEvent,
    Subscription,
    TaxRate,
    Tenant,
    UsageBatch,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "time_zone", "currency", "monthly_budget", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # Keys are issued in the portal (the secret is shown once there); the admin can revoke.
    list_display = ["prefix", "name", "tenant", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["tenant"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "prefix",
        "secret_hash",
        "tenant",
        "created_by",
        "created_at",
        "last_used_at",
    ]
    search_fields = ["prefix", "name"]

    def has_add_permission(self, request):
        return False


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """Append-only: a price that has taken effect is view-only and cannot be deleted (the model
    refuses too); a scheduled one may be changed or withdrawn until its time comes."""

    list_display = [
        "grade",
        "serving",
        "currency",
        "per_1000",
        "effective_from",
        "created_by",
        "created_at",
    ]
    list_filter = ["grade", "serving", "currency"]
    list_select_related = ["created_by"]
    date_hierarchy = "effective_from"
    readonly_fields = ["created_by", "created_at"]

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.has_taken_effect():
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.has_taken_effect():
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        # "Delete selected" would meet rows in effect, which the queryset refuses as a whole.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Ledgers and what is derived from them: looked at, never edited here (usage, invoices
    and their history change only through ingest, rating and the invoice actions)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageBatch)
class UsageBatchAdmin(ReadOnlyAdmin):
    list_display = [
        "node_uid",
        "batch_seq",
        "region",
        "records_total",
        "accepted",
        "quarantined",
        "received_at",
    ]
    list_filter = ["region", "node_class"]
    search_fields = ["node_uid"]
    exclude = ["raw"]


@admin.register(QuarantinedUsage)
class QuarantinedUsageAdmin(ReadOnlyAdmin):
    """Records a node sent that were not counted, with why: an operator decides what to do."""

    list_display = ["node_uid", "tenant_slug", "minute", "reason", "received_at"]
    list_filter = ["tenant_slug", "node_uid"]
    search_fields = ["reason", "tenant_slug", "node_uid"]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "tenant",
        "year",
        "month",
        "status",
        "total",
        "currency",
        "stripe_status",
    ]
    list_filter = ["status", "currency", "year", "month"]
    list_select_related = ["tenant"]
    search_fields = ["number", "tenant__slug"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "object_id", "outcome", "received_at"]
    search_fields = ["event_id", "object_id"]


@admin.register(SpendingAlert)
class SpendingAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "tenant",
        "year",
        "month",
        "kind",
        "percent",
        "spend",
        "budget",
        "emailed_to",
        "webhook_result",
    ]
    list_filter = ["kind", "tenant"]


class BandTermsInline(admin.TabularInline):
    model = BandTerms
    extra = 0


@admin.register(LatencyBand)
class LatencyBandAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "position"]
    inlines = [BandTermsInline]


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Change a tenant's band with the portal's form (billing/plans.py: change_band), which
    ends the current subscription and starts the next; here for corrections."""

    list_display = ["tenant", "band", "starts_at", "ends_at"]
    list_filter = ["band"]
    list_select_related = ["tenant", "band"]


class FeatureBundlePriceInline(admin.TabularInline):
    model = FeatureBundlePrice
    extra = 0


@admin.register(FeatureBundle)
class FeatureBundleAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "features"]
    inlines = [FeatureBundlePriceInline]


@admin.register(TaxRate)
class TaxRateAdmin(admin.ModelAdmin):
    list_display = ["jurisdiction", "name", "rate", "effective_from"]
    list_filter = ["jurisdiction"]
