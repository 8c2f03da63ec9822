"""The tenant's SLO page in the portal, /portal/<tenant>/slo/: per model over a window,
latency percentiles against the band's target, errors, where requests were served, offload
reasons and tokenisation, charted and tabled from the same report the API answers
(fleet/tenant_slo.py). The live part refreshes with htmx, like the node page.

tenant_member_required resolves the tenant through the member's own memberships, so another
tenant's page is a 404; every number comes from the member's tenant's ledger.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django import forms
from django.contrib.humanize.templatetags.humanize import intcomma
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django_tables2 import Column, Table

from billing.models import Membership, Tenant, UsageHourly
from billing.roles import tenant_member_required
from fleet.charts import figure_json
from fleet.observability.frames import RANGES
from fleet.slo_charts import SLO_CHART_TITLES, slo_figures
from fleet.tables import TEMPLATE
from fleet.tenant_slo import DEFAULT_WINDOW, WINDOWS, ModelSlo, TenantSlo, tenant_slo
from fleet.views import render_live

# The model filter offers the models the tenant used over the longest window.
MODEL_CHOICES_SPAN = RANGES[WINDOWS[-1]][0]


class SloFilterForm(forms.Form):
    """?window=24h&model=acme.sentiment; an invalid choice is reported and ignored."""

    window = forms.ChoiceField(choices=[(w, w) for w in WINDOWS], required=False)
    model = forms.ChoiceField(required=False, label="Model")

    def __init__(self, data, *, models: list[str]) -> None:
        super().__init__(data)
        self.fields["model"].choices = [("", "All models"), *((m, m) for m in models)]
        for field in self.fields.values():
            field.widget.attrs["class"] = "form-select"

    def chosen(self, name: str, default: str) -> str:
        if self.is_valid():
            return self.cleaned_data[name] or default
        return default if name in self.errors else (self.data.get(name) or default)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.3g} ms"


def _p95(row: ModelSlo) -> str:
    if row.p95_ms is None:
        return "—"
    if row.meets_p95_target is None:
        return _ms(row.p95_ms)
    colour, word = ("success", "met") if row.meets_p95_target else ("danger", "missed")
    return format_html(
        '<span class="text-{}" title="target {}">{}</span>', colour, word, _ms(row.p95_ms)
    )


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in reasons.items()) or "—"


def _joules(value: float | None) -> str:
    return "—" if value is None else f"{value:,.3g} J"


NUMBER_ATTRS = {
    "th": {"class": "num text-end"},
    "td": {"class": "num text-end"},
    "tf": {"class": "num text-end fw-semibold"},
}


class SloColumn(Column):
    """One number of a model's row, shown by `show` (given the whole row when `row`); its
    footer is the same number of the totals, shown the same way."""

    def __init__(self, verbose_name: str, show=intcomma, *, row: bool = False, number=True):
        self.show, self.row = show, row
        super().__init__(
            verbose_name=verbose_name,
            attrs=NUMBER_ATTRS if number else {"tf": {"class": "fw-semibold"}},
            empty_values=(),  # `show` says what no value means ("—")
            footer=self.footer_of,
        )

    def render(self, value, record):
        return self.show(record if self.row else value)

    def footer_of(self, table: ModelSloTable, bound_column) -> str:
        total = table.total
        return self.show(total if self.row else getattr(total, bound_column.name))


class ModelSloTable(Table):
    """The per-model numbers of the API's `models`, with the API's `total` as the footer."""

    model = Column(
        verbose_name="Model", footer="All models", attrs={"tf": {"class": "fw-semibold"}}
    )
    requests = SloColumn("Requests")
    error_rate = SloColumn("Error rate", _share)
    p50_ms = SloColumn("p50", _ms)
    p95_ms = SloColumn("p95", _p95, row=True)
    p99_ms = SloColumn("p99", _ms)
    local = SloColumn("Local")
    regional = SloColumn("Regional")
    offload_reasons = SloColumn("Offload reasons", _reasons, number=False)
    tokenised = SloColumn("Tokenised")
    energy_per_inference_j = SloColumn("Energy / inference", _joules)

    class Meta:
        template_name = TEMPLATE
        orderable = False
        attrs = {"class": "table table-sm align-middle mb-0"}
        empty_text = "No requests in this window."

    def __init__(self, report: TenantSlo) -> None:
        super().__init__(report.models)
        self.total = report.total

    def render_model(self, value: str) -> str:
        return format_html("<code>{}</code>", value)


@tenant_member_required
def portal_slo(request: HttpRequest, membership: Membership) -> HttpResponse:
    tenant = membership.tenant
    now = timezone.now()
    form = SloFilterForm(request.GET, models=models_used(tenant, now))
    window = form.chosen("window", DEFAULT_WINDOW)
    model = form.chosen("model", "")
    report = tenant_slo(tenant, window, (model,) if model else (), now=now)
    context = {
        "membership": membership,
        "tenant": tenant,
        # console/_filter_fields.html lays out `filter.form`, as for the django-filter lists.
        "filter": {"form": form},
        "window": window,
        "windows": WINDOWS,
        "model": model,
        "report": report,
        "error_rate": _share(report.total.error_rate),
        "slower_share": _share(report.total.slower_than_target),
        "step": step_label(report.scope.step),
        "table": ModelSloTable(report),
        "chart_titles": SLO_CHART_TITLES,
        "charts": {name: figure_json(fig) for name, fig in slo_figures(report).items()},
    }
    return render_live(request, "portal/slo.html", "portal/_slo_live.html", context)


def step_label(step: timedelta) -> str:
    """A window's step as the chart titles say it: "1 min", "15 min", "6 h"."""
    minutes = int(step.total_seconds()) // 60
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def models_used(tenant: Tenant, now: datetime) -> list[str]:
    """The models the tenant used in the longest window, for the filter (one query)."""
    return list(
        UsageHourly.objects.of(tenant, now - MODEL_CHOICES_SPAN, now)
        .order_by("model")
        .values_list("model", flat=True)
        .distinct()
    )
