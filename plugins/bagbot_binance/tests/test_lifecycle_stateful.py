"""Hypothesis state machine over the order lifecycle: the real router, the Binance connector,
the fake Binance server (with faults) and a real database file.

Rules route orders (some under a dropped answer, a 5xx or a refusal), move the market (resting
limits fill), fill part of an order, expire one on the exchange's side, and sync, cancel and
reconcile through the router. After every step:

* every status change went through a legal transition, and every change has exactly one
  ``bagbot_order_status_changed`` notification and one ``status_changed`` audit event,
  consecutive from the row's first status to its current one;
* ``filled_qty <= qty``;
* a terminal status never changes again;
* no client order id has more than one order on the exchange.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import shutil
import tempfile
from collections import defaultdict
from decimal import Decimal
from typing import Any

import bagbot_binance.plugin
import structlog
from bagbot_binance.testing import FakeBinanceServer, default_book
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import select

from bagbot_core import audit, hookimpl
from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.errors import BagbotError
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus, can_transition

ORDER = "/api/v3/order"


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[int, str, str]] = []

    @hookimpl
    def bagbot_order_status_changed(self, order: Any, old: OrderStatus,
                                    new: OrderStatus) -> None:
        self.changes.append((order.id, old.value, new.value))


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="bagbot-life-")
        self.server = FakeBinanceServer(default_book())
        self._serving = self.server.run_in_thread()
        self._serving.__enter__()
        self.recorder = Recorder()
        registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[
            ("binance", bagbot_binance.plugin), ("recorder", self.recorder)])
        self.router = Router(
            registry, limits=RiskLimits(), allow_live=False,
            reconcile_grace=dt.timedelta(0),  # every request is answered before reconcile
            connector_config={"binance": {
                "api_key": self.server.api_key, "api_secret": self.server.api_secret,
                "api_url": self.server.url, "enable_rate_limit": False, "timeout": 5}})
        self.factory = session_factory(get_engine(f"sqlite:///{self.tmp}/life.db"))
        self.db = self.factory()
        self.loop = asyncio.new_event_loop()
        self.log = io.StringIO()
        audit.configure(fmt="json", stream=self.log, force=True)
        self.first_status: dict[int, str] = {}
        self.last_status: dict[int, str] = {}
        self.terminal: dict[int, str] = {}
        self.steps = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.router.aclose())
        self.loop.close()
        self.db.close()
        self._serving.__exit__(None, None, None)
        dispose_engines()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def call(self, coro: Any) -> None:
        try:
            self.loop.run_until_complete(coro)
        except BagbotError:
            pass
        finally:
            self.db.rollback()
        self.steps += 1

    def rows(self) -> list[Order]:
        with self.factory() as db:
            return list(db.scalars(select(Order).order_by(Order.id)))

    def row_ids(self) -> list[int]:
        return sorted(self.last_status)

    # -- rules ---------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["market", "limit_rest", "limit_rest", "limit_cross"]),
          side=st.sampled_from(["buy", "sell"]),
          steps=st.integers(2, 20),
          fault=st.sampled_from([None] * 6 + ["drop_after", "http_500", "reject",
                                              "malformed"]))
    def route(self, kind: str, side: str, steps: int, fault: str | None) -> None:
        amount = str(Decimal("0.0001") * steps)
        payload: dict[str, Any] = {"symbol": "BTC/USDT", "side": side, "amount": amount,
                                   "type": "market" if kind == "market" else "limit"}
        if kind != "market":
            away = Decimal(500 + steps)
            rest = (side == "buy") == (kind == "limit_rest")
            payload["price"] = str(Decimal(50000) - away if rest else Decimal(50000) + away)
            if side == "sell":
                payload["price"] = str(Decimal(50000) + away if kind == "limit_rest"
                                       else Decimal(50000) - away)
        if fault == "drop_after":
            self.server.drop_after_accept(method="POST", path=ORDER)
        elif fault == "http_500":
            self.server.fail_http(500, "", method="POST", path=ORDER)
        elif fault == "reject":
            self.server.fail_with("insufficient_balance", method="POST", path=ORDER)
        elif fault == "malformed":
            self.server.malformed_json(method="POST", path=ORDER)
        self.call(self.router.route_order("binance", payload, self.db, "life"))
        self.server.clear_faults()

    @rule(price=st.sampled_from(["48000", "49400", "50000", "50600", "52000"]))
    def move_market(self, price: str) -> None:
        self.server.book.set_price("BTCUSDT", Decimal(price))
        self.steps += 1

    @precondition(lambda self: bool(self.server.book.open_orders()))
    @rule(pick=st.integers(0, 100), share=st.sampled_from(["0.3", "0.5", "1"]))
    def exchange_fills_part(self, pick: int, share: str) -> None:
        open_orders = self.server.book.open_orders()
        order = open_orders[pick % len(open_orders)]
        qty = (order.remaining * Decimal(share)).quantize(Decimal("0.00001"))
        if qty > 0:
            self.server.book.fill(order.order_id, qty)
        self.steps += 1

    @precondition(lambda self: bool(self.server.book.open_orders()))
    @rule(pick=st.integers(0, 100))
    def exchange_expires(self, pick: int) -> None:
        open_orders = self.server.book.open_orders()
        self.server.book.expire(open_orders[pick % len(open_orders)].order_id)
        self.steps += 1

    @precondition(lambda self: bool(self.last_status))
    @rule(pick=st.integers(0, 100))
    def sync(self, pick: int) -> None:
        ids = self.row_ids()
        self.call(self.router.sync_order(self.db, ids[pick % len(ids)]))

    @precondition(lambda self: bool(self.last_status))
    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        ids = self.row_ids()
        self.call(self.router.cancel_order(self.db, ids[pick % len(ids)]))

    @rule()
    def reconcile(self) -> None:
        self.call(self.router.reconcile(self.db, "binance"))

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def lifecycle_holds(self) -> None:
        rows = self.rows()
        changes: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for order_id, old, new in self.recorder.changes:
            changes[order_id].append((old, new))
        logged: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for line in self.log.getvalue().splitlines():
            event = json.loads(line)
            if event.get("event") == "status_changed":
                logged[event["order_id"]].append((event["old"], event["new"]))
        for row in rows:
            assert row.filled_qty <= row.qty, row
            first = self.first_status.setdefault(
                row.id, OrderStatus.PENDING.value if changes[row.id] else row.status)
            previous = self.last_status.get(row.id, first)
            assert can_transition(previous, row.status), (row, previous)
            if row.id in self.terminal:
                assert row.status == self.terminal[row.id], (row, self.terminal[row.id])
            if OrderStatus(row.status).is_terminal:
                self.terminal[row.id] = row.status
            self.last_status[row.id] = row.status
            # One notification and one audit event per transition, consecutive and legal.
            chain = changes[row.id]
            assert logged[row.id] == chain, (row, logged[row.id], chain)
            status = first
            for old, new in chain:
                assert old == status and old != new and can_transition(old, new), (row, chain)
                status = new
            assert status == row.status, (row, chain)
        book_ids = [o.client_order_id for o in self.server.book.orders.values()]
        assert len(book_ids) == len(set(book_ids)), "a client order id is on the exchange twice"
        assert len(self.recorder.changes) == sum(len(c) for c in changes.values())


Lifecycle.TestCase.settings = settings(
    max_examples=15, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)


class TestLifecycle(Lifecycle.TestCase):  # type: ignore[name-defined,misc]
    def setUp(self) -> None:
        self._saved = structlog.get_config(), audit._configured

    def tearDown(self) -> None:
        config, configured = self._saved
        structlog.configure(**config)
        audit._configured = configured
