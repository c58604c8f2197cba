"""A refusal named ``UNKNOWN_FAILURE_REASON`` is stored with its specific failure reason.

Coinbase answers ``success: false`` with ``error: UNKNOWN_FAILURE_REASON``, an empty
``message`` and the real cause in ``preview_failure_reason`` (or ``new_order_failure_reason``).
:data:`RECORDED` is that answer as ccxt recorded it from the real API (the example in ccxt's
``coinbase.handle_errors``); the fake server sends it verbatim.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from bagbot_coinbase.connector import CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer
from sqlalchemy.orm import Session

from bagbot_core.errors import ExchangeRejectedError
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.router import Router

ORDERS = "/api/v3/brokerage/orders"
LIMIT_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "limit", "amount": "0.01",
             "price": "40000"}

RECORDED: dict[str, Any] = {
    "success": False,
    "error_response": {
        "error": "UNKNOWN_FAILURE_REASON",
        "message": "",
        "error_details": "",
        "preview_failure_reason": "PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE",
    },
    "order_configuration": {
        "stop_limit_stop_limit_gtc": {
            "base_size": "0.0001",
            "limit_price": "2000",
            "stop_price": "2005",
            "stop_direction": "STOP_DIRECTION_STOP_DOWN",
            "reduce_only": False,
        },
    },
}


def refusal(**failure: str) -> dict[str, Any]:
    """:data:`RECORDED` with other ``error_response`` fields."""
    return {**RECORDED, "error_response": {**RECORDED["error_response"], **failure}}


async def test_the_recorded_refusal_is_stored_with_its_preview_failure_reason(
    router: Router, db: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    coinbase_server.fail_http(200, json.dumps(RECORDED), method="POST", path=ORDERS)
    with pytest.raises(ExchangeRejectedError,
                       match="PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE") as info:
        await router.route_order("coinbase", LIMIT_BUY, db, "u")
    row = info.value.order
    assert row.status == "rejected"
    assert "PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE" in (row.reason or "")
    assert "UNKNOWN_FAILURE_REASON" not in (row.reason or "")


@pytest.mark.parametrize(("answer", "reason", "absent"), [
    (refusal(new_order_failure_reason="INSUFFICIENT_FUND",
             preview_failure_reason="UNKNOWN_PREVIEW_FAILURE_REASON"),
     "coinbase INSUFFICIENT_FUND", "UNKNOWN_"),
    (refusal(new_order_failure_reason="UNKNOWN_FAILURE_REASON",
             error_details="limit price too far from market"),
     "coinbase PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE: limit price too far from market",
     "UNKNOWN_"),
    (refusal(preview_failure_reason="UNKNOWN_PREVIEW_FAILURE_REASON"),
     "coinbase refused the order without a reason", "UNKNOWN_FAILURE_REASON: UNKNOWN"),
])
async def test_the_most_specific_failure_reason_names_the_refusal(
    loaded: CoinbaseConnector, coinbase_server: FakeCoinbaseServer, answer: dict[str, Any],
    reason: str, absent: str,
) -> None:
    coinbase_server.fail_http(200, json.dumps(answer), method="POST", path=ORDERS)
    order = OrderRequest("BTC/USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"),
                         Decimal("40000"))
    with pytest.raises(ExchangeRejectedError) as info:
        await loaded.create_order(order, "bb-refused")
    message = str(info.value)
    assert reason.removeprefix("coinbase ") in message and absent not in message
    assert coinbase_server.book.orders_with_client_id("bb-refused") == []
