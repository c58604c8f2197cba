"""Typed per-connector config: declared keys, checked values, and where values come from.

Precedence per key: ``--connector-option`` (or ``Router(connector_config=...)``) > the config
file's ``[connectors.NAME]`` table > the environment variables the connector reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bagbot_core.cli import cli
from bagbot_core.connector import ConnectorSettings, ConnectorSpec
from bagbot_core.connector_config import (
    ConfigKey,
    check_connector_config,
    declare_config,
    parse_connector_options,
    read_connector_tables,
)
from bagbot_core.errors import ConfigurationError
from bagbot_core.markers import hookimpl
from bagbot_core.paper.connector import PaperConnector
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.risk_config import RiskConfig
from bagbot_core.router import Router

CANARY = "canary-\u00e9-secret-value"

KEYS = declare_config(
    ConfigKey("name", "text"),
    ConfigKey("api_url", "url"),
    ConfigKey("api_secret", "secret"),
    ConfigKey("enable_rate_limit", "bool"),
    ConfigKey("timeout", "seconds"),
    ConfigKey("pages", "int"),
    ConfigKey("spread", "decimal"),
    ConfigKey("balances", "table"),
    ConfigKey("markets", "list"),
)


def test_an_unknown_key_is_refused_with_a_did_you_mean_hint() -> None:
    with pytest.raises(ConfigurationError) as info:
        check_connector_config("binance", KEYS, {"enable_rate_limt": False})
    message = str(info.value)
    assert "connector 'binance'" in message and "'enable_rate_limt'" in message
    assert "did you mean 'enable_rate_limit'?" in message


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("name", "tab\there", r"'tab\there'"),
    ("name", 7, "7"),
    ("enable_rate_limit", "maybe", "'maybe'"),
    ("enable_rate_limit", 1, "1"),
    ("timeout", "ten", "'ten'"),
    ("timeout", -1, "-1"),
    ("timeout", "\u0661", r"'\u0661'"),
    ("pages", "-2", "'-2'"),
    ("pages", True, "True"),
    ("spread", "0.1%", "'0.1%'"),
    ("spread", "NaN", "'NaN'"),
    ("balances", "USDT=1", "'USDT=1'"),
    ("markets", "BTC/USDT", "'BTC/USDT'"),
])
def test_a_bad_value_names_connector_key_and_escaped_value(key: str, value: object,
                                                           shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_connector_config("x", KEYS, {key: value})
    assert f"connector 'x': config key {key!r} = {shown}: must be" in str(info.value)


@pytest.mark.parametrize(("key", "value"), [
    ("api_secret", CANARY + "\nmore"),
    ("api_secret", CANARY + "\x00"),
    ("api_secret", 12345),
    ("api_url", f"http://user:{CANARY}@127.0.0.1:9"),
    ("api_url", f"ftp://127.0.0.1/{CANARY}"),
])
def test_a_bad_secret_or_url_is_named_but_never_echoed(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        check_connector_config("x", KEYS, {key: value})
    message = str(info.value)
    assert f"connector 'x': config key {key!r}" in message
    assert CANARY not in message and "12345" not in message


def test_good_values_of_every_kind_pass_and_undeclared_connectors_accept_anything() -> None:
    check_connector_config("x", KEYS, {
        "name": "a", "api_url": "http://127.0.0.1:9/", "api_secret": CANARY,
        "enable_rate_limit": "false", "timeout": "2.5", "pages": "10", "spread": "0.001",
        "balances": {"USDT": "1"}, "markets": [],
    })
    check_connector_config("x", None, {"anything": object()})


def test_connector_options_parse_and_refuse_malformed_ones() -> None:
    assert parse_connector_options(["binance.enable_rate_limit=false", "binance.timeout=2",
                                    "paper.account=a=b"]) == {
        "binance": {"enable_rate_limit": "false", "timeout": "2"},
        "paper": {"account": "a=b"}}
    for bad in ("binance=1", "enable_rate_limit=false", ".x=1", "binance.=1"):
        with pytest.raises(ConfigurationError, match=r"NAME\.KEY=VALUE"):
            parse_connector_options([bad])


# -- the router checks a connector's config when it builds it ---------------------------


class _Declaring(PaperConnector):
    config_keys = declare_config(*PaperConnector.config_keys.values(),  # type: ignore[union-attr]
                                 ConfigKey("timeout", "seconds"))

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(ConnectorSettings(config={}, database_url=settings.database_url))


class _Plugin:
    @hookimpl
    def bagbot_add_connectors(self) -> Sequence[ConnectorSpec]:
        return [ConnectorSpec("declaring", _Declaring)]


def _router(config: Mapping[str, Mapping[str, Any]]) -> Router:
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("declaring", _Plugin())])
    return Router(registry, limits=RiskLimits(), allow_live=False, connector_config=config,
                  risk_config=RiskConfig())


@pytest.mark.parametrize(("config", "expected"), [
    ({"timout": 1}, "did you mean 'timeout'"),
    ({"timeout": "soon"}, "config key 'timeout' = 'soon': must be a number of seconds"),
])
async def test_the_router_refuses_a_bad_config_when_it_builds_the_connector(
    config: dict[str, Any], expected: str,
) -> None:
    router = _router({"declaring": config})
    try:
        with pytest.raises(ConfigurationError, match=expected):
            await router.get_connector("declaring", database_url="sqlite://")
    finally:
        await router.aclose()


def test_the_router_reads_the_config_files_connectors_tables_under_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bagbot.toml"
    path.write_text('[risk]\nmax_order_qty = "5"\n'
                    '[connectors.paper]\nspread = 0.1\naccount = "file"\n')
    router = Router(PluginRegistry(), connector_config={"paper": {"account": "code"}},
                    risk_config=RiskConfig.load(path))
    # code over the file key by key; TOML decimals read exactly
    assert router.connector_config["paper"] == {"spread": Decimal("0.1"), "account": "code"}
    assert str(router.risk_config.limit("max_order_qty", user_id=None, connector=None,
                                        symbol=None).value) == "5"


def test_a_connectors_entry_that_is_not_a_table_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bagbot.toml"
    path.write_text('[connectors]\npaper = "spread=0.1"\n')
    with pytest.raises(ConfigurationError, match=r"bagbot.toml: connectors.paper must be"):
        read_connector_tables(path)


# -- the command line -------------------------------------------------------------------


def _route(url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--database-url", url, *args, "route", "BTC/USDT", "buy",
                                      "0.001", "--connector", "paper", "--json"])
    return result


def _avg_price(result: Any) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return str(json.loads(result.stdout)["avg_price"])


def test_connector_option_reaches_the_connector(sqlite_url: str) -> None:
    # paper's ask is ref * (1 + spread): 50000 * 1.1
    result = _route(sqlite_url, "--connector-option", "paper.spread=0.1")
    assert _avg_price(result) == "55000"


def test_config_file_connectors_table_and_the_option_over_it(sqlite_url: str,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "bagbot.toml"
    path.write_text('[connectors.paper]\nspread = "0.1"\naccount = "from-file"\n')
    assert _avg_price(_route(sqlite_url, "--config", str(path))) == "55000"
    over = _route(sqlite_url, "--config", str(path), "--connector-option", "paper.spread=0.2")
    assert _avg_price(over) == "60000"


def test_a_bad_connector_option_is_a_usage_error_naming_it(sqlite_url: str) -> None:
    result = _route(sqlite_url, "--connector-option", "paper-spread")
    assert result.exit_code == 2
    assert "--connector-option" in result.output and "NAME.KEY=VALUE" in result.output
    bad = _route(sqlite_url, "--connector-option", "paper.spred=0.1")
    assert bad.exit_code != 0 and "spred" in bad.output


class _Inheriting(_Declaring):
    """Declares no keys of its own: a subclass written before keys were declared."""


async def test_a_subclass_without_its_own_keys_may_read_more_but_values_are_checked() -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[
        ("inheriting", type("P", (), {"bagbot_add_connectors": hookimpl(
            lambda self: [ConnectorSpec("inheriting", _Inheriting)])})())])
    for config, refused in (({"passphrase": "x", "timeout": 1}, False),
                            ({"passphrase": "x", "timeout": "soon"}, True)):
        router = Router(registry, limits=RiskLimits(), allow_live=False,
                        connector_config={"inheriting": config}, risk_config=RiskConfig())
        try:
            if refused:
                with pytest.raises(ConfigurationError, match="'timeout' = 'soon'"):
                    await router.get_connector("inheriting", database_url="sqlite://")
            else:
                await router.get_connector("inheriting", database_url="sqlite://")
        finally:
            await router.aclose()
