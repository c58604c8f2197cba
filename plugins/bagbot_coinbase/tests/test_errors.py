"""Refusals, faults, rate limits, authentication and secrets against the fake server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from decimal import Decimal

import pytest
from bagbot_coinbase.connector import CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, connector_for, generate_cdp_key

from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    RateLimitedError,
)
from bagbot_core.orders import OrderRequest, OrderType, Side

D = Decimal
ORDERS = "/api/v3/brokerage/orders"


def market_sell(amount: str = "0.01") -> OrderRequest:
    return OrderRequest("BTC/USD", Side.SELL, OrderType.MARKET, D(amount))


def limit_buy(amount: str = "0.01", price: str = "40000", **params: object) -> OrderRequest:
    return OrderRequest("BTC/USD", Side.BUY, OrderType.LIMIT, D(amount), D(price),
                        params=params)


def posts(server: FakeCoinbaseServer) -> int:
    return len(server.requests_to(ORDERS, "POST"))


async def test_insufficient_fund_is_rejected_with_coinbase_message(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    book = coinbase_server.book
    book.deposit("USD", -book.balance("USD"))
    with pytest.raises(ExchangeRejectedError,
                       match="INSUFFICIENT_FUND: Insufficient balance in source account"):
        await loaded.create_order(limit_buy(), "bb-nofunds")
    assert book.orders_with_client_id("bb-nofunds") == []
    assert posts(coinbase_server) == 1


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("unsupported_configuration", "UNSUPPORTED_ORDER_CONFIGURATION"),
        ("post_only", "INVALID_LIMIT_PRICE_POST_ONLY"),
        ("trading_disabled", "ORDER_ENTRY_DISABLED"),
        ("base_too_small", "Order size is too small"),
    ],
)
async def test_every_success_false_answer_is_a_definite_rejection(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer, name: str, words: str
) -> None:
    """ccxt raises a plain ExchangeError for most failure reasons (that would read as
    'unknown'); a success:false create placed nothing, so it is always a rejection."""
    coinbase_server.fail_with(name)
    with pytest.raises(ExchangeRejectedError, match=words):
        await loaded.create_order(limit_buy(), "bb-refused")
    assert coinbase_server.book.orders_with_client_id("bb-refused") == []


async def test_post_only_crossing_is_refused_by_the_fake_itself(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    with pytest.raises(ExchangeRejectedError, match="INVALID_LIMIT_PRICE_POST_ONLY"):
        await loaded.create_order(limit_buy(price="50500", postOnly=True), "bb-po")
    (body,) = [json.loads(r.body) for r in coinbase_server.requests_to(ORDERS, "POST")]
    assert body["order_configuration"]["limit_limit_gtc"]["post_only"] is True


async def test_invalid_argument_is_rejected_with_the_message(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.fail_http(400, json.dumps({
        "error": "INVALID_ARGUMENT", "error_details": "limit_price is too far from market",
        "message": "limit_price is too far from market"}), method="POST", path=ORDERS)
    with pytest.raises(ExchangeRejectedError, match="limit_price is too far from market"):
        await loaded.create_order(limit_buy(), "bb-invalid")


async def test_price_off_the_tick_reaches_the_fake_only_if_asked_and_is_refused(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    # prepare_order would round it; sent raw it is Coinbase's INVALID_PRICE_PRECISION.
    coinbase_server.book.markets["BTC-USD"].price_step = D("1")
    with pytest.raises(ExchangeRejectedError, match="INVALID_PRICE_PRECISION"):
        await loaded.create_order(limit_buy(price="40000.5"), "bb-tick")


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (500, '{"error":"INTERNAL","error_details":"","message":"internal error"}',
         "application/json"),
        (502, "<html><body>502 Bad Gateway</body></html>", "text/html"),
        (503, "upstream connect error", "text/plain"),
    ],
)
async def test_server_side_failures_are_unavailable_and_sent_once(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer,
    status: int, body: str, content_type: str,
) -> None:
    coinbase_server.fail_http(status, body, method="POST", path=ORDERS,
                              content_type=content_type)
    with pytest.raises(ExchangeUnavailableError):
        await loaded.create_order(market_sell(), "bb-5xx")
    assert posts(coinbase_server) == 1


async def test_dropped_connection_after_accept_is_unavailable_and_order_exists_once(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.drop_after_accept(method="POST", path=ORDERS)
    with pytest.raises(ExchangeUnavailableError):
        await loaded.create_order(market_sell(), "bb-drop")
    assert posts(coinbase_server) == 1
    assert len(coinbase_server.book.orders_with_client_id("bb-drop")) == 1


async def test_timeout_after_accept_is_unavailable_and_order_exists_once(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    conn = connector_for(coinbase_server, timeout=0.5)
    try:
        await conn.load_markets()
        coinbase_server.hang_after_accept(3, method="POST", path=ORDERS)
        started = time.monotonic()
        with pytest.raises(ExchangeUnavailableError):
            await conn.create_order(market_sell(), "bb-hang")
        assert time.monotonic() - started < 2.5
    finally:
        await conn.close()
    assert posts(coinbase_server) == 1
    assert len(coinbase_server.book.orders_with_client_id("bb-hang")) == 1


async def test_malformed_answer_after_accept_is_unavailable(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.malformed_json(method="POST", path=ORDERS)
    with pytest.raises(ExchangeUnavailableError):
        await loaded.create_order(market_sell(), "bb-garbled")
    assert len(coinbase_server.book.orders_with_client_id("bb-garbled")) == 1


async def test_connection_refused_is_unavailable() -> None:
    name, pem = generate_cdp_key()
    conn = CoinbaseConnector(ConnectorSettings(config={
        "api_key": name, "api_secret": pem, "api_url": "http://127.0.0.1:9",
        "enable_rate_limit": False, "timeout": 2}))
    try:
        with pytest.raises(ExchangeUnavailableError):
            await conn.load_markets()
    finally:
        await conn.close()


async def test_fetch_unknown_order_is_not_found_although_ccxt_says_exchange_error(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    with pytest.raises(ExchangeOrderNotFoundError, match="order with this orderID was not found"):
        await loaded.fetch_order("BTC/USD", external_id="0b9c2e0e-0000-4000-8000-000000000000",
                                 client_order_id="bb-x")
    (request,) = coinbase_server.requests
    assert request.status == 404
    with pytest.raises(ExchangeOrderNotFoundError):
        await loaded.fetch_order("BTC/USD", external_id=None, client_order_id="bb-nothing")


async def test_cancel_unknown_or_finished_order(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    with pytest.raises(ExchangeOrderNotFoundError):
        await loaded.cancel_order("BTC/USD", external_id=None, client_order_id="bb-none")
    with pytest.raises(ExchangeOrderNotFoundError):
        await loaded.cancel_order("BTC/USD", external_id="0b9c2e0e-0000-4000-8000-00000000000f",
                                  client_order_id="bb-none")
    filled = await loaded.create_order(market_sell(), "bb-done")
    with pytest.raises(ExchangeRejectedError, match="already FILLED"):
        await loaded.cancel_order("BTC/USD", external_id=filled.external_id,
                                  client_order_id="bb-done")


async def test_retry_after_is_respected(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.rate_limit(0.4, method="POST", path=ORDERS)
    with pytest.raises(RateLimitedError) as info:
        await loaded.create_order(market_sell(), "bb-429")
    assert info.value.retry_after == pytest.approx(0.4, abs=0.05)
    with pytest.raises(RateLimitedError):  # refused locally, nothing sent
        await loaded.create_order(market_sell(), "bb-429b")
    assert posts(coinbase_server) == 1
    assert coinbase_server.requests_in_retry_windows() == []
    await asyncio.sleep(0.45)
    result = await loaded.create_order(market_sell(), "bb-429c")
    assert result.external_id
    assert coinbase_server.requests_in_retry_windows() == []


async def test_rate_limit_without_retry_after_pauses_for_the_backoff(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    conn = connector_for(coinbase_server, rate_limit_backoff=0.3)
    try:
        await conn.load_markets()
        coinbase_server.fail_http(429, '{"error":"RATE_LIMIT_EXCEEDED","message":"slow down"}',
                                  method="POST", path=ORDERS)
        with pytest.raises(RateLimitedError, match="slow down"):
            await conn.create_order(market_sell(), "bb-429d")
        with pytest.raises(RateLimitedError):
            await conn.fetch_quote("ETH/USD")
    finally:
        await conn.close()


# -- authentication ----------------------------------------------------------------------


async def test_the_fake_verifies_the_es256_jwt_per_request(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    await loaded.create_order(limit_buy(), "bb-jwt")
    assert coinbase_server.auth_failures == []
    # A key the server does not know: 401 text, a definite rejection.
    other_name, other_pem = generate_cdp_key()
    stranger = connector_for(coinbase_server, api_key=other_name, api_secret=other_pem)
    try:
        await stranger.load_markets()  # public: no JWT needed
        with pytest.raises(ExchangeRejectedError, match="AuthenticationError"):
            await stranger.create_order(limit_buy(), "bb-stranger")
    finally:
        await stranger.close()
    assert coinbase_server.auth_failures == ["unknown kid"]
    assert coinbase_server.book.orders_with_client_id("bb-stranger") == []


async def test_right_key_name_with_the_wrong_private_key_fails_the_signature(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    _, wrong_pem = generate_cdp_key()
    conn = connector_for(coinbase_server, api_secret=wrong_pem)
    try:
        with pytest.raises(ExchangeRejectedError):
            await conn.fetch_order("BTC/USD", external_id=None, client_order_id="bb-sig")
    finally:
        await conn.close()
    assert coinbase_server.auth_failures == ["bad signature"]


@pytest.mark.parametrize(("offset", "why"), [(200.0, "expired"), (-60.0, "not valid yet")])
async def test_token_lifetime_is_checked_against_the_clock(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer, offset: float, why: str
) -> None:
    coinbase_server.clock_offset = offset
    with pytest.raises(ExchangeRejectedError):
        await loaded.create_order(limit_buy(), "bb-clock")
    assert coinbase_server.auth_failures == [why]


# -- secrets -----------------------------------------------------------------------------


async def test_secrets_never_reach_reprs_errors_or_logs(
    coinbase_server: FakeCoinbaseServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = connector_for(coinbase_server)
    conn.exchange.verbose = True  # ccxt logs every request and answer at DEBUG
    errors: list[BaseException] = []
    try:
        await conn.create_order(limit_buy(), "bb-secret")
        coinbase_server.fail_with("insufficient_fund")
        with pytest.raises(ExchangeRejectedError) as rejected:
            await conn.create_order(limit_buy(), "bb-secret-2")
        errors.append(rejected.value)
        _, wrong_pem = generate_cdp_key()
        bad = connector_for(coinbase_server, api_secret=wrong_pem)
        with pytest.raises(ExchangeRejectedError) as auth:
            await bad.create_order(limit_buy(), "bb-secret-3")
        errors.append(auth.value)
        await bad.close()
    finally:
        await conn.close()
    pem_body = "".join(coinbase_server.api_secret.splitlines()[1:-1])
    text = "\n".join([caplog.text, repr(conn), str(conn), *map(repr, errors),
                      *map(str, errors), repr(conn.api_key), repr(conn.api_secret)])
    assert "api/v3/brokerage/orders" in caplog.text  # the requests were logged...
    for canary in (coinbase_server.api_key, pem_body[:40], pem_body[-40:]):
        assert canary not in text  # ...without credentials
