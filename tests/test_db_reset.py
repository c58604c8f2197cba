"""Async SQLite engines: a connection returned to the pool is rolled back only when it is
inside a transaction (an open one would keep SQLite's write lock); one whose transaction
ended costs no rollback, which on aiosqlite is a round trip to its thread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite.core
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession

from bagbot_core.db import dispose_engines, get_async_engine


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/bagbot.db"
    dispose_engines()


@pytest.fixture
def rollbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = aiosqlite.core.Connection.rollback

    async def counted(self: Any) -> None:
        seen.append(1)
        await real(self)

    monkeypatch.setattr(aiosqlite.core.Connection, "rollback", counted)
    return seen


async def _warm(url: str, rollbacks: list[int]) -> Any:
    """The engine, its one pooled connection made (SQLAlchemy's first-connect set-up rolls
    back once), and the count started afresh."""
    engine = get_async_engine(url)
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT 1"))
        await session.commit()
    rollbacks.clear()
    return engine


def test_a_connection_returned_inside_a_transaction_is_rolled_back(
        url: str, rollbacks: list[int]) -> None:
    """The pool's reset is the last guard: here a pooled DBAPI connection goes back with
    its transaction open (no Session or Connection around it to end it)."""
    from sqlalchemy.util import greenlet_spawn

    async def scenario() -> None:
        engine = await _warm(url, rollbacks)
        try:
            def leave_open() -> None:
                pooled = engine.sync_engine.pool.connect()
                cursor = pooled.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(
                    "INSERT INTO trading_states (user_id, connector, state, reason, who,"
                    " changed_at) VALUES ('u', '', 'halted', 'left open', 'test', '2026-01-01')")
                cursor.close()
                pooled.close()  # back to the pool, inside the transaction

            await greenlet_spawn(leave_open)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert rollbacks == [1]
    # The write lock is free and the insert is gone.
    other = create_engine(url, connect_args={"timeout": 0.5})
    try:
        with other.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM trading_states")).scalar_one() == 0
            conn.execute(text(
                "INSERT INTO trading_states (user_id, connector, state, reason, who, changed_at)"
                " VALUES ('u', '', 'active', 'after', 'test', '2026-01-01')"))
    finally:
        other.dispose()


def test_an_ended_transaction_costs_no_rollback(url: str, rollbacks: list[int]) -> None:
    async def scenario() -> None:
        engine = await _warm(url, rollbacks)
        try:
            for _ in range(3):
                async with AsyncSession(engine) as session:
                    await session.execute(text("SELECT count(*) FROM orders"))
                    await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert rollbacks == []
