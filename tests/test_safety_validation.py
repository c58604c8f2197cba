"""Inputs checked before anything else: ``testnet``, connector names, settings.

* ``testnet`` is a real bool: ``"false"`` is truthy, and guessing could mean a live order.
* Connector names are 1-64 characters of ``[A-Za-z0-9_.-]``: refused alike on SQLite and
  PostgreSQL (which refused an over-long name with a raw ``DataError`` and no row).
* One boolean rule for every boolean setting; minimum above maximum is a setup error.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import hookimpl, route_order
from bagbot_core.connector import ConnectorSpec, config_bool
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import (
    ConfigurationError,
    OrderValidationError,
    PluginError,
    UnknownConnectorError,
)
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router, live_allowed
from bagbot_core.settings import env_bool, parse_bool, parse_int_setting
from tests.scripted import ScriptedExchange

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}


def count(db: Session) -> int:
    n = db.scalar(select(func.count()).select_from(Order))
    db.commit()
    return int(n or 0)


# -- testnet must be a bool ----------------------------------------------------------------

NOT_BOOLS: list[Any] = ["false", "False", "no", "", "0", "true", [], {}, 0, 1, 0.0, None,
                        Decimal(0), b"false"]


@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
async def test_testnet_that_is_not_a_bool_is_refused_with_a_row(
    value: Any, router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    with pytest.raises(OrderValidationError, match="testnet must be True or False") as info:
        await router.route_order("scripted", MARKET_BUY, db, "u", testnet=value)
    row = info.value.order
    assert row is not None and row.status == "rejected"
    assert row.testnet is True  # the safe value; what was given is kept beside it
    assert row.details["testnet_given"] == ascii(value)
    assert exchange.factory_calls == 0 and exchange.create_calls == 0
    assert count(db) == 1


@pytest.mark.parametrize("value", ["false", "no", "", []], ids=repr)
async def test_module_level_route_order_refuses_it_too(
    value: Any, router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    with pytest.raises(OrderValidationError, match="testnet"):
        await route_order("scripted", MARKET_BUY, db, "u", value)
    assert count(db) == 1 and exchange.create_calls == 0
    order = await route_order("scripted", MARKET_BUY, db, "u", True)  # a real bool routes
    assert order.status == "filled" and order.testnet is True


# -- connector names -----------------------------------------------------------------------

#: name given -> what the row's connector column holds, the same on every database.
BAD_NAMES: list[tuple[Any, str]] = [
    ("a" * 65, "a" * 64),
    ("b" * 500, "b" * 64),
    ("", ""),
    ("pa per", "pa per"),
    ("pa\x00per", "pa\\x00per"),
    ("p\u00e4per", "p\\xe4per"),
    ("pa\udcffper", "pa\\udcffper"),  # a byte the command line could not decode
    ("scripted\n", "scripted\\n"),
    ("\u202escripted", "\\u202escripted"),
    ("scripted;--", "scripted;--"),
    ("\u00e4" * 40, "\\xe4" * 16),
    (42, "<int>"),
    (None, "<NoneType>"),
]


@pytest.mark.parametrize(("name", "stored"), BAD_NAMES, ids=repr)
async def test_bad_connector_names_are_refused_with_a_storable_row(
    name: Any, stored: str, router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    with pytest.raises(OrderValidationError, match="connector must be 1-64 characters") as info:
        await router.route_order(name, MARKET_BUY, db, "u")
    row = info.value.order
    assert row is not None and row.status == "rejected" and row.connector == stored
    db.expire_all()
    assert db.get(Order, row.id).connector == stored  # type: ignore[union-attr]
    assert exchange.factory_calls == 0 and count(db) == 1


@pytest.mark.parametrize("name", ["k" * 64, "my-exchange.v2_test", "A1"])
async def test_a_valid_name_reaches_the_lookup_one_more_character_does_not(
    name: str, router: Router, db: Session
) -> None:
    with pytest.raises(UnknownConnectorError):
        await router.route_order(name, MARKET_BUY, db, "u")
    with pytest.raises(OrderValidationError, match="connector"):
        await router.route_order(name + ("k" if len(name) == 64 else " "), MARKET_BUY, db, "u")
    assert count(db) == 2


@pytest.mark.postgres
async def test_an_over_long_name_on_postgresql_leaves_a_row(
    postgres_url: str, router: Router
) -> None:
    """The reproduction: PostgreSQL raised DataError (VARCHAR(64)) and kept no row."""
    with session_factory(get_engine(postgres_url))() as db:
        before = count(db)
        with pytest.raises(OrderValidationError, match="connector"):
            await router.route_order("x" * 65, MARKET_BUY, db, "u")
        assert count(db) == before + 1
        newest = db.scalars(select(Order).order_by(Order.id.desc()).limit(1)).one()
        assert newest.connector == "x" * 64 and newest.status == "rejected"


def test_a_plugin_cannot_register_an_unroutable_connector_name() -> None:
    class Odd:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            return [ConnectorSpec("my exchange", lambda s: None)]  # type: ignore[arg-type,return-value]

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("odd", Odd())])
    with pytest.raises(PluginError, match=r"'odd'.*1-64 characters"):
        registry.connectors()


# -- one boolean rule ----------------------------------------------------------------------

TRUE_TEXT = ["1", "true", "TRUE", "True", "yes", "Yes", "on", " ON ", "true\n"]
FALSE_TEXT = ["0", "false", "FALSE", "no", "No", "off", "", "  "]
NEITHER = ["2", "ture", "y", "n", "enable", "-1", "1.0", "\uff11", "tru e", "null"]


def test_one_rule_for_every_boolean_setting() -> None:
    """The live opt-in, connector flags and the rest read the same words the same way."""
    for words, meaning in ((TRUE_TEXT, True), (FALSE_TEXT, False)):
        for text in words:
            assert parse_bool(text, "X") is meaning, text
            assert live_allowed({"BAGBOT_ALLOW_LIVE": text}) is meaning, text
            assert config_bool(text) is meaning, text
            assert env_bool("BAGBOT_TRACE_HOOKS", {"BAGBOT_TRACE_HOOKS": text}) is meaning
    assert live_allowed({}) is False and env_bool("BAGBOT_TRACE_HOOKS", {}) is False


@pytest.mark.parametrize("text", NEITHER)
def test_anything_else_is_a_configuration_error_naming_the_setting(text: str) -> None:
    with pytest.raises(ConfigurationError, match="BAGBOT_ALLOW_LIVE must be 1/true/yes/on"):
        live_allowed({"BAGBOT_ALLOW_LIVE": text})
    with pytest.raises(ConfigurationError, match="enable_rate_limit"):
        config_bool(text, "binance: enable_rate_limit")


@pytest.mark.parametrize("value", [None, 0, 1, 2, 0.0, [], "maybe"], ids=repr)
def test_config_flags_are_bools_or_the_words(value: Any) -> None:
    with pytest.raises(ConfigurationError):
        config_bool(value)
    assert config_bool(True) is True and config_bool(False) is False


async def test_a_typo_in_the_live_opt_in_is_reported_not_read_as_no(
    registry: PluginRegistry, db: Session, exchange: ScriptedExchange,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_ALLOW_LIVE", "ture")
    router = Router(registry, limits=RiskLimits())
    with pytest.raises(ConfigurationError, match="BAGBOT_ALLOW_LIVE") as info:
        await router.route_order("scripted", MARKET_BUY, db, "u", testnet=False)
    assert info.value.order is not None and info.value.order.status == "rejected"
    assert exchange.create_calls == 0
    monkeypatch.setenv("BAGBOT_ALLOW_LIVE", "on")
    order = await router.route_order("scripted", MARKET_BUY, db, "u", testnet=False)
    assert order.testnet is False and order.status == "filled"
    await router.aclose()


def test_trace_hooks_follows_the_rule(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BAGBOT_TRACE_HOOKS", "yes")
    PluginRegistry(disabled=(), load_entrypoints=False).connectors()
    assert "bagbot_add_connectors" in capsys.readouterr().err
    monkeypatch.setenv("BAGBOT_TRACE_HOOKS", "verbose")
    with pytest.raises(ConfigurationError, match="BAGBOT_TRACE_HOOKS"):
        PluginRegistry(disabled=(), load_entrypoints=False)


def test_whole_number_settings_take_ascii_digits_only() -> None:
    """``int()`` reads Arabic-Indic ``"\u0661\u0660"`` and ``"1_0"`` as 10; settings do not."""
    name = "BAGBOT_SQLITE_BUSY_TIMEOUT_MS"
    for text, value in [("0", 0), ("30000", 30000), (" 5 ", 5)]:
        assert parse_int_setting(text, name) == value
    for text in ["\u0661\u0660", "\uff15", "1_0", "1e3", "", "-1", "9" * 19, "1.5"]:
        with pytest.raises(ConfigurationError, match=name):
            parse_int_setting(text, name)


# -- limits that contradict each other ----------------------------------------------------


def test_minimum_above_maximum_from_the_environment_names_both() -> None:
    with pytest.raises(ConfigurationError, match=r"MIN_ORDER_QTY.*5.*MAX_ORDER_QTY.*= 1\b"):
        RiskLimits.from_env({"MIN_ORDER_QTY": "5", "MAX_ORDER_QTY": "1"})
    with pytest.raises(ConfigurationError, match=r"MIN_ORDER_QTY.*MAX_ORDER_QTY"):
        RiskLimits.from_env({"MIN_ORDER_QTY": "20"})  # above the default maximum, 10


def test_minimum_above_maximum_in_code_names_both() -> None:
    with pytest.raises(ConfigurationError, match=r"min_order_qty.*max_order_qty"):
        RiskLimits(max_order_qty=Decimal("0.001"), min_order_qty=Decimal("0.01"))
    equal = RiskLimits(max_order_qty=Decimal("1"), min_order_qty=Decimal("1"))
    assert equal.min_order_qty == equal.max_order_qty


@pytest.mark.parametrize("value", [Decimal(0), Decimal(-1), Decimal("NaN"), 1.5, "10", None],
                         ids=repr)
def test_limits_in_code_are_positive_decimals(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_order_value_usd"):
        RiskLimits(max_order_value_usd=value)


def test_router_reports_contradicting_limits(monkeypatch: pytest.MonkeyPatch,
                                             log_stream_json: io.StringIO) -> None:
    monkeypatch.setenv("MIN_ORDER_QTY", "11")
    with pytest.raises(ConfigurationError, match="MIN_ORDER_QTY"):
        Router(PluginRegistry(disabled=(), load_entrypoints=False))
