"""Quote-sized market buys: the base bought follows the price, within a declared bound.

Coinbase market buys are sent as ``quote_size = amount x reference ask``: when the price falls
between the quote and the fill, more base than the amount is bought, legitimately. Up to the
connector's ``market_buy_tolerance`` that is a fill; beyond it the answer does not add up and
the row is ``unknown``. The quote cache is kept long here so that the reference ask is the one
from before the price move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import bagbot_coinbase.plugin
import pytest
from bagbot_coinbase.testing import FakeCoinbaseServer
from sqlalchemy.orm import Session

from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.errors import OrderStatusUnknownError
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router

D = Decimal
MARKET_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.01"}


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    db = session_factory(get_engine(f"sqlite:///{tmp_path / 'orders.db'}"))()
    yield db
    db.close()
    dispose_engines()


@pytest.fixture
async def router(coinbase_server: FakeCoinbaseServer) -> AsyncIterator[Router]:
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("coinbase", bagbot_coinbase.plugin)])
    r = Router(registry, limits=RiskLimits(), allow_live=False, connector_config={
        "coinbase": {"api_key": coinbase_server.api_key,
                     "api_secret": coinbase_server.api_secret,
                     "api_url": coinbase_server.url, "enable_rate_limit": False, "timeout": 2,
                     "quote_max_age": 600}})
    yield r
    await r.aclose()


async def test_more_base_is_a_fill_within_the_bound_and_unknown_beyond(
    router: Router, session: Session, coinbase_server: FakeCoinbaseServer
) -> None:
    first = await router.route_order("coinbase", MARKET_BUY, session, "u")  # quotes 50000
    assert first.filled_qty == D("0.01")
    coinbase_server.book.set_price("BTC-USD", "48000")
    order = await router.route_order("coinbase", MARKET_BUY, session, "u")
    # 500 USD at 48000: 0.01041666 BTC, 4 % more than the amount -- and all of it real.
    assert (order.status, order.filled_qty, order.avg_price) == ("filled", D("0.01041666"),
                                                                 D(48000))
    coinbase_server.book.set_price("BTC-USD", "40000")  # 25 % more: not a price move
    with pytest.raises(OrderStatusUnknownError, match=r"0\.0125 filled of 0\.01 ordered"):
        await router.route_order("coinbase", MARKET_BUY, session, "u")
