"""Finance exports: invoices, invoice lines and monthly usage as CSV and XLSX, streamed,
scoped to a tenant when a tenant asks."""

from __future__ import annotations

import io
import re
import tracemalloc
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from xml.etree import ElementTree

import pytest

from billing import exports
from billing.exports import (
    EXPORTS,
    ExportError,
    Period,
    Scope,
    export_invoice_lines,
    export_invoices,
    export_usage,
)
from billing.models import Invoice, InvoiceLine, Tenant, UsageHourly
from billing.rating import month_bounds

NOV = Period.month(2026, 11)
FINANCE = Scope.finance()


@pytest.fixture
def globex(db):
    return Tenant.objects.create(slug="globex", name="Globex KK", currency="JPY", time_zone="UTC")


def invoice(tenant, year, month, *, status="draft", lines=(), **fields):
    """An invoice of the tenant's month with `lines` as (kind, description, quantity,
    unit_price, amount, grade, serving, reason) tuples, the last three optional."""
    start, end = month_bounds(year, month, tenant.time_zone)
    made = Invoice.objects.create(
        tenant=tenant, year=year, month=month, period_start=start, period_end=end,
        currency=tenant.currency, status=status, **fields,
    )  # fmt: skip
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=made,
            position=position,
            kind=kind,
            description=text,
            quantity=Decimal(quantity),
            unit_price=None if price is None else Decimal(price),
            amount=Decimal(amount),
            grade=rest[0] if rest else "",
            serving=rest[1] if len(rest) > 1 else "",
            reason=rest[2] if len(rest) > 2 else "",
        )  # fmt: skip
        for position, (kind, text, quantity, price, amount, *rest) in enumerate(lines, start=1)
    )
    return made


def hourly(tenant, hour, count, *, region="eu-west", node_class="nano", served_by="local",
           reason="", model="tiny-classifier", errors=0, energy_j=0.0):  # fmt: skip
    return UsageHourly.objects.create(
        tenant=tenant, hour=hour, region=region, node_class=node_class, model=model,
        version="1", grade="tiny", served_by=served_by, offload_reason=reason, count=count,
        errors=errors, energy_j=energy_j,
    )  # fmt: skip


def consume(export) -> bytes:
    return b"".join(export.chunks)


def csv_text(export) -> str:
    return consume(export).decode()


@pytest.fixture
def acme_november(acme):
    return invoice(
        acme, 2026, 11, status="finalised", number="2026-000001",
        subtotal=Decimal("49.12"), tax=Decimal("9.33"), total=Decimal("58.45"),
        tax_name="VAT 19 %", band="Silver", inferences=4000, p95_ms=10.0, p95_target_ms=100,
        finalised_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        lines=[
            ("band_fee", "Silver", "1", "49.00", "49.000"),
            ("overage", "Tiny inferences beyond the 1,000 included, per 1,000", "2000",
             "0.04", "0.080", "tiny", "local"),
            ("quality_credit", "Quality credit, tiny (thermal): 100 % of the regional premium",
             "1000", "-0.08", "-0.080", "tiny", "regional", "thermal"),
            ("tax", "VAT 19 %", "49.12", "0.19", "9.330"),
        ],
    )  # fmt: skip


# --- CSV ---------------------------------------------------------------------------------------


def test_it_exports_invoices_as_csv_with_exact_amounts_and_utc_times(acme, globex, acme_november):
    yen = invoice(globex, 2026, 11, subtotal=Decimal(1200), total=Decimal(1200))
    invoice(acme, 2026, 10, status="paid")  # another month: not in the export

    export = export_invoices(NOV, scope=FINANCE)

    assert export.filename == "outpost-invoices-2026-11.csv"
    assert export.content_type == "text/csv; charset=utf-8"
    assert csv_text(export) == (
        "invoice_id,number,tenant,tenant_name,period,period_start_utc,period_end_utc,status,"
        "currency,subtotal,tax,total,tax_name,band,inferences,p95_ms,p95_target_ms,"
        "finalised_at_utc,paid_at_utc,stripe_invoice_id\r\n"
        f"{acme_november.pk},2026-000001,acme,Acme Analytics,2026-11,2026-10-31T23:00:00Z,"
        "2026-11-30T23:00:00Z,finalised,EUR,49.12,9.33,58.45,VAT 19 %,Silver,4000,10.000,"
        "100.000,2026-12-01T09:00:00Z,,\r\n"
        f"{yen.pk},,globex,Globex KK,2026-11,2026-11-01T00:00:00Z,2026-12-01T00:00:00Z,draft,"
        "JPY,1200,0,1200,,,0,,,,,\r\n"
    )


def test_it_exports_invoice_lines_with_credits_negative_and_tax_as_a_line(acme_november):
    first = f"{acme_november.pk},2026-000001,acme,2026-11,finalised,EUR"

    assert csv_text(export_invoice_lines(NOV, scope=FINANCE)) == (
        "invoice_id,invoice_number,tenant,period,status,currency,position,kind,description,"
        "grade,serving,reason,quantity,unit_price,amount\r\n"
        f"{first},1,band_fee,Silver,,,,1,49,49.00\r\n"
        f'{first},2,overage,"Tiny inferences beyond the 1,000 included, per 1,000",'
        "tiny,local,,2000,0.04,0.08\r\n"
        f'{first},3,quality_credit,"Quality credit, tiny (thermal): 100 % of the regional '
        'premium",tiny,regional,thermal,1000,-0.08,-0.08\r\n'
        f"{first},4,tax,VAT 19 %,,,,49.12,0.19,9.33\r\n"
    )


def test_text_that_would_start_a_spreadsheet_formula_is_neutralised_but_amounts_are_not(acme):
    Tenant.objects.filter(pk=acme.pk).update(name="=HYPERLINK(evil)")
    invoice(acme, 2026, 11, lines=[("adjustment", "-5 % goodwill", "1", "-1.00", "-1.000")])

    text = csv_text(export_invoice_lines(NOV, scope=FINANCE))
    invoices = csv_text(export_invoices(NOV, scope=FINANCE))

    assert ",'-5 % goodwill,,,,1,-1,-1.00\r\n" in text
    assert ",acme,'=HYPERLINK(evil),2026-11," in invoices


def test_usage_is_summed_per_utc_month_tenant_region_and_node_class(acme, globex):
    # Berlin's November begins at 23:00 UTC on 31 October: that hour is October's here.
    hourly(acme, datetime(2026, 10, 31, 23, tzinfo=UTC), 5)
    hourly(acme, datetime(2026, 11, 1, tzinfo=UTC), 100, errors=2, energy_j=1_800_000.0)
    hourly(acme, datetime(2026, 11, 20, 13, tzinfo=UTC), 30, served_by="regional",
           reason="tenant_quality", energy_j=1_800_000.0)  # fmt: skip
    hourly(acme, datetime(2026, 11, 20, 13, tzinfo=UTC), 7, node_class="standard")
    hourly(globex, datetime(2026, 11, 5, 8, tzinfo=UTC), 40, region="us-east")
    hourly(acme, datetime(2026, 12, 1, tzinfo=UTC), 1000)  # after the period

    export = export_usage(Period((2026, 10), (2026, 11)), scope=FINANCE)

    assert export.filename == "outpost-usage-2026-10_2026-11.csv"
    assert csv_text(export) == (
        "month_utc,tenant,tenant_name,region,node_class,inferences,local,regional,errors,"
        "energy_kwh\r\n"
        "2026-10,acme,Acme Analytics,eu-west,nano,5,5,0,0,0.000000\r\n"
        "2026-11,acme,Acme Analytics,eu-west,nano,130,100,30,2,1.000000\r\n"
        "2026-11,acme,Acme Analytics,eu-west,standard,7,7,0,0,0.000000\r\n"
        "2026-11,globex,Globex KK,us-east,nano,40,40,0,0,0.000000\r\n"
    )


def test_the_usage_export_is_one_query_run_only_when_it_is_read(
    acme, globex, django_assert_num_queries
):
    for day in range(1, 11):
        hourly(acme, datetime(2026, 11, day, tzinfo=UTC), day)
        hourly(globex, datetime(2026, 11, day, tzinfo=UTC), day, region="us-east")

    with django_assert_num_queries(0):
        export = export_usage(NOV, scope=FINANCE)
    with django_assert_num_queries(1):
        text = csv_text(export)

    assert text.count("\r\n") == 3  # the header and two groups
    assert "2026-11,acme,Acme Analytics,eu-west,nano,55,55,0,0,0.000000" in text


# --- XLSX --------------------------------------------------------------------------------------

_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
_BUILTIN_FORMATS = {0: "General", 1: "0", 2: "0.00", 3: "#,##0", 4: "#,##0.00", 14: "mm-dd-yy"}
_EXCEL_EPOCH = datetime(1899, 12, 30)


def read_xlsx(data: bytes) -> dict[str, list[list[tuple[object, str]]]]:
    """Sheets as rows of (value, number format), dates as datetimes: with openpyxl when it
    is installed, else straight from the sheet XML."""
    try:
        import openpyxl
    except ImportError:
        return _read_xlsx_xml(data)
    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    return {
        sheet.title: [[(cell.value, cell.number_format) for cell in row] for row in sheet.rows]
        for sheet in book.worksheets
    }


def _read_xlsx_xml(data: bytes) -> dict[str, list[list[tuple[object, str]]]]:
    book = zipfile.ZipFile(io.BytesIO(data))
    assert book.testzip() is None
    styles = ElementTree.fromstring(book.read("xl/styles.xml"))
    custom = {
        int(f.get("numFmtId")): f.get("formatCode") for f in styles.iter(f"{{{_NS['m']}}}numFmt")
    }
    xfs = styles.find("m:cellXfs", _NS)
    formats = [
        custom.get(int(xf.get("numFmtId")), _BUILTIN_FORMATS.get(int(xf.get("numFmtId")), "?"))
        for xf in xfs
    ]
    shared = []
    if "xl/sharedStrings.xml" in book.namelist():
        strings = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
        shared = ["".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t")) for si in strings]
    workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
    sheets = {}
    for index, sheet in enumerate(workbook.iter(f"{{{_NS['m']}}}sheet"), start=1):
        root = ElementTree.fromstring(book.read(f"xl/worksheets/sheet{index}.xml"))
        rows = []
        for row in root.iter(f"{{{_NS['m']}}}row"):
            cells = []
            for cell in row.findall("m:c", _NS):
                column = re.match(r"[A-Z]+", cell.get("r")).group()
                position = 0
                for letter in column:
                    position = position * 26 + ord(letter) - 64
                while len(cells) < position - 1:
                    cells.append((None, "General"))
                fmt = formats[int(cell.get("s", 0))]
                kind = cell.get("t")
                if kind == "inlineStr":
                    value = "".join(t.text or "" for t in cell.iter(f"{{{_NS['m']}}}t"))
                elif kind == "s":
                    value = shared[int(cell.find("m:v", _NS).text)]
                else:
                    number = float(cell.find("m:v", _NS).text)
                    value = int(number) if number.is_integer() else number
                    if "yy" in fmt:
                        # A serial day count: exact to the millisecond a double holds.
                        value = _EXCEL_EPOCH + timedelta(milliseconds=round(number * 86_400_000))
                cells.append((value, fmt))
            rows.append(cells)
        # constant_memory leaves trailing empty cells out; openpyxl pads them with None.
        width = max((len(r) for r in rows), default=0)
        sheets[sheet.get("name")] = [r + [(None, "General")] * (width - len(r)) for r in rows]
    return sheets


def values(rows):
    return [[value for value, _ in row] for row in rows]


def test_an_xlsx_export_holds_numbers_in_their_currencys_decimals_and_dates_as_dates(
    acme, globex, acme_november
):
    invoice(globex, 2026, 11, subtotal=Decimal(1200), total=Decimal(1200))

    export = export_invoices(NOV, scope=FINANCE, fmt="xlsx")

    assert export.filename == "outpost-invoices-2026-11.xlsx"
    assert export.content_type == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    [(name, rows)] = read_xlsx(consume(export)).items()
    assert name == "invoices"
    assert values(rows)[0] == [c.header for c in exports.INVOICE_COLUMNS]
    header = values(rows)[0]
    acme_row = dict(zip(header, rows[1], strict=False))
    yen_row = dict(zip(header, rows[2], strict=False))
    assert acme_row["number"] == ("2026-000001", "General")
    assert acme_row["total"] == (58.45, "#,##0.00")
    assert yen_row["total"] == (1200, "#,##0")
    assert acme_row["inferences"][0] == 4000
    assert acme_row["period"] == (datetime(2026, 11, 1), "yyyy-mm")
    assert acme_row["period_start_utc"] == (datetime(2026, 10, 31, 23), "yyyy-mm-dd hh:mm:ss")
    assert acme_row["finalised_at_utc"][0] == datetime(2026, 12, 1, 9)
    assert acme_row["paid_at_utc"][0] is None


def test_every_export_is_offered_in_both_formats_even_when_empty(acme):
    assert list(EXPORTS) == ["invoices", "invoice-lines", "usage"]
    for slug, kind in EXPORTS.items():
        assert kind.label
        text = csv_text(kind.build(NOV, scope=FINANCE, fmt="csv"))
        assert text == ",".join(kind.headers) + "\r\n", slug
        sheets = read_xlsx(consume(kind.build(NOV, scope=FINANCE, fmt="xlsx")))
        assert [values(rows) for rows in sheets.values()] == [[kind.headers]], slug


def test_an_xlsx_sheet_that_is_full_continues_on_a_new_sheet(acme, monkeypatch):
    monkeypatch.setattr(exports, "XLSX_MAX_ROWS", 3)  # the header and two rows
    lines = [("adjustment", f"line {n}", "1", "1", "1.000") for n in range(1, 6)]
    invoice(acme, 2026, 11, lines=lines)

    sheets = read_xlsx(consume(export_invoice_lines(NOV, scope=FINANCE, fmt="xlsx")))

    assert list(sheets) == ["invoice lines", "invoice lines (2)", "invoice lines (3)"]
    descriptions = [row[8] for rows in sheets.values() for row in values(rows)[1:]]
    assert descriptions == [f"line {n}" for n in range(1, 6)]
    assert all(values(rows)[0][8] == "description" for rows in sheets.values())


def test_an_unknown_format_is_refused_before_anything_runs(acme):
    with pytest.raises(ExportError, match="'pdf' is not an export format"):
        export_invoices(NOV, scope=FINANCE, fmt="pdf")


# --- streaming ---------------------------------------------------------------------------------

MANY = 20_000
# What an export may hold in memory at most, however long: a batch of rows and buffers.
MEMORY_BOUND = 1536 * 1024


@pytest.fixture
def many_lines(acme):
    made = invoice(acme, 2026, 11)
    InvoiceLine.objects.bulk_create(
        (
            InvoiceLine(
                invoice=made,
                position=n,
                kind="adjustment",
                grade="tiny",
                serving="regional",
                reason="thermal",
                quantity=Decimal(n),
                unit_price=Decimal("0.12"),
                description=(
                    f"Tiny inferences served regionally (the provider's choice: thermal), per "
                    f"1,000 — late usage of 2026-10 from nd-{n * 7919 % 100_003:06d}"
                ),
                amount=Decimal(n) / 1000,
            )  # fmt: skip
            for n in range(1, MANY + 1)
        ),
        batch_size=2000,
    )
    return made


def peak_while_consuming(export, sink) -> tuple[int, int, int, int]:
    """(chunks, bytes, largest chunk, peak bytes allocated) while the chunks are read and
    written to `sink`, a file on disk (a BytesIO would count the output as held in memory)."""
    chunks = size = largest = 0
    tracemalloc.start()
    try:
        for chunk in export.chunks:
            chunks += 1
            size += len(chunk)
            largest = max(largest, len(chunk))
            sink.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return chunks, size, largest, peak


def test_a_large_csv_export_streams_in_many_chunks_in_bounded_memory(many_lines, tmp_path):
    with open(tmp_path / "lines.csv", "wb") as sink:
        export = export_invoice_lines(NOV, scope=FINANCE)
        chunks, size, largest, peak = peak_while_consuming(export, sink)

    assert size > 3_000_000
    assert chunks > 60 and largest < 2 * exports.CHUNK_BYTES  # ~32 KiB of text each
    assert peak < min(size / 4, MEMORY_BOUND), f"peak {peak:,} B for {size:,} B of CSV"
    text = (tmp_path / "lines.csv").read_bytes().decode()
    assert text.count("\r\n") == MANY + 1
    assert text.endswith(",20000,0.12,20.00\r\n")


def test_a_large_xlsx_export_is_written_to_disk_and_streamed_in_bounded_memory(
    many_lines, tmp_path
):
    with open(tmp_path / "lines.xlsx", "wb") as sink:
        export = export_invoice_lines(NOV, scope=FINANCE, fmt="xlsx")
        chunks, size, largest, peak = peak_while_consuming(export, sink)

    # The file is zipped: the workbook it holds (what xlsxwriter keeps in memory without
    # constant_memory) is many times its size. Memory stays at the fixed cost of one batch
    # of rows, zlib's state and the copy buffers, whatever the number of rows.
    data = (tmp_path / "lines.xlsx").read_bytes()
    workbook = sum(part.file_size for part in zipfile.ZipFile(io.BytesIO(data)).infolist())
    assert chunks > 30 and largest == exports.CHUNK_BYTES
    assert peak < min(workbook / 10, MEMORY_BOUND), f"peak {peak:,} B for {workbook:,} B"
    [rows] = read_xlsx(data).values()
    assert len(rows) == MANY + 1
    assert values(rows)[-1][6:8] == [MANY, "adjustment"]
    assert values(rows)[-1][8] == many_lines.lines.last().description
    assert rows[-1][14] == (20, "#,##0.00")


# --- scope and filters -------------------------------------------------------------------------


def test_a_tenants_export_never_holds_another_tenants_rows(acme, globex, acme_november):
    invoice(globex, 2026, 11, lines=[("band_fee", "Gold", "1", "9000", "9000")])
    hourly(acme, datetime(2026, 11, 3, tzinfo=UTC), 10)
    hourly(globex, datetime(2026, 11, 3, tzinfo=UTC), 20)

    for kind in EXPORTS.values():
        for fmt in ("csv", "xlsx"):
            export = kind.build(NOV, scope=Scope.of(acme), fmt=fmt)
            data = consume(export)
            assert export.filename.startswith("outpost-acme-")
            if fmt == "csv":
                assert b"acme" in data and b"globex" not in data, kind.slug
            else:
                cells = [v for rows in read_xlsx(data).values() for v in values(rows)[1:]]
                assert cells and all(row[kind.headers.index("tenant")] == "acme" for row in cells)


def test_a_tenant_cannot_ask_for_another_tenants_export(acme, globex):
    for kind in EXPORTS.values():
        with pytest.raises(ExportError, match="acme's exports hold only its own rows"):
            kind.build(NOV, scope=Scope.of(acme), tenant=globex)


def test_finance_may_narrow_an_export_to_one_tenant(acme, globex, acme_november):
    invoice(globex, 2026, 11)

    text = csv_text(export_invoices(NOV, scope=FINANCE, tenant=globex))

    assert text.count("\r\n") == 2 and ",globex," in text and ",acme," not in text


def test_a_period_of_several_months_takes_each_invoice_by_its_own_month(acme):
    for year, month in [(2025, 12), (2026, 1), (2026, 2), (2026, 3)]:
        invoice(acme, year, month)

    text = csv_text(export_invoices(Period.parse("2025-12", "2026-02"), scope=FINANCE))

    assert re.findall(r",(\d{4}-\d\d),\d{4}-", text) == ["2025-12", "2026-01", "2026-02"]


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [
        ("2026-13", None, "2026-13 is not a month"),
        ("November", None, "'November' is not a month"),
        ("2026-11", "2026-10", "the period ends \\(2026-10\\) before it starts"),
    ],
)
def test_a_bad_period_is_refused_with_the_reason(first, last, message):
    with pytest.raises(ExportError, match=message):
        Period.parse(first, last)
