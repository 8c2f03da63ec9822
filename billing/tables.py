import django_tables2 as tables

from billing.models import ApiKey, Tenant


class ApiKeyTable(tables.Table):
    prefix = tables.TemplateColumn("<code>{{ value }}…</code>", verbose_name="Key")
    last_used_at = tables.DateTimeColumn(verbose_name="Last used", default="never")
    revoked_at = tables.DateTimeColumn(verbose_name="Revoked", default="—")
    actions = tables.TemplateColumn(
        template_name="portal/_api_key_actions.html", verbose_name="", orderable=False
    )

    class Meta:
        model = ApiKey
        fields = ["name", "prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No API keys yet."


class TenantTable(tables.Table):
    name = tables.Column(verbose_name="Tenant")
    slug = tables.TemplateColumn("<code>{{ value }}</code>")
    members = tables.Column(verbose_name="Members")
    active_keys = tables.Column(verbose_name="Active API keys")

    class Meta:
        model = Tenant
        fields = ["name", "slug", "currency", "time_zone", "members", "active_keys", "created_at"]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No tenants match."
