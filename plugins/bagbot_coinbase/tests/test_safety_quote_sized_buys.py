"""Quote-sized market buys: the base bought follows the price, within a declared bound.

Coinbase market buys are sent as ``quote_size = amount x reference ask``: when the price falls
between the quote and the fill, more base than the amount is bought, legitimately. Up to the
connector's ``market_buy_tolerance`` that is a fill; beyond it the answer does not add up and
the row is ``unknown``. The quote cache is kept long here so that the reference ask is the one
from before the price move.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from bagbot_coinbase.testing import FakeCoinbaseServer
from sqlalchemy.orm import Session

from bagbot_core.errors import OrderStatusUnknownError
from bagbot_core.router import Router

D = Decimal
MARKET_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.01"}


async def test_more_base_is_a_fill_within_the_bound_and_unknown_beyond(
    make_router: Callable[..., Router], db: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    router = make_router(quote_max_age=600)
    first = await router.route_order("coinbase", MARKET_BUY, db, "u")  # quotes 50000
    assert first.filled_qty == D("0.01")
    coinbase_server.book.set_price("BTC-USD", "48000")
    order = await router.route_order("coinbase", MARKET_BUY, db, "u")
    # 500 USD at 48000: 0.01041666 BTC, 4 % more than the amount -- and all of it real.
    assert (order.status, order.filled_qty, order.avg_price) == ("filled", D("0.01041666"),
                                                                 D(48000))
    coinbase_server.book.set_price("BTC-USD", "40000")  # 25 % more: not a price move
    with pytest.raises(OrderStatusUnknownError, match=r"0\.0125 filled of 0\.01 ordered"):
        await router.route_order("coinbase", MARKET_BUY, db, "u")
