"""The connector contract: what a plugin hands the router to talk to one exchange.

A plugin returns :class:`ConnectorSpec` objects from ``bagbot_add_connectors``. The spec
is cheap (a name and a factory); the factory runs -- and may import heavy libraries such as
ccxt -- only when an order is actually routed through that connector. The router keeps one
:class:`Connector` per (name, testnet, config) and reuses it for every order.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from bagbot_core.endpoints import check_endpoints
from bagbot_core.errors import ConfigurationError, ExchangeRejectedError
from bagbot_core.money import round_to_step
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote
from bagbot_core.params import NO_PARAMS, ParamSpec
from bagbot_core.secrets import Secret

if TYPE_CHECKING:
    from bagbot_core.connector_config import ConfigKey


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
    #: The live opt-in (``BAGBOT_ALLOW_LIVE``) as the router read it. A connector keeps it in
    #: :attr:`Connector.allow_live` so that it refuses a live host on its own too.
    allow_live: bool = False


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

    # -- where orders go (the live-host rule of bagbot_core.endpoints) --------------------

    #: Host names of the exchange's documented sandbox (lower case, no port). With loopback
    #: addresses, the only hosts a ``testnet=True`` connector may send orders to.
    sandbox_hosts: frozenset[str] = frozenset()
    #: Whether this instance may send to a live host: set it from
    #: :attr:`ConnectorSettings.allow_live`. The router also sets it on a live connector it
    #: approved (``testnet=False`` with the opt-in).
    allow_live: bool = False
    #: The verdict of the last :meth:`check_endpoints`: ``True`` orders go to a live host,
    #: ``False`` to a sandbox or loopback host, ``None`` not checked or not declared. The
    #: router records the order row's ``testnet`` from it.
    live: bool | None = None

    def endpoints(self) -> Sequence[str] | None:
        """Every base URL (``scheme://host[:port][/path]``) where this instance places,
        cancels or reads orders, as configured; ``()`` for an in-process exchange.

        ``None`` (the default) means "not declared": the router then trusts the caller's
        ``testnet`` as it did before and logs a warning, and the conformance suite fails the
        connector. Declare it, with :attr:`sandbox_hosts`, so that a ``testnet=True``
        connector pointed at a production host is refused before it sends anything.
        """
        return None

    def check_endpoints(self, *, testnet: bool, allow_live: bool) -> bool | None:
        """Apply :func:`bagbot_core.endpoints.check_endpoints` to :meth:`endpoints`, record
        the verdict in :attr:`live` and return it (``None``: not declared).

        :raises LiveTradingNotAllowedError: a live host with ``testnet`` or without
            ``allow_live``; nothing was sent.
        """
        urls = self.endpoints()
        if urls is None:
            return None
        self.live = check_endpoints(
            self.name or type(self).__name__, urls, sandbox_hosts=self.sandbox_hosts,
            testnet=testnet, allow_live=allow_live,
        )
        return self.live

    # -- client order ids -------------------------------------------------------------

    def exchange_client_id(self, client_order_id: str) -> str:
        """``client_order_id`` (bagbot's, as in the order row) in the form the exchange takes.

        The router passes this form -- never the row's -- to :meth:`create_order`,
        :meth:`fetch_order` and :meth:`cancel_order`, so reconcile finds by it what was
        placed with it; the row keeps bagbot's id. The default is the identity: bagbot's own
        ids (34 characters, ``[a-z0-9]``) suit most exchanges. Override it when the exchange
        has other rules (Kraken: a UUID or at most 18 characters) with a *deterministic*
        function of the id alone (``uuid.uuid5``, a hash): never random, never stateful, or
        nothing placed can be found again. Ids from callers (idempotency keys) go through it
        too. No inverse is needed: bagbot always starts from the row.
        """
        return client_order_id

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

    #: The keys this connector reads from :attr:`ConnectorSettings.config`, with their kinds
    #: (build with :func:`bagbot_core.connector_config.declare_config`). The router refuses
    #: an unknown key or a bad value with a :class:`ConfigurationError` naming it before the
    #: connector is used. ``None`` (the default): not declared, any key is accepted. A
    #: subclass that reads more keys than its base declares them in its own ``config_keys``;
    #: one that does not gets its base's value checks, and unknown keys pass.
    config_keys: Mapping[str, ConfigKey] | None = None

    #: The pass-through ``params`` this connector accepts (build with
    #: :func:`bagbot_core.params.declare_params`). The router refuses every other key before
    #: the risk checks; the default accepts none, the safe choice for a connector that does
    #: not say. Nothing declared here can change the order itself: see
    #: :data:`bagbot_core.params.FORBIDDEN_PARAMS`.
    allowed_params: Mapping[str, ParamSpec] = NO_PARAMS

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
        amount = round_to_step(order.amount, market.amount_step, ROUND_DOWN)
        price = order.price
        if price is not None and market.price_step is not None:
            rounding = "ROUND_DOWN" if order.side == "buy" else "ROUND_UP"
            price = round_to_step(price, market.price_step, rounding)
        rounded = attrs.evolve(order, amount=amount, price=price)
        return check_market_limits(rounded, market, reference_price)

    #: How much more base than ordered a market buy may fill, as a fraction (``0.1``: 10 %).
    #: Zero, the default: never more than ordered. A connector that sizes market buys in
    #: quote currency (Coinbase's ``quote_size``) declares its slack here; such a buy may
    #: also end ``filled`` below the amount. See :mod:`bagbot_core.exchange_state`.
    market_buy_tolerance: Decimal = Decimal(0)

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release sessions and sockets; the router calls it once at shutdown."""


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


def config_secret(
    config: Mapping[str, Any], key: str, env: str, *, multiline: bool = False
) -> Secret | None:
    """Credential ``key`` from the connector config, else from environment variable ``env``.

    A :class:`~bagbot_core.secrets.Secret` or a string is accepted (strings are stripped);
    an absent, empty or blank value counts as not given. The value never appears in errors.

    :param multiline: the value is a PEM key: line breaks (LF or CR LF) are allowed.
    :raises ConfigurationError: the value holds a control character (a line break unless
        ``multiline``, a tab, NUL, ...), an unpaired surrogate or other unprintable text. Such
        a value would break the request that carries it, after bagbot wrote the order.
    """
    return (_as_secret(config.get(key), f"connector config key {key!r}", multiline)
            or _as_secret(os.environ.get(env), env, multiline))


def _as_secret(value: object, where: str, multiline: bool = False) -> Secret | None:
    if isinstance(value, Secret):
        secret = value
    elif isinstance(value, str):
        secret = Secret(value.strip())
    else:
        return None
    if not secret:
        return None
    text = secret.reveal()
    if multiline:
        text = text.replace("\r\n", "").replace("\n", "")
    if not text.isprintable():
        breaks = "" if multiline else "a line break, "
        raise ConfigurationError(
            f"the credential in {where} contains a control character ({breaks}tab, NUL, ...) "
            "or other unprintable text and cannot be sent to an exchange; fix the value "
            "(it is not shown here)"
        )
    return secret


def config_bool(value: object, name: str = "connector config flag") -> bool:
    """A config flag by bagbot's one boolean rule (:func:`bagbot_core.settings.parse_bool`).

    :raises ConfigurationError: naming ``name`` for a value that is neither true nor false.
    """
    from bagbot_core.settings import parse_bool

    return parse_bool(value, name)


#: Upper bound for any duration setting: a day is already far past any sane timeout.
MAX_CONFIG_SECONDS = 86_400


def config_seconds(config: Mapping[str, Any], key: str, default: float, what: str) -> float:
    """Duration ``key`` (seconds, ``0`` allowed) from the connector config, else ``default``.

    Numbers or ASCII-digit text only: ``True``, NaN, infinities, negatives, Arabic-Indic
    digits and values above a day are a :class:`ConfigurationError` naming ``what: key``.
    """
    from bagbot_core.money import parse_number_text

    value = config.get(key, default)
    number = None
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        number = parse_number_text(str(value))
    elif isinstance(value, str):
        number = parse_number_text(value)
    if number is None or not number.is_finite() or not 0 <= number <= MAX_CONFIG_SECONDS:
        raise ConfigurationError(
            f"{what}: {key} must be a number of seconds from 0 to {MAX_CONFIG_SECONDS} "
            f"written with ASCII digits, got {ascii(value)[:40]}"
        )
    return float(number)


def http_base_url(value: object, what: str, *, allow_query: bool = False) -> str:
    """``value`` as an ``http(s)://host[/path]`` base URL without a trailing slash.

    :param what: names the setting in the error, e.g. ``"binance: api_url"``.
    :param allow_query: drop a query string instead of refusing the URL.
    :raises ConfigurationError: not an http(s) URL with a host, or it has a query, or it
        carries ``user:password@`` (credentials in a URL end up in logs and error texts).
        The message says what is wrong and never quotes the value.
    """
    text = str(value).strip()
    problem = None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        problem = "it cannot be parsed"
    else:
        if not text.isprintable() or " " in text:
            problem = "it contains spaces or control characters"
        elif parts.scheme not in ("http", "https"):
            problem = "it does not start with http:// or https://"
        elif "@" in parts.netloc:
            problem = ("it carries user info (user:password@): give credentials their own "
                       "settings")
        elif not parts.hostname:
            problem = "it has no host"
        elif parts.query and not allow_query:
            problem = "it has a query string"
    if problem is not None:
        raise ConfigurationError(
            f"{what} must be an http(s)://host[:port][/path] URL, but {problem} "
            "(the value is not shown: it may hold a credential)"
        )
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
