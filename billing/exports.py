"""Finance exports: invoices, invoice lines and usage, as CSV or XLSX, streamed.

Finance closes the month in a spreadsheet or a ledger tool, and a tenant reconciles its own
bills, so both need the raw rows, not a page. An export can be as long as the ledger, so
nothing here holds it in memory: each export reads its queryset with `.iterator()` over only
the columns it writes (`values_list`), and returns an iterator of byte chunks that a Django
`StreamingHttpResponse` sends as it goes.

- CSV (RFC 4180, UTF-8, no BOM: it is for programs; people get XLSX): the stdlib writer fills
  a small buffer that is handed out every ~32 KiB. Amounts are exact decimal strings in the
  currency's minor unit ("49.00", "1200" for JPY), other decimals without trailing zeros,
  datetimes ISO 8601 in UTC ("2026-11-30T23:00:00Z"), months "YYYY-MM". Free text a tenant
  can choose (its name, line descriptions) that would start a spreadsheet formula (= + - @)
  is prefixed with an apostrophe, OWASP's advice against CSV injection; slugs, codes and
  numbers are never touched.
- XLSX: xlsxwriter in `constant_memory` mode (each row goes to a temporary file as it is
  written) into a temporary file, which is then handed out in chunks, so memory stays flat
  whatever the row count. The first chunk comes only once the workbook is complete (a ZIP
  ends with its directory). Amounts are numbers formatted with their currency's decimals,
  datetimes are spreadsheet datetimes in UTC, months are dates shown as YYYY-MM. Strings
  are always written as strings, never as formulas. A sheet past Excel's row limit continues
  on a new sheet with the header repeated.

Months: invoices are filtered on their own month (the tenant's calendar month, DESIGN §6).
Usage is grouped by the **UTC** month of its hour (`TruncMonth(..., tzinfo=UTC)`): usage
rows carry no time zone of their own and an aggregate across tenants needs one calendar, so
a Berlin tenant's first hour of a month (23:00 UTC the day before) is in the previous UTC
month here, and its invoice, not this export, is the reference for what it was billed.

Scope: `Scope.finance()` sees every tenant; `Scope.of(tenant)` only that tenant's rows, and
asking it for another tenant is an `ExportError`, never an empty or a mixed file. The views
(console wiring) choose the scope from who is asking; `EXPORTS` lists what they can offer.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

import xlsxwriter
from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncMonth

from billing.currencies import minor_units
from billing.models import Invoice, InvoiceLine, Tenant, UsageHourly

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
FORMATS = ("csv", "xlsx")

# Rows fetched from the database at a time (a server-side cursor's FETCH on PostgreSQL): few
# enough that the rows held as Python objects (~1 KiB each, and two batches while the next
# is fetched) stay a fixed few hundred KiB, enough that a million rows is 5,000 round trips.
ITERATOR_CHUNK_ROWS = 200
# CSV is handed out whenever the buffer passes this; XLSX is read back in chunks of this.
CHUNK_BYTES = 32 * 1024
# Rows of an Excel sheet, header included; past it an export continues on a new sheet.
XLSX_MAX_ROWS = 1_048_576
# A formula in a spreadsheet opening the CSV starts with one of these (OWASP, CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_J_PER_KWH = 3_600_000


class ExportError(ValueError):
    """An export that cannot be made as asked (bad period, format, or another tenant)."""


# --- what to export --------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Calendar months from `first` to `last`, both included, as (year, month)."""

    first: tuple[int, int]
    last: tuple[int, int]

    def __post_init__(self) -> None:
        for year, month in (self.first, self.last):
            if not (1 <= month <= 12 and 2000 <= year <= 9999):
                raise ExportError(f"{year}-{month:02d} is not a month (YYYY-MM, 2000 or later)")
        if self.last < self.first:
            raise ExportError(f"the period ends ({self.label_last}) before it starts")

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        return cls((year, month), (year, month))

    @classmethod
    def parse(cls, first: str, last: str | None = None) -> Period:
        """From "YYYY-MM" strings (a query string's `from` and `to`); `last` defaults to
        `first`. Raises ExportError with what was wrong."""

        def one(text: str) -> tuple[int, int]:
            try:
                year, month = text.strip().split("-")
                return int(year), int(month)
            except (ValueError, AttributeError):
                raise ExportError(f"{text!r} is not a month: write YYYY-MM, e.g. 2026-11") from None

        return cls(one(first), one(last or first))

    @property
    def label_first(self) -> str:
        return f"{self.first[0]}-{self.first[1]:02d}"

    @property
    def label_last(self) -> str:
        return f"{self.last[0]}-{self.last[1]:02d}"

    @property
    def label(self) -> str:
        if self.first == self.last:
            return self.label_first
        return f"{self.label_first}_{self.label_last}"

    def utc_bounds(self) -> tuple[datetime, datetime]:
        """[first day of `first`, first day after `last`) in UTC."""
        year, month = self.last
        after = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(*self.first, 1, tzinfo=UTC), datetime(*after, 1, tzinfo=UTC)

    def invoice_months(self, prefix: str = "") -> Q:
        """Rows whose (year, month) fields, under `prefix`, fall in the period."""
        (fy, fm), (ly, lm) = self.first, self.last
        year, month = f"{prefix}year", f"{prefix}month"
        starts = Q(**{f"{year}__gt": fy}) | Q(**{year: fy, f"{month}__gte": fm})
        ends = Q(**{f"{year}__lt": ly}) | Q(**{year: ly, f"{month}__lte": lm})
        return starts & ends


@dataclass(frozen=True)
class Scope:
    """Whose rows an export may hold: every tenant's (finance) or one tenant's own."""

    tenant: Tenant | None = None

    @classmethod
    def finance(cls) -> Scope:
        return cls(None)

    @classmethod
    def of(cls, tenant: Tenant) -> Scope:
        return cls(tenant)

    def narrow(self, tenant: Tenant | None) -> Tenant | None:
        """The tenant the export is limited to (None: all), given the optional filter.
        A tenant's scope is always limited to that tenant, whatever the filter says."""
        if self.tenant is None:
            return tenant
        if tenant is not None and tenant.pk != self.tenant.pk:
            raise ExportError(f"{self.tenant.slug}'s exports hold only its own rows")
        return self.tenant


class ExportFile(NamedTuple):
    """What a view streams: `StreamingHttpResponse(chunks, content_type=...)` with
    `Content-Disposition: attachment; filename=...`."""

    filename: str
    content_type: str
    chunks: Iterator[bytes]


# --- columns -----------------------------------------------------------------------------------


class Kind(StrEnum):
    """How a column is written: free text is what a tenant chose (its name, a line's
    description), the only text that could smuggle in a formula."""

    TEXT = "text"
    FREE_TEXT = "free_text"
    INT = "int"
    DECIMAL = "decimal"
    MONEY = "money"
    FLOAT = "float"
    DATETIME = "datetime"
    MONTH = "month"


@dataclass(frozen=True)
class Column:
    header: str
    kind: Kind
    width: int = 12
    # FLOAT: decimals written; MONEY: the column holding the row's currency.
    places: int = 3
    currency: str = "currency"


def _money_text(amount: Decimal, currency: str) -> str:
    """The amount in the currency's minor unit when that is exact (it always is for rated
    amounts, DESIGN §6), else every digit it has: an export never rounds."""
    try:
        exponent = Decimal(1).scaleb(-minor_units(currency))
    except ValueError:
        return _plain(amount)
    rounded = amount.quantize(exponent)
    if rounded != amount:
        return _plain(amount)
    return f"{rounded.copy_abs() if not rounded else rounded:f}"


def _plain(value: Decimal) -> str:
    """Exact, without trailing zeros and never in exponent form ("3000", "0.04")."""
    text = f"{value.normalize():f}"
    return "0" if text == "-0" else text


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _csv_cell(column: Column, value: Any, row: dict[str, Any]) -> str:
    if value is None:
        return ""
    match column.kind:
        case Kind.FREE_TEXT:
            return f"'{value}" if str(value).startswith(_FORMULA_STARTS) else str(value)
        case Kind.MONEY:
            return _money_text(value, row[column.currency])
        case Kind.DECIMAL:
            return _plain(value)
        case Kind.FLOAT:
            return f"{value:.{column.places}f}"
        case Kind.DATETIME:
            return _iso(value)
        case Kind.MONTH:
            return f"{value.year}-{value.month:02d}"
        case _:
            return str(value)


@dataclass(frozen=True)
class _Table:
    """An export's columns and its rows (dicts keyed by header), read lazily."""

    sheet: str
    columns: Sequence[Column]
    rows: Callable[[], Iterable[dict[str, Any]]]


class _Pieces:
    """What csv.writer writes to: the rows' strings, gathered until they are handed out.
    (A StringIO reused with truncate(0) keeps a 4-bytes-a-character buffer: four times
    the chunk.)"""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> bytes:
        data = "".join(self.parts).encode()
        self.parts, self.size = [], 0
        return data


def _csv_chunks(table: _Table) -> Iterator[bytes]:
    pieces = _Pieces()
    writer = csv.writer(pieces)
    writer.writerow([c.header for c in table.columns])
    for row in table.rows():
        writer.writerow([_csv_cell(c, row[c.header], row) for c in table.columns])
        if pieces.size >= CHUNK_BYTES:
            yield pieces.take()
    yield pieces.take()


class _Sheets:
    """xlsxwriter worksheets of one table: the header, formats by kind and currency, and a
    new sheet when one is full."""

    def __init__(self, workbook: xlsxwriter.Workbook, table: _Table) -> None:
        self.workbook, self.table = workbook, table
        self.header = workbook.add_format({"bold": True, "bottom": 1})
        self.formats = {
            Kind.DATETIME: workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"}),
            Kind.MONTH: workbook.add_format({"num_format": "yyyy-mm"}),
            Kind.DECIMAL: workbook.add_format({"num_format": "0.######"}),
        }
        self.float_formats: dict[int, Any] = {}
        self.money_formats: dict[int, Any] = {}
        self.sheets = 0
        self.open_sheet()  # an empty export is still a sheet with its header

    def money_format(self, currency: str) -> Any:
        try:
            digits = minor_units(currency)
        except ValueError:
            digits = 2
        if digits not in self.money_formats:
            pattern = "#,##0" + ("." + "0" * digits if digits else "")
            self.money_formats[digits] = self.workbook.add_format({"num_format": pattern})
        return self.money_formats[digits]

    def float_format(self, places: int) -> Any:
        if places not in self.float_formats:
            pattern = "0" + ("." + "0" * places if places else "")
            self.float_formats[places] = self.workbook.add_format({"num_format": pattern})
        return self.float_formats[places]

    def open_sheet(self) -> None:
        self.sheets += 1
        name = self.table.sheet if self.sheets == 1 else f"{self.table.sheet} ({self.sheets})"
        self.sheet = self.workbook.add_worksheet(name[:31])
        for index, column in enumerate(self.table.columns):
            self.sheet.set_column(index, index, column.width)
            self.sheet.write_string(0, index, column.header, self.header)
        self.sheet.freeze_panes(1, 0)
        self.row = 1

    def write(self, row: dict[str, Any]) -> None:
        if self.row >= XLSX_MAX_ROWS:
            self.open_sheet()
        sheet, r = self.sheet, self.row
        self.row += 1
        for c, column in enumerate(self.table.columns):
            value = row[column.header]
            if value is None or value == "":
                continue
            match column.kind:
                case Kind.TEXT | Kind.FREE_TEXT:
                    sheet.write_string(r, c, str(value))
                case Kind.INT:
                    sheet.write_number(r, c, value)
                case Kind.MONEY:
                    sheet.write_number(r, c, float(value), self.money_format(row[column.currency]))
                case Kind.DECIMAL:
                    sheet.write_number(r, c, float(value), self.formats[Kind.DECIMAL])
                case Kind.FLOAT:
                    sheet.write_number(r, c, value, self.float_format(column.places))
                case Kind.DATETIME:
                    naive = value.astimezone(UTC).replace(tzinfo=None)
                    sheet.write_datetime(r, c, naive, self.formats[Kind.DATETIME])
                case Kind.MONTH:
                    sheet.write_datetime(r, c, value, self.formats[Kind.MONTH])


def _xlsx_chunks(table: _Table) -> Iterator[bytes]:
    # Real files from the start (a spooled one would hold the first megabytes in memory), in
    # a directory of our own: xlsxwriter's per-sheet row files go too if the rows fail.
    with tempfile.TemporaryDirectory() as tmpdir, tempfile.TemporaryFile(dir=tmpdir) as out:
        workbook = xlsxwriter.Workbook(out, {"constant_memory": True, "tmpdir": tmpdir})
        sheets = _Sheets(workbook, table)
        for row in table.rows():
            sheets.write(row)
        workbook.close()
        out.seek(0)
        while chunk := out.read(CHUNK_BYTES):
            yield chunk


def _export(table: _Table, fmt: str, name: str) -> ExportFile:
    if fmt == "csv":
        return ExportFile(f"{name}.csv", CSV_CONTENT_TYPE, _csv_chunks(table))
    if fmt == "xlsx":
        return ExportFile(f"{name}.xlsx", XLSX_CONTENT_TYPE, _xlsx_chunks(table))
    raise ExportError(f"{fmt!r} is not an export format ({', '.join(FORMATS)})")


def table_export(
    name: str, columns: Sequence[Column], rows: Callable[[], Iterable[dict[str, Any]]], fmt: str
) -> ExportFile:
    """Rows of another page (dicts keyed by the columns' headers, read lazily) as CSV or
    XLSX, written like the ledgers here (the audit log's export)."""
    return _export(_Table(name[:31], columns, rows), fmt, name)


def _filename(what: str, period: Period, tenant: Tenant | None) -> str:
    # Slugs are [a-z0-9-_], safe in a Content-Disposition header as they are.
    who = f"-{tenant.slug}" if tenant is not None else ""
    return f"outpost{who}-{what}-{period.label}"


def _rows(queryset: QuerySet, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    for values in queryset.values_list(*fields).iterator(chunk_size=ITERATOR_CHUNK_ROWS):
        yield dict(zip(fields, values, strict=True))


# --- invoices ----------------------------------------------------------------------------------

INVOICE_COLUMNS = (
    Column("invoice_id", Kind.INT, 10),
    Column("number", Kind.TEXT, 13),
    Column("tenant", Kind.TEXT, 14),
    Column("tenant_name", Kind.FREE_TEXT, 24),
    Column("period", Kind.MONTH, 9),
    Column("period_start_utc", Kind.DATETIME, 19),
    Column("period_end_utc", Kind.DATETIME, 19),
    Column("status", Kind.TEXT, 12),
    Column("currency", Kind.TEXT, 8),
    Column("subtotal", Kind.MONEY, 12),
    Column("tax", Kind.MONEY, 10),
    Column("total", Kind.MONEY, 12),
    Column("tax_name", Kind.FREE_TEXT, 12),
    Column("band", Kind.FREE_TEXT, 12),
    Column("inferences", Kind.INT, 12),
    Column("p95_ms", Kind.FLOAT, 9, places=3),
    Column("p95_target_ms", Kind.FLOAT, 9, places=3),
    Column("finalised_at_utc", Kind.DATETIME, 19),
    Column("paid_at_utc", Kind.DATETIME, 19),
    Column("stripe_invoice_id", Kind.TEXT, 20),
)
_INVOICE_FIELDS = {
    "invoice_id": "pk",
    "number": "number",
    "tenant": "tenant__slug",
    "tenant_name": "tenant__name",
    "period_start_utc": "period_start",
    "period_end_utc": "period_end",
    "status": "status",
    "currency": "currency",
    "subtotal": "subtotal",
    "tax": "tax",
    "total": "total",
    "tax_name": "tax_name",
    "band": "band",
    "inferences": "inferences",
    "p95_ms": "p95_ms",
    "p95_target_ms": "p95_target_ms",
    "finalised_at_utc": "finalised_at",
    "paid_at_utc": "paid_at",
    "stripe_invoice_id": "stripe_invoice_id",
}


def _renamed(
    queryset: QuerySet, fields: dict[str, str], period_prefix: str | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of `queryset` keyed by column header; with `period_prefix`, a `period` month
    from the (year, month) fields under that prefix."""
    names = list(fields.values())
    if period_prefix is not None:
        names += [f"{period_prefix}year", f"{period_prefix}month"]
    for values in _rows(queryset, names):
        row = {header: values[field] for header, field in fields.items()}
        if period_prefix is not None:
            row["period"] = date(values[f"{period_prefix}year"], values[f"{period_prefix}month"], 1)
        yield row


def export_invoices(
    period: Period, *, scope: Scope, fmt: str = "csv", tenant: Tenant | None = None
) -> ExportFile:
    """Every invoice of the period's months (any status: the status is a column), one row
    each, ordered by month, tenant and id."""
    tenant = scope.narrow(tenant)
    invoices = Invoice.objects.filter(period.invoice_months())
    if tenant is not None:
        invoices = invoices.filter(tenant_id=tenant.pk)
    invoices = invoices.order_by("year", "month", "tenant__slug", "pk")
    table = _Table(
        "invoices", INVOICE_COLUMNS, lambda: _renamed(invoices, _INVOICE_FIELDS, period_prefix="")
    )
    return _export(table, fmt, _filename("invoices", period, tenant))


# --- invoice lines -------------------------------------------------------------------------------

INVOICE_LINE_COLUMNS = (
    Column("invoice_id", Kind.INT, 10),
    Column("invoice_number", Kind.TEXT, 13),
    Column("tenant", Kind.TEXT, 14),
    Column("period", Kind.MONTH, 9),
    Column("status", Kind.TEXT, 12),
    Column("currency", Kind.TEXT, 8),
    Column("position", Kind.INT, 8),
    Column("kind", Kind.TEXT, 14),
    Column("description", Kind.FREE_TEXT, 50),
    Column("grade", Kind.TEXT, 8),
    Column("serving", Kind.TEXT, 9),
    Column("reason", Kind.TEXT, 15),
    Column("quantity", Kind.DECIMAL, 10),
    Column("unit_price", Kind.DECIMAL, 10),
    Column("amount", Kind.MONEY, 12),
)
_LINE_FIELDS = {
    "invoice_id": "invoice_id",
    "invoice_number": "invoice__number",
    "tenant": "invoice__tenant__slug",
    "status": "invoice__status",
    "currency": "invoice__currency",
    "position": "position",
    "kind": "kind",
    "description": "description",
    "grade": "grade",
    "serving": "serving",
    "reason": "reason",
    "quantity": "quantity",
    "unit_price": "unit_price",
    "amount": "amount",
}


def export_invoice_lines(
    period: Period, *, scope: Scope, fmt: str = "csv", tenant: Tenant | None = None
) -> ExportFile:
    """Every line of the period's invoices with its invoice's number, tenant, month, status
    and currency, ordered like the invoices export and then by position; credits are
    negative amounts, tax is a line of its own."""
    tenant = scope.narrow(tenant)
    lines = InvoiceLine.objects.filter(period.invoice_months("invoice__"))
    if tenant is not None:
        lines = lines.filter(invoice__tenant_id=tenant.pk)
    lines = lines.order_by(
        "invoice__year", "invoice__month", "invoice__tenant__slug", "invoice_id", "position"
    )
    table = _Table(
        "invoice lines",
        INVOICE_LINE_COLUMNS,
        lambda: _renamed(lines, _LINE_FIELDS, period_prefix="invoice__"),
    )
    return _export(table, fmt, _filename("invoice-lines", period, tenant))


# --- usage ---------------------------------------------------------------------------------------

USAGE_COLUMNS = (
    Column("month_utc", Kind.MONTH, 9),
    Column("tenant", Kind.TEXT, 14),
    Column("tenant_name", Kind.FREE_TEXT, 24),
    Column("region", Kind.TEXT, 12),
    Column("node_class", Kind.TEXT, 12),
    Column("inferences", Kind.INT, 12),
    Column("local", Kind.INT, 12),
    Column("regional", Kind.INT, 12),
    Column("errors", Kind.INT, 10),
    Column("energy_kwh", Kind.FLOAT, 12, places=6),
)


def usage_by_month(period: Period, tenant: Tenant | None = None) -> QuerySet:
    """Hourly rollups summed per UTC month, tenant, region and node class: one GROUP BY
    query (SQLite and PostgreSQL alike), as value dicts."""
    start, end = period.utc_bounds()
    hours = UsageHourly.objects.filter(hour__gte=start, hour__lt=end)
    if tenant is not None:
        hours = hours.filter(tenant_id=tenant.pk)
    return (
        hours.annotate(month_utc=TruncMonth("hour", tzinfo=UTC))
        .values("month_utc", "tenant__slug", "tenant__name", "region", "node_class")
        .annotate(
            inferences=Sum("count"),
            local=Sum("count", filter=Q(served_by="local"), default=0),
            regional=Sum("count", filter=Q(served_by="regional"), default=0),
            errors=Sum("errors"),
            energy_j=Sum("energy_j"),
        )
        .order_by("month_utc", "tenant__slug", "region", "node_class")
    )


def _usage_rows(period: Period, tenant: Tenant | None) -> Iterator[dict[str, Any]]:
    for row in usage_by_month(period, tenant).iterator(chunk_size=ITERATOR_CHUNK_ROWS):
        month = row["month_utc"]
        yield {
            "month_utc": date(month.year, month.month, 1),
            "tenant": row["tenant__slug"],
            "tenant_name": row["tenant__name"],
            "region": row["region"],
            "node_class": row["node_class"],
            "inferences": row["inferences"],
            "local": row["local"],
            "regional": row["regional"],
            "errors": row["errors"],
            "energy_kwh": (row["energy_j"] or 0.0) / _J_PER_KWH,
        }


def export_usage(
    period: Period, *, scope: Scope, fmt: str = "csv", tenant: Tenant | None = None
) -> ExportFile:
    """Usage per UTC month, tenant, region and node class: successful inferences (the
    billable count), of which served locally and regionally, errors, and the energy the
    nodes measured in kWh."""
    tenant = scope.narrow(tenant)
    table = _Table("usage", USAGE_COLUMNS, lambda: _usage_rows(period, tenant))
    return _export(table, fmt, _filename("usage", period, tenant))


# --- the registry views list ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportKind:
    slug: str
    label: str
    description: str
    build: Callable[..., ExportFile]
    columns: tuple[Column, ...]

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]


EXPORTS: dict[str, ExportKind] = {
    kind.slug: kind
    for kind in (
        ExportKind(
            "invoices",
            "Invoices",
            "One row per invoice: period, status, currency, subtotal, tax and total.",
            export_invoices,
            INVOICE_COLUMNS,
        ),
        ExportKind(
            "invoice-lines",
            "Invoice lines",
            "Every line of every invoice: fees, usage, credits and tax.",
            export_invoice_lines,
            INVOICE_LINE_COLUMNS,
        ),
        ExportKind(
            "usage",
            "Usage by month",
            "Inferences, errors and energy per UTC month, tenant, region and node class.",
            export_usage,
            USAGE_COLUMNS,
        ),
    )
}
