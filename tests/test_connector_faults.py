"""A connector bug on the read path reaches callers as a bagbot error, never a bare exception.

``route_order`` already turns anything a connector raises while placing into ``unknown``;
sync, cancel and reconcile now do the same for their reads: ``ExchangeUnavailableError``
(safe to retry), the row unchanged, and reconcile goes on with the next row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.orm import Session

from bagbot_core.errors import ExchangeUnavailableError, OrderStatusUnknownError
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from tests.scripted import ScriptedExchange

LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.5",
             "price": "40000"}
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}


async def _break(router: Router, method: str, db: Session, **match: Any) -> None:
    """Make the cached scripted connector's ``method`` raise a plain ``KeyError`` (a parser
    bug), for orders matching ``match`` (all orders when empty)."""
    connector = await router.get_connector("scripted", database_url=str(db.get_bind().url))
    original = getattr(connector, method)

    async def broken(symbol: str, *, external_id: str | None, client_order_id: str) -> Any:
        given = {"symbol": symbol, "external_id": external_id,
                 "client_order_id": client_order_id}
        if all(given[k] == v for k, v in match.items()):
            raise KeyError("parser bug in connector")
        return await original(symbol, external_id=external_id, client_order_id=client_order_id)

    setattr(connector, method, broken)


async def test_sync_wraps_a_connector_bug(router: Router, db: Session) -> None:
    order = await router.route_order("scripted", LIMIT_BUY, db, "u")
    await _break(router, "fetch_order", db)
    with pytest.raises(ExchangeUnavailableError, match="unexpected KeyError"):
        await router.sync_order(db, order)
    assert order.status == OrderStatus.OPEN


async def test_cancel_wraps_a_connector_bug(router: Router, db: Session) -> None:
    order = await router.route_order("scripted", LIMIT_BUY, db, "u")
    await _break(router, "cancel_order", db)
    with pytest.raises(ExchangeUnavailableError, match="unexpected KeyError"):
        await router.cancel_order(db, order)
    assert order.status == OrderStatus.OPEN


async def test_reconcile_goes_on_past_a_connector_bug(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    unknown = []
    for _ in range(2):
        exchange.script("timeout_after_accept")
        with pytest.raises(OrderStatusUnknownError) as info:
            await router.route_order("scripted", MARKET_BUY, db, "u")
        unknown.append(info.value.order)
    first, second = unknown
    await _break(router, "fetch_order", db, client_order_id=first.client_order_id)
    changed = await router.reconcile(db, "scripted", grace=dt.timedelta(0))
    assert [o.id for o in changed] == [second.id]
    assert first.status == OrderStatus.UNKNOWN and second.status == OrderStatus.FILLED
