"""The connector conformance suite: one class of pytest tests every connector package reuses.

Like ``sqlalchemy.testing.suite`` for dialects and Hydra's ``LauncherTestSuite`` for
launchers, the core ships the tests that say what "a working bagbot connector" means, and a
connector package runs them against its own fake exchange with a few lines::

    import pytest
    from bagbot_core.testing.conformance import ConnectorConformance, ExchangeHandle

    class TestBinanceConformance(ConnectorConformance):
        connector_name = "binance"

        @pytest.fixture
        async def handle(self, binance_server) -> ExchangeHandle:
            return BinanceHandle(binance_server)

Every test builds a real :class:`~bagbot_core.router.Router` (plugins discovered through the
``bagbot`` entry points), a SQLite *file* database, and routes orders the way an application
does; the connector talks to the fake exchange behind the :class:`ExchangeHandle`. The
handle is the whole contract between the suite and a connector package: where the fake
lives (:attr:`ExchangeHandle.connector_config`), what it can simulate
(:attr:`ExchangeHandle.requirements`) and a few fault and inspection operations.

What a connector does not do, it declares -- on the connector (``Capabilities(cancel=False)``)
or on the handle (``Requirements(drop_response=unsupported("why"))``) -- and the tests that
need it **skip with that reason** instead of failing. Nothing in here names an exchange.

Async tests carry ``@pytest.mark.asyncio`` and the async fixtures are ``pytest_asyncio``
fixtures, so the suite runs whether or not the package sets ``asyncio_mode = "auto"`` (a
package in strict mode must declare its own async ``handle`` fixture with
``@pytest_asyncio.fixture``).
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import importlib.metadata
import io
import json
import logging
import os
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import attrs
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.connector import Capabilities, Connector
from bagbot_core.db import dispose_engines, get_engine, session_factory, sync_url
from bagbot_core.errors import (
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    LiveTradingNotAllowedError,
    OrderStatusUnknownError,
    OrderValidationError,
    RiskCheckError,
)
from bagbot_core.models import Order
from bagbot_core.orders import Market, Side
from bagbot_core.params import ParamKind, ParamSpec, is_forbidden
from bagbot_core.plugins import ENTRY_POINT_GROUP, PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus

__all__ = [
    "MARKET_READS",
    "ORDER_READS",
    "READ_FAULTS",
    "SUPPORTED",
    "ConnectorConformance",
    "ExchangeHandle",
    "Harness",
    "Placement",
    "Requirements",
    "Support",
    "params_dicts",
    "unsupported",
]

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Requirements: what the connector + fake can do, and why not when they cannot
# ---------------------------------------------------------------------------------------


@attrs.frozen
class Support:
    """Whether one feature is available; ``reason`` says why not (shown in the skip)."""

    supported: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.supported


#: The feature is available.
SUPPORTED = Support(True)


def unsupported(reason: str) -> Support:
    """The feature is not available, because ``reason`` (shown in every skip it causes)."""
    if not reason.strip():
        raise ValueError("say why the feature is unsupported: the reason is shown in the skip")
    return Support(False, reason)


@attrs.frozen
class Requirements:
    """What the connector and its fake exchange can do. Everything defaults to supported.

    Close a feature with :func:`unsupported` and the tests needing it skip with the reason.
    The first five mirror :class:`~bagbot_core.connector.Capabilities`: the connector's own
    ``capabilities`` are honoured first (``Capabilities(cancel=False)`` skips the cancel
    tests without any handle change); close them here only when the *fake* lacks them.

    :ivar market_orders: market orders can be placed.
    :ivar limit_orders: limit orders can be placed (and rest when they do not cross).
    :ivar cancel: resting orders can be canceled.
    :ivar fetch_by_client_order_id: ``fetch_order(symbol, external_id=None,
        client_order_id=...)`` finds an order; reconcile of ``unknown`` rows depends on it.
    :ivar fills_in_create_response: a market order's fill is in the create answer. When it
        is not, the suite syncs the order before checking the fill instead of skipping.
    :ivar move_market: :meth:`ExchangeHandle.set_price` works.
    :ivar drop_response: :meth:`ExchangeHandle.drop_next_response` works.
    :ivar reject_order: :meth:`ExchangeHandle.reject_next_order` works.
    :ivar drain_balance: :meth:`ExchangeHandle.drain_balance` works.
    :ivar count_market_requests: :meth:`ExchangeHandle.market_requests` counts something
        (close it for connectors whose markets are local configuration).
    :ivar credentials: the connector takes credentials and :attr:`ExchangeHandle.secrets`
        lists canary values the fake accepts.
    :ivar entry_point: the connector is installed through a ``bagbot`` entry point (built-in
        connectors of bagbot-core are skipped automatically).
    :ivar inspect_placements: :meth:`ExchangeHandle.placements` reports what arrived. When
        closed, the params property test falls back to a weaker check (a refused order's
        client order id never reached the exchange).
    :ivar fail_order_reads: :meth:`ExchangeHandle.fail_next_read` works for
        ``fetch_order`` and ``cancel_order``.
    :ivar fail_market_reads: :meth:`ExchangeHandle.fail_next_read` works for
        ``load_markets`` and ``fetch_quote`` (close it when markets and quotes are local).
    :ivar partial_fills: :meth:`ExchangeHandle.fill_partially` works.
    """

    market_orders: Support = SUPPORTED
    limit_orders: Support = SUPPORTED
    cancel: Support = SUPPORTED
    fetch_by_client_order_id: Support = SUPPORTED
    fills_in_create_response: Support = SUPPORTED
    move_market: Support = SUPPORTED
    drop_response: Support = SUPPORTED
    reject_order: Support = SUPPORTED
    drain_balance: Support = SUPPORTED
    count_market_requests: Support = SUPPORTED
    credentials: Support = SUPPORTED
    entry_point: Support = SUPPORTED
    inspect_placements: Support = SUPPORTED
    fail_order_reads: Support = SUPPORTED
    fail_market_reads: Support = SUPPORTED
    partial_fills: Support = SUPPORTED


#: The faults :meth:`ExchangeHandle.fail_next_read` simulates, in the order the suite tries
#: them: a 5xx answer, a connection closed before an answer, no answer within the timeout.
READ_FAULTS = ("server_error", "disconnect", "timeout")
#: The connector reads :meth:`ExchangeHandle.fail_next_read` can make fail.
ORDER_READS = ("fetch_order", "cancel_order")
MARKET_READS = ("load_markets", "fetch_quote")


#: Requirements fields that the connector's :class:`Capabilities` also declares.
CAPABILITY_FIELDS = tuple(a.name for a in attrs.fields(Capabilities))


@attrs.frozen
class Placement:
    """One order placement as the exchange understood it: what arrived, not what was meant.

    ``symbol`` is the unified ``BASE/QUOTE``; ``side`` and ``type`` are lower case, ``type``
    in the exchange's own words for anything but ``market``/``limit`` (``limit_maker``,
    ``stop_loss_limit``...). ``amount`` is the base size, ``quote_amount`` a size given in
    quote currency instead, ``stop_price`` a trigger price; ``None`` when absent.
    """

    symbol: str
    side: str
    type: str
    amount: Decimal | None
    price: Decimal | None
    client_order_id: str | None
    quote_amount: Decimal | None = None
    stop_price: Decimal | None = None


# ---------------------------------------------------------------------------------------
# The handle a connector package implements
# ---------------------------------------------------------------------------------------


class ExchangeHandle(abc.ABC):
    """A connector package's handle on its fake exchange, for :class:`ConnectorConformance`.

    Implement it in the package's tests and return it from the ``handle`` fixture (which
    also starts and stops the fake). One handle serves one test; the suite then:

    1. builds a ``Router`` with ``connector_config={connector_name: handle.connector_config}``;
    2. calls :meth:`attach` with the connector the router built, before any order;
    3. routes orders and calls the operations below.

    **Market model the suite assumes.** On :attr:`symbol` the fake fills a market buy at
    once, in full, at :meth:`market_fill_price` (``"buy"``) -- no fees, no partial fills
    but those :meth:`fill_partially` makes. A limit buy below the market rests ``open``;
    after :meth:`set_price` moves the market through it, it fills in full at *its own limit
    price* (a maker fill). The account holds
    enough of the quote asset for a dozen buys of :attr:`amount` and nothing in the fake is
    shared with another test.

    Operations are coroutines so a handle may talk to a fake in another process. An
    operation whose :class:`Requirements` field is unsupported is never called.
    """

    #: A tradable unified symbol (``BASE/QUOTE``), active, with a quote in a USD stablecoin
    #: (the max-value risk check values the order in USD).
    symbol: str = "BTC/USDT"
    #: A well-formed symbol the exchange does not list.
    unknown_symbol: str = "NOPE/USDT"
    #: An order size on :attr:`symbol`: on the amount step, above every minimum (the
    #: market's and ``RiskLimits().min_order_qty``), worth under 1000 USD.
    amount: Decimal = Decimal("0.001")
    #: What the fake supports; see :class:`Requirements`.
    requirements: Requirements = Requirements()
    #: A fragment (case-insensitive) of the exchange's reason when funds are insufficient.
    insufficient_funds_text: str = "insufficient"

    connector: Connector | None = None

    @property
    @abc.abstractmethod
    def connector_config(self) -> Mapping[str, Any]:
        """The connector's configuration pointing it at the fake (URL, credentials,
        timeouts, rate limiter off): the router's ``connector_config[connector_name]``.

        Use short timeouts (a few seconds): :meth:`drop_next_response` waits for them.
        """

    @property
    def secrets(self) -> Sequence[str]:
        """Canary credential values in :attr:`connector_config` that the fake accepts.

        The secrets test fails if any of them appears in a log line, a row or an exception
        text. Use unique, recognisable values (``"canary-secret-<uuid>"``), not defaults.
        Required when ``requirements.credentials`` is supported.
        """
        return ()

    def attach(self, connector: Connector) -> None:
        """Receive the connector the router built (and will reuse), before any order.

        The default keeps it in :attr:`connector`; in-process fakes (``paper``) that keep
        their market in the connector use it to implement the operations.
        """
        self.connector = connector

    # -- market -------------------------------------------------------------------------

    @abc.abstractmethod
    async def market_fill_price(self, side: Side) -> Decimal:
        """The exact price a market order of ``side`` on :attr:`symbol` fills at right now
        on the fake (its ask for a buy, its bid for a sell), as the fake knows it."""

    async def set_price(self, price: Decimal) -> None:
        """Move :attr:`symbol`'s market to ``price`` on the fake: resting limit buys at or
        above the new ask (sells at or below the new bid) fill in full at their own limit
        price. Needs ``requirements.move_market``."""
        raise NotImplementedError

    # -- faults -------------------------------------------------------------------------

    async def drop_next_response(self) -> None:
        """Make the next order placement *succeed on the exchange* but never answer it (the
        connection dropped, or held until the client's timeout). The order must be on the
        fake afterwards. Needs ``requirements.drop_response``."""
        raise NotImplementedError

    async def reject_next_order(self) -> str:
        """Make the exchange definitely refuse the next order placement, and return a
        fragment of the exchange's own message (it must reach the ``rejected`` row's
        reason). Nothing may be placed. Needs ``requirements.reject_order``."""
        raise NotImplementedError

    async def drain_balance(self, asset: str) -> None:
        """Set the account's free balance of ``asset`` to zero on the fake, so the next buy
        is refused for funds (with :attr:`insufficient_funds_text` in the message). Needs
        ``requirements.drain_balance``."""
        raise NotImplementedError

    async def fail_next_read(self, operation: str, fault: str) -> None:
        """Make the connector's next ``operation`` (one of :data:`ORDER_READS` and
        :data:`MARKET_READS`, named as the :class:`~bagbot_core.connector.Connector` method)
        fail with ``fault`` (one of :data:`READ_FAULTS`) on its first request: ``server_error``
        a 5xx answer, ``disconnect`` the connection closed without an answer, ``timeout`` no
        answer before the connector's timeout. Needs ``requirements.fail_order_reads`` /
        ``fail_market_reads``. The connector must raise
        :class:`~bagbot_core.errors.ExchangeUnavailableError` for each.

        A fault may also catch the client's own retry of that request (HTTP clients resend
        an idempotent request once when a reused connection closes). The suite injects each
        fault right before its call and ends every operation with ``timeout``, after which
        the next read must work again."""
        raise NotImplementedError

    async def fill_partially(self, client_order_id: str, qty: Decimal) -> None:
        """Fill ``qty`` (less than its amount) of the resting limit order placed under
        ``client_order_id`` (the exchange's form) at its own limit price; it stays open for
        the rest. Needs ``requirements.partial_fills``."""
        raise NotImplementedError

    # -- inspection ---------------------------------------------------------------------

    @abc.abstractmethod
    async def orders_for_client_id(self, client_order_id: str) -> int:
        """How many orders the exchange holds with ``client_order_id`` (any status).

        Client order ids here and in :meth:`client_ids_seen` are in the exchange's form
        (:meth:`Connector.exchange_client_id <bagbot_core.connector.Connector.
        exchange_client_id>`): what arrived."""

    @abc.abstractmethod
    async def client_ids_seen(self) -> Sequence[str]:
        """Every client order id that arrived at the exchange in an order placement,
        accepted or refused, in arrival order (in the exchange's form)."""

    async def market_requests(self) -> int:
        """How many times the fake served its market list (e.g. ``GET exchangeInfo``).
        Needs ``requirements.count_market_requests``."""
        raise NotImplementedError

    async def placements(self) -> Sequence[Placement]:
        """Every order placement that arrived at the exchange, accepted or refused, in
        arrival order, read as the exchange reads it (see :class:`Placement`).

        The params property test compares each with its row. Implement it, or close
        ``requirements.inspect_placements`` with the reason; until then that test fails.
        """
        raise NotImplementedError

    def logs(self) -> str:
        """Text the connector wrote where the suite cannot see it (its own log file).

        The suite already captures the audit log and every stdlib ``logging`` record (at
        DEBUG); the default returns nothing else.
        """
        return ""


# ---------------------------------------------------------------------------------------
# The per-test harness
# ---------------------------------------------------------------------------------------


@attrs.define
class Harness:
    """What each conformance test works with: router, database, connector, handle, logs."""

    name: str
    router: Router
    db_url: str
    session: Session
    connector: Connector
    handle: ExchangeHandle
    audit_log: io.StringIO
    caplog: pytest.LogCaptureFixture
    timeout: float
    user_id: str = "conformance-user"
    #: Every exception the suite caught from bagbot, for the secrets test.
    errors: list[BaseException] = attrs.Factory(list)

    async def within(self, awaitable: Awaitable[T]) -> T:
        """Await with the suite's per-operation timeout: a hung connector fails, not hangs."""
        return await asyncio.wait_for(awaitable, self.timeout)

    async def route(self, payload: Mapping[str, Any]) -> Order:
        return await self.within(
            self.router.route_order(self.name, payload, self.session, self.user_id)
        )

    async def route_fails(self, payload: Mapping[str, Any], error: type[Exception]) -> Order:
        """Route ``payload`` expecting ``error``; return the row the router left."""
        with pytest.raises(error) as info:
            await self.route(payload)
        self.errors.append(info.value)
        order = getattr(info.value, "order", None)
        assert isinstance(order, Order), f"{type(info.value).__name__} carries no order row"
        return order

    def exchange_id(self, client_order_id: str) -> str:
        """``client_order_id`` in the exchange's form (``Connector.exchange_client_id``): what
        the exchange and the handle see, and what the connector's methods are given."""
        return self.connector.exchange_client_id(client_order_id)

    async def sync(self, order: Order) -> Order:
        return await self.within(self.router.sync_order(self.session, order))

    async def cancel(self, order: Order) -> Order:
        return await self.within(self.router.cancel_order(self.session, order))

    async def market(self, symbol: str) -> Market:
        markets = await self.within(self.connector.load_markets())
        assert symbol in markets, f"{symbol} is not among {self.name}'s markets"
        return markets[symbol]

    def stored_rows(self) -> list[Order]:
        """Every order row, read through a fresh session (what another process would see)."""
        with session_factory(get_engine(self.db_url))() as fresh:
            return list(fresh.scalars(select(Order).order_by(Order.id)))

    def row_count(self) -> int:
        with session_factory(get_engine(self.db_url))() as fresh:
            return int(fresh.scalar(select(func.count()).select_from(Order)) or 0)


def _payload(symbol: str, side: str, type_: str, amount: Decimal,
             price: Decimal | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"symbol": symbol, "side": side, "type": type_,
                               "amount": str(amount), **extra}
    if price is not None:
        payload["price"] = str(price)
    return payload


def _round_down(value: Decimal, step: Decimal | None) -> Decimal:
    if step is None or step <= 0:
        return value
    return (value / step).quantize(Decimal(1), rounding=ROUND_DOWN) * step


def _routed_url(session: Session) -> str:
    """The database URL the router derives from ``session`` (part of its connector key), so
    the connector the suite builds is the one the router reuses for every order."""
    return sync_url(session.get_bind().engine.url.render_as_string(hide_password=False))


#: A host that is neither a sandbox nor loopback (nothing is ever sent to it).
_LIVE_TEST_HOST = "api.example.com"


def _on_live_host(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` with the host of every http(s) URL value replaced by a live-looking one,
    and the keys that were changed."""
    moved: list[str] = []
    result = dict(config)
    for key, value in config.items():
        if not isinstance(value, str):
            continue
        try:
            parts = urlsplit(value)
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and parts.netloc:
            result[key] = parts._replace(netloc=_LIVE_TEST_HOST).geturl()
            moved.append(str(key))
    return result, moved


async def _handle_op(harness: Harness, name: str, requirement: str,
                     operation: Awaitable[None]) -> None:
    """Run a handle operation the suite added later; a handle written before it is told what
    to do instead of failing with a bare NotImplementedError."""
    try:
        await operation
    except NotImplementedError:
        pytest.fail(f"{type(harness.handle).__name__}.{name}() is not implemented: implement "
                    f"it or declare Requirements({requirement}=unsupported('why'))")


def _describe_chain(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


# ---------------------------------------------------------------------------------------
# Hostile params
# ---------------------------------------------------------------------------------------

#: Param names a hostile or careless caller tries: the order's own fields as bagbot, ccxt
#: and the exchanges spell them, near-misses of declarable names, and odd text.
HOSTILE_PARAM_KEYS = (
    "quantity", "Quantity", "QUANTITY", "quoteOrderQty", "cost", "amount", "price",
    "Price", "stopPrice", "triggerPrice", "stop_price", "newClientOrderId", "clientOrderId",
    "client_order_id", "origClientOrderId", "symbol", "side", "type", "product_id",
    "order_configuration", "base_size", "quote_size", "limit_price", "test", "preview",
    "newOrderRespType", "priceMatch", "reduceOnly", "leverage", "params", "timeinforce",
    "TimeInForce", "time_in_force", "post_only", "postonly", "selfTradePrevention",
    "\uff51\uff55\uff41\uff4e\uff54\uff49\uff54\uff59", "quantity\x00", " quantity", "",
    "\x1b[31mprice", "x" * 200,
)
#: Values that would hurt if they were passed on: sizes, prices, symbols, ids, near-misses.
HOSTILE_PARAM_VALUES = (
    "50", "900000", "60000", "0.000001", "-1", "0", "1e9", "NaN", "Infinity", "BTCUSDT",
    "ETH/USDT", "ETH-USD", "SELL", "sell", "MARKET", "evil1", "gtc", "GTC ", "IOC\x00",
    "\x1b[31m", "'; DROP TABLE orders; --", "\u0660\u0661", "true", "false", "",
    {"market_market_ioc": {"quote_size": "100000"}}, {"quantity": "50"}, ["GTC"],
)


def _any_value() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.decimals(),
        st.text(max_size=12), st.sampled_from(HOSTILE_PARAM_VALUES),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    )


def _valid_value(spec: ParamSpec) -> st.SearchStrategy[Any]:
    if spec.kind is ParamKind.BOOL:
        return st.booleans()
    if spec.kind is ParamKind.DECIMAL:
        return st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1000), places=2).map(str)
    if spec.choices:
        return st.sampled_from(sorted(spec.choices))
    return st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)


@st.composite
def params_dicts(draw: st.DrawFn, allowed: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Arbitrary ``params`` for an order on a connector declaring ``allowed``: empty, declared
    names with valid or hostile values, the order's own fields under many spellings, and
    random text keys with values of every JSON type, Decimals and hostile strings."""
    shape = draw(st.sampled_from(["empty", "declared", "declared", "mixed", "mixed"]))
    if shape == "empty" or (shape == "declared" and not allowed):
        return {}
    if shape == "declared":  # declared names with valid values: these may be sent
        names = draw(st.lists(st.sampled_from(sorted(allowed)), min_size=1, unique=True))
        return {name: draw(_valid_value(allowed[name])) for name in names}
    hostile = st.one_of(st.sampled_from(HOSTILE_PARAM_KEYS), st.text(max_size=16))
    keys = st.one_of(st.sampled_from(sorted(allowed)), hostile) if allowed else hostile
    params: dict[str, Any] = {}
    for key in draw(st.lists(keys, min_size=1, max_size=3, unique=True)):
        spec = allowed.get(key)
        values = _any_value() if spec is None else st.one_of(_valid_value(spec), _any_value())
        params[key] = draw(values)
    return params


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------


class ConnectorConformance:
    """The conformance tests. Subclass as ``Test<Connector>``, set :attr:`connector_name`
    and provide a ``handle`` fixture returning (or yielding) an :class:`ExchangeHandle`.

    Override :meth:`make_registry` to register an in-process plugin, :meth:`risk_limits` for
    other limits, :attr:`heavy_modules` for what importing the plugin must not import.
    """

    #: The name the connector is routed by (``route_order(connector_name, ...)``).
    connector_name: ClassVar[str] = ""
    #: Modules the plugin's entry-point module must not import (checked in a subprocess).
    heavy_modules: ClassVar[tuple[str, ...]] = ("ccxt",)
    #: Seconds any single router/connector operation may take before the test fails.
    operation_timeout: ClassVar[float] = 30.0

    # -- configuration a subclass may override ------------------------------------------

    def make_registry(self) -> PluginRegistry:
        """The registry each test's router uses: every installed plugin, none disabled."""
        return PluginRegistry(disabled=())

    def risk_limits(self) -> RiskLimits:
        """The built-in checks' limits (the defaults, never the environment's)."""
        return RiskLimits()

    @pytest.fixture
    def handle(self) -> ExchangeHandle:
        pytest.fail(
            f"{type(self).__name__} must define a `handle` fixture returning an "
            "ExchangeHandle for its fake exchange (see bagbot_core.testing.conformance)"
        )

    # -- fixtures -----------------------------------------------------------------------

    @pytest_asyncio.fixture
    async def harness(
        self, handle: ExchangeHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> AsyncIterator[Harness]:
        """A router with the connector pointed at the fake, on a fresh SQLite file."""
        name = self._name()
        caplog.set_level(logging.DEBUG)
        stream = io.StringIO()
        audit.configure(fmt="json", stream=stream, level="debug", force=True)
        db_url = f"sqlite:///{tmp_path / 'conformance.db'}"
        session = session_factory(get_engine(db_url))()
        router = Router(self.make_registry(), limits=self.risk_limits(),
                        connector_config={name: dict(handle.connector_config)},
                        allow_live=False)
        routed_url = _routed_url(session)
        try:
            connector = await asyncio.wait_for(
                router.get_connector(name, testnet=True, database_url=routed_url),
                self.operation_timeout)
            handle.attach(connector)
            yield Harness(name=name, router=router, db_url=db_url, session=session,
                          connector=connector, handle=handle, audit_log=stream,
                          caplog=caplog, timeout=self.operation_timeout)
        finally:
            await router.aclose()
            session.close()
            dispose_engines()
            audit.configure(force=True)

    # -- helpers ------------------------------------------------------------------------

    def _name(self) -> str:
        if not self.connector_name:
            pytest.fail(f"{type(self).__name__}.connector_name is not set")
        return self.connector_name

    def require(self, harness: Harness, *features: str) -> None:
        """Skip the test (with the declared reason) unless every feature is available."""
        caps = harness.connector.capabilities
        for feature in features:
            if feature in CAPABILITY_FIELDS and not getattr(caps, feature):
                pytest.skip(f"{harness.name} does not support {feature}: its connector "
                            f"declares Capabilities({feature}=False)")
            support: Support = getattr(harness.handle.requirements, feature)
            if not support:
                pytest.skip(f"{harness.name} does not support {feature}: {support.reason}")

    async def _limit_price_below_market(self, harness: Harness, factor: str = "0.9") -> Decimal:
        """A buy price that rests: ``factor`` x the bid, rounded down to the tick."""
        market = await harness.market(harness.handle.symbol)
        bid = await harness.handle.market_fill_price(Side.SELL)
        price = _round_down(bid * Decimal(factor), market.price_step)
        assert price > 0
        return price

    async def _exchange_state(self, harness: Harness, order: Order) -> Any:
        return await harness.within(harness.connector.fetch_order(
            order.symbol, external_id=order.external_id,
            client_order_id=harness.exchange_id(order.client_order_id)))

    # -- where orders go: the live-host rule --------------------------------------------

    @pytest.mark.asyncio
    async def test_declares_where_its_orders_go(self, harness: Harness) -> None:
        """The connector declares its order endpoints, and pointed at the fake it is a testnet.

        Without the declaration bagbot cannot tell a sandbox from production and must trust
        ``testnet=True`` blindly (see ``bagbot_core.endpoints``).
        """
        urls = harness.connector.endpoints()
        assert urls is not None, (
            f"{harness.name} does not declare where its orders go: override "
            "Connector.endpoints() to return the base URL(s) orders are placed, read and "
            "canceled at, as configured (() for an in-process exchange), and set "
            "Connector.sandbox_hosts to the exchange's documented sandbox host(s)")
        assert harness.connector.live is False, (
            f"{harness.name} pointed at the fake declares endpoints {list(urls)!r}: none may "
            "be live, the fake must run on a loopback address")

    @pytest.mark.asyncio
    async def test_testnet_on_a_live_host_is_refused(self, handle: ExchangeHandle) -> None:
        """``testnet=True`` with the config's URLs moved to a production-like host is refused
        before the connector can send anything -- even with the live opt-in.

        Nothing is routed: if the connector accepted the host, the test fails without
        letting it talk to the network.
        """
        name = self._name()
        config, moved = _on_live_host(handle.connector_config)
        if not moved:
            pytest.skip(f"{name}'s config has no http(s) URL to point at a live host")
        router = Router(self.make_registry(), limits=self.risk_limits(),
                        connector_config={name: config}, allow_live=True)
        try:
            await asyncio.wait_for(router.get_connector(name, testnet=True),
                                   self.operation_timeout)
        except LiveTradingNotAllowedError:
            pass
        else:
            pytest.fail(
                f"{name} accepted testnet=True with {', '.join(moved)} on "
                f"{_LIVE_TEST_HOST}: declare the configured URL in Connector.endpoints() and "
                "the exchange's sandbox in Connector.sandbox_hosts")
        finally:
            await router.aclose()

    # -- discovery and import cost ------------------------------------------------------

    def test_discovered_through_entry_point(self, handle: ExchangeHandle) -> None:
        """The connector is offered by an installed distribution's ``bagbot`` entry point."""
        name = self._name()
        if not handle.requirements.entry_point:
            pytest.skip(f"{name} is not installed through an entry point: "
                        f"{handle.requirements.entry_point.reason}")
        connectors = PluginRegistry(disabled=()).connectors()
        assert name in connectors, (
            f"no installed plugin offers connector {name!r} (found: {sorted(connectors)}); "
            f"is the distribution installed with a [project.entry-points.{ENTRY_POINT_GROUP}] "
            "table?")
        spec, provenance = connectors[name]
        if provenance.distribution == "bagbot-core":
            pytest.skip(f"{name} is built into bagbot-core: registered without an entry point")
        try:
            dist = importlib.metadata.distribution(provenance.distribution)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} comes from {provenance}, which is not an installed "
                        "distribution")
        eps = [ep for ep in dist.entry_points
               if ep.group == ENTRY_POINT_GROUP and ep.name == provenance.plugin]
        assert eps, f"{dist.metadata['Name']} has no {ENTRY_POINT_GROUP!r} entry point " \
                    f"named {provenance.plugin!r}"
        assert provenance.version == dist.version
        assert spec.name == name
        assert callable(spec.factory)
        assert spec.description.strip(), "give the ConnectorSpec a one-line description"

    def test_plugin_import_is_light(self, handle: ExchangeHandle) -> None:
        """Importing the plugin module and listing its connectors imports no heavy library."""
        name = self._name()
        registry = self.make_registry()
        connectors = registry.connectors()
        assert name in connectors, f"no plugin offers connector {name!r}"
        plugin = registry.pm.get_plugin(connectors[name][1].plugin)
        module = getattr(plugin, "__name__", None) if isinstance(
            plugin, type(sys)) else type(plugin).__module__
        assert module, f"cannot tell which module registers {name!r}"
        code = (
            "import importlib, sys\n"
            f"module = importlib.import_module({module!r})\n"
            "hook = getattr(module, 'bagbot_add_connectors', None)\n"
            "names = [spec.name for spec in hook()] if hook else []\n"
            f"heavy = sorted(m for m in {list(self.heavy_modules)!r} if m in sys.modules)\n"
            "print(repr((names, heavy)))\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        result = subprocess.run(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
            check=False, env=env)
        assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
        names, heavy = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our repr
        assert heavy == [], f"importing {module} imported {heavy}: import them in the factory"
        if isinstance(plugin, type(sys)):
            assert name in names, f"{module}.bagbot_add_connectors() does not offer {name!r}"

    # -- orders -------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_market_buy_fills_with_exact_amount_and_price(self, harness: Harness) -> None:
        """A market buy fills in full; filled amount and average price are exact Decimals."""
        self.require(harness, "market_orders")
        h = harness.handle
        expected_price = await h.market_fill_price(Side.BUY)
        order = await harness.route(_payload(h.symbol, "buy", "market", h.amount))
        caps = harness.connector.capabilities
        if caps.fills_in_create_response and h.requirements.fills_in_create_response:
            assert order.status == OrderStatus.FILLED, (
                f"the create answer should carry the fill; got {order.status} "
                f"({order.exchange_status}); declare Capabilities(fills_in_create_response="
                "False) if the exchange fills later")
        else:
            order = await harness.sync(order)
        assert order.status == OrderStatus.FILLED
        assert order.external_id, "the exchange's order id was not recorded"
        assert isinstance(order.filled_qty, Decimal)
        assert order.filled_qty == h.amount
        assert isinstance(order.avg_price, Decimal)
        assert order.avg_price == expected_price, (
            f"average price {order.avg_price} != fill price {expected_price} (floats?)")
        stored = {r.id: r for r in harness.stored_rows()}[order.id]
        assert (stored.status, stored.filled_qty, stored.avg_price) == (
            "filled", h.amount, expected_price)

    @pytest.mark.asyncio
    async def test_limit_order_rests_then_fills_when_the_market_moves(
        self, harness: Harness
    ) -> None:
        """A limit buy below the market rests open, syncs open, then fills at its limit."""
        self.require(harness, "limit_orders", "move_market")
        h = harness.handle
        price = await self._limit_price_below_market(harness)
        order = await harness.route(_payload(h.symbol, "buy", "limit", h.amount, price))
        assert order.status == OrderStatus.OPEN, (
            f"a limit buy at {price}, below the market, must rest open; got {order.status}")
        assert order.filled_qty == 0
        assert order.external_id
        order = await harness.sync(order)
        assert order.status == OrderStatus.OPEN
        assert order.filled_qty == 0
        await h.set_price(_round_down(price * Decimal("0.98"),
                                      (await harness.market(h.symbol)).price_step))
        order = await harness.sync(order)
        assert order.status == OrderStatus.FILLED, (
            f"after the market moved through {price} the order should be filled; "
            f"got {order.status} ({order.exchange_status})")
        assert order.filled_qty == h.amount
        assert order.avg_price == price, f"maker fill at the limit {price}, got {order.avg_price}"
        state = await self._exchange_state(harness, order)
        assert state.status == OrderStatus.FILLED

    @pytest.mark.asyncio
    async def test_limit_order_is_canceled(self, harness: Harness) -> None:
        """A resting limit order is canceled on the exchange and the row says so."""
        self.require(harness, "limit_orders", "cancel")
        h = harness.handle
        price = await self._limit_price_below_market(harness, "0.85")
        order = await harness.route(_payload(h.symbol, "buy", "limit", h.amount, price))
        assert order.status == OrderStatus.OPEN
        order = await harness.cancel(order)
        assert order.status == OrderStatus.CANCELED
        assert order.filled_qty == 0
        state = await self._exchange_state(harness, order)
        assert state.status == OrderStatus.CANCELED, "the exchange still has the order live"
        order = await harness.sync(order)
        assert order.status == OrderStatus.CANCELED
        stored = {r.id: r for r in harness.stored_rows()}[order.id]
        assert stored.status == "canceled"
        with pytest.raises(ExchangeOrderNotFoundError) as info:
            await harness.within(harness.connector.cancel_order(
                h.symbol, external_id=None,
                client_order_id=harness.exchange_id("bbnosuchorder" + uuid.uuid4().hex)))
        harness.errors.append(info.value)

    @pytest.mark.asyncio
    async def test_cancel_of_an_order_that_filled_meanwhile_changes_nothing(
        self, harness: Harness
    ) -> None:
        """The row says ``open`` but the exchange filled it: the cancel is refused (rejected
        or not-found), the row is not marked canceled, and a sync then records the fill."""
        self.require(harness, "limit_orders", "cancel", "move_market")
        h = harness.handle
        price = await self._limit_price_below_market(harness)
        order = await harness.route(_payload(h.symbol, "buy", "limit", h.amount, price))
        assert order.status == OrderStatus.OPEN
        await h.set_price(_round_down(price * Decimal("0.98"),
                                      (await harness.market(h.symbol)).price_step))
        with pytest.raises((ExchangeRejectedError, ExchangeOrderNotFoundError)) as info:
            await harness.cancel(order)
        harness.errors.append(info.value)
        stored = {r.id: r for r in harness.stored_rows()}[order.id]
        assert stored.status == "open", f"a refused cancel left the row {stored.status}"
        order = await harness.sync(order)
        assert order.status == OrderStatus.FILLED
        assert order.filled_qty == h.amount

    @pytest.mark.asyncio
    async def test_route_order_leaves_one_row_per_call(self, harness: Harness) -> None:
        """Filled, resting, refused-before-send and risk-refused orders: one row each."""
        h = harness.handle
        calls: list[tuple[dict[str, Any], type[Exception] | None]] = []
        caps = harness.connector.capabilities
        if caps.market_orders and h.requirements.market_orders:
            calls.append((_payload(h.symbol, "buy", "market", h.amount), None))
        if caps.limit_orders and h.requirements.limit_orders:
            price = await self._limit_price_below_market(harness)
            calls.append((_payload(h.symbol, "buy", "limit", h.amount, price), None))
        if not calls:
            pytest.skip(f"{harness.name} supports neither market nor limit orders")
        type_ = str(calls[0][0]["type"])
        price_field = calls[0][0].get("price")
        extra_price = None if price_field is None else Decimal(price_field)
        calls.append((_payload(h.unknown_symbol, "buy", type_, h.amount, extra_price),
                      RiskCheckError))
        too_many = self.risk_limits().max_order_qty + 1
        calls.append((_payload(h.symbol, "buy", type_, too_many, extra_price), RiskCheckError))
        ids = []
        for number, (payload, error) in enumerate(calls, start=1):
            if error is None:
                order = await harness.route(payload)
            else:
                order = await harness.route_fails(payload, error)
            ids.append(order.id)
            assert harness.row_count() == number, f"call {number} ({payload}) left " \
                                                  f"{harness.row_count() - number + 1} rows"
        rows = harness.stored_rows()
        assert [r.id for r in rows] == ids
        assert all(r.connector == harness.name and r.user_id == harness.user_id for r in rows)
        assert len({r.client_order_id for r in rows}) == len(rows)
        assert [r.status for r in rows[-2:]] == ["rejected", "rejected"]
        assert harness.db_url.startswith("sqlite:///")
        assert await asyncio.to_thread(Path(harness.db_url[len("sqlite:///"):]).is_file)

    @pytest.mark.asyncio
    async def test_client_order_id_reaches_the_exchange_and_finds_the_order(
        self, harness: Harness
    ) -> None:
        """The router's client order id is what the exchange stores, and finds the order."""
        self.require(harness, "fetch_by_client_order_id")
        h = harness.handle
        payload = await self._any_order(harness)
        order = await harness.route(payload)
        cid = harness.exchange_id(order.client_order_id)
        assert cid in await h.client_ids_seen(), "the exchange never saw the client order id"
        assert await h.orders_for_client_id(cid) == 1, (
            f"the exchange holds {await h.orders_for_client_id(cid)} orders for {cid}")
        state = await harness.within(harness.connector.fetch_order(
            h.symbol, external_id=None, client_order_id=cid))
        assert state.external_id == order.external_id
        assert state.client_order_id in (None, cid)
        assert state.status == OrderStatus(order.status)

    @pytest.mark.asyncio
    async def test_idempotency_key_never_places_a_second_order(self, harness: Harness) -> None:
        """The caller's ``client_order_id`` is sent as is; routing it again places nothing."""
        h = harness.handle
        key = "conf" + uuid.uuid4().hex[:20]
        payload = {**(await self._any_order(harness)), "client_order_id": key}
        first = await harness.route(payload)
        assert first.client_order_id == key
        again = await harness.route(payload)
        assert again.id == first.id
        sent = harness.exchange_id(key)
        assert await h.orders_for_client_id(sent) == 1
        assert list(await h.client_ids_seen()).count(sent) == 1
        assert harness.row_count() == 1

    @pytest.mark.asyncio
    async def test_fetch_of_an_unknown_order_is_not_found(self, harness: Harness) -> None:
        """An order the exchange does not know raises ExchangeOrderNotFoundError -- the
        signal reconcile uses to call an order lost."""
        self.require(harness, "fetch_by_client_order_id")
        with pytest.raises(ExchangeOrderNotFoundError) as info:
            await harness.within(harness.connector.fetch_order(
                harness.handle.symbol, external_id=None,
                client_order_id=harness.exchange_id("bbnosuchorder" + uuid.uuid4().hex[:16])))
        harness.errors.append(info.value)

    @pytest.mark.asyncio
    async def test_exchange_rejection_becomes_a_rejected_row(self, harness: Harness) -> None:
        """A definite refusal is ``rejected`` with the exchange's reason, never ``unknown``."""
        self.require(harness, "reject_order")
        h = harness.handle
        payload = await self._any_order(harness)
        words = await h.reject_next_order()
        order = await harness.route_fails(payload, ExchangeRejectedError)
        assert order.status == OrderStatus.REJECTED
        assert words.lower() in (order.reason or "").lower(), (
            f"the exchange said {words!r}; the row says {order.reason!r}")
        stored = {r.id: r for r in harness.stored_rows()}[order.id]
        assert stored.status == "rejected"
        assert stored.reason == order.reason
        assert await h.orders_for_client_id(harness.exchange_id(order.client_order_id)) == 0

    @pytest.mark.asyncio
    async def test_timeout_after_accept_is_unknown_and_reconciles(self, harness: Harness) -> None:
        """Accepted but unanswered: ``unknown``, never resent; reconcile finds the truth."""
        self.require(harness, "market_orders", "drop_response", "fetch_by_client_order_id")
        h = harness.handle
        await h.drop_next_response()
        order = await harness.route_fails(_payload(h.symbol, "buy", "market", h.amount),
                                          OrderStatusUnknownError)
        cid = harness.exchange_id(order.client_order_id)
        assert order.status == OrderStatus.UNKNOWN, f"got {order.status}: {order.reason}"
        assert await h.orders_for_client_id(cid) == 1, "the order should be on the exchange"
        assert list(await h.client_ids_seen()).count(cid) == 1, "the order was resent"
        changed = await harness.within(harness.router.reconcile(
            harness.session, harness.name, grace=dt.timedelta(0)))
        assert [o.id for o in changed] == [order.id]
        truth = await harness.within(harness.connector.fetch_order(
            h.symbol, external_id=None, client_order_id=cid))
        assert order.status == truth.status == OrderStatus.FILLED
        assert order.external_id == truth.external_id
        assert order.filled_qty == h.amount
        assert await h.orders_for_client_id(cid) == 1
        assert harness.row_count() == 1

    @pytest.mark.asyncio
    async def test_insufficient_funds_is_rejected(self, harness: Harness) -> None:
        """A buy the account cannot pay for is ``rejected`` with the exchange's reason."""
        self.require(harness, "drain_balance")
        h = harness.handle
        payload = await self._any_order(harness)
        market = await harness.market(h.symbol)
        await h.drain_balance(market.quote)
        order = await harness.route_fails(payload, ExchangeRejectedError)
        assert order.status == OrderStatus.REJECTED
        assert h.insufficient_funds_text.lower() in (order.reason or "").lower(), order.reason
        assert await h.orders_for_client_id(harness.exchange_id(order.client_order_id)) == 0

    @pytest.mark.asyncio
    async def test_unknown_symbol_is_refused_before_the_exchange(self, harness: Harness) -> None:
        """The ``valid_symbol`` check refuses it; no placement reaches the exchange."""
        h = harness.handle
        before = list(await h.client_ids_seen())
        order = await harness.route_fails(
            _payload(h.unknown_symbol, "buy", "limit", h.amount, Decimal(1)), RiskCheckError)
        assert order.status == OrderStatus.REJECTED
        error = harness.errors[-1]
        assert isinstance(error, RiskCheckError)
        assert [v.check for v in error.violations] == ["valid_symbol"]
        assert list(await h.client_ids_seen()) == before, "a placement reached the exchange"
        assert await h.orders_for_client_id(harness.exchange_id(order.client_order_id)) == 0

    @pytest.mark.asyncio
    async def test_amount_is_rounded_down_to_the_market_step(self, harness: Harness) -> None:
        """Too many decimals: the amount is rounded *down* to the step before sending."""
        h = harness.handle
        market = await harness.market(h.symbol)
        step = market.amount_step
        if step is None:
            pytest.skip(f"{h.symbol} on {harness.name} has no amount step")
        expected = _round_down(h.amount, step)
        assert expected == h.amount, f"handle.amount {h.amount} is not on the step {step}"
        ragged = h.amount + step * Decimal("0.7")
        payload = await self._any_order(harness, amount=ragged)
        order = await harness.route(payload)
        assert order.qty == expected, f"sent {order.qty}, expected {expected} (rounded down)"
        state = await self._exchange_state(harness, order)
        if state.amount is not None:
            assert state.amount == expected, f"the exchange holds {state.amount}"
        if order.status == OrderStatus.FILLED:
            assert order.filled_qty == expected

    @pytest.mark.asyncio
    async def test_no_secret_leaks(self, harness: Harness) -> None:
        """Canary credentials never appear in logs, rows or exception texts."""
        self.require(harness, "credentials")
        h = harness.handle
        canaries = [s for s in h.secrets if s]
        assert canaries, "requirements.credentials is supported but handle.secrets is empty"
        caps = harness.connector.capabilities
        req = h.requirements
        await harness.route(await self._any_order(harness))
        if req.reject_order:
            await h.reject_next_order()
            await harness.route_fails(await self._any_order(harness), ExchangeRejectedError)
        if req.drop_response and caps.market_orders and req.market_orders:
            await h.drop_next_response()
            await harness.route_fails(_payload(h.symbol, "buy", "market", h.amount),
                                      OrderStatusUnknownError)
            await harness.within(harness.router.reconcile(
                harness.session, harness.name, grace=dt.timedelta(0)))
        await harness.route_fails(
            _payload(h.unknown_symbol, "buy", "limit", h.amount, Decimal(1)), RiskCheckError)
        if caps.fetch_by_client_order_id and req.fetch_by_client_order_id:
            with pytest.raises(ExchangeOrderNotFoundError) as info:
                await harness.within(harness.connector.fetch_order(
                    h.symbol, external_id=None,
                    client_order_id=harness.exchange_id("bbmissing" + uuid.uuid4().hex)))
            harness.errors.append(info.value)
        places = {
            "audit log": harness.audit_log.getvalue(),
            "stdlib logging": "\n".join(
                f"{r.name} {r.getMessage()} {r.exc_text or ''}"
                for r in harness.caplog.records),
            "order rows": "\n".join(
                json.dumps([r.reason, r.details, r.external_id, r.exchange_status],
                           default=str) for r in harness.stored_rows()),
            "exception texts": "\n".join(_describe_chain(e) for e in harness.errors),
            "connector repr": repr(harness.connector) + str(harness.connector),
            "handle logs": h.logs(),
        }
        assert harness.errors, "no error path was exercised"
        for where, text in places.items():
            for canary in canaries:
                assert canary not in text, f"a credential leaked into the {where}"

    @pytest.mark.asyncio
    async def test_connector_is_reused_across_orders(self, harness: Harness) -> None:
        """One connector object serves every order of the router."""
        payload = await self._any_order(harness)
        for _ in range(3):
            await harness.route(payload)
        again = await harness.within(harness.router.get_connector(
            harness.name, testnet=True,
            database_url=_routed_url(harness.session)))
        assert again is harness.connector, "the router built a second connector"

    @pytest.mark.asyncio
    async def test_markets_are_loaded_once(self, harness: Harness) -> None:
        """Several orders, one market list request: the connector caches its markets."""
        self.require(harness, "count_market_requests")
        payload = await self._any_order(harness)
        for _ in range(3):
            await harness.route(payload)
        loads = await harness.handle.market_requests()
        assert loads == 1, f"the market list was requested {loads} times for 3 orders"

    # -- faults on the read path --------------------------------------------------------

    @pytest.mark.asyncio
    async def test_read_faults_on_orders_raise_exchange_unavailable(
        self, harness: Harness
    ) -> None:
        """A 5xx, a dropped connection or a timeout on ``fetch_order``/``cancel_order``
        raises ExchangeUnavailableError from the connector itself -- never a plain exception,
        never "rejected" or "not found" -- and the next read works again."""
        self.require(harness, "fail_order_reads")
        h = harness.handle
        order = await harness.route(await self._any_order(harness))
        caps = harness.connector.capabilities
        operations = [op for op in ORDER_READS
                      if op != "cancel_order" or (caps.cancel and h.requirements.cancel)]
        calls = {
            "fetch_order": lambda: harness.connector.fetch_order(
                order.symbol, external_id=order.external_id,
                client_order_id=harness.exchange_id(order.client_order_id)),
            "cancel_order": lambda: harness.connector.cancel_order(
                order.symbol, external_id=order.external_id,
                client_order_id=harness.exchange_id(order.client_order_id)),
        }
        for operation in operations:
            for fault in READ_FAULTS:
                await self._assert_unavailable(harness, operation, fault, calls[operation])
        state = await self._exchange_state(harness, order)
        assert state.external_id == order.external_id, "the connector did not recover"

    @pytest.mark.asyncio
    async def test_read_faults_on_markets_and_quotes_raise_exchange_unavailable(
        self, harness: Harness
    ) -> None:
        """The same faults on ``load_markets(reload=True)`` and ``fetch_quote`` raise
        ExchangeUnavailableError, and the connector reads markets again afterwards."""
        self.require(harness, "fail_market_reads")
        h = harness.handle
        await harness.market(h.symbol)
        calls = {
            "load_markets": lambda: harness.connector.load_markets(reload=True),
            "fetch_quote": lambda: harness.connector.fetch_quote(h.symbol),
        }
        for operation in MARKET_READS:
            for fault in READ_FAULTS:
                await self._assert_unavailable(harness, operation, fault, calls[operation])
        markets = await harness.within(harness.connector.load_markets(reload=True))
        assert h.symbol in markets, "the connector did not recover"

    async def _assert_unavailable(self, harness: Harness, operation: str, fault: str,
                                  call: Callable[[], Awaitable[Any]]) -> None:
        requirement = "fail_order_reads" if operation in ORDER_READS else "fail_market_reads"
        await _handle_op(harness, "fail_next_read", requirement,
                         harness.handle.fail_next_read(operation, fault))
        try:
            await harness.within(call())
        except ExchangeUnavailableError as error:
            harness.errors.append(error)
        except Exception as error:  # the point of the test: which class it is
            pytest.fail(
                f"{operation} with a {fault} raised {type(error).__name__}: {error}; a "
                "timeout, dropped connection or 5xx must raise ExchangeUnavailableError "
                "(check the connector's error classification)")
        else:
            pytest.fail(f"{operation} with a {fault} returned instead of raising "
                        "ExchangeUnavailableError (did the handle inject the fault?)")

    # -- partial fills ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_partial_fill_reads_partially_filled(self, harness: Harness) -> None:
        """A resting limit buy that fills in part syncs ``partially_filled`` with exactly
        the filled amount and its average price -- not ``open``, not ``filled``."""
        self.require(harness, "limit_orders", "partial_fills")
        h = harness.handle
        market = await harness.market(h.symbol)
        price = await self._limit_price_below_market(harness)
        order = await harness.route(_payload(h.symbol, "buy", "limit", h.amount, price))
        assert order.status == OrderStatus.OPEN
        part = _round_down(h.amount / 2, market.amount_step)
        assert 0 < part < h.amount, f"handle.amount {h.amount} cannot be split on the step"
        await _handle_op(harness, "fill_partially", "partial_fills",
                         h.fill_partially(harness.exchange_id(order.client_order_id), part))
        order = await harness.sync(order)
        assert order.status == OrderStatus.PARTIALLY_FILLED, (
            f"{part} of {h.amount} filled: the order must read partially_filled, got "
            f"{order.status} ({order.exchange_status})")
        assert order.filled_qty == part
        assert order.avg_price == price, f"filled at the limit {price}, got {order.avg_price}"
        state = await self._exchange_state(harness, order)
        assert (state.status, state.filled_qty, state.avg_price) == (
            OrderStatus.PARTIALLY_FILLED, part, price)
        stored = {r.id: r for r in harness.stored_rows()}[order.id]
        assert (stored.status, stored.filled_qty, stored.avg_price) == (
            "partially_filled", part, price)

    # -- client order ids in the exchange's form ----------------------------------------

    @pytest.mark.asyncio
    async def test_client_order_id_in_the_exchange_form_is_found_again(
        self, harness: Harness
    ) -> None:
        """The row keeps bagbot's id; the exchange gets ``exchange_client_id`` of it (the
        same every time), and reconcile of an unanswered order finds it by that form."""
        self.require(harness, "fetch_by_client_order_id")
        h = harness.handle
        probe = "bb" + uuid.uuid4().hex
        assert isinstance(harness.exchange_id(probe), str), "exchange_client_id must return str"
        assert harness.exchange_id(probe) == harness.exchange_id(probe), (
            "exchange_client_id is not deterministic: nothing placed could be found again")
        caps, req = harness.connector.capabilities, h.requirements
        if caps.market_orders and req.market_orders and req.drop_response:
            await h.drop_next_response()
            order = await harness.route_fails(_payload(h.symbol, "buy", "market", h.amount),
                                              OrderStatusUnknownError)
            changed = await harness.within(harness.router.reconcile(
                harness.session, harness.name, grace=dt.timedelta(0)))
            assert [o.id for o in changed] == [order.id], "reconcile left the order unknown"
            assert order.status != OrderStatus.REJECTED, (
                "reconcile did not find the order by "
                f"{harness.exchange_id(order.client_order_id)!r}: {order.reason}")
        else:
            order = await harness.route(await self._any_order(harness))
            order = await harness.sync(order)
        cid = order.client_order_id
        assert re.fullmatch("bb[0-9a-f]{32}", cid), f"the row holds {cid!r}, not bagbot's id"
        sent = harness.exchange_id(cid)
        assert sent, "exchange_client_id returned an empty id"
        assert list(await h.client_ids_seen()).count(sent) == 1, (
            f"the exchange did not receive {sent!r} (exchange_client_id of {cid!r}) once")
        assert await h.orders_for_client_id(sent) == 1
        state = await harness.within(harness.connector.fetch_order(
            h.symbol, external_id=None, client_order_id=sent))
        assert state.external_id == order.external_id
        assert state.client_order_id in (None, sent, cid)
        assert OrderStatus(order.status) not in (OrderStatus.UNKNOWN, OrderStatus.PENDING)

    # -- payload helpers ----------------------------------------------------------------

    async def _any_order(self, harness: Harness, *,
                         amount: Decimal | None = None) -> dict[str, Any]:
        """A resting limit buy if the connector has limit orders, else a market buy."""
        h = harness.handle
        size = h.amount if amount is None else amount
        caps = harness.connector.capabilities
        if caps.limit_orders and h.requirements.limit_orders:
            price = await self._limit_price_below_market(harness)
            return _payload(h.symbol, "buy", "limit", size, price)
        if caps.market_orders and h.requirements.market_orders:
            return _payload(h.symbol, "buy", "market", size)
        pytest.skip(f"{harness.name} supports neither market nor limit orders")

    # -- params: only what the connector declares, never the order itself ---------------

    @pytest.mark.asyncio
    async def test_declared_params_are_well_formed(self, harness: Harness) -> None:
        """``allowed_params`` maps each name to its :class:`ParamSpec`, and declares nothing
        that would change the order itself (the router would refuse it anyway)."""
        for name, spec in harness.connector.allowed_params.items():
            assert isinstance(spec, ParamSpec), f"allowed_params[{name!r}] is not a ParamSpec"
            assert spec.name == name, f"allowed_params[{name!r}] is named {spec.name!r}"
            assert not is_forbidden(name), (
                f"{name!r} would change the order itself; it cannot be a pass-through param")

    @pytest.mark.asyncio
    async def test_params_that_change_the_order_are_refused_before_the_exchange(
        self, harness: Harness
    ) -> None:
        """Params naming the amount, cost, price, symbol, side, type or client order id (as
        bagbot, ccxt or an exchange spells them), or nothing declared: refused with one
        ``rejected`` row each; nothing reaches the exchange."""
        h = harness.handle
        base = await self._any_order(harness)
        evil = "evil" + uuid.uuid4().hex[:12]
        attacks: list[dict[str, Any]] = [
            {"quantity": "50"}, {"quoteOrderQty": "900000"}, {"cost": "900000"},
            {"price": "60000"}, {"newClientOrderId": evil}, {"clientOrderId": evil},
            {"client_order_id": evil}, {"symbol": "ETH/USDT"}, {"side": "sell"},
            {"type": "market"}, {"product_id": "ETH-USD"}, {"stopPrice": "1"},
            {"order_configuration": {"market_market_ioc": {"quote_size": "100000"}}},
            {"undeclared" + uuid.uuid4().hex[:8]: True},
        ]
        before = list(await h.client_ids_seen())
        for number, params in enumerate(attacks, start=1):
            order = await harness.route_fails({**base, "params": params},
                                              OrderValidationError)
            assert order.status == OrderStatus.REJECTED
            assert "params" in (order.reason or ""), order.reason
            assert harness.row_count() == number
        assert list(await h.client_ids_seen()) == before, "a placement reached the exchange"
        assert await h.orders_for_client_id(harness.exchange_id(evil)) == 0

    @pytest.mark.asyncio
    # One fake (the harness) serves every example; each suite subclass is an executor of
    # the same test, which keeps no state on ``self``.
    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.differing_executors])
    @given(data=st.data())
    async def test_params_never_change_the_order_the_exchange_receives(
        self, harness: Harness, data: st.DataObject
    ) -> None:
        """For arbitrary ``params``: either the order is refused (OrderValidationError, one
        ``rejected`` row) and the exchange saw nothing, or the exchange received exactly the
        row's symbol, side, type, amount, price and client order id. Undeclared and
        forbidden keys are always refused."""
        h = harness.handle
        allowed = harness.connector.allowed_params
        params = data.draw(params_dicts(allowed), label="params")
        inspect = await self._can_inspect_placements(harness)
        payload = {**(await self._any_order(harness)), "params": params}
        rows = harness.row_count()
        seen = list(await h.client_ids_seen())
        placed = list(await h.placements()) if inspect else []
        refused = exchange_said_no = False
        try:
            order = await harness.route(payload)
        except OrderValidationError as error:
            harness.errors.append(error)
            refused, order = True, error.order
        except ExchangeRejectedError as error:  # the exchange's own "no" (funds, post-only)
            harness.errors.append(error)
            exchange_said_no, order = True, error.order
        assert isinstance(order, Order), "the call left no row"
        assert harness.row_count() == rows + 1, "a call must leave exactly one row"
        bad = [k for k in params if k not in allowed or is_forbidden(k)]
        assert refused or not bad, f"params {bad!r} are not declared but were not refused"
        arrived = list(await h.client_ids_seen())[len(seen):]
        new = list(await h.placements())[len(placed):] if inspect else []
        event("refused before sending" if refused else f"sent: {order.status}")
        if refused:
            assert order.status == OrderStatus.REJECTED
            assert arrived == [], f"a refused order reached the exchange as {arrived}"
            assert new == [], f"a refused order reached the exchange: {new}"
            return
        sent = harness.exchange_id(order.client_order_id)
        expected = [] if exchange_said_no else [sent]
        assert arrived in (expected, [sent]), (
            f"the exchange saw {arrived}, expected only {sent}")
        if inspect:
            # A refusing exchange may not keep what it refused; anything kept must match.
            assert len(new) in ((0, 1) if exchange_said_no else (1,)), (
                f"one order, {len(new)} placements: {new}")
            for placement in new:
                self._assert_placement_is_the_row(placement, order, sent)
        await self._cancel_if_resting(harness, order)

    # -- params helpers -----------------------------------------------------------------

    async def _can_inspect_placements(self, harness: Harness) -> bool:
        support = harness.handle.requirements.inspect_placements
        if not support:
            return False
        try:
            await harness.handle.placements()
        except NotImplementedError:
            pytest.fail(f"{type(harness.handle).__name__}.placements() is not implemented: "
                        "implement it (what arrived at the exchange) or declare "
                        "Requirements(inspect_placements=unsupported('why'))")
        return True

    @staticmethod
    def _assert_placement_is_the_row(placed: Placement, order: Order,
                                     client_order_id: str | None = None) -> None:
        sent = order.client_order_id if client_order_id is None else client_order_id
        expected = (order.symbol, order.side, order.order_type, sent)
        got = (placed.symbol, placed.side, placed.type, placed.client_order_id)
        assert got == expected, f"the exchange received {got}, the row says {expected}"
        quote_sized = (placed.amount is None and placed.quote_amount is not None
                       and order.order_type == "market" and order.side == "buy")
        if not quote_sized:
            assert placed.amount == order.qty, (
                f"the exchange received amount {placed.amount}, the row says {order.qty}")
            assert placed.quote_amount is None, f"a quote size arrived: {placed}"
        assert placed.price == order.price, (
            f"the exchange received price {placed.price}, the row says {order.price}")
        assert placed.stop_price is None, f"a trigger price arrived: {placed}"

    async def _cancel_if_resting(self, harness: Harness, order: Order) -> None:
        """Free what a resting order holds, so many examples fit the account."""
        caps, req = harness.connector.capabilities, harness.handle.requirements
        if order.status == OrderStatus.OPEN and caps.cancel and req.cancel:
            await harness.cancel(order)
