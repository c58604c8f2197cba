"""The reference quote: one bookTicker request per symbol per ``quote_max_age``, even when
many orders ask at once."""

from __future__ import annotations

import asyncio

from bagbot_binance.testing import FakeBinanceServer, connector_for

from bagbot_core.errors import ExchangeUnavailableError

BOOK_TICKER = "/api/v3/ticker/bookTicker"


async def test_concurrent_callers_share_one_quote_request(
    binance_server: FakeBinanceServer,
) -> None:
    conn = connector_for(binance_server, quote_max_age=0.2)
    try:
        await conn.load_markets()
        binance_server.reset_log()
        quotes = await asyncio.gather(*(conn.fetch_quote("BTC/USDT") for _ in range(50)))
        assert len(binance_server.requests_to(BOOK_TICKER)) == 1
        assert {q.ask for q in quotes} == {quotes[0].ask}

        await asyncio.sleep(0.25)  # expired: the next burst refreshes it once
        await asyncio.gather(*(conn.fetch_quote("BTC/USDT") for _ in range(50)))
        assert len(binance_server.requests_to(BOOK_TICKER)) == 2
    finally:
        await conn.close()


async def test_a_failed_shared_request_fails_every_waiter_and_the_next_call_retries(
    binance_server: FakeBinanceServer,
) -> None:
    conn = connector_for(binance_server, quote_max_age=0.2)
    try:
        await conn.load_markets()
        binance_server.reset_log()
        binance_server.fail_with("timeout", path=BOOK_TICKER, times=1)
        results = await asyncio.gather(*(conn.fetch_quote("BTC/USDT") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, ExchangeUnavailableError) for r in results)
        assert len(binance_server.requests_to(BOOK_TICKER)) == 1
        assert (await conn.fetch_quote("BTC/USDT")).ask is not None
        assert len(binance_server.requests_to(BOOK_TICKER)) == 2
    finally:
        await conn.close()
