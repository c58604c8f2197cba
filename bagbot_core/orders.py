"""The value types that cross the plugin boundary: requests, exchange answers, markets.

All are frozen attrs classes and all money is :class:`~decimal.Decimal`: a connector never
sees a float from bagbot, and bagbot never trusts one from a connector.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from bagbot_core.status import OrderStatus


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


@attrs.frozen
class OrderRequest:
    """A validated order, as the risk checks and the connector see it.

    ``price`` is set for limit orders and ``None`` for market orders. ``params`` are the
    exchange-specific extras the connector declares (e.g. ``timeInForce``); the router checks
    them against ``Connector.allowed_params`` before anything else (:mod:`bagbot_core.params`).
    ``client_order_id`` is the caller's idempotency key, if the caller gave one.
    """

    symbol: str
    side: Side
    type: OrderType
    amount: Decimal
    price: Decimal | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    client_order_id: str | None = None
    #: The price the max-value check valued the order at (the limit price, or the ask/bid
    #: quoted for a market order). Set by the router before ``create_order``; a connector
    #: that must size a market order in quote currency uses it, so the order sent is the
    #: order that was checked.
    reference_price: Decimal | None = None

    @property
    def base(self) -> str:
        return self.symbol.split("/", 1)[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/", 1)[1]


@attrs.frozen
class ExchangeOrder:
    """What an exchange says about one order, mapped into bagbot's terms by the connector.

    ``raw_status`` keeps the exchange's own word (e.g. Binance ``PARTIALLY_FILLED``) for the
    audit trail; ``status`` is the mapped :class:`OrderStatus`.
    """

    external_id: str | None
    client_order_id: str | None
    status: OrderStatus
    symbol: str
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    amount: Decimal | None = None
    price: Decimal | None = None
    raw_status: str | None = None
    reason: str | None = None


@attrs.frozen
class Market:
    """One tradable pair as the connector knows it.

    ``amount_step``/``price_step`` are the increments the exchange accepts (``None``: any);
    ``min_amount``/``min_cost`` the smallest order it takes. ``active=False`` markets exist
    but refuse orders.
    """

    symbol: str
    base: str
    quote: str
    active: bool = True
    amount_step: Decimal | None = None
    price_step: Decimal | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    min_cost: Decimal | None = None


@attrs.frozen
class Quote:
    """Best bid and ask for a symbol, with the monotonic time it was taken.

    The max-value risk check prices a market buy at ``ask`` and a market sell at ``bid``.
    """

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    taken_at: float

    def reference_price(self, side: Side) -> Decimal | None:
        return self.ask if side is Side.BUY else self.bid
