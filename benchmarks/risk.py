"""The risk-engine scenarios: every control on, against the floor and against a full table.

* ``risk`` / ``pg_risk``: the ``seq`` floor (ccxt + one INSERT) against ``route_order`` with
  every built-in control enabled (limits generous enough that no order is refused, so every
  history query runs on every order). Target: 1.3x.
* ``rows`` / ``pg_rows``: bagbot with every control on, an empty ``orders`` table against
  one holding 100,000 rows (:func:`seed`). Target: at most 10% slower.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

#: Every control on, none ever refusing the benchmark's orders.
ALL_CONTROLS_ON: dict[str, Any] = {
    "price_collar_pct": "50",
    "duplicate_window_seconds": "0.1",  # orders cycle through 50 amounts: never duplicates
    "order_rate": 1_000_000,
    "max_open_orders": 1_000_000,
    "daily_notional_usd": "1000000000",
    "max_position": {"BTC": "1000000"},
}
SEED_ROWS = 100_000
SEED_USERS = 100  # the benchmark's user is one of them: 1% of the rows, over 30 days


def risk_config() -> Any:
    from bagbot_core.risk_config import RiskConfig

    return RiskConfig.load(None, environ={}, overrides=ALL_CONTROLS_ON)


def payload(i: int, amount: str) -> dict[str, str]:
    """A market buy whose amount cycles, so the duplicate-order control never fires."""
    step = Decimal("0.00001") * (i % 50)
    return {"symbol": "BTC/USDT", "side": "buy", "type": "market",
            "amount": str(Decimal(amount) + step)}


def seed(url: str, user: str, *, rows: int = SEED_ROWS, seed_value: int = 10) -> None:
    """``rows`` orders over the last 30 days: 100 users (``user`` among them), mostly filled
    BTC/USDT and ETH/USDT, some canceled, rejected and open, as a live router leaves them."""
    from sqlalchemy import insert

    from bagbot_core import notional, positions
    from bagbot_core.db import get_engine
    from bagbot_core.models import Order

    rng = random.Random(seed_value)
    now = dt.datetime.now(dt.UTC)
    users = [user, *(f"user{i}" for i in range(1, SEED_USERS))]
    batch: list[dict[str, Any]] = []
    engine = get_engine(url)
    for i in range(rows):
        roll = rng.random()
        status = ("filled" if roll < 0.85 else "canceled" if roll < 0.93
                  else "rejected" if roll < 0.98 else "open")
        symbol, price = rng.choice([("BTC/USDT", Decimal("50000")), ("ETH/USDT", Decimal(3000))])
        qty = Decimal(rng.randint(20, 2000)) / Decimal(100_000)
        filled = qty if status == "filled" else Decimal(0)
        created = now - dt.timedelta(seconds=rng.randint(3600, 30 * 86_400))
        batch.append({
            "user_id": users[i % SEED_USERS], "connector": "binance", "symbol": symbol,
            "side": rng.choice(["buy", "sell"]), "order_type": "market", "qty": qty,
            "requested_qty": qty, "price": None, "status": status, "testnet": True,
            "filled_qty": filled, "avg_price": price if filled else None,
            "notional_usd": qty * price, "client_order_id": f"seed{i}",
            "external_id": None if status == "rejected" else str(i),
            "created_at": created, "updated_at": created,
        })
        if len(batch) == 5000:
            with engine.begin() as conn:
                conn.execute(insert(Order), batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            conn.execute(insert(Order), batch)
    with engine.begin() as conn:  # bulk inserts bypass the ORM events that keep the aggregates
        positions.rebuild(conn)
        notional.rebuild(conn)
    if engine.dialect.name == "postgresql":  # what autovacuum does to a table this size
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE orders")
            conn.exec_driver_sql("VACUUM ANALYZE notional_buckets")
