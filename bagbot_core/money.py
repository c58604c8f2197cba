"""Exact decimal parsing for amounts and prices.

Money never passes through binary floating point inside bagbot. Every value the router
accepts fits ``NUMERIC(38, 18)`` exactly, so what is validated is what is stored and what is
sent: a value that would need rounding to fit is an error, not a silent change.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

from bagbot_core.errors import OrderValidationError

#: Digits after the decimal point that bagbot stores exactly.
MAX_SCALE = 18
#: Exclusive upper bound for any amount or price (``NUMERIC(38, 18)`` leaves 20 integer digits).
MAX_VALUE = Decimal(10) ** 20
# Wide enough that normalising any accepted value never rounds it.
_EXACT = Context(prec=80, Emax=999_999, Emin=-999_999)
#: A number as bagbot reads text: ASCII digits, optional sign, point and exponent -- or a
#: NaN/infinity spelling, parsed so that callers can say "must be finite".
_NUMBER_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|s?nan[0-9]*|inf|infinity)",
    re.IGNORECASE,
)


def parse_number_text(text: str) -> Decimal | None:
    """``text`` as a Decimal if it is a number written in ASCII, else ``None``.

    ``Decimal()`` alone reads every Unicode digit (``"0\u06601"`` -- an Arabic-Indic zero
    that looks like a dot -- is 1) and underscores (``"1_0"`` is 10); money text may hold
    only ``0-9``, a sign, a point and an exponent. Surrounding ASCII whitespace is ignored;
    NaN and infinities are returned for the caller to refuse.
    """
    if not text.isascii():
        return None
    text = text.strip()
    if len(text) > 100 or not _NUMBER_RE.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # not reached for text the pattern accepts
        return None


def to_decimal(value: object, field: str) -> Decimal:
    """Parse ``value`` into a finite, positive :class:`~decimal.Decimal` that fits storage.

    Accepts ``Decimal``, ``int`` and numeric ``str``. A ``float`` is accepted through
    ``str(value)`` (so ``0.1`` means ``Decimal("0.1")``, not the binary approximation).
    ``bool`` is refused: ``True`` is not an amount. Text must be written in ASCII (see
    :func:`parse_number_text`): ``"\uff11"`` or ``"0\u06601"`` are refused, never read as 1.

    :raises OrderValidationError: naming ``field`` for anything else -- NaN, infinities,
        zero, negatives, malformed text, more than 18 decimal places, 10**20 or more.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str | float):
        raise OrderValidationError(f"{field} must be a number, got {type(value).__name__}")
    if isinstance(value, Decimal | int):
        number = Decimal(value)  # exact; str() of a huge int would raise
    else:
        text = str(value)
        if not text.isascii():
            raise OrderValidationError(
                f"{field} must be written with ASCII digits 0-9, got {text[:40]!a}"
            )
        text = text.strip()
        parsed = parse_number_text(text) if text else None
        if parsed is None:
            raise OrderValidationError(f"{field} is not a number: {text[:40]!r}")
        number = parsed
    if not number.is_finite():
        raise OrderValidationError(f"{field} must be finite, got {number}")
    if number <= 0:
        raise OrderValidationError(f"{field} must be greater than zero, got {number}")
    if number.adjusted() >= 20:
        raise OrderValidationError(f"{field} is too large: {number:.6E} (limit 1E+20)")
    if number.adjusted() < -MAX_SCALE:
        raise OrderValidationError(f"{field} has more than {MAX_SCALE} decimal places: {number}")
    number = normalize(number)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_SCALE:
        raise OrderValidationError(f"{field} has more than {MAX_SCALE} decimal places: {number}")
    return number


def normalize(number: Decimal) -> Decimal:
    """Canonical form: no trailing zeros, never scientific notation for integers.

    ``Decimal("1.500")`` -> ``1.5``; ``Decimal("100")`` stays ``100`` (not ``1E+2``).
    """
    if number == 0:
        return Decimal(0)
    reduced = number.normalize(_EXACT)
    exponent = reduced.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return reduced.quantize(Decimal(1), context=_EXACT)
    return reduced


def round_to_step(value: Decimal, step: Decimal | None, rounding: str) -> Decimal:
    """``value`` rounded to a whole number of ``step`` (``rounding``: a ``decimal`` mode).

    Exact for every value bagbot accepts: the quotient of a 20-digit amount and a 1e-18
    step has 38 digits, past ``decimal``'s default 28-digit context, which would raise
    ``InvalidOperation``. No step (``None`` or not positive) returns ``value`` normalised.
    """
    if step is None or step <= 0:
        return normalize(value)
    units = _EXACT.divide(value, step).quantize(Decimal(1), rounding=rounding, context=_EXACT)
    return normalize(_EXACT.multiply(units, step))


def parse_setting(value: str, name: str) -> Decimal:
    """Parse a numeric setting (e.g. an environment variable) into a positive Decimal.

    :raises ConfigurationError: naming the setting when the value is not a finite, positive
        number.
    """
    from bagbot_core.errors import ConfigurationError

    try:
        return to_decimal(value, name)
    except OrderValidationError as exc:
        raise ConfigurationError(f"{name}={value!r} is not valid: {exc}") from None


def decimal_text(number: Decimal | None) -> str | None:
    """Plain (non-scientific) text of a Decimal, for JSON and logs."""
    if number is None:
        return None
    return format(normalize(number), "f")
