"""Exchange answers that do not add up are never stored as fact.

At create time the row becomes ``unknown`` with the reason (the order may well be on the
exchange) and the caller gets ``OrderStatusUnknownError``; reconcile asks again. On sync or
reconcile the row keeps what it had, an ``inconsistent_answer`` event is logged, sync raises
``ExchangeUnavailableError`` (safe to retry) and reconcile goes on with the next row.

The exchange is the scripted one of :mod:`tests.scripted`, whose next create answers a test
rewrites; router, store and database are real.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from bagbot_core import hookimpl
from bagbot_core.connector import Connector, ConnectorSettings, ConnectorSpec
from bagbot_core.errors import ExchangeUnavailableError, OrderStatusUnknownError
from bagbot_core.exchange_state import Apply, Inconsistent, RowState, merge_answer
from bagbot_core.orders import ExchangeOrder, OrderRequest, OrderType, Side
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from tests.scripted import ScriptedConnector, ScriptedExchange

D = Decimal
S = OrderStatus
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "40000"}

Rewrite = Callable[[ExchangeOrder], ExchangeOrder]


@attrs.define
class Rewrites:
    """What the exchange's next create answers say instead of the truth (one per create)."""

    create: list[Rewrite] = attrs.Factory(list)


class RewritingConnector(ScriptedConnector):
    """The scripted exchange: the order is placed as scripted, the answer is rewritten."""

    def __init__(self, exchange: ScriptedExchange, settings: ConnectorSettings,
                 rewrites: Rewrites) -> None:
        super().__init__(exchange, settings)
        self.rewrites = rewrites
        self.market_buy_tolerance = D(str(settings.config.get("market_buy_tolerance", "0")))

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        state = await super().create_order(order, client_order_id)
        return self.rewrites.create.pop(0)(state) if self.rewrites.create else state


@pytest.fixture
def rewrites() -> Rewrites:
    return Rewrites()


@pytest.fixture
def registry(exchange: ScriptedExchange, rewrites: Rewrites) -> PluginRegistry:
    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Connector:
                return RewritingConnector(exchange, settings, rewrites)

            return [ConnectorSpec("scripted", factory, "scripted exchange, rewritten answers")]

    return PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("scripted", Plugin())])


@pytest.fixture
async def quote_sized(registry: PluginRegistry) -> AsyncIterator[Router]:
    """A router whose connector declares Coinbase-like slack for quote-sized market buys."""
    r = Router(registry, limits=RiskLimits(), allow_live=False,
               connector_config={"scripted": {"market_buy_tolerance": "0.1"}})
    yield r
    await r.aclose()


def evolve(**fields: Any) -> Rewrite:
    return lambda state: attrs.evolve(state, **fields)


async def route_unknown(router: Router, db: Session, payload: dict[str, str]) -> Any:
    with pytest.raises(OrderStatusUnknownError, match=r"does not add up.*do not resend") as info:
        await router.route_order("scripted", payload, db, "u")
    order = info.value.order
    assert order.status == S.UNKNOWN
    assert "does not add up" in (order.reason or "")
    return order


# -- at create time: unknown, then reconcile asks again -----------------------------------


async def test_filled_without_quantity_is_unknown_until_reconcile_reads_the_fill(
    router: Router, db: Session, exchange: ScriptedExchange, rewrites: Rewrites
) -> None:
    rewrites.create.append(evolve(filled_qty=D(0), avg_price=None, amount=None))
    order = await route_unknown(router, db, MARKET_BUY)
    assert "nothing filled" in order.reason and order.filled_qty == 0
    assert order.details["inconsistent_answer"]["status"] == "filled"
    assert order.external_id is None  # nothing from that answer is trusted
    changed = await router.reconcile(db, "scripted", grace=dt.timedelta(0))
    assert [o.id for o in changed] == [order.id]
    assert order.status == S.FILLED and order.filled_qty == D("0.001")
    assert order.avg_price == exchange.ask and exchange.create_calls == 1


@pytest.mark.parametrize(("rewrite", "words"), [
    (evolve(filled_qty=D(5)), "5 filled of 0.001 ordered"),
    (evolve(amount=D(50)), "order size 50 for 0.001 sent"),
    (evolve(status=S.CANCELED, filled_qty=D(-1), avg_price=None), "not a quantity"),
    (evolve(status=S.OPEN, filled_qty=D(0), avg_price=D(100)), "average price 100 without"),
    (evolve(status=S.PARTIALLY_FILLED, filled_qty=D("0.0005"), avg_price=None),
     "without an average price"),
    (evolve(filled_qty=D("0.0005"), amount=None), "status filled with 0.0005 of 0.001"),
    (evolve(avg_price=D(-5)), "average price -5"),
    (evolve(status=S.REJECTED), "rejected with 0.001 filled"),
    (evolve(status=S.PARTIALLY_FILLED, filled_qty=D(0), avg_price=None), "nothing filled"),
])
async def test_an_answer_that_does_not_add_up_leaves_unknown(
    router: Router, db: Session, rewrites: Rewrites, rewrite: Rewrite, words: str
) -> None:
    rewrites.create.append(rewrite)
    order = await route_unknown(router, db, MARKET_BUY)
    assert words in order.reason


async def test_filled_below_the_amount_needs_the_exchange_to_say_that_was_the_size(
    router: Router, db: Session, rewrites: Rewrites
) -> None:
    rewrites.create.append(evolve(filled_qty=D("0.0005"), amount=None))
    await route_unknown(router, db, MARKET_BUY)
    rewrites.create.append(evolve(filled_qty=D("0.0005"), amount=D("0.0005")))
    order = await router.route_order("scripted", MARKET_BUY, db, "u")
    assert order.status == S.FILLED and order.filled_qty == D("0.0005")


async def test_quote_sized_market_buys_may_fill_a_little_off_the_amount_within_a_bound(
    quote_sized: Router, router: Router, db: Session, rewrites: Rewrites
) -> None:
    for filled in ("0.00105", "0.00095"):  # the price fell: more base; it rose: less
        rewrites.create.append(evolve(filled_qty=D(filled), amount=None))
        order = await quote_sized.route_order("scripted", MARKET_BUY, db, "u")
        assert order.status == S.FILLED and order.filled_qty == D(filled)
    rewrites.create.append(evolve(filled_qty=D("0.0012"), amount=None))
    await route_unknown(quote_sized, db, MARKET_BUY)  # beyond the declared 10 %
    rewrites.create.append(evolve(filled_qty=D("0.00105"), amount=None))
    await route_unknown(router, db, MARKET_BUY)  # no slack declared
    rewrites.create.append(evolve(status=S.FILLED, filled_qty=D("0.00105"), avg_price=D(40000),
                                  amount=None))
    await route_unknown(quote_sized, db, LIMIT_BUY)  # a limit order is sized in base


# -- on sync and reconcile: the row keeps what it had -------------------------------------


async def test_sync_of_an_answer_that_does_not_add_up_changes_nothing_and_can_be_retried(
    router: Router, db: Session, exchange: ScriptedExchange,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order = await router.route_order("scripted", LIMIT_BUY, db, "u")
    placed = exchange.placed[order.client_order_id]
    truth = placed.state
    placed.state = attrs.evolve(truth, status=S.FILLED, filled_qty=D(0), raw_status="FILLED")
    with pytest.raises(ExchangeUnavailableError, match=r"does not add up.*unchanged"):
        await router.sync_order(db, order.id)
    db.expire_all()
    assert order.status == S.OPEN and order.filled_qty == 0 and order.avg_price is None
    (event,) = events("inconsistent_answer")
    assert "nothing filled" in event["reason"] and event["answer"]["status"] == "filled"
    placed.state = attrs.evolve(truth, status=S.FILLED, filled_qty=D("0.001"),
                                avg_price=D(40000), raw_status="FILLED")
    synced = await router.sync_order(db, order.id)  # asked again: now it adds up
    assert synced.status == S.FILLED and synced.filled_qty == D("0.001")


async def test_reconcile_keeps_an_unknown_row_and_goes_on_with_the_next(
    router: Router, db: Session, exchange: ScriptedExchange, rewrites: Rewrites,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    rewrites.create.append(evolve(filled_qty=D(0), avg_price=None))
    first = await route_unknown(router, db, MARKET_BUY)
    exchange.script("timeout_after_accept")
    with pytest.raises(OrderStatusUnknownError):
        await router.route_order("scripted", MARKET_BUY, db, "u")
    # The exchange keeps answering nonsense about the first order.
    placed = exchange.placed[first.client_order_id]
    placed.state = attrs.evolve(placed.state, filled_qty=D(7))
    changed = await router.reconcile(db, "scripted", grace=dt.timedelta(0))
    assert [o.status for o in changed] == [S.FILLED] and changed[0].id != first.id
    db.expire_all()
    assert first.status == S.UNKNOWN
    assert [e["reason"] for e in events("inconsistent_answer")][-1] == "7 filled of 0.001 ordered"


# -- the decision itself, for any answer ----------------------------------------------------

statuses = st.sampled_from(list(S))
amounts = st.one_of(st.none(), st.decimals(min_value=-2, max_value=3, places=4))


@given(row_status=statuses, filled=st.decimals(min_value=-1, max_value=3, places=4),
       avg=amounts, amount=amounts, status=statuses, market=st.booleans(),
       tolerance=st.sampled_from([D(0), D("0.1")]))
def test_only_answers_that_add_up_are_ever_applied(
    row_status: S, filled: Decimal, avg: Decimal | None, amount: Decimal | None, status: S,
    market: bool, tolerance: Decimal,
) -> None:
    qty = D(1)
    row = RowState(status=row_status, qty=qty, order_type=OrderType.MARKET if market
                   else OrderType.LIMIT, side=Side.BUY)
    answer = ExchangeOrder("x", "c", status, "BTC/USDT", filled_qty=filled, avg_price=avg,
                           amount=amount)
    decision = merge_answer(row, answer, market_buy_tolerance=tolerance)
    limit = qty * (1 + tolerance) if market else qty
    adds_up = (
        status not in (S.PENDING, S.UNKNOWN) and 0 <= filled <= limit
        and (amount is None or 0 < amount <= limit)
        and ((filled > 0 and avg is not None and avg > 0)
             or (filled == 0 and (avg is None or avg == 0)))
        and not (status in (S.FILLED, S.PARTIALLY_FILLED) and filled == 0)
        and not (status is S.REJECTED and filled > 0)
        and not (status is S.FILLED and filled < qty and not (market and tolerance)
                 and amount != filled)
    )
    assert isinstance(decision, Inconsistent) == (not adds_up)
    if isinstance(decision, Apply):
        assert 0 <= decision.filled_qty <= limit
        assert (decision.avg_price is None) == (decision.filled_qty == 0)
