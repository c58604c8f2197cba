"""Lagging answers: the exchange's state merges into a row monotonically.

An answer older than the row -- less filled, an earlier status, anything after a terminal
status -- changes nothing and is logged as ``stale_answer``; it is never an error out of sync.
Fill and average price always come from the same answer.

The exchange is the scripted one of :mod:`tests.scripted` (a test sets what it answers next);
router, store and database are real.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy.orm import Session

from bagbot_core.exchange_state import Apply, RowState, Stale, merge_answer
from bagbot_core.models import Order
from bagbot_core.orders import ExchangeOrder, OrderType, Side
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus, can_transition
from tests.scripted import ScriptedExchange

D = Decimal
S = OrderStatus
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "1",
             "price": "40000"}


async def resting(router: Router, db: Session, exchange: ScriptedExchange
                  ) -> tuple[Order, Callable[..., ExchangeOrder]]:
    """A resting limit buy of 1 BTC and a way to set what the exchange answers about it."""
    order = await router.route_order("scripted", LIMIT_BUY, db, "u")
    placed = exchange.placed[order.client_order_id]
    opened = placed.state

    def answer(**fields: Any) -> ExchangeOrder:
        placed.state = attrs.evolve(opened, **fields)
        return placed.state

    return order, answer


def partial(qty: str, avg: str) -> dict[str, Any]:
    return {"status": S.PARTIALLY_FILLED, "filled_qty": D(qty), "avg_price": D(avg),
            "raw_status": "PARTIALLY_FILLED"}


async def test_an_older_partial_fill_keeps_the_newer_fill_and_its_average(
    router: Router, db: Session, exchange: ScriptedExchange,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order, answer = await resting(router, db, exchange)
    older = answer(**partial("0.2", "40000"))
    await router.sync_order(db, order.id)
    answer(**partial("0.4", "39000"))
    await router.sync_order(db, order.id)
    exchange.placed[order.client_order_id].state = older  # a replica that lags
    synced = await router.sync_order(db, order.id)
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.PARTIALLY_FILLED, D("0.4"), D(39000))
    (event,) = events("stale_answer")
    assert "0.2 filled, 0.4 is already recorded" in event["reason"]


async def test_a_lagging_new_after_a_partial_fill_is_a_no_op_not_an_error(
    router: Router, db: Session, exchange: ScriptedExchange,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order, answer = await resting(router, db, exchange)
    answer(**partial("0.4", "39000"))
    await router.sync_order(db, order.id)
    answer()  # NEW, nothing filled: what the exchange said before the fill
    synced = await router.sync_order(db, order.id)
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.PARTIALLY_FILLED, D("0.4"), D(39000))
    assert len(events("stale_answer")) == 1


async def test_nothing_moves_a_terminal_row(
    router: Router, db: Session, exchange: ScriptedExchange,
    events: Callable[[str], list[dict[str, Any]]],
) -> None:
    order, answer = await resting(router, db, exchange)
    answer(status=S.FILLED, filled_qty=D(1), avg_price=D(40000), raw_status="FILLED")
    await router.sync_order(db, order.id)
    for lagging in ({}, partial("0.4", "39000")):
        answer(**lagging)
        synced = await router.sync_order(db, order.id)
        assert (synced.status, synced.filled_qty, synced.avg_price) == (
            S.FILLED, D(1), D(40000))
    assert len(events("stale_answer")) == 2


async def test_a_later_status_moves_the_row_only_with_at_least_the_recorded_fill(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    order, answer = await resting(router, db, exchange)
    answer(**partial("0.4", "39000"))
    await router.sync_order(db, order.id)
    # canceled after 0.2 filled cannot be: 0.4 was seen filled; this answer is older.
    answer(status=S.CANCELED, filled_qty=D("0.2"), avg_price=D(40000), raw_status="CANCELED")
    synced = await router.sync_order(db, order.id)
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.PARTIALLY_FILLED, D("0.4"), D(39000))
    # The same fill with a later status: the status moves.
    answer(status=S.CANCELED, filled_qty=D("0.4"), avg_price=D(39000), raw_status="CANCELED")
    synced = await router.sync_order(db, order.id)
    assert (synced.status, synced.filled_qty, synced.avg_price) == (
        S.CANCELED, D("0.4"), D(39000))


# -- the merge as a state machine: answers of one order, delivered in any order ---------------


def _history(draw: Any) -> list[ExchangeOrder]:
    """What the exchange says about one limit buy of 1 over its life, oldest first."""
    steps = draw(st.lists(st.decimals(min_value=D("0.01"), max_value=1, places=2),
                          max_size=4))
    snapshots = [ExchangeOrder("x", "c", S.OPEN, "BTC/USDT", amount=D(1), raw_status="NEW")]
    filled, cost = D(0), D(0)
    for step in steps:
        qty = min(step, 1 - filled)
        if qty <= 0:
            break
        price = draw(st.decimals(min_value=39000, max_value=41000, places=0))
        filled, cost = filled + qty, cost + qty * price
        done = filled == 1
        snapshots.append(ExchangeOrder(
            "x", "c", S.FILLED if done else S.PARTIALLY_FILLED, "BTC/USDT",
            filled_qty=filled, avg_price=cost / filled, amount=D(1)))
        if done:
            break
    if filled < 1 and draw(st.booleans()):
        end = draw(st.sampled_from([S.CANCELED, S.EXPIRED]))
        snapshots.append(ExchangeOrder("x", "c", end, "BTC/USDT", filled_qty=filled,
                                       avg_price=cost / filled if filled else None,
                                       amount=D(1)))
    return snapshots


class LaggingReplicas(RuleBasedStateMachine):
    """A row fed the answers of one order's history in random order, repeated at will.

    Invariants: the fill never drops; every status change is a legal transition; fill and
    average price are always a pair from one answer; delivering the newest answer settles
    the row on it.
    """

    @initialize(history=st.composite(_history)())
    def start(self, history: list[ExchangeOrder]) -> None:
        self.history = history
        self.row = RowState(S.PENDING, D(1), order_type=OrderType.LIMIT, side=Side.BUY)
        self.seen: list[RowState] = [self.row]

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        answer = data.draw(st.sampled_from(self.history))
        self._merge(answer)

    @rule()
    def deliver_newest(self) -> None:
        newest = self.history[-1]
        self._merge(newest)
        assert (self.row.status, self.row.filled_qty) == (newest.status, newest.filled_qty)
        assert self.row.avg_price == newest.avg_price

    def _merge(self, answer: ExchangeOrder) -> None:
        decision = merge_answer(self.row, answer)
        assert isinstance(decision, Apply | Stale), decision
        if isinstance(decision, Apply):
            assert can_transition(self.row.status, decision.status)
            self.row = attrs.evolve(self.row, status=decision.status,
                                    filled_qty=decision.filled_qty,
                                    avg_price=decision.avg_price)
        self.seen.append(self.row)

    @invariant()
    def monotonic(self) -> None:
        if len(self.seen) >= 2:
            before, now = self.seen[-2], self.seen[-1]
            assert now.filled_qty >= before.filled_qty
            assert now.status == before.status or can_transition(before.status, now.status)

    @invariant()
    def fill_and_average_belong_together(self) -> None:
        pairs = {(a.filled_qty, a.avg_price) for a in self.history} | {(D(0), None)}
        assert (self.row.filled_qty, self.row.avg_price) in pairs


TestLaggingReplicas = LaggingReplicas.TestCase
