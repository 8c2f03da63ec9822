"""The operators' observability dashboards under /fleet/observability/: the SLO burn-rate view
(the landing page), latency, resources and routing.

Every chart reads the metrics interface (fleet/observability): from Prometheus when
PROMETHEUS_URL is set and the question has no tenant in it, else from the console's rollups
and heartbeat samples; each card says which answered, and why when Prometheus failed. Every
page takes the same GET filters (range, group-by, model, tenant, region, node class); a bad
value is answered 400 with the form saying what is wrong. Pages refresh with htmx like the
node page (the same view answers a poll with its live partial) and run a fixed number of
queries whatever the number of models, tenants or nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from billing.models import Tenant
from billing.roles import operator_required
from fleet import dashboard_charts as charts
from fleet.charts import figure_json
from fleet.choices import NodeClassKind
from fleet.dashboard_data import (
    REASONS,
    drift_rows,
    offload_series,
    routing_split,
    shown,
    thermal_offloads,
    thermal_table,
)
from fleet.drift_actions import drift_settings
from fleet.models import Model, Region
from fleet.observability import Answer, backend_for, gauge, usage
from fleet.observability import slo as slo_math
from fleet.observability.frames import DEFAULT_RANGE, RANGES, Frame, Scope
from fleet.views import render_live

DIMENSION_LABELS = {
    "model": "Model",
    "tenant": "Tenant",
    "region": "Region",
    "node_class": "Node class",
    "node": "Node",
    "all": "Everything",
}
# The group-by choices of each page (the first is the default). Node gauges know regions,
# classes and nodes; usage knows models, tenants, regions and classes.
PAGE_GROUPS = {
    "slo": ("model", "tenant", "region", "node_class", "all"),
    "latency": ("model", "tenant", "region", "node_class", "all"),
    "resources": ("region", "node_class", "node"),
    "routing": ("region", "node_class", "model", "tenant", "all"),
}
SOURCES = {"rollups": "the console's rollups", "prometheus": "Prometheus"}
GAUGE_SOURCES = {"rollups": "heartbeat samples", "prometheus": "Prometheus"}


class DashboardFilterForm(forms.Form):
    """The dashboards' filters, in the address (?range=24h&by=tenant&region=eu-west) so that a
    filtered view can be shared. Choices come from the registry and accounts (three queries)."""

    range = forms.ChoiceField(choices=[(key, key) for key in RANGES], required=False)
    by = forms.ChoiceField(required=False, label="Group by")
    model = forms.ChoiceField(required=False)
    tenant = forms.ChoiceField(required=False)
    region = forms.ChoiceField(required=False)
    node_class = forms.ChoiceField(required=False, label="Node class")

    def __init__(self, data, *, page: str) -> None:
        super().__init__(data)
        self.groups = PAGE_GROUPS[page]
        self.fields["by"].choices = [(key, DIMENSION_LABELS[key]) for key in self.groups]
        models = sorted(m.served_name for m in Model.objects.select_related("owner"))
        self.fields["model"].choices = [("", "All models"), *((n, n) for n in models)]
        self.fields["tenant"].choices = [
            ("", "All tenants"),
            *Tenant.objects.order_by("slug").values_list("slug", "slug"),
        ]
        self.fields["region"].choices = [
            ("", "All regions"),
            *Region.objects.order_by("code").values_list("code", "code"),
        ]
        self.fields["node_class"].choices = [("", "All classes"), *NodeClassKind.choices]
        for field in self.fields.values():
            field.widget.attrs["class"] = "form-select form-select-sm"

    def value(self, name: str, default: str = "") -> str:
        return (self.cleaned_data.get(name) or default) if self.is_valid() else default

    @property
    def range_key(self) -> str:
        return self.value("range", DEFAULT_RANGE)

    @property
    def group_by(self) -> str:
        return self.value("by", self.groups[0])

    @property
    def filters(self) -> dict[str, tuple[str, ...]]:
        """The Scope filters: a tuple per dimension, empty for all."""

        def one(name: str) -> tuple[str, ...]:
            value = self.value(name)
            return (value,) if value else ()

        return {
            "models": one("model"),
            "tenants": one("tenant"),
            "regions": one("region"),
            "node_classes": one("node_class"),
        }

    def scope(self, now: datetime, by: str) -> Scope:
        return Scope.last(self.range_key, now=now, by=by, **self.filters)


@dataclass(frozen=True)
class Chart:
    """A card of a dashboard: its title, the figure's JSON and where the numbers came from."""

    name: str
    title: str
    figure: str
    source: str
    notice: str = ""
    wide: bool = False
    # False for a chart of the latest state (drift), which the range does not change.
    ranged: bool = True


def usage_source(answer: Answer) -> tuple[str, str]:
    return SOURCES.get(answer.frame.backend, answer.frame.backend), answer.notice


def gauge_source(scope: Scope, notice: str) -> tuple[str, str]:
    # gauge() falls back to the heartbeat samples when Prometheus fails, and says so.
    name = "rollups" if notice else backend_for(scope).name
    return GAUGE_SOURCES.get(name, name), notice


TABS = (
    ("slo", "SLO burn rate", "observability:slo"),
    ("latency", "Latency", "observability:latency"),
    ("resources", "Resources", "observability:resources"),
    ("routing", "Routing", "observability:routing"),
)
# The filters a tab link keeps (group-by choices differ from page to page).
KEPT_ACROSS_TABS = ("range", "model", "tenant", "region", "node_class")


def _page(
    request: HttpRequest, page: str, form: DashboardFilterForm, context: dict
) -> HttpResponse:
    kept = {name: form.cleaned_data[name] for name in KEPT_ACROSS_TABS if form.cleaned_data[name]}
    context = {
        "page": page,
        "form": form,
        "range": form.range_key,
        "tabs": TABS,
        "tab_query": urlencode(kept),
        **context,
    }
    return render_live(
        request,
        f"fleet/observability/{page}.html",
        f"fleet/observability/_{page}_live.html",
        context,
    )


def _refused(request: HttpRequest, page: str, form: DashboardFilterForm) -> HttpResponse:
    """A bad filter: the page with the form's errors and no charts, answered 400."""
    for name in form.errors:
        if name in form.fields:
            form.fields[name].widget.attrs["class"] += " is-invalid"
    return render(
        request,
        f"fleet/observability/{page}.html",
        {"page": page, "form": form, "tabs": TABS, "refused": True},
        status=400,
    )


# --- the SLO view -----------------------------------------------------------------------------


@operator_required
def slo(request: HttpRequest) -> HttpResponse:
    """Which bands are at risk this month: the burn-rate table per band and tenant, and p95
    per model (or the chosen group) against every band's target."""
    form = DashboardFilterForm(request.GET, page="slo")
    if not form.is_valid():
        return _refused(request, "slo", form)
    now = timezone.now()
    report = slo_math.load(now, **form.filters)
    answer = usage(form.scope(now, form.group_by))
    targets = [
        charts.Target(f"{band.band.name} p95 {target:g} ms", target)
        for band in report.bands
        for target in band.band.targets_ms
    ]
    source, notice = usage_source(answer)
    p95 = Chart(
        "p95",
        f"p95 per {DIMENSION_LABELS[form.group_by].lower()} against the bands' targets",
        figure_json(charts.percentile_figure(answer.frame, 0.95, targets=targets, height=360)),
        source,
        notice,
        wide=True,
    )
    return _page(
        request,
        "slo",
        form,
        {
            "report": report,
            "bands": [band_rows(band) for band in report.bands],
            "burn_source": SOURCES.get(report.backend, report.backend),
            "month_days": report.clock.period.days,
            "charts": [p95],
            "thresholds": {
                "fast": f"{slo_math.FAST_BURN:g}",
                "slow": f"{slo_math.SLOW_BURN:g}",
                "min_answers": slo_math.MIN_ANSWERS,
            },
        },
    )


def band_rows(band: slo_math.BandBurn) -> dict:
    """A band's row and its tenants' rows of the burn-rate table, formatted."""
    targets = ", ".join(f"{t:g}" for t in band.band.targets_ms)
    return {
        "band": band.band,
        "row": burn_row(band.burn, f"{targets} ms" if targets else "—"),
        "summary": band.tenant_summary,
        "tenants": [
            {"tenant": t.tenant, **burn_row(t.burn, f"{t.tenant.target_ms:g} ms")}
            for t in band.tenants
        ],
    }


def burn_row(burn: slo_math.Burn, target: str) -> dict:
    return {
        "burn": burn,
        "target": target,
        "answers": f"{burn.month.answers:,.0f}",
        "p95": shown(burn.p95_ms, "{:.3g} ms"),
        "consumed": shown(burn.consumed, "{:.0%}"),
        "projected": shown(burn.projected, "{:.0%}"),
        "burn_1h": _burn_text(burn.burn_1h, burn.last_1h),
        "burn_6h": _burn_text(burn.burn_6h, burn.last_6h),
        "fast": burn.fast_burn,
        "slow": burn.slow_burn,
    }


def _burn_text(rate: float | None, window: slo_math.Tally) -> str:
    if rate is None:
        return "—"
    text = f"{rate:.1f}×"
    return text if window.judged else f"{text} (only {window.answers:,.0f} answers)"


# --- latency ------------------------------------------------------------------------------------


@operator_required
def latency(request: HttpRequest) -> HttpResponse:
    """p50/p95/p99 per group over time, tail errors and requests, with a summary per group."""
    form = DashboardFilterForm(request.GET, page="latency")
    if not form.is_valid():
        return _refused(request, "latency", form)
    now = timezone.now()
    answer = usage(form.scope(now, form.group_by))
    frame = answer.frame
    source, notice = usage_source(answer)
    group = DIMENSION_LABELS[form.group_by].lower()
    chart_list = [
        Chart(
            name,
            f"{name} latency per {group}",
            figure_json(charts.percentile_figure(frame, q)),
            source,
            notice,
        )
        for name, q in charts.PERCENTILES
    ]
    chart_list += [
        Chart(
            "errors",
            f"Tail errors: error rate per {group}",
            figure_json(charts.error_rate_figure(frame)),
            source,
            notice,
        ),
    ]
    return _page(
        request,
        "latency",
        form,
        {
            "charts": chart_list,
            "summary": latency_summary(frame),
            "group": DIMENSION_LABELS[form.group_by],
            "requests_chart": Chart(
                "requests",
                f"Requests per {group}",
                figure_json(charts.requests_figure(frame)),
                source,
                notice,
            ),
        },
    )


def latency_summary(frame: Frame) -> list[dict]:
    """Each group over the whole range: requests, percentiles and error rate, busiest first."""
    rows = []
    for key in frame.keys():
        total = frame.total(key)
        rows.append(
            {
                "key": key,
                "requests": f"{total.requests:,.0f}",
                **{
                    name: shown(_ms(total.quantile(q)), "{:.3g} ms")
                    for name, q in charts.PERCENTILES
                },
                "error_rate": shown(total.error_rate, "{:.2%}"),
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# --- resources ----------------------------------------------------------------------------------


@operator_required
def resources(request: HttpRequest) -> HttpResponse:
    """Memory pressure per group, energy per inference per node class and model, temperature
    per node against its class's envelope with the predicted throttling, thermal offloads."""
    form = DashboardFilterForm(request.GET, page="resources")
    if not form.is_valid():
        return _refused(request, "resources", form)
    now = timezone.now()
    scope = form.scope(now, "node_class")
    window = (scope.start, scope.end)

    memory, memory_notice = gauge(scope, "memory_pressure", form.group_by)
    temperatures, temperature_notice = gauge(scope, "temperature", "node")
    thermal = thermal_table(scope, now)
    # The hottest nodes first (throttling, then the soonest to), as many as a chart holds.
    order = {row["node"].name: i for i, row in enumerate(thermal)}
    temperatures = dict(
        sorted(temperatures.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    )
    shown = list(temperatures)[: charts.MAX_LINES]
    envelopes = sorted(
        {
            (row["node"].node_class.name, row["forecast"].envelope_c)
            for row in thermal
            if row["node"].name in shown and row["forecast"].envelope_c is not None
        }
    )
    by_class = usage(scope)
    by_model = usage(Scope.last(form.range_key, now=now, by="model", **form.filters))
    offloads = thermal_offloads(scope)

    label = DIMENSION_LABELS[form.group_by].lower()
    chart_list = [
        Chart(
            "memory",
            f"Memory pressure per {label}",
            figure_json(
                charts.gauge_figure(
                    memory, window=window, y_title="memory in use", y_format=".0%", y_range=(0, 1)
                )
            ),
            *gauge_source(scope, memory_notice),
        ),
        Chart(
            "temperature",
            "Temperature per node, against its class's thermal envelope",
            figure_json(
                charts.gauge_figure(
                    temperatures,
                    window=window,
                    y_title="°C",
                    y_format=".0f",
                    targets=[
                        charts.Target(f"{name} envelope {value:g} °C", value)
                        for name, value in envelopes
                    ],
                    unit="°C",
                )
            ),
            *gauge_source(scope, temperature_notice),
        ),
        Chart(
            "energy-class",
            "Energy per inference per node class",
            figure_json(charts.energy_figure(by_class.frame)),
            *usage_source(by_class),
        ),
        Chart(
            "energy-model",
            "Energy per inference per model",
            figure_json(charts.energy_figure(by_model.frame)),
            *usage_source(by_model),
        ),
        Chart(
            "thermal-offloads",
            "Thermal offloads per region (counted by the pool node that served them)",
            figure_json(charts.counts_figure(offloads, window=window, step=scope.step)),
            SOURCES["rollups"],
            wide=True,
        ),
    ]
    return _page(
        request,
        "resources",
        form,
        {
            "charts": chart_list,
            "thermal": thermal,
            "energy": energy_summary(by_class.frame),
            "forecast_window": int(charts.FORECAST_WINDOW.total_seconds() // 60),
        },
    )


def energy_summary(frame: Frame) -> list[dict]:
    rows = []
    for key in frame.keys():
        total = frame.total(key)
        rows.append(
            {
                "key": key,
                "requests": f"{total.requests:,.0f}",
                "energy": shown(total.energy_j, "{:,.1f} J"),
                "per_inference": shown(total.energy_per_inference_j, "{:.3g} J"),
            }
        )
    return rows


# --- routing ------------------------------------------------------------------------------------


@operator_required
def routing(request: HttpRequest) -> HttpResponse:
    """Offload rates and reasons over time and per group, and drift per model version."""
    form = DashboardFilterForm(request.GET, page="routing")
    if not form.is_valid():
        return _refused(request, "routing", form)
    now = timezone.now()
    scope = form.scope(now, form.group_by)
    window = (scope.start, scope.end)
    reasons, rates = offload_series(scope)
    label = DIMENSION_LABELS[form.group_by].lower()
    cfg = drift_settings()
    versions, alerts = drift_rows(scope, form.filters["models"])
    chart_list = [
        Chart(
            "offload-reasons",
            "Regional answers per offload reason",
            figure_json(
                charts.counts_figure(
                    reasons, window=window, step=scope.step, colours=charts.REASON_COLOURS
                )
            ),
            SOURCES["rollups"],
        ),
        Chart(
            "offload-rate",
            f"Offload rate per {label} (share of requests served regionally)",
            figure_json(
                charts.gauge_figure(
                    rates, window=window, y_title="served regionally", y_format=".0%"
                )
            ),
            SOURCES["rollups"],
        ),
        Chart(
            "drift",
            "Drift per model version (latest PSI against its baseline)",
            figure_json(
                charts.drift_versions_figure(
                    [(row["label"], row["version"].drift_psi, row["alerted"]) for row in versions],
                    cfg.threshold,
                )
            ),
            "the drift check (fleet.drift_actions)",
            wide=True,
            ranged=False,
        ),
    ]
    return _page(
        request,
        "routing",
        form,
        {
            "charts": chart_list,
            "split": routing_split(scope),
            "group": DIMENSION_LABELS[form.group_by],
            "reasons": REASONS,
            "versions": versions,
            "alerts": alerts,
            "drift_threshold": cfg.threshold,
        },
    )
