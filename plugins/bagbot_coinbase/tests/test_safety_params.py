"""``params`` can no longer turn a Coinbase order into a different one -- through the real
router, the Coinbase connector, ccxt and the fake Advanced Trade server.

Before the params allowlist an ``order_configuration`` in params bought 1.98 BTC while the
row said 0.001, and ``product_id`` turned a "BTC/USD" buy row into an ETH sale. Only
``postOnly`` (limit orders) passes now. The property test over arbitrary params runs in the
conformance suite (test_conformance).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from bagbot_coinbase.connector import CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer
from sqlalchemy.orm import Session

from bagbot_core.errors import ExchangeRejectedError, OrderValidationError
from bagbot_core.models import Order
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.router import Router

D = Decimal
ORDERS = "/api/v3/brokerage/orders"
MARKET_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.001"}
LIMIT_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "45000"}


def bodies(server: FakeCoinbaseServer) -> list[dict[str, Any]]:
    """The JSON body of every order placement that reached the server."""
    return [json.loads(r.body) for r in server.requests_to(ORDERS, "POST")]


@pytest.mark.parametrize(
    ("payload", "params", "named"),
    [
        # the reproductions: 1.98 BTC bought on a 0.001 row; a BTC buy row, an ETH sale
        (MARKET_BUY, {"order_configuration": {"market_market_ioc": {"quote_size": "99000"}}},
         "order_configuration"),
        (MARKET_BUY, {"product_id": "ETH-USD", "side": "SELL"}, "product_id"),
        # the order's other fields, as Coinbase and ccxt spell them
        (MARKET_BUY, {"cost": "99000"}, "cost"),
        (MARKET_BUY, {"side": "SELL"}, "side"),
        (LIMIT_BUY, {"client_order_id": "evil1"}, "client_order_id"),
        (LIMIT_BUY, {"clientOrderId": "evil1"}, "clientOrderId"),
        (LIMIT_BUY, {"stop_price": "40000"}, "stop_price"),
        (LIMIT_BUY, {"stopPrice": "40000"}, "stopPrice"),
        (LIMIT_BUY, {"preview": True}, "preview"),
        (LIMIT_BUY, {"retail_portfolio_id": "other-portfolio"}, "retail_portfolio_id"),
        (LIMIT_BUY, {"leverage": "5"}, "leverage"),
        # not declared, wrong type, wrong order type
        (LIMIT_BUY, {"timeInForce": "IOC"}, "timeInForce"),
        (LIMIT_BUY, {"end_time": "2030-01-01T00:00:00Z"}, "end_time"),
        (LIMIT_BUY, {"postOnly": "true"}, "postOnly"),
        (LIMIT_BUY, {"postOnly": 1}, "postOnly"),
        (MARKET_BUY, {"postOnly": True}, "postOnly"),
    ],
)
async def test_params_that_are_not_declared_are_refused_before_anything_is_sent(
    router: Router, db: Session, coinbase_server: FakeCoinbaseServer,
    payload: dict[str, Any], params: dict[str, Any], named: str,
) -> None:
    with pytest.raises(OrderValidationError, match=named) as info:
        await router.route_order("coinbase", {**payload, "params": params}, db, "mallory")
    order = info.value.order
    assert (order.status, order.symbol, order.side, order.qty) == (
        "rejected", "BTC/USD", "buy", D("0.001"))
    assert db.query(Order).count() == 1
    assert bodies(coinbase_server) == [], "a placement reached the exchange"
    assert coinbase_server.book.orders == {}


async def test_post_only_reaches_coinbase_and_nothing_else_changes(
    router: Router, db: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    order = await router.route_order("coinbase", {**LIMIT_BUY, "params": {"postOnly": True}},
                                     db, "alice")
    assert order.status == "open"
    (body,) = bodies(coinbase_server)
    assert (body["product_id"], body["side"], body["client_order_id"]) == (
        "BTC-USD", "BUY", order.client_order_id)
    assert body["order_configuration"] == {"limit_limit_gtc": {
        "base_size": "0.001", "limit_price": "45000", "post_only": True}}
    assert D("0.001") == order.qty and D("45000") == order.price


async def test_a_crossing_post_only_order_is_the_exchange_refusal(
    router: Router, db: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    """Declared and valid, so it is sent; Coinbase refuses it and nothing is placed."""
    crossing = {**LIMIT_BUY, "price": "50500", "params": {"postOnly": True}}
    with pytest.raises(ExchangeRejectedError, match="POST_ONLY") as info:
        await router.route_order("coinbase", crossing, db, "alice")
    assert info.value.order.status == "rejected"
    assert len(bodies(coinbase_server)) == 1
    assert coinbase_server.book.orders == {}


async def test_a_direct_caller_cannot_pass_params_past_the_connector(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer
) -> None:
    order = OrderRequest("BTC/USD", Side.BUY, OrderType.MARKET, D("0.001"),
                         params={"product_id": "ETH-USD"})
    with pytest.raises(ExchangeRejectedError, match="nothing was sent"):
        await loaded.create_order(order, "bb-mine")
    assert bodies(coinbase_server) == []
