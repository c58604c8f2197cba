"""The ``positions`` aggregate equals the fills recounted from ``orders``, on both backends,
whatever answers arrive; and it commits or rolls back together with the fill."""

from __future__ import annotations

import asyncio
import decimal
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, select
from sqlalchemy.orm import Session

from bagbot_core import store
from bagbot_core.db import get_engine, session_factory
from bagbot_core.history import History
from bagbot_core.models import NotionalBucket, Order, Position
from bagbot_core.orders import ExchangeOrder
from bagbot_core.positions import rebuild
from bagbot_core.status import OrderStatus

STEP = Decimal("0.00000001")
qty_strategy = st.decimals(min_value=STEP, max_value=Decimal("1000"), places=8)
ROW = st.fixed_dictionaries({
    "user_id": st.sampled_from(["u", "v"]),
    "connector": st.sampled_from(["c1", "c2"]),
    "testnet": st.booleans(),
    "symbol": st.sampled_from(["BTC/USDT", "BTC/EUR", "ETH/BTC", "BTCX/USDT", "btc/usdt"]),
    "side": st.sampled_from(["buy", "sell"]),
    "qty": qty_strategy,
})
# An answer: which row, its status, and the filled fraction (answers may lag: lower fills
# than recorded are stale; a cancel or expiry may carry fills; filled means all of it).
ANSWER = st.tuples(
    st.integers(0, 7),
    st.sampled_from([OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED,
                     OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED,
                     OrderStatus.UNKNOWN]),
    st.sampled_from([Decimal(0), Decimal("0.25"), Decimal("0.5"), Decimal("0.75"),
                     Decimal(1)]),
)


def recount(db: Session) -> dict[tuple[str, bool, str, str], Decimal]:
    """Positions the way the old full-history query counted them, written differently:
    symbols ``ASSET/...`` exactly as stored, rejected rows nothing."""
    totals: dict[tuple[str, bool, str, str], Decimal] = defaultdict(Decimal)
    for row in db.scalars(select(Order)):
        if row.status == "rejected" or "/" not in row.symbol:
            continue
        sign = 1 if row.side == "buy" else -1
        totals[row.user_id, row.testnet, row.symbol.split("/")[0], row.connector] += (
            sign * row.filled_qty)
    return {k: v for k, v in totals.items() if v != 0}


def aggregate(db: Session) -> dict[tuple[str, bool, str, str], Decimal]:
    return {(p.user_id, p.testnet, p.asset, p.connector): p.quantity
            for p in db.scalars(select(Position)) if p.quantity != 0}


def answer_for(order: Order, status: OrderStatus, fraction: Decimal) -> ExchangeOrder:
    filled = (order.qty if status is OrderStatus.FILLED
              else (order.qty * fraction).quantize(STEP, rounding=decimal.ROUND_DOWN))
    if status is OrderStatus.PARTIALLY_FILLED and filled == 0:
        filled = STEP
    return ExchangeOrder(external_id=f"x{order.id}", client_order_id=order.client_order_id,
                         status=status, symbol=order.symbol, filled_qty=filled,
                         avg_price=Decimal("100.5") if filled else None, amount=order.qty)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(ROW, min_size=1, max_size=8), answers=st.lists(ANSWER, max_size=25))
def test_aggregate_equals_the_fills_recounted(db_url: str, specs: list[dict[str, Any]],
                                              answers: list[Any]) -> None:
    db = session_factory(get_engine(db_url))()
    try:
        db.execute(delete(Order))
        db.execute(delete(Position))
        db.execute(delete(NotionalBucket))
        db.commit()
        rows = [store.insert_order(db, client_order_id=f"p{i}", order_type="limit",
                                   price=Decimal(100), requested_qty=spec["qty"], **spec)
                for i, spec in enumerate(specs)]
        for index, status, fraction in answers:
            order = rows[index % len(rows)]
            store.apply_exchange_state(db, order, answer_for(order, status, fraction),
                                       durable=False)
        expected = recount(db)
        assert aggregate(db) == expected
        db.commit()
        # History.position reads the aggregate: per connector, and summed over connectors.
        for user_id, testnet, asset, connector in {*expected, ("u", True, "BTC", "c1")}:
            history = History(db, user_id, "c1", testnet)
            mine = {k: v for k, v in expected.items()
                    if k[:3] == (user_id, testnet, asset.upper())}
            assert asyncio.run(history.position(asset)) == sum(mine.values(), Decimal(0))
            assert asyncio.run(history.position(asset, connector=connector)) == mine.get(
                (user_id, testnet, asset.upper(), connector), Decimal(0))
            position, live = asyncio.run(history.exposure(asset, "buy"))
            assert position == sum(mine.values(), Decimal(0))
            assert live == asyncio.run(history.live_quantity(asset, "buy"))  # type: ignore[arg-type]
            db.commit()
        # A recount from scratch (what the migration and bulk writers do) agrees.
        rebuild(db.connection())
        assert aggregate(db) == expected
        db.commit()
    finally:
        db.close()


def test_a_crash_before_commit_leaves_fill_and_position_unchanged(db_url: str) -> None:
    db = session_factory(get_engine(db_url))()
    order = store.insert_order(db, client_order_id="crash", order_type="limit",
                               price=Decimal(100), requested_qty=Decimal(2), user_id="u",
                               connector="c1", testnet=True, symbol="BTC/USDT", side="buy",
                               qty=Decimal(2))
    store.apply_exchange_state(db, order, answer_for(order, OrderStatus.PARTIALLY_FILLED,
                                                     Decimal("0.5")))
    assert aggregate(db) == {("u", True, "BTC", "c1"): Decimal(1)}
    db.commit()

    engine = get_engine(db_url)

    def crash(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "positions" in statement and not statement.lstrip().startswith("SELECT"):
            raise RuntimeError("the process died before COMMIT")

    # The order's UPDATE and the position's write ran; then nothing is committed.
    event.listen(engine, "after_cursor_execute", crash)
    with pytest.raises(RuntimeError, match="died"):
        store.apply_exchange_state(db, order, answer_for(order, OrderStatus.FILLED, Decimal(1)))
    event.remove(engine, "after_cursor_execute", crash)
    db.rollback()
    db.close()
    with session_factory(get_engine(db_url))() as fresh:
        stored = fresh.scalars(select(Order)).one()
        assert (stored.status, stored.filled_qty) == ("partially_filled", Decimal(1))
        assert aggregate(fresh) == {("u", True, "BTC", "c1"): Decimal(1)}


def test_answers_are_reused_within_one_transaction_only(db_url: str) -> None:
    """The router re-runs the checks after rounding: no second round trip; a later
    transaction sees new fills."""
    db = session_factory(get_engine(db_url))()
    db.execute(delete(Order))
    db.execute(delete(Position))
    db.commit()
    history = History(db, "u", "c1", True)
    statements: list[str] = []
    engine = get_engine(db_url)

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert asyncio.run(history.exposure("BTC", "buy")) == (0, 0)  # type: ignore[arg-type]
        assert asyncio.run(history.open_orders()) == 0
        count = len(statements)
        assert asyncio.run(history.exposure("BTC", "buy")) == (0, 0)  # type: ignore[arg-type]
        assert asyncio.run(history.open_orders()) == 0
        assert len(statements) == count
        db.commit()
        store.insert_order(db, client_order_id="later", order_type="limit", price=Decimal(1),
                           requested_qty=Decimal(3), user_id="u", connector="c1",
                           testnet=True, symbol="BTC/USDT", side="buy", qty=Decimal(3),
                           status="partially_filled", filled_qty=Decimal(1))
        assert asyncio.run(history.exposure("BTC", "buy")) == (1, 2)  # type: ignore[arg-type]
        assert asyncio.run(history.open_orders()) == 1
        db.commit()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
        db.close()


# Values a NUMERIC(38, 18) column holds, signed: a float sum of their texts would round.
MONEY = st.decimals(min_value=Decimal("-99999999999999999999.999999999999999999"),
                    max_value=Decimal("99999999999999999999.999999999999999999"),
                    places=18, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(left=st.none() | MONEY, right=st.none() | MONEY)
def test_sqlites_decimal_add_is_exact_on_any_engine(sqlite_url: str, left: Decimal | None,
                                                     right: Decimal | None) -> None:
    """The SQL function the SQLite upsert adds with equals Python's exact sum, as the text
    the column stores, on bagbot's engine and on a caller's plain one (registered on first
    use)."""
    from sqlalchemy import create_engine, literal, select

    from bagbot_core import exact_sum
    from bagbot_core.money import decimal_text

    expected = (decimal_text(left if right is None else right if left is None
                             else decimal.Context(prec=200).add(left, right)))
    for engine in (get_engine(sqlite_url), create_engine(sqlite_url)):
        with engine.connect() as connection:
            exact_sum.register(connection)
            exact_sum.register(connection)  # twice: no error, one registration
            added = connection.scalar(select(exact_sum.add(
                literal(decimal_text(left)), literal(decimal_text(right)))))
        assert added == expected


def test_a_position_upsert_is_one_statement_on_both_backends(db_url: str) -> None:
    """A fill changes its position with one statement: no read-modify-write."""
    engine = get_engine(db_url)
    db = session_factory(engine)()
    order = store.insert_order(db, user_id="u", connector="c", symbol="BTC/USDT", side="buy",
                               order_type="market", qty=Decimal("2"), status="pending",
                               client_order_id="one-statement", testnet=True)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split()).lower())

    event.listen(engine, "before_cursor_execute", seen)
    try:
        for filled in ("0.5", "2"):
            store.apply_exchange_state(db, order, ExchangeOrder(
                external_id="x1", client_order_id="one-statement",
                status=OrderStatus.PARTIALLY_FILLED if filled == "0.5" else OrderStatus.FILLED,
                symbol="BTC/USDT", filled_qty=Decimal(filled), avg_price=Decimal("100"),
                amount=Decimal("2"), price=None, raw_status="X"))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    touching = [s for s in statements if "positions" in s]
    # SQLite: the upsert itself; PostgreSQL: the row's UPDATE, the upsert its CTE.
    if engine.dialect.name == "sqlite":
        assert len(touching) == 2 and all(s.startswith("insert") for s in touching), touching
    else:
        assert len(touching) == 2 and all(
            s.startswith("with ") and "position_change as (insert into positions" in s
            and "update orders set" in s for s in touching), touching
    assert not any("select" in s and "from positions" in s for s in statements), statements
    assert aggregate(db) == {("u", True, "BTC", "c"): Decimal(2)}
    db.close()
