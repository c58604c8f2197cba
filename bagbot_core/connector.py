"""The connector contract: what a plugin hands the router to talk to one exchange.

A plugin returns :class:`ConnectorSpec` objects from ``bagbot_add_connectors``. The spec
is cheap (a name and a factory); the factory runs -- and may import heavy libraries such as
ccxt -- only when an order is actually routed through that connector. The router keeps one
:class:`Connector` per (name, testnet, config) and reuses it for every order.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import urlsplit

import attrs

from bagbot_core.errors import ConfigurationError, ExchangeRejectedError
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote
from bagbot_core.secrets import Secret


@attrs.frozen
class Capabilities:
    """What a connector supports; the conformance suite skips what is declared absent."""

    market_orders: bool = True
    limit_orders: bool = True
    cancel: bool = True
    #: Can find an order by client order id alone (needed by reconcile for ``unknown`` rows).
    fetch_by_client_order_id: bool = True
    #: The exchange fills market orders synchronously in its create answer.
    fills_in_create_response: bool = True


@attrs.frozen
class ConnectorSettings:
    """What the router passes a connector factory.

    ``config`` is the caller's per-connector configuration (credentials, base URL, options),
    as given to :class:`~bagbot_core.router.Router`; plugins document their keys and read
    environment variables for what is not given. ``database_url`` is the router's database,
    for connectors (like ``paper``) that keep state there.
    """

    testnet: bool = True
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    database_url: str | None = None


class Connector(abc.ABC):
    """One exchange account, as bagbot needs it. All I/O methods are coroutines.

    Error contract -- the router's correctness depends on it:

    * a definite refusal (bad order, funds, symbol, credentials) raises
      :class:`~bagbot_core.errors.ExchangeRejectedError`;
    * anything after which the request *may* have reached the exchange (timeouts, dropped
      connections, 5xx) raises :class:`~bagbot_core.errors.ExchangeUnavailableError`; the
      router records ``unknown`` and never resends;
    * an order the exchange does not know raises
      :class:`~bagbot_core.errors.ExchangeOrderNotFoundError`.

    Any other exception from :meth:`create_order` is treated like ``unknown`` as well.
    """

    #: The connector name, as in ``route_order("binance", ...)``.
    name: str = ""
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    async def load_markets(self, *, reload: bool = False) -> Mapping[str, Market]:
        """Markets by unified symbol (``BASE/QUOTE``). Cached; ``reload=True`` refreshes."""

    @abc.abstractmethod
    async def fetch_quote(self, symbol: str) -> Quote:
        """Current best bid/ask, used to value market orders before they are sent."""

    @abc.abstractmethod
    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        """Place ``order`` tagged with ``client_order_id``; never retry it internally."""

    @abc.abstractmethod
    async def fetch_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """Current state of one order; by ``external_id`` when known, else client order id."""

    @abc.abstractmethod
    async def cancel_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """Cancel one order and return its state after the cancel."""

    def prepare_order(
        self, order: OrderRequest, market: Market, reference_price: Decimal | None = None
    ) -> OrderRequest:
        """Round ``order`` to the market's increments and check its minimums.

        Runs after the risk checks and before anything is written or sent. The default
        rounds amounts down to ``amount_step`` and prices to ``price_step`` (down for buys,
        up for sells: never a worse price than asked) and refuses orders below
        ``min_amount``/``min_cost`` (a market order is costed at ``reference_price``, the
        price the max-value check used). Connectors backed by a library with its own precision
        rules (ccxt) override it.

        :raises ExchangeRejectedError: with a reason naming the limit, before any request.
        """
        amount = _round_to_step(order.amount, market.amount_step, ROUND_DOWN)
        price = order.price
        if price is not None and market.price_step is not None:
            rounding = "ROUND_DOWN" if order.side == "buy" else "ROUND_UP"
            price = _round_to_step(price, market.price_step, rounding)
        rounded = attrs.evolve(order, amount=amount, price=price)
        return check_market_limits(rounded, market, reference_price)

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release sessions and sockets; the router calls it once at shutdown."""


def _round_to_step(value: Decimal, step: Decimal | None, rounding: str) -> Decimal:
    if step is None or step <= 0:
        return value
    return (value / step).quantize(Decimal(1), rounding=rounding) * step


def check_market_limits(
    order: OrderRequest, market: Market, reference_price: Decimal | None = None
) -> OrderRequest:
    """Refuse an order the market's minimums/maximums would refuse anyway.

    :raises ExchangeRejectedError: naming the limit and the value.
    """
    from bagbot_core.money import normalize

    if order.amount <= 0:
        raise ExchangeRejectedError(
            f"amount rounds to 0 at {market.symbol}'s step {market.amount_step}"
        )
    if market.min_amount is not None and order.amount < market.min_amount:
        raise ExchangeRejectedError(
            f"amount {order.amount} is below {market.symbol}'s minimum {market.min_amount}"
        )
    if market.max_amount is not None and order.amount > market.max_amount:
        raise ExchangeRejectedError(
            f"amount {order.amount} is above {market.symbol}'s maximum {market.max_amount}"
        )
    unit_price = order.price if order.price is not None else reference_price
    if market.min_cost is not None and unit_price is not None:
        cost = order.amount * unit_price
        if cost < market.min_cost:
            raise ExchangeRejectedError(
                f"order value {normalize(cost)} is below {market.symbol}'s minimum "
                f"{market.min_cost}"
            )
    if order.type is OrderType.LIMIT and order.price is not None and order.price <= 0:
        raise ExchangeRejectedError(f"price rounds to 0 at {market.symbol}'s tick")
    price = None if order.price is None else normalize(order.price)
    return attrs.evolve(order, amount=normalize(order.amount), price=price)


# -- reading ConnectorSettings.config ---------------------------------------------------


def config_secret(config: Mapping[str, Any], key: str, env: str) -> Secret | None:
    """Credential ``key`` from the connector config, else from environment variable ``env``.

    A :class:`~bagbot_core.secrets.Secret` or a string is accepted (strings are stripped);
    an absent, empty or blank value counts as not given. The value never appears in errors.
    """
    return _as_secret(config.get(key)) or _as_secret(os.environ.get(env))


def _as_secret(value: object) -> Secret | None:
    if isinstance(value, Secret):
        return value if value else None
    if isinstance(value, str) and value.strip():
        return Secret(value.strip())
    return None


def config_bool(value: object) -> bool:
    """A config flag: strings ``0``/``false``/``no``/``off``/empty are false, else truthiness."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def http_base_url(value: object, what: str, *, allow_query: bool = False) -> str:
    """``value`` as an ``http(s)://host[/path]`` base URL without a trailing slash.

    :param what: names the setting in the error, e.g. ``"binance: api_url"``.
    :param allow_query: drop a query string instead of refusing the URL.
    :raises ConfigurationError: not an http(s) URL with a host (or it has a query).
    """
    parts = urlsplit(str(value))
    if (parts.scheme not in ("http", "https") or not parts.netloc
            or (parts.query and not allow_query)):
        raise ConfigurationError(f"{what} must be an http(s) URL, got {value!r}")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


ConnectorFactory = Callable[[ConnectorSettings], Connector]


@attrs.frozen
class ConnectorSpec:
    """A connector a plugin offers: its name, a factory, and a one-line description.

    The factory is called with :class:`ConnectorSettings` the first time the router needs
    the connector for a given (testnet, config); keep imports of exchange libraries inside
    it so that listing plugins stays cheap.
    """

    name: str
    factory: ConnectorFactory
    description: str = ""
