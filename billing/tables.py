import django_tables2 as tables
from django.utils import timezone
from django.utils.html import format_html

from billing.choices import PRICE_STATE_BADGE, PriceState
from billing.models import ApiKey, Price, Tenant, format_price


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


class PriceTable(tables.Table):
    """The price book's history. `current_ids` are the rows in effect now (the view has them
    already, for the grid), so a row's state costs no query."""

    grade = tables.Column()
    serving = tables.Column()
    per_1000 = tables.Column(verbose_name="Per 1,000", attrs={"td": {"class": "text-end"}})
    effective_from = tables.DateTimeColumn(verbose_name="Effective from (UTC)", format="Y-m-d H:i")
    state = tables.Column(empty_values=(), orderable=False, verbose_name="State")
    created_by = tables.Column(verbose_name="Set by", default="—")
    created_at = tables.DateTimeColumn(verbose_name="Set at (UTC)", format="Y-m-d H:i")
    note = tables.Column(default="")

    class Meta:
        model = Price
        fields = [
            "grade",
            "serving",
            "currency",
            "per_1000",
            "effective_from",
            "state",
            "created_by",
            "created_at",
            "note",
        ]
        attrs = {"class": "table table-sm align-middle"}
        empty_text = "No prices match."

    def __init__(self, *args, current_ids=frozenset(), now=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current_ids = current_ids
        self.now = now or timezone.now()

    def render_per_1000(self, value) -> str:
        return format_price(value)

    def render_state(self, record: Price) -> str:
        if record.pk in self.current_ids:
            state = PriceState.IN_EFFECT
        elif record.effective_from > self.now:
            state = PriceState.SCHEDULED
        else:
            state = PriceState.SUPERSEDED
        return format_html(
            '<span class="badge text-bg-{}">{}</span>', PRICE_STATE_BADGE[state], state.label
        )
