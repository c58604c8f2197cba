"""The built-in controls: boundaries as Decimal-exact properties over the real History (a
SQLite file), and each control through ``Router.route_order`` on SQLite and PostgreSQL with
the ``rejected`` row carrying the check's name, limit and actual value."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import itertools
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from bagbot_core import risk_controls
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import RiskCheckError
from bagbot_core.history import History
from bagbot_core.models import Order
from bagbot_core.orders import Market, OrderRequest, OrderType, Quote, Side
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskCheck, RiskContext, RiskLimits, RiskViolation, run_checks
from bagbot_core.risk_config import RiskConfig
from bagbot_core.risk_controls import CONTROLS
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from bagbot_core.trading_state import TRADING_STATE_CHECK
from tests.scripted import ScriptedExchange

MARKETS = {s: Market(s, s.split("/")[0], s.split("/")[1])
           for s in ("BTC/USDT", "BTC/USD", "ETH/USDT", "ETH/BTC")}
CHECK = {check.name: check for check in CONTROLS}
NOW = dt.datetime(2026, 3, 10, 6, 0, tzinfo=dt.UTC)
LIVE = [OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED,
        OrderStatus.UNKNOWN]
_ids = itertools.count()

amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8)
prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e9"), places=8)


def config(**overrides: Any) -> RiskConfig:
    return RiskConfig.load(environ={"XDG_CONFIG_HOME": "/nonexistent"}, overrides=overrides)


def request(side: Side = Side.BUY, amount: Decimal | str = "1", price: Decimal | str | None = "100",
            symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(symbol, side, OrderType.MARKET if price is None else OrderType.LIMIT,
                        Decimal(amount), None if price is None else Decimal(price))


def row(*, status: OrderStatus = OrderStatus.OPEN, created_at: dt.datetime = NOW,
        user_id: str = "u", connector: str = "paper", symbol: str = "BTC/USDT",
        side: str = "buy", qty: Decimal | str = "1", price: Decimal | str | None = "100",
        filled: Decimal | str = "0", avg_price: Decimal | str | None = None,
        notional_usd: Decimal | str | None = None, testnet: bool = True,
        order_type: str = "limit") -> Order:
    return Order(user_id=user_id, connector=connector, symbol=symbol, side=side,
                 order_type=order_type, qty=Decimal(qty), requested_qty=Decimal(qty),
                 price=None if price is None else Decimal(price), status=status.value,
                 client_order_id=f"t{next(_ids)}", testnet=testnet, filled_qty=Decimal(filled),
                 avg_price=None if avg_price is None else Decimal(avg_price),
                 notional_usd=None if notional_usd is None else Decimal(notional_usd),
                 created_at=created_at, updated_at=created_at)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One SQLite file for a module's properties; each example's rows are rolled back."""
    url = f"sqlite:///{tmp_path_factory.mktemp('controls')}/history.db"
    engine = get_engine(url)
    with session_factory(engine)() as s:
        yield s
    engine.dispose()


def check(session: Session, name: str, order: OrderRequest, rows: list[Order], *,
          cfg: RiskConfig, quote: Quote | None = None, user_id: str = "u",
          connector: str = "paper", now: dt.datetime = NOW) -> RiskViolation | None:
    """Run control ``name`` on ``order`` with ``rows`` in the database at time ``now``.

    Twice: on a view without an instant of its own (the control reads its clock, one query
    per call), and as the router runs it (the view carries the instant; the trading-state
    check's query and the control's are fetched together, in one statement): same answer.
    """
    session.add_all(rows)
    session.flush()

    def run(history: History, checks: list[RiskCheck]) -> list[RiskViolation]:
        ctx = RiskContext(order=order, connector=connector, user_id=user_id,
                          limits=RiskLimits(), markets=MARKETS, quote=quote, testnet=True,
                          history=history, config=cfg)
        return asyncio.run(run_checks(checks, ctx))

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(risk_controls, "now", lambda: now)
            violations = run(History(session, user_id, connector, True), [CHECK[name]])
        prefetched = run(History(session, user_id, connector, True, now=now),
                         [TRADING_STATE_CHECK, CHECK[name]])
    finally:
        session.rollback()
    assert prefetched == violations
    assert len(violations) <= 1 and all(v.check == name for v in violations), violations
    return violations[0] if violations else None


def exactly(value: Fraction) -> Decimal:
    """A fraction whose denominator divides a power of ten, as an exact Decimal."""
    with decimal.localcontext(decimal.Context(prec=200, traps=[decimal.Inexact])):
        return Decimal(value.numerator) / Decimal(value.denominator)


# -- off by default -------------------------------------------------------------------------


def test_every_control_is_off_until_configured(session: Session) -> None:
    quote = Quote("BTC/USDT", Decimal(1), Decimal(1), 0)
    rows = [row(status=s) for s in LIVE * 3] + [row(status=OrderStatus.FILLED, filled="900")]
    for name in CHECK:
        assert check(session, name, request(amount="500", price="1e6"), rows, cfg=config(),
                     quote=quote) is None


def test_without_config_or_history_the_controls_are_off_or_fail_closed() -> None:
    bare = RiskContext(order=request(), connector="paper", user_id="u", limits=RiskLimits(),
                       markets=MARKETS)
    assert asyncio.run(run_checks(CONTROLS, bare)) == []  # no config: as before issue 10
    on = config(duplicate_window_seconds=1, order_rate=5, max_open_orders=5,
                daily_notional_usd=10**6, max_position={"BTC": 9})
    refused = asyncio.run(run_checks(CONTROLS, RiskContext(
        order=request(), connector="paper", user_id="u", limits=RiskLimits(),
        markets=MARKETS, config=on)))
    assert {v.check for v in refused} == {"duplicate_order", "order_rate", "max_open_orders",
                                          "daily_notional", "max_position"}
    assert all("no order history" in v.reason for v in refused)


# -- 1. price collar --------------------------------------------------------------------------

percents = st.decimals(min_value=Decimal(0), max_value=Decimal(150), places=4)


@given(reference=prices, pct=percents, price=prices, side=st.sampled_from(Side))
@example(reference=Decimal(100), pct=Decimal(5), price=Decimal(105), side=Side.BUY)
@example(reference=Decimal(100), pct=Decimal(5), price=Decimal("105.00000001"), side=Side.BUY)
@example(reference=Decimal(100), pct=Decimal(5), price=Decimal(95), side=Side.SELL)
@example(reference=Decimal(100), pct=Decimal(5), price=Decimal("94.99999999"), side=Side.SELL)
@example(reference=Decimal(100), pct=Decimal(0), price=Decimal(100), side=Side.BUY)
def test_price_collar_boundary_is_inclusive_and_exact(reference: Decimal, pct: Decimal,
                                                     price: Decimal, side: Side) -> None:
    """Buy above ``ask * (1 + pct/100)`` or sell below ``bid * (1 - pct/100)`` is refused;
    exactly at the bound passes. Bid and ask differ so the side's own one must be used."""
    quote = Quote("BTC/USDT", reference if side is Side.SELL else reference / 2,
                  reference if side is Side.BUY else reference * 2, 0)
    cfg = config(price_collar_pct=pct)
    violation = check_pure("price_collar", request(side, "1", price), cfg, quote)
    factor = 1 + Fraction(pct) / 100 if side is Side.BUY else 1 - Fraction(pct) / 100
    bound = Fraction(reference) * factor
    refused = Fraction(price) > bound if side is Side.BUY else Fraction(price) < bound
    assert (violation is not None) == refused
    if violation is not None:
        assert Fraction(Decimal(violation.limit or "nan")) == bound  # the exact bound
        assert violation.actual == format(price.normalize(), "f")


def check_pure(name: str, order: OrderRequest, cfg: RiskConfig,
               quote: Quote | None) -> RiskViolation | None:
    ctx = RiskContext(order=order, connector="paper", user_id="u", limits=RiskLimits(),
                      markets=MARKETS, quote=quote, config=cfg)
    violations = asyncio.run(run_checks([CHECK[name]], ctx))
    return violations[0] if violations else None


@given(reference=prices, pct=percents, side=st.sampled_from(Side),
       nudge=st.sampled_from([-1, 0, 1]))
def test_price_collar_at_the_bound_and_one_step_past_it(reference: Decimal, pct: Decimal,
                                                       side: Side, nudge: int) -> None:
    cfg = config(price_collar_pct=pct)
    quote = Quote("BTC/USDT", reference, reference, 0)
    factor = (100 + pct) if side is Side.BUY else (100 - pct)
    bound = exactly(Fraction(reference) * Fraction(factor) / 100)
    with decimal.localcontext(decimal.Context(prec=200, traps=[decimal.Inexact])):
        price = bound + Decimal(nudge).scaleb(-40)  # far below any step: exactness only
    if price <= 0:
        return
    violation = check_pure("price_collar", request(side, "1", price), cfg, quote)
    through = nudge > 0 if side is Side.BUY else nudge < 0
    assert (violation is not None) == through


def test_price_collar_fails_closed_without_a_quote_and_ignores_market_orders() -> None:
    cfg = config(price_collar_pct="1")
    no_quote = check_pure("price_collar", request(Side.BUY, "1", "100"), cfg, None)
    assert no_quote is not None and "no ask quoted" in no_quote.reason
    assert no_quote.limit == "1%"
    one_sided = Quote("BTC/USDT", None, Decimal(100), 0)
    refused = check_pure("price_collar", request(Side.SELL, "1", "100"), cfg, one_sided)
    assert refused is not None and "no bid quoted" in refused.reason
    assert check_pure("price_collar", request(Side.BUY, "1", None), cfg, None) is None
    assert check_pure("price_collar", request(Side.BUY, "1", "100"), config(), None) is None


# -- 2. duplicate order -----------------------------------------------------------------------


@given(window_us=st.integers(1, 10**9), age_us=st.integers(0, 2 * 10**9))
@example(window_us=5_000_000, age_us=5_000_000)
@example(window_us=5_000_000, age_us=5_000_001)
def test_duplicate_window_boundary_is_inclusive(session: Session, window_us: int,
                                                age_us: int) -> None:
    """An identical order placed ``age`` ago is a duplicate iff ``age <= window``."""
    window = Decimal(window_us).scaleb(-6)
    then = NOW - dt.timedelta(microseconds=age_us)
    violation = check(session, "duplicate_order", request(), [row(created_at=then)],
                      cfg=config(duplicate_window_seconds=window))
    assert (violation is not None) == (age_us <= window_us)
    if violation is not None:
        assert violation.limit == format(window.normalize(), "f")
        assert Decimal(violation.actual or "nan") == Decimal(age_us).scaleb(-6)


@pytest.mark.parametrize(("changes", "duplicate"), [
    ({}, True),
    ({"price": "100.01"}, False),
    ({"qty": "2"}, False),
    ({"side": "sell"}, False),
    ({"symbol": "ETH/USDT"}, False),
    ({"connector": "binance"}, False),
    ({"user_id": "v"}, False),
    ({"order_type": "market", "price": None}, False),
    ({"status": OrderStatus.REJECTED}, False),
    ({"status": OrderStatus.FILLED, "filled": "1", "avg_price": "100"}, True),
    ({"testnet": False}, False),
])
def test_duplicate_means_every_field_equal(session: Session, changes: dict[str, Any],
                                           duplicate: bool) -> None:
    violation = check(session, "duplicate_order", request(), [row(**changes)],
                      cfg=config(duplicate_window_seconds=10))
    assert (violation is not None) == duplicate


def test_duplicate_window_below_a_microsecond_rounds_up() -> None:
    assert risk_controls._delta(Decimal("0.0000011")) == dt.timedelta(microseconds=2)


# -- 3. order rate ----------------------------------------------------------------------------


@given(limit=st.integers(0, 8), inside=st.integers(0, 9), at_edge=st.booleans(),
       outside=st.integers(0, 2), rejected=st.integers(0, 2), elsewhere=st.integers(0, 3),
       per_connector=st.booleans())
def test_order_rate_boundary_is_inclusive(session: Session, limit: int, inside: int,
                                          at_edge: bool, outside: int, rejected: int,
                                          elsewhere: int, per_connector: bool) -> None:
    """``placed + 1 <= limit`` passes: orders in the window (its start included), not
    rejected ones; other connectors' orders unless ``order_rate_per_connector``."""
    since = NOW - dt.timedelta(seconds=30)
    rows = ([row(created_at=NOW - dt.timedelta(seconds=1)) for _ in range(inside)]
            + ([row(created_at=since)] if at_edge else [])
            + [row(created_at=since - dt.timedelta(microseconds=1)) for _ in range(outside)]
            + [row(status=OrderStatus.REJECTED) for _ in range(rejected)]
            + [row(connector="binance") for _ in range(elsewhere)]
            + [row(user_id="v"), row(testnet=False)])
    cfg = config(order_rate=limit, order_rate_window_seconds=30,
                 order_rate_per_connector=per_connector)
    violation = check(session, "order_rate", request(), rows, cfg=cfg)
    placed = inside + at_edge + (0 if per_connector else elsewhere)
    assert (violation is not None) == (placed + 1 > limit)
    if violation is not None:
        assert (violation.limit, violation.actual) == (str(limit), str(placed + 1))


# -- 4. max open orders -----------------------------------------------------------------------


@given(limit=st.integers(0, 8), statuses=st.lists(st.sampled_from(list(OrderStatus)),
                                                   max_size=10),
       other_symbol=st.integers(0, 3), per_symbol=st.booleans())
def test_max_open_orders_boundary_is_inclusive(session: Session, limit: int,
                                               statuses: list[OrderStatus], other_symbol: int,
                                               per_symbol: bool) -> None:
    """Live rows (pending, open, partially filled, unknown) + this order <= limit passes."""
    rows = ([row(status=s) for s in statuses]
            + [row(symbol="ETH/USDT") for _ in range(other_symbol)]
            + [row(user_id="v"), row(testnet=False)])
    cfg = config(max_open_orders=limit, max_open_orders_per_symbol=per_symbol)
    violation = check(session, "max_open_orders", request(), rows, cfg=cfg)
    live = sum(s in LIVE for s in statuses) + (0 if per_symbol else other_symbol)
    assert (violation is not None) == (live + 1 > limit)
    if violation is not None:
        assert (violation.limit, violation.actual) == (str(limit), str(live + 1))


# -- 5. daily notional ------------------------------------------------------------------------

usd = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**6), places=8)


@given(limit=usd, amount=amounts, price=prices, live=st.lists(usd, max_size=4),
       filled=st.lists(st.tuples(amounts, prices), max_size=3), yesterday=usd, old=usd,
       window=st.sampled_from(["utc_day", "rolling_24h"]))
def test_daily_notional_boundary_is_inclusive_and_exact(
        session: Session, limit: Decimal, amount: Decimal, price: Decimal,
        live: list[Decimal], filled: list[tuple[Decimal, Decimal]], yesterday: Decimal,
        old: Decimal, window: str) -> None:
    """Today's notional + this order's ``amount * price`` <= limit passes. NOW is 06:00
    UTC: an order of 18:00 yesterday counts in the rolling 24 h only; one of 25 h ago in
    neither."""
    rows = ([row(notional_usd=v) for v in live]
            + [row(status=OrderStatus.FILLED, qty=q, filled=q, avg_price=p) for q, p in filled]
            + [row(notional_usd=yesterday, created_at=NOW - dt.timedelta(hours=12)),
               row(notional_usd=old, created_at=NOW - dt.timedelta(hours=25)),
               row(notional_usd="1", status=OrderStatus.REJECTED),
               row(notional_usd="1", user_id="v")])
    cfg = config(daily_notional_usd=limit, daily_notional_window=window)
    violation = check(session, "daily_notional", request(Side.BUY, amount, price), rows,
                      cfg=cfg)
    used = sum(map(Fraction, live), Fraction(0)) + sum(
        (Fraction(q) * Fraction(p) for q, p in filled), Fraction(0))
    if window == "rolling_24h":
        used += Fraction(yesterday)
    total = used + Fraction(amount) * Fraction(price)
    assert (violation is not None) == (total > Fraction(limit))
    if violation is not None:
        assert Fraction(Decimal(violation.actual or "nan")) == total
        assert violation.limit == format(limit.normalize(), "f")


@given(spent=usd, extra=st.sampled_from([Decimal(0), Decimal("0.00000001")]))
def test_daily_notional_reaching_the_limit_exactly_passes(session: Session, spent: Decimal,
                                                          extra: Decimal) -> None:
    limit = spent + Decimal(100)
    violation = check(session, "daily_notional", request(Side.BUY, "1", Decimal(100) + extra),
                      [row(notional_usd=spent)], cfg=config(daily_notional_usd=limit))
    assert (violation is not None) == (extra > 0)


def test_daily_notional_refuses_an_order_it_cannot_value(session: Session) -> None:
    violation = check(session, "daily_notional", request(symbol="ETH/BTC"), [],
                      cfg=config(daily_notional_usd=10**6))
    assert violation is not None and "cannot value ETH/BTC in USD" in violation.reason


# -- 6. max position --------------------------------------------------------------------------

quantities = st.lists(amounts, max_size=3)


@given(limit=st.decimals(min_value=Decimal(0), max_value=Decimal(5000), places=8),
       buys=quantities, sells=quantities, live_buys=quantities, live_sells=quantities,
       amount=amounts, side=st.sampled_from(Side))
def test_max_position_boundary_is_inclusive_and_exact(
        session: Session, limit: Decimal, buys: list[Decimal], sells: list[Decimal],
        live_buys: list[Decimal], live_sells: list[Decimal], amount: Decimal,
        side: Side) -> None:
    """Long for a buy: position + live buys + amount; short for a sell: live sells + amount
    - position; at most the limit (inclusive). Fills on BTC/USD count for BTC too."""
    rows = ([row(status=OrderStatus.FILLED, qty=q, filled=q, avg_price="1") for q in buys]
            + [row(status=OrderStatus.FILLED, qty=q, filled=q, avg_price="1", side="sell",
                   symbol="BTC/USD") for q in sells]
            + [row(qty=q) for q in live_buys] + [row(qty=q, side="sell") for q in live_sells]
            + [row(status=OrderStatus.FILLED, qty="7", filled="7", symbol="ETH/USDT"),
               row(status=OrderStatus.FILLED, qty="7", filled="7", user_id="v")])
    violation = check(session, "max_position", request(side, amount, "1"), rows,
                      cfg=config(max_position={"BTC": limit}))
    position = sum(map(Fraction, buys), Fraction(0)) - sum(map(Fraction, sells), Fraction(0))
    if side is Side.BUY:
        projected = position + sum(map(Fraction, live_buys), Fraction(0)) + Fraction(amount)
    else:
        projected = sum(map(Fraction, live_sells), Fraction(0)) + Fraction(amount) - position
    assert (violation is not None) == (projected > Fraction(limit))
    if violation is not None:
        assert Fraction(Decimal(violation.actual or "nan")) == projected


def test_max_position_is_per_asset(session: Session) -> None:
    cfg = config(max_position={"eth": "1"})  # any case
    assert check(session, "max_position", request(amount="5"), [], cfg=cfg) is None
    violation = check(session, "max_position", request(amount="1.5", symbol="ETH/USDT"), [],
                      cfg=cfg)
    assert violation is not None and (violation.limit, violation.actual) == ("1", "1.5")


# -- each control through Router.route_order (SQLite and PostgreSQL) ---------------------------


def router_with(exchange: ScriptedExchange, **overrides: Any) -> Router:
    from tests.scripted import scripted_plugin

    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("scripted", scripted_plugin(exchange))])
    return Router(registry, allow_live=False, risk_config=config(**overrides))


def limit_buy(amount: str = "0.001", price: str = "50000", **extra: str) -> dict[str, str]:
    return {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": amount,
            "price": price, **extra}


async def refused(router: Router, db: Session, payload: dict[str, str], name: str
                  ) -> dict[str, Any]:
    """Route ``payload``; it must be refused by ``name`` alone; return the row's violation."""
    with pytest.raises(RiskCheckError) as caught:
        await router.route_order("scripted", payload, db, "alice")
    assert [v.check for v in caught.value.violations] == [name]
    order = caught.value.order
    assert order.status == OrderStatus.REJECTED
    (violation,) = order.details["violations"]
    assert violation == caught.value.violations[0].as_dict()
    return dict(violation)


@pytest.fixture
def scripted_exchange() -> ScriptedExchange:
    return ScriptedExchange()  # bid 49990, ask 50010


async def test_price_collar_through_route_order(db: Session,
                                                scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, price_collar_pct="1")
    try:
        order = await router.route_order("scripted", limit_buy(price="50510.1"), db, "alice")
        assert order.status == OrderStatus.OPEN  # 50010 * 1.01 exactly: inclusive
        violation = await refused(router, db, limit_buy(price="50510.11"), "price_collar")
        assert (violation["limit"], violation["actual"]) == ("50510.1", "50510.11")
    finally:
        await router.aclose()


async def test_duplicate_order_through_route_order(db: Session,
                                                   scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, duplicate_window_seconds=60)
    try:
        first = await router.route_order("scripted", limit_buy(), db, "alice")
        violation = await refused(router, db, limit_buy(), "duplicate_order")
        assert violation["limit"] == "60" and Decimal(violation["actual"]) < 60
        assert f"order {first.id}" in violation["reason"]
        await router.route_order("scripted", limit_buy(price="50000.01"), db, "alice")
    finally:
        await router.aclose()


async def test_order_rate_through_route_order(db: Session,
                                              scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, order_rate=2)
    try:
        for price in ("50000", "49999"):
            await router.route_order("scripted", limit_buy(price=price), db, "alice")
        violation = await refused(router, db, limit_buy(price="49998"), "order_rate")
        assert (violation["limit"], violation["actual"]) == ("2", "3")
        await router.route_order("scripted", limit_buy(price="49998"), db, "bob")  # per user
    finally:
        await router.aclose()


async def test_max_open_orders_through_route_order(db: Session,
                                                   scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, max_open_orders=2)
    try:
        resting = [await router.route_order("scripted", limit_buy(price=p), db, "alice")
                   for p in ("50000", "49999")]
        violation = await refused(router, db, limit_buy(price="49998"), "max_open_orders")
        assert (violation["limit"], violation["actual"]) == ("2", "3")
        await router.cancel_order(db, resting[0])
        await router.route_order("scripted", limit_buy(price="49998"), db, "alice")
    finally:
        await router.aclose()


async def test_daily_notional_through_route_order(db: Session,
                                                  scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, daily_notional_usd="100")
    try:
        await router.route_order("scripted", limit_buy(), db, "alice")  # 50 USD
        await router.route_order("scripted", limit_buy(), db, "alice")  # 100: inclusive
        violation = await refused(router, db, limit_buy(amount="0.0001"), "daily_notional")
        assert (violation["limit"], violation["actual"]) == ("100", "105")
    finally:
        await router.aclose()


async def test_max_position_through_route_order(db: Session,
                                                scripted_exchange: ScriptedExchange) -> None:
    router = router_with(scripted_exchange, max_position={"BTC": "0.002"})
    market_buy = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}
    try:
        filled = await router.route_order("scripted", market_buy, db, "alice")
        assert filled.status == OrderStatus.FILLED
        await router.route_order("scripted", limit_buy(), db, "alice")  # 0.002: at the limit
        violation = await refused(router, db, limit_buy(amount="0.0001", price="49000"),
                                  "max_position")
        assert (violation["limit"], violation["actual"]) == ("0.002", "0.0021")
        sell = {"symbol": "BTC/USDT", "side": "sell", "type": "limit", "amount": "0.003",
                "price": "60000"}  # short side: 0.003 - 0.001 filled = 0.002
        assert (await router.route_order("scripted", sell, db, "alice")).status == "open"
    finally:
        await router.aclose()


async def test_seed_checks_take_their_limits_per_scope(db: Session,
                                                       scripted_exchange: ScriptedExchange
                                                       ) -> None:
    """The environment sets the global limit; user, connector and symbol scopes refine it."""
    from tests.scripted import scripted_plugin

    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("scripted", scripted_plugin(scripted_exchange))])
    cfg = RiskConfig.load(environ={"MAX_ORDER_QTY": "0.3"}, overrides={
        "users": {"alice": {"max_order_qty": "0.5"}},
        "connectors": {"scripted": {"max_order_value_usd": "30000"}},
        "symbols": {"ETH/BTC": {"max_order_qty": "2"}}})
    router = Router(registry, allow_live=False, risk_config=cfg)

    async def checks(user: str, amount: str, symbol: str = "BTC/USDT") -> dict[str, Any]:
        payload = {"symbol": symbol, "side": "buy", "type": "limit", "amount": amount,
                   "price": "50000" if symbol == "BTC/USDT" else "0.05"}
        with pytest.raises(RiskCheckError) as caught:
            await router.route_order("scripted", payload, db, user)
        return {v.check: (v.limit, v.actual) for v in caught.value.violations}

    try:
        assert await checks("bob", "0.31") == {"max_quantity": ("0.3", "0.31")}  # env
        assert await checks("alice", "0.51") == {"max_quantity": ("0.5", "0.51")}  # user
        await router.route_order("scripted", limit_buy(amount="0.5"), db, "alice")
        assert await checks("alice", "0.5", "ETH/BTC") == {  # symbol: 2; not a USD quote
            "max_value": ("30000", None)}
        assert (await checks("alice", "2.1", "ETH/BTC"))["max_quantity"] == ("2", "2.1")
    finally:
        await router.aclose()


def test_controls_are_registered_by_the_built_in_risk_plugin() -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    (info,) = [i for i in registry.plugin_infos() if i.provenance.plugin == "risk"]
    assert set(CHECK) <= set(info.risk_checks)
    assert all(isinstance(c, RiskCheck) for c in CONTROLS)
