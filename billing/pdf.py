"""An invoice as a PDF: the printable invoice (templates/portal/invoice.html) on A4 pages,
drawn with fpdf2 (pure Python).

Fonts. fpdf2 ships no TrueType fonts, and its core fonts (Helvetica) hold only Windows-1252:
Latin-1 plus "€", "–", "…" and a few more. So the invoice is set in the first Unicode font of
`UNICODE_FONTS` found on the machine (DejaVu Sans on Debian and most Linux images, where the
fonts-dejavu-core package is part of the base system), with the fonts of `FALLBACK_FONTS` found
(CJK fonts, say) for the glyphs it lacks. Where none is found (a bare `python:3.11-slim`
container has no fonts at all) Helvetica is used. Either way no text can make the rendering
fail: a character that no font in use can draw is replaced, by its unaccented letter where it
has one ("ő" → "o", "Ł" → "L") and by "?" otherwise. DejaVu Sans has no Japanese, so a tenant
named "Nakamura ロボティクス" is "Nakamura ??????" on its invoice unless a CJK font is installed.

The same invoice renders to the same bytes: the document's creation date is the invoice's
(finalised, else last refreshed, else created), not the clock's.
"""

from __future__ import annotations

import logging
import unicodedata
from decimal import Decimal
from pathlib import Path

from django.utils import timezone
from fpdf import FPDF
from fpdf.enums import TableBordersLayout, XPos, YPos
from fpdf.fonts import FontFace

from billing.choices import InvoiceStatus
from billing.currencies import minor_units
from billing.models.invoices import Invoice
from billing.templatetags.money import money

# (regular, bold) TrueType files, the first whose regular file exists is used. Tests replace
# these tuples to choose the font path.
UNICODE_FONTS: tuple[tuple[str, str], ...] = (
    (  # Debian, Ubuntu (fonts-dejavu-core)
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
    (  # Fedora
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans-Bold.ttf",
    ),
    (  # Alpine
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    ),
    (  # Arch
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    ),
    (  # Debian, Ubuntu (fonts-liberation)
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    ),
)
# Single TrueType files used, when present, for what the Unicode font cannot draw.
FALLBACK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # fonts-droid-fallback: CJK
    "/usr/share/fonts/truetype/unifont/unifont.ttf",  # fonts-unifont: the whole BMP, bitmap-like
)

# fontTools logs every step of subsetting a font at INFO, a dozen lines per font per invoice.
logging.getLogger("fontTools.subset").setLevel(logging.WARNING)

_SANS = "outpost-sans"
_FALLBACK = "outpost-fallback"
_CORE = "helvetica"
_CORE_ENCODING = "windows-1252"
_REPLACEMENT = "?"
# Letters and signs that Unicode does not decompose, spelt as the core font can: "Łódź" → "Lódz".
_SPELLINGS = str.maketrans(
    {"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Ŧ": "T", "ŧ": "t",
     "−": "-", "‐": "-", "‑": "-", "‒": "-", "′": "'", "″": '"', "≤": "<=", "≥": ">="}
)  # fmt: skip

_MARGIN = 18.0  # mm, left, right and top
_BOTTOM = 20.0  # mm kept free for the footer
_INK = (33, 37, 41)
_MUTED = (108, 117, 125)
_RULE = (206, 212, 218)
_WATERMARK = (232, 232, 232)
# Across every page of an invoice that is no demand for payment.
_WATERMARKS = {InvoiceStatus.DRAFT: "DRAFT", InvoiceStatus.VOID: "VOID"}
# Description, quantity, unit price, amount: shares of the page's width.
_COLUMNS = (52, 14, 15, 19)


def invoice_pdf(
    invoice: Invoice, *, provider_name: str = "Outpost", provider_address: str = ""
) -> bytes:
    """The invoice as a PDF document of one or more A4 pages (see the module's docstring
    for fonts). `provider_address` may span lines."""
    return bytes(_render(invoice, provider_name, provider_address).output())


def _render(invoice: Invoice, provider_name: str, provider_address: str) -> _InvoiceDocument:
    pdf = _InvoiceDocument(invoice)
    pdf.set_creation_date(
        timezone.localtime(invoice.finalised_at or invoice.refreshed_at or invoice.created_at)
    )
    pdf.set_title(pdf.clean(_title(invoice)))
    pdf.set_author(pdf.clean(provider_name))
    pdf.set_creator(pdf.clean(provider_name))
    pdf.set_subject(pdf.clean(f"{invoice.tenant.name}, {invoice.label}"))
    pdf.set_lang("en")
    pdf.add_page()
    _parties(pdf, invoice, provider_name, provider_address)
    _lines(pdf, invoice)
    _totals(pdf, invoice)
    _notes(pdf, invoice)
    return pdf


def _title(invoice: Invoice) -> str:
    if invoice.number:
        return f"Invoice {invoice.number}"
    return f"Draft invoice {invoice.label}"


class _InvoiceDocument(FPDF):
    """A4 in millimetres, the font chosen (module docstring), a "DRAFT" ("VOID") watermark
    on every page of a draft (a voided invoice) and a footer naming the invoice and the page."""

    def __init__(self, invoice: Invoice) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.invoice = invoice
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(auto=True, margin=_BOTTOM)
        self.alias_nb_pages()
        self.core_fonts_encoding = _CORE_ENCODING
        self.family, self._drawable = self._load_fonts()
        self.set_font(self.family, size=9)
        self.set_text_color(*_INK)

    def _load_fonts(self) -> tuple[str, frozenset[int] | None]:
        """The family to set text in, and the code points its fonts can draw (None: the core
        font, whose limit is its encoding)."""
        for regular, bold in UNICODE_FONTS:
            if not Path(regular).is_file():
                continue
            self.add_font(_SANS, "", regular)
            self.add_font(_SANS, "B", bold if Path(bold).is_file() else regular)
            drawable = set(self.fonts[_SANS].cmap)
            fallbacks = [path for path in FALLBACK_FONTS if Path(path).is_file()]
            if fallbacks:
                self.add_font(_FALLBACK, "", fallbacks[0])
                self.set_fallback_fonts([_FALLBACK], exact_match=False)
                drawable.update(self.fonts[_FALLBACK].cmap)
            return _SANS, frozenset(drawable)
        return _CORE, None

    def clean(self, text: str) -> str:
        """`text` with controls made spaces and what the fonts cannot draw replaced."""
        return "".join(self._drawable_char(char) for char in str(text))

    def _drawable_char(self, char: str) -> str:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):  # tabs, newlines and the like
            return " "
        if self._can_draw(char):
            return char
        # An accented letter without its accent, "ő" → "o"; a ligature spelt out, "ﬁ" → "fi";
        # a letter Unicode does not decompose as its table spells it, "Ł" → "L".
        decomposed = "".join(
            part
            for part in unicodedata.normalize("NFKD", char.translate(_SPELLINGS))
            if not unicodedata.combining(part)
        )
        if decomposed and all(self._can_draw(part) for part in decomposed):
            return decomposed
        return _REPLACEMENT

    def _can_draw(self, char: str) -> bool:
        if self._drawable is None:
            try:
                char.encode(_CORE_ENCODING)
            except UnicodeEncodeError:
                return False
            return True
        return ord(char) in self._drawable

    def header(self) -> None:
        word = _WATERMARKS.get(self.invoice.status)
        if not word:
            return
        with self.local_context(text_color=_WATERMARK):
            self.set_font(self.family, "B", 110)
            width = self.get_string_width(word)
            x, y = self.w / 2, self.h / 2
            with self.rotation(45, x, y):
                self.text(x - width / 2, y + 15, word)

    def footer(self) -> None:
        self.set_y(-_BOTTOM + 6)
        with self.local_context(text_color=_MUTED):
            self.set_font(self.family, size=8)
            self.cell(0, 4, self.clean(_title(self.invoice)), align="L")
            self.set_x(self.l_margin)
            self.cell(0, 4, f"Page {self.page_no()} of {{nb}}", align="R")


def _parties(pdf: _InvoiceDocument, invoice: Invoice, provider: str, address: str) -> None:
    """The provider and the document's name; the tenant billed and the invoice's facts."""
    top = pdf.get_y()
    half = pdf.epw / 2
    pdf.set_font(pdf.family, "B", 16)
    pdf.multi_cell(half, 7, pdf.clean(provider), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.family, size=9)
    with pdf.local_context(text_color=_MUTED):
        for line in address.splitlines():
            if line.strip():
                pdf.multi_cell(half, 4.5, pdf.clean(line.strip()))
                pdf.set_x(pdf.l_margin)
    left_bottom = pdf.get_y()

    pdf.set_xy(pdf.l_margin + half, top)
    pdf.set_font(pdf.family, "B", 16)
    pdf.cell(half, 7, "DRAFT INVOICE" if invoice.is_draft else "INVOICE", align="R")
    pdf.set_xy(pdf.l_margin + half, top + 7)
    pdf.set_font(pdf.family, "B", 11)
    pdf.cell(half, 6, pdf.clean(invoice.number or invoice.label), align="R")
    pdf.set_y(max(left_bottom, top + 13) + 8)

    top = pdf.get_y()
    tenant = invoice.tenant
    with pdf.local_context(text_color=_MUTED):
        pdf.set_font(pdf.family, size=8)
        pdf.cell(half, 4.5, "BILL TO", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.family, "B", 10)
    pdf.multi_cell(half - 4, 5, pdf.clean(tenant.name), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(pdf.family, size=9)
    if tenant.billing_email:
        pdf.multi_cell(
            half - 4, 4.5, pdf.clean(tenant.billing_email), new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    left_bottom = pdf.get_y()

    issued = timezone.localtime(invoice.finalised_at) if invoice.finalised_at else None
    facts = [
        ("Invoice number", invoice.number or "DRAFT (not yet numbered)"),
        ("Period", f"{invoice.label} ({tenant.time_zone})"),
        ("Issued", f"{issued:%Y-%m-%d}" if issued else "not yet issued"),
        ("Status", invoice.get_status_display()),
        ("Currency", invoice.currency),
    ]
    pdf.set_y(top)
    label_width, value_width = 30, half - 30
    for label, value in facts:
        pdf.set_x(pdf.l_margin + half)
        with pdf.local_context(text_color=_MUTED):
            pdf.set_font(pdf.family, size=9)
            pdf.cell(label_width, 5, label)
        pdf.set_font(pdf.family, "B" if label == "Invoice number" else "", 9)
        pdf.multi_cell(
            value_width, 5, pdf.clean(value), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )
    pdf.set_y(max(left_bottom, pdf.get_y()) + 8)


def _lines(pdf: _InvoiceDocument, invoice: Invoice) -> None:
    """The lines as a table whose heading row is repeated on every page it runs onto."""
    currency = invoice.currency
    pdf.set_font(pdf.family, size=9)
    pdf.set_draw_color(*_RULE)
    pdf.set_line_width(0.2)
    headings = FontFace(emphasis="BOLD", color=_INK, fill_color=(241, 243, 245))
    with pdf.table(
        col_widths=_COLUMNS,
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
        v_align="TOP",
        borders_layout=TableBordersLayout.HORIZONTAL_LINES,
        headings_style=headings,
        line_height=4.6,
        padding=(1.4, 1.5),
        width=pdf.epw,
        repeat_headings=1,
    ) as table:
        table.row(("Description", "Quantity", "Unit price", f"Amount ({currency})"))
        for line in invoice.lines.all():
            table.row(
                (
                    pdf.clean(line.description),
                    _quantity(line.quantity),
                    _unit_price(line.unit_price, currency),
                    money(line.amount, currency),
                )
            )
    pdf.ln(3)


def _totals(pdf: _InvoiceDocument, invoice: Invoice) -> None:
    currency = invoice.currency
    rows = [("Subtotal", money(invoice.subtotal, currency), "")]
    if invoice.tax_name:
        rows.append((pdf.clean(invoice.tax_name), money(invoice.tax, currency), ""))
    rows.append(("Total", f"{money(invoice.total, currency)} {currency}", "B"))
    height = 6.0
    if pdf.will_page_break(height * len(rows) + 2):
        pdf.add_page()
    label_x = pdf.l_margin + pdf.epw * 0.45
    label_width, value_width = pdf.epw * 0.30, pdf.epw * 0.25
    for label, value, style in rows:
        if style:
            pdf.line(label_x, pdf.get_y(), pdf.l_margin + pdf.epw, pdf.get_y())
        pdf.set_x(label_x)
        pdf.set_font(pdf.family, style, 11 if style else 9)
        pdf.cell(label_width, height, label)
        pdf.cell(value_width, height, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)


def _notes(pdf: _InvoiceDocument, invoice: Invoice) -> None:
    """The band's measured latency against its target, and where to pay."""
    pdf.set_font(pdf.family, size=9)
    if invoice.p95_target_ms:
        measured = "–" if invoice.p95_ms is None else f"{_ms(invoice.p95_ms)} ms"
        band = f"the {invoice.band} band's" if invoice.band else "the band's"
        text = f"Measured p95 {measured} against {band} {_ms(invoice.p95_target_ms)} ms target."
        pdf.multi_cell(0, 5, pdf.clean(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1)
    if invoice.stripe_url:
        pdf.write(5, "Pay online: ")
        with pdf.local_context(text_color=(13, 110, 253)):
            pdf.set_font(pdf.family, "U", 9)
            pdf.write(5, pdf.clean(invoice.stripe_url), link=invoice.stripe_url)
        pdf.ln(6)


def _quantity(quantity: Decimal) -> str:
    """At most four decimals, none for a whole number (as floatformat:"-4" prints it)."""
    rounded = Decimal(quantity).quantize(Decimal("0.0001"))
    if rounded == rounded.to_integral_value():
        return f"{rounded:,.0f}"
    return f"{rounded.normalize():,f}"


def _unit_price(price: Decimal | None, currency: str) -> str:
    """At least the currency's minor units, more where the price has them (0.00004 EUR)."""
    if price is None:
        return ""
    exponent = Decimal(price).normalize().as_tuple().exponent
    places = max(minor_units(currency), -exponent if isinstance(exponent, int) else 0)
    return f"{Decimal(price):,.{places}f}"


def _ms(value: float) -> str:
    """Milliseconds with at most one decimal, none when whole (floatformat:"-1")."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text
