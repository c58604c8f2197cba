"""route_order end to end: the real Router, plugins discovered by entry point, a SQLite file,
the Coinbase connector and the fake Advanced Trade server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import pytest
from bagbot_coinbase.testing import FakeCoinbaseServer
from sqlalchemy.orm import Session

from bagbot_core.errors import OrderStatusUnknownError
from bagbot_core.plugins import PluginRegistry
from bagbot_core.router import Router

D = Decimal


@pytest.fixture
async def router(make_router: Callable[..., Router]) -> Router:
    """Plugins discovered by entry point, as an installed bagbot finds them."""
    return make_router(registry=PluginRegistry())


async def test_route_sync_cancel_and_reconcile_through_the_router(
    router: Router, db: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    book = coinbase_server.book

    filled = await router.route_order(
        "coinbase", {"symbol": "BTC/USD", "side": "sell", "type": "market", "amount": "0.01"},
        db, "alice")
    assert (filled.status, filled.filled_qty, filled.avg_price) == ("filled", D("0.01"),
                                                                     D("50000"))
    assert filled.exchange_status == "FILLED"
    (placed,) = book.orders_with_client_id(filled.client_order_id)
    assert filled.external_id == coinbase_server.order_id(placed)

    resting = await router.route_order(
        "coinbase", {"symbol": "BTC/USD", "side": "buy", "type": "limit", "amount": "0.01",
                     "price": "40000.004"}, db, "alice")
    assert resting.status == "open" and resting.price == D("40000")  # rounded down a tick
    canceled = await router.cancel_order(db, resting)
    assert canceled.status == "canceled"
    assert book.balance("USD") == D("100000") + D("500")

    coinbase_server.drop_after_accept(method="POST", path="/api/v3/brokerage/orders")
    with pytest.raises(OrderStatusUnknownError) as info:
        await router.route_order(
            "coinbase", {"symbol": "BTC/USD", "side": "buy", "type": "market",
                         "amount": "0.001"}, db, "alice")
    lost = info.value.order
    assert lost.status == "unknown"
    changed = await router.reconcile(db, "coinbase", grace=dt.timedelta(0))
    assert [o.id for o in changed] == [lost.id]
    assert (lost.status, lost.filled_qty) == ("filled", D("0.001"))
    assert len(book.orders_with_client_id(lost.client_order_id)) == 1
    posts = coinbase_server.requests_to("/api/v3/brokerage/orders", "POST")
    assert len(posts) == 3  # nothing was ever resent
    assert len(coinbase_server.requests_to("/api/v3/brokerage/market/products")) == 1
