"""bagbot-coinbase passes the connector conformance suite against its fake Coinbase server.

The whole suite comes from bagbot-core; this file only says how to reach and steer the fake
(:class:`CoinbaseHandle`). The server gets a fresh throwaway CDP key whose name and PEM are
the canaries of the suite's secrets test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from bagbot_coinbase.testing import FakeCoinbaseServer, generate_cdp_key, start_fake_coinbase

from bagbot_core.orders import Side
from bagbot_core.testing.conformance import ConnectorConformance, ExchangeHandle, Placement

ORDERS_PATH = "/api/v3/brokerage/orders"
PRODUCTS_PATH = "/api/v3/brokerage/market/products"
#: The first request of each connector read the suite makes fail (``*``: a path prefix).
READ_REQUESTS = {
    "fetch_order": ("GET", f"{ORDERS_PATH}/historical/*"),
    "cancel_order": ("POST", f"{ORDERS_PATH}/batch_cancel"),
    "load_markets": ("GET", PRODUCTS_PATH),
    "fetch_quote": ("GET", f"{PRODUCTS_PATH}/*"),
}


class CoinbaseHandle(ExchangeHandle):
    """The suite's handle on a :class:`FakeCoinbaseServer` (default book: BTC-USD at 50000,
    no spread, no fees; 100000 USD, 1 BTC, 10 ETH)."""

    symbol = "BTC/USD"
    unknown_symbol = "NOPE/USD"
    insufficient_funds_text = "insufficient balance"

    def __init__(self, server: FakeCoinbaseServer) -> None:
        self.server = server

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
        # The PEM's base64 body (one line of it) is what would leak, not its armour lines.
        body_line = self.server.api_secret.splitlines()[1]
        return (self.server.api_key, self.server.api_secret, body_line)

    @property
    def market_id(self) -> str:
        return self.symbol.replace("/", "-")

    async def market_fill_price(self, side: Side) -> Decimal:
        market = self.server.book.market(self.market_id)
        return market.ask if side is Side.BUY else market.bid

    async def set_price(self, price: Decimal) -> None:
        self.server.book.set_price(self.market_id, price)

    async def drop_next_response(self) -> None:
        self.server.drop_after_accept(method="POST", path=ORDERS_PATH)

    async def reject_next_order(self) -> str:
        self.server.fail_with("unsupported_configuration")
        return "source is not enabled for trading"

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
        for request in self.server.requests_to(ORDERS_PATH, "POST"):
            try:
                body = json.loads(request.body)
            except ValueError:
                continue
            if isinstance(body, dict) and "client_order_id" in body:
                seen.append(str(body["client_order_id"]))
        return seen

    async def market_requests(self) -> int:
        return len(self.server.requests_to("/api/v3/brokerage/market/products", "GET"))

    async def placements(self) -> Sequence[Placement]:
        """Each ``POST /orders`` body as Coinbase reads it: the product, the side and the one
        ``order_configuration`` (its kind gives the type, its fields the sizes and prices)."""
        found = []
        for request in self.server.requests_to(ORDERS_PATH, "POST"):
            try:
                body = json.loads(request.body)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            configuration = body.get("order_configuration")
            kind, spec = "", {}
            if isinstance(configuration, dict) and len(configuration) == 1:
                ((kind, spec),) = configuration.items()
            spec = spec if isinstance(spec, dict) else {}
            found.append(Placement(
                symbol=str(body.get("product_id", "")).replace("-", "/"),
                side=str(body.get("side", "")).lower(),
                type=_TYPES.get(kind, kind),
                amount=_number(spec.get("base_size")),
                price=_number(spec.get("limit_price")),
                client_order_id=body.get("client_order_id"),
                quote_amount=_number(spec.get("quote_size")),
                stop_price=_number(spec.get("stop_price")),
            ))
        return found


#: Order configurations that are plain market or limit orders; any other kind is reported
#: under its own name.
_TYPES = {"market_market_ioc": "market", "limit_limit_gtc": "limit"}


def _number(value: object) -> Decimal | None:
    """A JSON field as Coinbase reads a number; NaN (equal to nothing) when unreadable."""
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return Decimal("NaN")


class TestCoinbaseConformance(ConnectorConformance):
    connector_name = "coinbase"

    @pytest.fixture
    async def handle(self) -> AsyncIterator[ExchangeHandle]:
        api_key, api_secret = generate_cdp_key(org="canary-org")
        async with start_fake_coinbase(api_key=api_key, api_secret=api_secret) as server:
            yield CoinbaseHandle(server)
