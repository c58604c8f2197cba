"""The built-in stateful pre-trade controls: collar, duplicates, rate, open orders, notional,
position.

Each is a named check, off until :mod:`bagbot_core.risk_config` sets its limit for the
order's user, connector or symbol. The stateful ones read ``ctx.history`` -- the router's own
database, inside the transaction that holds the user's lock -- so their limits hold across
processes. Every boundary is inclusive: an order that reaches a limit exactly passes, one
that goes past it is refused. A control that is on but cannot decide (no quote, no history,
no USD value) refuses: it fails closed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from bagbot_core.orders import OrderType, Side
from bagbot_core.risk import RiskCheck, RiskContext, RiskViolation, fmt

if TYPE_CHECKING:
    from bagbot_core.history import History
    from bagbot_core.risk_config import Limit

# Wide enough that no product or sum of NUMERIC(38, 18) values is rounded; a rounding
# would raise (and the check fail closed) rather than move a boundary.
_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])
_MICROSECOND = Decimal("0.000001")


def now() -> dt.datetime:
    """The controls' clock (UTC); the same clock stamps ``created_at`` on every row."""
    return dt.datetime.now(dt.UTC)


def _clock(ctx: RiskContext) -> dt.datetime:
    """The routing transaction's instant when the router set one (every control of the
    order then measures from the same instant), else :func:`now`."""
    at = None if ctx.history is None else ctx.history.now
    return now() if at is None else at


def _limit(ctx: RiskContext, name: str) -> Limit | None:
    if ctx.config is None:
        return None
    return ctx.config.limit(name, user_id=ctx.user_id, connector=ctx.connector,
                            symbol=ctx.order.symbol)


def _on(ctx: RiskContext, name: str) -> Limit | None:
    """The limit that switches a control on, or ``None`` when it is off for this order."""
    limit = _limit(ctx, name)
    return None if limit is None or limit.value is None else limit


def _setting(ctx: RiskContext, name: str) -> object:
    limit = _limit(ctx, name)
    return None if limit is None else limit.value


def _no_history(check: str, limit: str | None) -> RiskViolation:
    return RiskViolation(check, "no order history to check against (the check runs only "
                                "inside the router); refused", limit=limit)


def _delta(seconds: Decimal) -> dt.timedelta:
    """``seconds`` as a timedelta, rounded up to a microsecond: a window never shrinks."""
    return dt.timedelta(microseconds=int((seconds / _MICROSECOND).to_integral_value(
        rounding=decimal.ROUND_CEILING)))


def _seconds(delta: dt.timedelta) -> Decimal:
    """A timedelta as exact decimal seconds."""
    return (Decimal(delta.days * 86400 + delta.seconds)
            + Decimal(delta.microseconds) * _MICROSECOND).normalize(_EXACT)


def price_collar(ctx: RiskContext) -> RiskViolation | None:
    """A limit buy priced above ``ask * (1 + pct/100)``, or a limit sell below
    ``bid * (1 - pct/100)``, is refused; exactly at the bound passes (inclusive). With the
    collar on, a limit order without that side of the quote is refused. Market orders are
    not collared (``max_value`` prices them at the quote).
    """
    limit = _on(ctx, "price_collar_pct")
    order = ctx.order
    if limit is None or order.type is not OrderType.LIMIT or order.price is None:
        return None
    pct: Decimal = limit.value
    buy = order.side is Side.BUY
    word = "ask" if buy else "bid"
    reference = None if ctx.quote is None else ctx.quote.reference_price(order.side)
    if reference is None or not reference.is_finite() or reference <= 0:
        return RiskViolation(
            "price_collar", f"no {word} quoted for {order.symbol}: the {fmt(pct)}% price "
            "collar cannot be checked", limit=f"{fmt(pct)}%")
    with decimal.localcontext(_EXACT):
        bound = reference * (100 + pct if buy else 100 - pct) / 100
        through = order.price > bound if buy else order.price < bound
    if not through:
        return None
    return RiskViolation(
        "price_collar", f"limit {order.side} at {fmt(order.price)} is more than {fmt(pct)}% "
        f"{'above the ask' if buy else 'below the bid'} {fmt(reference)} (collar "
        f"{fmt(bound)})", limit=fmt(bound), actual=fmt(order.price))


async def duplicate_order(ctx: RiskContext) -> RiskViolation | None:
    """The same user, connector, symbol, side, type, amount and price under another client
    order id within the window is refused; an order placed exactly ``window`` seconds ago
    still counts (inclusive). Rejected orders do not count.
    """
    limit = _on(ctx, "duplicate_window_seconds")
    if limit is None:
        return None
    window: Decimal = limit.value
    if ctx.history is None:
        return _no_history("duplicate_order", fmt(window))
    at = _clock(ctx)
    duplicate = await ctx.history.find_duplicate(at - _delta(window), ctx.order)
    if duplicate is None:
        return None
    age = _seconds(max(at - duplicate.created_at, dt.timedelta(0)))
    return RiskViolation(
        "duplicate_order", f"same order as order {duplicate.id} placed {fmt(age)} s ago "
        f"(duplicate window {fmt(window)} s)", limit=fmt(window), actual=fmt(age))


async def order_rate(ctx: RiskContext) -> RiskViolation | None:
    """At most ``order_rate`` orders per rolling ``order_rate_window_seconds``, this one
    included (reaching the limit passes; inclusive), per user -- per user and connector with
    ``order_rate_per_connector``. Orders placed exactly ``window`` seconds ago still count;
    rejected orders do not.
    """
    limit = _on(ctx, "order_rate")
    if limit is None:
        return None
    most: int = limit.value
    window = Decimal(str(_setting(ctx, "order_rate_window_seconds")))
    per_connector = _setting(ctx, "order_rate_per_connector") is True
    if ctx.history is None:
        return _no_history("order_rate", str(most))
    placed = await ctx.history.orders_since(
        _clock(ctx) - _delta(window), connector=ctx.connector if per_connector else None)
    if placed + 1 <= most:
        return None
    where = f" on {ctx.connector}" if per_connector else ""
    return RiskViolation(
        "order_rate", f"{placed + 1} orders{where} within {fmt(window)} s with this one; at most "
        f"{most}", limit=str(most), actual=str(placed + 1))


async def max_open_orders(ctx: RiskContext) -> RiskViolation | None:
    """At most ``max_open_orders`` live orders (pending, open, partially filled, unknown),
    this one included (reaching the limit passes; inclusive), per user -- per user and
    symbol with ``max_open_orders_per_symbol``. Market orders count too: until the exchange
    answers, every order is live.
    """
    limit = _on(ctx, "max_open_orders")
    if limit is None:
        return None
    most: int = limit.value
    per_symbol = _setting(ctx, "max_open_orders_per_symbol") is True
    if ctx.history is None:
        return _no_history("max_open_orders", str(most))
    live = await ctx.history.open_orders(symbol=ctx.order.symbol if per_symbol else None)
    if live + 1 <= most:
        return None
    where = f" on {ctx.order.symbol}" if per_symbol else ""
    return RiskViolation(
        "max_open_orders", f"{live + 1} open orders{where} with this one; at most {most}",
        limit=str(most), actual=str(live + 1))


def day_start(at: dt.datetime, window: str) -> dt.datetime:
    """Where the notional day began: 00:00 UTC of ``at``'s day, or 24 hours before ``at``."""
    if window == "rolling_24h":
        return at - dt.timedelta(hours=24)
    return at.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def daily_notional(ctx: RiskContext) -> RiskViolation | None:
    """The user's USD notional since the day began (UTC day, or rolling 24 h), this order
    included, must not exceed ``daily_notional_usd``: exactly reaching it passes
    (inclusive). Counts what :meth:`History.notional_since` counts: traded parts and live
    remainders. An order that cannot be valued in USD is refused.
    """
    limit = _on(ctx, "daily_notional_usd")
    if limit is None:
        return None
    most: Decimal = limit.value
    value = ctx.notional_usd
    if value is None:
        return RiskViolation(
            "daily_notional", f"cannot value {ctx.order.symbol} in USD (no price, or quote "
            f"currency {ctx.order.quote} is not a USD currency)", limit=fmt(most))
    if ctx.history is None:
        return _no_history("daily_notional", fmt(most))
    window = str(_setting(ctx, "daily_notional_window") or "utc_day")
    used = await ctx.history.notional_since(day_start(_clock(ctx), window))
    with decimal.localcontext(_EXACT):
        total = used + value
    if total <= most:
        return None
    day = "the last 24 h" if window == "rolling_24h" else "today (UTC)"
    return RiskViolation(
        "daily_notional", f"notional {fmt(total)} USD {day} with this order ({fmt(used)} "
        f"before it) exceeds {fmt(most)} USD", limit=fmt(most), actual=fmt(total))


async def max_position(ctx: RiskContext) -> RiskViolation | None:
    """The user's position in the order's base asset, counting filled orders and live
    orders in the same direction plus this one, must stay within ``max_position.<ASSET>``
    either way (long for a buy, short for a sell); exactly at the limit passes (inclusive).
    An order that reduces the position always passes unless it overshoots past the limit
    the other way. Positions are bagbot's own fills, over every connector.
    """
    asset = ctx.order.base.upper()
    limit = _on(ctx, f"max_position.{asset}")
    if limit is None:
        return None
    most: Decimal = limit.value
    history: History | None = ctx.history
    if history is None:
        return _no_history("max_position", fmt(most))
    side = ctx.order.side
    position, live = await history.exposure(asset, side)
    with decimal.localcontext(_EXACT):
        signed = position if side is Side.BUY else -position
        projected = signed + live + ctx.order.amount
    if projected <= most:
        return None
    way = "long" if side is Side.BUY else "short"
    return RiskViolation(
        "max_position", f"{asset} position would be {fmt(projected)} {way} (filled "
        f"{fmt(position)}, live {side}s {fmt(live)}, this order {fmt(ctx.order.amount)}); at "
        f"most {fmt(most)}", limit=fmt(most), actual=fmt(projected))


def _prefetch(ctx: RiskContext, control: str) -> None:
    """Announce what ``control`` will read for this order (see ``RiskCheck.prefetch``), with
    the arguments it will pass: nothing when it is off or will not read."""
    history = ctx.history
    if history is None or history.now is None:  # no shared instant: nothing to plan
        return
    at = history.now
    order = ctx.order
    if control == "duplicate_order":
        limit = _on(ctx, "duplicate_window_seconds")
        if limit is not None:
            history.expect("find_duplicate", at - _delta(limit.value), order)
    elif control == "order_rate":
        if _on(ctx, "order_rate") is not None:
            window = Decimal(str(_setting(ctx, "order_rate_window_seconds")))
            per_connector = _setting(ctx, "order_rate_per_connector") is True
            history.expect("orders_since", at - _delta(window),
                           connector=ctx.connector if per_connector else None)
    elif control == "max_open_orders":
        if _on(ctx, "max_open_orders") is not None:
            per_symbol = _setting(ctx, "max_open_orders_per_symbol") is True
            history.expect("open_orders", symbol=order.symbol if per_symbol else None)
    elif control == "daily_notional":
        if _on(ctx, "daily_notional_usd") is not None and ctx.notional_usd is not None:
            day = str(_setting(ctx, "daily_notional_window") or "utc_day")
            history.expect("notional_since", day_start(at, day))
    elif control == "max_position" and (
            _on(ctx, f"max_position.{order.base.upper()}") is not None):
        history.expect("exposure", order.base.upper(), order.side)


def _prefetcher(control: str) -> Callable[[RiskContext], None]:
    return functools.partial(_prefetch, control=control)


CONTROLS = (
    RiskCheck("price_collar", price_collar,
              "limit price at most price_collar_pct through the quote (off by default)"),
    RiskCheck("duplicate_order", duplicate_order,
              "no identical order within duplicate_window_seconds (off by default)",
              prefetch=_prefetcher("duplicate_order")),
    RiskCheck("order_rate", order_rate,
              "at most order_rate orders per window (off by default)",
              prefetch=_prefetcher("order_rate")),
    RiskCheck("max_open_orders", max_open_orders,
              "at most max_open_orders live orders (off by default)",
              prefetch=_prefetcher("max_open_orders")),
    RiskCheck("daily_notional", daily_notional,
              "USD notional per day <= daily_notional_usd (off by default)",
              prefetch=_prefetcher("daily_notional")),
    RiskCheck("max_position", max_position,
              "net position per asset <= max_position.<ASSET> (off by default)",
              prefetch=_prefetcher("max_position")),
)
