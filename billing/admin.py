from django.contrib import admin

from billing.models import ApiKey, Membership, Price, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "time_zone", "currency", "created_at"]
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
