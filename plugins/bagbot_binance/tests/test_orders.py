"""Markets, quotes, precision and the order lifecycle through real ccxt against the fake."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from bagbot_binance.connector import BinanceConnector
from bagbot_binance.testing import FakeBinanceServer, connector_for

from bagbot_core.errors import ExchangeRejectedError
from bagbot_core.orders import Market, OrderRequest, OrderType, Side
from bagbot_core.status import OrderStatus

D = Decimal


def market_buy(amount: str, symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(symbol, Side.BUY, OrderType.MARKET, D(amount))


def limit(side: Side, amount: str, price: str, symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(symbol, side, OrderType.LIMIT, D(amount), D(price))


# -- markets ---------------------------------------------------------------------------


async def test_load_markets_sends_exactly_one_exchange_info_request(
    connector: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    markets = await connector.load_markets()
    assert [(r.method, r.path) for r in binance_server.requests] == [
        ("GET", "/api/v3/exchangeInfo")
    ]
    assert markets["BTC/USDT"] == Market(
        symbol="BTC/USDT", base="BTC", quote="USDT", active=True,
        amount_step=D("0.00001"), price_step=D("0.01"), min_amount=D("0.00001"),
        max_amount=D("9000"), min_cost=D("5"),
    )
    assert set(markets) == {"BTC/USDT", "ETH/USDT"}


async def test_markets_are_cached_and_reload_asks_again(
    connector: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    first = await connector.load_markets()
    assert await connector.load_markets() is first
    assert len(binance_server.requests) == 1
    binance_server.book.markets["BTCUSDT"].min_cost = D("10")
    reloaded = await connector.load_markets(reload=True)
    assert len(binance_server.requests_to("/api/v3/exchangeInfo")) == 2
    assert reloaded["BTC/USDT"].min_cost == D("10")


async def test_concurrent_first_loads_share_one_request(
    connector: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    await asyncio.gather(*(connector.load_markets() for _ in range(5)))
    assert len(binance_server.requests) == 1


# -- quotes ----------------------------------------------------------------------------


async def test_quote_comes_from_book_ticker_as_exact_decimals(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    market = binance_server.book.markets["BTCUSDT"]
    market.price, market.half_spread = D("50000.10"), D("0.05")
    quote = await loaded.fetch_quote("BTC/USDT")
    assert (quote.bid, quote.ask) == (D("50000.05"), D("50000.15"))
    assert [r.path for r in binance_server.requests] == ["/api/v3/ticker/bookTicker"]
    assert binance_server.requests[0].query == "symbol=BTCUSDT"


async def test_quotes_are_cached_for_quote_max_age(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    first = await loaded.fetch_quote("BTC/USDT")
    binance_server.book.set_price("BTCUSDT", "51000")
    assert await loaded.fetch_quote("BTC/USDT") is first  # default 2 s: no second request
    assert len(binance_server.requests) == 1
    await loaded.fetch_quote("ETH/USDT")  # cached per symbol
    assert len(binance_server.requests) == 2


async def test_quote_max_age_is_configurable(binance_server: FakeBinanceServer) -> None:
    conn = connector_for(binance_server, quote_max_age=0)
    try:
        await conn.fetch_quote("BTC/USDT")
        binance_server.book.set_price("BTCUSDT", "51000")
        quote = await conn.fetch_quote("BTC/USDT")
        assert quote.ask == D("51000")
        assert len(binance_server.requests_to("/api/v3/ticker/bookTicker")) == 2
    finally:
        await conn.close()


# -- precision and limits (no requests) ------------------------------------------------


async def test_amount_is_truncated_to_the_step(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    markets = await loaded.load_markets()
    prepared = loaded.prepare_order(market_buy("0.123456789"), markets["BTC/USDT"], D("50000"))
    assert prepared.amount == D("0.12345")
    assert binance_server.requests == []


@pytest.mark.parametrize(
    ("side", "asked", "expected"),
    [
        (Side.BUY, "40000.006", "40000"),  # ccxt rounds to .01 (worse): moved back a tick
        (Side.BUY, "40000.004", "40000"),
        (Side.SELL, "40000.004", "40000.01"),  # ccxt rounds to .00 (worse): moved up a tick
        (Side.SELL, "40000.006", "40000.01"),
        (Side.BUY, "40000.01", "40000.01"),
    ],
)
async def test_limit_price_is_rounded_never_to_a_worse_price(
    loaded: BinanceConnector, side: Side, asked: str, expected: str
) -> None:
    markets = await loaded.load_markets()
    prepared = loaded.prepare_order(limit(side, "0.01", asked), markets["BTC/USDT"])
    assert prepared.price == D(expected)


async def test_below_min_notional_is_rejected_before_sending(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    markets = await loaded.load_markets()
    with pytest.raises(ExchangeRejectedError, match="minimum 5"):
        loaded.prepare_order(market_buy("0.00009"), markets["BTC/USDT"], D("50000"))
    with pytest.raises(ExchangeRejectedError, match="minimum 5"):
        loaded.prepare_order(limit(Side.BUY, "0.0001", "40000"), markets["BTC/USDT"])
    assert binance_server.requests == []


async def test_amount_rounding_to_nothing_is_rejected_before_sending(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    markets = await loaded.load_markets()
    with pytest.raises(ExchangeRejectedError):
        loaded.prepare_order(market_buy("0.000001"), markets["BTC/USDT"], D("50000"))
    assert binance_server.requests == []


# -- market orders ---------------------------------------------------------------------


async def test_market_buy_fills_with_exact_decimal_qty_and_price(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    book = binance_server.book
    book.set_price("BTCUSDT", "50123.45")
    result = await loaded.create_order(market_buy("0.12345"), "bb-1")
    assert result.status is OrderStatus.FILLED
    assert result.raw_status == "FILLED"
    assert result.filled_qty == D("0.12345")
    assert result.avg_price == D("50123.45")
    assert result.client_order_id == "bb-1"
    (placed,) = book.orders_with_client_id("bb-1")
    assert result.external_id == str(placed.order_id)
    assert book.balance("BTC") == D("1.12345")
    assert book.balance("USDT") == D("100000") - D("0.12345") * D("50123.45")
    (post,) = binance_server.requests_to("/api/v3/order", "POST")
    assert "newClientOrderId=bb-1" in post.body
    assert "quantity=0.12345" in post.body
    assert "newOrderRespType=FULL" in post.body


async def test_market_sell_fills_at_the_bid(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    market = binance_server.book.markets["BTCUSDT"]
    market.half_spread = D("0.5")
    result = await loaded.create_order(
        OrderRequest("BTC/USDT", Side.SELL, OrderType.MARKET, D("0.5")), "bb-sell"
    )
    assert result.status is OrderStatus.FILLED
    assert result.avg_price == D("49999.5")
    assert binance_server.book.balance("BTC") == D("0.5")


# -- limit orders ----------------------------------------------------------------------


async def test_limit_rests_then_fetch_and_cancel_by_exchange_id(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    book = binance_server.book
    placed = await loaded.create_order(limit(Side.BUY, "0.01", "40000"), "bb-lim")
    assert placed.status is OrderStatus.OPEN
    assert placed.raw_status == "NEW"
    assert (placed.amount, placed.price, placed.filled_qty) == (D("0.01"), D("40000"), D(0))
    assert book.locked["USDT"] == D("400")

    fetched = await loaded.fetch_order("BTC/USDT", external_id=placed.external_id,
                                       client_order_id="bb-lim")
    assert fetched.status is OrderStatus.OPEN
    assert f"orderId={placed.external_id}" in binance_server.requests[-1].query

    canceled = await loaded.cancel_order("BTC/USDT", external_id=placed.external_id,
                                         client_order_id="bb-lim")
    assert canceled.status is OrderStatus.CANCELED
    assert canceled.client_order_id == "bb-lim"
    assert binance_server.requests[-1].method == "DELETE"
    assert book.locked["USDT"] == 0
    assert book.balance("USDT") == D("100000")


async def test_fetch_and_cancel_by_client_order_id_alone(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    await loaded.create_order(limit(Side.SELL, "0.2", "60000"), "bb-cid")
    fetched = await loaded.fetch_order("BTC/USDT", external_id=None, client_order_id="bb-cid")
    assert fetched.status is OrderStatus.OPEN
    assert fetched.client_order_id == "bb-cid"
    query = binance_server.requests[-1].query
    assert "origClientOrderId=bb-cid" in query
    assert "orderId=" not in query.replace("origClientOrderId", "")

    canceled = await loaded.cancel_order("BTC/USDT", external_id=None, client_order_id="bb-cid")
    assert canceled.status is OrderStatus.CANCELED
    # Binance answers a cancel with a fresh clientOrderId; the original one must win.
    (order,) = binance_server.book.orders_with_client_id("bb-cid")
    assert binance_server.cancel_ids[order.order_id] != "bb-cid"
    assert canceled.client_order_id == "bb-cid"
    assert canceled.external_id == str(order.order_id)


async def test_limit_fills_when_the_price_moves_across_it(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.01", "49000"), "bb-move")
    assert placed.status is OrderStatus.OPEN
    binance_server.book.set_price("BTCUSDT", "48999.99")
    fetched = await loaded.fetch_order("BTC/USDT", external_id=placed.external_id,
                                       client_order_id="bb-move")
    assert fetched.status is OrderStatus.FILLED
    assert fetched.filled_qty == D("0.01")
    assert fetched.avg_price == D("49000")


async def test_marketable_limit_fills_at_once(loaded: BinanceConnector) -> None:
    result = await loaded.create_order(limit(Side.BUY, "0.01", "50500"), "bb-take")
    assert result.status is OrderStatus.FILLED
    assert result.avg_price == D("50000")


async def test_partial_fills_give_the_weighted_average_price(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.002", "49500"), "bb-part")
    order_id = int(placed.external_id or 0)
    binance_server.book.fill(order_id, D("0.001"), D("49000"))
    binance_server.book.fill(order_id, D("0.0005"), D("48000"))
    fetched = await loaded.fetch_order("BTC/USDT", external_id=placed.external_id,
                                       client_order_id="bb-part")
    assert fetched.status is OrderStatus.PARTIALLY_FILLED
    assert fetched.raw_status == "PARTIALLY_FILLED"
    assert fetched.filled_qty == D("0.0015")
    # (0.001 * 49000 + 0.0005 * 48000) / 0.0015, to 18 places, from the raw strings
    assert fetched.avg_price == D("48666.666666666666666667")


@pytest.mark.parametrize(
    ("raw", "partial", "expected"),
    [
        ("NEW", False, OrderStatus.OPEN),
        ("PENDING_CANCEL", False, OrderStatus.OPEN),
        ("PENDING_CANCEL", True, OrderStatus.PARTIALLY_FILLED),
        ("PARTIALLY_FILLED", True, OrderStatus.PARTIALLY_FILLED),
        ("REJECTED", False, OrderStatus.REJECTED),
        ("EXPIRED", False, OrderStatus.EXPIRED),
        ("EXPIRED", True, OrderStatus.EXPIRED),
        ("EXPIRED_IN_MATCH", True, OrderStatus.EXPIRED),
        ("CANCELED", True, OrderStatus.CANCELED),
    ],
)
async def test_binance_statuses_map_and_keep_filled_qty(
    loaded: BinanceConnector, binance_server: FakeBinanceServer,
    raw: str, partial: bool, expected: OrderStatus,
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.002", "49500"), "bb-st")
    order_id = int(placed.external_id or 0)
    if partial:
        binance_server.book.fill(order_id, D("0.0007"), D("49500"))
    binance_server.status_overrides[order_id] = raw
    fetched = await loaded.fetch_order("BTC/USDT", external_id=placed.external_id,
                                       client_order_id="bb-st")
    assert fetched.status is expected
    assert fetched.raw_status == raw
    assert fetched.filled_qty == (D("0.0007") if partial else 0)
    assert fetched.avg_price == (D("49500") if partial else None)


async def test_ioc_leftover_expires_and_keeps_nothing_filled(
    loaded: BinanceConnector,
) -> None:
    order = OrderRequest("BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.01"), D("40000"),
                         params={"timeInForce": "IOC"})
    result = await loaded.create_order(order, "bb-ioc")
    assert result.status is OrderStatus.EXPIRED
    assert result.filled_qty == 0


async def test_live_mode_also_loads_spot_markets_with_one_request(
    binance_server: FakeBinanceServer,
) -> None:
    # Live ccxt defaults would also hit sapi (currencies, margin) and the futures APIs.
    conn = connector_for(binance_server, testnet=False)
    try:
        assert not conn.exchange.isSandboxModeEnabled
        markets = await conn.load_markets()
    finally:
        await conn.close()
    assert [(r.method, r.path) for r in binance_server.requests] == [
        ("GET", "/api/v3/exchangeInfo")
    ]
    assert set(markets) == {"BTC/USDT", "ETH/USDT"}


async def test_live_mode_places_orders_through_the_swapped_host(
    binance_server: FakeBinanceServer,
) -> None:
    conn = connector_for(binance_server, testnet=False)
    try:
        await conn.load_markets()
        result = await conn.create_order(market_buy("0.001"), "bb-live")
    finally:
        await conn.close()
    assert result.status is OrderStatus.FILLED
    assert len(binance_server.requests_to("/api/v3/order", "POST")) == 1


def test_fake_server_runs_in_a_background_thread() -> None:
    """The server can live outside the test's loop (thread or separate process)."""
    server = FakeBinanceServer()

    async def trade() -> tuple[OrderStatus, int]:
        conn = connector_for(server)
        try:
            await conn.load_markets()
            result = await conn.create_order(market_buy("0.002"), "bb-thread")
        finally:
            await conn.close()
        return result.status, len(server.requests)

    with server.run_in_thread():
        assert server.url.startswith("http://127.0.0.1:")
        status, count = asyncio.run(trade())
    assert status is OrderStatus.FILLED
    assert count == 2
    assert server.book.balance("BTC") == D("1.002")


async def test_fresh_connector_can_fetch_by_client_id_without_loading_markets_first(
    binance_server: FakeBinanceServer,
) -> None:
    """What reconcile does after a restart: only the client order id is known."""
    first = connector_for(binance_server)
    try:
        await first.create_order(limit(Side.BUY, "0.01", "40000"), "bb-restart")
    finally:
        await first.close()
    second = connector_for(binance_server)
    try:
        found = await second.fetch_order("BTC/USDT", external_id=None,
                                         client_order_id="bb-restart")
    finally:
        await second.close()
    assert found.status is OrderStatus.OPEN
    assert found.client_order_id == "bb-restart"


async def test_connector_works_again_after_close(
    connector: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    await connector.load_markets()
    await connector.close()
    assert connector._exchange is None
    markets = await connector.load_markets()
    assert "BTC/USDT" in markets
    assert len(binance_server.requests_to("/api/v3/exchangeInfo")) == 2
    result = await connector.create_order(market_buy("0.001"), "bb-reopen")
    assert result.status is OrderStatus.FILLED
