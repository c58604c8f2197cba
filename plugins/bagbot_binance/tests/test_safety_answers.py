"""Binance answers that do not add up, and answers that lag, through the real fake server.

The book behind the fake is right; only what the client hears is rewritten
(:meth:`FakeBinanceServer.patch_answers`). The router, the Binance connector, ccxt and a
SQLite database are real.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from bagbot_binance.testing import FakeBinanceServer
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.errors import OrderStatusUnknownError
from bagbot_core.models import Order
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus

D = Decimal
S = OrderStatus
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.002",
             "price": "49500"}


@pytest.fixture
async def router(make_router: Callable[..., Router]) -> Router:
    return make_router(timeout=5)


@pytest.fixture
def events() -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, force=True)

    def named(name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [e for e in lines if e.get("event") == name]

    yield named
    audit.configure(force=True)


async def route_unknown(router: Router, db: Session) -> Order:
    with pytest.raises(OrderStatusUnknownError, match="does not add up") as info:
        await router.route_order("binance", MARKET_BUY, db, "u")
    order = info.value.order
    assert order.status == S.UNKNOWN and order.external_id is None
    return order


async def reconciled(router: Router, db: Session, order: Order) -> Order:
    changed = await router.reconcile(db, "binance", grace=dt.timedelta(0))
    assert [o.id for o in changed] == [order.id]
    return changed[0]


async def test_200_filled_without_quantity_fields_is_unknown_until_reconcile(
    router: Router, db: Session, binance_server: FakeBinanceServer
) -> None:
    binance_server.patch_answers({"executedQty": None, "cummulativeQuoteQty": None,
                                  "fills": None})
    order = await route_unknown(router, db)
    assert "status filled (FILLED) with nothing filled" in (order.reason or "")
    assert order.filled_qty == 0
    (placed,) = binance_server.book.orders_with_client_id(order.client_order_id)
    assert placed.status == "filled"  # the exchange did fill it
    order = await reconciled(router, db, order)
    assert (order.status, order.filled_qty, order.avg_price) == (S.FILLED, D("0.001"),
                                                                   D(50000))
    assert order.external_id == str(placed.order_id)


async def test_executed_qty_5_for_orig_qty_0_001_is_unknown_until_reconcile(
    router: Router, db: Session, binance_server: FakeBinanceServer
) -> None:
    binance_server.patch_answers({"executedQty": "5.00000000"})
    order = await route_unknown(router, db)
    assert "5 filled of 0.001 ordered" in (order.reason or "")
    order = await reconciled(router, db, order)
    assert (order.status, order.filled_qty) == (S.FILLED, D("0.001"))


async def resting(router: Router, db: Session, server: FakeBinanceServer
                  ) -> tuple[Order, int]:
    order = await router.route_order("binance", LIMIT_BUY, db, "u")
    assert order.status == S.OPEN
    return order, int(order.external_id or 0)


async def test_a_lagging_partially_filled_keeps_the_newer_fill_and_its_average(
    router: Router, db: Session, binance_server: FakeBinanceServer,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order, order_id = await resting(router, db, binance_server)
    book = binance_server.book
    book.fill(order_id, D("0.0005"), D("49500"))
    await router.sync_order(db, order.id)
    older = binance_server.order_json(book.get(order_id))  # PARTIALLY_FILLED 0.0005 @ 49500
    book.fill(order_id, D("0.0005"), D("49000"))
    synced = await router.sync_order(db, order.id)
    assert (synced.filled_qty, synced.avg_price) == (D("0.001"), D(49250))
    binance_server.patch_answers(older)
    synced = await router.sync_order(db, order.id)
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.PARTIALLY_FILLED, D("0.001"), D(49250))
    (event,) = events("stale_answer")
    assert event["answer"]["exchange_status"] == "PARTIALLY_FILLED"


async def test_a_lagging_new_after_a_partial_fill_is_a_no_op(
    router: Router, db: Session, binance_server: FakeBinanceServer,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order, order_id = await resting(router, db, binance_server)
    book = binance_server.book
    new = binance_server.order_json(book.get(order_id))  # NEW, nothing executed
    book.fill(order_id, D("0.0005"), D("49500"))
    await router.sync_order(db, order.id)
    binance_server.patch_answers(new)
    synced = await router.sync_order(db, order.id)  # no IllegalTransitionError
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.PARTIALLY_FILLED, D("0.0005"), D(49500))
    assert [e["answer"]["exchange_status"] for e in events("stale_answer")] == ["NEW"]
