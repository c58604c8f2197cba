"""The five built-in pre-trade checks from the seed, registered as an ordinary plugin,
together with the controls of :mod:`bagbot_core.risk_controls` (off until configured).

Names are stable -- they are what rejected rows and audit events carry:
``max_quantity``, ``max_value``, ``min_quantity``, ``valid_side``, ``valid_symbol``.
"""

from __future__ import annotations

from decimal import Decimal

from bagbot_core.markers import hookimpl
from bagbot_core.orders import Side
from bagbot_core.risk import RiskCheck, RiskContext, RiskViolation, fmt
from bagbot_core.risk_controls import CONTROLS


def _seed_limit(ctx: RiskContext, name: str) -> Decimal:
    """The seed limit ``name`` for this order: per scope from ``ctx.config`` (the router's),
    else the context's global ``limits``."""
    if ctx.config is None:
        value: Decimal = getattr(ctx.limits, name)
        return value
    limit: Decimal = ctx.config.limit(name, user_id=ctx.user_id, connector=ctx.connector,
                                      symbol=ctx.order.symbol).value
    return limit


def max_quantity(ctx: RiskContext) -> RiskViolation | None:
    limit = _seed_limit(ctx, "max_order_qty")
    if ctx.order.amount > limit:
        return RiskViolation(
            "max_quantity", f"quantity {fmt(ctx.order.amount)} exceeds {fmt(limit)}",
            limit=fmt(limit), actual=fmt(ctx.order.amount),
        )
    return None


def min_quantity(ctx: RiskContext) -> RiskViolation | None:
    limit = _seed_limit(ctx, "min_order_qty")
    if ctx.order.amount < limit:
        return RiskViolation(
            "min_quantity", f"quantity {fmt(ctx.order.amount)} is below {fmt(limit)}",
            limit=fmt(limit), actual=fmt(ctx.order.amount),
        )
    return None


def max_value(ctx: RiskContext) -> RiskViolation | None:
    """Order value in USD must not exceed the limit; unknown value fails closed."""
    limit = _seed_limit(ctx, "max_order_value_usd")
    if ctx.reference_price is None:
        return RiskViolation(
            "max_value", f"no reference price for {ctx.order.symbol}: cannot value the order "
            "in USD", limit=fmt(limit),
        )
    value = ctx.notional_usd
    if value is None:
        return RiskViolation(
            "max_value", f"cannot value {ctx.order.symbol} in USD: quote currency "
            f"{ctx.order.quote} is not a USD currency", limit=fmt(limit),
        )
    if value > limit:
        return RiskViolation(
            "max_value", f"order value {fmt(value)} USD exceeds {fmt(limit)} USD",
            limit=fmt(limit), actual=fmt(value),
        )
    return None


_SIDES = frozenset(side.value for side in Side)


def valid_side(ctx: RiskContext) -> RiskViolation | None:
    # Payload parsing already refuses other sides; this guards orders built in code.
    if str(ctx.order.side) not in _SIDES:
        return RiskViolation("valid_side", f"side must be buy or sell, got {ctx.order.side!r}",
                             actual=str(ctx.order.side))
    return None


def valid_symbol(ctx: RiskContext) -> RiskViolation | None:
    market = ctx.market
    if market is None:
        return RiskViolation(
            "valid_symbol", f"{ctx.order.symbol} is not a market on {ctx.connector}",
            actual=ctx.order.symbol,
        )
    if not market.active:
        return RiskViolation(
            "valid_symbol", f"{ctx.order.symbol} is not active on {ctx.connector}",
            actual=ctx.order.symbol,
        )
    return None


BUILTIN_CHECKS = (
    RiskCheck("max_quantity", max_quantity, "quantity <= MAX_ORDER_QTY (default 10.0)"),
    RiskCheck("max_value", max_value, "value in USD <= MAX_ORDER_VALUE_USD (default 100000.0)"),
    RiskCheck("min_quantity", min_quantity, "quantity >= MIN_ORDER_QTY (default 0.0001)"),
    RiskCheck("valid_side", valid_side, "side is buy or sell"),
    RiskCheck("valid_symbol", valid_symbol, "symbol exists and is active on the connector"),
)


@hookimpl
def bagbot_add_risk_checks() -> tuple[RiskCheck, ...]:
    from bagbot_core.trading_state import TRADING_STATE_CHECK

    return (*BUILTIN_CHECKS, *CONTROLS, TRADING_STATE_CHECK)
