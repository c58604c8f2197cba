"""Error classes, faults after acceptance, Retry-After and secrets -- all over the wire."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from decimal import Decimal

import pytest
from bagbot_binance.connector import BinanceConnector
from bagbot_binance.testing import FakeBinanceServer, connector_for

from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    RateLimitedError,
)
from bagbot_core.orders import OrderRequest, OrderType, Side

D = Decimal
ORDER_PATH = "/api/v3/order"


def market_buy(amount: str, symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(symbol, Side.BUY, OrderType.MARKET, D(amount))


def limit_buy(amount: str = "0.01", price: str = "40000") -> OrderRequest:
    return OrderRequest("BTC/USDT", Side.BUY, OrderType.LIMIT, D(amount), D(price))


def posts(server: FakeBinanceServer) -> int:
    return len(server.requests_to(ORDER_PATH, "POST"))


# -- definite rejections ---------------------------------------------------------------


async def test_insufficient_balance_is_rejected_with_binance_message(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    with pytest.raises(ExchangeRejectedError) as info:
        await loaded.create_order(market_buy("10"), "bb-poor")  # 500000 USDT > 100000
    assert not isinstance(info.value, ExchangeUnavailableError)
    assert "Account has insufficient balance for requested action." in str(info.value)
    assert "InsufficientFunds" in str(info.value)
    assert binance_server.book.orders == {}
    assert posts(binance_server) == 1


async def test_lot_size_failure_is_rejected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    # The exchange tightened its step after we loaded markets: ccxt's rounding passes,
    # Binance's LOT_SIZE filter does not.
    binance_server.book.markets["BTCUSDT"].amount_step = D("0.001")
    with pytest.raises(ExchangeRejectedError, match="Filter failure: LOT_SIZE"):
        await loaded.create_order(market_buy("0.12345"), "bb-lot")
    assert binance_server.book.orders == {}


async def test_notional_failure_arrives_as_bad_request_and_is_rejected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    with pytest.raises(ExchangeRejectedError, match=r"BadRequest.*Filter failure: NOTIONAL"):
        await loaded.create_order(market_buy("0.00001"), "bb-small")  # 0.5 USDT < 5
    assert binance_server.book.orders == {}
    assert posts(binance_server) == 1


async def test_invalid_symbol_is_rejected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    del binance_server.book.markets["ETHUSDT"]  # delisted after we loaded markets
    with pytest.raises(ExchangeRejectedError, match=r"Invalid symbol\."):
        await loaded.create_order(market_buy("0.1", "ETH/USDT"), "bb-sym")


async def test_bad_signature_is_rejected(binance_server: FakeBinanceServer) -> None:
    conn = connector_for(binance_server, api_secret="not-the-secret")
    try:
        await conn.load_markets()
        with pytest.raises(ExchangeRejectedError,
                           match=r"Signature for this request is not valid\."):
            await conn.create_order(market_buy("0.001"), "bb-sig")
    finally:
        await conn.close()
    assert binance_server.book.orders == {}


async def test_unknown_api_key_is_rejected(binance_server: FakeBinanceServer) -> None:
    conn = connector_for(binance_server, api_key="someone-elses-key")
    try:
        await conn.load_markets()
        with pytest.raises(ExchangeRejectedError, match="Invalid API-key"):
            await conn.create_order(market_buy("0.001"), "bb-key")
    finally:
        await conn.close()


async def test_key_rejected_after_an_earlier_success_is_still_a_rejection(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    # ccxt turns -2015 into DDoSProtection once a private call succeeded on the instance.
    await loaded.create_order(market_buy("0.001"), "bb-ok")
    binance_server.fail_with("bad_key", path=ORDER_PATH)
    with pytest.raises(ExchangeRejectedError) as info:
        await loaded.create_order(market_buy("0.001"), "bb-banned")
    assert not isinstance(info.value, ExchangeUnavailableError)
    assert "-2015" in str(info.value)
    # ...and it did not start a rate-limit pause either.
    await loaded.create_order(market_buy("0.001"), "bb-after")


async def test_key_format_error_is_rejected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    binance_server.fail_with("key_format", path=ORDER_PATH)
    with pytest.raises(ExchangeRejectedError, match="API-key format invalid"):
        await loaded.create_order(market_buy("0.001"), "bb-fmt")


async def test_duplicate_client_order_id_is_rejected_and_not_placed_twice(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    await loaded.create_order(limit_buy(), "bb-dup")
    with pytest.raises(ExchangeRejectedError, match=r"Duplicate order sent\."):
        await loaded.create_order(limit_buy(), "bb-dup")
    assert len(binance_server.book.orders_with_client_id("bb-dup")) == 1


async def test_spot_only_error_codes_are_recognised_on_a_custom_url(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    # -1131 is in ccxt's spot-only table; without restoring it, it would be a plain
    # ExchangeError and look like "unknown".
    binance_server.fail_http(400, '{"code":-1131,"msg":"recvWindow must be less than 60000"}',
                             path=ORDER_PATH)
    with pytest.raises(ExchangeRejectedError) as info:
        await loaded.create_order(market_buy("0.001"), "bb-spot")
    assert not isinstance(info.value, ExchangeUnavailableError)


# -- outcome unknown: never retried, never resent --------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (408, '{"code":-1007,"msg":"Timeout waiting for response from backend server. '
              'Send status unknown; execution status unknown."}'),
        (500, ""),
        (502, "<html><body>502 Bad Gateway</body></html>"),
        (503, '{"code":-1001,"msg":"Internal error; unable to process your request. '
              'Please try again."}'),
    ],
)
async def test_server_side_failures_are_unavailable_and_sent_once(
    loaded: BinanceConnector, binance_server: FakeBinanceServer, status: int, body: str
) -> None:
    binance_server.fail_http(status, body, path=ORDER_PATH,
                             content_type="text/html" if body.startswith("<") else
                             "application/json")
    with pytest.raises(ExchangeUnavailableError) as info:
        await loaded.create_order(market_buy("0.001"), "bb-5xx")
    assert not isinstance(info.value, ExchangeRejectedError | RateLimitedError)
    assert posts(binance_server) == 1


async def test_dropped_connection_after_accept_is_unavailable_and_order_exists_once(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    binance_server.drop_after_accept(method="POST", path=ORDER_PATH)
    with pytest.raises(ExchangeUnavailableError):
        await loaded.create_order(market_buy("0.001"), "bb-drop")
    assert len(binance_server.book.orders_with_client_id("bb-drop")) == 1
    assert posts(binance_server) == 1
    # The order can then be found by client order id alone (what reconcile does).
    found = await loaded.fetch_order("BTC/USDT", external_id=None, client_order_id="bb-drop")
    assert found.filled_qty == D("0.001")


async def test_timeout_after_accept_is_unavailable_and_order_exists_once(
    binance_server: FakeBinanceServer,
) -> None:
    conn = connector_for(binance_server, timeout=0.3)
    try:
        await conn.load_markets()
        binance_server.hang_after_accept(5, method="POST", path=ORDER_PATH)
        started = time.monotonic()
        with pytest.raises(ExchangeUnavailableError, match="RequestTimeout"):
            await conn.create_order(limit_buy(), "bb-slow")
        assert time.monotonic() - started < 2
        assert len(binance_server.book.orders_with_client_id("bb-slow")) == 1
        assert posts(binance_server) == 1
    finally:
        await conn.close()


async def test_malformed_answer_after_accept_is_unavailable(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    binance_server.malformed_json(method="POST", path=ORDER_PATH)
    with pytest.raises(ExchangeUnavailableError):
        await loaded.create_order(market_buy("0.001"), "bb-garbled")
    assert len(binance_server.book.orders_with_client_id("bb-garbled")) == 1
    assert posts(binance_server) == 1


async def test_connection_refused_is_unavailable() -> None:
    from bagbot_core.connector import ConnectorSettings

    conn = BinanceConnector(ConnectorSettings(config={
        "api_key": "k", "api_secret": "s", "api_url": "http://127.0.0.1:9",
        "enable_rate_limit": False, "timeout": 1}))
    try:
        with pytest.raises(ExchangeUnavailableError):
            await conn.load_markets()
    finally:
        await conn.close()


# -- not found -------------------------------------------------------------------------


async def test_fetch_unknown_order_is_not_found(
    loaded: BinanceConnector,
) -> None:
    with pytest.raises(ExchangeOrderNotFoundError, match=r"Order does not exist\..*-2013"):
        await loaded.fetch_order("BTC/USDT", external_id="424242", client_order_id="nope")
    with pytest.raises(ExchangeOrderNotFoundError):
        await loaded.fetch_order("BTC/USDT", external_id=None, client_order_id="nope")


async def test_cancel_unknown_or_finished_order_is_not_found(
    loaded: BinanceConnector,
) -> None:
    with pytest.raises(ExchangeOrderNotFoundError, match=r"Unknown order sent\..*-2011"):
        await loaded.cancel_order("BTC/USDT", external_id="424242", client_order_id="nope")
    filled = await loaded.create_order(market_buy("0.001"), "bb-done")
    with pytest.raises(ExchangeOrderNotFoundError):
        await loaded.cancel_order("BTC/USDT", external_id=filled.external_id,
                                  client_order_id="bb-done")


# -- rate limits -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 418])
async def test_retry_after_is_respected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer, status: int
) -> None:
    binance_server.rate_limit(0.6, status=status, path="/api/v3/ticker/bookTicker")
    with pytest.raises(RateLimitedError) as info:
        await loaded.fetch_quote("BTC/USDT")
    assert info.value.retry_after == pytest.approx(0.6, abs=0.05)
    sent = len(binance_server.requests)

    # Inside the window nothing is sent, not even an order.
    with pytest.raises(RateLimitedError) as inside:
        await loaded.create_order(market_buy("0.001"), "bb-wait")
    assert inside.value.retry_after is not None
    assert 0 < inside.value.retry_after <= 0.6
    with pytest.raises(RateLimitedError):
        await loaded.fetch_order("BTC/USDT", external_id="1", client_order_id="x")
    assert len(binance_server.requests) == sent
    assert binance_server.book.orders == {}

    await asyncio.sleep(inside.value.retry_after + 0.05)
    placed = await loaded.create_order(market_buy("0.001"), "bb-wait")
    assert placed.filled_qty == D("0.001")
    assert binance_server.requests_in_retry_windows() == []


async def test_rate_limit_without_retry_after_pauses_for_the_configured_backoff(
    binance_server: FakeBinanceServer,
) -> None:
    conn = connector_for(binance_server, rate_limit_backoff=0.4)
    try:
        await conn.load_markets()
        binance_server.fail_http(429, '{"code":-1003,"msg":"Too many requests."}',
                                 path="/api/v3/ticker/bookTicker")
        with pytest.raises(RateLimitedError) as info:
            await conn.fetch_quote("BTC/USDT")
        assert info.value.retry_after == pytest.approx(0.4, abs=0.05)
        sent = len(binance_server.requests)
        with pytest.raises(RateLimitedError):
            await conn.fetch_quote("ETH/USDT")
        assert len(binance_server.requests) == sent
    finally:
        await conn.close()


# -- secrets ---------------------------------------------------------------------------


def _signatures(server: FakeBinanceServer) -> list[str]:
    found = []
    for request in server.requests:
        found += re.findall(r"signature=([0-9a-f]+)", request.query + request.body)
    return found


async def test_secrets_never_reach_reprs_errors_or_logs(
    binance_server: FakeBinanceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = connector_for(binance_server, timeout=0.3)
    errors: list[BaseException] = []
    try:
        await conn.load_markets()
        await conn.create_order(market_buy("0.001"), "bb-s1")
        binance_server.hang_after_accept(3, method="GET", path=ORDER_PATH)
        with pytest.raises(ExchangeUnavailableError) as timeout:
            await conn.fetch_order("BTC/USDT", external_id="1000", client_order_id="bb-s1")
        errors.append(timeout.value)
        binance_server.fail_http(500, "", path=ORDER_PATH, method="GET")
        with pytest.raises(ExchangeUnavailableError) as server_error:
            await conn.fetch_order("BTC/USDT", external_id="1000", client_order_id="bb-s1")
        errors.append(server_error.value)
        with pytest.raises(ExchangeRejectedError) as rejected:
            await conn.create_order(market_buy("10"), "bb-s2")
        errors.append(rejected.value)
        texts = [repr(conn), str(conn), *(str(e) for e in errors), *(repr(e) for e in errors)]
    finally:
        await conn.close()
    signatures = _signatures(binance_server)
    assert signatures  # the test would prove nothing without signed requests
    assert any("/api/v3/order" in text for text in caplog.messages)  # ccxt's debug log ran
    haystacks = texts + caplog.messages + [r.getMessage() for r in caplog.records]
    for needle in (binance_server.api_key, binance_server.api_secret, *signatures):
        for text in haystacks:
            assert needle not in text
    for error in errors:
        assert error.__cause__ is None
        assert error.__suppress_context__


async def test_settings_secret_is_not_in_the_connector_repr() -> None:
    from bagbot_core.connector import ConnectorSettings

    conn = BinanceConnector(ConnectorSettings(config={"api_key": "KEY123", "api_secret": "S3"}))
    assert "KEY123" not in repr(conn)
    assert "S3" not in repr(conn)
    assert repr(conn.api_secret) == "Secret('***')"


async def test_timestamp_outside_recv_window_is_rejected(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    # -1021 is an InvalidNonce in ccxt -- a NetworkError subclass, but a definite refusal.
    binance_server.clock_offset_ms = 120_000
    with pytest.raises(ExchangeRejectedError, match="recvWindow") as info:
        await loaded.create_order(market_buy("0.001"), "bb-clock")
    assert not isinstance(info.value, ExchangeUnavailableError)
    assert binance_server.book.orders == {}
