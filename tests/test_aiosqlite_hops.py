"""Async SQLite statements: one hand-off to aiosqlite's thread each, same results and
errors as SQLAlchemy's own adapter (both run here, side by side)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bagbot_core import aiosqlite_hops
from bagbot_core.db import dispose_engines, get_async_engine

SETUP = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, value TEXT)"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/bagbot.db"
    dispose_engines()


class _CountingQueue:
    """Stands in for an aiosqlite connection's call queue: counts, then forwards."""

    def __init__(self, queue: Any) -> None:
        self.queue, self.calls = queue, 0

    def put_nowait(self, item: Any) -> None:
        self.calls += 1
        self.queue.put_nowait(item)

    def __getattr__(self, name: str) -> Any:  # get(): older aiosqlite reads through it
        return getattr(self.queue, name)


def _engines(url: str) -> list[tuple[str, AsyncEngine]]:
    stock = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
    return [("one-hop", get_async_engine(url, create_tables=False)), ("stock", stock)]


async def _statements(engine: AsyncEngine) -> list[Any]:
    """A little of everything SQLAlchemy asks of a cursor; what each gave."""
    seen: list[Any] = []
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS t"))
        await conn.execute(text(SETUP))
        result = await conn.execute(text("INSERT INTO t (name, value) VALUES ('a', '1.10')"))
        seen.append(("insert", result.rowcount, result.lastrowid))
        result = await conn.execute(text("INSERT INTO t (name, value) VALUES (:n, :v)"),
                                    [{"n": "b", "v": "2"}, {"n": "c", "v": "3"}])
        seen.append(("executemany", result.rowcount))
        result = await conn.execute(text(
            "UPDATE t SET value = value || '0' WHERE name != 'a' RETURNING name, value"))
        seen.append(("returning", sorted(result.all())))
        result = await conn.execute(text("UPDATE t SET value = 'x' WHERE name = 'none'"))
        seen.append(("no rows", result.rowcount))
        rows = await conn.execute(text("SELECT name, value FROM t ORDER BY id"))
        seen.append(("fetchone", rows.fetchone(), "fetchmany", rows.fetchmany(1),
                     "fetchall", rows.fetchall()))
        streamed = await conn.stream(text("SELECT name FROM t ORDER BY id"))
        seen.append(("stream", [row async for row in streamed]))
    for statement, error in (("INSERT INTO t (name) VALUES ('a')", IntegrityError),
                             ("SELEKT 1", OperationalError)):
        with pytest.raises(error) as caught:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        seen.append((error.__name__, type(caught.value.orig).__name__))
    async with engine.connect() as conn:  # the failed transactions left nothing behind
        seen.append(("count", (await conn.execute(text("SELECT count(*) FROM t"))).scalar()))
    return seen


def test_the_one_hop_cursor_answers_as_the_stock_adapter(url: str) -> None:
    if aiosqlite_hops.dbapi() is None:
        pytest.fail("this SQLAlchemy/aiosqlite pair lacks what OneHopCursor builds on")

    async def both() -> dict[str, list[Any]]:
        answers = {}
        for name, engine in _engines(url):
            try:
                answers[name] = await _statements(engine)
            finally:
                await engine.dispose()
        return answers

    answers = asyncio.run(both())
    assert answers["one-hop"] == answers["stock"]
    assert ("returning", [("b", "20"), ("c", "30")]) in answers["one-hop"]


def test_a_statement_is_one_call_on_the_connection_thread(url: str) -> None:
    async def scenario() -> list[int]:
        engine = get_async_engine(url, create_tables=False)
        calls = []
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                assert isinstance(raw.dbapi_connection.cursor(), aiosqlite_hops.OneHopCursor)
                driver = raw.driver_connection
                counting = _CountingQueue(driver._tx)
                driver._tx = counting
                try:
                    for statement in ("SELECT 1", "CREATE TABLE t (id INTEGER)",
                                      "INSERT INTO t VALUES (1)", "SELECT id FROM t"):
                        before = counting.calls
                        await conn.execute(text(statement))
                        calls.append(counting.calls - before)
                finally:
                    driver._tx = counting.queue
                await conn.rollback()
        finally:
            await engine.dispose()
        return calls

    # The first statement also begins the transaction (BEGIN IMMEDIATE: one call more).
    assert asyncio.run(scenario()) == [2, 1, 1, 1]


def test_a_closed_connection_raises_at_once(url: str) -> None:
    """A statement on a connection whose thread has stopped fails; it never waits for an
    answer that cannot come."""
    async def scenario() -> None:
        engine = get_async_engine(url, create_tables=False)
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await raw.driver_connection.close()
                with pytest.raises(Exception, match=r"[Cc]losed|no active connection"):
                    await asyncio.wait_for(conn.execute(text("SELECT 1")), 5)
                await conn.invalidate()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
