"""The month's billing run: every tenant's draft of a month brought up to date at once.

`refresh_month_drafts(year, month, now=...)` leaves every tenant's draft exactly as
`billing.invoicing.refresh_draft(tenant, year, month, now=now)` would — the same lines, totals,
band, p95, inferences and cutoff — but in a fixed number of queries whatever the number of
tenants, so a month of a thousand tenants costs little more than one pass of SQL over its
usage (bench/billing_run.py measures it against a bare aggregation of the same rows):

- tenants are grouped by time zone, each zone's month bounds from `rating.month_bounds`;
- the month's usage: one aggregation over the ledger, each zone's tenants with their zone's
  month bounds, grouped by (tenant, grade, serving, offload reason), summing the count and
  the latency histogram — the rows of the month received up to `now`, as
  `invoicing.usage_between` reads them;
- one query each for the month's invoices (locked), the previous cutoffs (a subquery per
  tenant, off the (tenant, period_start) index), late usage (joined to those previous
  invoices), the price books of the currencies, subscriptions with their band terms, add-ons
  with their prices, and tax rates; price data is resolved in Python with the rules of
  `invoicing.price_book` and `invoicing.month_terms`;
- rating in Python, per tenant, with `rating.rate` (pure: no query);
- the writes in bulk: the lines of the drafts refreshed deleted, those drafts updated (one
  UPDATE ... FROM VALUES on PostgreSQL, bulk_update elsewhere), new drafts created with
  their "created" event (bulk_create), every line inserted (a binary COPY on PostgreSQL,
  bulk_create elsewhere).

All of it in one transaction: a run is all or nothing (a concurrent `refresh_draft` creating
a tenant's draft of the month meanwhile makes it fail on the one-live-invoice constraint;
run it again). A tenant whose month is finalised (or paid, uncollectible) is left as it is;
a tenant whose month cannot be rated (usage of a grade its price book does not price, an
unknown time zone…) is reported in the summary, nothing of it written, and the others go on.

Small private helpers of billing/invoicing.py are mirrored here over prefetched rows rather
than called (they query per tenant): `_previous_cutoff`, `usage_between`, `late_usage`,
`price_book`, `month_terms`, `_write` and `_counted`. A change to one of them must be made
here too; tests/billing/test_billing_run.py compares the two paths invoice by invoice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, DateTimeField, F, OuterRef, Q, Subquery, Sum, Value, When
from django.utils import timezone

from billing import rating
from billing.choices import InvoiceStatus
from billing.invoicing import P95_BEYOND, InvoicingError, MonthTerms, month_of, resolve_terms
from billing.models import (
    LATENCY_COLUMNS,
    BandTerms,
    FeatureActivation,
    FeatureBundlePrice,
    Invoice,
    InvoiceEvent,
    InvoiceLine,
    Price,
    Subscription,
    TaxRate,
    Tenant,
    UsageRecord,
)
from inference import protocol

log = logging.getLogger(__name__)

# The fields of a draft a refresh sets (billing/invoicing.py: _write and refresh_draft).
_REFRESHED_FIELDS = (
    "subtotal",
    "tax",
    "total",
    "tax_name",
    "band",
    "p95_target_ms",
    "p95_ms",
    "inferences",
    "usage_cutoff",
    "refreshed_at",
)

UsageKey = tuple[str, str, str | None]  # grade, served_by, offload reason


@dataclass(frozen=True)
class RunSummary:
    """What a run did. `failed` maps a tenant's slug to why its month was not rated (its
    draft, if any, left as it was); `finalised` lists the tenants whose month is no longer a
    draft (left as it is)."""

    year: int
    month: int
    now: datetime
    created: int = 0
    refreshed: int = 0
    finalised: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def rated(self) -> int:
        return self.created + self.refreshed

    def __str__(self) -> str:
        text = (
            f"{self.year}-{self.month:02d}: {self.created} draft(s) created, "
            f"{self.refreshed} refreshed, {len(self.finalised)} finalised left as they are"
        )
        return text + (f", {len(self.failed)} not rated" if self.failed else "")


def refresh_month_drafts(year: int, month: int, *, now: datetime | None = None) -> RunSummary:
    """Create or bring up to date every tenant's draft of (year, month), as `refresh_draft`
    does tenant by tenant, in one transaction and a fixed number of queries."""
    now = now or timezone.now()
    with transaction.atomic():
        tenants = list(Tenant.objects.order_by("pk"))
        live = _live_invoices(year, month)
        finalised = tuple(t.slug for t in tenants if t.pk in live and not live[t.pk].is_draft)
        failed: dict[str, str] = {}
        zones: dict[str, tuple[datetime, datetime]] = {}
        months: dict[int, tuple[datetime, datetime]] = {}
        for tenant in tenants:
            if tenant.pk in live and not live[tenant.pk].is_draft:
                continue
            try:
                if tenant.time_zone not in zones:
                    zones[tenant.time_zone] = rating.month_bounds(year, month, tenant.time_zone)
            except ValueError as exc:
                failed[tenant.slug] = _why(tenant, year, month, exc)
                continue
            months[tenant.pk] = zones[tenant.time_zone]
        todo = [t for t in tenants if t.pk in months]
        rated: dict[int, tuple[rating.RatedInvoice, MonthTerms, int]] = {}
        if todo:
            data = _gather(todo, {t.time_zone: zones[t.time_zone] for t in todo}, now)
            for tenant in todo:
                try:
                    rated[tenant.pk] = _rate(tenant, months[tenant.pk], data, now)
                except (InvoicingError, ValueError) as exc:
                    failed[tenant.slug] = _why(tenant, year, month, exc)
        created, refreshed = _write_all(
            [t for t in todo if t.pk in rated], rated, live, year, month, now
        )
    for slug, why in failed.items():
        log.warning("draft of %s not refreshed: %s", slug, why)
    return RunSummary(
        year=year,
        month=month,
        now=now,
        created=created,
        refreshed=refreshed,
        finalised=finalised,
        failed=failed,
    )


def _why(tenant: Tenant, year: int, month: int, exc: Exception) -> str:
    text = str(exc)
    prefix = f"{tenant.slug} {year}-{month:02d}: "
    return text if text.startswith(prefix) else prefix + text


# --- reading -----------------------------------------------------------------------------------


def _live_invoices(year: int, month: int) -> dict[int, Invoice]:
    """Each tenant's live (not void) invoice of the month, locked as refresh_draft locks it;
    of two (a tenant whose time zone changed), the one refresh_draft takes: the latest."""
    rows = (
        Invoice.objects.filter(year=year, month=month)
        .exclude(status=InvoiceStatus.VOID)
        .order_by("tenant_id", "-period_start")
    )
    if connection.features.has_select_for_update:
        rows = rows.select_for_update()
    live: dict[int, Invoice] = {}
    for invoice in rows:
        live.setdefault(invoice.tenant_id, invoice)
    return live


@dataclass
class _Gathered:
    """Everything the ratings need, keyed by tenant pk where it is per tenant."""

    usage: dict[int, list[tuple[Any, ...]]]  # grade, served_by, reason, count, *histogram
    late: dict[int, list[tuple[UsageKey, datetime, int]]]
    prices: dict[str, list[tuple[datetime, str, str, Decimal]]]
    subscriptions: dict[int, list[Subscription]]
    band_terms: dict[tuple[int, str], list[BandTerms]]
    activations: dict[int, list[FeatureActivation]]
    addon_prices: dict[tuple[int, str], list[tuple[datetime, Decimal]]]
    tax_rates: dict[str, list[TaxRate]]
    price_books: dict[tuple[str, datetime, datetime], rating.Prices] = field(default_factory=dict)


def _by_zone(field_name: str, zones: dict[str, tuple[datetime, datetime]], index: int) -> Case:
    """Each row's month start (index 0) or end (1), by its tenant's time zone."""
    return Case(
        *[
            When(**{field_name: zone}, then=Value(bounds[index], output_field=DateTimeField()))
            for zone, bounds in zones.items()
        ],
        output_field=DateTimeField(),
    )


def _gather(
    tenants: Sequence[Tenant], zones: dict[str, tuple[datetime, datetime]], now: datetime
) -> _Gathered:
    first = min(start for start, _ in zones.values())
    last = max(end for _, end in zones.values())
    currencies = sorted({t.currency for t in tenants})

    # The previous invoice of each tenant (billing.invoicing._previous_cutoff): the latest
    # settled or open, not void, that began before the tenant's month.
    previous = Invoice.objects.filter(
        tenant=OuterRef("pk"), period_start__lt=OuterRef("month_start")
    ).exclude(status__in=[InvoiceStatus.DRAFT, InvoiceStatus.VOID])
    previous = previous.order_by("-period_start")
    cutoffs = {
        pk: (invoice_id, cutoff)
        for pk, invoice_id, cutoff in Tenant.objects.filter(time_zone__in=list(zones))
        .annotate(month_start=_by_zone("time_zone", zones, 0))
        .annotate(
            previous_id=Subquery(previous.values("pk")[:1]),
            previous_cutoff=Subquery(previous.values("usage_cutoff")[:1]),
        )
        .values_list("pk", "previous_id", "previous_cutoff")
        if cutoff is not None
    }

    usage = _month_usage(tenants, zones, now)
    wanted = {t.pk for t in tenants}
    late = _late_usage([i for pk, (i, _) in cutoffs.items() if pk in wanted], zones, now)

    prices: dict[str, list[tuple[datetime, str, str, Decimal]]] = defaultdict(list)
    for currency, grade, serving, per_1000, effective_from in (
        Price.objects.filter(currency__in=currencies, effective_from__lt=last)
        .order_by("effective_from", "pk")
        .values_list("currency", "grade", "serving", "per_1000", "effective_from")
    ):
        prices[currency].append((effective_from, grade, serving, per_1000))

    subscriptions: dict[int, list[Subscription]] = defaultdict(list)
    for sub in (
        Subscription.objects.overlapping(first, last)
        .select_related("band")
        .order_by("tenant_id", "starts_at", "pk")
    ):
        subscriptions[sub.tenant_id].append(sub)
    band_terms: dict[tuple[int, str], list[BandTerms]] = defaultdict(list)
    for terms in BandTerms.objects.filter(
        currency__in=currencies, effective_from__lt=last
    ).order_by("-effective_from"):
        band_terms[(terms.band_id, terms.currency)].append(terms)

    activations: dict[int, list[FeatureActivation]] = defaultdict(list)
    for activation in (
        FeatureActivation.objects.overlapping(first, last)
        .select_related("bundle")
        .order_by("tenant_id", "-starts_at", "pk")
    ):
        activations[activation.tenant_id].append(activation)
    addon_prices: dict[tuple[int, str], list[tuple[datetime, Decimal]]] = defaultdict(list)
    for bundle_id, currency, monthly, effective_from in (
        FeatureBundlePrice.objects.filter(currency__in=currencies, effective_from__lt=last)
        .order_by("-effective_from")
        .values_list("bundle_id", "currency", "monthly_price", "effective_from")
    ):
        addon_prices[(bundle_id, currency)].append((effective_from, monthly))

    tax_rates: dict[str, list[TaxRate]] = defaultdict(list)
    jurisdictions = sorted({t.jurisdiction for t in tenants if t.jurisdiction})
    if jurisdictions:
        for tax in TaxRate.objects.filter(
            jurisdiction__in=jurisdictions, effective_from__lt=last
        ).order_by("-effective_from"):
            tax_rates[tax.jurisdiction].append(tax)

    return _Gathered(
        usage=usage,
        late=late,
        prices=prices,
        subscriptions=subscriptions,
        band_terms=band_terms,
        activations=activations,
        addon_prices=addon_prices,
        tax_rates=tax_rates,
    )


def _month_usage(
    tenants: Sequence[Tenant], zones: dict[str, tuple[datetime, datetime]], now: datetime
) -> dict[int, list[tuple[Any, ...]]]:
    """The month's usage of every tenant (billing.invoicing.usage_between with no
    `received_after`), as rows (grade, served_by, reason, count, *histogram), in one
    aggregation: each zone's tenants with their own month's bounds, OR'ed.

    One query for all zones rather than one per zone: the zones' months overlap but for a
    few hours, so the rows of every zone are on every page of the ledger, and a query per
    zone would read (and on PostgreSQL JIT-compile) the whole month once per zone."""
    in_zone: dict[str, list[int]] = defaultdict(list)
    for tenant in tenants:
        in_zone[tenant.time_zone].append(tenant.pk)
    months = Q()
    for zone, members in in_zone.items():
        start, end = zones[zone]
        months |= Q(tenant_id__in=members, minute__gte=start, minute__lt=end)
    sums = {"n": Sum("count"), **{f"sum_{c}": Sum(c) for c in LATENCY_COLUMNS}}
    rows = (
        UsageRecord.objects.filter(
            months,
            # The span of all the months, for an index on minute to narrow the scan.
            minute__gte=min(start for start, _ in zones.values()),
            minute__lt=max(end for _, end in zones.values()),
            received_at__lte=now,
        )
        .values("tenant_id", "grade", "served_by", "offload_reason")
        .annotate(**sums)
        .values_list("tenant_id", "grade", "served_by", "offload_reason", *sums)
    )
    usage: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for tenant_id, *row in rows:
        usage[tenant_id].append(tuple(row))
    return usage


def _late_usage(
    previous: list[int], zones: dict[str, tuple[datetime, datetime]], now: datetime
) -> dict[int, list[tuple[UsageKey, datetime, int]]]:
    """Usage of months before each tenant's month received after its previous invoice's
    cutoff and up to `now` (billing.invoicing.late_usage), per (key, minute): one query,
    joined to the previous invoices (`previous`, their pks) themselves."""
    late: dict[int, list[tuple[UsageKey, datetime, int]]] = defaultdict(list)
    if not previous:
        return late
    rows = (
        UsageRecord.objects.filter(
            Q(tenant__invoices__in=previous)
            & Q(received_at__gt=F("tenant__invoices__usage_cutoff"))
            & Q(received_at__lte=now)
            & Q(minute__lt=max(start for start, _ in zones.values()))
        )
        .alias(month_start=_by_zone("tenant__time_zone", zones, 0))
        .filter(minute__lt=F("month_start"))
        .values("tenant_id", "grade", "served_by", "offload_reason", "minute")
        .annotate(n=Sum("count"))
        .values_list("tenant_id", "grade", "served_by", "offload_reason", "minute", "n")
    )
    for tenant_id, grade, served_by, reason, minute, n in rows:
        late[tenant_id].append(((grade, served_by, reason or None), minute, n))
    return late


# --- price data, as billing.invoicing resolves it -----------------------------------------------


def _price_book(
    data: _Gathered, currency: str, at: datetime, until: datetime | None = None
) -> rating.Prices:
    """billing.invoicing.price_book over the prefetched rows."""
    key = (currency, at, until)
    book = data.price_books.get(key)
    if book is None:
        tables: dict[str, dict[str, Decimal]] = {"local": {}, "regional": {}}
        rows = data.prices.get(currency, [])
        for effective_from, grade, serving, per_1000 in rows:  # oldest first: the latest wins
            if effective_from <= at:
                tables[serving][grade] = per_1000
        if until is not None:  # first priced during the month: counts from its start
            for effective_from, grade, serving, per_1000 in rows:
                if at < effective_from < until:
                    tables[serving].setdefault(grade, per_1000)
        book = rating.Prices(local=tables["local"], regional=tables["regional"])
        data.price_books[key] = book
    return book


def _latest(rows: Iterable[Any], at: datetime, when=lambda row: row.effective_from) -> Any:
    """The first of rows (latest first) in effect at `at`, or None."""
    return next((row for row in rows if when(row) <= at), None)


def _month_terms(tenant: Tenant, start: datetime, end: datetime, data: _Gathered) -> MonthTerms:
    """billing.invoicing.month_terms over the prefetched rows."""
    currency = tenant.currency

    def addon_price(activation, at):
        rows = data.addon_prices.get((activation.bundle_id, currency), ())
        found = _latest(rows, at, when=lambda row: row[0])
        return None if found is None else found[1]

    return resolve_terms(
        tenant,
        start,
        end,
        subscriptions=data.subscriptions.get(tenant.pk, ()),
        band_terms_at=lambda sub, at: _latest(data.band_terms.get((sub.band_id, currency), ()), at),
        activations=data.activations.get(tenant.pk, ()),
        addon_price_at=addon_price,
        tax=_latest(data.tax_rates.get(tenant.jurisdiction, ()), start)
        if tenant.jurisdiction
        else None,
    )


# --- rating --------------------------------------------------------------------------------------


def _rate(
    tenant: Tenant, bounds: tuple[datetime, datetime], data: _Gathered, now: datetime
) -> tuple[rating.RatedInvoice, MonthTerms, int]:
    """billing.invoicing.rate_month over the prefetched rows: the rating, the month's terms
    and the inferences counted."""
    start, end = bounds
    terms = _month_terms(tenant, start, end, data)
    rows = sorted(data.usage.get(tenant.pk, ()), key=lambda r: (r[0], r[1], r[2]))
    usage = [  # in usage_between's order (rate() does not depend on it)
        rating.Usage(
            grade=grade,
            served_by=served_by,
            offload_reason=reason or None,
            count=n or 0,
            latency_counts=tuple(x or 0 for x in latency),
        )
        for grade, served_by, reason, n, *latency in rows
    ]
    by_month: dict[tuple[int, int], dict[UsageKey, int]] = defaultdict(lambda: defaultdict(int))
    for key, minute, n in data.late.get(tenant.pk, ()):
        by_month[month_of(tenant, minute)][key] += n
    adjustments = []
    for (year, month), counts in sorted(by_month.items()):
        late_start, late_end = rating.month_bounds(year, month, tenant.time_zone)
        adjustments.append(
            rating.LateUsage(
                year=year,
                month=month,
                usage=tuple(
                    rating.Usage(grade=g, served_by=s, offload_reason=r, count=n)
                    for (g, s, r), n in sorted(counts.items(), key=str)
                ),
                prices=_price_book(data, tenant.currency, late_start, late_end),
            )
        )
    try:
        rated = rating.rate(
            start=start,
            end=end,
            currency=tenant.currency,
            usage=usage,
            prices=_price_book(data, tenant.currency, start, end),
            quality_credit_share=terms.quality_credit_share,
            tax_rate=terms.tax_rate,
            tax_name=terms.tax_name,
            bands=terms.bands,
            addons=terms.addons,
            adjustments=adjustments,
            bounds=protocol.LATENCY_BOUNDS_S,
        )
    except ValueError as exc:  # e.g. usage of a grade the price book does not price
        raise InvoicingError(str(exc)) from exc
    return rated, terms, sum(u.count for u in usage)  # invoicing._counted


# --- writing -------------------------------------------------------------------------------------


def _write_all(
    tenants: Sequence[Tenant],
    rated: dict[int, tuple[rating.RatedInvoice, MonthTerms, int]],
    live: dict[int, Invoice],
    year: int,
    month: int,
    now: datetime,
) -> tuple[int, int]:
    """billing.invoicing.refresh_draft's writes (and _write's) for every tenant at once."""
    if not tenants:
        return 0, 0
    fresh: list[Invoice] = []
    existing: list[Invoice] = []
    for tenant in tenants:
        result, terms, inferences = rated[tenant.pk]
        invoice = live.get(tenant.pk)
        if invoice is None:
            invoice = Invoice(
                tenant=tenant,
                year=year,
                month=month,
                period_start=result.start,
                period_end=result.end,
                currency=tenant.currency,
            )
            fresh.append(invoice)
        else:
            existing.append(invoice)
        invoice.subtotal, invoice.tax, invoice.total = result.subtotal, result.tax, result.total
        invoice.tax_name = terms.tax_name
        invoice.band = terms.band_label
        invoice.p95_target_ms = terms.p95_target_ms
        invoice.p95_ms = None if result.p95_ms is None else min(result.p95_ms, P95_BEYOND)
        invoice.inferences = inferences
        invoice.usage_cutoff = now
        invoice.refreshed_at = now
    if existing:
        InvoiceLine.objects.filter(invoice_id__in=[i.pk for i in existing]).delete()
        _update_drafts(existing)
    if fresh:
        Invoice.objects.bulk_create(fresh)
        InvoiceEvent.objects.bulk_create(
            InvoiceEvent(invoice=invoice, kind="created", at=now) for invoice in fresh
        )
    by_tenant = {i.tenant_id: i.pk for i in (*existing, *fresh)}
    _insert_lines(
        (
            by_tenant[tenant.pk],
            position,
            line.kind,
            line.description[:300],
            Decimal(line.quantity),
            line.unit_price,
            line.amount,
            line.grade or "",
            line.serving or "",
            line.reason or "",
        )
        for tenant in tenants
        for position, line in enumerate(rated[tenant.pk][0].lines, start=1)
    )
    return len(fresh), len(existing)


# InvoiceLine's columns as _insert_lines gets them, with their PostgreSQL types for COPY.
_LINE_COLUMNS = (
    "invoice_id", "position", "kind", "description", "quantity", "unit_price", "amount",
    "grade", "serving", "reason",
)  # fmt: skip
_LINE_TYPES = (
    "int8", "int2", "text", "text", "numeric", "numeric", "numeric", "text", "text", "text",
)  # fmt: skip
assert len(_LINE_TYPES) == len(_LINE_COLUMNS)


def _insert_lines(rows: Iterable[tuple[Any, ...]]) -> None:
    """`InvoiceLine.objects.bulk_create` of the rows; on PostgreSQL a binary COPY instead,
    as billing/ingest.py writes the ledger: a model instance and its field preparation per
    line cost some 40 µs of Python, most of the run's own time at 20,000 lines."""
    if connection.vendor != "postgresql":
        InvoiceLine.objects.bulk_create(
            InvoiceLine(**dict(zip(_LINE_COLUMNS, row, strict=True))) for row in rows
        )
        return
    qn = connection.ops.quote_name
    table = qn(InvoiceLine._meta.db_table)
    columns = ", ".join(qn(c) for c in _LINE_COLUMNS)
    with connection.cursor() as cursor:
        sql = f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"  # noqa: S608
        with cursor.cursor.copy(sql) as copy:
            copy.set_types(_LINE_TYPES)
            for row in rows:
                copy.write_row(row)


def _update_drafts(invoices: list[Invoice]) -> None:
    """`Invoice.objects.bulk_update(invoices, _REFRESHED_FIELDS)`; on PostgreSQL as one
    `UPDATE ... FROM (VALUES ...)` instead: Django's bulk_update builds a CASE WHEN per
    invoice and field, some 2 ms of Python per invoice (SQLite before 3.33 has no UPDATE
    FROM; at its scale bulk_update is fine)."""
    if connection.vendor != "postgresql":
        Invoice.objects.bulk_update(invoices, _REFRESHED_FIELDS)
        return
    meta = Invoice._meta
    fields = [meta.get_field(name) for name in _REFRESHED_FIELDS]
    qn = connection.ops.quote_name
    table, pk = qn(meta.db_table), qn(meta.pk.column)
    # VALUES columns are column1 (the pk), column2…; each cast to its column's type (a
    # column of NULLs would otherwise be text).
    assignments = ", ".join(
        f"{qn(f.column)} = CAST(v.column{i} AS {f.db_type(connection)})"
        for i, f in enumerate(fields, start=2)
    )
    row = "(" + ", ".join(["%s"] * (len(fields) + 1)) + ")"
    params: list[Any] = []
    for invoice in invoices:
        params.append(invoice.pk)
        params += [f.get_db_prep_save(getattr(invoice, f.attname), connection) for f in fields]
    values = ", ".join([row] * len(invoices))
    with connection.cursor() as cursor:  # names from the model's metadata, values as params
        cursor.execute(
            f"UPDATE {table} SET {assignments} FROM (VALUES {values}) AS v "  # noqa: S608
            f"WHERE {table}.{pk} = v.column1",
            params,
        )
