"""Reading settings (environment variables, connector config flags): one rule per kind.

Booleans: ``1``/``true``/``yes``/``on`` are true; ``0``/``false``/``no``/``off`` and the
empty string are false; case and surrounding whitespace do not matter. Anything else is a
:class:`~bagbot_core.errors.ConfigurationError` naming the setting: a typo in a safety switch
(``BAGBOT_ALLOW_LIVE=ture``) must be reported, not quietly read as one or the other.

Numbers: ASCII digits only (see :mod:`bagbot_core.money`); ``MAX_ORDER_QTY`` in
Arabic-Indic or full-width digits is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal

from bagbot_core.errors import ConfigurationError
from bagbot_core.money import parse_setting

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
#: The rule as users read it, for error messages and documentation.
BOOL_RULE = "1/true/yes/on or 0/false/no/off (any case; empty means false)"
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")


def parse_bool(value: object, name: str) -> bool:
    """``value`` as a boolean by the one rule above; a real ``bool`` is taken as is.

    :raises ConfigurationError: naming ``name`` for any other value (numbers included:
        ``2`` is not a yes).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        shown = ascii(value[:40])
    else:
        shown = f"a {type(value).__name__}"
    raise ConfigurationError(f"{name} must be {BOOL_RULE}, got {shown}")


def env_bool(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Environment variable ``name`` as a boolean; unset is false."""
    raw = (os.environ if environ is None else environ).get(name)
    return False if raw is None else parse_bool(raw, name)


def env_decimal(name: str, environ: Mapping[str, str] | None = None) -> Decimal | None:
    """Environment variable ``name`` as a positive, exact Decimal; unset or blank is ``None``.

    :raises ConfigurationError: naming ``name`` for anything but a finite, positive number
        written with ASCII digits.
    """
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or not raw.strip():
        return None
    return parse_setting(raw, name)


def parse_int_setting(value: str, name: str, *, minimum: int = 0) -> int:
    """A whole-number setting (e.g. a timeout in milliseconds): ASCII digits, at most 18.

    ``int()`` alone would read Arabic-Indic ``"\u0661\u0660"`` as 10, and ``"1_0"`` too.

    :raises ConfigurationError: naming ``name`` for anything else or a value below
        ``minimum``.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not _INT_RE.fullmatch(text):
        raise ConfigurationError(
            f"{name} must be a whole number written with ASCII digits, got {ascii(value)[:40]}"
        )
    number = int(text)
    if number < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {number}")
    return number
