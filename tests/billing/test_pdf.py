"""The invoice as a PDF (billing/pdf.py): what its text layer says, pages, fonts, determinism.

Every test runs twice: with Helvetica, fpdf2's core font (what a machine without fonts gets),
and with the Unicode TrueType font billing.pdf finds on this machine (skipped where there is
none, except in CI, which installs DejaVu and fails without it). The text layer is read by `pdf_text` below, a small reader of what fpdf2 writes."""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import billing.pdf
from billing.models import Invoice, InvoiceLine, Tenant
from billing.pdf import invoice_pdf
from tests.conftest import missing_locally

FINALISED_AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
LONG = (
    "Medium inferences served regionally beyond the Silver band's included allowance, "
    "rated at the overage price of the price book in effect on the day they were served"
)


@pytest.fixture(params=["core font", "unicode font"], autouse=True)
def font(request, monkeypatch):
    if request.param == "core font":
        monkeypatch.setattr(billing.pdf, "UNICODE_FONTS", ())
        monkeypatch.setattr(billing.pdf, "FALLBACK_FONTS", ())
    elif not any(Path(regular).is_file() for regular, _ in billing.pdf.UNICODE_FONTS):
        # A developer's machine without any Unicode font still runs the core-font half.
        missing_locally(
            "no Unicode TrueType font on this machine (billing.pdf.UNICODE_FONTS)",
            ci_hint=".ci/run installs fonts-dejavu-core",
        )
    return request.param


def make_invoice(tenant: Tenant, *, currency="EUR", lines=None, draft=False, **fields) -> Invoice:
    """November 2026 for `tenant`, finalised as 2026-000042 unless `draft`."""
    values = {
        "tenant": tenant,
        "year": 2026,
        "month": 11,
        "period_start": datetime(2026, 10, 31, 23, 0, tzinfo=UTC),
        "period_end": datetime(2026, 11, 30, 23, 0, tzinfo=UTC),
        "currency": currency,
        "status": "draft" if draft else "finalised",
        "number": "" if draft else "2026-000042",
        "finalised_at": None if draft else FINALISED_AT,
        "created_at": datetime(2026, 11, 1, 0, 5, tzinfo=UTC),
        **fields,
    }
    invoice = Invoice.objects.create(**values)
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            position=position,
            kind=kind,
            description=description,
            quantity=Decimal(quantity),
            unit_price=price and Decimal(price),
            amount=Decimal(amount),
        )  # fmt: skip
        for position, (kind, description, quantity, price, amount) in enumerate(lines or [])
    )
    return invoice


@pytest.fixture
def november(acme):
    acme.billing_email = "billing@acme.example"
    acme.save()
    return make_invoice(
        acme,
        lines=[
            ("fee", "Silver band, monthly fee", "1", "49.000000", "49.00"),
            ("overage", LONG, "12345.5", "0.000300", "3.70"),
            ("credit", "SLA credit: p95 above the band's target", "1", None, "-5.27"),
        ],
        subtotal=Decimal("47.43"),
        tax_name="VAT 19 % (DE)",
        tax=Decimal("9.01"),
        total=Decimal("56.44"),
        band="Silver",
        p95_target_ms=100,
        p95_ms=112.5,
        stripe_url="https://invoice.stripe.com/i/acct_1Outpost/test_YWNjdF8x",
    )


def test_a_finalised_invoice_says_who_owes_what_for_which_month(november):
    data = invoice_pdf(
        november, provider_name="Edge Cloud GmbH", provider_address="Hauptstr. 1\n10115 Berlin"
    )
    text = pdf_text(data)

    assert data.startswith(b"%PDF-")
    for expected in [
        "Edge Cloud GmbH", "Hauptstr. 1", "10115 Berlin",
        "Acme Analytics", "billing@acme.example",
        "INVOICE", "2026-000042", "2026-11 (Europe/Berlin)", "Issued 2026-12-01", "Finalised",
        "Silver band, monthly fee", LONG, "SLA credit: p95 above the band's target",
        "Quantity", "Unit price", "Amount (EUR)",
        "12,345.5", "0.0003", "49.00", "3.70", "-5.27",
        "Subtotal 47.43", "VAT 19 % (DE) 9.01", "Total 56.44 EUR",
        "Measured p95 112.5 ms against the Silver band's 100 ms target.",
        "Pay online: https://invoice.stripe.com/i/acct_1Outpost/test_YWNjdF8x",
        "Page 1 of 1",
    ]:  # fmt: skip
        assert expected in text, expected
    assert "DRAFT" not in text and "VOID" not in text
    # The hosted page is a link, not only its address in print.
    assert b"/URI (https://invoice.stripe.com/i/acct_1Outpost/test_YWNjdF8x)" in data


def test_a_long_description_wraps_onto_several_lines_of_its_cell(november):
    fragments = pdf_fragments(invoice_pdf(november))

    assert LONG not in fragments
    assert sum(fragment in LONG for fragment in fragments if len(fragment) > 10) >= 2


@pytest.mark.parametrize(
    ("currency", "amount", "total", "printed_amount", "printed_total"),
    [
        ("EUR", "1234.5", "1234.5", "1,234.50", "1,234.50 EUR"),
        ("JPY", "123457", "123457", "123,457", "123,457 JPY"),
        ("KWD", "12.345", "12.3", "12.345", "12.300 KWD"),
    ],
)
def test_amounts_have_exactly_their_currencys_minor_units(
    acme, currency, amount, total, printed_amount, printed_total
):
    invoice = make_invoice(
        acme,
        currency=currency,
        lines=[("usage", "Tiny inferences, served locally", "1000", "0.5", amount)],
        subtotal=Decimal(total),
        total=Decimal(total),
    )
    text = pdf_text(invoice_pdf(invoice))

    assert f"Total {printed_total}" in text
    assert f"Subtotal {printed_total.split()[0]}" in text
    assert printed_amount in text
    assert f"Amount ({currency})" in text
    if currency == "JPY":
        assert "123,457." not in text
        assert "0.5" in text  # a unit price keeps the decimals it has


def test_a_draft_is_marked_draft_and_has_no_number_or_issue_date(acme):
    draft = make_invoice(
        acme, draft=True, lines=[("usage", "Tiny inferences, served locally", "10", "1", "10")]
    )
    text = pdf_text(invoice_pdf(draft))

    assert "DRAFT INVOICE" in text
    assert "DRAFT (not yet numbered)" in text
    assert "Issued not yet issued" in text
    assert "Draft invoice 2026-11" in text  # the footer
    assert "2026-000042" not in text


def test_a_voided_invoice_is_marked_void(november):
    november.move_to("void", at=FINALISED_AT)
    text = pdf_text(invoice_pdf(november))

    assert "VOID" in text and "Status Void" in text


def test_two_hundred_lines_run_onto_several_pages_each_with_the_table_heading(acme):
    lines = [
        ("usage", f"Inferences of model {n:03d}, grade medium, served locally", "100", "0.4", "0.04")
        for n in range(200)
    ]  # fmt: skip
    invoice = make_invoice(acme, lines=lines, subtotal=Decimal(8), total=Decimal(8))
    data = invoice_pdf(invoice)
    text = pdf_text(data)

    pages = len(re.findall(rb"/Type /Page\b", data))
    assert pages >= 3
    assert text.count("Amount (EUR)") == pages
    assert f"Page 1 of {pages}" in text and f"Page {pages} of {pages}" in text
    for _, description, *_ in lines:
        assert description in text, description
    assert "Total 8.00 EUR" in text


def test_text_outside_latin_1_renders(acme, font):
    tenant = Tenant.objects.create(
        slug="nakamura", name="Nakamura ロボティクス", time_zone="Asia/Tokyo"
    )
    invoice = make_invoice(
        tenant,
        lines=[("fee", "Größe – “Gold” band fee, €49 a month", "1", "49", "49.00")],
        subtotal=Decimal(49),
        total=Decimal(49),
    )
    data = invoice_pdf(invoice, provider_name="Outpost Łódź")
    text = pdf_text(data)

    assert data.startswith(b"%PDF-")
    assert "Größe – “Gold” band fee, €49 a month" in text  # all of it Windows-1252
    if font == "core font":
        # What Helvetica cannot draw: unaccented where it has a letter, "?" where not.
        assert "Nakamura ??????" in text
        assert "Outpost Lódz" in text
    else:
        assert "Nakamura ロボティクス" in text or "Nakamura ??????" in text
        assert "Outpost Łódź" in text
    assert "2026-11 (Asia/Tokyo)" in text


def test_the_same_invoice_renders_to_the_same_bytes_dated_when_it_was_finalised(november):
    first = invoice_pdf(november, provider_name="Edge Cloud GmbH")

    assert invoice_pdf(november, provider_name="Edge Cloud GmbH") == first
    assert b"/CreationDate (D:20261201080000+00'00')" in first
    assert invoice_pdf(november, provider_name="Another Provider") != first


# A reader of the text layer fpdf2 writes: content streams of `/Fn size Tf` and `(...) Tj`
# (or `[...] TJ`); a TrueType font's two-byte codes are mapped back through its ToUnicode
# CMap, a core font's bytes are Windows-1252.

_OBJECT = re.compile(rb"(\d+) 0 obj")
_STRING = rb"\((?:\\.|[^\\)])*\)"
_OPERATION = re.compile(
    rb"/(F\d+)\s+[\d.]+\s+Tf|(" + _STRING + rb")\s*Tj|\[((?:" + _STRING + rb"|[^\]])*)\]\s*TJ", re.S
)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def pdf_text(data: bytes) -> str:
    """The document's text, fragment after fragment, whitespace collapsed to single spaces."""
    return " ".join(" ".join(pdf_fragments(data)).split())


def pdf_fragments(data: bytes) -> list[str]:
    objects, streams = _objects(data)
    cmaps = {}
    for body in objects.values():
        for name, font in re.findall(rb"/(F\d+) (\d+) 0 R", body):
            to_unicode = re.search(rb"/ToUnicode (\d+) 0 R", objects[int(font)])
            cmaps[name] = _cmap(streams[int(to_unicode.group(1))]) if to_unicode else None
    contents = {
        int(n) for body in objects.values() for n in re.findall(rb"/Contents (\d+) 0 R", body)
    }
    fragments, font = [], None
    for number in sorted(contents):
        for match in _OPERATION.finditer(streams[number]):
            if match.group(1):
                font = cmaps[match.group(1)]
            else:
                strings = (
                    [match.group(2)] if match.group(2) else re.findall(_STRING, match.group(3))
                )
                raw = b"".join(_unescape(string[1:-1]) for string in strings)
                fragments.append(_decode(raw, font))
    return fragments


def _objects(data: bytes) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Each object's dictionary, and the stream of those that have one (inflated), by number:
    a stream is `/Length` bytes long, and may hold anything."""
    objects, streams, position = {}, {}, 0
    while match := _OBJECT.search(data, position):
        number, start = int(match.group(1)), match.end()
        end, stream = data.find(b"endobj", start), data.find(b"stream", start)
        if stream == -1 or stream > end:
            objects[number], position = data[start:end], end
            continue
        objects[number] = head = data[start:stream]
        first = stream + len(b"stream") + (2 if data[stream + 6 : stream + 8] == b"\r\n" else 1)
        length = int(re.search(rb"/Length (\d+)", head).group(1))
        content = data[first : first + length]
        streams[number] = zlib.decompress(content) if b"/FlateDecode" in head else content
        position = first + length
    return objects, streams


def _cmap(stream: bytes) -> dict[int, str]:
    mapping = {}
    for code, text in re.findall(rb"<([0-9A-Fa-f]{4})> <([0-9A-Fa-f]+)>\s", stream):
        mapping[int(code, 16)] = bytes.fromhex(text.decode()).decode("utf-16-be")
    return mapping


def _unescape(string: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(string):
        char = string[i : i + 1]
        if char != b"\\":
            out += char
            i += 1
            continue
        following = string[i + 1 : i + 2]
        octal = re.match(rb"[0-7]{1,3}", string[i + 1 : i + 4])
        if octal:
            out.append(int(octal.group(), 8) & 0xFF)
            i += 1 + len(octal.group())
        else:
            out += _ESCAPES.get(following, following)
            i += 2
    return bytes(out)


def _decode(raw: bytes, cmap: dict[int, str] | None) -> str:
    if cmap is None:
        return raw.decode("cp1252")
    codes = (int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
    return "".join(cmap.get(code, "\ufffd") for code in codes)
