"""An exchange that answers instantly, in process: isolates bagbot's own per-order cost.

Registered as the ``null`` connector by :func:`registry_plugin`. Markets and the quote are
constants; every order fills at once at the ask. No I/O of any kind.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal

from bagbot_core.connector import Capabilities, Connector, ConnectorSettings, ConnectorSpec
from bagbot_core.markers import hookimpl
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, Quote
from bagbot_core.status import OrderStatus

MARKET = Market("BTC/USDT", "BTC", "USDT", amount_step=Decimal("0.00001"),
                price_step=Decimal("0.01"), min_amount=Decimal("0.00001"), min_cost=Decimal("5"))
ASK = Decimal("50000")


class NullConnector(Connector):
    name = "null"
    capabilities = Capabilities(market_orders=True, limit_orders=True,
                                fills_in_create_response=True)

    def __init__(self, settings: ConnectorSettings) -> None:
        self._ids = itertools.count(1)
        self._markets = {MARKET.symbol: MARKET}

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, Market]:
        return self._markets

    async def fetch_quote(self, symbol: str) -> Quote:
        return Quote(symbol=symbol, bid=ASK, ask=ASK, taken_at=time.monotonic())

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        return ExchangeOrder(
            external_id=str(next(self._ids)), client_order_id=client_order_id,
            status=OrderStatus.FILLED, symbol=order.symbol, filled_qty=order.amount,
            avg_price=ASK, amount=order.amount, price=order.price, raw_status="FILLED",
        )

    async def fetch_order(self, symbol: str, *, external_id: str | None,
                          client_order_id: str) -> ExchangeOrder:
        raise NotImplementedError

    async def cancel_order(self, symbol: str, *, external_id: str | None,
                           client_order_id: str) -> ExchangeOrder:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class NullPlugin:
    @hookimpl
    def bagbot_add_connectors(self) -> Sequence[ConnectorSpec]:
        return [ConnectorSpec("null", NullConnector, "instant in-process exchange (benchmarks)")]
