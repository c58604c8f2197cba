"""Stateful limits hold across processes: a third-party async check, 4 processes x 250
orders for one user, on SQLite and PostgreSQL; other users' orders do not wait."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order
from tests.test_concurrency import run_workers
from tests.test_plugins import build_and_install

pytestmark = pytest.mark.slow

LIMITS_PLUGIN = '''
"""A third-party risk plugin: a rolling 24 h notional limit and order count, both async."""
import asyncio
import datetime as dt
import os
from decimal import Decimal

from bagbot_core import hookimpl
from bagbot_core.risk import RiskCheck, RiskViolation


def _since():
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)


async def _slow():
    # A check that takes a while after reading (a remote limit service, say) widens the
    # race: without the router's per-user lock, processes would pass on the same reading.
    await asyncio.sleep(float(os.environ.get("ACME_CHECK_DELAY_S", "0")))


async def notional_24h(ctx):
    limit = os.environ.get("ACME_NOTIONAL_24H_USD")
    if not limit:
        return None
    total = await ctx.history.notional_since(_since()) + ctx.notional_usd
    await _slow()
    if total > Decimal(limit):
        return RiskViolation("acme_notional_24h", "over the 24 h notional limit",
                             limit=limit, actual=str(total))
    return None


async def orders_24h(ctx):
    limit = os.environ.get("ACME_ORDERS_24H")
    if not limit:
        return None
    total = await ctx.history.orders_since(_since()) + 1
    await _slow()
    if total > int(limit):
        return RiskViolation("acme_orders_24h", "over the 24 h order count",
                             limit=limit, actual=str(total))
    return None


@hookimpl
def bagbot_add_risk_checks():
    return [RiskCheck("acme_notional_24h", notional_24h, "USD per rolling 24 h"),
            RiskCheck("acme_orders_24h", orders_24h, "orders per rolling 24 h")]
'''

#: 0.01 BTC at the scripted exchange's ask.
ORDER_USD = Decimal("0.01") * Decimal("50010")


@pytest.fixture(scope="module")
def limits_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_and_install(tmp_path_factory.mktemp("limits"), "acme-limits", "acme_limits",
                             LIMITS_PLUGIN, "acme_limits")


def accepted(url: str) -> list[Order]:
    with session_factory(get_engine(url))() as db:
        return list(db.scalars(select(Order).where(Order.status != "rejected")))


@pytest.mark.parametrize("kind", ["notional", "count"])
def test_four_processes_never_exceed_a_third_party_limit(
    db_url: str, limits_site: Path, kind: str
) -> None:
    limit = Decimal(150_000) if kind == "notional" else Decimal(300)
    env = ({"ACME_NOTIONAL_24H_USD": str(limit)} if kind == "notional"
           else {"ACME_ORDERS_24H": str(limit)})
    results = run_workers(db_url, [{"n": "250", "user": "alice"} for _ in range(4)],
                          site=limits_site, env={**env, "ACME_CHECK_DELAY_S": "0.003"})
    rows = accepted(db_url)
    for result in results:
        assert set(result["errors"]) <= {"RiskCheckError"}, result  # type: ignore[arg-type]
        check = "acme_notional_24h" if kind == "notional" else "acme_orders_24h"
        assert set(result["refused"]) <= {check}, result  # type: ignore[arg-type]
    if kind == "notional":
        total = sum((o.filled_qty * o.avg_price for o in rows), Decimal(0))  # type: ignore[operator]
        print(f"\n{db_url.split(':')[0]}: accepted {len(rows)} orders, {total} USD of "
              f"{limit} USD (one order: {ORDER_USD})")
        assert limit - ORDER_USD < total <= limit
    else:
        print(f"\n{db_url.split(':')[0]}: accepted {len(rows)} orders of {limit}")
        assert len(rows) == limit
    assert all(o.status == "filled" for o in rows)
    assert sum(int(r["create_calls"]) for r in results) == len(rows)  # type: ignore[call-overload]
    assert sum(sum(r["statuses"].values()) for r in results) == len(rows)  # type: ignore[attr-defined]


#: Each built-in control, configured in a file the workers read through BAGBOT_CONFIG: its
#: setting, the most that may be accepted, and the order's price (limit orders rest open).
BUILT_IN_RACES = {
    "daily_notional": ('daily_notional_usd = "150000"', None),
    "order_rate": ("order_rate = 300\norder_rate_window_seconds = 3600", None),
    "max_open_orders": ("max_open_orders = 300", "49000"),
}


@pytest.mark.parametrize("control", sorted(BUILT_IN_RACES))
def test_four_processes_never_exceed_a_built_in_control(
    db_url: str, tmp_path: Path, control: str
) -> None:
    """The built-in controls hold the same race: 4 processes x 250 orders for one user."""
    setting, price = BUILT_IN_RACES[control]
    config = tmp_path / "bagbot.toml"
    config.write_text(f"[risk]\n{setting}\n", encoding="utf-8")
    spec = {"n": "250", "user": "alice", **({"price": price} if price else {})}
    results = run_workers(db_url, [dict(spec) for _ in range(4)],
                          env={"BAGBOT_CONFIG": str(config)})
    for result in results:
        assert set(result["errors"]) <= {"RiskCheckError"}, result  # type: ignore[arg-type]
        assert set(result["refused"]) <= {control}, result  # type: ignore[arg-type]
    rows = accepted(db_url)
    if control == "daily_notional":
        total = sum((o.filled_qty * o.avg_price for o in rows), Decimal(0))  # type: ignore[operator]
        print(f"\n{db_url.split(':')[0]} daily_notional: accepted {len(rows)} orders, "
              f"{total} USD of 150000 USD (one order: {ORDER_USD})")
        assert Decimal(150_000) - ORDER_USD < total <= Decimal(150_000)
    else:
        print(f"\n{db_url.split(':')[0]} {control}: accepted {len(rows)} orders of 300")
        assert len(rows) == 300
        assert all(o.status == ("open" if price else "filled") for o in rows)
    assert sum(int(r["create_calls"]) for r in results) == len(rows)  # type: ignore[call-overload]


@pytest.mark.postgres
def test_two_users_do_not_wait_for_each_other_on_postgres(postgres_url: str) -> None:
    """While one user's lock is held, another user's order is routed to the end, and the same
    user's order waits for the lock: seen in ``pg_locks``, not timed (the benchmark harness
    times it)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from bagbot_core.router import Router
    from bagbot_core.user_lock import lock_user

    engine = get_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE orders RESTART IDENTITY CASCADE"))
    router = Router()
    payload = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}

    def route(user: str) -> Order:
        async def go() -> Order:
            with session_factory(engine)() as db:
                order = await router.route_order("paper", payload, db, user)
                db.expunge(order)
                return order
        return asyncio.run(go())

    def waiting_for_an_advisory_lock() -> bool:
        with engine.connect() as conn:
            return bool(conn.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")))

    holder = session_factory(engine)()
    lock_user(holder, "ann")  # held until holder's transaction ends
    try:
        with ThreadPoolExecutor(2) as pool:
            # Another user's order does not wait for ann's lock (the timeout bounds a failure).
            assert pool.submit(route, "bob").result(timeout=60).status == "filled"
            ann = pool.submit(route, "ann")
            for _ in range(600):  # ann's order reaches the lock and waits there
                if waiting_for_an_advisory_lock() or ann.done():
                    break
                time.sleep(0.1)
            assert waiting_for_an_advisory_lock() and not ann.done()
            holder.commit()  # the lock goes: ann's order goes on
            assert ann.result(timeout=60).status == "filled"
    finally:
        holder.close()
