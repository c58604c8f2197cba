"""Schema migrations: new databases at head, old databases upgraded without loss."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import create_engine, select, text

from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ConfigurationError
from bagbot_core.migrate import current_revision, ensure_schema, upgrade
from bagbot_core.migrations import HEAD
from bagbot_core.models import Base, Order
from bagbot_core.paper import models as _paper_models  # noqa: F401 - registers its tables


def fresh_engine(url: str) -> object:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("notional_buckets", "api_tokens", "positions", "trading_state_changes",
                      "trading_states", "paper_orders", "paper_balances", "orders",
                      "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    return engine


def test_new_database_is_created_at_head(db_url: str) -> None:
    engine = get_engine(db_url)
    with engine.connect() as conn:
        assert current_revision(conn) == HEAD


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_first_released_schema_upgrades_without_loss(db_url: str) -> None:
    engine = fresh_engine(db_url)
    upgrade(engine, "0001")  # type: ignore[arg-type]
    rows = [(f"old-{i}", f"{i}.123456789012345678", "rejected" if i % 2 else "filled")
            for i in range(50)]
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for cid, qty, status in rows:
            conn.execute(text(
                "INSERT INTO orders (user_id, symbol, qty, price, side, status, created_at, "
                "updated_at, client_order_id, connector, order_type, testnet, filled_qty) VALUES "
                "('u', 'BTC/USDT', :qty, NULL, 'buy', :status, :ts, :ts, :cid, 'paper', "
                "'market', true, '0')"),
                {"qty": qty, "status": status, "cid": cid,
                 "ts": "2026-01-01 00:00:00+00:00"})
    with pytest.raises(ConfigurationError, match="bagbot db upgrade"):
        ensure_schema(engine)  # type: ignore[arg-type]
    before, after = upgrade(engine)  # type: ignore[arg-type]
    assert (before, after) == ("0001", HEAD)
    with session_factory(engine)() as db:  # type: ignore[arg-type]
        stored = {o.client_order_id: o for o in db.scalars(select(Order))}
    assert len(stored) == 50
    for cid, qty, status in rows:
        assert stored[cid].qty == Decimal(qty) == stored[cid].requested_qty
        assert stored[cid].status == status
    engine.dispose()  # type: ignore[attr-defined]


def test_tables_without_version_are_taken_as_the_first_release(sqlite_url: str) -> None:
    engine = fresh_engine(sqlite_url)
    upgrade(engine, "0001")  # type: ignore[arg-type]
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("DROP TABLE alembic_version"))
        assert current_revision(conn) == "0001"
    assert upgrade(engine) == ("0001", HEAD)  # type: ignore[arg-type]


def test_newer_database_is_refused(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigurationError, match="newer than this bagbot"):
        ensure_schema(engine)


async def test_routed_orders_keep_the_requested_amount(router: object, db: object) -> None:
    order = await router.route_order(  # type: ignore[attr-defined]
        "scripted", {"symbol": "BTC/USDT", "side": "buy", "type": "market",
                     "amount": "0.123456789"}, db, "u")
    assert order.requested_qty == Decimal("0.123456789")
    assert order.qty == Decimal("0.12345")


def test_cli_db_upgrade(sqlite_url: str) -> None:
    from click.testing import CliRunner

    from bagbot_core.cli import cli as main

    engine = fresh_engine(sqlite_url)
    upgrade(engine, "0001")  # type: ignore[arg-type]
    engine.dispose()  # type: ignore[attr-defined]
    runner = CliRunner()
    refused = runner.invoke(main, ["--database-url", sqlite_url, "orders", "list"])
    assert refused.exit_code == 1 and "bagbot db upgrade" in refused.output
    result = runner.invoke(main, ["--database-url", sqlite_url, "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"from 0001 to {HEAD}" in result.output
    again = runner.invoke(main, ["--database-url", sqlite_url, "db", "upgrade"])
    assert "already at schema revision" in again.output
    assert runner.invoke(main, ["--database-url", sqlite_url, "orders", "list"]).exit_code == 0


def test_risk_history_revision_keeps_rows_and_adds_the_indexes(db_url: str) -> None:
    from sqlalchemy import inspect

    engine = fresh_engine(db_url)
    upgrade(engine, "0002")  # type: ignore[arg-type]
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text(
            "INSERT INTO orders (user_id, symbol, qty, requested_qty, price, side, status, "
            "created_at, updated_at, client_order_id, connector, order_type, testnet, "
            "filled_qty) VALUES ('u', 'BTC/USDT', '0.5', '0.5', '100', 'buy', 'open', :ts, "
            ":ts, 'old-1', 'paper', 'limit', true, '0')"), {"ts": "2026-01-01 00:00:00+00:00"})
    upgrade(engine, "0003")  # type: ignore[arg-type]
    indexes = {ix["name"]: ix["column_names"]
               for ix in inspect(engine).get_indexes("orders")}  # type: ignore[arg-type]
    assert indexes["ix_orders_user_testnet_created_at"] == ["user_id", "testnet", "created_at"]
    assert indexes["ix_orders_user_status"] == ["user_id", "status", "testnet"]
    assert indexes["ix_orders_position"][:3] == ["user_id", "testnet", "symbol"]
    upgrade(engine)  # type: ignore[arg-type]
    with session_factory(engine)() as db:  # type: ignore[arg-type]
        (row,) = db.scalars(select(Order))
    # Written before notional_usd existed: not valued (History counts no live remainder).
    assert row.notional_usd is None and row.qty == Decimal("0.5")
    engine.dispose()  # type: ignore[attr-defined]


def test_notional_buckets_revision_fills_them_from_the_rows(db_url: str) -> None:
    import asyncio
    import datetime as dt

    from sqlalchemy import insert

    from bagbot_core.history import History
    from bagbot_core.models import NotionalBucket

    engine = fresh_engine(db_url)
    upgrade(engine, "0006")  # type: ignore[arg-type]
    now = dt.datetime(2026, 11, 30, 12, 30, tzinfo=dt.UTC)
    rows = []
    for i in range(40):
        status = ["filled", "open", "partially_filled", "canceled", "rejected"][i % 5]
        qty = Decimal(i + 1) / 7 if i % 3 else Decimal("0.123456789012345678")
        qty = qty.quantize(Decimal("0.000000000000000001"))
        filled = {"filled": qty, "partially_filled": qty / 4, "canceled": qty / 3}.get(
            status, Decimal(0)).quantize(Decimal("0.000000000000000001"))
        created = now - dt.timedelta(minutes=47 * i)
        rows.append({
            "user_id": "uv"[i % 2], "connector": "c1",
            "symbol": "ETH/BTC" if i % 4 == 3 else "BTC/USDT",
            "side": "buy", "order_type": "limit", "qty": qty, "requested_qty": qty,
            "price": Decimal("101.5"), "status": status, "testnet": True,
            "filled_qty": filled, "avg_price": Decimal("101.5") if filled else None,
            "notional_usd": None if i % 7 == 6 else qty * Decimal("101.5"),
            "client_order_id": f"b{i}", "created_at": created, "updated_at": created})
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(insert(Order), rows)
    upgrade(engine)  # type: ignore[arg-type]
    with session_factory(engine)() as db:  # type: ignore[arg-type]
        hours = {b.hour for b in db.scalars(select(NotionalBucket))}
        assert len(hours) > 20 and all(h.minute == 0 and h.second == 0 for h in hours)
        for since in (now - dt.timedelta(hours=24), now.replace(hour=0, minute=0),
                      now - dt.timedelta(days=2, minutes=13)):
            for user_id in ("u", "v"):
                history = History(db, user_id, "c1", True)
                assert asyncio.run(history.notional_since(since)) == asyncio.run(
                    history.notional_since_rows(since)) > 0
                db.commit()
    engine.dispose()  # type: ignore[attr-defined]
