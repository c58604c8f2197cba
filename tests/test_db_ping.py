"""Pooled PostgreSQL connections: pinged before use only after being idle.

A connection the server dropped while it sat in the pool is replaced before a transaction
starts on it; a connection in steady use is not pinged (one round trip saved per
transaction, two per routed order).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bagbot_core import db as bagbot_db
from bagbot_core.db import dispose_engines, get_async_engine, get_engine

pytestmark = pytest.mark.postgres


@pytest.fixture
def pings(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ping the engine's dialect sends (the real ping runs)."""
    seen: list[float] = []
    dialect = type(get_engine(postgres_url).dialect)
    real = dialect.do_ping

    def counted(self: Any, dbapi_connection: Any) -> bool:
        seen.append(time.monotonic())
        return bool(real(self, dbapi_connection))

    monkeypatch.setattr(dialect, "do_ping", counted)
    return seen


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    killer = create_engine(bagbot_db.sync_url(url), isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            assert conn.execute(text(f"SELECT pg_terminate_backend({pid})")).scalar_one()
    finally:
        killer.dispose()


def test_a_busy_connection_is_not_pinged(postgres_url: str, pings: list[float]) -> None:
    engine = get_engine(postgres_url)
    _backend_pid(engine)  # in use just now
    before = len(pings)
    for _ in range(5):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert len(pings) == before


def test_an_idle_connection_is_pinged_and_a_dropped_one_replaced(
    postgres_url: str, pings: list[float], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bagbot_db, "PING_BYPASS_SECONDS", 0.05)
    engine = get_engine(postgres_url)
    pid = _backend_pid(engine)
    _terminate(postgres_url, pid)  # the server drops the pooled connection
    time.sleep(0.1)
    before = len(pings)
    # The first transaction after the idle spell works, on a new connection.
    assert _backend_pid(engine) != pid
    assert len(pings) > before


def test_a_drop_inside_the_bypass_window_fails_the_statement_then_heals(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trade-off, stated: a connection dropped within the window fails its next
    statement (an ordinary database error, as a drop mid-transaction would), and the pool
    replaces it for the one after."""
    monkeypatch.setattr(bagbot_db, "PING_BYPASS_SECONDS", 60.0)
    engine = get_engine(postgres_url)
    pid = _backend_pid(engine)
    _terminate(postgres_url, pid)
    with pytest.raises(OperationalError), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert _backend_pid(engine) != pid


def test_the_async_engine_replaces_a_dropped_idle_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bagbot_db, "PING_BYPASS_SECONDS", 0.05)

    async def scenario() -> None:
        engine = get_async_engine(postgres_url, create_tables=False)
        try:
            async with engine.connect() as conn:
                pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            _terminate(postgres_url, pid)
            await asyncio.sleep(0.1)
            async with engine.connect() as conn:
                again = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            assert again != pid
        finally:
            await engine.dispose()

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def _routing(url: str, is_async: bool, user: str) -> AsyncIterator[Any]:
    """A router over fresh engines whose every connection is recorded, so that ``drop()``
    terminates exactly those (the engines are disposed of afterwards: no dropped
    connection stays pooled for the next test). ``route()`` routes one market buy."""
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskLimits
    from bagbot_core.router import Router
    from tests.scripted import ScriptedExchange, scripted_plugin

    exchange = ScriptedExchange()
    router = Router(PluginRegistry(load_entrypoints=False, disabled=(),
                                   plugins=[("scripted", scripted_plugin(exchange))]),
                    limits=RiskLimits(), allow_live=False)
    pids: set[int] = set()

    def opened(dbapi_conn: Any, _record: Any) -> None:
        pids.add(int(getattr(dbapi_conn, "driver_connection", dbapi_conn).info.backend_pid))

    def drop() -> None:
        assert pids, "no connection to drop"
        for pid in list(pids):  # the killer's own connection is recorded as it opens
            _terminate(url, pid)

    market = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}
    dispose_engines()
    event.listen(Engine, "connect", opened)
    sync_engine = get_engine(url)
    async_engine = get_async_engine(url, create_tables=False) if is_async else None

    async def route() -> Any:
        if async_engine is not None:
            async with AsyncSession(async_engine) as session:
                return await router.route_order("scripted", market, session, user)
        with Session(sync_engine) as session:
            return await router.route_order("scripted", market, session, user)

    def stored(order_id: int) -> Any:
        from bagbot_core import store
        from bagbot_core.db import session_factory

        sync_engine.dispose()  # its pooled connections were dropped too
        with session_factory(sync_engine)() as fresh:
            return store.get_order(fresh, order_id)

    try:
        yield SimpleNamespace(exchange=exchange, route=route, drop=drop, stored=stored,
                              engine=sync_engine)
    finally:
        event.remove(Engine, "connect", opened)
        await router.aclose()
        if async_engine is not None:
            await async_engine.dispose()
        dispose_engines()


@pytest.mark.parametrize("is_async", [False, True])
async def test_an_answer_survives_a_connection_dropped_after_the_send(
        postgres_url: str, is_async: bool) -> None:
    """The database drops the router's connections while the exchange takes the order;
    the answer's transaction starts on one of them (in use a moment ago: no ping), fails,
    and is written once more on a new one: the row is ``filled``, not left ``pending``."""
    async with _routing(postgres_url, is_async, f"answer-{is_async}") as routing:
        routing.exchange.after_accept = routing.drop
        order = await routing.route()
        assert order.status == "filled"
        assert routing.exchange.create_calls == 1
        assert routing.stored(order.id).status == "filled"


@pytest.mark.parametrize("is_async", [False, True])
async def test_an_order_survives_connections_dropped_before_it(
        postgres_url: str, is_async: bool) -> None:
    """The database drops the router's pooled connections between two orders (less than
    half a second apart: no ping); the second order's first statement fails on a dead
    connection and its atomic step begins again on a new one: routed, one row each."""
    from sqlalchemy import func, select

    from bagbot_core.models import Order

    user = f"before-{is_async}"  # the schema is shared by the tests
    async with _routing(postgres_url, is_async, user) as routing:
        first = await routing.route()
        routing.drop()
        second = await routing.route()
        assert (first.status, second.status) == ("filled", "filled")
        assert routing.exchange.create_calls == 2
        assert routing.stored(second.id).status == "filled"
        with Session(routing.engine) as fresh:
            count = fresh.scalar(select(func.count()).select_from(Order)
                                 .where(Order.user_id == user))
        assert count == 2
