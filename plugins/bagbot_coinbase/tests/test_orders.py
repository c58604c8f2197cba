"""Markets, quotes and the order lifecycle through real ccxt against the fake server."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from bagbot_coinbase.connector import CoinbaseConnector, map_status
from bagbot_coinbase.testing import FakeCoinbaseServer, connector_for

from bagbot_core.errors import ExchangeOrderNotFoundError, ExchangeUnavailableError
from bagbot_core.orders import Market, OrderRequest, OrderType, Side
from bagbot_core.status import OrderStatus

D = Decimal
ORDERS = "/api/v3/brokerage/orders"


def market(side: Side, amount: str, symbol: str = "BTC/USD") -> OrderRequest:
    return OrderRequest(symbol, side, OrderType.MARKET, D(amount))


def limit(side: Side, amount: str, price: str, symbol: str = "BTC/USD") -> OrderRequest:
    return OrderRequest(symbol, side, OrderType.LIMIT, D(amount), D(price))


def created_bodies(server: FakeCoinbaseServer) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in server.requests_to(ORDERS, "POST")]


# -- markets ---------------------------------------------------------------------------


async def test_load_markets_sends_exactly_one_spot_products_request(
    connector: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    markets = await connector.load_markets()
    assert [(r.method, r.path, r.query) for r in coinbase_server.requests] == [
        ("GET", "/api/v3/brokerage/market/products", "product_type=SPOT")
    ]
    assert markets["BTC/USD"] == Market(
        symbol="BTC/USD", base="BTC", quote="USD", active=True,
        amount_step=D("0.00000001"), price_step=D("0.01"), min_amount=D("0.00000001"),
        max_amount=D("3400"), min_cost=D("1"),
    )
    assert set(markets) == {"BTC/USD", "ETH/USD"}


async def test_markets_are_cached_and_reload_asks_again(
    connector: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    first = await connector.load_markets()
    assert await connector.load_markets() is first
    await asyncio.gather(*(connector.load_markets() for _ in range(5)))
    assert len(coinbase_server.requests) == 1
    coinbase_server.book.markets["BTC-USD"].min_cost = D("10")
    reloaded = await connector.load_markets(reload=True)
    assert len(coinbase_server.requests) == 2
    assert reloaded["BTC/USD"].min_cost == D("10")


async def test_disabled_product_is_an_inactive_market(
    connector: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.book.markets["ETH-USD"].active = False
    markets = await connector.load_markets()
    assert markets["ETH/USD"].active is False


async def test_quote_comes_from_the_public_ticker_as_exact_decimals(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    btc = coinbase_server.book.markets["BTC-USD"]
    btc.price, btc.half_spread = D("50000.10"), D("0.05")
    quote = await loaded.fetch_quote("BTC/USD")
    assert (quote.bid, quote.ask) == (D("50000.05"), D("50000.15"))
    (request,) = coinbase_server.requests
    assert (request.path, request.query) == (
        "/api/v3/brokerage/market/products/BTC-USD/ticker", "limit=1")
    assert await loaded.fetch_quote("BTC/USD") is quote  # cached for quote_max_age
    assert len(coinbase_server.requests) == 1


# -- market orders ---------------------------------------------------------------------


async def test_market_buy_sends_our_client_order_id_and_quote_size(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    book = coinbase_server.book
    book.set_price("BTC-USD", "50123.45")
    result = await loaded.create_order(market(Side.BUY, "0.002"), "bb-cid-1")
    (body,) = created_bodies(coinbase_server)
    # ccxt would send its own "ccxt-<uuid>": the core's id must be what reaches Coinbase.
    assert body["client_order_id"] == "bb-cid-1"
    assert body["product_id"] == "BTC-USD"
    assert body["side"] == "BUY"
    # amount x ask = 100.2469 USD, truncated to the quote increment: never spends more
    # than the max-value risk check priced.
    assert body["order_configuration"] == {"market_market_ioc": {"quote_size": "100.24"}}
    (placed,) = book.orders_with_client_id("bb-cid-1")
    assert result.external_id == coinbase_server.order_id(placed)
    assert result.client_order_id == "bb-cid-1"
    assert result.status is OrderStatus.FILLED
    assert result.raw_status == "FILLED"
    # what the exchange bought for 100.24 USD (its filled_size), not the amount asked for
    assert result.filled_qty == D("0.00199986")
    assert result.avg_price == D("50123.45")
    assert book.balance("BTC") == D("1.00199986")
    # one create, one read of its state: Coinbase's create answer has no status or fill
    assert [(r.method, r.path.rsplit("/", 1)[0]) for r in coinbase_server.requests] == [
        ("GET", "/api/v3/brokerage/market/products/BTC-USD"),  # the ask sizing quote_size
        ("POST", "/api/v3/brokerage"),
        ("GET", "/api/v3/brokerage/orders/historical"),
    ]


async def test_market_buy_is_sized_at_the_price_the_risk_check_used(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    import attrs

    # The router valued this order at 40000; the market has since moved to 50123.45. The
    # order sent must be the order that was checked: 0.002 x 40000 = 80 USD, no new quote.
    coinbase_server.book.set_price("BTC-USD", "50123.45")
    checked = attrs.evolve(market(Side.BUY, "0.002"), reference_price=D("40000"))
    await loaded.create_order(checked, "bb-cid-ref")
    (body,) = created_bodies(coinbase_server)
    assert body["order_configuration"] == {"market_market_ioc": {"quote_size": "80"}}
    assert not [r for r in coinbase_server.requests if r.path.endswith("/BTC-USD")]


async def test_market_sell_sends_base_size_and_fills_at_the_bid(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.book.markets["BTC-USD"].half_spread = D("0.5")
    result = await loaded.create_order(market(Side.SELL, "0.5"), "bb-sell")
    (body,) = created_bodies(coinbase_server)
    assert body["order_configuration"] == {"market_market_ioc": {"base_size": "0.5"}}
    assert result.status is OrderStatus.FILLED
    assert (result.filled_qty, result.avg_price, result.amount) == (
        D("0.5"), D("49999.5"), D("0.5"))
    assert coinbase_server.book.balance("BTC") == D("0.5")


async def test_create_answer_alone_is_reported_open_never_filled(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    """With fetch_after_create off, the success answer is mapped honestly: accepted, open,
    nothing filled -- even though the market order did fill on the exchange."""
    conn = connector_for(coinbase_server, fetch_after_create=False)
    try:
        await conn.load_markets()
        coinbase_server.reset_log()
        result = await conn.create_order(market(Side.SELL, "0.01"), "bb-nofetch")
        assert result.status is OrderStatus.OPEN
        assert result.filled_qty == 0 and result.avg_price is None
        assert result.raw_status is None
        assert [r.method for r in coinbase_server.requests] == ["POST"]
        synced = await conn.fetch_order("BTC/USD", external_id=result.external_id,
                                        client_order_id="bb-nofetch")
        assert synced.status is OrderStatus.FILLED and synced.filled_qty == D("0.01")
    finally:
        await conn.close()


async def test_failed_read_after_create_still_reports_the_accepted_order(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.fail_http(503, "upstream connect error", content_type="text/plain",
                              method="GET", times=None)
    result = await loaded.create_order(market(Side.SELL, "0.01"), "bb-readfail")
    assert result.status is OrderStatus.OPEN
    assert result.external_id
    assert result.filled_qty == 0
    assert len(coinbase_server.book.orders_with_client_id("bb-readfail")) == 1


async def test_repeated_client_order_id_returns_the_existing_order(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    """Coinbase de-duplicates on client_order_id: a retried create places nothing new."""
    first = await loaded.create_order(limit(Side.BUY, "0.01", "40000"), "bb-dup")
    again = await loaded.create_order(limit(Side.BUY, "0.01", "40000"), "bb-dup")
    assert again.external_id == first.external_id
    assert again.status is OrderStatus.OPEN
    assert len(coinbase_server.book.orders_with_client_id("bb-dup")) == 1
    assert coinbase_server.duplicate_creates == 1
    assert coinbase_server.book.locked["USD"] == D("400")


# -- limit orders ----------------------------------------------------------------------


async def test_limit_rests_then_fetch_and_cancel_by_exchange_id(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    book = coinbase_server.book
    placed = await loaded.create_order(limit(Side.BUY, "0.01", "40000"), "bb-lim")
    (body,) = created_bodies(coinbase_server)
    assert body["order_configuration"] == {
        "limit_limit_gtc": {"base_size": "0.01", "limit_price": "40000", "post_only": False}}
    assert placed.status is OrderStatus.OPEN and placed.raw_status == "OPEN"
    assert (placed.amount, placed.price, placed.filled_qty) == (D("0.01"), D("40000"), 0)
    assert book.locked["USD"] == D("400")

    canceled = await loaded.cancel_order("BTC/USD", external_id=placed.external_id,
                                         client_order_id="bb-lim")
    assert canceled.status is OrderStatus.CANCELED and canceled.raw_status == "CANCELLED"
    (cancel,) = coinbase_server.requests_to(f"{ORDERS}/batch_cancel", "POST")
    assert json.loads(cancel.body) == {"order_ids": [placed.external_id]}
    assert book.balance("USD") == D("100000")


async def test_fetch_and_cancel_by_client_order_id_alone(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    placed = await loaded.create_order(limit(Side.SELL, "0.2", "60000"), "bb-cid")
    coinbase_server.reset_log()
    fetched = await loaded.fetch_order("BTC/USD", external_id=None, client_order_id="bb-cid")
    assert fetched.external_id == placed.external_id
    assert fetched.client_order_id == "bb-cid" and fetched.status is OrderStatus.OPEN
    (search,) = coinbase_server.requests
    assert search.path == f"{ORDERS}/historical/batch"
    assert search.query == "product_ids=BTC-USD&limit=100"
    canceled = await loaded.cancel_order("BTC/USD", external_id=None, client_order_id="bb-cid")
    assert canceled.status is OrderStatus.CANCELED
    assert canceled.external_id == placed.external_id


async def test_client_order_id_search_pages_through_the_order_list(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    conn = connector_for(coinbase_server, client_id_search_pages=3)
    try:
        await conn.create_order(limit(Side.BUY, "0.001", "30000"), "bb-oldest")
        for i in range(150):
            await conn.create_order(limit(Side.BUY, "0.001", "30000"), f"bb-newer-{i}")
        coinbase_server.reset_log()
        found = await conn.fetch_order("BTC/USD", external_id=None, client_order_id="bb-oldest")
        assert found.client_order_id == "bb-oldest"
        pages = coinbase_server.requests_to(f"{ORDERS}/historical/batch")
        assert [r.query for r in pages] == ["product_ids=BTC-USD&limit=100",
                                            "product_ids=BTC-USD&limit=100&cursor=100"]
        with pytest.raises(ExchangeOrderNotFoundError):  # the list ended: definitely absent
            await conn.fetch_order("BTC/USD", external_id=None, client_order_id="bb-absent")
    finally:
        await conn.close()

    short = connector_for(coinbase_server, client_id_search_pages=1)
    try:
        # A longer list than the search may cover: never a false "not found".
        with pytest.raises(ExchangeUnavailableError, match="not among the newest 100"):
            await short.fetch_order("BTC/USD", external_id=None, client_order_id="bb-oldest")
    finally:
        await short.close()


async def test_limit_fills_when_the_price_moves_across_it(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.01", "49000"), "bb-move")
    coinbase_server.book.set_price("BTC-USD", "48999.99")
    fetched = await loaded.fetch_order("BTC/USD", external_id=placed.external_id,
                                       client_order_id="bb-move")
    assert fetched.status is OrderStatus.FILLED
    assert (fetched.filled_qty, fetched.avg_price) == (D("0.01"), D("49000"))


async def test_partial_fills_read_filled_size_and_average_price_as_decimals(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.003", "49500"), "bb-part")
    book_order = coinbase_server.book_order(placed.external_id or "")
    coinbase_server.book.fill(book_order.order_id, D("0.001"), D("49000.01"))
    coinbase_server.book.fill(book_order.order_id, D("0.0005"), D("48000.02"))
    fetched = await loaded.fetch_order("BTC/USD", external_id=placed.external_id,
                                       client_order_id="bb-part")
    assert fetched.status is OrderStatus.PARTIALLY_FILLED and fetched.raw_status == "OPEN"
    assert fetched.filled_qty == D("0.0015")
    # (0.001 * 49000.01 + 0.0005 * 48000.02) / 0.0015, to 18 places, from the raw strings
    assert fetched.avg_price == D("48666.680000000000000000")


@pytest.mark.parametrize(
    ("raw", "partial", "expected"),
    [
        ("PENDING", False, OrderStatus.OPEN),
        ("QUEUED", False, OrderStatus.OPEN),
        ("OPEN", True, OrderStatus.PARTIALLY_FILLED),
        ("CANCEL_QUEUED", False, OrderStatus.OPEN),
        ("CANCEL_QUEUED", True, OrderStatus.PARTIALLY_FILLED),
        ("CANCELLED", True, OrderStatus.CANCELED),
        ("EXPIRED", False, OrderStatus.EXPIRED),
        ("EXPIRED", True, OrderStatus.EXPIRED),
        ("FAILED", False, OrderStatus.REJECTED),
        ("FAILED", True, OrderStatus.CANCELED),
        ("FILLED", True, OrderStatus.FILLED),
    ],
)
async def test_advanced_trade_statuses_map_and_keep_filled_size(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer,
    raw: str, partial: bool, expected: OrderStatus,
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.002", "49500"), "bb-st")
    assert placed.external_id is not None
    if partial:
        number = coinbase_server.book_order(placed.external_id).order_id
        coinbase_server.book.fill(number, D("0.0007"), D("49500"))
    coinbase_server.status_overrides[placed.external_id] = raw
    fetched = await loaded.fetch_order("BTC/USD", external_id=placed.external_id,
                                       client_order_id="bb-st")
    assert fetched.status is expected
    assert fetched.raw_status == raw
    assert fetched.filled_qty == (D("0.0007") if partial else 0)
    assert fetched.avg_price == (D("49500") if partial else None)


async def test_unknown_order_status_is_unreadable_not_guessed(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    placed = await loaded.create_order(limit(Side.BUY, "0.002", "49500"), "bb-unk")
    assert placed.external_id is not None
    coinbase_server.status_overrides[placed.external_id] = "UNKNOWN_ORDER_STATUS"
    with pytest.raises(ExchangeUnavailableError, match="UNKNOWN_ORDER_STATUS"):
        await loaded.fetch_order("BTC/USD", external_id=placed.external_id,
                                 client_order_id="bb-unk")


def test_map_status_refuses_what_it_does_not_know() -> None:
    for raw in ("UNKNOWN_ORDER_STATUS", None, "", "SOMETHING_NEW"):
        with pytest.raises(ValueError, match="unreadable"):
            map_status(raw, D(0))


async def test_fresh_connector_finds_an_order_by_client_id_after_a_restart(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    """What reconcile does after a restart: only the client order id is known."""
    first = connector_for(coinbase_server)
    try:
        await first.create_order(limit(Side.BUY, "0.01", "40000"), "bb-restart")
    finally:
        await first.close()
    second = connector_for(coinbase_server)
    try:
        found = await second.fetch_order("BTC/USD", external_id=None,
                                         client_order_id="bb-restart")
    finally:
        await second.close()
    assert found.status is OrderStatus.OPEN and found.client_order_id == "bb-restart"


def test_fake_server_runs_in_a_background_thread() -> None:
    server = FakeCoinbaseServer()

    async def trade() -> OrderStatus:
        conn = connector_for(server)
        try:
            return (await conn.create_order(market(Side.BUY, "0.002"), "bb-thread")).status
        finally:
            await conn.close()

    with server.run_in_thread():
        assert server.url.startswith("http://127.0.0.1:")
        assert asyncio.run(trade()) is OrderStatus.FILLED
    assert server.book.balance("BTC") == D("1.002")
