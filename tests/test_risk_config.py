"""Risk configuration: the file, precedence, scopes, sources and every error's message."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bagbot_core.errors import ConfigurationError
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.risk_config import CHECKS, SPECS, Limit, RiskConfig, default_config_path
from bagbot_core.router import Router

ANY = {"user_id": "alice", "connector": "binance", "symbol": "BTC/USDT"}


def write(tmp_path: Path, text: str, name: str = "bagbot.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path | None = None, env: dict[str, str] | None = None,
         **overrides: Any) -> RiskConfig:
    return RiskConfig.load(path, environ=env or {"XDG_CONFIG_HOME": "/nonexistent"},
                           overrides=overrides or None)


def test_defaults_are_the_seed_limits_and_every_control_off() -> None:
    config = load()
    assert config.path is None
    assert config.seed_limits() == RiskLimits()
    for name, spec in SPECS.items():
        if spec.per_asset:
            continue
        limit = config.limit(name, **ANY)
        assert (limit.value, limit.source) == (spec.default, "default")
    assert config.limit("max_position.BTC", **ANY).value is None
    assert {row["check"] for row in config.describe()} == {
        "max_quantity", "max_value", "min_quantity"}


def test_precedence_code_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[risk]\nmax_order_qty = "3"\nmin_order_qty = "0.5"\n')
    env = {"MAX_ORDER_QTY": "4", "XDG_CONFIG_HOME": "/nonexistent"}
    assert load(path).limit("max_order_qty", **ANY).source == f"file {path} [risk]"
    assert load(path, env).limit("max_order_qty", **ANY).value == Decimal(4)
    assert load(path, env).limit("max_order_qty", **ANY).source == "env MAX_ORDER_QTY"
    coded = load(path, env, max_order_qty="5")
    assert (coded.limit("max_order_qty", **ANY).value, coded.limit(
        "max_order_qty", **ANY).source) == (Decimal(5), "code")
    # Each source only replaces what it sets.
    assert coded.limit("min_order_qty", **ANY).value == Decimal("0.5")
    assert coded.limit("max_order_value_usd", **ANY).source == "default"
    assert coded.seed_limits() == RiskLimits(Decimal(5), Decimal("100000.0"), Decimal("0.5"))


def test_most_specific_scope_wins_then_precedence_within_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
[risk]
order_rate = 100
[risk.users.alice]
order_rate = 50
[risk.connectors.binance]
order_rate = 20
[risk.symbols."btc/usdt"]
order_rate = 5
""")
    config = load(path, None, order_rate=1000, users={"alice": {"order_rate": 70}})
    def rate(**scope: str) -> Limit:
        return config.limit("order_rate", **{**ANY, **scope})

    assert (rate().value, rate().source) == (5, f'file {path} [risk.symbols."BTC/USDT"]')
    assert rate(symbol="ETH/USDT").value == 20
    assert rate(symbol="ETH/USDT", connector="coinbase").value == 70  # code beats file
    assert rate(symbol="ETH/USDT", connector="coinbase").source == "code [risk.users.alice]"
    assert rate(symbol="ETH/USDT", connector="coinbase", user_id="bob").value == 1000
    assert rate(symbol="ETH/USDT", connector="coinbase", user_id="bob").source == "code"


def test_false_switches_a_control_off_in_a_narrower_scope(tmp_path: Path) -> None:
    path = write(tmp_path, """
[risk]
price_collar_pct = "2.5"
[risk.users.mm]
price_collar_pct = false
""")
    config = load(path)
    assert config.limit("price_collar_pct", **ANY).value == Decimal("2.5")
    off = config.limit("price_collar_pct", **{**ANY, "user_id": "mm"})
    assert off.value is None and off.source == f"file {path} [risk.users.mm]"


def test_numbers_are_exact_and_booleans_follow_the_settings_rule(tmp_path: Path) -> None:
    path = write(tmp_path, """
[risk]
price_collar_pct = 0.1
daily_notional_usd = 1000.10
duplicate_window_seconds = "2.5"
order_rate = "7"
order_rate_per_connector = "Yes"
max_open_orders_per_symbol = "0"
daily_notional_window = "ROLLING_24H"
max_position = { btc = 0.30000000000000001, ETH = "12" }
""")
    config = load(path)
    def value(name: str) -> Any:
        return config.limit(name, **ANY).value

    assert value("price_collar_pct") == Decimal("0.1")  # not 0.1000000000000000055...
    assert value("daily_notional_usd") == Decimal("1000.1")
    assert value("duplicate_window_seconds") == Decimal("2.5")
    assert value("order_rate") == 7
    assert value("order_rate_per_connector") is True
    assert value("max_open_orders_per_symbol") is False
    assert value("daily_notional_window") == "rolling_24h"
    assert value("max_position.BTC") == Decimal("0.30000000000000001")
    assert value("max_position.ETH") == Decimal(12)


def bad_file(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, body)
    with pytest.raises(ConfigurationError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize(("body", "fragments"), [
    ('[risk]\nmax_order_qty = "abc"\n', ["[risk]", "max_order_qty", "'abc'"]),
    ('[risk]\nmax_order_qty = "\u0661\u0660"\n', ["max_order_qty", "\\u0661\\u0660", "ASCII"]),
    ('[risk]\nmax_order_qty = "nan"\n', ["max_order_qty", "'nan'"]),
    ("[risk]\nmax_order_qty = -1\n", ["max_order_qty", "-1"]),
    ("[risk]\nmax_order_qty = 0\n", ["max_order_qty", "= 0"]),
    ("[risk]\nmax_order_qty = false\n", ["max_order_qty", "False"]),
    ("[risk]\nmax_order_value_usd = 1e30\n", ["max_order_value_usd", "too large"]),
    ('[risk]\nprice_collar_pct = "1_0"\n', ["price_collar_pct", "'1_0'"]),
    ("[risk]\nprice_collar_pct = true\n", ["price_collar_pct", "True"]),
    ("[risk]\norder_rate = 1.5\n", ["order_rate", "1.5", "whole number"]),
    ('[risk]\norder_rate = "ten"\n', ["order_rate", "'ten'"]),
    ("[risk]\norder_rate = -3\n", ["order_rate", "-3"]),
    ('[risk]\norder_rate_per_connector = "ture"\n', ["order_rate_per_connector", "'ture'"]),
    ("[risk]\norder_rate_per_connector = 2\n", ["order_rate_per_connector", "2"]),
    ("[risk]\norder_rate_window_seconds = 0\n", ["order_rate_window_seconds", "0"]),
    ("[risk]\nduplicate_window_seconds = 40000000\n", ["duplicate_window_seconds",
                                                       "40000000", "366 days"]),
    ('[risk]\ndaily_notional_window = "weekly"\n', ["daily_notional_window", "'weekly'",
                                                    "utc_day, rolling_24h"]),
    ('[risk]\nmax_position = "1"\n', ["max_position", "'1'", "asset"]),
    ('[risk.users.bob]\nmax_position = { BTC = "x" }\n', ["[risk.users.bob]",
                                                         "max_position.BTC", "'x'"]),
    ('[risk]\nmax_order_quantity = "1"\n', ["unknown key", "'max_order_quantity'", "'1'"]),
    ('[risk.groups.desk]\norder_rate = 1\n', ["unknown key", "'groups'"]),
    ('[risk.users.alice]\nmax_qty = 1\n', ["[risk.users.alice]", "unknown key", "'max_qty'"]),
    ('[risk.users.alice.symbols."BTC/USDT"]\norder_rate = 1\n', ["[risk.users.alice]",
                                                                 "'symbols'", "do not nest"]),
    ('[database]\nurl = "sqlite://"\n', ["unknown key", "'database'"]),
    ('risk = 5\n', ["risk", "5", "table"]),
    ('[risk]\nusers = 5\n', ["users", "5", "table"]),
    ('[risk.symbols."btc/usdt"]\norder_rate = 1\n[risk.symbols."BTC/USDT"]\norder_rate = 2\n',
     ["BTC/USDT", "set twice"]),
    ("[risk\norder_rate = 1\n", ["not valid TOML", "line 1"]),
])
def test_a_bad_value_or_unknown_key_names_file_key_and_value(
        tmp_path: Path, body: str, fragments: list[str]) -> None:
    message = bad_file(tmp_path, body)
    for fragment in fragments:
        assert fragment in message, message


def test_minimum_above_maximum_in_any_scope_is_refused(tmp_path: Path) -> None:
    message = bad_file(tmp_path, '[risk]\nmax_order_qty = "5"\n'
                                 '[risk.symbols."ETH/USDT"]\nmin_order_qty = "6"\n')
    assert 'min_order_qty = 6 (file' in message and '[risk.symbols."ETH/USDT"]' in message
    assert "max_order_qty = 5" in message and "no order could pass" in message


def test_code_overrides_are_checked_like_the_file() -> None:
    with pytest.raises(ConfigurationError, match=r"code \[risk\]: order_rate = 1.5"):
        load(order_rate=1.5)  # a float never becomes a limit
    with pytest.raises(ConfigurationError, match=r"code \[risk.users.x\]: unknown key 'rate'"):
        load(users={"x": {"rate": 1}})


def test_the_seed_environment_variables_keep_working() -> None:
    env = {"MAX_ORDER_QTY": "2.5", "MAX_ORDER_VALUE_USD": "1000", "MIN_ORDER_QTY": "0.1",
           "XDG_CONFIG_HOME": "/nonexistent"}
    assert load(None, env).seed_limits() == RiskLimits(Decimal("2.5"), Decimal(1000),
                                                       Decimal("0.1"))
    with pytest.raises(ConfigurationError, match="MAX_ORDER_QTY"):
        load(None, {"MAX_ORDER_QTY": "\uff11\uff10"})


def test_file_location_explicit_then_environment_then_default(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    default = write(xdg, "[risk]\norder_rate = 1\n", "bagbot/bagbot.toml")
    named = write(tmp_path, "[risk]\norder_rate = 2\n", "named.toml")
    explicit = write(tmp_path, "[risk]\norder_rate = 3\n", "explicit.toml")
    env = {"XDG_CONFIG_HOME": str(xdg)}
    assert default_config_path(env) == default
    assert default_config_path({"HOME": "/home/x"}) == Path("/home/x/.config/bagbot/bagbot.toml")
    assert RiskConfig.load(environ=env).path == default
    assert RiskConfig.load(environ={**env, "BAGBOT_CONFIG": str(named)}).path == named
    assert RiskConfig.load(explicit, environ={**env, "BAGBOT_CONFIG": str(named)}
                           ).limit("order_rate", **ANY).value == 3
    default.unlink()  # absent default: no file, no error
    assert RiskConfig.load(environ=env).path is None


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    for kwargs in ({"path": missing}, {"environ": {"BAGBOT_CONFIG": str(missing)}}):
        with pytest.raises(ConfigurationError, match=f"config file {missing}: cannot read"):
            RiskConfig.load(**kwargs)


def test_router_limits_are_code_and_the_file_refines_them(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    path = write(tmp_path, '[risk]\nmax_order_qty = "7"\n[risk.users.alice]\n'
                           'max_order_qty = "1"\n')
    monkeypatch.setenv("BAGBOT_CONFIG", str(path))
    monkeypatch.setenv("MAX_ORDER_QTY", "8")
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    plain = Router(registry)  # default: RiskConfig.load(): BAGBOT_CONFIG and the env
    assert plain.risk_config.path == path
    assert plain.limits.max_order_qty == Decimal(8)  # env over file
    coded = Router(registry, limits=RiskLimits(max_order_qty=Decimal(2)))
    assert coded.limits.max_order_qty == Decimal(2)
    assert coded.risk_config.limit("max_order_qty", **ANY).value == Decimal(1)
    given = Router(registry, risk_config=load(order_rate=3))
    assert given.risk_config.limit("order_rate", **ANY).value == 3
    assert given.limits == RiskLimits()


def test_with_file_replaces_only_the_file(tmp_path: Path) -> None:
    one = write(tmp_path, "[risk]\norder_rate = 1\nmax_open_orders = 4\n", "one.toml")
    two = write(tmp_path, "[risk]\norder_rate = 2\n", "two.toml")
    config = load(one, None, max_order_qty="3").with_file(two)
    assert config.path == two
    assert config.limit("order_rate", **ANY).value == 2
    assert config.limit("max_open_orders", **ANY).value is None
    assert config.limit("max_order_qty", **ANY).source == "code"


def test_describe_lists_active_checks_with_value_scope_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, """
[risk]
order_rate = 10
[risk.users.alice]
daily_notional_usd = "500"
[risk.symbols."BTC/USDT"]
order_rate = false
""")
    rows = load(path).describe()
    by = {(r["check"], r["limit"], r["scope"]): (r["value"], r["source"]) for r in rows}
    assert by[("order_rate", "order_rate", "global")] == ("10", f"file {path} [risk]")
    assert by[("order_rate", "order_rate_window_seconds", "global")] == ("60", "default")
    assert by[("daily_notional", "daily_notional_usd", "user alice")] == (
        "500", f"file {path} [risk.users.alice]")
    assert by[("order_rate", "order_rate", "symbol BTC/USDT")] == (
        None, f'file {path} [risk.symbols."BTC/USDT"]')
    assert not any(r["check"] == "daily_notional" and r["scope"] == "global" for r in rows)
    bob = load(path).describe(user_id="bob")
    assert {r["scope"] for r in bob} == {"user bob", "symbol BTC/USDT"}
    alice = load(path).describe(user_id="alice")
    assert ("daily_notional", "user alice") in {(r["check"], r["scope"]) for r in alice}
    assert set(CHECKS) >= {r["check"] for r in rows}


def test_the_readme_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Risk controls"):]
    example = section[section.index("```toml") + len("```toml"):]
    config = load(write(tmp_path, example[: example.index("```")]))
    alice = {**ANY, "connector": "paper", "symbol": "ETH/USDT"}
    assert config.limit("daily_notional_usd", **alice).value == Decimal(1000)
    assert config.limit("max_position.BTC", **alice).value == Decimal("0.5")
    assert config.limit("price_collar_pct", **alice).value == Decimal(5)
    assert config.limit("price_collar_pct", **ANY).value is None
    assert config.limit("max_open_orders", **ANY).value == 50
