"""The ``notional_buckets`` aggregate: ``History.notional_since`` read from it equals the
row-by-row answer, exactly, on both backends, whatever was written and by which path; and
the migration fills it from the rows already there."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import itertools
from collections import defaultdict
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bagbot_core import store
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import IllegalTransitionError
from bagbot_core.history import ALL_USERS, History, order_value_usd
from bagbot_core.models import NotionalBucket, Order, Position, utcnow
from bagbot_core.notional import hour_of, rebuild
from bagbot_core.orders import ExchangeOrder
from bagbot_core.risk_controls import day_start
from bagbot_core.status import OrderStatus

STEP = Decimal("0.00000001")
NOW = utcnow()
EXACT = decimal.Context(prec=200, traps=[decimal.Inexact])
money = st.decimals(min_value=STEP, max_value=Decimal("100000"), places=8)
# Clock skew: rows dated up to two days back or a day ahead (another process's clock), on
# and off the hour,
# and off the hour, often in the same hours as the windows' edges (on a coarse grid).
HOUR = NOW.replace(minute=0, second=0, microsecond=0) - NOW
SKEW = st.one_of(
    st.integers(-2 * 86_400, 86_400).map(lambda s: dt.timedelta(seconds=s)),
    st.builds(lambda h, m, us: HOUR + dt.timedelta(hours=h, minutes=m, microseconds=us),
              st.integers(-26, 3), st.sampled_from([0, 1, 30, 59]), st.sampled_from([0, 1])))
NEW_ROW = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u", "v"]),
    "connector": st.sampled_from(["c1", "c2"]),
    "testnet": st.booleans(),
    "symbol": st.sampled_from(["BTC/USDT", "BTC/USD", "ETH/BTC", "ETH/USDT"]),
    "side": st.sampled_from(["buy", "sell"]),
    "qty": money, "price": money, "usd": st.booleans(), "skew": SKEW,
})
STATUSES = [OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED,
            OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED,
            OrderStatus.UNKNOWN]
FRACTIONS = [Decimal(0), Decimal("0.25"), Decimal("0.5"), Decimal(1)]
# One step of a router's life (index: which row it acts on).
STEP_ACTIONS = st.one_of(
    st.tuples(st.just("insert"), NEW_ROW),  # the pending row, store's Core INSERT
    st.tuples(st.just("orm_insert"), NEW_ROW, st.sampled_from(list(OrderStatus)),
              st.sampled_from(FRACTIONS)),  # a row written through the ORM, any state
    st.tuples(st.just("answer"), st.integers(0, 9), st.sampled_from(STATUSES),
              st.sampled_from(FRACTIONS), money),  # exchange's answer, Core UPDATE
    st.tuples(st.just("answer_orm"), st.integers(0, 9), st.sampled_from(STATUSES),
              st.sampled_from(FRACTIONS), money),  # the same while the session is dirty
    st.tuples(st.just("set_status"), st.integers(0, 9), st.sampled_from(STATUSES)),
    st.tuples(st.just("edit"), st.integers(0, 9), st.one_of(st.none(), money),
              st.one_of(st.none(), money)),  # notional_usd / avg_price edited
    st.tuples(st.just("move"), st.integers(0, 9), SKEW),  # created_at edited: another hour
    st.tuples(st.just("delete"), st.integers(0, 9)),
)
# A window starts at an instant (skewed as rows are), a day's start, or near a row's time:
# then the rows of its first, partial hour are on both sides of it.
NEAR_ROW = st.tuples(st.integers(0, 9), st.sampled_from(
    [dt.timedelta(0), dt.timedelta(microseconds=1), dt.timedelta(microseconds=-1),
     dt.timedelta(minutes=1), dt.timedelta(minutes=-1), dt.timedelta(minutes=-59)]))
WINDOW = st.one_of(SKEW, st.sampled_from(["utc_day", "rolling_24h"]), NEAR_ROW)
# Every shape of the query: the view's user, another, every user; one connector or all.
SHAPES = [(user, connector, testnet) for user in (None, "v", ALL_USERS)
          for connector in (None, "c1") for testnet in (True, False)]


def answer_for(order: Order, status: OrderStatus, fraction: Decimal,
               price: Decimal) -> ExchangeOrder:
    filled = (order.qty if status is OrderStatus.FILLED
              else (order.qty * fraction).quantize(STEP, rounding=decimal.ROUND_DOWN))
    if status is OrderStatus.PARTIALLY_FILLED and filled == 0:
        filled = STEP
    return ExchangeOrder(external_id=f"x{order.id}", client_order_id=order.client_order_id,
                         status=status, symbol=order.symbol, filled_qty=filled,
                         avg_price=price if filled else None, amount=order.qty)


def fields(spec: dict[str, Any], index: int) -> dict[str, Any]:
    usd = spec["symbol"].endswith(("/USDT", "/USD"))
    return {"client_order_id": f"n{index}", "order_type": "limit", "price": spec["price"],
            "requested_qty": spec["qty"], "user_id": spec["user_id"],
            "connector": spec["connector"], "testnet": spec["testnet"],
            "symbol": spec["symbol"], "side": spec["side"], "qty": spec["qty"],
            "notional_usd": spec["qty"] * spec["price"] if usd and spec["usd"] else None,
            "created_at": NOW + spec["skew"]}


def run(db: Session, actions: list[Any]) -> None:
    rows: list[Order] = []
    for number, action in enumerate(actions):
        kind = action[0]
        if kind in ("insert", "orm_insert"):
            values = fields(action[1], number)
            if kind == "insert":
                rows.append(store.insert_order(db, **values))
                continue
            status, fraction = action[2], action[3]
            filled = (values["qty"] * fraction).quantize(STEP, rounding=decimal.ROUND_DOWN)
            if status in (OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.REJECTED):
                filled = Decimal(0)
            order = Order(**values, status=status.value, filled_qty=filled,
                          avg_price=action[1]["price"] if filled else None,
                          updated_at=values["created_at"])
            db.add(order)
            db.commit()
            rows.append(order)
            continue
        if not rows:
            continue
        order = rows[action[1] % len(rows)]
        if kind in ("answer", "answer_orm"):
            if kind == "answer_orm":  # another pending change: the unit of work writes
                order.reason = "edited"
            try:
                store.apply_exchange_state(db, order, answer_for(order, *action[2:]),
                                           durable=False)
            except IllegalTransitionError:
                db.rollback()
        elif kind == "set_status":
            try:
                store.set_status(db, order, action[2], reason="ops")
            except IllegalTransitionError:
                db.rollback()
        elif kind == "edit":
            order.notional_usd = action[2]
            order.avg_price = action[3] if order.filled_qty else order.avg_price
            db.commit()
        elif kind == "move":
            order.created_at = NOW + action[2]
            db.commit()
        elif kind == "delete":
            db.delete(order)
            db.commit()
            rows.remove(order)


def stored(db: Session) -> list[Any]:
    """Every ``orders`` row as stored (columns, not the session's objects)."""
    return list(db.execute(select(*Order.__table__.columns)))


def recount(db: Session, since: dt.datetime, testnet: bool, user: Any,
            connector: str | None) -> Decimal:
    """The window's value, the model way: every row valued on its own, in Python."""
    total = Decimal(0)
    for row in stored(db):
        if (row.created_at < since or row.testnet != testnet
                or (user is not ALL_USERS and row.user_id != user)
                or (connector is not None and row.connector != connector)):
            continue
        with decimal.localcontext(EXACT):
            total += order_value_usd(row.status, row.symbol, row.qty, row.filled_qty,
                                     row.avg_price, row.notional_usd)
    return total


def buckets(db: Session) -> dict[tuple[Any, ...], Decimal]:
    return {(b.user_id, b.testnet, b.hour, b.connector, b.symbol): b.value
            for b in db.execute(select(*NotionalBucket.__table__.columns)) if b.value != 0}


def expected_buckets(db: Session) -> dict[tuple[Any, ...], Decimal]:
    totals: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for row in stored(db):
        with decimal.localcontext(EXACT):
            totals[row.user_id, row.testnet, hour_of(row.created_at), row.connector,
                   row.symbol] += order_value_usd(row.status, row.symbol, row.qty,
                                                  row.filled_qty, row.avg_price,
                                                  row.notional_usd)
    return {k: v for k, v in totals.items() if v != 0}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(STEP_ACTIONS, min_size=1, max_size=25),
       windows=st.lists(WINDOW, min_size=1, max_size=4))
def test_buckets_answer_as_every_row_valued(db_url: str, actions: list[Any],
                                            windows: list[Any]) -> None:
    db = session_factory(get_engine(db_url))()
    try:
        for table in (Order, Position, NotionalBucket):
            db.execute(delete(table))
        db.commit()
        run(db, actions)
        db.commit()
        assert buckets(db) == expected_buckets(db)
        db.commit()
        created = [row.created_at for row in stored(db)] or [NOW]
        for start, (user, connector, testnet) in itertools.product(windows, SHAPES):
            if isinstance(start, str):
                since = day_start(NOW, start)
            elif isinstance(start, tuple):
                since = created[start[0] % len(created)] + start[1]
            else:
                since = NOW + start
            user_id = "u" if user is None else user
            want = recount(db, since, testnet, user_id, connector)
            db.commit()
            history = History(db, "u", "c1", testnet)
            got = asyncio.run(history.notional_since(since, user_id=user, connector=connector))
            rows = asyncio.run(history.notional_since_rows(since, user_id=user,
                                                           connector=connector))
            db.commit()
            # The same through the routing transaction's one prefetch statement.
            ahead = History(db, "u", "c1", testnet, now=NOW)
            ahead.expect("notional_since", since, user_id=user, connector=connector)
            ahead.expect("open_orders")
            fetched = asyncio.run(ahead.notional_since(since, user_id=user,
                                                       connector=connector))
            db.commit()
            assert got == rows == fetched == want, (since, user, connector, testnet)
        # A recount from scratch (what the migration and bulk writers do) agrees.
        rebuild(db.connection())
        db.commit()
        assert buckets(db) == expected_buckets(db)
    finally:
        db.rollback()
        db.close()


def test_a_rolled_back_write_leaves_its_bucket_unchanged(db_url: str) -> None:
    db = session_factory(get_engine(db_url))()
    try:
        for table in (Order, Position, NotionalBucket):
            db.execute(delete(table))
        db.commit()
        order = store.insert_order(db, client_order_id="rb", order_type="limit",
                                   price=Decimal(100), requested_qty=Decimal(2), user_id="u",
                                   connector="c1", testnet=True, symbol="BTC/USDT",
                                   side="buy", qty=Decimal(2), notional_usd=Decimal(200))
        assert list(buckets(db).values()) == [Decimal(200)]
        db.commit()
        order.notional_usd = Decimal(300)
        db.flush()
        assert list(buckets(db).values()) == [Decimal(300)]
        db.rollback()
        assert list(buckets(db).values()) == [Decimal(200)]
    finally:
        db.rollback()
        db.close()
