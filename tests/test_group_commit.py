"""Group commit (bagbot_core.group_commit): concurrent orders share the pending row's disk
flush, and nothing is sent before a flush that started after the row's commit has ended.

The flushes are observed, not simulated: ``os.fdatasync`` is wrapped (in the test only) to
record when each flush of the real ``-wal`` file starts and ends, and which rows another
connection could read when it started -- the rows that flush makes durable.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker

from bagbot_core import group_commit
from bagbot_core.db import dispose_engines, get_async_engine, get_engine, session_factory, sync_url
from bagbot_core.errors import ConfigurationError, IdempotencyKeyReusedError
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from tests.scripted import ScriptedExchange

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}


@pytest.fixture(autouse=True)
def _fresh_flushers() -> Iterator[None]:
    group_commit.reset()
    yield
    group_commit.reset()


def _path(url: str) -> str:
    path = group_commit.sqlite_file(url)
    assert path is not None
    return path


class FsyncLog:
    """``os.fdatasync`` wrapped: each flush of ``path``'s WAL (or of ``path`` itself) recorded
    as (start, end) on one event counter, with the client order ids readable when it
    started; ``delay`` makes the disk slow, ``fail`` makes it fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str, *, delay: float = 0.0,
                 snapshot: bool = False) -> None:
        self.path = path
        self.delay = delay
        self.snapshot = snapshot
        self.fail: OSError | None = None
        self.clock = itertools.count()
        self.flushes: list[tuple[int, int]] = []
        self.durable: set[str] = set()
        self.started = threading.Event()
        self.release: threading.Event | None = None
        real = os.fdatasync

        def fsync(fd: int) -> None:
            if not self._ours(fd):
                real(fd)
                return
            start = self.tick()
            self.started.set()
            seen = self._committed() if self.snapshot else set()
            if self.release is not None:
                self.release.wait(10)
            if self.fail is not None:
                raise OSError(self.fail.errno, self.fail.strerror)
            if self.delay:
                time.sleep(self.delay)
            real(fd)
            self.durable |= seen
            self.flushes.append((start, self.tick()))

        monkeypatch.setattr(os, "fdatasync", fsync)

    def tick(self) -> int:
        return next(self.clock)

    def _ours(self, fd: int) -> bool:
        stat = os.fstat(fd)
        for name in (self.path + "-wal", self.path):
            try:
                if os.path.samestat(stat, os.stat(name)):
                    return True
            except FileNotFoundError:
                pass
        return False

    def _committed(self) -> set[str]:
        """What another connection reads now: committed rows (read-only, never locks)."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return {cid for (cid,) in conn.execute("SELECT client_order_id FROM orders")}
        finally:
            conn.close()

    def covered(self, called: int, released: int) -> bool:
        """Did a flush start after ``called`` and end before ``released``?"""
        return any(called < start and end < released for start, end in self.flushes)


# -- the flusher alone -------------------------------------------------------------------------


def test_threads_are_released_only_by_a_flush_that_started_after_their_call(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)  # a real database in WAL mode
    path = _path(sqlite_url)
    log = FsyncLog(monkeypatch, path, delay=0.003)
    flusher = group_commit.flusher(path)
    barrier = threading.Barrier(50)
    spans: list[tuple[int, int]] = []

    def one(i: int) -> None:
        barrier.wait(30)
        time.sleep((i % 7) * 0.001)  # some arrive while a flush runs
        called = log.tick()
        flusher.wait()
        spans.append((called, log.tick()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == 50
    assert all(log.covered(called, released) for called, released in spans)
    assert flusher.waits == 50
    assert 1 <= flusher.flushes < 50 and len(log.flushes) == flusher.flushes


async def test_coroutines_are_released_only_by_a_flush_that_started_after_their_call(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)
    path = _path(sqlite_url)
    log = FsyncLog(monkeypatch, path, delay=0.003)
    flusher = group_commit.flusher(path)
    spans: list[tuple[int, int]] = []
    ticks: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep((i % 7) * 0.001)
        called = log.tick()
        await flusher.wait_async()
        spans.append((called, log.tick()))

    async def loop_ticks() -> None:  # the event loop keeps running while the disk works
        while len(spans) < 50:
            ticks.append(time.monotonic())
            await asyncio.sleep(0)

    await asyncio.gather(loop_ticks(), *(one(i) for i in range(50)))
    assert all(log.covered(called, released) for called, released in spans)
    assert 1 <= flusher.flushes < 50
    assert len(ticks) > flusher.flushes  # the loop ran between the flushes' starts and ends


async def test_threads_and_coroutines_share_one_flusher(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)
    path = _path(sqlite_url)
    log = FsyncLog(monkeypatch, path, delay=0.005)
    flusher = group_commit.flusher(path)
    spans: list[tuple[int, int]] = []

    def blocking() -> None:
        called = log.tick()
        flusher.wait()
        spans.append((called, log.tick()))

    async def waiting() -> None:
        called = log.tick()
        await flusher.wait_async()
        spans.append((called, log.tick()))

    await asyncio.gather(*(asyncio.to_thread(blocking) for _ in range(10)),
                         *(waiting() for _ in range(10)))
    assert len(spans) == 20 and all(log.covered(c, r) for c, r in spans)
    assert flusher.flushes < 20


async def test_a_failed_flush_fails_each_of_its_waiters_and_every_later_one(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)
    path = _path(sqlite_url)
    log = FsyncLog(monkeypatch, path)
    log.fail = OSError(errno.EIO, "Input/output error")
    log.release = threading.Event()
    flusher = group_commit.flusher(path)
    waiters = [asyncio.ensure_future(flusher.wait_async()) for _ in range(20)]
    await asyncio.to_thread(log.started.wait, 10)
    waiters += [asyncio.ensure_future(flusher.wait_async()) for _ in range(5)]  # next round
    log.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results), results
    assert flusher.flushes == 1  # the queued round was failed, not run
    log.fail = None  # the disk "recovers": what was written since may still be lost
    with pytest.raises(OSError, match="restart the process") as later:
        flusher.wait()
    assert later.value.errno == errno.EIO
    with pytest.raises(OSError, match="restart the process"):
        await flusher.wait_async()
    assert flusher.flushes == 1


def test_an_interrupted_flush_leaves_no_waiter_hanging(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)
    path = _path(sqlite_url)
    real = os.fdatasync
    calls: list[int] = []

    def interrupted_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(os, "fdatasync", interrupted_once)
    flusher = group_commit.flusher(path)
    with pytest.raises(KeyboardInterrupt):
        flusher.wait()
    flusher.wait()  # not a disk failure: the next flush runs and succeeds
    assert flusher.flushes == 2


def test_a_database_that_is_not_there_fails_the_flush(tmp_path: Path) -> None:
    flusher = group_commit.flusher(str(tmp_path / "no-such-dir" / "bagbot.db"))
    with pytest.raises(FileNotFoundError):
        flusher.wait()


def test_a_checkpointed_wal_flushes_the_database_file(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _path(sqlite_url)
    get_engine(sqlite_url)
    dispose_engines()  # the last connection checkpoints and deletes the WAL
    assert not os.path.exists(path + "-wal")
    log = FsyncLog(monkeypatch, path)
    group_commit.flusher(path).wait()
    assert len(log.flushes) == 1


def test_which_databases_group_commit_applies_to(tmp_path: Path) -> None:
    assert group_commit.sqlite_file(f"sqlite:///{tmp_path}/a.db") == f"{tmp_path}/a.db"
    assert group_commit.sqlite_file("sqlite:///relative.db") == os.path.abspath("relative.db")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x.db?mode=ro&uri=true",
                "postgresql+psycopg://u@127.0.0.1/test"):
        assert group_commit.sqlite_file(url) is None, url
    assert group_commit.flusher(f"{tmp_path}/a.db") is group_commit.for_url(
        f"sqlite:///{tmp_path}/a.db")


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert group_commit.enabled({}) is True
    assert group_commit.enabled({"BAGBOT_GROUP_COMMIT": "off"}) is False
    with pytest.raises(ConfigurationError, match="BAGBOT_GROUP_COMMIT"):
        group_commit.enabled({"BAGBOT_GROUP_COMMIT": "maybe"})
    monkeypatch.setenv("BAGBOT_GROUP_COMMIT", "0")
    assert Router(PluginRegistry(disabled=(), load_entrypoints=False),
                  limits=RiskLimits()).group_commit is False
    monkeypatch.setenv("BAGBOT_GROUP_COMMIT", "ture")
    with pytest.raises(ConfigurationError, match="BAGBOT_GROUP_COMMIT"):
        Router(PluginRegistry(disabled=(), load_entrypoints=False), limits=RiskLimits())


# -- the router ---------------------------------------------------------------------------------


@pytest.fixture
async def paper_router() -> Any:
    router = Router(PluginRegistry(disabled=(), load_entrypoints=False), limits=RiskLimits(),
                    group_commit=True)
    yield router
    await router.aclose()


async def _watched_paper(router: Router, url: str, log: FsyncLog,
                         sent: list[str]) -> None:
    """Wrap the paper connector the router will use: at each order it receives, the row must
    be committed (read by another connection) and durable (a flush that started after it
    was readable has ended)."""
    connector = await router.get_connector("paper", testnet=True, database_url=sync_url(url))
    create = connector.create_order

    async def create_order(order: Any, client_order_id: str) -> Any:
        assert client_order_id in log._committed(), "sent before its row was committed"
        assert client_order_id in log.durable, "sent before its row was flushed to disk"
        sent.append(client_order_id)
        return await create(order, client_order_id)

    connector.create_order = create_order  # type: ignore[method-assign]


def _rows(url: str) -> list[Order]:
    with session_factory(get_engine(url))() as db:
        return list(db.scalars(select(Order).order_by(Order.id)))


async def test_fifty_concurrent_paper_orders_share_flushes(
        paper_router: Router, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_async_engine(sqlite_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    # A slow disk (20 ms a flush): commits pile up while a flush runs.
    log = FsyncLog(monkeypatch, _path(sqlite_url), snapshot=True, delay=0.02)
    sent: list[str] = []
    await _watched_paper(paper_router, sqlite_url, log, sent)

    async def one(i: int) -> Order:
        async with sessions() as db:
            return await paper_router.route_order(
                "paper", {**MARKET_BUY, "client_order_id": f"gc-{i}"}, db, f"user-{i % 5}")

    try:
        orders = await asyncio.gather(*(one(i) for i in range(50)))
    finally:
        await engine.dispose()
    assert {o.status for o in orders} == {"filled"}
    rows = _rows(sqlite_url)
    assert sorted(r.client_order_id for r in rows) == sorted(f"gc-{i}" for i in range(50))
    assert sorted(sent) == sorted(r.client_order_id for r in rows)
    flusher = group_commit.flusher(_path(sqlite_url))
    assert flusher.waits == 50 and flusher.flushes < 50


def test_threads_with_sessions_share_flushes(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Session`` callers in threads (each its own event loop) share the blocking waiter."""
    factory = session_factory(get_engine(sqlite_url))
    log = FsyncLog(monkeypatch, _path(sqlite_url), snapshot=True, delay=0.002)
    routers = [Router(PluginRegistry(disabled=(), load_entrypoints=False),
                      limits=RiskLimits(), group_commit=True) for _ in range(8)]
    barrier = threading.Barrier(8)
    sent: list[str] = []

    def worker(k: int) -> list[str]:
        async def run() -> list[str]:
            await _watched_paper(routers[k], sqlite_url, log, sent)
            barrier.wait(30)
            statuses = []
            with factory() as db:
                for _ in range(6):
                    order = await routers[k].route_order("paper", MARKET_BUY, db, f"t{k}")
                    statuses.append(order.status)
            await routers[k].aclose()
            return statuses

        return asyncio.run(run())

    results: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: worker(k)}))
               for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == list(range(8))
    assert all(statuses == ["filled"] * 6 for statuses in results.values())
    rows = _rows(sqlite_url)
    assert len(rows) == 48 and sorted(sent) == sorted(r.client_order_id for r in rows)
    flusher = group_commit.flusher(_path(sqlite_url))
    assert flusher.waits == 48 and flusher.flushes < 48


async def test_idempotency_conflicts_in_a_burst_fail_only_their_caller(
        paper_router: Router, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_async_engine(sqlite_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    log = FsyncLog(monkeypatch, _path(sqlite_url), snapshot=True)
    sent: list[str] = []
    await _watched_paper(paper_router, sqlite_url, log, sent)
    payloads = [{**MARKET_BUY, "client_order_id": f"k-{i}"} for i in range(46)]
    payloads += [{**MARKET_BUY, "client_order_id": "same-key"}] * 2  # a retry: replayed
    payloads += [{**MARKET_BUY, "client_order_id": "taken"},  # another order, same key
                 {**MARKET_BUY, "side": "sell", "client_order_id": "taken"}]

    async def one(payload: dict[str, str]) -> Order:
        async with sessions() as db:
            return await paper_router.route_order("paper", payload, db, "burst")

    try:
        results = await asyncio.gather(*(one(p) for p in payloads), return_exceptions=True)
    finally:
        await engine.dispose()
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], IdempotencyKeyReusedError), refused
    orders = [r for r in results if isinstance(r, Order)]
    assert len(orders) == 49  # the retry returns the first call's row (as it was then)
    same = [o for o in orders if o.client_order_id == "same-key"]
    assert len(same) == 2 and same[0].id == same[1].id
    rows = _rows(sqlite_url)
    assert len(rows) == 48 and len({r.client_order_id for r in rows}) == 48
    assert {r.status for r in rows} == {"filled"}
    assert sorted(sent) == sorted(r.client_order_id for r in rows)  # each key sent once


@pytest.fixture
def scripted_router(exchange: ScriptedExchange, registry: PluginRegistry) -> Router:
    return Router(registry, limits=RiskLimits(), group_commit=True)


@pytest.mark.parametrize("kind", ["Session", "AsyncSession"])
async def test_a_failed_flush_sends_nothing_and_rejects_the_row(
        scripted_router: Router, exchange: ScriptedExchange, sqlite_url: str, kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    get_engine(sqlite_url)
    log = FsyncLog(monkeypatch, _path(sqlite_url))
    log.fail = OSError(errno.EIO, "Input/output error")

    async def route() -> Any:
        if kind == "Session":
            with session_factory(get_engine(sqlite_url))() as db:
                return await scripted_router.route_order("scripted", MARKET_BUY, db, "u")
        engine = get_async_engine(sqlite_url)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as db:
                return await scripted_router.route_order("scripted", MARKET_BUY, db, "u")
        finally:
            await engine.dispose()

    for _ in range(2):  # the second fails at once: an earlier flush failed
        with pytest.raises(OperationalError) as caught:
            await route()
        assert isinstance(caught.value.orig, OSError)
    assert exchange.create_calls == 0
    rows = _rows(sqlite_url)
    assert [r.status for r in rows] == ["rejected", "rejected"]
    assert "could not be flushed to disk" in (rows[0].reason or "")
    assert "restart the process" in (rows[1].reason or "")
    assert all((r.details or {}).get("stage") == "durability" for r in rows)


async def test_cancelled_while_waiting_for_the_flush_sends_nothing(
        scripted_router: Router, exchange: ScriptedExchange, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_async_engine(sqlite_url)
    log = FsyncLog(monkeypatch, _path(sqlite_url))
    log.release = threading.Event()
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as db:
            task = asyncio.ensure_future(
                scripted_router.route_order("scripted", MARKET_BUY, db, "u"))
            await asyncio.to_thread(log.started.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        log.release.set()
        await engine.dispose()
    assert exchange.create_calls == 0
    [row] = _rows(sqlite_url)
    assert row.status == "rejected" and "canceled before it was sent" in (row.reason or "")


async def test_with_group_commit_off_the_commit_flushes_by_itself(
        exchange: ScriptedExchange, registry: PluginRegistry, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(registry, limits=RiskLimits(), group_commit=False)
    log = FsyncLog(monkeypatch, _path(sqlite_url))
    with session_factory(get_engine(sqlite_url))() as db:
        order = await router.route_order("scripted", MARKET_BUY, db, "u")
    assert order.status == "filled" and exchange.create_calls == 1
    assert log.flushes == []  # SQLite flushed inside its commit (synchronous=FULL)
    assert group_commit.flusher(_path(sqlite_url)).waits == 0


async def test_postgres_is_left_to_the_server(
        scripted_router: Router, exchange: ScriptedExchange, db_url: str) -> None:
    with session_factory(get_engine(db_url))() as db:
        await scripted_router.route_order("scripted", MARKET_BUY, db, "u")
        count = db.scalar(select(func.count()).select_from(Order))
    assert count == 1 and exchange.create_calls == 1
    flusher = group_commit.for_url(db_url)
    if db_url.startswith("postgresql"):
        assert flusher is None
    else:
        assert flusher is not None and flusher.waits == 1


def test_the_service_answers_a_failed_flush_with_503_and_sends_nothing(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_service_api import assert_error, running

    with running(sqlite_url) as api:
        log = FsyncLog(monkeypatch, _path(sqlite_url))
        log.fail = OSError(errno.EIO, "Input/output error")
        with api.client(api.token("alice")) as client:
            response = client.post("/v1/orders", json={**MARKET_BUY, "connector": "scripted"})
        assert_error(response, 503, "DatabaseUnavailable")
        assert api.exchange.create_calls == 0
        [row] = api.rows()
        assert row.status == "rejected" and "nothing was sent" in (row.reason or "")
