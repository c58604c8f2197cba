"""Fixtures: a fake Binance spot server on 127.0.0.1, a connector and routers pointed at it,
and a SQLite database for the routers' rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import bagbot_binance.plugin
import pytest
from bagbot_binance.connector import BinanceConnector
from bagbot_binance.testing import FakeBinanceServer, connector_for, start_fake_binance
from sqlalchemy.orm import Session

from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.router import Router
from bagbot_core.testing.fake_exchange import routers_for


@pytest.fixture(autouse=True)
def _no_binance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real credentials or URL from the environment."""
    for name in ("BAGBOT_BINANCE_API_KEY", "BAGBOT_BINANCE_API_SECRET", "BAGBOT_BINANCE_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def binance_server() -> AsyncIterator[FakeBinanceServer]:
    """The fake server: ``.url``, ``.api_key``/``.api_secret``, ``.book``, ``.requests`` and
    fault injection (``fail_with``, ``drop_after_accept``, ``rate_limit``, ...)."""
    async with start_fake_binance() as server:
        yield server


@pytest.fixture
async def connector(binance_server: FakeBinanceServer) -> AsyncIterator[BinanceConnector]:
    """A testnet connector on the fake server, ccxt's rate limiter off, 2 s timeout."""
    conn = connector_for(binance_server, timeout=2)
    yield conn
    await conn.close()


@pytest.fixture
async def loaded(
    connector: BinanceConnector, binance_server: FakeBinanceServer
) -> BinanceConnector:
    """``connector`` with markets loaded and the server's request log cleared."""
    await connector.load_markets()
    binance_server.reset_log()
    return connector


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Session]:
    """A session on a SQLite file of the test's own."""
    session = session_factory(get_engine(f"sqlite:///{tmp_path / 'orders.db'}"))()
    yield session
    session.close()
    dispose_engines()


@pytest.fixture
async def make_router(binance_server: FakeBinanceServer) -> AsyncIterator[Callable[..., Router]]:
    """``make_router(*, registry=None, allow_live=False, **config)``: a router on the fake
    server, 2 s timeout, the binance plugin alone (:func:`routers_for`); closed after the test."""
    async with routers_for(binance_server, "binance", bagbot_binance.plugin, timeout=2) as make:
        yield make


@pytest.fixture
async def router(make_router: Callable[..., Router]) -> Router:
    """``make_router()``: the fake server's settings, the binance plugin alone."""
    return make_router()
