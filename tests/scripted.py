"""A scriptable in-process exchange for router tests.

It stands in for the *exchange*, not for any bagbot layer: the router, the store, the
database and the plugin manager under test are all real. Tests script what the exchange
does next (fill, rest, reject, time out after accepting) and inspect what it received.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from bagbot_core import hookimpl
from bagbot_core.connector import Connector, ConnectorSettings, ConnectorSpec
from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
)
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote
from bagbot_core.status import OrderStatus

MARKETS = {
    "BTC/USDT": Market("BTC/USDT", "BTC", "USDT", amount_step=Decimal("0.00001"),
                       price_step=Decimal("0.01"), min_amount=Decimal("0.00001"),
                       min_cost=Decimal("5")),
    "ETH/BTC": Market("ETH/BTC", "ETH", "BTC", amount_step=Decimal("0.0001")),
    "OLD/USDT": Market("OLD/USDT", "OLD", "USDT", active=False),
}


@attrs.define
class Placed:
    request: OrderRequest
    client_order_id: str
    state: ExchangeOrder


@attrs.define
class ScriptedExchange:
    """The exchange's side: a book of placed orders plus the next scripted behaviour."""

    bid: Decimal = Decimal("49990")
    ask: Decimal = Decimal("50010")
    #: One of: fill, rest, reject, timeout_after_accept, timeout_before_accept, crash,
    #: reject_status (a 200 answer with status rejected), hang.
    next_behaviour: list[str] = attrs.Factory(list)
    placed: dict[str, Placed] = attrs.Factory(dict)
    create_calls: int = 0
    factory_calls: int = 0
    quote_calls: int = 0
    #: Raised by ``fetch_quote`` while set (the exchange's ticker is down).
    quote_error: Exception | None = None
    #: Called once an order is accepted, before the answer is returned (a fault between
    #: the exchange taking the order and bagbot recording it).
    after_accept: Any = None
    ids: Any = attrs.Factory(lambda: itertools.count(1000))

    def script(self, *behaviours: str) -> None:
        self.next_behaviour.extend(behaviours)


class ScriptedConnector(Connector):
    name = "scripted"

    def __init__(self, exchange: ScriptedExchange, settings: ConnectorSettings) -> None:
        self.exchange = exchange
        self.settings = settings
        self.closed = False

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, Market]:
        return MARKETS

    async def fetch_quote(self, symbol: str) -> Quote:
        self.exchange.quote_calls += 1
        if self.exchange.quote_error is not None:
            raise self.exchange.quote_error
        return Quote(symbol, self.exchange.bid, self.exchange.ask, time.monotonic())

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        ex = self.exchange
        ex.create_calls += 1
        behaviour = ex.next_behaviour.pop(0) if ex.next_behaviour else (
            "fill" if order.type is OrderType.MARKET else "rest")
        if behaviour == "reject":
            raise ExchangeRejectedError("Account has insufficient balance for requested action.")
        if behaviour == "timeout_before_accept":
            raise ExchangeUnavailableError("RequestTimeout: scripted timeout")
        if behaviour == "crash":
            raise KeyError("parser bug in connector")
        if behaviour == "hang":
            await asyncio.sleep(3600)
        external_id = str(next(ex.ids))
        if behaviour in ("fill", "timeout_after_accept"):
            price = order.price or (ex.ask if order.side == "buy" else ex.bid)
            state = ExchangeOrder(external_id, client_order_id, OrderStatus.FILLED, order.symbol,
                                  filled_qty=order.amount, avg_price=price, amount=order.amount,
                                  raw_status="FILLED")
        elif behaviour == "reject_status":
            state = ExchangeOrder(external_id, client_order_id, OrderStatus.REJECTED,
                                  order.symbol, raw_status="REJECTED", reason="post-only would "
                                  "take liquidity")
        else:
            state = ExchangeOrder(external_id, client_order_id, OrderStatus.OPEN, order.symbol,
                                  amount=order.amount, price=order.price, raw_status="NEW")
        ex.placed[client_order_id] = Placed(order, client_order_id, state)
        if ex.after_accept is not None:
            ex.after_accept()
        if behaviour == "timeout_after_accept":
            raise ExchangeUnavailableError("RequestTimeout: the response never came back")
        return state

    def _find(self, external_id: str | None, client_order_id: str) -> Placed:
        placed = self.exchange.placed.get(client_order_id)
        if placed is None or (external_id and placed.state.external_id != external_id):
            raise ExchangeOrderNotFoundError(f"Order does not exist: {client_order_id}")
        return placed

    async def fetch_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        return self._find(external_id, client_order_id).state

    async def cancel_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        placed = self._find(external_id, client_order_id)
        if placed.state.status.is_terminal:
            raise ExchangeRejectedError("Unknown order sent.")
        placed.state = attrs.evolve(placed.state, status=OrderStatus.CANCELED,
                                    raw_status="CANCELED")
        return placed.state

    async def close(self) -> None:
        self.closed = True


def fill(exchange: ScriptedExchange, client_order_id: str, qty: Decimal | None = None,
         price: Decimal | None = None) -> None:
    """The exchange fills (part of) a resting order, as a market move would."""
    placed = exchange.placed[client_order_id]
    amount = placed.request.amount
    filled = amount if qty is None else qty
    placed.state = attrs.evolve(
        placed.state, filled_qty=filled, avg_price=price or placed.request.price,
        status=OrderStatus.FILLED if filled >= amount else OrderStatus.PARTIALLY_FILLED,
        raw_status="FILLED" if filled >= amount else "PARTIALLY_FILLED",
    )


def scripted_plugin(exchange: ScriptedExchange) -> object:
    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Connector:
                exchange.factory_calls += 1
                return ScriptedConnector(exchange, settings)

            return [ConnectorSpec("scripted", factory, "scriptable test exchange")]

    return Plugin()
