"""Group commit through the fake Binance server: 50 orders in flight, each sent only once its
``pending`` row is committed and flushed to disk, exactly one row per call.

The server checks it when an order arrives: the row must be readable through a connection
of its own (committed), and a flush of the ``-wal`` file that started once the row was
readable must have ended (durable). Flushes are observed by wrapping ``os.fdatasync`` in the test.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bagbot_binance.plugin
import pytest
from aiohttp import web
from bagbot_binance.testing import FakeBinanceServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from bagbot_core import group_commit
from bagbot_core.db import dispose_engines, get_async_engine, get_engine, session_factory
from bagbot_core.errors import IdempotencyKeyReusedError
from bagbot_core.models import Order
from bagbot_core.testing.fake_exchange import routers_for

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}


@pytest.fixture(autouse=True)
def _fresh_flushers() -> Iterator[None]:
    group_commit.reset()
    yield
    group_commit.reset()
    dispose_engines()


class Durability:
    """Which client order ids a completed flush of ``path``'s WAL covers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str, delay: float) -> None:
        self.path = path
        self.durable: set[str] = set()
        self.flushes = 0
        real = os.fdatasync

        def fsync(fd: int) -> None:
            try:
                ours = os.path.samestat(os.fstat(fd), os.stat(path + "-wal"))
            except FileNotFoundError:
                ours = False
            if not ours:
                real(fd)
                return
            seen = self.committed()
            time.sleep(delay)  # a slow disk: commits pile up while it flushes
            real(fd)
            self.durable |= seen
            self.flushes += 1

        monkeypatch.setattr(os, "fdatasync", fsync)

    def committed(self) -> set[str]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return {cid for (cid,) in conn.execute("SELECT client_order_id FROM orders")}
        finally:
            conn.close()


class CheckingServer(FakeBinanceServer):
    """Refuses (HTTP 500, so the test fails loudly) an order whose row is not durable yet."""

    durability: Durability
    violations: list[str]
    received: list[str]

    def new_order(self, params: dict[str, str]) -> web.Response:
        client_id = params.get("newClientOrderId", "")
        if client_id not in self.durability.committed():
            self.violations.append(f"{client_id}: no committed row")
        elif client_id not in self.durability.durable:
            self.violations.append(f"{client_id}: row not flushed yet")
        self.received.append(client_id)
        return super().new_order(params)


@pytest.mark.parametrize("keys", ["fresh", "conflicting"])
async def test_fifty_orders_in_flight_are_sent_only_once_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    get_engine(url)
    path = group_commit.sqlite_file(url)
    assert path is not None
    durability = Durability(monkeypatch, path, delay=0.02)
    payloads: list[dict[str, str]] = [
        {**MARKET_BUY, "client_order_id": f"gc{i}"} for i in range(50)]
    if keys == "conflicting":  # in the same burst: a retry, and another order on a used key
        payloads[10] = {**MARKET_BUY, "client_order_id": "gc11"}
        payloads[20] = {**MARKET_BUY, "side": "sell", "client_order_id": "gc21"}
    async with CheckingServer() as server:
        server.durability, server.violations, server.received = durability, [], []
        async with routers_for(server, "binance", bagbot_binance.plugin, timeout=10) as make:
            router = make()
            assert router.group_commit  # on by default
            engine = get_async_engine(url)
            sessions = async_sessionmaker(engine, expire_on_commit=False)

            async def one(payload: dict[str, str]) -> Any:
                async with sessions() as db:
                    return await router.route_order("binance", payload, db, "gc-user")

            try:
                results = await asyncio.gather(*(one(p) for p in payloads),
                                               return_exceptions=True)
            finally:
                await engine.dispose()
    assert server.violations == []
    refused = [r for r in results if isinstance(r, BaseException)]
    with session_factory(get_engine(url))() as db:
        rows = list(db.scalars(select(Order)))
    distinct = {p["client_order_id"] for p in payloads}
    assert sorted(r.client_order_id for r in rows) == sorted(distinct)  # one row per key
    assert sorted(server.received) == sorted(distinct)  # each key sent once
    if keys == "fresh":
        assert refused == [] and len(rows) == 50
    else:
        assert len(refused) == 1 and isinstance(refused[0], IdempotencyKeyReusedError), refused
        assert len(rows) == 48
    assert {r.status for r in rows} == {"filled"}
    flusher = group_commit.flusher(path)
    assert flusher.flushes == durability.flushes < flusher.waits
