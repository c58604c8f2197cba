"""The in-process gate to SQLite's write lock: many orders on one event loop take it in
turn, every one completes with its one row, and a gate nobody gives back never hangs."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bagbot_core import write_gate
from bagbot_core.db import get_async_engine, get_engine, session_factory
from bagbot_core.models import Order
from bagbot_core.router import Router
from tests.scripted import ScriptedExchange

LIMIT = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "1", "price": "40000"}


def rows(url: str) -> int:
    with session_factory(get_engine(url))() as db:
        return int(db.scalar(select(func.count()).select_from(Order)) or 0)


async def test_fifty_orders_on_one_loop_each_leave_one_row_and_a_free_gate(
        router: Router, sqlite_url: str, exchange: ScriptedExchange) -> None:
    engine = get_async_engine(sqlite_url)

    async def one(i: int) -> str:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            order = await router.route_order("scripted", {**LIMIT, "amount": f"1.{i:03d}"}, db,
                                             f"user-{i % 7}")
            assert not db.in_transaction()
            return order.status

    statuses = await asyncio.gather(*(one(i) for i in range(50)))
    assert statuses == ["open"] * 50
    assert rows(sqlite_url) == 50 and exchange.create_calls == 50
    gate = write_gate.gate_for(sqlite_url)
    assert gate is not None and not gate.locked()


async def test_a_transaction_begins_only_once_it_holds_the_gate(
        router: Router, sqlite_url: str, exchange: ScriptedExchange) -> None:
    """While another holder has the gate, the order starts no transaction (so it does not
    sleep in SQLite's busy handler); it goes on as soon as the gate is given back."""
    engine = get_async_engine(sqlite_url)
    began: list[float] = []
    event.listen(engine.sync_engine, "begin", lambda _conn: began.append(time.monotonic()),
                 insert=True)
    gate = write_gate.gate_for(sqlite_url)
    assert gate is not None
    await gate.acquire()
    async with AsyncSession(engine) as db:
        routing = asyncio.create_task(router.route_order("scripted", LIMIT, db, "u"))
        await asyncio.sleep(0.3)
        assert began == [] and not routing.done()
        released = time.monotonic()
        gate.release()
        order = await routing
    assert order.status == "open" and began and began[0] >= released
    assert exchange.create_calls == 1 and not gate.locked()


async def test_a_gate_nobody_gives_back_costs_the_busy_timeout_not_a_hang(
        router: Router, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_SQLITE_BUSY_TIMEOUT_MS", "300")
    gate = write_gate.gate_for(sqlite_url)
    assert gate is not None
    await gate.acquire()  # held by something that never ends its transaction
    try:
        async with AsyncSession(get_async_engine(sqlite_url)) as db:
            started = time.monotonic()
            order = await router.route_order("scripted", LIMIT, db, "u")
            waited = time.monotonic() - started
        assert order.status == "open" and rows(sqlite_url) == 1
        assert waited >= 0.3  # it waited for the gate, then went on without it
    finally:
        gate.release()


def test_only_sqlite_files_have_a_gate(sqlite_url: str, postgres_url: str) -> None:
    async def gates() -> list[bool]:
        return [write_gate.gate_for(url) is not None
                for url in (sqlite_url, "sqlite://", "sqlite:///:memory:", postgres_url, None)]

    assert asyncio.run(gates()) == [True, False, False, False, False]
