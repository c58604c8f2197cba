"""bagbot-binance passes the connector conformance suite against its fake Binance server.

The whole suite comes from bagbot-core; this file only says how to reach and steer the fake
(:class:`BinanceHandle`). The server gets canary credentials, so the suite's secrets test
can prove they never leak.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import pytest
from bagbot_binance.testing import FakeBinanceServer, start_fake_binance

from bagbot_core.orders import Side
from bagbot_core.testing.conformance import ConnectorConformance, ExchangeHandle, Placement

pytest_plugins = ["pytester"]

ORDER_PATH = "/api/v3/order"
#: The first request of each connector read the suite makes fail.
READ_REQUESTS = {
    "fetch_order": ("GET", ORDER_PATH),
    "cancel_order": ("DELETE", ORDER_PATH),
    "load_markets": ("GET", "/api/v3/exchangeInfo"),
    "fetch_quote": ("GET", "/api/v3/ticker/bookTicker"),
}


class BinanceHandle(ExchangeHandle):
    """The suite's handle on a :class:`FakeBinanceServer`: its default book (no spread, no
    fees; 100000 USDT, 1 BTC, 10 ETH) with BTCUSDT moved to :attr:`price`."""

    insufficient_funds_text = "insufficient balance"
    #: Off round numbers, so a float anywhere on the way changes the result.
    amount = Decimal("0.00137")
    price = Decimal("43217.89")

    def __init__(self, server: FakeBinanceServer) -> None:
        self.server = server
        server.book.set_price(self.market_id, self.price)

    @property
    def connector_config(self) -> Mapping[str, Any]:
        return {
            "api_key": self.server.api_key,
            "api_secret": self.server.api_secret,
            "api_url": self.server.url,
            "enable_rate_limit": False,
            "timeout": 2,
        }

    @property
    def secrets(self) -> Sequence[str]:
        return (self.server.api_key, self.server.api_secret)

    @property
    def market_id(self) -> str:
        return self.symbol.replace("/", "")

    async def market_fill_price(self, side: Side) -> Decimal:
        market = self.server.book.market(self.market_id)
        return market.ask if side is Side.BUY else market.bid

    async def set_price(self, price: Decimal) -> None:
        self.server.book.set_price(self.market_id, price)

    async def drop_next_response(self) -> None:
        self.server.drop_after_accept(method="POST", path=ORDER_PATH)

    async def reject_next_order(self) -> str:
        self.server.fail_with("market_closed", method="POST", path=ORDER_PATH)
        return "Market is closed."

    async def drain_balance(self, asset: str) -> None:
        book = self.server.book
        book.deposit(asset, -book.balance(asset))

    async def fail_next_read(self, operation: str, fault: str) -> None:
        method, path = READ_REQUESTS[operation]
        self.server.fail_read(fault, method=method, path=path, wait=5)

    async def fill_partially(self, client_order_id: str, qty: Decimal) -> None:
        book = self.server.book
        book.fill(book.get(client_order_id=client_order_id).order_id, qty)

    async def orders_for_client_id(self, client_order_id: str) -> int:
        return len(self.server.book.orders_with_client_id(client_order_id))

    async def client_ids_seen(self) -> Sequence[str]:
        seen = []
        for request in self.server.requests_to(ORDER_PATH, "POST"):
            params = dict(parse_qsl(request.query + "&" + request.body))
            if "newClientOrderId" in params:
                seen.append(params["newClientOrderId"])
        return seen

    async def market_requests(self) -> int:
        return len(self.server.requests_to("/api/v3/exchangeInfo", "GET"))

    async def placements(self) -> Sequence[Placement]:
        """Each ``POST /api/v3/order`` as Binance reads its form fields."""
        markets = self.server.book.markets
        found = []
        for request in self.server.requests_to(ORDER_PATH, "POST"):
            fields = dict(parse_qsl(request.query + "&" + request.body))
            market = markets.get(fields.get("symbol", ""))
            found.append(Placement(
                symbol=f"{market.base}/{market.quote}" if market else fields.get("symbol", ""),
                side=fields.get("side", "").lower(),
                type=fields.get("type", "").lower(),
                amount=_number(fields.get("quantity")),
                price=_number(fields.get("price")),
                client_order_id=fields.get("newClientOrderId"),
                quote_amount=_number(fields.get("quoteOrderQty")),
                stop_price=_number(fields.get("stopPrice")),
            ))
        return found


def _number(text: str | None) -> Decimal | None:
    """A form field as Binance reads a number; NaN (equal to nothing) when unreadable."""
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("NaN")


class TestBinanceConformance(ConnectorConformance):
    connector_name = "binance"

    @pytest.fixture
    async def handle(self) -> AsyncIterator[ExchangeHandle]:
        canary = uuid.uuid4().hex
        async with start_fake_binance(
            api_key=f"canaryKey{canary}", api_secret=f"canarySecret{canary}"
        ) as server:
            yield BinanceHandle(server)


#: The suite against a Binance connector whose error mapping raises a bare Exception: the
#: read-fault tests must catch it (today's other tests all pass such a connector).
PLAIN_CLASSIFY = """
import pytest
import test_conformance as base
from bagbot_binance.connector import BinanceConnector

from bagbot_core.plugin import ConnectorSpec, hookimpl
from bagbot_core.plugins import PluginRegistry


class PlainClassify(BinanceConnector):
    def classify_error(self, exc):
        raise Exception(f"unmapped {type(exc).__name__}")


class Plugin:
    @hookimpl
    def bagbot_add_connectors(self):
        return [ConnectorSpec("plain_classify", PlainClassify, "classify_error raises")]


class TestPlainClassify(base.TestBinanceConformance):
    connector_name = "plain_classify"

    def make_registry(self):
        return PluginRegistry(disabled=(), plugins=[("plain_classify", Plugin())])
"""


def test_read_fault_tests_catch_a_classify_error_raising_a_plain_exception(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_plain_classify=PLAIN_CLASSIFY)
    recorder = pytester.inline_run("-p", "no:cacheprovider", "-k", "read_faults",
                                   "test_plain_classify.py")
    failed = {r.nodeid.rsplit("::", 1)[-1]: str(r.longrepr)
              for r in recorder.getreports("pytest_runtest_logreport") if r.failed}
    assert set(failed) == {
        "test_read_faults_on_orders_raise_exchange_unavailable",
        "test_read_faults_on_markets_and_quotes_raise_exchange_unavailable",
    }, failed
    assert "raised Exception: unmapped" in failed[
        "test_read_faults_on_orders_raise_exchange_unavailable"]
