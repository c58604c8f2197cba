"""Fixtures: a fake Binance spot server on 127.0.0.1 and a connector pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from bagbot_binance.connector import BinanceConnector
from bagbot_binance.testing import FakeBinanceServer, connector_for, start_fake_binance


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
