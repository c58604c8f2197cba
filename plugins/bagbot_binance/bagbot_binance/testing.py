"""A fake Binance spot REST API for tests, speaking the wire format ccxt uses.

Built on :mod:`bagbot_core.testing.fake_exchange` (book, request log, fault injection).
Like the real testnet it checks ``X-MBX-APIKEY``, the HMAC-SHA256 ``signature`` over the
exact query string + body, ``timestamp``/``recvWindow``, the symbol's ``PRICE_FILTER``,
``LOT_SIZE`` and ``NOTIONAL`` filters, balances and ``newClientOrderId`` uniqueness among
open orders, and answers with Binance's own error JSON (``{"code": -2010, "msg": ...}``).

Endpoints: ``GET /api/v3/ping``, ``/time``, ``/exchangeInfo``, ``/ticker/24hr``,
``/ticker/bookTicker``, ``/account``, ``/openOrders``; ``POST``/``GET``/``DELETE
/api/v3/order``. Answers follow the shapes in Binance's API docs and ccxt's recorded responses
(``FULL`` order answers with ``fills``).

Usage::

    async with start_fake_binance() as server:
        connector = connector_for(server)
        ...
        await connector.close()

:func:`connector_for` points a :class:`~bagbot_binance.connector.BinanceConnector` at the
server with ccxt's rate limiter off.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets as _secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web

from bagbot_core.testing.fake_exchange import (
    BookError,
    FakeBook,
    FakeExchangeServer,
    FakeMarket,
    FakeOrder,
    connector_settings,
)

if TYPE_CHECKING:
    from bagbot_binance.connector import BinanceConnector

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "FakeBinanceServer",
    "connector_for",
    "default_book",
    "start_fake_binance",
]

DEFAULT_API_KEY = "fakeBinanceKey0123456789abcdefABCDEF0123456789abcdefABCDEF01234567"
DEFAULT_API_SECRET = "fakeBinanceSecret9876543210zyxwvuZYXWVU9876543210zyxwvuZYXWVU98765"  # noqa: S105

#: Binance's error texts (codes and messages as the real API sends them).
ERRORS: dict[str, tuple[int, str, int]] = {
    # name: (code, msg, http status)
    "insufficient_balance": (-2010, "Account has insufficient balance for requested action.", 400),
    "duplicate": (-2010, "Duplicate order sent.", 400),
    "lot_size": (-1013, "Filter failure: LOT_SIZE", 400),
    "price_filter": (-1013, "Filter failure: PRICE_FILTER", 400),
    "notional": (-1013, "Filter failure: NOTIONAL", 400),
    "no_such_order": (-2013, "Order does not exist.", 400),
    "unknown_order": (-2011, "Unknown order sent.", 400),
    "bad_symbol": (-1121, "Invalid symbol.", 400),
    "bad_signature": (-1022, "Signature for this request is not valid.", 400),
    "bad_key": (-2015, "Invalid API-key, IP, or permissions for action.", 401),
    "key_format": (-2014, "API-key format invalid.", 401),
    "timestamp": (-1021, "Timestamp for this request is outside of the recvWindow.", 400),
    "timeout": (
        -1007,
        "Timeout waiting for response from backend server. Send status unknown; "
        "execution status unknown.",
        408,
    ),
    "market_closed": (-1013, "Market is closed.", 400),
    "order_type": (-1116, "Invalid orderType.", 400),
}

#: Self-trade prevention modes every fake symbol allows (Binance's documented values but
#: TRANSFER); a new order naming another is refused like Binance refuses a bad enum.
STP_MODES = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT")
#: Binance's timeInForce values for spot LIMIT orders.
TIME_IN_FORCE = ("GTC", "IOC", "FOK")

_STATUS = {
    "filled": "FILLED",
    "canceled": "CANCELED",
    "expired": "EXPIRED",
    "rejected": "REJECTED",
}


def f8(value: Decimal | None) -> str:
    """Binance's number format: 8 decimal places, as a string."""
    return f"{(value or Decimal(0)):.8f}"


def default_book() -> FakeBook:
    """BTCUSDT at 50000 and ETHUSDT at 3000, with 100000 USDT, 1 BTC and 10 ETH."""
    book = FakeBook()
    book.add_market(FakeMarket(
        "BTCUSDT", "BTC", "USDT", Decimal("50000.00"),
        amount_step=Decimal("0.00001"), price_step=Decimal("0.01"),
        min_amount=Decimal("0.00001"), max_amount=Decimal("9000"), min_cost=Decimal("5"),
    ))
    book.add_market(FakeMarket(
        "ETHUSDT", "ETH", "USDT", Decimal("3000.00"),
        amount_step=Decimal("0.0001"), price_step=Decimal("0.01"),
        min_amount=Decimal("0.0001"), max_amount=Decimal("100000"), min_cost=Decimal("5"),
    ))
    book.deposit("USDT", "100000")
    book.deposit("BTC", "1")
    book.deposit("ETH", "10")
    return book


def _client_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(_secrets.choice(alphabet) for _ in range(22))


class _Reject(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class FakeBinanceServer(FakeExchangeServer):
    """Binance spot REST on 127.0.0.1 over a :class:`FakeBook` keyed by Binance symbol ids.

    ``status_overrides`` maps an order id to a raw status to report instead of the book's
    (``PENDING_CANCEL``, ``EXPIRED_IN_MATCH``, ``REJECTED`` ...), to test status mapping.
    :meth:`patch_answers` rewrites the next order answers (fields that do not add up, or an
    older answer replayed as a lagging replica would send it).
    """

    def __init__(
        self,
        book: FakeBook | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
    ) -> None:
        super().__init__(book if book is not None else default_book())
        self.api_key = api_key
        self.api_secret = api_secret
        self.status_overrides: dict[int, str] = {}
        self.cancel_ids: dict[int, str] = {}
        #: Added to the server's clock, to simulate a client whose clock drifted.
        self.clock_offset_ms = 0
        self._answer_patches: list[dict[str, Any]] = []

    # -- fault helpers in Binance's words ----------------------------------------------

    def fail_with(self, name: str, *, method: str | None = None, path: str | None = None,
                  times: int | None = 1) -> None:
        """Answer the next matching request(s) with one of :data:`ERRORS` (by name)."""
        code, msg, status = ERRORS[name]
        self.fail_http(status, f'{{"code":{code},"msg":"{msg}"}}', method=method, path=path,
                       times=times)

    def patch_answers(self, *patches: Mapping[str, Any]) -> None:
        """Overlay one patch on each of the next order answers (``POST``/``GET``/``DELETE
        /api/v3/order``), in order; a ``None`` value drops the field. The book is unchanged:
        only what the client hears differs."""
        self._answer_patches.extend(dict(p) for p in patches)

    def _patched(self, answer: dict[str, Any]) -> dict[str, Any]:
        if not self._answer_patches:
            return answer
        patched = {**answer, **self._answer_patches.pop(0)}
        return {k: v for k, v in patched.items() if v is not None}

    def rate_limit_body(self, status: int) -> str:
        if status == 418:
            until = int(time.time() * 1000) + 120_000
            return (f'{{"code":-1003,"msg":"Way too much request weight used; IP banned until '
                    f'{until}. Please use WebSocket Streams for live updates to avoid bans."}}')
        return ('{"code":-1003,"msg":"Too many requests; current limit of IP(127.0.0.1) is '
                '6000 requests per 1 minute. Please use WebSocket Streams for live updates to '
                'avoid bans."}')

    # -- routes ------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        get, post, delete = web.get, web.post, web.delete
        app.add_routes([
            get("/api/v3/ping", self.ping),
            get("/api/v3/time", self.server_time),
            get("/api/v3/exchangeInfo", self.exchange_info),
            get("/api/v3/ticker/24hr", self.ticker_24hr),
            get("/api/v3/ticker/bookTicker", self.book_ticker),
            get("/api/v3/account", self._signed(self.account)),
            get("/api/v3/openOrders", self._signed(self.open_orders)),
            post("/api/v3/order", self._signed(self.new_order)),
            get("/api/v3/order", self._signed(self.query_order)),
            delete("/api/v3/order", self._signed(self.cancel_order)),
        ])

    @staticmethod
    def error(name: str) -> web.Response:
        code, msg, status = ERRORS[name]
        return web.json_response({"code": code, "msg": msg}, status=status)

    @staticmethod
    def _param_error(code: int, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=400)

    def _signed(
        self, handler: Callable[[dict[str, str]], web.Response]
    ) -> Callable[[web.Request], Any]:
        """Wrap ``handler`` with Binance's SIGNED-endpoint checks."""

        async def checked(request: web.Request) -> web.Response:
            key = request.headers.get("X-MBX-APIKEY")
            if not key:
                return self.error("key_format")
            if not hmac.compare_digest(key, self.api_key):
                return self.error("bad_key")
            body = await request.text() if request.body_exists else ""
            total = request.query_string + body  # Binance: query string + body, as sent
            pairs = [p for p in total.split("&") if p]
            signature = next((p[10:] for p in pairs if p.startswith("signature=")), None)
            if not signature:
                return self._param_error(
                    -1102,
                    "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
                )
            payload = "&".join(p for p in pairs if not p.startswith("signature="))
            expected = hmac.new(
                self.api_secret.encode(), payload.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(signature, expected):
                return self.error("bad_signature")
            params = dict(parse_qsl(payload, keep_blank_values=True))
            try:
                timestamp = int(params["timestamp"])
            except (KeyError, ValueError):
                return self._param_error(
                    -1102,
                    "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
                )
            recv_window = int(params.get("recvWindow", "5000"))
            if recv_window > 60000:
                return self._param_error(-1131, "recvWindow must be less than 60000")
            now = int(time.time() * 1000) + self.clock_offset_ms
            if timestamp > now + 1000 or now - timestamp > recv_window:
                return self.error("timestamp")
            return handler(params)

        return checked

    # -- public ------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def exchange_info(self, request: web.Request) -> web.Response:
        symbols = [self._symbol_info(m) for m in self.book.markets.values()]
        return web.json_response({
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                 "limit": 100},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
                 "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        })

    @staticmethod
    def _symbol_info(m: FakeMarket) -> dict[str, Any]:
        return {
            "symbol": m.symbol,
            "status": "TRADING" if m.active else "BREAK",
            "baseAsset": m.base,
            "baseAssetPrecision": 8,
            "quoteAsset": m.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT",
                           "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": f8(m.price_step),
                 "maxPrice": "1000000.00000000", "tickSize": f8(m.price_step)},
                {"filterType": "LOT_SIZE", "minQty": f8(m.min_amount),
                 "maxQty": f8(m.max_amount), "stepSize": f8(m.amount_step)},
                {"filterType": "NOTIONAL", "minNotional": f8(m.min_cost),
                 "applyMinToMarket": True, "maxNotional": "9000000.00000000",
                 "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": list(STP_MODES),
        }

    def _markets_for(self, request: web.Request) -> list[FakeMarket] | web.Response:
        symbol = request.query.get("symbol")
        if symbol is None:
            return list(self.book.markets.values())
        market = self.book.markets.get(symbol)
        if market is None:
            return self.error("bad_symbol")
        return [market]

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        markets = self._markets_for(request)
        if isinstance(markets, web.Response):
            return markets
        now = int(time.time() * 1000)
        tickers = [{
            "symbol": m.symbol,
            "priceChange": "0.00000000",
            "priceChangePercent": "0.000",
            "weightedAvgPrice": f8(m.price),
            "prevClosePrice": f8(m.price),
            "lastPrice": f8(m.price),
            "lastQty": "0.01000000",
            "bidPrice": f8(m.bid),
            "bidQty": "1.00000000",
            "askPrice": f8(m.ask),
            "askQty": "1.00000000",
            "openPrice": f8(m.price),
            "highPrice": f8(m.price),
            "lowPrice": f8(m.price),
            "volume": "100.00000000",
            "quoteVolume": f8(m.price * 100),
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 1,
            "lastId": 100,
            "count": 100,
        } for m in markets]
        return web.json_response(tickers[0] if "symbol" in request.query else tickers)

    async def book_ticker(self, request: web.Request) -> web.Response:
        markets = self._markets_for(request)
        if isinstance(markets, web.Response):
            return markets
        tickers = [{
            "symbol": m.symbol, "bidPrice": f8(m.bid), "bidQty": "1.00000000",
            "askPrice": f8(m.ask), "askQty": "1.00000000",
        } for m in markets]
        return web.json_response(tickers[0] if "symbol" in request.query else tickers)

    # -- signed ------------------------------------------------------------------------

    def account(self, params: dict[str, str]) -> web.Response:
        book = self.book
        return web.json_response({
            "makerCommission": 0, "takerCommission": 0, "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": "0.00000000", "taker": "0.00000000",
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": int(time.time() * 1000), "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": f8(book.free[a]), "locked": f8(book.locked.get(a))}
                for a in sorted(book.free)
            ],
            "permissions": ["SPOT"], "uid": 1,
        })

    def open_orders(self, params: dict[str, str]) -> web.Response:
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.book.markets:
            return self.error("bad_symbol")
        return web.json_response([self.order_json(o) for o in self.book.open_orders(symbol)])

    def new_order(self, params: dict[str, str]) -> web.Response:
        try:
            order = self._place(params)
        except _Reject as reject:
            return self.error(reject.name)
        except _ParamError as bad:
            return self._param_error(bad.code, bad.msg)
        kind = params.get("newOrderRespType", "FULL")
        return web.json_response(
            self._patched(self.order_json(order, created=True, resp_type=kind)))

    def _place(self, params: Mapping[str, str]) -> FakeOrder:
        symbol = _require(params, "symbol")
        market = self.book.markets.get(symbol)
        if market is None:
            raise _Reject("bad_symbol")
        side = _require(params, "side").upper()
        if side not in ("BUY", "SELL"):
            raise _ParamError(-1117, "Invalid side.")
        type_ = _require(params, "type").upper()
        if type_ not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
            raise _Reject("order_type")
        quantity = _decimal(params, "quantity")
        quote_qty = _decimal(params, "quoteOrderQty")
        price = _decimal(params, "price")
        tif = params.get("timeInForce")
        if tif is not None and tif not in TIME_IN_FORCE:
            raise _ParamError(-1100, "Illegal characters found in parameter 'timeInForce'; "
                                     f"legal range is '{'|'.join(TIME_IN_FORCE)}'.")
        stp = params.get("selfTradePreventionMode")
        if stp is not None and stp not in STP_MODES:
            raise _ParamError(-1100, "Illegal characters found in parameter "
                                     "'selfTradePreventionMode'; legal range is "
                                     f"'{'|'.join(STP_MODES)}'.")
        if type_ == "LIMIT":
            if tif is None:
                raise _ParamError(-1102, "Mandatory parameter 'timeInForce' was not sent, "
                                         "was empty/null, or malformed.")
            if price is None:
                raise _ParamError(-1102, "Mandatory parameter 'price' was not sent, "
                                         "was empty/null, or malformed.")
        if quantity is None and (type_ != "MARKET" or quote_qty is None):
            raise _ParamError(-1102, "Mandatory parameter 'quantity' was not sent, was "
                                     "empty/null, or malformed.")
        if not market.active:
            raise _Reject("market_closed")
        # Filters, in Binance's order: PRICE_FILTER, LOT_SIZE, NOTIONAL.
        if price is not None and market.price_step and (
            price < market.price_step or price % market.price_step != 0
        ):
            raise _Reject("price_filter")
        if quantity is not None and (
            (market.min_amount is not None and quantity < market.min_amount)
            or (market.max_amount is not None and quantity > market.max_amount)
            or (market.amount_step and (quantity - (market.min_amount or 0))
                % market.amount_step != 0)
        ):
            raise _Reject("lot_size")
        if type_ == "MARKET":
            ref = market.ask if side == "BUY" else market.bid
            notional = quote_qty if quote_qty is not None else (quantity or Decimal(0)) * ref
        else:
            assert price is not None
            assert quantity is not None
            notional = price * quantity
        if market.min_cost is not None and notional < market.min_cost:
            raise _Reject("notional")
        client_id = params.get("newClientOrderId") or _client_id()
        if type_ == "LIMIT_MAKER":
            crosses = price is not None and (
                price >= market.ask if side == "BUY" else price <= market.bid
            )
            if crosses:
                raise _ParamError(-2010, "Order would immediately match and take.")
        try:
            order = self.book.place(
                symbol,
                "buy" if side == "BUY" else "sell",
                "market" if type_ == "MARKET" else "limit",
                quantity,
                price,
                client_order_id=client_id,
                quote_amount=quote_qty,
                time_in_force=tif or ("GTC" if type_ != "MARKET" else None),
            )
        except BookError as exc:
            raise _Reject({
                "insufficient_balance": "insufficient_balance",
                "duplicate_client_order_id": "duplicate",
                "unknown_symbol": "bad_symbol",
                "market_closed": "market_closed",
            }.get(exc.kind, "lot_size")) from None
        if tif in ("IOC", "FOK") and order.is_open:
            self.book.expire(order.order_id)
        return order

    def _lookup(self, params: Mapping[str, str]) -> tuple[int | None, str | None]:
        order_id = params.get("orderId")
        client_id = params.get("origClientOrderId")
        if order_id is None and client_id is None:
            raise _ParamError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, "
                                     "but both were empty/null!")
        try:
            return (int(order_id) if order_id is not None else None), client_id
        except ValueError:
            raise _ParamError(-1100, "Illegal characters found in parameter 'orderId'; "
                                     "legal range is '^[0-9]{1,20}$'.") from None

    def query_order(self, params: dict[str, str]) -> web.Response:
        if params.get("symbol") not in self.book.markets:
            return self.error("bad_symbol")
        try:
            order_id, client_id = self._lookup(params)
            order = self.book.get(order_id, client_id)
        except _ParamError as bad:
            return self._param_error(bad.code, bad.msg)
        except BookError:
            return self.error("no_such_order")
        if order.symbol != params["symbol"]:
            return self.error("no_such_order")
        return web.json_response(self._patched(self.order_json(order)))

    def cancel_order(self, params: dict[str, str]) -> web.Response:
        if params.get("symbol") not in self.book.markets:
            return self.error("bad_symbol")
        try:
            order_id, client_id = self._lookup(params)
            order = self.book.get(order_id, client_id)
            if order.symbol != params["symbol"]:
                raise BookError("order_not_found")
            self.book.cancel(order.order_id)
        except _ParamError as bad:
            return self._param_error(bad.code, bad.msg)
        except BookError:
            return self.error("unknown_order")
        cancel_id = params.get("newClientOrderId") or _client_id()
        self.cancel_ids[order.order_id] = cancel_id
        answer = self.order_json(order)
        for key in ("stopPrice", "icebergQty", "time", "updateTime", "isWorking",
                    "workingTime", "origQuoteOrderQty"):
            answer.pop(key, None)
        answer = {
            "symbol": answer.pop("symbol"),
            "origClientOrderId": order.client_order_id,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": cancel_id,
            "transactTime": int(time.time() * 1000),
            **{k: v for k, v in answer.items() if k not in ("orderId", "orderListId",
                                                             "clientOrderId")},
        }
        return web.json_response(self._patched(answer))

    # -- JSON shapes -------------------------------------------------------------------

    def raw_status(self, order: FakeOrder) -> str:
        override = self.status_overrides.get(order.order_id)
        if override is not None:
            return override
        if order.status == "open":
            return "PARTIALLY_FILLED" if order.filled else "NEW"
        return _STATUS[order.status]

    def order_json(
        self, order: FakeOrder, *, created: bool = False,
        resp_type: Literal["ACK", "RESULT", "FULL"] | str = "FULL",
    ) -> dict[str, Any]:
        """An order as Binance shows it: query shape, or a create answer (ACK/RESULT/FULL)."""
        if created and resp_type == "ACK":
            return {"symbol": order.symbol, "orderId": order.order_id, "orderListId": -1,
                    "clientOrderId": order.client_order_id, "transactTime": order.created_ms}
        answer: dict[str, Any] = {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
        }
        if created:
            answer["transactTime"] = order.created_ms
        answer.update({
            "price": f8(order.price),
            "origQty": f8(order.amount),
            "executedQty": f8(order.filled),
            "cummulativeQuoteQty": f8(order.cost),
            "status": self.raw_status(order),
            "timeInForce": order.time_in_force or "GTC",
            "type": order.type.upper(),
            "side": order.side.upper(),
        })
        if created:
            answer.update({"workingTime": order.created_ms, "origQuoteOrderQty": "0.00000000",
                           "selfTradePreventionMode": "EXPIRE_MAKER"})
            if resp_type == "FULL":
                answer["fills"] = [
                    {"price": f8(f.price), "qty": f8(f.qty), "commission": f8(f.commission),
                     "commissionAsset": f.commission_asset, "tradeId": f.trade_id}
                    for f in order.fills
                ]
        else:
            answer.update({
                "stopPrice": "0.00000000",
                "icebergQty": "0.00000000",
                "time": order.created_ms,
                "updateTime": order.updated_ms,
                "isWorking": True,
                "workingTime": order.created_ms,
                "origQuoteOrderQty": "0.00000000",
                "selfTradePreventionMode": "EXPIRE_MAKER",
            })
        return answer


class _ParamError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _require(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise _ParamError(
            -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
        )
    return value


def _decimal(params: Mapping[str, str], name: str) -> Decimal | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise _ParamError(-1100, f"Illegal characters found in parameter '{name}'.") from None
    if not number.is_finite() or number <= 0:
        raise _ParamError(-1100, f"Illegal characters found in parameter '{name}'.")
    return number


@contextlib.asynccontextmanager
async def start_fake_binance(
    book: FakeBook | None = None,
    *,
    api_key: str = DEFAULT_API_KEY,
    api_secret: str = DEFAULT_API_SECRET,
) -> AsyncIterator[FakeBinanceServer]:
    """Run a :class:`FakeBinanceServer` in the current event loop for the ``with`` body."""
    async with FakeBinanceServer(book, api_key=api_key, api_secret=api_secret) as server:
        yield server


def connector_for(
    server: FakeBinanceServer, *, testnet: bool = True, **config: Any
) -> BinanceConnector:
    """A :class:`BinanceConnector` pointed at ``server``, rate limiter off.

    ``testnet=False`` exercises the live code path (production URL table, host swapped).
    """
    from bagbot_binance.connector import BinanceConnector

    return BinanceConnector(connector_settings(server, testnet=testnet, **config))
