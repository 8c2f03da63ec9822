import re

from django.contrib import admin
from django.db import models, transaction

from billing import audit
from billing.choices import AuditCategory
from billing.models import (
    ApiKey,
    AuditEntry,
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

# What an edit here changes, for the audit log (rows and their inlines alike).
AUDIT_CATEGORIES = {
    Tenant: AuditCategory.MONEY,  # budget, currency, jurisdiction, billing e-mail
    Membership: AuditCategory.ACCESS,
    ApiKey: AuditCategory.ACCESS,
    Price: AuditCategory.MONEY,
    LatencyBand: AuditCategory.MONEY,
    BandTerms: AuditCategory.MONEY,
    Subscription: AuditCategory.MONEY,
    FeatureBundle: AuditCategory.MONEY,
    FeatureBundlePrice: AuditCategory.MONEY,
    TaxRate: AuditCategory.MONEY,
}


def _stored(obj) -> dict | None:
    """The row as the database has it before the admin saves over it."""
    stored = type(obj)._base_manager.filter(pk=obj.pk).first() if obj.pk else None
    return audit.fields_of(stored) if stored is not None else None


def _audit_admin_edit(request, obj, verb: str, before, after, *, subject=None, tenant=None):
    if before == after:
        return
    # ApiKey → "api_key.changed", as the console's own actions name it.
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(obj).__name__).lower()
    audit.record(
        f"{name}.{verb}",
        category=AUDIT_CATEGORIES[type(obj)],
        actor=request.user,
        subject=subject or obj,
        before=before,
        after=after,
        tenant=tenant,
        note="in the admin",
    )


class AuditedAdmin(admin.ModelAdmin):
    """Edits in the admin are audited like the console's own actions ("membership.changed" by
    the signed-in operator, the row before and after). The admin saves and deletes inside a
    transaction (bulk deletes here too), so each entry commits with its change."""

    def save_model(self, request, obj, form, change):
        before = _stored(obj) if change else None
        super().save_model(request, obj, form, change)
        _audit_admin_edit(request, obj, "changed" if change else "created", before, _stored(obj))

    def delete_model(self, request, obj):
        subject, before = audit.subject_of(obj), audit.fields_of(obj)
        # A deleted tenant cannot be the entry's tenant; a row of one still names it.
        tenant = None if isinstance(obj, Tenant) else audit.tenant_of(obj, None)
        super().delete_model(request, obj)
        _audit_admin_edit(request, obj, "deleted", before, None, subject=subject, tenant=tenant)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def save_formset(self, request, form, formset, change):
        # The forms' instances hold the new values already: the old ones come from the rows.
        old = {
            id(f.instance): (audit.subject_of(f.instance), _stored(f.instance))
            for f in formset.forms
            if f.instance.pk
        }
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            _audit_admin_edit(request, obj, "created", None, _stored(obj))
        for obj, _fields in formset.changed_objects:
            _audit_admin_edit(request, obj, "changed", old[id(obj)][1], _stored(obj))
        for obj in formset.deleted_objects:
            subject, before = old[id(obj)]
            tenant = audit.tenant_of(obj, None)
            _audit_admin_edit(request, obj, "deleted", before, None, subject=subject, tenant=tenant)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin):
    list_display = ["name", "slug", "time_zone", "currency", "monthly_budget", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    # A webhook address typed without a scheme means https (Django 6's default already).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user", "tenant"]


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdmin):
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
class PriceAdmin(AuditedAdmin):
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
class LatencyBandAdmin(AuditedAdmin):
    list_display = ["name", "slug", "position"]
    inlines = [BandTermsInline]


@admin.register(Subscription)
class SubscriptionAdmin(AuditedAdmin):
    """Change a tenant's band with the portal's form (billing/plans.py: change_band), which
    ends the current subscription and starts the next; here for corrections."""

    list_display = ["tenant", "band", "starts_at", "ends_at"]
    list_filter = ["band"]
    list_select_related = ["tenant", "band"]


class FeatureBundlePriceInline(admin.TabularInline):
    model = FeatureBundlePrice
    extra = 0


@admin.register(FeatureBundle)
class FeatureBundleAdmin(AuditedAdmin):
    list_display = ["name", "slug", "features"]
    inlines = [FeatureBundlePriceInline]


@admin.register(TaxRate)
class TaxRateAdmin(AuditedAdmin):
    list_display = ["jurisdiction", "name", "rate", "effective_from"]
    list_filter = ["jurisdiction"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The audit log, read-only (the console's page at /audit/ filters and exports it)."""

    list_display = [
        "at",
        "actor_label",
        "actor_kind",
        "tenant",
        "category",
        "action",
        "subject_label",
    ]
    list_filter = ["category", "actor_kind"]
    list_select_related = ["tenant"]
    search_fields = ["action", "actor_label", "subject_label", "note"]
    date_hierarchy = "at"
