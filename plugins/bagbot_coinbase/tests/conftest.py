"""Fixtures: a fake Coinbase Advanced Trade server on 127.0.0.1, a connector and routers
pointed at it, and a SQLite database for the routers' rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import bagbot_coinbase.plugin
import pytest
from bagbot_coinbase.connector import CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, connector_for, start_fake_coinbase
from sqlalchemy.orm import Session

from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.router import Router
from bagbot_core.testing.fake_exchange import routers_for


@pytest.fixture(autouse=True)
def _no_coinbase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real credentials or URL from the environment."""
    for name in ("BAGBOT_COINBASE_API_KEY", "BAGBOT_COINBASE_API_SECRET",
                 "BAGBOT_COINBASE_API_URL", "BAGBOT_ALLOW_LIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def coinbase_server() -> AsyncIterator[FakeCoinbaseServer]:
    """The fake server: ``.url``, ``.api_key``/``.api_secret`` (a throwaway CDP key),
    ``.book``, ``.requests`` and fault injection (``fail_with``, ``drop_after_accept``, ...)."""
    async with start_fake_coinbase() as server:
        yield server


@pytest.fixture
async def connector(coinbase_server: FakeCoinbaseServer) -> AsyncIterator[CoinbaseConnector]:
    """A testnet connector on the fake server (``api_url``), rate limiter off, 2 s timeout."""
    conn = connector_for(coinbase_server, timeout=2)
    yield conn
    await conn.close()


@pytest.fixture
async def loaded(
    connector: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> CoinbaseConnector:
    """``connector`` with markets loaded and the server's request log cleared."""
    await connector.load_markets()
    coinbase_server.reset_log()
    return connector


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Session]:
    """A session on a SQLite file of the test's own."""
    session = session_factory(get_engine(f"sqlite:///{tmp_path / 'orders.db'}"))()
    yield session
    session.close()
    dispose_engines()


@pytest.fixture
async def make_router(coinbase_server: FakeCoinbaseServer) -> AsyncIterator[Callable[..., Router]]:
    """``make_router(*, registry=None, allow_live=False, **config)``: a router on the fake
    server, 2 s timeout, the coinbase plugin alone (:func:`routers_for`); closed after the test."""
    async with routers_for(coinbase_server, "coinbase", bagbot_coinbase.plugin, timeout=2) as make:
        yield make


@pytest.fixture
async def router(make_router: Callable[..., Router]) -> Router:
    """``make_router()``: the fake server's settings, the coinbase plugin alone."""
    return make_router()
