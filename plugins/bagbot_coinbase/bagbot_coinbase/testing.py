"""A fake Coinbase Advanced Trade REST API for tests, speaking the wire format ccxt uses.

Built on :mod:`bagbot_core.testing.fake_exchange` (book, request log, fault injection --
nothing Coinbase-specific is duplicated there). On ``127.0.0.1`` only.

Like the real API it

* verifies the ES256 JWT on every private request -- ``kid``/``sub`` a known CDP key name,
  ``aud = ["retail_rest_api_proxy"]``, ``iss = "coinbase-cloud"``, ``nbf``/``exp`` (at most
  120 s, checked against the clock), ``uri = "<METHOD> <host><path>"`` and the ECDSA P-256
  signature -- and answers ``401 Unauthorized`` (text) otherwise. One leniency: ccxt strips
  only ``https://`` from the ``uri``, so on plain-HTTP loopback ``"GET http://127.0.0.1:…"``
  is accepted as well (the real API is HTTPS-only, where the two forms coincide);
* keeps a :class:`~bagbot_core.testing.fake_exchange.FakeBook` keyed by product id
  (``BTC-USD``) with balances, resting limit orders and fills;
* de-duplicates ``client_order_id``: creating again with a known id returns the existing
  order's success answer and places nothing (:attr:`FakeCoinbaseServer.duplicate_creates`);
* answers with Coinbase's own shapes (taken from the API reference and ccxt's recorded
  responses): ``{"success": false, "error_response": {...}}`` for refused orders,
  ``{"error": "INVALID_ARGUMENT", ...}`` with HTTP 400, ``{"error": "NOT_FOUND", ...}`` with
  HTTP 404 for unknown orders, ``{"results": [...]}`` for cancels.

Endpoints (all under ``/api/v3/brokerage``): public ``GET /market/products``,
``/market/products/{id}``, ``/market/products/{id}/ticker``, ``/time``; private ``GET
/products``, ``/accounts``, ``/transaction_summary``, ``POST /orders`` (``market_market_ioc``
with ``base_size`` or ``quote_size``, ``limit_limit_gtc``), ``GET /orders/historical/batch``,
``GET /orders/historical/{order_id}``, ``POST /orders/batch_cancel``.

Usage::

    async with start_fake_coinbase() as server:
        connector = connector_for(server)
        ...
        await connector.close()

Credentials: every server generates a throwaway P-256 key (:func:`generate_cdp_key`); it is
never a real key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bagbot_core.testing.fake_exchange import (
    BookError,
    FakeBook,
    FakeExchangeServer,
    FakeMarket,
    FakeOrder,
    connector_settings,
)

if TYPE_CHECKING:
    from bagbot_coinbase.connector import CoinbaseConnector

__all__ = [
    "ERRORS",
    "FakeCoinbaseServer",
    "connector_for",
    "default_book",
    "generate_cdp_key",
    "start_fake_coinbase",
]

BROKERAGE = "/api/v3/brokerage"
ORDERS_PATH = f"{BROKERAGE}/orders"
PRODUCTS_PATH = f"{BROKERAGE}/market/products"

#: Refusals of ``POST /orders``: name -> (error, message, preview_failure_reason), answered
#: with HTTP 200 and ``success: false`` like the real API.
ERRORS: dict[str, tuple[str, str, str]] = {
    "insufficient_fund": ("INSUFFICIENT_FUND", "Insufficient balance in source account",
                          "PREVIEW_INSUFFICIENT_FUND"),
    "unsupported_configuration": ("UNSUPPORTED_ORDER_CONFIGURATION",
                                  "source is not enabled for trading", ""),
    "invalid_product": ("INVALID_PRODUCT_ID", "Product ID is invalid", ""),
    "size_precision": ("INVALID_SIZE_PRECISION", "Invalid order size precision", ""),
    "price_precision": ("INVALID_PRICE_PRECISION", "Invalid price precision", ""),
    "base_too_small": ("INVALID_ARGUMENT", "Order size is too small",
                       "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL"),
    "base_too_large": ("INVALID_ARGUMENT", "Order size is too large",
                       "PREVIEW_INVALID_BASE_SIZE_TOO_LARGE"),
    "quote_too_small": ("INVALID_ARGUMENT", "Order value is too small",
                        "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL"),
    "post_only": ("INVALID_LIMIT_PRICE_POST_ONLY", "Post only order would cross", ""),
    "trading_disabled": ("ORDER_ENTRY_DISABLED", "Trading is disabled for this product", ""),
}

_STATUS = {"open": "OPEN", "filled": "FILLED", "canceled": "CANCELLED",
           "expired": "EXPIRED", "rejected": "FAILED"}


def generate_cdp_key(org: str | None = None) -> tuple[str, str]:
    """A throwaway CDP-style key: ``(organizations/…/apiKeys/…, EC P-256 PEM)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    name = f"organizations/{org or uuid.uuid4()}/apiKeys/{uuid.uuid4()}"
    return name, pem


def default_book() -> FakeBook:
    """BTC-USD at 50000 and ETH-USD at 3000, with 100000 USD, 1 BTC and 10 ETH."""
    book = FakeBook()
    book.add_market(FakeMarket(
        "BTC-USD", "BTC", "USD", Decimal("50000.00"),
        amount_step=Decimal("0.00000001"), price_step=Decimal("0.01"),
        min_amount=Decimal("0.00000001"), max_amount=Decimal("3400"), min_cost=Decimal("1"),
    ))
    book.add_market(FakeMarket(
        "ETH-USD", "ETH", "USD", Decimal("3000.00"),
        amount_step=Decimal("0.00000001"), price_step=Decimal("0.01"),
        min_amount=Decimal("0.00000001"), max_amount=Decimal("42000"), min_cost=Decimal("1"),
    ))
    book.deposit("USD", "100000")
    book.deposit("BTC", "1")
    book.deposit("ETH", "10")
    return book


def _text(value: Decimal | None) -> str:
    return "0" if value is None else format(value.normalize(), "f")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class _Invalid(Exception):
    """A 400 INVALID_ARGUMENT answer."""


class _Refused(Exception):
    """A ``success: false`` create answer (one of :data:`ERRORS`)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class FakeCoinbaseServer(FakeExchangeServer):
    """Coinbase Advanced Trade REST on 127.0.0.1 over a :class:`FakeBook` keyed by product.

    ``api_key``/``api_secret`` are the CDP key name and PEM the server accepts (generated
    unless given). ``status_overrides`` maps an order id to a raw status to report instead
    of the book's (``PENDING``, ``QUEUED``, ``CANCEL_QUEUED``, ``FAILED``,
    ``UNKNOWN_ORDER_STATUS`` ...). ``auth_failures`` lists why requests were refused.
    """

    def __init__(
        self,
        book: FakeBook | None = None,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> None:
        super().__init__(book if book is not None else default_book())
        if api_key is None or api_secret is None:
            api_key, api_secret = generate_cdp_key()
        self.api_key = api_key
        self.api_secret = api_secret
        private = serialization.load_pem_private_key(api_secret.encode(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        self.public_keys: dict[str, ec.EllipticCurvePublicKey] = {api_key: private.public_key()}
        self.status_overrides: dict[str, str] = {}
        self.auth_failures: list[str] = []
        self.duplicate_creates = 0
        #: Seconds added to the server's clock (a client whose clock drifted).
        self.clock_offset = 0.0
        self._ids: dict[int, str] = {}
        self._book_ids: dict[str, int] = {}
        self._configurations: dict[int, dict[str, Any]] = {}

    # -- ids -----------------------------------------------------------------------------

    def order_id(self, order: FakeOrder) -> str:
        """The UUID Coinbase shows for a book order."""
        found = self._ids.get(order.order_id)
        if found is None:
            found = str(uuid.uuid4())
            self._ids[order.order_id] = found
            self._book_ids[found] = order.order_id
        return found

    def book_order(self, order_id: str) -> FakeOrder:
        """The book order behind a Coinbase order id. :raises BookError: unknown."""
        number = self._book_ids.get(order_id)
        if number is None:
            raise BookError("order_not_found", "order with this orderID was not found")
        return self.book.get(number)

    # -- faults in Coinbase's words -------------------------------------------------------

    def fail_with(self, name: str, *, times: int | None = 1) -> None:
        """Refuse the next order placement(s) with one of :data:`ERRORS`, placing nothing."""
        self.fail_http(200, json.dumps(self._failure_body(name, {})), method="POST",
                       path=ORDERS_PATH, times=times)

    def rate_limit_body(self, status: int) -> str:
        return json.dumps({"error": "RATE_LIMIT_EXCEEDED", "error_details": "",
                           "message": "Too many requests"})

    # -- routes --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        b, get, post = BROKERAGE, web.get, web.post
        app.add_routes([
            get(f"{b}/time", self.server_time),
            get(f"{b}/market/products", self.products),
            get(f"{b}/market/products/{{product_id}}", self.product),
            get(f"{b}/market/products/{{product_id}}/ticker", self.ticker),
            get(f"{b}/products", self._private(self.products)),
            get(f"{b}/products/{{product_id}}/ticker", self._private(self.ticker)),
            get(f"{b}/accounts", self._private(self.accounts)),
            get(f"{b}/transaction_summary", self._private(self.transaction_summary)),
            post(f"{b}/orders", self._private(self.create_order)),
            get(f"{b}/orders/historical/batch", self._private(self.list_orders)),
            get(f"{b}/orders/historical/{{order_id}}", self._private(self.get_order)),
            post(f"{b}/orders/batch_cancel", self._private(self.cancel_orders)),
        ])

    @staticmethod
    def invalid_argument(message: str, status: int = 400) -> web.Response:
        return web.json_response(
            {"error": "INVALID_ARGUMENT", "error_details": message, "message": message},
            status=status)

    @staticmethod
    def not_found() -> web.Response:
        text = "order with this orderID was not found"
        return web.json_response(
            {"error": "NOT_FOUND", "error_details": text, "message": text}, status=404)

    # -- authentication ------------------------------------------------------------------

    def _private(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def checked(request: web.Request) -> web.StreamResponse:
            problem = self._check_jwt(request)
            if problem is not None:
                self.auth_failures.append(problem)
                return web.Response(status=401, text="Unauthorized\n", content_type="text/plain")
            return await handler(request)

        return checked

    def _check_jwt(self, request: web.Request) -> str | None:
        """Why the request's JWT is refused, or ``None`` when it is valid."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "no bearer token"
        try:
            head_b64, body_b64, sig_b64 = header[7:].split(".")
            head = json.loads(_b64(head_b64))
            claims = json.loads(_b64(body_b64))
            signature = _b64(sig_b64)
        except (ValueError, TypeError):
            return "malformed token"
        if head.get("alg") != "ES256":
            return f"alg {head.get('alg')!r}"
        key = self.public_keys.get(str(head.get("kid")))
        if key is None:
            return "unknown kid"
        if not head.get("nonce"):
            return "no nonce"
        if len(signature) != 64:
            return "bad signature length"
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        try:
            key.verify(der, f"{head_b64}.{body_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad signature"
        if claims.get("sub") != head.get("kid"):
            return "sub is not the key name"
        if claims.get("iss") != "coinbase-cloud":
            return f"iss {claims.get('iss')!r}"
        if "retail_rest_api_proxy" not in (claims.get("aud") or []):
            return f"aud {claims.get('aud')!r}"
        now = time.time() + self.clock_offset
        try:
            nbf, exp = float(claims["nbf"]), float(claims["exp"])
        except (KeyError, TypeError, ValueError):
            return "nbf/exp missing"
        if nbf > now + 5:
            return "not valid yet"
        if exp <= now:
            return "expired"
        if exp - nbf > 120:
            return "valid for more than 120 s"
        host = request.host
        expected = {f"{request.method} {host}{request.path}",
                    f"{request.method} http://{host}{request.path}"}
        if claims.get("uri") not in expected:
            return f"uri {claims.get('uri')!r}"
        return None

    # -- public --------------------------------------------------------------------------

    async def server_time(self, request: web.Request) -> web.Response:
        now = time.time()
        return web.json_response({"iso": _iso(int(now * 1000)), "epochSeconds": str(int(now)),
                                  "epochMillis": str(int(now * 1000))})

    def product_json(self, m: FakeMarket) -> dict[str, Any]:
        return {
            "product_id": m.symbol,
            "price": _text(m.price),
            "price_percentage_change_24h": "0",
            "volume_24h": "100",
            "volume_percentage_change_24h": "0",
            "base_increment": _text(m.amount_step),
            "quote_increment": _text(m.price_step),
            "quote_min_size": _text(m.min_cost),
            "quote_max_size": "150000000",
            "base_min_size": _text(m.min_amount),
            "base_max_size": _text(m.max_amount),
            "base_name": m.base,
            "quote_name": m.quote,
            "watched": False,
            "is_disabled": False,
            "new": False,
            "status": "online" if m.active else "offline",
            "cancel_only": False,
            "limit_only": False,
            "post_only": False,
            "trading_disabled": not m.active,
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": m.quote,
            "base_currency_id": m.base,
            "fcm_trading_session_details": None,
            "mid_market_price": "",
            "alias": "",
            "alias_to": [],
            "base_display_symbol": m.base,
            "quote_display_symbol": m.quote,
            "view_only": False,
            "price_increment": _text(m.price_step),
            "display_name": f"{m.base}-{m.quote}",
            "product_venue": "CBE",
        }

    async def products(self, request: web.Request) -> web.Response:
        kind = request.query.get("product_type", "SPOT")
        wanted = request.query.getall("product_ids", [])
        products = [
            self.product_json(m) for m in self.book.markets.values()
            if kind == "SPOT" and (not wanted or m.symbol in wanted)
        ]
        return web.json_response({"products": products, "num_products": len(products)})

    async def product(self, request: web.Request) -> web.Response:
        market = self.book.markets.get(request.match_info["product_id"])
        if market is None:
            return web.json_response({"error": "NOT_FOUND", "error_details": "",
                                      "message": "ProductID not found"}, status=404)
        return web.json_response(self.product_json(market))

    async def ticker(self, request: web.Request) -> web.Response:
        market = self.book.markets.get(request.match_info["product_id"])
        if market is None:
            return web.json_response({"error": "NOT_FOUND", "error_details": "",
                                      "message": "ProductID not found"}, status=404)
        return web.json_response({
            "trades": [{
                "trade_id": "635541194", "product_id": market.symbol,
                "price": _text(market.price), "size": "0.01",
                "time": _iso(int(time.time() * 1000)), "side": "BUY",
                "bid": "", "ask": "", "exchange": "CBE",
            }],
            "best_bid": _text(market.bid),
            "best_ask": _text(market.ask),
        })

    # -- private: account ----------------------------------------------------------------

    async def accounts(self, request: web.Request) -> web.Response:
        book = self.book
        accounts = [{
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-coinbase/{asset}")),
            "name": f"{asset} Wallet",
            "currency": asset,
            "available_balance": {"value": _text(book.free[asset]), "currency": asset},
            "default": True,
            "active": True,
            "created_at": "2024-01-01T00:00:00.000Z",
            "updated_at": _iso(int(time.time() * 1000)),
            "deleted_at": None,
            "type": "ACCOUNT_TYPE_FIAT" if asset in ("USD", "EUR") else "ACCOUNT_TYPE_CRYPTO",
            "ready": True,
            "hold": {"value": _text(book.locked.get(asset)), "currency": asset},
            "retail_portfolio_id": "00000000-0000-0000-0000-000000000000",
        } for asset in sorted(book.free)]
        return web.json_response({"accounts": accounts, "has_next": False, "cursor": "",
                                  "size": len(accounts)})

    async def transaction_summary(self, request: web.Request) -> web.Response:
        return web.json_response({
            "total_volume": 0, "total_fees": 0,
            "fee_tier": {"pricing_tier": "Advanced 1", "usd_from": "0", "usd_to": "1000",
                         "taker_fee_rate": "0", "maker_fee_rate": "0"},
            "margin_rate": None, "goods_and_services_tax": None,
            "advanced_trade_only_volume": 0, "advanced_trade_only_fees": 0,
            "coinbase_pro_volume": 0, "coinbase_pro_fees": 0,
        })

    # -- private: orders -----------------------------------------------------------------

    def _failure_body(self, name: str, configuration: Mapping[str, Any]) -> dict[str, Any]:
        error, message, preview = ERRORS[name]
        failure: dict[str, Any] = {"error": error, "message": message, "error_details": "",
                                   "new_order_failure_reason": error}
        if preview:
            failure["preview_failure_reason"] = preview
        return {"success": False, "failure_reason": "UNKNOWN_FAILURE_REASON", "order_id": "",
                "error_response": failure, "order_configuration": dict(configuration) or None}

    def _success_body(self, order: FakeOrder) -> dict[str, Any]:
        order_id = self.order_id(order)
        return {
            "success": True,
            "failure_reason": "UNKNOWN_FAILURE_REASON",
            "order_id": order_id,
            "success_response": {
                "order_id": order_id,
                "product_id": order.symbol,
                "side": order.side.upper(),
                "client_order_id": order.client_order_id,
            },
            "order_configuration": self._configurations.get(order.order_id),
        }

    async def create_order(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            return self.invalid_argument("request body is not valid JSON")
        if not isinstance(body, dict):
            return self.invalid_argument("request body must be an object")
        configuration = body.get("order_configuration")
        try:
            client_id = body.get("client_order_id")
            if not isinstance(client_id, str) or not client_id:
                raise _Invalid("client_order_id is required")
            existing = self.book.orders_with_client_id(client_id)
            if existing:  # Coinbase: a known client_order_id returns that order, places nothing
                self.duplicate_creates += 1
                return web.json_response(self._success_body(existing[0]))
            order = self._place(body)
        except _Invalid as bad:
            return self.invalid_argument(str(bad))
        except _Refused as refused:
            return web.json_response(
                self._failure_body(refused.name, configuration or {}))
        return web.json_response(self._success_body(order))

    def _place(self, body: Mapping[str, Any]) -> FakeOrder:
        product_id = body.get("product_id")
        side = body.get("side")
        if side not in ("BUY", "SELL"):
            raise _Invalid(f"invalid side {side!r}")
        configuration = body.get("order_configuration")
        if not isinstance(configuration, dict) or len(configuration) != 1:
            raise _Invalid("order_configuration must hold exactly one configuration")
        ((kind, spec),) = configuration.items()
        if kind not in ("market_market_ioc", "limit_limit_gtc") or not isinstance(spec, dict):
            raise _Refused("unsupported_configuration")
        market = self.book.markets.get(str(product_id))
        if market is None:
            raise _Refused("invalid_product")
        if not market.active:
            raise _Refused("trading_disabled")
        base = _decimal(spec, "base_size")
        quote = _decimal(spec, "quote_size")
        price = _decimal(spec, "limit_price")
        if kind == "limit_limit_gtc":
            if base is None or price is None:
                raise _Invalid("limit_limit_gtc needs base_size and limit_price")
            if market.price_step and price % market.price_step:
                raise _Refused("price_precision")
        elif (base is None) == (quote is None):
            raise _Invalid("market_market_ioc needs exactly one of base_size and quote_size")
        if quote is not None:
            if market.price_step and quote % market.price_step:
                raise _Refused("price_precision")
            if market.min_cost is not None and quote < market.min_cost:
                raise _Refused("quote_too_small")
            if side != "BUY":
                raise _Invalid("quote_size is only supported for BUY market orders")
        if base is not None:
            if market.amount_step and base % market.amount_step:
                raise _Refused("size_precision")
            if market.min_amount is not None and base < market.min_amount:
                raise _Refused("base_too_small")
            if market.max_amount is not None and base > market.max_amount:
                raise _Refused("base_too_large")
            value = base * (price if price is not None else market.price)
            if market.min_cost is not None and value < market.min_cost:
                raise _Refused("quote_too_small")
        if kind == "limit_limit_gtc" and spec.get("post_only") is True:
            assert price is not None
            if price >= market.ask if side == "BUY" else price <= market.bid:
                raise _Refused("post_only")
        if quote is not None and market.amount_step:
            bought = (quote / market.ask / market.amount_step).quantize(
                Decimal(1), rounding=ROUND_DOWN)
            if bought <= 0:
                raise _Refused("quote_too_small")
        try:
            order = self.book.place(
                market.symbol,
                "buy" if side == "BUY" else "sell",
                "market" if kind == "market_market_ioc" else "limit",
                base,
                price,
                client_order_id=str(body["client_order_id"]),
                quote_amount=quote,
                time_in_force="IOC" if kind == "market_market_ioc" else "GTC",
            )
        except BookError as exc:
            if exc.kind == "insufficient_balance":
                raise _Refused("insufficient_fund") from None
            raise _Invalid(str(exc)) from None
        self._configurations[order.order_id] = dict(configuration)
        if kind == "market_market_ioc" and order.is_open:
            self.book.expire(order.order_id)
        return order

    async def get_order(self, request: web.Request) -> web.Response:
        try:
            order = self.book_order(request.match_info["order_id"])
        except BookError:
            return self.not_found()
        return web.json_response({"order": self.order_json(order)})

    async def list_orders(self, request: web.Request) -> web.Response:
        query = request.query
        products = set(query.getall("product_ids", []))
        statuses = set(query.getall("order_status", []))
        ids = set(query.getall("order_ids", []))
        try:
            limit = min(int(query.get("limit", "100")), 1000)
            start = int(query.get("cursor") or 0)
        except ValueError:
            return self.invalid_argument("limit and cursor must be integers")
        if limit <= 0:
            return self.invalid_argument("limit must be positive")
        orders = sorted(self.book.orders.values(), key=lambda o: o.order_id, reverse=True)
        rows = [self.order_json(o) for o in orders]
        rows = [
            r for r in rows
            if (not products or r["product_id"] in products)
            and (not statuses or r["status"] in statuses)
            and (not ids or r["order_id"] in ids)
        ]
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        return web.json_response({"orders": page, "sequence": "0", "has_next": more,
                                  "cursor": str(start + limit) if more else ""})

    async def cancel_orders(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text() or "{}")
            ids = body["order_ids"]
            if not isinstance(ids, list) or not ids:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self.invalid_argument("order_ids is required")
        results = []
        for order_id in ids:
            try:
                order = self.book_order(str(order_id))
            except BookError:
                results.append({"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER",
                                "order_id": order_id})
                continue
            if not order.is_open:
                results.append({"success": False,
                                "failure_reason": "COMMANDER_REJECTED_CANCEL_ORDER",
                                "order_id": order_id})
                continue
            self.book.cancel(order.order_id)
            results.append({"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                            "order_id": order_id})
        return web.json_response({"results": results})

    # -- JSON shapes ---------------------------------------------------------------------

    def raw_status(self, order: FakeOrder) -> str:
        return self.status_overrides.get(self.order_id(order)) or _STATUS[order.status]

    def order_json(self, order: FakeOrder) -> dict[str, Any]:
        """An order as ``GET /orders/historical/{id}`` shows it (ccxt's recorded shape)."""
        configuration: dict[str, Any] = self._configurations.get(order.order_id) or {}
        spec: dict[str, Any] = next(iter(configuration.values()), {})
        filled = order.filled
        fees = sum((f.commission for f in order.fills), Decimal(0))
        avg = order.avg_price
        base_size = spec.get("base_size")
        total = Decimal(base_size) if base_size else order.amount
        return {
            "order_id": self.order_id(order),
            "product_id": order.symbol,
            "user_id": "dbcb91e7-2bc9-5152-bb6f-72d6677e6727",
            "order_configuration": configuration,
            "side": order.side.upper(),
            "client_order_id": order.client_order_id,
            "status": self.raw_status(order),
            "time_in_force": ("IMMEDIATE_OR_CANCEL" if order.type == "market"
                              else "GOOD_UNTIL_CANCELLED"),
            "created_time": _iso(order.created_ms),
            "completion_percentage": _text(
                (filled / total * 100).quantize(Decimal("0.01")) if total else Decimal(0)),
            "filled_size": _text(filled),
            "average_filled_price": _text(avg),
            "fee": "",
            "number_of_fills": str(len(order.fills)),
            "filled_value": _text(order.cost),
            "pending_cancel": False,
            "size_in_quote": "quote_size" in spec,
            "total_fees": _text(fees),
            "size_inclusive_of_fees": False,
            "total_value_after_fees": _text(order.cost + fees if order.side == "buy"
                                            else order.cost - fees),
            "trigger_status": "INVALID_ORDER_TYPE",
            "order_type": order.type.upper(),
            "reject_reason": "REJECT_REASON_UNSPECIFIED",
            "settled": not order.is_open,
            "product_type": "SPOT",
            "reject_message": "",
            "cancel_message": "User requested cancel" if order.status == "canceled" else "",
            "order_placement_source": "RETAIL_ADVANCED",
            "outstanding_hold_amount": _text(order.locked),
            "is_liquidation": False,
            "last_fill_time": _iso(order.updated_ms) if order.fills else None,
            "edit_history": [],
            "leverage": "",
            "margin_type": "UNKNOWN_MARGIN_TYPE",
            "retail_portfolio_id": "00000000-0000-0000-0000-000000000000",
        }


def _decimal(spec: Mapping[str, Any], name: str) -> Decimal | None:
    value = spec.get(name)
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise _Invalid(f"{name} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise _Invalid(f"{name} must be positive")
    return number


@contextlib.asynccontextmanager
async def start_fake_coinbase(
    book: FakeBook | None = None,
    *,
    api_key: str | None = None,
    api_secret: str | None = None,
) -> AsyncIterator[FakeCoinbaseServer]:
    """Run a :class:`FakeCoinbaseServer` in the current event loop for the ``with`` body."""
    async with FakeCoinbaseServer(book, api_key=api_key, api_secret=api_secret) as server:
        yield server


def connector_for(
    server: FakeCoinbaseServer, *, testnet: bool = True, **config: Any
) -> CoinbaseConnector:
    """A :class:`CoinbaseConnector` pointed at ``server`` (``api_url``), rate limiter off."""
    from bagbot_coinbase.connector import CoinbaseConnector

    return CoinbaseConnector(connector_settings(server, testnet=testnet, **config))
