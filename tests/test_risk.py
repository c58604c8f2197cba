"""The built-in risk checks: boundaries (property-tested), configuration, fail-closed."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bagbot_core.errors import ConfigurationError
from bagbot_core.orders import Market, OrderRequest, OrderType, Quote, Side
from bagbot_core.risk import RiskCheck, RiskContext, RiskLimits, RiskViolation
from bagbot_core.risk import run_checks_sync as run_checks
from bagbot_core.risk_checks import BUILTIN_CHECKS

MARKETS = {
    "BTC/USDT": Market("BTC/USDT", "BTC", "USDT"),
    "BTC/USD": Market("BTC/USD", "BTC", "USD"),
    "ETH/BTC": Market("ETH/BTC", "ETH", "BTC"),
    "OLD/USDT": Market("OLD/USDT", "OLD", "USDT", active=False),
}

decimals = st.decimals(min_value=Decimal("0.000000000000000001"), max_value=Decimal("1e12"),
                       allow_nan=False, allow_infinity=False, places=18)


def ctx(amount: Decimal | str = "1", price: Decimal | str | None = "100", *,
        symbol: str = "BTC/USDT", side: Side = Side.BUY, limits: RiskLimits | None = None,
        quote: Quote | None = None) -> RiskContext:
    order = OrderRequest(symbol, side, OrderType.LIMIT if price is not None else OrderType.MARKET,
                         Decimal(amount), None if price is None else Decimal(price))
    return RiskContext(order=order, connector="test", user_id="u",
                       limits=limits or RiskLimits(), markets=MARKETS, quote=quote)


def names(violations: list[RiskViolation]) -> set[str]:
    return {v.check for v in violations}


def test_seed_defaults() -> None:
    limits = RiskLimits.from_env({})
    assert limits == RiskLimits(Decimal("10.0"), Decimal("100000.0"), Decimal("0.0001"))


def test_limits_from_environment_are_decimal() -> None:
    limits = RiskLimits.from_env({"MAX_ORDER_QTY": "2.5", "MAX_ORDER_VALUE_USD": "1000.10",
                                  "MIN_ORDER_QTY": "0.1"})
    assert limits.max_order_qty == Decimal("2.5")
    assert limits.max_order_value_usd == Decimal("1000.1")


@pytest.mark.parametrize("raw", ["abc", "nan", "-1", "0", "inf", "1e999"])
def test_malformed_environment_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="MAX_ORDER_VALUE_USD"):
        RiskLimits.from_env({"MAX_ORDER_VALUE_USD": raw})


@given(amount=decimals, limit=decimals)
def test_max_quantity_boundary_is_inclusive_and_exact(amount: Decimal, limit: Decimal) -> None:
    limits = RiskLimits(max_order_qty=limit, max_order_value_usd=Decimal("1e30"),
                        min_order_qty=Decimal("1e-18"))
    violations = run_checks(BUILTIN_CHECKS, ctx(amount, "1", limits=limits))
    assert ("max_quantity" in names(violations)) == (amount > limit)


@given(amount=decimals, limit=decimals)
def test_min_quantity_boundary_is_inclusive_and_exact(amount: Decimal, limit: Decimal) -> None:
    limits = RiskLimits(max_order_qty=Decimal("1e30"), max_order_value_usd=Decimal("1e30"),
                        min_order_qty=limit)
    violations = run_checks(BUILTIN_CHECKS, ctx(amount, "1", limits=limits))
    assert ("min_quantity" in names(violations)) == (amount < limit)


@given(amount=decimals, price=decimals, limit=decimals)
def test_max_value_boundary_is_inclusive_and_exact(amount: Decimal, price: Decimal,
                                                   limit: Decimal) -> None:
    limits = RiskLimits(max_order_qty=Decimal("1e30"), max_order_value_usd=limit,
                        min_order_qty=Decimal("1e-18"))
    violations = run_checks(BUILTIN_CHECKS, ctx(amount, price, limits=limits))
    assert ("max_value" in names(violations)) == (amount * price > limit)


def test_value_exactly_at_the_limit_passes() -> None:
    # 0.1 * 3 would be 0.30000000000000004 in float; in Decimal it is exactly 0.3.
    limits = RiskLimits(max_order_value_usd=Decimal("0.3"), min_order_qty=Decimal("0.1"))
    assert run_checks(BUILTIN_CHECKS, ctx("0.1", "3", limits=limits)) == []


def test_market_orders_are_valued_at_ask_for_buys_and_bid_for_sells() -> None:
    quote = Quote("BTC/USDT", bid=Decimal("100"), ask=Decimal("101"), taken_at=time.monotonic())
    limits = RiskLimits(max_order_value_usd=Decimal("1000"))
    buy = run_checks(BUILTIN_CHECKS, ctx("10", None, quote=quote, limits=limits))
    sell = run_checks(BUILTIN_CHECKS, ctx("10", None, side=Side.SELL, quote=quote,
                                          limits=limits))
    assert names(buy) == {"max_value"} and buy[0].actual == "1010"
    assert sell == []


def test_usd_quote_currencies_count_as_usd() -> None:
    assert run_checks(BUILTIN_CHECKS, ctx(symbol="BTC/USD")) == []


def test_no_usd_value_fails_closed() -> None:
    violations = run_checks(BUILTIN_CHECKS, ctx(symbol="ETH/BTC", price="0.05"))
    assert names(violations) == {"max_value"}
    assert "not a USD currency" in violations[0].reason
    no_quote = run_checks(BUILTIN_CHECKS, ctx(price=None, quote=None))
    assert "no reference price" in no_quote[0].reason


def test_symbol_must_exist_and_be_active() -> None:
    assert names(run_checks(BUILTIN_CHECKS, ctx(symbol="OLD/USDT"))) == {"valid_symbol"}
    assert names(run_checks(BUILTIN_CHECKS, ctx(symbol="NOPE/USDT"))) == {"valid_symbol"}


def test_side_must_be_buy_or_sell() -> None:
    context = ctx()
    import attrs

    bad = attrs.evolve(context, order=attrs.evolve(context.order, side="hold"))
    assert names(run_checks(BUILTIN_CHECKS, bad)) == {"valid_side"}


def test_every_violation_is_collected_with_limit_and_actual() -> None:
    limits = RiskLimits(max_order_qty=Decimal("1"), max_order_value_usd=Decimal("10"))
    violations = run_checks(BUILTIN_CHECKS, ctx("5", "100", symbol="BTC/USDT", limits=limits))
    by_name = {v.check: v for v in violations}
    assert set(by_name) == {"max_quantity", "max_value"}
    assert (by_name["max_quantity"].limit, by_name["max_quantity"].actual) == ("1", "5")
    assert (by_name["max_value"].limit, by_name["max_value"].actual) == ("10", "500")


def test_a_check_that_crashes_rejects_the_order() -> None:
    def broken(_: RiskContext) -> None:
        raise ZeroDivisionError("oops")

    violations = run_checks([RiskCheck("broken", broken)], ctx())
    assert names(violations) == {"broken"} and "ZeroDivisionError" in violations[0].reason


def test_a_check_returning_garbage_rejects_the_order() -> None:
    violations = run_checks([RiskCheck("garbage", lambda c: ["not a violation"])], ctx())  # type: ignore[arg-type, list-item, return-value]
    assert names(violations) == {"garbage"} and "expected RiskViolation" in violations[0].reason
