"""The background reconciler (bagbot_core.service.reconciler): stale rows on the paper
exchange resolved by a round, and one round at a time across instances (an advisory lock on
PostgreSQL, a lock file on SQLite)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from bagbot_core import store
from bagbot_core.connector import ConnectorSettings, ConnectorSpec
from bagbot_core.db import get_async_engine, get_engine, session_factory, sync_url
from bagbot_core.markers import hookimpl
from bagbot_core.models import Order, utcnow
from bagbot_core.orders import ExchangeOrder, OrderRequest, OrderType, Side
from bagbot_core.plugins import PluginRegistry
from bagbot_core.router import Router, new_client_order_id
from bagbot_core.service import metrics
from bagbot_core.service.reconciler import Reconciler, lock_file
from tests.scripted import ScriptedConnector, ScriptedExchange

LONG_AGO = dt.timedelta(hours=1)
#: Guards against a hang only (a failure, not a measurement).
HANG = 60


@attrs.define
class GatedExchange(ScriptedExchange):
    """The scripted exchange, whose order lookups wait at a gate the test opens."""

    entered: asyncio.Event = attrs.Factory(asyncio.Event)
    gate: asyncio.Event = attrs.Factory(asyncio.Event)
    fetch_calls: int = 0


class GatedConnector(ScriptedConnector):
    name = "gated"
    exchange: GatedExchange

    async def fetch_order(self, symbol: str, *, external_id: str | None,
                          client_order_id: str) -> ExchangeOrder:
        self.exchange.fetch_calls += 1
        self.exchange.entered.set()
        await self.exchange.gate.wait()
        return await super().fetch_order(symbol, external_id=external_id,
                                          client_order_id=client_order_id)


def gated_plugin(exchange: GatedExchange) -> object:
    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> GatedConnector:
                return GatedConnector(exchange, settings)

            return [ConnectorSpec("gated", factory, "lookups wait at a gate")]

    return Plugin()


def make_router(exchange: GatedExchange | None = None) -> Router:
    """One process's router (each instance of the service builds its own)."""
    plugins = [] if exchange is None else [("gated", gated_plugin(exchange))]
    return Router(PluginRegistry(disabled=(), load_entrypoints=False, plugins=plugins),
                  allow_live=False,
                  connector_config={"paper": {"account": f"acct-{uuid.uuid4().hex[:8]}"}})


@pytest.fixture
async def routers() -> AsyncIterator[list[Router]]:
    made: list[Router] = []
    yield made
    for router in made:
        await router.aclose()


def engine_for(url: str, kind: str) -> Engine | AsyncEngine:
    """A new engine, as another process would have (never the cached one)."""
    if kind == "async":
        return get_async_engine(url)
    return create_engine(url)


async def dispose(engine: Engine | AsyncEngine) -> None:
    if isinstance(engine, AsyncEngine):
        await engine.dispose()
    else:
        engine.dispose()


def row(session: Session, connector: str, *, status: str = "unknown",
        age: dt.timedelta = LONG_AGO, client_order_id: str | None = None) -> Order:
    """A row as a crash leaves it: written, sent (or not), its answer never recorded."""
    return store.insert_order(
        session, user_id="u", connector=connector, symbol="BTC/USDT", side="buy",
        order_type="market", qty=Decimal("0.01"), requested_qty=Decimal("0.01"), price=None,
        testnet=True, client_order_id=client_order_id or new_client_order_id(),
        status=status, created_at=utcnow() - age, updated_at=utcnow() - age)


def status_of(url: str, order_id: int) -> str:
    with session_factory(get_engine(url))() as session:
        return str(session.scalar(select(Order.status).where(Order.id == order_id)))


def unknown_gauge() -> float:
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        if family.name == "bagbot_unknown_orders":
            return float(family.samples[0].value)
    raise AssertionError("no bagbot_unknown_orders")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_round_resolves_stale_rows_on_paper(db_url: str, db: Session, kind: str,
                                                    routers: list[Router]) -> None:
    router = make_router()
    routers.append(router)
    # Placed on the paper exchange, then the process died before recording the answer.
    connector = await router.get_connector("paper", database_url=sync_url(db_url))
    placed_id = new_client_order_id()
    await connector.create_order(
        OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("0.01")),
        connector.exchange_client_id(placed_id))
    placed = row(db, "paper", client_order_id=placed_id)
    lost = row(db, "paper", status="pending")  # never reached the exchange
    young = row(db, "paper", status="pending", age=dt.timedelta(0))  # may be in flight
    engine = engine_for(db_url, kind)
    try:
        reconciler = Reconciler(router, engine, interval=60, grace=dt.timedelta(minutes=5))
        assert await reconciler.run_once() == 2
        assert await reconciler.run_once() == 0  # nothing stale is left
    finally:
        await dispose(engine)
    assert status_of(db_url, placed.id) == "filled"
    assert status_of(db_url, lost.id) == "rejected"
    assert status_of(db_url, young.id) == "pending"
    assert unknown_gauge() == 0  # the young pending row is in flight, not awaiting


async def test_a_connector_that_fails_does_not_stop_the_others(
        sqlite_url: str, routers: list[Router], events: Any) -> None:
    router = make_router()
    routers.append(router)
    with session_factory(get_engine(sqlite_url))() as db:
        gone = row(db, "uninstalled")  # its plugin was removed since
        lost = row(db, "paper", status="pending")
    engine = engine_for(sqlite_url, "async")
    try:
        assert await Reconciler(router, engine, interval=60).run_once() == 1
    finally:
        await dispose(engine)
    assert status_of(sqlite_url, lost.id) == "rejected"
    assert status_of(sqlite_url, gone.id) == "unknown"
    (failed,) = events("reconcile_failed")
    assert failed["connector"] == "uninstalled"
    assert unknown_gauge() == 1  # the row nobody can resolve


async def overlapping_rounds(url: str, kind: str, routers: list[Router]) -> None:
    """Instance A holds its round open (the exchange lookup waits at the gate) while
    instance B tries one: B returns at once without reconciling; once A is done, B's next
    round runs."""
    exchange = GatedExchange()
    router_a, router_b = make_router(exchange), make_router(exchange)
    routers.extend([router_a, router_b])
    with session_factory(get_engine(url))() as db:
        first = row(db, "gated")
    engine_a, engine_b = engine_for(url, kind), engine_for(url, kind)
    try:
        a = Reconciler(router_a, engine_a, interval=60, grace=dt.timedelta(0))
        b = Reconciler(router_b, engine_b, interval=60, grace=dt.timedelta(0))
        round_a = asyncio.create_task(a.run_once())
        await asyncio.wait_for(exchange.entered.wait(), HANG)  # A is inside its round
        assert await asyncio.wait_for(b.run_once(), HANG) == 0
        assert exchange.fetch_calls == 1  # B asked the exchange nothing
        assert status_of(url, first.id) == "unknown"
        exchange.gate.set()
        assert await asyncio.wait_for(round_a, HANG) == 1
        assert status_of(url, first.id) == "rejected"
        with session_factory(get_engine(url))() as db:
            second = row(db, "gated")
        assert await asyncio.wait_for(b.run_once(), HANG) == 1  # the lock is free again
        assert status_of(url, second.id) == "rejected"
    finally:
        exchange.gate.set()
        await dispose(engine_a)
        await dispose(engine_b)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_one_round_at_a_time_across_instances(db_url: str, kind: str,
                                                    routers: list[Router], events: Any) -> None:
    """PostgreSQL: the advisory lock; SQLite: the lock file next to the database."""
    await overlapping_rounds(db_url, kind, routers)
    assert len(events("reconcile_skipped")) == 1
    path = lock_file(get_engine(db_url))
    if db_url.startswith("sqlite"):
        assert path is not None and path.name == "bagbot.reconcile.lock" and path.exists()
    else:
        assert path is None


def test_lock_file_only_for_sqlite_files(tmp_path: Any) -> None:
    assert lock_file(create_engine("sqlite://")) is None
    assert lock_file(create_engine("sqlite:///:memory:")) is None
    assert lock_file(create_engine(f"sqlite:///{tmp_path}/x.db")) == tmp_path / "x.reconcile.lock"
    assert lock_file(create_engine("postgresql+psycopg://u@127.0.0.1/db")) is None


async def test_start_runs_a_round_at_once_and_stop_ends_it(
        sqlite_url: str, routers: list[Router]) -> None:
    exchange = GatedExchange()
    router = make_router(exchange)
    routers.append(router)
    with session_factory(get_engine(sqlite_url))() as db:
        stale = row(db, "gated")
    engine = engine_for(sqlite_url, "async")
    try:
        reconciler = Reconciler(router, engine, interval=3600, grace=dt.timedelta(0))
        reconciler.start()
        await asyncio.wait_for(exchange.entered.wait(), HANG)  # the start-up round
        exchange.gate.set()
        # Stop waits for the round in progress, then returns instead of sleeping an hour.
        await asyncio.wait_for(reconciler.stop(), HANG)
        assert status_of(sqlite_url, stale.id) == "rejected"
    finally:
        exchange.gate.set()
        await dispose(engine)


async def test_interval_zero_is_off(sqlite_url: str, routers: list[Router]) -> None:
    router = make_router()
    routers.append(router)
    with session_factory(get_engine(sqlite_url))() as db:
        stale = row(db, "paper", status="pending")
    engine = engine_for(sqlite_url, "sync")
    try:
        reconciler = Reconciler(router, engine, interval=0)
        reconciler.start()
        await reconciler.run_forever()  # returns at once: off
        await reconciler.stop()
    finally:
        await dispose(engine)
    assert status_of(sqlite_url, stale.id) == "pending"
