"""Exchange-agnostic machinery for fake exchange servers used by connector tests.

Two pieces, written once and shared by every plugin's fake server:

* :class:`FakeBook` -- an in-memory account and order book. Balances are per asset in
  :class:`~decimal.Decimal`; market orders fill at once at the market's reference price (buys
  at the ask, sells at the bid); limit orders that cross the current price fill at that price,
  the others rest until canceled or until a test moves the price across them with
  :meth:`FakeBook.set_price`, when they fill at their limit price. The book knows nothing about
  any wire format: a server translates its requests into book calls and :class:`BookError`
  into the exchange's own error answers.

* :class:`FakeExchangeServer` -- a small aiohttp server on ``127.0.0.1`` with a random port.
  Subclasses add the exchange's routes. The base logs every request (:attr:`requests`) and
  injects faults: added latency, an answer that is dropped *after* the request was processed
  (so the order is on the book but the client never hears), a hang until the client times
  out, HTTP errors, ``429`` with ``Retry-After`` and malformed JSON -- each once, N times or
  forever, optionally only for one method/path. While a ``Retry-After`` window it announced is
  running, the server answers ``429`` again and marks the request
  (:attr:`LoggedRequest.in_retry_window`), so a test can prove no client sent anything
  inside it.

The server runs in the test's event loop (``async with server:``) or in a background thread
with its own loop (``with server.run_in_thread():``), which also lets a separate process
host it. :func:`connector_settings` points a ccxt connector at a running server that holds
credentials (``api_key``/``api_secret``), with ccxt's rate limiter off; :func:`routers_for`
builds routers whose connector is set up so.
:func:`intercept_ccxt` records the URLs a ccxt exchange class asks for and forwards them to a
running server, so a test can see where a connector would send, production included, with
nothing leaving the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal, Protocol, Self
from urllib.parse import urlsplit

from aiohttp import web

from bagbot_core.connector import ConnectorSettings
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router

__all__ = [
    "BookError",
    "CcxtWire",
    "FakeBook",
    "FakeExchangeServer",
    "FakeMarket",
    "FakeOrder",
    "Fault",
    "FaultKind",
    "Fill",
    "LoggedRequest",
    "ServerWithCredentials",
    "connector_settings",
    "intercept_ccxt",
    "routers_for",
]

BookErrorKind = Literal[
    "unknown_symbol",
    "market_closed",
    "insufficient_balance",
    "duplicate_client_order_id",
    "order_not_found",
    "invalid_amount",
    "invalid_price",
]
OrderState = Literal["open", "filled", "canceled", "expired", "rejected"]


class BookError(Exception):
    """The book refuses an operation; ``kind`` says why, for the server to translate."""

    def __init__(self, kind: BookErrorKind, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind: BookErrorKind = kind


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class FakeMarket:
    """One tradable pair; ``symbol`` is the exchange's own id (``BTCUSDT``, ``BTC-USD``)."""

    symbol: str
    base: str
    quote: str
    price: Decimal
    amount_step: Decimal | None = None
    price_step: Decimal | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None
    min_cost: Decimal | None = None
    #: Half the distance between bid and ask; ``0`` makes bid == ask == price.
    half_spread: Decimal = Decimal(0)
    active: bool = True

    @property
    def bid(self) -> Decimal:
        return self.price - self.half_spread

    @property
    def ask(self) -> Decimal:
        return self.price + self.half_spread


@dataclass(frozen=True)
class Fill:
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    trade_id: int


@dataclass
class FakeOrder:
    """An order on the fake book. ``status`` is exchange-neutral; servers map it."""

    order_id: int
    client_order_id: str | None
    symbol: str
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"]
    amount: Decimal
    price: Decimal | None
    time_in_force: str | None = None
    status: OrderState = "open"
    filled: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fills: list[Fill] = field(default_factory=list)
    created_ms: int = field(default_factory=_now_ms)
    updated_ms: int = field(default_factory=_now_ms)
    #: Quote amount still locked for an open limit buy (base amount for a limit sell).
    locked: Decimal = Decimal(0)

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled

    @property
    def avg_price(self) -> Decimal | None:
        return self.cost / self.filled if self.filled else None


class FakeBook:
    """In-memory balances and orders. Thread-safe: tests may poke it while a server runs.

    ``fee_rate`` is charged on every fill, in the asset received (base for buys, quote for
    sells), like a spot exchange without a fee token.
    """

    def __init__(self, *, fee_rate: Decimal = Decimal(0)) -> None:
        self.fee_rate = fee_rate
        self.markets: dict[str, FakeMarket] = {}
        self.free: dict[str, Decimal] = {}
        self.locked: dict[str, Decimal] = {}
        self.orders: dict[int, FakeOrder] = {}
        self._order_ids = itertools.count(1000)
        self._trade_ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- setup -------------------------------------------------------------------------

    def add_market(self, market: FakeMarket) -> FakeMarket:
        with self._lock:
            self.markets[market.symbol] = market
            for asset in (market.base, market.quote):
                self.free.setdefault(asset, Decimal(0))
                self.locked.setdefault(asset, Decimal(0))
        return market

    def deposit(self, asset: str, amount: Decimal | str | int) -> None:
        with self._lock:
            self.free[asset] = self.free.get(asset, Decimal(0)) + Decimal(amount)
            self.locked.setdefault(asset, Decimal(0))

    def balance(self, asset: str) -> Decimal:
        """Free balance of ``asset``."""
        with self._lock:
            return self.free.get(asset, Decimal(0))

    def market(self, symbol: str) -> FakeMarket:
        try:
            return self.markets[symbol]
        except KeyError:
            raise BookError("unknown_symbol", f"unknown symbol {symbol}") from None

    # -- orders ------------------------------------------------------------------------

    def place(
        self,
        symbol: str,
        side: Literal["buy", "sell"],
        type: Literal["market", "limit"],
        amount: Decimal | None,
        price: Decimal | None = None,
        *,
        client_order_id: str | None = None,
        quote_amount: Decimal | None = None,
        time_in_force: str | None = None,
    ) -> FakeOrder:
        """Validate balances and client id, then place (and maybe fill) an order.

        ``quote_amount`` (market buys only) spends that much quote instead of giving an
        amount; the amount is what it buys at the ask, rounded down to the amount step.

        :raises BookError: ``unknown_symbol``, ``market_closed``, ``invalid_amount``,
            ``invalid_price``, ``duplicate_client_order_id`` (an *open* order has the same
            client id) or ``insufficient_balance``.
        """
        with self._lock:
            market = self.market(symbol)
            if not market.active:
                raise BookError("market_closed", f"{symbol} is not trading")
            if type == "limit" and (price is None or price <= 0):
                raise BookError("invalid_price", "limit order needs a positive price")
            if amount is None:
                if quote_amount is None or type != "market" or side != "buy":
                    raise BookError("invalid_amount", "amount is required")
                amount = quote_amount / market.ask
                if market.amount_step:
                    amount = (amount / market.amount_step).quantize(
                        Decimal(1), rounding=ROUND_DOWN
                    ) * market.amount_step
            if amount <= 0:
                raise BookError("invalid_amount", "amount must be positive")
            if client_order_id is not None and any(
                o.is_open and o.client_order_id == client_order_id for o in self.orders.values()
            ):
                raise BookError("duplicate_client_order_id", "duplicate client order id")
            order = FakeOrder(
                order_id=next(self._order_ids),
                client_order_id=client_order_id,
                symbol=symbol,
                side=side,
                type=type,
                amount=amount,
                price=price if type == "limit" else None,
                time_in_force=time_in_force,
            )
            if type == "market":
                fill_price = market.ask if side == "buy" else market.bid
                self._require(market.quote if side == "buy" else market.base,
                              amount * fill_price if side == "buy" else amount)
                self.orders[order.order_id] = order
                self._fill(order, market, amount, fill_price)
                return order
            assert price is not None
            lock_asset, lock_amount = (
                (market.quote, amount * price) if side == "buy" else (market.base, amount)
            )
            self._require(lock_asset, lock_amount)
            self.free[lock_asset] -= lock_amount
            self.locked[lock_asset] += lock_amount
            order.locked = lock_amount
            self.orders[order.order_id] = order
            crosses = price >= market.ask if side == "buy" else price <= market.bid
            if crosses:
                self._fill(order, market, amount, market.ask if side == "buy" else market.bid)
            return order

    def get(self, order_id: int | None = None, client_order_id: str | None = None) -> FakeOrder:
        """One order by id, or the newest with that client id.

        :raises BookError: ``order_not_found``.
        """
        with self._lock:
            if order_id is not None:
                order = self.orders.get(order_id)
                if order is not None and (
                    client_order_id is None or order.client_order_id == client_order_id
                ):
                    return order
            elif client_order_id is not None:
                matches = [o for o in self.orders.values() if o.client_order_id == client_order_id]
                if matches:
                    return matches[-1]
            raise BookError("order_not_found", "order does not exist")

    def orders_with_client_id(self, client_order_id: str) -> list[FakeOrder]:
        with self._lock:
            return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def open_orders(self, symbol: str | None = None) -> list[FakeOrder]:
        with self._lock:
            return [
                o for o in self.orders.values() if o.is_open and symbol in (None, o.symbol)
            ]

    def cancel(self, order_id: int | None = None, client_order_id: str | None = None) -> FakeOrder:
        """Cancel an open order and release what it locked.

        :raises BookError: ``order_not_found`` also for an order that is no longer open.
        """
        with self._lock:
            order = self.get(order_id, client_order_id)
            if not order.is_open:
                raise BookError("order_not_found", "order is not open")
            self._release(order)
            order.status = "canceled"
            order.updated_ms = _now_ms()
            return order

    def expire(self, order_id: int) -> FakeOrder:
        """End an open order as ``expired`` (keeping what it filled), e.g. IOC leftovers."""
        with self._lock:
            order = self.get(order_id)
            if order.is_open:
                self._release(order)
                order.status = "expired"
                order.updated_ms = _now_ms()
            return order

    def fill(self, order_id: int, qty: Decimal, price: Decimal | None = None) -> FakeOrder:
        """Fill part of an open order (at its limit price unless ``price`` is given)."""
        with self._lock:
            order = self.get(order_id)
            if not order.is_open:
                raise BookError("order_not_found", "order is not open")
            fill_price = price if price is not None else order.price
            assert fill_price is not None
            self._fill(order, self.market(order.symbol), min(qty, order.remaining), fill_price)
            return order

    def set_price(self, symbol: str, price: Decimal | str) -> list[FakeOrder]:
        """Move the market; resting limit orders the new price crosses fill at their limit.

        :return: The orders that filled.
        """
        with self._lock:
            market = self.market(symbol)
            market.price = Decimal(price)
            filled = []
            for order in self.open_orders(symbol):
                assert order.price is not None
                if (order.side == "buy" and market.ask <= order.price) or (
                    order.side == "sell" and market.bid >= order.price
                ):
                    self._fill(order, market, order.remaining, order.price)
                    filled.append(order)
            return filled

    # -- internals ---------------------------------------------------------------------

    def _require(self, asset: str, amount: Decimal) -> None:
        if self.free.get(asset, Decimal(0)) < amount:
            raise BookError("insufficient_balance", f"insufficient {asset} balance")

    def _release(self, order: FakeOrder) -> None:
        if order.locked:
            market = self.markets[order.symbol]
            asset = market.quote if order.side == "buy" else market.base
            self.locked[asset] -= order.locked
            self.free[asset] += order.locked
            order.locked = Decimal(0)

    def _fill(self, order: FakeOrder, market: FakeMarket, qty: Decimal, price: Decimal) -> None:
        if qty <= 0:
            return
        value = qty * price
        if order.side == "buy":
            fee = qty * self.fee_rate
            fee_asset = market.base
            spend = self._spend_locked(order, qty * order.price if order.price else value)
            self.free[market.quote] += spend - value
            self.free[market.base] += qty - fee
        else:
            fee = value * self.fee_rate
            fee_asset = market.quote
            spend = self._spend_locked(order, qty)
            self.free[market.base] += spend - qty
            self.free[market.quote] += value - fee
        order.fills.append(Fill(price, qty, fee, fee_asset, next(self._trade_ids)))
        order.filled += qty
        order.cost += value
        order.updated_ms = _now_ms()
        if order.remaining <= 0:
            order.status = "filled"
            self._release(order)

    def _spend_locked(self, order: FakeOrder, amount: Decimal) -> Decimal:
        """Take ``amount`` out of the order's lock (or out of free funds for market orders)."""
        market = self.markets[order.symbol]
        asset = market.quote if order.side == "buy" else market.base
        if order.type == "limit":
            amount = min(amount, order.locked)
            order.locked -= amount
            self.locked[asset] -= amount
        else:
            self.free[asset] -= amount
        return amount


# ---------------------------------------------------------------------------------------
# Server base
# ---------------------------------------------------------------------------------------

FaultKind = Literal[
    "latency", "drop_before", "drop_after", "hang_after", "http_error", "rate_limit", "malformed"
]


@dataclass
class Fault:
    """One injected fault; ``times=None`` means every matching request."""

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    times: int | None = 1
    delay: float = 0.0
    status: int = 500
    body: str = ""
    content_type: str = "application/json"
    retry_after: float | None = None
    #: For ``malformed``: process the request first (the order lands on the book).
    process: bool = True

    def matches(self, method: str, path: str) -> bool:
        """``path`` ending in ``*`` matches every path it starts (``/orders/*``)."""
        if self.path is not None and self.path.endswith("*"):
            same_path = path.startswith(self.path[:-1])
        else:
            same_path = self.path is None or self.path == path
        return (self.method is None or self.method == method) and same_path


@dataclass
class LoggedRequest:
    """What the fake server saw (no headers: nothing secret is kept)."""

    method: str
    path: str
    query: str
    body: str
    at: float  # time.monotonic() on arrival
    status: int | None = None
    fault: FaultKind | None = None
    in_retry_window: bool = False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeExchangeServer:
    """Base of fake exchange HTTP servers: lifecycle, request log and fault injection.

    Subclasses implement :meth:`add_routes` and may override :meth:`rate_limit_body`.
    """

    #: Status the server answers inside its own Retry-After window.
    window_status = 429

    def __init__(self, book: FakeBook | None = None) -> None:
        self.book = book if book is not None else FakeBook()
        self.requests: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self.retry_windows: list[tuple[float, float]] = []
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    # -- to implement ------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def rate_limit_body(self, status: int) -> str:
        return '{"error": "rate limited"}'

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server is not running")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Self:
        app = web.Application(middlewares=[self._middleware])
        self.add_routes(app)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.port = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[Self]:
        """Serve from a daemon thread with its own event loop (for sync callers)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="fake-exchange", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("fake exchange did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    # -- faults ------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def add_latency(self, seconds: float, *, method: str | None = None,
                    path: str | None = None, times: int | None = None) -> Fault:
        """Delay matching requests by ``seconds`` before handling them normally."""
        return self.inject(Fault("latency", method, path, times, delay=seconds))

    def drop_after_accept(self, *, method: str | None = None, path: str | None = None,
                          times: int | None = 1) -> Fault:
        """Process the request (the order lands on the book), then close the connection."""
        return self.inject(Fault("drop_after", method, path, times))

    def drop_before_accept(self, *, method: str | None = None, path: str | None = None,
                           times: int | None = 1) -> Fault:
        """Close the connection without processing the request."""
        return self.inject(Fault("drop_before", method, path, times))

    def hang_after_accept(self, seconds: float, *, method: str | None = None,
                          path: str | None = None, times: int | None = 1) -> Fault:
        """Process the request, then wait ``seconds`` before answering (client times out)."""
        return self.inject(Fault("hang_after", method, path, times, delay=seconds))

    def fail_http(self, status: int, body: str = "", *, method: str | None = None,
                  path: str | None = None, times: int | None = 1,
                  content_type: str = "application/json") -> Fault:
        """Answer ``status`` with ``body`` without processing the request."""
        return self.inject(
            Fault("http_error", method, path, times, status=status, body=body,
                  content_type=content_type)
        )

    def rate_limit(self, retry_after: float, *, status: int = 429, method: str | None = None,
                   path: str | None = None, times: int | None = 1) -> Fault:
        """Answer ``status`` (429/418) with ``Retry-After`` and refuse until it passed."""
        return self.inject(
            Fault("rate_limit", method, path, times, status=status, retry_after=retry_after)
        )

    def malformed_json(self, *, method: str | None = None, path: str | None = None,
                       times: int | None = 1, after_accept: bool = True) -> Fault:
        """Answer 200 with truncated JSON (after processing the request by default)."""
        return self.inject(Fault("malformed", method, path, times, process=after_accept))

    def fail_read(self, fault: str, *, method: str, path: str, wait: float = 5.0) -> Fault:
        """Make the next matching request fail as a read can: ``"server_error"`` (503, not
        processed), ``"disconnect"`` (connection closed, not processed) or ``"timeout"``
        (answered only after ``wait`` seconds: longer than the client's timeout).

        Replaces every fault injected before. A disconnect lasts until then: HTTP clients
        resend an idempotent request once by themselves when a reused connection closes
        (aiohttp does), and the retry must fail too.
        """
        self.clear_faults()
        if fault == "server_error":
            return self.fail_http(503, "Service Unavailable", method=method, path=path,
                                  content_type="text/plain")
        if fault == "disconnect":
            return self.drop_before_accept(method=method, path=path, times=None)
        if fault == "timeout":
            return self.add_latency(wait, method=method, path=path, times=1)
        raise ValueError(f"unknown read fault {fault!r}")

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # -- request log -------------------------------------------------------------------

    def requests_to(self, path: str, method: str | None = None) -> list[LoggedRequest]:
        return [
            r for r in self.requests if r.path == path and method in (None, r.method)
        ]

    def requests_in_retry_windows(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.in_retry_window]

    def reset_log(self) -> None:
        self.requests.clear()

    # -- internals ---------------------------------------------------------------------

    def _take_faults(self, method: str, path: str) -> Sequence[Fault]:
        taken = []
        with self._lock:
            for fault in list(self.faults):
                if fault.matches(method, path):
                    taken.append(fault)
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
        return taken

    def _retry_window_left(self, now: float) -> float:
        left = [end - now for start, end in self.retry_windows if start <= now < end]
        return max(left, default=0.0)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        now = time.monotonic()
        body = await request.text() if request.body_exists else ""
        entry = LoggedRequest(request.method, request.path, request.query_string, body, now)
        self.requests.append(entry)
        left = self._retry_window_left(now)
        if left > 0:
            entry.in_retry_window = True
            entry.status = self.window_status
            return self._rate_limited(self.window_status, left)
        faults = self._take_faults(request.method, request.path)
        for fault in faults:
            if fault.kind == "latency":
                await self._sleep(fault.delay)
        main = next((f for f in faults if f.kind != "latency"), None)
        if main is not None:
            entry.fault = main.kind
        if main is None or main.kind in ("drop_after", "hang_after") or (
            main.kind == "malformed" and main.process
        ):
            response = await handler(request)
            entry.status = response.status
        if main is None:
            return response
        if main.kind in ("drop_before", "drop_after"):
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the (already closed) connection
        if main.kind == "hang_after":
            await self._sleep(main.delay)
            return response
        if main.kind == "malformed":
            entry.status = 200
            return web.Response(status=200, text='{"orderId": 1, "status": "FIL',
                                content_type="application/json")
        if main.kind == "http_error":
            entry.status = main.status
            return web.Response(status=main.status, text=main.body,
                                content_type=main.content_type)
        # rate_limit
        assert main.retry_after is not None
        self.retry_windows.append((now, now + main.retry_after))
        entry.status = main.status
        return self._rate_limited(main.status, main.retry_after)

    def _rate_limited(self, status: int, retry_after: float) -> web.Response:
        # Real exchanges send whole seconds; fractions keep tests fast (clients parse floats).
        value = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:.3f}"
        return web.Response(
            status=status,
            text=self.rate_limit_body(status),
            content_type="application/json",
            headers={"Retry-After": value},
        )


# ---------------------------------------------------------------------------------------
# Pointing a connector at a server
# ---------------------------------------------------------------------------------------


class ServerWithCredentials(Protocol):
    """A running fake server that accepts one API key/secret pair."""

    api_key: str
    api_secret: str

    @property
    def url(self) -> str: ...


def connector_settings(
    server: ServerWithCredentials, *, testnet: bool = True, **config: Any
) -> ConnectorSettings:
    """:class:`ConnectorSettings` for a ccxt connector talking to ``server``.

    The config holds the server's ``api_key``/``api_secret``, ``api_url`` = its URL and
    ``enable_rate_limit: False`` (a local fake needs no client-side limiter); ``config``
    adds keys or overrides these.
    """
    return ConnectorSettings(
        testnet=testnet,
        config={
            "api_key": server.api_key,
            "api_secret": server.api_secret,
            "api_url": server.url,
            "enable_rate_limit": False,
            **config,
        },
    )


@contextlib.asynccontextmanager
async def routers_for(
    server: ServerWithCredentials, connector: str, plugin: object, **defaults: Any
) -> AsyncIterator[Callable[..., Router]]:
    """Build routers whose ``connector`` talks to ``server``; all are closed when the block ends.

    The block gets ``make(*, registry=None, allow_live=False, **config) -> Router``. The
    connector's config is that of :func:`connector_settings`, then ``defaults``, then
    ``config``; a ``None`` value leaves a setting out (``api_url=None``: the connector's own
    endpoint, or the environment's). The registry defaults to ``plugin`` alone, registered as
    ``connector`` without entry points, so that what else is installed does not matter.
    """
    routers: list[Router] = []

    def make(*, registry: PluginRegistry | None = None, allow_live: bool = False,
             **config: Any) -> Router:
        settings = connector_settings(server, **{**defaults, **config}).config
        if registry is None:
            registry = PluginRegistry(disabled=(), load_entrypoints=False,
                                      plugins=[(connector, plugin)])
        router = Router(registry, limits=RiskLimits(), allow_live=allow_live, connector_config={
            connector: {key: value for key, value in settings.items() if value is not None}})
        routers.append(router)
        return router

    try:
        yield make
    finally:
        for router in routers:
            await router.aclose()


# ---------------------------------------------------------------------------------------
# What a ccxt exchange class sends
# ---------------------------------------------------------------------------------------


@dataclass
class CcxtWire:
    """What the objects of one ccxt exchange class did, seen by :func:`intercept_ccxt`."""

    #: How many objects were built: a refused connector must not even build one.
    built: int = 0
    #: Every URL asked for, as ccxt built it (the real exchange's host), in order.
    urls: list[str] = field(default_factory=list)
    #: The fake server's URL that requests are forwarded to; ``None``: nothing may be sent.
    forward_to: str | None = None


@contextlib.contextmanager
def intercept_ccxt(exchange_class: type[Any]) -> Iterator[CcxtWire]:
    """Count the objects of ``exchange_class`` built and record every URL they ask for.

    For testing what a connector would send where -- production, a testnet, any host --
    without anything leaving the machine. ccxt's transport (``fetch``) is replaced while the
    block runs: a request goes to :attr:`CcxtWire.forward_to` on the same path and query,
    keeping its original ``Host`` header (a fake that checks the host in a signature sees
    the real one), and while ``forward_to`` is ``None`` it fails with :class:`AssertionError`.
    """
    wire = CcxtWire()
    init, fetch = exchange_class.__init__, exchange_class.fetch

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        wire.built += 1
        init(self, *args, **kwargs)

    async def recording_fetch(self: Any, url: str, method: str = "GET", headers: Any = None,
                              body: Any = None) -> Any:
        wire.urls.append(url)
        if wire.forward_to is None:
            raise AssertionError(f"nothing may be sent, but ccxt asked for {method} {url}")
        parts = urlsplit(url)
        local = wire.forward_to + parts.path + (f"?{parts.query}" if parts.query else "")
        return await fetch(self, local, method, {**(headers or {}), "Host": parts.netloc}, body)

    replaced = {"__init__": counting_init, "fetch": recording_fetch}
    own = {name: exchange_class.__dict__[name] for name in replaced
           if name in exchange_class.__dict__}
    for name, value in replaced.items():
        setattr(exchange_class, name, value)
    try:
        yield wire
    finally:
        for name in replaced:
            if name in own:
                setattr(exchange_class, name, own[name])
            else:
                delattr(exchange_class, name)
