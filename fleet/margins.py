"""Revenue and margin by node class and month: what each kind of machine earned against what
it cost to own and run.

Billing invoices tenants, not machines, so revenue has to be attributed. The rule:

- Revenue is what the month's invoices charge before tax (tax is owed to the state, not
  earned): invoices whose own month is (year, month) — the tenant's calendar month — that
  were finalised, paid or uncollectible (drafts on request; void never).
- Each invoice line is shared out among node classes by the inferences each class served the
  tenant in that invoice's period (from `UsageHourly`, whose `node_class` is the class of the
  node that served, locally or regionally — DESIGN §4, billed by the node that served it):
  - a line that names what it prices (usage, overage, regional usage, quality credit, and
    late-usage adjustments: a grade, a serving and an offload reason) by the inferences of
    exactly that grade, serving and reason;
  - every other line (band fee, add-ons, SLA credit, a manual adjustment), and a priced line
    whose usage is not in this month (late usage of an earlier month), by all the invoice's
    inferences: a commitment fee pays for the capacity the tenant used, in proportion;
  - an invoice with no inferences at all (a band fee and nothing served) stays
    **unattributed**, shown as its own row rather than spread arbitrarily.
  Shares are exact; each currency's class revenues are rounded once, to the minor unit, by
  largest remainder, so they add up to the invoices' subtotals to the cent.
- Cost is the cost model (fleet/costs.py): the class's `hourly_cost` (amortised capex plus
  energy at the expected utilisation) × node-hours in the **UTC** month, a node counting from
  its enrolment (a node enrolled on the 16th counts half of a 30-day month). The energy the
  nodes *measured* (`UsageHourly.energy_j`, kWh × the class's energy price) is shown beside
  it, not added: the hourly cost already prices energy, the measurement is a check on it.
- Currency: a class's costs are in its own currency (`NodeClass.currency`); invoices are in
  their tenants'. There are no exchange rates here, so the report has one section per
  currency. A class's cost is shared among the sections by the inferences it served to each
  currency's invoices (all of it to its own currency if it served none); a share in another
  currency than the class's is listed as not compared, and that section's margin is left
  empty rather than flattered.

Invoices are tenants' months and costs are UTC months: for a Berlin tenant the two are an
hour apart at each end, which the report accepts rather than rating hours twice.

`margin_report` runs a fixed number of queries (five) however many tenants, invoices or
nodes there are; the arithmetic is `build_report`, a pure function over plain rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext
from typing import TypeVar

from django.db.models import F, Sum

from billing.choices import InvoiceStatus
from billing.currencies import minor_unit
from billing.models import InvoiceLine, UsageHourly
from billing.rating import month_bounds
from fleet import costs as cost_models
from fleet.models import Node, NodeClass

# Invoices whose charges count as revenue; drafts only when asked (the month in progress).
INVOICED = (InvoiceStatus.FINALISED, InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE)
_J_PER_KWH = Decimal(3_600_000)
_HOUR_S = Decimal(3600)
_PERCENT_PLACES = Decimal("0.1")
K = TypeVar("K")
# Exact enough for any share of any amount: shares are rounded once, per currency.
_PRECISION = 50


# --- inputs: plain rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargedLine:
    """An invoice's charges for one (grade, serving, reason), summed; empty strings for
    lines that name none (fees, credits of the whole invoice)."""

    invoice_id: int
    currency: str
    grade: str
    serving: str
    reason: str
    amount: Decimal


@dataclass(frozen=True)
class Served:
    """Inferences one node class served an invoice's tenant during the invoice's period."""

    invoice_id: int
    currency: str
    node_class: str
    grade: str
    served_by: str
    offload_reason: str
    count: int


@dataclass(frozen=True)
class ClassCostModel:
    name: str
    currency: str
    capital_per_hour: Decimal
    energy_per_hour: Decimal
    energy_price_per_kwh: Decimal

    @property
    def hourly_cost(self) -> Decimal:
        return self.capital_per_hour + self.energy_per_hour


# --- outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassCost:
    """One node class's month in its own currency."""

    node_class: str
    currency: str
    nodes: int
    node_hours: Decimal
    hourly_cost: Decimal
    capital_cost: Decimal
    energy_cost: Decimal  # modelled: at the expected utilisation
    cost: Decimal  # capital_cost + energy_cost, rounded once
    inferences: int  # everything the class served in the UTC month, invoiced or not
    measured_energy_kwh: Decimal
    measured_energy_cost: Decimal


@dataclass(frozen=True)
class ClassMargin:
    """One node class in one currency's section. `cost` is None when the class's costs are in
    another currency (then `uncompared_cost` holds the share, in `cost_currency`) or the class
    is no longer in the fleet (`cost_currency` empty)."""

    node_class: str
    currency: str
    inferences: int  # served to this currency's invoiced tenants, in their periods
    revenue: Decimal
    cost: Decimal | None
    cost_currency: str
    uncompared_cost: Decimal | None
    margin: Decimal | None
    margin_percent: Decimal | None


@dataclass(frozen=True)
class CurrencyMargins:
    currency: str
    rows: tuple[ClassMargin, ...]
    unattributed: Decimal  # revenue of invoices with no inferences
    revenue: Decimal  # the rows' revenue plus the unattributed: the invoices' subtotal
    cost: Decimal  # the costs compared (in this currency)
    margin: Decimal | None  # None when a cost share could not be compared
    margin_percent: Decimal | None
    invoices: int
    uncompared: tuple[ClassMargin, ...]  # rows whose cost share is in another currency


@dataclass(frozen=True)
class MarginReport:
    year: int
    month: int
    start: datetime
    end: datetime
    hours: Decimal
    include_drafts: bool
    sections: tuple[CurrencyMargins, ...]
    costs: tuple[ClassCost, ...]
    notes: tuple[str, ...]

    def section(self, currency: str) -> CurrencyMargins | None:
        return next((s for s in self.sections if s.currency == currency), None)

    def cost_of(self, node_class: str) -> ClassCost | None:
        return next((c for c in self.costs if c.node_class == node_class), None)


# --- the report --------------------------------------------------------------------------------


def margin_report(year: int, month: int, *, include_drafts: bool = False) -> MarginReport:
    """Revenue, cost and margin per node class for the UTC month (year, month), per currency.
    Five queries, whatever the number of tenants, invoices and nodes."""
    start, end = month_bounds(year, month, "UTC")
    statuses = [*INVOICED, InvoiceStatus.DRAFT] if include_drafts else list(INVOICED)
    classes = list(NodeClass.objects.all())
    names = {c.pk: c.name for c in classes}
    enrolled = [
        (names[class_id], at)
        for class_id, at in Node.objects.filter(enrolled_at__lt=end).values_list(
            "node_class_id", "enrolled_at"
        )
    ]
    charged = [
        ChargedLine(
            row["invoice_id"],
            row["invoice__currency"],
            row["grade"],
            row["serving"],
            row["reason"],
            row["amount"],
        )
        for row in InvoiceLine.objects.filter(
            invoice__year=year, invoice__month=month, invoice__status__in=statuses
        )
        .exclude(kind="tax")
        .values("invoice_id", "invoice__currency", "grade", "serving", "reason")
        .annotate(amount=Sum("amount"))
        .order_by()
    ]
    # One join to the invoices (all in one filter(): the period bounds are the same invoice's).
    served = [
        Served(
            row["tenant__invoices__id"],
            row["tenant__invoices__currency"],
            row["node_class"],
            row["grade"],
            row["served_by"],
            row["offload_reason"],
            row["n"],
        )
        for row in UsageHourly.objects.filter(
            tenant__invoices__year=year,
            tenant__invoices__month=month,
            tenant__invoices__status__in=statuses,
            hour__gte=F("tenant__invoices__period_start"),
            hour__lt=F("tenant__invoices__period_end"),
        )
        .values(
            "tenant__invoices__id",
            "tenant__invoices__currency",
            "node_class",
            "grade",
            "served_by",
            "offload_reason",
        )
        .annotate(n=Sum("count"))
        .order_by()
    ]
    measured = {
        row["node_class"]: (row["n"] or 0, row["energy"] or 0.0)
        for row in UsageHourly.objects.filter(hour__gte=start, hour__lt=end)
        .values("node_class")
        .annotate(n=Sum("count"), energy=Sum("energy_j"))
        .order_by()
    }
    return build_report(
        year,
        month,
        start=start,
        end=end,
        include_drafts=include_drafts,
        classes=[_cost_model(c) for c in classes],
        enrolled=enrolled,
        charged=charged,
        served=served,
        measured=measured,
    )


def _cost_model(node_class: NodeClass) -> ClassCostModel:
    """The class's hourly cost split into its capital and energy parts."""
    model = node_class.cost_model
    energy = (
        cost_models.watts_at(model, model.expected_utilisation) / 1000 * model.energy_price_per_kwh
    )
    return ClassCostModel(
        name=node_class.name,
        currency=node_class.currency,
        capital_per_hour=cost_models.hourly_cost(model) - energy,
        energy_per_hour=energy,
        energy_price_per_kwh=model.energy_price_per_kwh,
    )


def build_report(
    year: int,
    month: int,
    *,
    start: datetime,
    end: datetime,
    include_drafts: bool,
    classes: Iterable[ClassCostModel],
    enrolled: Iterable[tuple[str, datetime]],
    charged: Iterable[ChargedLine],
    served: Iterable[Served],
    measured: Mapping[str, tuple[int, float]],
) -> MarginReport:
    """The report from plain rows (see the module docstring for the rules)."""
    with localcontext() as context:
        context.prec = _PRECISION
        models = {c.name: c for c in classes}
        charged, served = list(charged), list(served)
        costs = _class_costs(models, enrolled, measured, start, end)
        revenue, unattributed = _attribute(charged, served)
        # currency → node class → inferences served to that currency's invoices
        invoiced: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for row in served:
            invoiced[row.currency][row.node_class] += row.count
        cost_shares = _share_costs(costs, invoiced)
        currencies = sorted(set(revenue) | set(unattributed) | set(cost_shares))
        notes = []
        sections = []
        for currency in currencies:
            invoices = len({x.invoice_id for x in charged if x.currency == currency})
            sections.append(
                _section(
                    currency,
                    revenue.get(currency, {}),
                    unattributed.get(currency, Decimal(0)),
                    cost_shares.get(currency, {}),
                    invoiced.get(currency, {}),
                    models,
                    invoices,
                )
            )
        for section in sections:
            for row in section.uncompared:
                notes.append(
                    f"{row.node_class}'s costs are in {row.cost_currency}: its share "
                    f"({row.uncompared_cost} {row.cost_currency}) is not compared with "
                    f"{section.currency} revenue, so the {section.currency} margin is not given"
                )
            for row in section.rows:
                if not row.cost_currency:
                    notes.append(
                        f"{row.node_class} served {section.currency} invoices but is no longer "
                        "a node class of the fleet: its cost is unknown"
                    )
            if section.unattributed:
                notes.append(
                    f"{section.unattributed} {section.currency} was invoiced to tenants with "
                    "no inferences this month and is not attributed to a node class"
                )
        return MarginReport(
            year=year,
            month=month,
            start=start,
            end=end,
            hours=_hours(end - start),
            include_drafts=include_drafts,
            sections=tuple(sections),
            costs=tuple(costs.values()),
            notes=tuple(notes),
        )


def _hours(span: timedelta) -> Decimal:
    return Decimal(int(span.total_seconds())) / _HOUR_S


def _class_costs(
    models: Mapping[str, ClassCostModel],
    enrolled: Iterable[tuple[str, datetime]],
    measured: Mapping[str, tuple[int, float]],
    start: datetime,
    end: datetime,
) -> dict[str, ClassCost]:
    nodes: dict[str, int] = defaultdict(int)
    node_hours: dict[str, Decimal] = defaultdict(Decimal)
    for name, at in enrolled:
        if at < end:
            nodes[name] += 1
            node_hours[name] += _hours(end - max(at, start))
    costs = {}
    for name, model in models.items():
        hours = node_hours[name]
        inferences, energy_j = measured.get(name, (0, 0.0))
        kwh = Decimal(repr(float(energy_j))) / _J_PER_KWH
        parts = _allocate(
            {"capital": model.capital_per_hour * hours, "energy": model.energy_per_hour * hours},
            model.currency,
        )
        costs[name] = ClassCost(
            node_class=name,
            currency=model.currency,
            nodes=nodes[name],
            node_hours=hours,
            hourly_cost=model.hourly_cost,
            capital_cost=parts["capital"],
            energy_cost=parts["energy"],
            cost=parts["capital"] + parts["energy"],
            inferences=inferences,
            measured_energy_kwh=kwh.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP),
            measured_energy_cost=_round(kwh * model.energy_price_per_kwh, model.currency),
        )
    return costs


def _attribute(
    charged: list[ChargedLine], served: list[Served]
) -> tuple[dict[str, dict[str, Decimal]], dict[str, Decimal]]:
    """Revenue per currency and class, rounded per currency, and what stayed unattributed."""
    by_invoice: dict[int, list[Served]] = defaultdict(list)
    for row in served:
        by_invoice[row.invoice_id].append(row)
    exact: dict[str, dict[str | None, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for line in charged:
        rows = by_invoice.get(line.invoice_id, [])
        weights = _weights(
            row
            for row in rows
            if line.serving
            and (row.grade, row.served_by, row.offload_reason)
            == (line.grade, line.serving, line.reason)
        ) or _weights(rows)
        total = sum(weights.values())
        if not total:
            exact[line.currency][None] += line.amount
            continue
        for node_class, count in weights.items():
            exact[line.currency][node_class] += line.amount * count / total
    revenue: dict[str, dict[str, Decimal]] = {}
    unattributed: dict[str, Decimal] = {}
    for currency, amounts in exact.items():
        rounded = _allocate(amounts, currency)
        unattributed[currency] = rounded.pop(None, Decimal(0))
        revenue[currency] = rounded  # type: ignore[assignment]
    return revenue, unattributed


def _weights(rows: Iterable[Served]) -> dict[str, int]:
    weights: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.count:
            weights[row.node_class] += row.count
    return dict(weights)


def _share_costs(
    costs: Mapping[str, ClassCost], invoiced: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, Decimal]]:
    """Each class's cost shared among currencies by the inferences it served to each; a
    class that served no invoice keeps all of it in its own currency."""
    shares: dict[str, dict[str, Decimal]] = defaultdict(dict)
    for name, cost in costs.items():
        counts = {c: n[name] for c, n in invoiced.items() if n.get(name)}
        total = sum(counts.values())
        if not total:
            if cost.cost or cost.nodes:
                shares[cost.currency][name] = cost.cost
            continue
        split = _allocate({c: cost.cost * n / total for c, n in counts.items()}, cost.currency)
        for currency, amount in split.items():
            shares[currency][name] = amount
    return shares


def _section(
    currency: str,
    revenue: Mapping[str, Decimal],
    unattributed: Decimal,
    cost_shares: Mapping[str, Decimal],
    invoiced: Mapping[str, int],
    models: Mapping[str, ClassCostModel],
    invoices: int,
) -> CurrencyMargins:
    order = {name: i for i, name in enumerate(models)}
    names = sorted(set(revenue) | set(cost_shares), key=lambda n: (order.get(n, len(order)), n))
    rows = []
    for name in names:
        earned = revenue.get(name, Decimal(0))
        model = models.get(name)
        share = cost_shares.get(name)
        comparable = model is not None and model.currency == currency
        cost = (share or Decimal(0)) if comparable else None
        margin = earned - cost if cost is not None else None
        rows.append(
            ClassMargin(
                node_class=name,
                currency=currency,
                inferences=invoiced.get(name, 0),
                revenue=earned,
                cost=cost,
                cost_currency=model.currency if model is not None else "",
                uncompared_cost=share if model is not None and not comparable else None,
                margin=margin,
                margin_percent=_percent(margin, earned),
            )
        )
    uncompared = tuple(r for r in rows if r.uncompared_cost is not None)
    total = sum((r.revenue for r in rows), start=unattributed)
    cost = sum((r.cost for r in rows if r.cost is not None), start=Decimal(0))
    margin = None if uncompared else total - cost
    return CurrencyMargins(
        currency=currency,
        rows=tuple(rows),
        unattributed=unattributed,
        revenue=total,
        cost=cost,
        margin=margin,
        margin_percent=_percent(margin, total),
        invoices=invoices,
        uncompared=uncompared,
    )


def _percent(margin: Decimal | None, revenue: Decimal) -> Decimal | None:
    if margin is None or not revenue:
        return None
    return (margin * 100 / revenue).quantize(_PERCENT_PLACES, rounding=ROUND_HALF_UP)


def _unit(currency: str) -> Decimal:
    try:
        return minor_unit(currency)
    except ValueError:  # a class's currency is free text; cents are the safe guess
        return Decimal("0.01")


def _round(amount: Decimal, currency: str) -> Decimal:
    rounded = amount.quantize(_unit(currency), rounding=ROUND_HALF_UP)
    return rounded if rounded else rounded.copy_abs()


def _allocate(amounts: Mapping[K, Decimal], currency: str) -> dict[K, Decimal]:
    """Round each amount to the minor unit so that they add up to their rounded sum: floor
    each, then give the units left to the largest remainders (ties: by key, so the same
    data always rounds the same way whatever order the database returned it in)."""
    unit = _unit(currency)
    target = _round(sum(amounts.values(), start=Decimal(0)), currency)
    floors = {k: v.quantize(unit, rounding=ROUND_FLOOR) for k, v in amounts.items()}
    left = int((target - sum(floors.values(), start=Decimal(0))) / unit)
    by_remainder = sorted(amounts, key=lambda k: (floors[k] - amounts[k], str(k)))
    for key in by_remainder[:left]:
        floors[key] += unit
    return {k: v if v else v.copy_abs() for k, v in floors.items()}
