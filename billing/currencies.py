"""ISO 4217 minor units, and rounding an amount to them (DESIGN §6: half-up, at the line).

Plain Python, no Django: `billing/rating.py` rounds every invoice line here. The table lists
the active ISO 4217 codes that have a minor unit; funds, metals and testing codes (XAU, XDR,
XTS...) have none and are refused, as is any code not listed. Codes are matched without
regard to case, because Stripe spells them in lower case.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS = "CLF UYW"
_TWO_DECIMALS = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP "
    "GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT "
    "LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN "
    "NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE "
    "SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES "
    "WST XCD XCG YER ZAR ZMW ZWG"
)

MINOR_UNITS: dict[str, int] = {
    code: digits
    for codes, digits in (
        (_ZERO_DECIMALS, 0),
        (_TWO_DECIMALS, 2),
        (_THREE_DECIMALS, 3),
        (_FOUR_DECIMALS, 4),
    )
    for code in codes.split()
}

# One exponent per number of decimals, for Decimal.quantize.
_EXPONENTS = {digits: Decimal(1).scaleb(-digits) for digits in set(MINOR_UNITS.values())}


def minor_units(code: str) -> int:
    """Decimals of the currency's minor unit: 2 for EUR, 0 for JPY, 3 for KWD."""
    try:
        return MINOR_UNITS[code.upper()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"Unknown currency {code!r}: not an ISO 4217 code with a minor unit "
            "(billing.currencies.MINOR_UNITS lists them)."
        ) from None


def minor_unit(code: str) -> Decimal:
    """The smallest amount of the currency: Decimal('0.01') for EUR, Decimal('1') for JPY."""
    return _EXPONENTS[minor_units(code)]


def quantize(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half-up (away from zero on a tie) to the currency's minor unit.

    A float is refused: it cannot hold most cents exactly, so it has been rounded already.
    A result of zero is never negative (-0.00 would print as a credit)."""
    if not isinstance(amount, Decimal):
        raise TypeError(
            f"An amount must be a Decimal, not {type(amount).__name__} ({amount!r})"
            + (": a float cannot hold cents exactly" if isinstance(amount, float) else "")
        )
    if not amount.is_finite():
        raise ValueError(f"An amount must be finite, not {amount}")
    rounded = amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)
    return rounded if rounded else rounded.copy_abs()
