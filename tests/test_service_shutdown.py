"""``bagbot serve`` as an operator runs it: a subprocess, orders over HTTP, then SIGTERM.

The exchange is a throwaway third-party plugin distribution installed for the test (like
tests/test_plugins.py does), whose order placement takes as long as the test says: orders
are really in flight at the exchange when the signal arrives. Every row must end in a
truthful final state -- never ``pending`` -- and the process must exit 0.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order
from tests.service_helpers import START_TIMEOUT, Served, make_token, serve_process
from tests.test_plugins import build_and_install

ROOT = Path(__file__).resolve().parents[1]

SLOW_PLUGIN = '''
import asyncio
import os
import time
from decimal import Decimal

from bagbot_core.plugin import (
    Connector, ConnectorSpec, ExchangeOrder, ExchangeOrderNotFoundError, Market, OrderStatus,
    Quote, hookimpl,
)

MARKETS = {"BTC/USDT": Market("BTC/USDT", "BTC", "USDT", amount_step=Decimal("0.00001"),
                              price_step=Decimal("0.01"))}


class SlowConnector(Connector):
    """An exchange that takes SLOW_EXCHANGE_SECONDS to place an order, then fills it."""

    name = "slow"

    def endpoints(self):
        return ()  # nothing leaves the process

    async def load_markets(self, *, reload=False):
        return MARKETS

    async def fetch_quote(self, symbol):
        return Quote(symbol, Decimal("49990"), Decimal("50010"), time.monotonic())

    async def create_order(self, order, client_order_id):
        await asyncio.sleep(float(os.environ["SLOW_EXCHANGE_SECONDS"]))
        return ExchangeOrder("x-" + client_order_id, client_order_id, OrderStatus.FILLED,
                             order.symbol, filled_qty=order.amount, avg_price=Decimal("50010"),
                             amount=order.amount, raw_status="FILLED")

    async def fetch_order(self, symbol, *, external_id, client_order_id):
        raise ExchangeOrderNotFoundError(client_order_id)

    async def cancel_order(self, symbol, *, external_id, client_order_id):
        raise ExchangeOrderNotFoundError(client_order_id)


@hookimpl
def bagbot_add_connectors():
    return [ConnectorSpec("slow", lambda settings: SlowConnector(), "a slow exchange")]
'''

ORDER = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}


@pytest.fixture(scope="module")
def slow_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_and_install(tmp_path_factory.mktemp("slow"), "slow-bagbot", "slow_bagbot",
                             SLOW_PLUGIN, "slow")


def environment(site: Path, tmp_path: Path, *, delay: float, grace: int) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BAGBOT_")}
    return {**clean, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
            "SLOW_EXCHANGE_SECONDS": str(delay), "BAGBOT_SERVICE_SHUTDOWN_GRACE": str(grace),
            "BAGBOT_LOG_FILE": str(tmp_path / "audit.log"),
            "XDG_DATA_HOME": str(tmp_path / "xdg"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def rows(db_url: str) -> list[Order]:
    with session_factory(get_engine(db_url))() as session:
        return list(session.scalars(select(Order).order_by(Order.id)))


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        yield executor


def fire(served: Served, token: str, pool: concurrent.futures.ThreadPoolExecutor,
         connector: str, count: int) -> list[concurrent.futures.Future[int | str]]:
    def send() -> int | str:
        try:
            with served.client(token) as client:
                return client.post("/v1/orders", json={**ORDER, "connector": connector}
                                   ).status_code
        except httpx.HTTPError as exc:  # the server went away mid-request
            return type(exc).__name__

    return [pool.submit(send) for _ in range(count)]


def stop(served: Served) -> int:
    assert served.process is not None
    served.process.send_signal(signal.SIGTERM)
    return served.process.wait(START_TIMEOUT)


def test_sigterm_cancels_orders_past_the_grace_as_unknown_and_exits_0(
        db_url: str, slow_site: Path, tmp_path: Path,
        pool: concurrent.futures.ThreadPoolExecutor) -> None:
    token = make_token(db_url, "alice")
    log = tmp_path / "serve.log"
    env = environment(slow_site, tmp_path, delay=600, grace=1)
    with serve_process(db_url, env, log=log) as served:
        done = fire(served, token, pool, "paper", 3)
        assert [f.result() for f in done] == [201, 201, 201]
        slow = fire(served, token, pool, "slow", 4)
        wait_for(lambda: sum(r.status == "pending" for r in rows(db_url)) == 4,
                 "four orders at the exchange")
        assert stop(served) == 0, log.read_text()
        answers = [f.result() for f in slow]
    final = rows(db_url)
    assert [r.status for r in final] == ["filled"] * 3 + ["unknown"] * 4, answers
    assert all("CancelledError" in (r.reason or "") for r in final[3:])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/healthz", timeout=5)
    secret = token.split("_", 2)[2]
    for text in (log.read_text(), (tmp_path / "audit.log").read_text()):
        assert secret not in text


def test_sigterm_lets_orders_in_flight_finish_within_the_grace(
        db_url: str, slow_site: Path, tmp_path: Path,
        pool: concurrent.futures.ThreadPoolExecutor) -> None:
    token = make_token(db_url, "alice")
    log = tmp_path / "serve.log"
    env = environment(slow_site, tmp_path, delay=2, grace=60)
    with serve_process(db_url, env, log=log) as served:
        slow = fire(served, token, pool, "slow", 3)
        wait_for(lambda: sum(r.status == "pending" for r in rows(db_url)) == 3,
                 "three orders at the exchange")
        assert stop(served) == 0, log.read_text()
        assert [f.result() for f in slow] == [201, 201, 201]
    assert [r.status for r in rows(db_url)] == ["filled"] * 3
