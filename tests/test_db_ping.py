"""Pooled PostgreSQL connections: pinged before use only after being idle.

A connection the server dropped while it sat in the pool is replaced before a transaction
starts on it; a connection in steady use is not pinged (one round trip saved per
transaction, two per routed order).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from bagbot_core import db as bagbot_db
from bagbot_core.db import get_async_engine, get_engine

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
