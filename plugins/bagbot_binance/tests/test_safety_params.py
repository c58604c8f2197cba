"""``params`` can no longer carry a Binance order past the risk checks or out of reconcile's
sight -- through the real router, the Binance connector, ccxt and the fake server.

Each attack is one the params allowlist closes: ``quantity``/``quoteOrderQty``/``cost``
bought far past the limits while the row said 0.001, ``price`` sent a limit the row did not
hold, and ``newClientOrderId`` placed the order under an id reconcile never looks for.
The property test over arbitrary params runs in the conformance suite (test_conformance).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest
from bagbot_binance.connector import BinanceConnector
from bagbot_binance.testing import FakeBinanceServer
from sqlalchemy.orm import Session

from bagbot_core.errors import (
    ExchangeRejectedError,
    OrderStatusUnknownError,
    OrderValidationError,
)
from bagbot_core.models import Order
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.router import Router

D = Decimal
ORDER_PATH = "/api/v3/order"
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "45000"}


def posts(server: FakeBinanceServer) -> list[dict[str, str]]:
    """The form fields of every order placement that reached the server."""
    return [dict(parse_qsl(r.query + "&" + r.body)) for r in server.requests_to(ORDER_PATH, "POST")]


def rows(db: Session) -> list[Order]:
    db.expire_all()
    return list(db.query(Order).order_by(Order.id))


@pytest.mark.parametrize(
    ("payload", "params", "named"),
    [
        # the reproductions: 50 BTC past a 10 BTC limit, 18 BTC bought by value,
        # a limit at 60000 stored at 5
        (MARKET_BUY, {"quantity": "50"}, "quantity"),
        (MARKET_BUY, {"quoteOrderQty": "900000"}, "quoteOrderQty"),
        (MARKET_BUY, {"cost": "900000"}, "cost"),
        ({**LIMIT_BUY, "price": "5"}, {"price": "60000"}, "price"),
        # the order's other fields, as Binance and ccxt spell them
        (MARKET_BUY, {"newClientOrderId": "evil1"}, "newClientOrderId"),
        (MARKET_BUY, {"clientOrderId": "evil1"}, "clientOrderId"),
        (MARKET_BUY, {"symbol": "ETHUSDT"}, "symbol"),
        (MARKET_BUY, {"side": "SELL"}, "side"),
        (LIMIT_BUY, {"type": "MARKET"}, "type"),
        (LIMIT_BUY, {"stopPrice": "40000"}, "stopPrice"),
        (LIMIT_BUY, {"triggerPrice": "40000"}, "triggerPrice"),
        (MARKET_BUY, {"test": True}, "test"),
        (MARKET_BUY, {"newOrderRespType": "ACK"}, "newOrderRespType"),
        # declared names: other spellings, values outside the choices, wrong order type
        (LIMIT_BUY, {"TimeInForce": "GTC"}, "TimeInForce"),
        (LIMIT_BUY, {"timeInForce": "GTX"}, "timeInForce"),
        (LIMIT_BUY, {"timeInForce": "ioc"}, "timeInForce"),
        (MARKET_BUY, {"timeInForce": "IOC"}, "timeInForce"),
        (LIMIT_BUY, {"selfTradePreventionMode": "NONE"}, "selfTradePreventionMode"),
        (LIMIT_BUY, {"selfTradePreventionMode": ["EXPIRE_BOTH"]}, "selfTradePreventionMode"),
    ],
)
async def test_params_that_are_not_declared_are_refused_before_anything_is_sent(
    router: Router, db: Session, binance_server: FakeBinanceServer,
    payload: dict[str, Any], params: dict[str, Any], named: str,
) -> None:
    with pytest.raises(OrderValidationError, match=named) as info:
        await router.route_order("binance", {**payload, "params": params}, db, "mallory")
    order = info.value.order
    assert (order.status, order.qty, order.price) == (
        "rejected", D(payload["amount"]), D(payload["price"]) if "price" in payload else None)
    assert [r.id for r in rows(db)] == [order.id]
    assert posts(binance_server) == [], "a placement reached the exchange"
    assert binance_server.book.orders == {}


async def test_declared_params_reach_binance_and_nothing_else_changes(
    router: Router, db: Session, binance_server: FakeBinanceServer
) -> None:
    params = {"timeInForce": "IOC", "selfTradePreventionMode": "EXPIRE_BOTH"}
    order = await router.route_order("binance", {**LIMIT_BUY, "params": params}, db, "alice")
    assert order.status == "expired"  # IOC: nothing crossed at 45000, the rest expired
    (sent,) = posts(binance_server)
    assert sent["timeInForce"] == "IOC" and sent["selfTradePreventionMode"] == "EXPIRE_BOTH"
    assert (sent["symbol"], sent["side"], sent["type"]) == ("BTCUSDT", "BUY", "LIMIT")
    assert D(sent["quantity"]) == order.qty == D("0.001")
    assert D(sent["price"]) == order.price == D("45000")
    assert sent["newClientOrderId"] == order.client_order_id


async def test_dropped_answer_with_a_hostile_client_id_cannot_hide_an_order(
    router: Router, db: Session, binance_server: FakeBinanceServer
) -> None:
    """Issue item 3: ``newClientOrderId`` in params plus an answer dropped after the order
    was placed used to leave a filled order on Binance under ``evil1`` and a row reconcile
    marked ``rejected`` ("never reached the exchange"). Now it never leaves bagbot."""
    fault = binance_server.drop_after_accept(method="POST", path=ORDER_PATH)
    with pytest.raises(OrderValidationError, match="newClientOrderId") as info:
        await router.route_order(
            "binance", {**MARKET_BUY, "params": {"newClientOrderId": "evil1"}}, db, "mallory")
    refused = info.value.order
    assert refused.status == "rejected" and refused.external_id is None
    assert fault in binance_server.faults, "the request reached the server"
    assert posts(binance_server) == []
    assert binance_server.book.orders_with_client_id("evil1") == []
    assert binance_server.book.orders_with_client_id(refused.client_order_id) == []

    # The armed drop now hits a clean order: unknown, then reconcile finds it by bagbot's id.
    with pytest.raises(OrderStatusUnknownError) as lost:
        await router.route_order("binance", MARKET_BUY, db, "alice")
    changed = await router.reconcile(db, "binance", grace=dt.timedelta(0))
    assert [o.id for o in changed] == [lost.value.order.id]
    assert lost.value.order.status == "filled"
    # Whatever the exchange holds has a row that says so; a rejected row holds nothing.
    for row in rows(db):
        held = binance_server.book.orders_with_client_id(row.client_order_id)
        assert len(held) == (0 if row.status == "rejected" else 1), row.status
    assert len(binance_server.book.orders) == 1
    assert binance_server.book.orders_with_client_id("evil1") == []


async def test_a_direct_caller_cannot_pass_params_past_the_connector(
    loaded: BinanceConnector, binance_server: FakeBinanceServer
) -> None:
    """The connector checks again for code that calls it without the router: refused,
    nothing sent, and the exchange holds no order for the smuggled id."""
    order = OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, D("0.001"),
                         params={"newClientOrderId": "evil1"})
    with pytest.raises(ExchangeRejectedError, match="nothing was sent"):
        await loaded.create_order(order, "bb-mine")
    assert posts(binance_server) == []
    assert binance_server.book.orders_with_client_id("evil1") == []


async def test_bagbot_client_order_id_wins_in_the_request_ccxt_builds(
    loaded: BinanceConnector,
) -> None:
    """Defence in depth: the connector's own params go last, under the name ccxt reads
    first, so a hostile ``newClientOrderId`` could not replace bagbot's id even if it got
    this far. (ccxt prefers ``newClientOrderId`` to ``clientOrderId``.)"""
    order = OrderRequest("BTC/USDT", Side.BUY, OrderType.LIMIT, D("0.001"), D("45000"))
    params = {"newClientOrderId": "evil1", **loaded.create_params(order, "bb-mine")}
    request = loaded.exchange.create_order_request(
        "BTC/USDT", "limit", "buy", "0.001", "45000", params)
    assert request["newClientOrderId"] == "bb-mine"
