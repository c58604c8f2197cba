"""Risk checks are never switched off in silence.

The plugin switch (``BAGBOT_DISABLE_PLUGINS``, ``PluginRegistry(disabled=...)``,
``unregister``) cannot remove the built-in ``risk`` plugin. Skipping checks takes its own
setting (``BAGBOT_SKIP_RISK_CHECKS`` / ``Router(skip_risk_checks=...)``); a name that is not a
check is a configuration error, and every order routed meanwhile logs a warning and records
the bypass in its row.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from bagbot_core.errors import (
    ConfigurationError,
    ExchangeRejectedError,
    OrderValidationError,
    RiskCheckError,
)
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from tests.scripted import ScriptedExchange, scripted_plugin

ALL_CHECKS = ["max_quantity", "max_value", "min_quantity", "valid_side", "valid_symbol",
              "price_collar", "duplicate_order", "order_rate", "max_open_orders",
              "daily_notional", "max_position", "trading_state"]
#: 50 BTC at ~50,000 USDT: over the quantity limit (10) and the value limit (100,000).
HUGE_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "50"}


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in stream.getvalue().splitlines() if line.strip())
    return [event for event in lines if event.get("event") == name]


def scripted_registry(exchange: ScriptedExchange) -> PluginRegistry:
    return PluginRegistry(disabled=(), load_entrypoints=False,
                          plugins=[("scripted", scripted_plugin(exchange))])


@pytest.mark.parametrize("disabled", [{"risk"}, {"risk", "paper"}, ["paper", "risk"]])
def test_the_plugin_switch_cannot_remove_the_risk_checks(disabled: Any) -> None:
    with pytest.raises(ConfigurationError, match="BAGBOT_SKIP_RISK_CHECKS"):
        PluginRegistry(disabled=disabled, load_entrypoints=False)


@pytest.mark.parametrize("value", ["risk", " risk , paper", "paper,risk"])
def test_the_environment_switch_cannot_remove_the_risk_checks(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_DISABLE_PLUGINS", value)
    with pytest.raises(ConfigurationError, match=r"BAGBOT_DISABLE_PLUGINS.*BAGBOT_SKIP_RISK"):
        PluginRegistry(load_entrypoints=False)


def test_unregister_cannot_remove_the_risk_checks() -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    with pytest.raises(ConfigurationError, match="BAGBOT_SKIP_RISK_CHECKS"):
        registry.unregister("risk")
    assert [check.name for check in registry.risk_checks()] == ALL_CHECKS


async def test_skipping_every_check_is_logged_and_recorded_on_every_order(
    db: Session, exchange: ScriptedExchange, log_stream_json: io.StringIO
) -> None:
    router = Router(scripted_registry(exchange), limits=RiskLimits(), allow_live=False,
                    skip_risk_checks="all")
    try:
        assert router.skipped_risk_checks == tuple(ALL_CHECKS)
        first = await router.route_order("scripted", HUGE_BUY, db, "u")
        second = await router.route_order("scripted", HUGE_BUY, db, "u")
        exchange.script("reject")
        with pytest.raises(ExchangeRejectedError) as info:
            await router.route_order("scripted", HUGE_BUY, db, "u")
        with pytest.raises(ExchangeRejectedError) as before_send:  # no such market
            await router.route_order("scripted", {**HUGE_BUY, "symbol": "NOPE/USDT"}, db, "u")
    finally:
        await router.aclose()
    assert first.status == second.status == "filled" and first.qty == Decimal("50")
    rows = [first, second, info.value.order, before_send.value.order]
    for row in rows:
        assert row is not None and row.details["risk_checks_skipped"] == ALL_CHECKS
    assert before_send.value.order.details["stage"] == "pre-trade"
    bypassed = events(log_stream_json, "risk_checks_bypassed")
    assert len(bypassed) == 4
    assert all(e["level"] == "warning" and e["checks"] == ALL_CHECKS for e in bypassed)
    assert events(log_stream_json, "risk_check") == []  # no check ran


async def test_skipping_one_check_by_name_keeps_the_others(
    db: Session, exchange: ScriptedExchange, log_stream_json: io.StringIO,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_SKIP_RISK_CHECKS", " max_quantity ")
    limits = RiskLimits(max_order_value_usd=Decimal("1e9"))
    router = Router(scripted_registry(exchange), limits=limits, allow_live=False)
    try:
        order = await router.route_order("scripted", HUGE_BUY, db, "u")
        with pytest.raises(RiskCheckError) as info:
            await router.route_order("scripted", {**HUGE_BUY, "amount": "0.00001"}, db, "u")
    finally:
        await router.aclose()
    assert order.status == "filled" and order.details["risk_checks_skipped"] == ["max_quantity"]
    assert {v.check for v in info.value.violations} == {"min_quantity"}
    rejected = info.value.order
    assert rejected is not None and rejected.details["risk_checks_skipped"] == ["max_quantity"]
    assert [e["checks"] for e in events(log_stream_json, "risk_checks_bypassed")] == [
        ["max_quantity"], ["max_quantity"]]
    ran = {e["check"] for e in events(log_stream_json, "risk_check")}
    assert ran == set(ALL_CHECKS) - {"max_quantity"}


async def test_a_validation_refusal_under_a_bypass_records_it_too(
    db: Session, exchange: ScriptedExchange
) -> None:
    router = Router(scripted_registry(exchange), limits=RiskLimits(), allow_live=False,
                    skip_risk_checks=["valid_side"])
    with pytest.raises(OrderValidationError) as info:
        await router.route_order("scripted", {**HUGE_BUY, "amount": "NaN"}, db, "u")
    await router.aclose()
    order = info.value.order
    assert order is not None and order.details["stage"] == "validation"
    assert order.details["risk_checks_skipped"] == ["valid_side"]


@pytest.mark.parametrize("value", ["max_quantiy", "max_quantity,nope", "ALL", "risk",
                                   "all,max_value"])
def test_a_name_that_is_not_a_check_is_a_configuration_error(
    value: str, exchange: ScriptedExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo must neither skip nothing nor everything: it stops the router being built."""
    with pytest.raises(ConfigurationError, match="BAGBOT_SKIP_RISK_CHECKS") as info:
        Router(scripted_registry(exchange), limits=RiskLimits(), skip_risk_checks=value)
    if value != "all,max_value":
        assert "max_quantity, max_value" in str(info.value)  # the names that do exist
    monkeypatch.setenv("BAGBOT_SKIP_RISK_CHECKS", value)
    with pytest.raises(ConfigurationError, match="BAGBOT_SKIP_RISK_CHECKS"):
        Router(scripted_registry(exchange), limits=RiskLimits())


async def test_without_the_setting_nothing_is_bypassed(
    db: Session, exchange: ScriptedExchange, log_stream_json: io.StringIO,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_SKIP_RISK_CHECKS", "")
    router = Router(scripted_registry(exchange), limits=RiskLimits(), allow_live=False)
    with pytest.raises(RiskCheckError) as info:
        await router.route_order("scripted", HUGE_BUY, db, "u")
    await router.aclose()
    assert router.skipped_risk_checks == ()
    assert {v.check for v in info.value.violations} == {"max_quantity", "max_value"}
    assert "risk_checks_skipped" not in info.value.order.details  # type: ignore[union-attr]
    assert events(log_stream_json, "risk_checks_bypassed") == []
    assert exchange.create_calls == 0
