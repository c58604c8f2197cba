"""Fixtures: a fake Coinbase Advanced Trade server on 127.0.0.1 and a connector pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from bagbot_coinbase.connector import CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, connector_for, start_fake_coinbase


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
