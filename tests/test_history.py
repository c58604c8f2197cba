"""History: what each query counts, per status, exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from bagbot_core.db import get_async_engine, get_engine
from bagbot_core.history import ALL_USERS, History, order_value_usd
from bagbot_core.models import NotionalBucket, Order, Position, utcnow
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.status import OrderStatus

LIVE = {"pending", "open", "partially_filled", "unknown"}
SYMBOLS = ["BTC/USDT", "BTC/USD", "ETH/BTC", "BTCX/USDT", "ETH/USDT"]
NOW = utcnow()
SINCE = NOW - dt.timedelta(hours=12)
money = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("100000"), places=8,
                    allow_nan=False, allow_infinity=False)


@st.composite
def rows(draw: Any) -> dict[str, Any]:
    status = draw(st.sampled_from(list(OrderStatus)))
    qty, price = draw(money), draw(money)
    if status in ("pending", "open", "rejected"):
        filled = Decimal(0)
    elif status == "filled":
        filled = qty
    else:  # partially filled, or canceled/expired/unknown after some fills
        filled = draw(st.sampled_from([Decimal(0), qty / 4, qty / 2])).quantize(
            Decimal("0.00000001"))
        if status == "partially_filled" and not 0 < filled < qty:
            filled = Decimal("0.00000001") if qty > Decimal("0.00000001") else Decimal(0)
            status = "partially_filled" if 0 < filled < qty else "open"
    symbol = draw(st.sampled_from(SYMBOLS))
    usd = symbol.endswith(("/USDT", "/USD"))
    # Rows written before notional_usd existed have none.
    notional = qty * price if usd and draw(st.booleans()) else None
    return {
        "user_id": draw(st.sampled_from(["u", "v"])),
        "connector": draw(st.sampled_from(["c1", "c2"])),
        "testnet": draw(st.booleans()), "symbol": symbol,
        "side": draw(st.sampled_from(["buy", "sell"])),
        "order_type": draw(st.sampled_from(["limit", "market"])),
        "status": status, "qty": qty, "requested_qty": qty, "price": price,
        "filled_qty": filled, "avg_price": price if filled else None,
        "notional_usd": notional,
        "created_at": NOW - dt.timedelta(seconds=draw(st.integers(0, 86_400))),
    }


def insert(db: Session, specs: list[dict[str, Any]]) -> None:
    db.execute(delete(Order))  # behind the ORM: the aggregates go too
    db.execute(delete(Position))
    db.execute(delete(NotionalBucket))
    for i, spec in enumerate(specs):
        db.add(Order(client_order_id=f"h{i}", updated_at=spec["created_at"], **spec))
    db.commit()


def expected_value(row: dict[str, Any]) -> Decimal:
    """The model, written differently from the code: a live remainder is price * unfilled."""
    if row["status"] == "rejected":
        return Decimal(0)
    traded = row["filled_qty"] * row["price"] if row["symbol"].endswith(("USDT", "USD")) else 0
    live = 0
    if row["status"] in LIVE and row["notional_usd"] is not None:
        live = row["price"] * (row["qty"] - row["filled_qty"])
    return Decimal(traded + live)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(rows(), max_size=12), testnet=st.booleans(),
       connector=st.sampled_from([None, "c1"]))
async def test_history_counts_each_status_as_documented(
    db: Session, specs: list[dict[str, Any]], testnet: bool, connector: str | None
) -> None:
    insert(db, specs)
    history = History(db, "u", "c1", testnet)
    mine = [r for r in specs if r["user_id"] == "u" and r["testnet"] == testnet
            and connector in (None, r["connector"])]
    btc = [r for r in mine if r["symbol"].startswith("BTC/")]
    try:
        assert await history.open_orders(connector=connector) == sum(
            r["status"] in LIVE for r in mine)
        assert await history.open_orders(user_id=ALL_USERS, connector=connector) == sum(
            r["status"] in LIVE for r in specs if r["testnet"] == testnet
            and connector in (None, r["connector"]))
        assert await history.open_orders(symbol="btc/usdt", connector=connector) == sum(
            r["status"] in LIVE and r["symbol"] == "BTC/USDT" for r in mine)
        assert await history.orders_since(SINCE, connector=connector) == sum(
            r["status"] != "rejected" and r["created_at"] >= SINCE for r in mine)
        assert await history.notional_since(SINCE, connector=connector) == sum(
            (expected_value(r) for r in mine if r["created_at"] >= SINCE), Decimal(0))
        assert await history.position("BTC", connector=connector) == sum(
            (r["filled_qty"] if r["side"] == "buy" else -r["filled_qty"] for r in btc
             if r["status"] != "rejected"), Decimal(0))
        for side in ("buy", "sell"):
            assert await history.live_quantity("btc", Side(side), connector=connector) == sum(
                (r["qty"] - r["filled_qty"] for r in btc
                 if r["status"] in LIVE and r["side"] == side), Decimal(0))
    finally:
        db.rollback()


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "user_id": "u", "connector": "c1", "testnet": True, "symbol": "BTC/USDT",
        "side": "buy", "order_type": "limit", "status": "open", "qty": Decimal("0.5"),
        "requested_qty": Decimal("0.5"), "price": Decimal("100"), "filled_qty": Decimal(0),
        "avg_price": None, "notional_usd": Decimal("50"), "created_at": NOW}
    return {**base, **overrides}


def test_value_of_a_partial_fill_is_exact_and_never_under_counted() -> None:
    # Not a USD quote: both parts are shares of the checked 100 USD, each rounded up at the
    # 18th decimal place, so together never less than the whole.
    value = order_value_usd("partially_filled", "ETH/BTC", Decimal(3), Decimal(2),
                            Decimal("0.05"), Decimal(100))
    assert value == Decimal("66.666666666666666667") + Decimal("33.333333333333333334")
    assert order_value_usd("canceled", "ETH/BTC", Decimal(3), Decimal(2), None,
                           Decimal(100)) == Decimal("66.666666666666666667")
    assert order_value_usd("rejected", "BTC/USD", Decimal(3), Decimal(0), None,
                           Decimal(100)) == 0
    # 38-digit products stay exact (the default 28-digit context would round them).
    big = Decimal("12345678901234567890.123456789012345678")
    with decimal.localcontext(decimal.Context(prec=100)):
        exact = big * big
    assert exact != big * big
    assert order_value_usd("filled", "BTC/USD", big, big, big, None) == exact


async def test_find_duplicate_matches_amount_as_asked_or_sent_and_price(db: Session) -> None:
    insert(db, [row(), row(qty=Decimal("0.49"), requested_qty=Decimal("0.4912"),
                           created_at=NOW - dt.timedelta(seconds=5)),
                row(status="rejected", price=Decimal("101")),
                row(connector="c2", price=Decimal("102")),
                row(testnet=False, price=Decimal("103")),
                row(created_at=NOW - dt.timedelta(minutes=5), price=Decimal("104"))])
    history = History(db, "u", "c1", True)
    since = NOW - dt.timedelta(minutes=1)

    def order(amount: str, price: str | None = "100", **kw: Any) -> OrderRequest:
        return OrderRequest("BTC/USDT", Side.BUY, OrderType.LIMIT, Decimal(amount),
                            None if price is None else Decimal(price), **kw)

    try:
        found = await history.find_duplicate(since, order("0.50"))
        assert found is not None and found.client_order_id == "h0"
        assert (await history.find_duplicate(since, order("0.4912"))).client_order_id == "h1"  # type: ignore[union-attr]
        assert (await history.find_duplicate(since, order("0.49"))).client_order_id == "h1"  # type: ignore[union-attr]
        assert await history.find_duplicate(since, order("0.5", "100.01")) is None
        assert await history.find_duplicate(since, order("0.5", "101")) is None  # rejected
        assert await history.find_duplicate(since, order("0.5", "102")) is None  # connector
        assert (await history.find_duplicate(since, order("0.5", "102"),
                                             connector="c2")) is not None
        assert await history.find_duplicate(since, order("0.5", "103")) is None  # live
        assert await history.find_duplicate(since, order("0.5", "104")) is None  # too old
        assert await history.find_duplicate(NOW - dt.timedelta(minutes=10),
                                            order("0.5", "104")) is not None
        # Its own idempotency key is not a duplicate of itself.
        assert await history.find_duplicate(since, order("0.5", client_order_id="h0")) is None
        sell = OrderRequest("BTC/USDT", Side.SELL, OrderType.LIMIT, Decimal("0.5"),
                            Decimal("100"))
        assert await history.find_duplicate(since, sell) is None
        assert await history.find_duplicate(since, order("0.5"), user_id="v") is None
    finally:
        db.rollback()


async def test_asset_names_are_not_patterns(db: Session) -> None:
    insert(db, [row(symbol="B_C/USDT", status="filled", filled_qty=Decimal("0.5"),
                    avg_price=Decimal("100")),
                row(symbol="BXC/USDT", status="filled", filled_qty=Decimal("0.25"),
                    avg_price=Decimal("100"))])
    history = History(db, "u", "c1", True)
    try:
        assert await history.position("B_C") == Decimal("0.5")
        assert await history.position("B%") == 0
    finally:
        db.rollback()


async def test_run_reads_on_the_routing_transaction_without_committing(db: Session) -> None:
    insert(db, [row()])
    history = History(db, "u", "c1", True)
    db.add(Order(client_order_id="uncommitted", updated_at=NOW, **row()))
    db.flush()  # visible inside this transaction only

    def count(session: Session, user: str) -> int:
        return int(session.scalar(text("SELECT count(*) FROM orders WHERE user_id = :u"),
                                  {"u": user}) or 0)

    assert await history.run(count, "u") == 2
    assert db.in_transaction()  # History never ends the transaction
    db.rollback()
    assert await history.run(count, "u") == 1
    db.rollback()


async def test_history_on_an_async_session(db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    with Session(get_engine(db_url)) as db:
        insert(db, [row(), row(status="filled", filled_qty=Decimal("0.5"),
                               avg_price=Decimal("100"))])
    engine = get_async_engine(db_url)
    async with async_sessionmaker(engine)() as session:
        history = History(session, "u", "c1", True)
        assert await history.open_orders() == 1
        assert await history.notional_since(SINCE) == Decimal(100)
        assert await history.position("BTC") == Decimal("0.5")
        assert await history.run(lambda s: s.get_bind().dialect.name) in ("sqlite",
                                                                         "postgresql")
    await engine.dispose()


@pytest.mark.parametrize("query", ["window", "live"])
def test_history_queries_use_an_index(sqlite_url: str, query: str) -> None:
    engine = get_engine(sqlite_url)
    sql = {
        "window": "SELECT count(*) FROM orders WHERE testnet = 1 AND user_id = 'u' "
                  "AND created_at >= '2026-01-01' AND status != 'rejected'",
        "live": "SELECT count(*) FROM orders WHERE testnet = 1 AND user_id = 'u' "
                "AND status IN ('pending', 'open')",
    }[query]
    with engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    expected = {"window": "ix_orders_user_testnet_created_at",
                "live": "ix_orders_user_status"}[query]
    assert expected in plan, plan
