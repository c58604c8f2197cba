"""History.expect: the queries a routing transaction announces are fetched in one statement,
and every answer is the one its own query gives (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event
from sqlalchemy.orm import Session

from bagbot_core.history import ALL_USERS, History
from bagbot_core.models import Order, TradingStateRow
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk_config import RiskConfig
from bagbot_core.router import Router
from tests.scripted import ScriptedExchange, scripted_plugin
from tests.test_history import NOW, SINCE, insert, rows

DUPLICATE_SINCE = NOW - dt.timedelta(hours=1)


@pytest.fixture
def statements(db: Session) -> Iterator[list[str]]:
    """Every statement ``db``'s engine sends while the test runs."""
    sent: list[str] = []
    engine = db.get_bind()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def orders() -> st.SearchStrategy[OrderRequest]:
    price = st.sampled_from([None, Decimal("100"), Decimal("250.5")])
    return st.builds(
        lambda symbol, side, amount, price, key: OrderRequest(
            symbol, side, OrderType.MARKET if price is None else OrderType.LIMIT, amount,
            price, client_order_id=key),
        st.sampled_from(["BTC/USDT", "ETH/USDT"]), st.sampled_from(list(Side)),
        st.sampled_from([Decimal("0.5"), Decimal("1.25")]), price,
        st.sampled_from([None, "h0", "h1"]))


# (method, positional arguments, keyword arguments) a check may announce and then call.
QUERIES = st.lists(st.one_of(
    st.tuples(st.just("open_orders"), st.just(()), st.fixed_dictionaries({
        "symbol": st.sampled_from([None, "BTC/USDT"]),
        "connector": st.sampled_from([None, "c1"])})),
    st.tuples(st.just("orders_since"), st.just((SINCE,)), st.fixed_dictionaries({
        "connector": st.sampled_from([None, "c2"])})),
    st.tuples(st.just("notional_since"), st.just((SINCE,)), st.fixed_dictionaries({
        "connector": st.sampled_from([None, "c1"]),
        "user_id": st.sampled_from([None, ALL_USERS])})),
    st.tuples(st.just("position"), st.sampled_from([("BTC",), ("ETH",)]), st.just({})),
    st.tuples(st.just("live_quantity"), st.tuples(st.sampled_from(["BTC", "ETH"]),
                                                  st.sampled_from(list(Side))),
              st.fixed_dictionaries({"connector": st.sampled_from([None, "c1"])})),
    st.tuples(st.just("exposure"), st.tuples(st.sampled_from(["BTC", "ETH"]),
                                             st.sampled_from(list(Side))), st.just({})),
    st.tuples(st.just("find_duplicate"), st.tuples(st.just(DUPLICATE_SINCE), orders()),
              st.just({})),
    st.tuples(st.just("trading_state_rows"), st.sampled_from([("c1",), ("c2",)]),
              st.just({})),
), min_size=1, max_size=8)


def duplicate_rows(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that some announced duplicate query matches: several per order, ties in time."""
    made = []
    for i, price in enumerate([None, Decimal("100"), Decimal("250.5")]):
        for amount in (Decimal("0.5"), Decimal("1.25")):
            made.append({**specs[0], "user_id": "u", "connector": "c1", "testnet": True,
                         "symbol": "BTC/USDT", "side": "buy", "status": "filled",
                         "order_type": "market" if price is None else "limit",
                         "price": price, "qty": amount, "requested_qty": amount,
                         "filled_qty": amount, "avg_price": Decimal("100"),
                         "created_at": NOW - dt.timedelta(minutes=i)})
    return made


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(rows(), min_size=1, max_size=10), queries=QUERIES,
       states=st.lists(st.tuples(st.sampled_from(["", "u", "v"]),
                                 st.sampled_from(["", "c1", "c2"]),
                                 st.sampled_from(["active", "reducing", "halted"])),
                       unique_by=lambda s: s[:2], max_size=4),
       duplicates=st.booleans())
async def test_announced_queries_answer_as_their_own_in_one_statement(
    db: Session, statements: list[str], specs: list[dict[str, Any]],
    queries: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
    states: list[tuple[str, str, str]], duplicates: bool,
) -> None:
    insert(db, specs + (duplicate_rows(specs) if duplicates else []))
    db.execute(delete(TradingStateRow))
    for user_id, connector, state in states:
        db.add(TradingStateRow(user_id=user_id, connector=connector, state=state,
                               reason="test", who="ops", changed_at=NOW))
    db.commit()
    try:
        plain = History(db, "u", "c1", True)
        expected = [await getattr(plain, name)(*args, **kwargs)
                    for name, args, kwargs in queries]
        db.rollback()
        history = History(db, "u", "c1", True, now=NOW)
        for name, args, kwargs in queries:
            history.expect(name, *args, **kwargs)
        statements.clear()
        answers = [await getattr(history, name)(*args, **kwargs)
                   for name, args, kwargs in queries]
        assert answers == expected
        reads = [s for s in statements if "trading_states" in s or "FROM orders" in s
                 or "FROM positions" in s]
        # One statement for every announced query; on PostgreSQL each daily notional with
        # rare rows it cannot sum in SQL comes with a second one; a duplicate found loads
        # its whole row by primary key.
        assert reads and "orders.id = " not in reads[0]
        extra = [s for s in reads[1:] if "orders.id = " not in s]
        rests = sum(name == "notional_since" for name, *_ in queries)
        assert len(extra) <= (rests if db.get_bind().dialect.name == "postgresql" else 0)
    finally:
        db.rollback()


async def test_expect_names_only_queries_it_can_fetch(db: Session) -> None:
    history = History(db, "u", "c1", True, now=NOW)
    with pytest.raises(ValueError, match="run"):
        history.expect("run", lambda session: None)
    with pytest.raises(ValueError, match="_fact_open_orders"):
        history.expect("_fact_open_orders")


async def test_a_query_not_announced_runs_its_own(db: Session, statements: list[str]) -> None:
    insert(db, [])
    history = History(db, "u", "c1", True, now=NOW)
    history.expect("open_orders")
    history.expect("orders_since", SINCE)
    statements.clear()
    assert await history.position("BTC") == 0  # fetches the announced ones as well
    assert await history.open_orders() == 0
    assert await history.orders_since(SINCE) == 0
    assert await history.orders_since(SINCE, connector="c1") == 0  # not announced
    reads = [s for s in statements if s.startswith("SELECT")]
    assert len(reads) == 3 and "UNION ALL" in reads[0]
    db.rollback()


def every_control(**extra: Any) -> RiskConfig:
    return RiskConfig.load(environ={"XDG_CONFIG_HOME": "/nonexistent"}, overrides={
        "price_collar_pct": "50", "duplicate_window_seconds": "60", "order_rate": 1000,
        "max_open_orders": 1000, "daily_notional_usd": "1000000000",
        "max_position": {"BTC": "1000"}, **extra})


async def test_every_control_costs_no_round_trip_beyond_the_trading_state(
    db: Session, statements: list[str]
) -> None:
    """Routed with every stateful control on, an order sends as many statements as with
    none: the controls' reads travel with the trading state's."""
    counts = []
    for prices, config in ((("50000", "50001"),
                            RiskConfig.load(environ={"XDG_CONFIG_HOME": "/nonexistent"})),
                           (("50002", "50003"), every_control())):
        registry = PluginRegistry(disabled=(), load_entrypoints=False,
                                  plugins=[("scripted", scripted_plugin(ScriptedExchange()))])
        router = Router(registry, allow_live=False, risk_config=config)
        try:
            for price in prices:  # the second sees the first (no fast path)
                statements.clear()
                await router.route_order("scripted", {
                    "symbol": "BTC/USDT", "side": "buy", "type": "limit",
                    "amount": "0.001", "price": price}, db, "alice")
                counts.append(len(statements))
                # (SQLite's read-modify-write of the order's notional bucket is the write's,
                # not a control's: it runs with every control off too.)
                reads = [s for s in statements
                         if s.startswith("SELECT") and "pg_advisory_xact_lock" not in s
                         and not s.startswith("SELECT notional_buckets.value")]
                assert len(reads) == 1, reads
        finally:
            await router.aclose()
    assert counts[3] == counts[1]  # the first order of all also set up the connection


async def test_announced_queries_on_an_async_session(db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine, get_engine
    from tests.test_history import row

    with Session(get_engine(db_url)) as db:
        insert(db, [row(), row(status="filled", filled_qty=Decimal("0.5"),
                               avg_price=Decimal("100"))])
        db.execute(delete(TradingStateRow))
        db.add(TradingStateRow(user_id="u", connector="", state="reducing", reason="test",
                               who="ops", changed_at=NOW))
        db.commit()
    engine = get_async_engine(db_url)
    try:
        async with async_sessionmaker(engine)() as session:
            history = History(session, "u", "c1", True, now=NOW)
            history.expect("open_orders")
            history.expect("notional_since", SINCE)
            history.expect("exposure", "BTC", Side.BUY)
            history.expect("trading_state_rows", "c1")
            (state,) = await history.trading_state_rows("c1")
            assert (state.user_id, state.connector, state.state) == ("u", "", "reducing")
            assert state.changed_at == NOW
            assert await history.open_orders() == 1
            assert await history.notional_since(SINCE) == Decimal(100)
            assert await history.exposure("BTC", Side.BUY) == (Decimal("0.5"), Decimal("0.5"))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("is_async", [False, True])
async def test_answers_are_kept_per_transaction(db_url: str, is_async: bool) -> None:
    """Within one transaction a repeated query is answered from what was read, without a
    statement; once the transaction ends, the next one reads afresh (rows committed in
    between count)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine, get_engine
    from tests.test_history import row

    sync_engine = get_engine(db_url)
    with Session(sync_engine) as db:
        insert(db, [row()])
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    engine = get_async_engine(db_url) if is_async else sync_engine
    target = engine.sync_engine if is_async else engine
    event.listen(target, "before_cursor_execute", record)
    try:
        session: Any = (async_sessionmaker(engine)() if is_async  # type: ignore[arg-type]
                        else Session(engine))
        history = History(session, "u", "c1", True, now=NOW)
        assert await history.open_orders() == 1
        reads = len(sent)
        assert await history.open_orders() == 1  # the same transaction: no statement
        assert len(sent) == reads
        await session.commit() if is_async else session.commit()
        with Session(sync_engine) as other:  # another writer, between the transactions
            other.add(Order(client_order_id="between", updated_at=NOW, **row()))
            other.commit()
        assert await history.open_orders() == 2  # a new transaction reads again
        assert len(sent) > reads
        await session.close() if is_async else session.close()
    finally:
        event.remove(target, "before_cursor_execute", record)
        if is_async:
            await engine.dispose()  # type: ignore[union-attr]
