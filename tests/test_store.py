"""Query and update: lookups, filtered listing, the state machine on rows, sync, cancel."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from bagbot_core import store
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    IllegalTransitionError,
    OrderNotFoundError,
)
from bagbot_core.models import Order
from bagbot_core.money import normalize
from bagbot_core.router import Router, new_client_order_id
from bagbot_core.status import OrderStatus
from tests.scripted import ScriptedExchange, fill

LIMIT = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "1", "price": "40000"}


def make(db: Session, **overrides: object) -> Order:
    fields: dict[str, object] = {
        "user_id": "u1", "connector": "scripted", "symbol": "BTC/USDT", "side": "buy",
        "order_type": "limit", "qty": Decimal("1"), "price": Decimal("100"),
        "status": "open", "client_order_id": new_client_order_id(), "testnet": True,
    }
    fields.update(overrides)
    return store.insert_order(db, **fields)


def test_get_by_id(db: Session) -> None:
    order = make(db)
    assert store.get_order(db, order.id).client_order_id == order.client_order_id
    with pytest.raises(OrderNotFoundError):
        store.get_order(db, 999_999)


def test_get_by_client_order_id(db: Session) -> None:
    order = make(db, client_order_id="abc-1")
    assert store.get_by_client_order_id(db, "abc-1") is order
    assert store.get_by_client_order_id(db, "nope") is None


def test_get_by_connector_and_external_id(db: Session) -> None:
    order = make(db, external_id="777")
    make(db, external_id="777", connector="other")
    assert store.get_by_external_id(db, "scripted", "777") is order
    assert store.get_by_external_id(db, "scripted", "778") is None


def test_client_order_id_is_unique(db: Session) -> None:
    make(db, client_order_id="dup")
    with pytest.raises(store.ClientOrderIdTaken):
        make(db, client_order_id="dup")


def test_list_filters_newest_first(db: Session) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(6):
        make(db, user_id="a" if i % 2 else "b", symbol="ETH/USDT" if i < 3 else "BTC/USDT",
             status="filled" if i % 3 == 0 else "open", created_at=base + dt.timedelta(hours=i))
    rows = store.list_orders(db)
    assert [r.created_at for r in rows] == sorted((r.created_at for r in rows), reverse=True)
    assert {r.user_id for r in store.list_orders(db, user_id="a")} == {"a"}
    assert {r.symbol for r in store.list_orders(db, symbol="eth/usdt")} == {"ETH/USDT"}
    assert {r.status for r in store.list_orders(db, status="filled")} == {"filled"}
    assert len(store.list_orders(db, status=["filled", "open"])) == 6
    window = store.list_orders(db, since=base + dt.timedelta(hours=2),
                               until=base + dt.timedelta(hours=4))
    assert [r.created_at.hour for r in window] == [3, 2]


def test_list_paginates(db: Session) -> None:
    for _ in range(7):
        make(db)
    pages = [store.list_orders(db, limit=3, offset=o) for o in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    ids = [r.id for page in pages for r in page]
    assert len(set(ids)) == 7 and ids == sorted(ids, reverse=True)


def test_status_update_goes_through_the_state_machine(db: Session) -> None:
    order = make(db, status="open")
    assert store.set_status(db, order, OrderStatus.CANCELED) == OrderStatus.OPEN
    with pytest.raises(IllegalTransitionError):
        store.set_status(db, order, OrderStatus.OPEN)
    db.expire_all()
    assert store.get_order(db, order.id).status == "canceled"


def test_timestamps_are_utc_and_updated(db: Session) -> None:
    order = make(db, status="pending")
    created = order.created_at
    store.set_status(db, order, OrderStatus.OPEN)
    db.expire_all()
    again = store.get_order(db, order.id)
    assert again.created_at == created and again.created_at.utcoffset() == dt.timedelta(0)
    assert again.updated_at >= created


async def test_sync_order_records_fills(router: Router, db: Session,
                                        exchange: ScriptedExchange) -> None:
    order = await router.route_order("scripted", LIMIT, db, "u")
    fill(exchange, order.client_order_id, qty=Decimal("0.4"), price=Decimal("40000"))
    synced = await router.sync_order(db, order.id)
    assert synced.status == "partially_filled" and synced.filled_qty == Decimal("0.4")
    fill(exchange, order.client_order_id)
    synced = await router.sync_order(db, order)
    assert synced.status == "filled" and synced.filled_qty == Decimal("1")


async def test_cancel_order(router: Router, db: Session) -> None:
    order = await router.route_order("scripted", LIMIT, db, "u")
    canceled = await router.cancel_order(db, order.id)
    assert canceled.status == "canceled"
    with pytest.raises(ExchangeRejectedError, match="nothing to cancel"):
        await router.cancel_order(db, order.id)


async def test_sync_of_an_order_the_exchange_does_not_know(router: Router,
                                                           db: Session) -> None:
    order = make(db, status="open", external_id="nope")
    with pytest.raises(ExchangeOrderNotFoundError):
        await router.sync_order(db, order.id)
    assert store.get_order(db, order.id).status == "open"


async def test_status_changes_reach_the_notification_hook(router: Router, db: Session,
                                                          exchange: ScriptedExchange) -> None:
    from bagbot_core import hookimpl

    seen: list[tuple[str, str]] = []

    class Alerts:
        @hookimpl
        def bagbot_order_status_changed(self, order: object, old: OrderStatus,
                                        new: OrderStatus) -> None:
            seen.append((old.value, new.value))

    router.registry.register(Alerts(), "alerts")
    order = await router.route_order("scripted", LIMIT, db, "u")
    fill(exchange, order.client_order_id)
    await router.sync_order(db, order)
    assert seen == [("pending", "open"), ("open", "filled")]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(value=st.decimals(min_value=Decimal("1e-18"), max_value=Decimal("99999999999999999999"),
                         places=18, allow_nan=False, allow_infinity=False))
def test_decimals_round_trip_exactly_through_the_database(db_url: str, value: Decimal) -> None:
    factory = session_factory(get_engine(db_url))
    with factory() as session:
        order = make(session, qty=value, price=value, filled_qty=value)
        order_id = order.id
    with factory() as session:
        row = session.get(Order, order_id)
        assert row is not None
        assert (row.qty, row.price, row.filled_qty) == (value, value, value)
        assert row.qty.as_tuple() == normalize(value).as_tuple()  # canonical, not just equal


def test_float_never_reaches_a_money_column(db: Session) -> None:
    with pytest.raises(Exception, match="Decimal"):
        make(db, qty=0.1)


def test_relaxed_commit_skips_the_flush_only_when_asked(db_url: str) -> None:
    """The answer commit may skip the disk flush; every other commit stays fully durable."""
    from sqlalchemy import event, text

    engine = get_engine(db_url)
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "synchronous" in statement and "=" in statement:
            seen.append(statement.strip())

    try:
        with session_factory(engine)() as session:
            order = make(session, status="pending")
            order.status = "open"
            store.commit(session, durable=False)
            order.status = "filled"
            store.commit(session)
            if engine.dialect.name == "postgresql":
                assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"
            else:  # 2 = FULL, in the next transaction on the same connection
                assert session.execute(text("PRAGMA synchronous")).scalar() == 2
                session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    if engine.dialect.name == "sqlite":
        # A connection starts FULL; the level is sent only when it changes.
        assert seen == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"]
    else:
        assert seen == ["SET LOCAL synchronous_commit = off"]


@pytest.mark.parametrize("expire_on_commit", [True, False])
@pytest.mark.parametrize("payload", [LIMIT, {**LIMIT, "amount": "0.50", "price": "40000.10"}])
@pytest.mark.parametrize("connector", ["scripted", "paper"])
async def test_a_routed_row_is_never_read_back_and_equals_the_stored_row(
        router: Router, db_url: str, expire_on_commit: bool, payload: dict[str, str],
        connector: str) -> None:
    """The pending row and the exchange's answer are written without a reload of the row the
    router holds, whatever the caller's session expires on commit, and the returned object
    equals what a fresh session reads."""
    from sqlalchemy import event, inspect

    engine = get_engine(db_url)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()).lower())

    with Session(engine, expire_on_commit=expire_on_commit) as db:
        event.listen(engine, "before_cursor_execute", seen)
        try:
            order = await router.route_order(connector, payload, db, "u")
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert not inspect(order).expired_attributes
        reads = [s for s in statements if s.startswith("select") and "from orders" in s]
        assert reads == [], reads
        with session_factory(engine)() as fresh:
            stored = store.get_order(fresh, order.id)
            for column in Order.__table__.columns:
                assert getattr(order, column.key) == getattr(stored, column.key), column.key
        assert str(order.qty) == str(stored.qty) and str(order.price) == str(stored.price)


@pytest.mark.parametrize("connector", ["scripted", "paper"])
async def test_an_async_caller_gets_the_row_without_a_refresh(router: Router, db_url: str,
                                                              connector: str) -> None:
    """``AsyncSession`` expires on commit by default: the row still comes back loaded, with
    no ``SELECT`` of it after the writes, and no transaction is left open (on SQLite an open
    one would hold the write lock)."""
    from sqlalchemy import event, inspect
    from sqlalchemy.ext.asyncio import AsyncSession

    from bagbot_core.db import get_async_engine

    engine = get_async_engine(db_url)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()).lower())

    async with AsyncSession(engine) as db:
        event.listen(engine.sync_engine, "before_cursor_execute", seen)
        try:
            order = await router.route_order(connector, LIMIT, db, "u")
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", seen)
        assert not inspect(order).expired_attributes
        assert not db.in_transaction()
        assert [s for s in statements if s.startswith("select") and "from orders" in s] == []
        assert order.status in ("open", "filled") and order.qty == Decimal("1")


@pytest.mark.parametrize("behaviour", ["reject", "timeout_after_accept", "rest"])
async def test_an_async_caller_is_left_outside_any_transaction(
        router: Router, db_url: str, exchange: ScriptedExchange, behaviour: str) -> None:
    """Whatever the exchange answers, an ``AsyncSession`` that expires on commit gets its row
    loaded and no open transaction back (an open one would hold SQLite's write lock and
    stall every other writer), and a cancel through it works the same way."""
    from sqlalchemy import inspect
    from sqlalchemy.ext.asyncio import AsyncSession

    from bagbot_core.db import get_async_engine
    from bagbot_core.errors import BagbotError

    exchange.script(behaviour)
    async with AsyncSession(get_async_engine(db_url)) as db:
        if behaviour == "rest":
            order = await router.route_order("scripted", LIMIT, db, "u")
        else:
            with pytest.raises(BagbotError) as raised:
                await router.route_order("scripted", LIMIT, db, "u")
            assert raised.value.order is not None
            order = raised.value.order
        assert not inspect(order).expired_attributes and not db.in_transaction()
        assert order.status == {"reject": "rejected", "timeout_after_accept": "unknown",
                                "rest": "open"}[behaviour]
        if behaviour == "rest":
            canceled = await router.cancel_order(db, order)
            assert canceled.status == "canceled"
            assert not inspect(canceled).expired_attributes and not db.in_transaction()


@pytest.mark.parametrize("offset", [2**63 - 1, 2**63, 10**40])
def test_an_offset_past_any_row_is_an_empty_page(db: Session, offset: int) -> None:
    make(db)
    assert store.list_orders(db, offset=offset) == []
    assert not db.in_transaction()


@pytest.mark.postgres
@pytest.mark.parametrize("expire_on_commit", [True, False])
async def test_postgres_answer_is_one_statement_committed_relaxed(
        router: Router, postgres_url: str, expire_on_commit: bool) -> None:
    """On PostgreSQL the exchange's answer -- the row, its position, its notional bucket and
    the relaxed commit -- is one statement; the commit it ends skips the flush; the
    position and the bucket hold the fill."""
    from sqlalchemy import event, select, text

    from bagbot_core.models import NotionalBucket, Position

    engine = get_engine(postgres_url)
    user = new_client_order_id()  # a user of its own in the shared schema
    statements: list[list[str]] = []
    levels: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements[-1].append(" ".join(statement.split()).lower())

    def began(_conn: object) -> None:
        statements.append([])

    def committing(conn: Any) -> None:
        levels.append(conn.exec_driver_sql("SHOW synchronous_commit").scalar())

    market = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}
    with Session(engine, expire_on_commit=expire_on_commit) as db:
        for name, listener in (("before_cursor_execute", seen), ("begin", began),
                               ("commit", committing)):
            event.listen(engine, name, listener)
        try:
            order = await router.route_order("scripted", market, db, user)
        finally:
            for name, listener in (("before_cursor_execute", seen), ("begin", began),
                                   ("commit", committing)):
                event.remove(engine, name, listener)
        assert order.status == "filled"
        answer = statements[-1]
        assert len(answer) == 2, answer  # the statement, and SHOW (this test's own)
        assert answer[0].startswith("with ") and "set_config" in answer[0]
        assert "insert into positions" in answer[0]
        assert levels == ["on", "off"]  # the pending row's commit is durable, this one not
        with session_factory(engine)() as fresh:
            quantity = fresh.scalar(select(Position.quantity).where(Position.user_id == user))
            value = fresh.scalar(select(NotionalBucket.value)
                                 .where(NotionalBucket.user_id == user))
            assert quantity == order.filled_qty == Decimal("0.5")
            assert value == order.filled_qty * order.avg_price
            assert fresh.execute(text("SHOW synchronous_commit")).scalar() == "on"
