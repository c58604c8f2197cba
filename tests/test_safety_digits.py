"""Money is written with ASCII digits only: payload, command line, environment.

``Decimal()`` reads every Unicode digit: ``"0\\u06601"`` (an Arabic-Indic zero, which looks
like a dot) is 1, full-width ``"\\uff11"`` is 1, ``MAX_ORDER_QTY`` in Arabic-Indic digits is
10. bagbot refuses them all, with a message that shows the escaped text.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import audit, route_order
from bagbot_core.cli import cli
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ConfigurationError, OrderValidationError
from bagbot_core.models import Order
from bagbot_core.money import parse_number_text, parse_setting, to_decimal
from bagbot_core.payload import parse_order_payload
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router, set_router
from tests.scripted import ScriptedExchange

LOOK_ALIKES = [
    "0\u06601",  # 0, ARABIC-INDIC DIGIT ZERO, 1: reads like "0.1", Decimal() makes it 1
    "\uff11",  # FULLWIDTH DIGIT ONE
    "\U0001d7ce.\U0001d7d3",  # MATHEMATICAL BOLD DIGIT ZERO . FIVE
    "\u0661\u0660",  # Arabic-Indic 10
    "0.\u0967",  # Devanagari one
    "1\u00a0",  # a no-break space around an ASCII number
    "\u20030.5",  # an em space
]
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}
LIMIT_BUY = {**MARKET_BUY, "type": "limit", "price": "50000"}


@pytest.mark.parametrize("text", LOOK_ALIKES)
@pytest.mark.parametrize("field", ["amount", "price"])
def test_non_ascii_amounts_and_prices_are_refused(text: str, field: str) -> None:
    with pytest.raises(OrderValidationError, match=f"{field} must be written with ASCII") as info:
        parse_order_payload({**LIMIT_BUY, field: text})
    assert text.encode("ascii", "backslashreplace").decode() in str(info.value)


@pytest.mark.parametrize("text", LOOK_ALIKES)
async def test_route_order_records_the_refusal_and_sends_nothing(
    text: str, router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    with pytest.raises(OrderValidationError, match="ASCII") as info:
        await route_order("scripted", {**MARKET_BUY, "amount": text}, db, "u")
    row = info.value.order
    assert row is not None and row.status == "rejected" and row.qty == 0
    assert exchange.create_calls == 0 and exchange.placed == {}


#: Any text, and text made of digits (ASCII and of other scripts) and number punctuation.
foreign_digit = st.characters(categories=("Nd",)).filter(lambda c: not c.isascii())
numberish = st.lists(st.one_of(st.sampled_from(list("0123456789.+-e ")), foreign_digit),
                     min_size=1, max_size=10).map("".join)


@given(st.one_of(st.text(min_size=1, max_size=12), numberish).filter(lambda t: not t.isascii()))
def test_any_text_with_a_non_ascii_character_is_refused(text: str) -> None:
    with pytest.raises(OrderValidationError):
        to_decimal(text, "amount")
    assert parse_number_text(text) is None


@given(st.tuples(st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"),
                             places=4).map(str),
                 st.integers(0, 8),
                 st.characters(min_codepoint=0x80, exclude_categories=("Cs",))))
def test_one_foreign_character_anywhere_in_a_valid_number_is_refused(
    parts: tuple[str, int, str]
) -> None:
    number, at, char = parts
    with pytest.raises(OrderValidationError, match="ASCII"):
        to_decimal(number[:at] + char + number[at:], "amount")


@pytest.mark.parametrize(
    ("text", "value", "twin"),
    [("0.5", "0.5", "\uff10.5"), (" 0.5 ", "0.5", "\u00a00.5\u00a0"), ("\t1\n", "1", "\t\u0661\n"),
     ("+1", "1", "\uff0b1"), (".5", "0.5", "\uff0e5"), ("5.", "5", "\u06f5."),
     ("1e-3", "0.001", "1e-\u0663"), ("1E+2", "100", "\u0967E+2"),
     ("0.000000000000000001", "1E-18", "0.00000000000000000\U0001d7cf")],
)
def test_ascii_forms_parse_as_before_and_their_twins_are_refused(
    text: str, value: str, twin: str
) -> None:
    assert to_decimal(text, "amount") == Decimal(value)
    with pytest.raises(OrderValidationError, match="ASCII"):
        to_decimal(twin, "amount")


@pytest.mark.parametrize(("text", "twin"), [("NaN", "Na\u00d1"), ("-inf", "-\u0131nf"),
                                            ("Infinity", "\uff29nfinity"), ("sNaN", "sNa\u039d")])
def test_nan_and_infinity_still_say_finite_and_their_twins_ascii(text: str, twin: str) -> None:
    with pytest.raises(OrderValidationError, match="must be finite"):
        to_decimal(text, "amount")
    with pytest.raises(OrderValidationError, match="ASCII"):
        to_decimal(twin, "amount")


def test_only_digits_sign_point_and_exponent() -> None:
    """``Decimal()`` also reads ``1_000``; money text does not."""
    for text in ["1_000", "1e1_0", "0x10", "1,5", "1.2.3", "--1", "1e"]:
        with pytest.raises(OrderValidationError, match="is not a number"):
            to_decimal(text, "amount")


def test_huge_integers_are_too_large_not_a_crash() -> None:
    with pytest.raises(OrderValidationError, match="too large"):
        to_decimal(10**5000, "amount")  # str() of it would raise ValueError


@pytest.mark.parametrize("var", ["MAX_ORDER_QTY", "MAX_ORDER_VALUE_USD", "MIN_ORDER_QTY"])
@pytest.mark.parametrize("text", ["\u0661\u0660", "\uff11", "0\u06601"])
def test_environment_limits_in_foreign_digits_are_configuration_errors(
    var: str, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=f"{var}.*ASCII"):
        RiskLimits.from_env({var: text})
    with pytest.raises(ConfigurationError, match=var):
        parse_setting(text, var)
    monkeypatch.setenv(var, text)
    with pytest.raises(ConfigurationError, match=var):
        Router()


def test_exchange_side_reader_refuses_foreign_digits() -> None:
    """The rule exchange answers are read by: the same as for input."""
    assert parse_number_text("0.5") == Decimal("0.5")
    assert parse_number_text(" 1e-3 ") == Decimal("0.001")
    assert parse_number_text("NaN") is not None  # returned for the caller to refuse
    for text in [*LOOK_ALIKES, "1_000", "", "abc"]:
        assert parse_number_text(text) is None, text


@pytest.mark.parametrize("text", [*LOOK_ALIKES, "1_000"])
def test_exchange_answers_in_foreign_digits_are_no_number(text: str) -> None:
    """A fill of ``"0\u06601"`` in an exchange answer is unreadable, never 1."""
    from bagbot_core.ccxt_support import decimal_or_none, positive_or_none

    assert decimal_or_none(text) is None
    assert positive_or_none(text) is None
    assert decimal_or_none("0.5") == Decimal("0.5")
    assert decimal_or_none(0.1) == Decimal("0.1")


@pytest.mark.parametrize("value", ["\u0661\u0660", "\uff11", "nan", "inf", "-1", True, None,
                                   "1_0", "", 86_401, float("nan")])
def test_connector_durations_take_ascii_numbers_only(value: object) -> None:
    """``timeout``/``quote_max_age``/``rate_limit_backoff`` of every ccxt connector."""
    from bagbot_core.connector import config_seconds

    with pytest.raises(ConfigurationError, match="binance: timeout must be a number"):
        config_seconds({"timeout": value}, "timeout", 10.0, "binance")


def test_connector_durations_accept_plain_numbers() -> None:
    from bagbot_core.connector import config_seconds

    assert config_seconds({}, "timeout", 10.0, "x") == 10.0
    assert config_seconds({"timeout": "2.5"}, "timeout", 10.0, "x") == 2.5
    assert config_seconds({"timeout": 0}, "timeout", 10.0, "x") == 0.0
    assert config_seconds({"timeout": Decimal("0.2")}, "timeout", 10.0, "x") == 0.2


@pytest.mark.parametrize("raw", ["\u0661\u0660", "1_0", "-5", "ten"])
def test_sqlite_busy_timeout_takes_ascii_digits_only(
    raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bagbot_core.db import dispose_engines

    monkeypatch.setenv("BAGBOT_SQLITE_BUSY_TIMEOUT_MS", raw)
    with pytest.raises(ConfigurationError, match="BAGBOT_SQLITE_BUSY_TIMEOUT_MS"):
        get_engine(f"sqlite:///{tmp_path / 'busy.db'}")
    dispose_engines()


def test_paper_config_zero_in_foreign_digits_is_refused() -> None:
    """A fee of Arabic-Indic zero is not zero: paper's config numbers are ASCII too."""
    from bagbot_core.connector import ConnectorSettings
    from bagbot_core.paper.connector import PaperConnector

    with pytest.raises(ConfigurationError, match="paper connector config"):
        PaperConnector(ConnectorSettings(config={"spread": "\u0660"}))


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CliRunner]:
    for name in ("BAGBOT_DATABASE_URL", "BAGBOT_LOG_FILE", "BAGBOT_DISABLE_PLUGINS",
                 "BAGBOT_SKIP_RISK_CHECKS", "MAX_ORDER_QTY", "MAX_ORDER_VALUE_USD",
                 "MIN_ORDER_QTY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    saved_config, saved_configured = structlog.get_config(), audit._configured
    set_router(None)
    yield CliRunner()
    set_router(None)
    structlog.configure(**saved_config)
    audit._configured = saved_configured


@pytest.mark.parametrize("text", LOOK_ALIKES[:4])
@pytest.mark.parametrize("where", ["amount", "price"])
def test_cli_refuses_foreign_digits_as_a_usage_error(
    text: str, where: str, cli_runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    args = (["BTC/USDT", "buy", text] if where == "amount"
            else ["BTC/USDT", "buy", "0.001", "--type", "limit", "--price", text])
    result = cli_runner.invoke(cli, ["--database-url", url, "route", *args])
    assert result.exit_code == 2, result.output
    assert "ASCII" in result.stderr and "Traceback" not in result.output
    if (tmp_path / "cli.db").exists():  # a usage error records nothing
        with session_factory(get_engine(url))() as db:
            assert db.scalar(select(func.count()).select_from(Order)) == 0
