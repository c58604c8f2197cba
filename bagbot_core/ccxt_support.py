"""Shared machinery for connectors backed by `ccxt <https://github.com/ccxt/ccxt>`_.

:class:`CcxtConnector` implements the whole :class:`~bagbot_core.connector.Connector`
contract on top of a ``ccxt.async_support`` exchange; a plugin subclasses it and supplies
only what is specific to its exchange (credentials, URLs, client-order-id parameters, how to
read the exchange's raw order JSON). :func:`classify_ccxt_error` maps ccxt's exceptions onto
bagbot's error hierarchy.

Importing this module does **not** import ccxt (it costs ~0.5 s and ~100 MB): ccxt is
imported the first time a connector needs its exchange object, i.e. when an order is routed.

Behaviour every subclass inherits:

* **One exchange object per connector**, created lazily, closed by :meth:`close`.
* **Markets load once** and are cached as :class:`~bagbot_core.orders.Market` (all numbers
  :class:`~decimal.Decimal`, ccxt floats converted through ``str()``);
  ``load_markets(reload=True)`` refreshes.
* **Orders are never retried.** ccxt's own retry option (``maxRetriesOnFailure``) is forced
  to 0; a failed :meth:`~CcxtConnector.create_order` is never resent by the connector.
* **Rate limits.** ccxt's client-side rate limiter stays on (``enableRateLimit``) unless the
  connector config says ``enable_rate_limit: false`` -- meant for local fake servers only.
  When the exchange answers HTTP 429 or 418, the connector reads ``Retry-After`` (seconds or
  an HTTP date; ``rate_limit_backoff`` seconds, default 1, when absent) and refuses to send
  *anything* until that window has passed: calls raise
  :class:`~bagbot_core.errors.RateLimitedError` (with ``retry_after`` = time left) without a
  request. Requests already in flight when the 429 arrives cannot be recalled.
* **Secrets stay secret.** API keys and secrets are held as
  :class:`~bagbot_core.secrets.Secret`; ccxt's debug log goes through a logger that masks
  them (and ``signature=``/auth headers), and every error message is scrubbed the same way.
  The original ccxt exception is not chained (``from None``) because its text can contain
  the signed request URL.

Config keys read by the base (``ConnectorSettings.config``): ``enable_rate_limit`` (bool,
default true), ``timeout`` (seconds per request, default 10), ``quote_max_age`` (seconds a
quote is reused, default 2), ``rate_limit_backoff`` (seconds to pause after a 429/418
without ``Retry-After``, default 1).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TypeVar

import attrs

from bagbot_core.audit import REDACTED, redact_fragments
from bagbot_core.connector import (
    Connector,
    ConnectorSettings,
    check_market_limits,
    config_bool,
    config_seconds,
)
from bagbot_core.connector_config import ConfigKey, declare_config
from bagbot_core.errors import (
    BagbotError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    RateLimitedError,
)
from bagbot_core.money import normalize, parse_number_text
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, Quote, Side
from bagbot_core.params import params_to_send
from bagbot_core.secrets import Secret
from bagbot_core.status import OrderStatus

__all__ = [
    "CCXT_CONFIG_KEYS",
    "CcxtConnector",
    "average_price",
    "classify_ccxt_error",
    "decimal_or_none",
    "exchange_message",
    "parse_retry_after",
    "plain",
    "positive_or_none",
    "scrub_secrets",
]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: Average prices are kept to this many decimal places (what bagbot stores).
_AVG_QUANTUM = Decimal(1).scaleb(-18)


# ---------------------------------------------------------------------------------------
# Scrubbing
# ---------------------------------------------------------------------------------------


def scrub_secrets(text: str, secrets: Iterable[Secret | str] = ()) -> str:
    """Mask credentials in ``text``: the given secrets, then whatever
    :func:`bagbot_core.audit.redact_fragments` recognises (``signature=``-style query/body
    parameters, authentication headers, Bearer tokens, PEM keys).

    Used on every ccxt error message and log line before bagbot lets it out.
    """
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, REDACTED)
    return redact_fragments(text)


class _ScrubbingLogger(logging.LoggerAdapter[logging.Logger]):
    """What ccxt gets as ``exchange.logger``: formats each record and masks secrets.

    ccxt logs every request at DEBUG with its headers (API key) and signed body; this keeps
    that useful line without the credentials. ``exc_info`` is dropped for the same reason.
    """

    def __init__(self, logger: logging.Logger, secrets: Sequence[Secret]) -> None:
        super().__init__(logger, {})
        self._secrets = tuple(secrets)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(part) for part in (msg, *args))
        self.logger.log(level, "%s", scrub_secrets(text, self._secrets))


# ---------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------


def decimal_or_none(value: object) -> Decimal | None:
    """A ccxt number (float, int, numeric string) as Decimal via ``str()``; ``None`` if absent.

    ``0.1`` becomes ``Decimal("0.1")``, never the binary approximation.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return normalize(value) if value.is_finite() else None
    # ASCII digits only: an answer reading "0\u06601" must not become 1.
    number = parse_number_text(str(value))
    if number is None:
        return None
    return normalize(number) if number.is_finite() else None


def positive_or_none(value: object) -> Decimal | None:
    """:func:`decimal_or_none`, and ``None`` for zero or less too (an absent price/amount)."""
    number = decimal_or_none(value)
    return number if number is not None and number > 0 else None


def plain(value: Decimal) -> str:
    """Decimal as a plain string (never scientific notation) for ccxt and the wire."""
    return format(normalize(value), "f")


def average_price(cost: Decimal, qty: Decimal) -> Decimal:
    """``cost / qty`` kept to 18 decimal places (what bagbot stores)."""
    return normalize((cost / qty).quantize(_AVG_QUANTUM, rounding=ROUND_HALF_EVEN))


# ---------------------------------------------------------------------------------------
# Retry-After and error classification
# ---------------------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), case-insensitive."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_MESSAGE_KEYS = ("msg", "message", "error_message", "errorMessage", "error", "reason", "detail")


def exchange_message(exc: BaseException, exchange_id: str | None = None) -> str:
    """The exchange's own words from a ccxt exception text.

    ccxt texts look like ``binance {"code":-2010,"msg":"..."}`` or ``binance <message>``;
    the JSON's message (plus its code) is preferred, else the text without the id prefix.
    """
    text = str(exc).strip()
    if exchange_id and text.startswith(exchange_id + " "):
        text = text[len(exchange_id) + 1 :]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            payload = json.loads(text[start : end + 1])
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if isinstance(payload.get("error"), dict):
                payload = {**payload, **payload["error"]}
            message = next(
                (payload[k] for k in _MESSAGE_KEYS if isinstance(payload.get(k), str)), None
            )
            if message:
                code = payload.get("code")
                return f"{message} (code {code})" if code not in (None, "") else message
    return text or type(exc).__name__


def classify_ccxt_error(
    exc: BaseException,
    *,
    exchange: Any = None,
    name: str | None = None,
    retry_after: float | None = None,
    secrets: Iterable[Secret | str] = (),
) -> BagbotError:
    """Map a ccxt exception onto bagbot's hierarchy (returned, not raised).

    Specific classes are tested before their bases -- in ccxt ``OrderNotFound`` is an
    ``InvalidOrder`` and ``RateLimitExceeded``/``DDoSProtection``/``RequestTimeout`` are
    ``NetworkError`` subclasses:

    * ``OrderNotFound`` -> :class:`ExchangeOrderNotFoundError`;
    * ``RateLimitExceeded``, ``DDoSProtection`` -> :class:`RateLimitedError`, ``retry_after``
      from the argument or else ``exchange.last_response_headers``;
    * ``InvalidNonce`` (request timestamp/nonce refused) and the definite refusals
      ``InvalidOrder`` (``InsufficientFunds``, ``OrderImmediatelyFillable``, ...),
      ``InsufficientFunds``, ``BadRequest`` (``BadSymbol``), ``AuthenticationError``
      (``PermissionDenied``, ``AccountSuspended``), ``OperationRejected``, ``NotSupported``,
      ``ArgumentsRequired`` -> :class:`ExchangeRejectedError` with the exchange's message;
    * ``NetworkError`` (``RequestTimeout``, ``ExchangeNotAvailable``), ``BadResponse``, any
      other ccxt error and anything unexpected -> :class:`ExchangeUnavailableError`: for an
      order placement that means the outcome is unknown.

    Messages are scrubbed with :func:`scrub_secrets`. A :class:`BagbotError` is returned as is.
    """
    if isinstance(exc, BagbotError):
        return exc
    exchange_id = getattr(exchange, "id", None) or name
    label = name or exchange_id or "exchange"
    kind = type(exc).__name__
    message = scrub_secrets(exchange_message(exc, exchange_id), secrets)
    try:
        from ccxt.base import errors as ce
    except ImportError:  # pragma: no cover - ccxt is a dependency of every ccxt connector
        return ExchangeUnavailableError(f"{label} failed ({kind}): {message}")

    if isinstance(exc, ce.OrderNotFound):
        return ExchangeOrderNotFoundError(f"{label}: order not found: {message}")
    if isinstance(exc, ce.RateLimitExceeded | ce.DDoSProtection):
        if retry_after is None and exchange is not None:
            retry_after = parse_retry_after(getattr(exchange, "last_response_headers", None))
        hint = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        return RateLimitedError(f"{label} rate limit ({kind}){hint}: {message}", retry_after)
    if isinstance(exc, ce.InvalidNonce):  # a NetworkError in ccxt, but a definite refusal
        return ExchangeRejectedError(f"{label} rejected the request ({kind}): {message}")
    definite = (
        ce.InvalidOrder,
        ce.InsufficientFunds,
        ce.BadRequest,
        ce.AuthenticationError,
        ce.OperationRejected,
        ce.NotSupported,
        ce.ArgumentsRequired,
        ce.InvalidAddress,
    )
    if isinstance(exc, definite):
        return ExchangeRejectedError(f"{label} rejected the request ({kind}): {message}")
    if isinstance(exc, ce.BaseError):
        return ExchangeUnavailableError(f"{label} unavailable ({kind}): {message}")
    return ExchangeUnavailableError(f"{label}: unexpected {kind}: {message}")


# ---------------------------------------------------------------------------------------
# The connector base
# ---------------------------------------------------------------------------------------

_UNIFIED_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


#: The config keys every ccxt connector reads; a subclass adds its own:
#: ``config_keys = declare_config(*CCXT_CONFIG_KEYS.values(), ConfigKey(...), ...)``.
CCXT_CONFIG_KEYS: Mapping[str, ConfigKey] = declare_config(
    ConfigKey("enable_rate_limit", "bool",
              "ccxt's client-side rate limiter (default true; false for local fakes only)"),
    ConfigKey("timeout", "seconds", "seconds per request (default 10)"),
    ConfigKey("quote_max_age", "seconds", "seconds a bid/ask is reused (default 2)"),
    ConfigKey("rate_limit_backoff", "seconds",
              "pause after a 429/418 without Retry-After (default 1)"),
)


class CcxtConnector(Connector):
    """A :class:`Connector` driving one ``ccxt.async_support`` exchange object.

    Subclasses set :attr:`exchange_id` and usually override :meth:`exchange_config`,
    :meth:`configure_exchange`, :meth:`secrets`, :meth:`create_params`,
    :meth:`lookup_params` and :meth:`order_from_ccxt`. Nothing exchange-specific lives here.
    """

    #: ccxt's exchange id (``ccxt.async_support.<exchange_id>``).
    exchange_id: str = ""
    config_keys: Mapping[str, ConfigKey] | None = CCXT_CONFIG_KEYS

    def __init__(self, settings: ConnectorSettings) -> None:
        config = settings.config
        self.testnet = settings.testnet
        label = self.name or self.exchange_id or type(self).__name__
        self.enable_rate_limit = config_bool(config.get("enable_rate_limit", True),
                                             f"{label}: enable_rate_limit")
        self.timeout = config_seconds(config, "timeout", 10.0, label)
        self.quote_max_age = config_seconds(config, "quote_max_age", 2.0, label)
        self.rate_limit_backoff = config_seconds(config, "rate_limit_backoff", 1.0, label)
        self._exchange: Any = None
        self._markets: dict[str, Market] | None = None
        self._markets_lock = asyncio.Lock()
        self._quotes: dict[str, Quote] = {}
        #: symbol -> the one quote request in flight (concurrent orders share it).
        self._quote_fetches: dict[str, asyncio.Future[Quote]] = {}
        self._blocked_until = 0.0

    def __repr__(self) -> str:
        mode = "testnet" if self.testnet else "live"
        return f"<{type(self).__name__} {self.name or self.exchange_id!r} {mode}>"

    # -- subclass hooks ----------------------------------------------------------------

    def secrets(self) -> Sequence[Secret]:
        """Credentials to mask in logs and errors (and to hand ccxt in the config)."""
        return ()

    def exchange_config(self) -> dict[str, Any]:
        """The ccxt constructor config; subclasses extend it (``apiKey``, ``options``...)."""
        return {
            "enableRateLimit": self.enable_rate_limit,
            "timeout": int(self.timeout * 1000),
            "verbose": False,
            "options": {"maxRetriesOnFailure": 0},
        }

    def configure_exchange(self, exchange: Any) -> None:
        """Adjust the fresh exchange object (sandbox mode, URLs) before its first request."""

    def create_params(self, order: OrderRequest, client_order_id: str) -> dict[str, Any]:
        """ccxt params that tag a new order with ``client_order_id``."""
        return {"clientOrderId": client_order_id}

    def lookup_params(self, client_order_id: str) -> dict[str, Any]:
        """ccxt params that find an order by client order id (fetch and cancel)."""
        return {"clientOrderId": client_order_id}

    def to_ccxt_number(self, value: Decimal) -> Any:
        """How amounts and prices are handed to ccxt: a plain decimal string by default."""
        return plain(value)

    def market_from_ccxt(self, market: Mapping[str, Any]) -> Market:
        """A ccxt market dict as a :class:`Market` (steps from ``precision``, mins from
        ``limits``), honouring the exchange's ``precisionMode``."""
        from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

        mode = getattr(self._exchange, "precisionMode", TICK_SIZE)
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}

        def step(value: object) -> Decimal | None:
            number = decimal_or_none(value)
            if number is None:
                return None
            if mode == DECIMAL_PLACES:
                return normalize(Decimal(1).scaleb(-int(number)))
            if mode == TICK_SIZE:
                return number
            return None  # significant digits: no fixed step

        return Market(
            symbol=str(market["symbol"]),
            base=str(market.get("base")),
            quote=str(market.get("quote")),
            active=market.get("active") is not False,
            amount_step=step(precision.get("amount")),
            price_step=step(precision.get("price")),
            min_amount=decimal_or_none((limits.get("amount") or {}).get("min")),
            max_amount=decimal_or_none((limits.get("amount") or {}).get("max")),
            min_cost=decimal_or_none((limits.get("cost") or {}).get("min")),
        )

    def order_from_ccxt(
        self, order: Mapping[str, Any], *, symbol: str, client_order_id: str | None
    ) -> ExchangeOrder:
        """A ccxt unified order as an :class:`ExchangeOrder` (floats through ``str()``).

        Subclasses should prefer the exchange's raw JSON (``order["info"]``).

        :raises ValueError: when the answer does not identify an order.
        """
        if not isinstance(order, Mapping) or order.get("id") in (None, ""):
            raise ValueError("the answer does not identify an order")
        raw_status = order.get("status")
        filled = decimal_or_none(order.get("filled")) or Decimal(0)
        status = _UNIFIED_STATUS.get(str(raw_status), OrderStatus.OPEN)
        if status is OrderStatus.OPEN and filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        average = decimal_or_none(order.get("average"))
        cost = decimal_or_none(order.get("cost"))
        if average is None and cost and filled:
            average = average_price(cost, filled)
        return ExchangeOrder(
            external_id=str(order["id"]),
            client_order_id=order.get("clientOrderId") or client_order_id,
            status=status,
            symbol=symbol,
            filled_qty=filled,
            avg_price=average if filled else None,
            amount=decimal_or_none(order.get("amount")),
            price=decimal_or_none(order.get("price")),
            raw_status=None if raw_status is None else str(raw_status),
        )

    async def fetch_raw_quote(self, exchange: Any, symbol: str) -> Quote:
        """Best bid/ask via ccxt ``fetch_ticker``; subclasses may use a lighter endpoint."""
        ticker = await exchange.fetch_ticker(symbol)
        return Quote(
            symbol=symbol,
            bid=decimal_or_none(ticker.get("bid")),
            ask=decimal_or_none(ticker.get("ask")),
            taken_at=time.monotonic(),
        )

    def classify_error(self, exc: BaseException) -> BagbotError:
        """Map an exception from ccxt; subclasses may special-case exchange codes first."""
        return classify_ccxt_error(
            exc, exchange=self._exchange, name=self.name or self.exchange_id,
            secrets=self.secrets(),
        )

    # -- the exchange object -----------------------------------------------------------

    @property
    def exchange(self) -> Any:
        """The ccxt exchange object, created (and ccxt imported) on first access.

        The connector's declared endpoints are checked first (:meth:`Connector.
        check_endpoints`), however it was built: a ``testnet`` connector aimed at a live host,
        or a live one without ``allow_live``, raises
        :class:`~bagbot_core.errors.LiveTradingNotAllowedError` and no object is built.
        """
        if self._exchange is None:
            self.check_endpoints(testnet=self.testnet, allow_live=self.allow_live)
            import ccxt.async_support as ccxt_async

            cls = getattr(ccxt_async, self.exchange_id)
            config = self.exchange_config()
            config["logger"] = _ScrubbingLogger(
                logging.getLogger(f"bagbot_core.ccxt.{self.exchange_id}"), self.secrets()
            )
            exchange = cls(config)
            self._watch_rate_limits(exchange)
            self.configure_exchange(exchange)
            self._exchange = exchange
        return self._exchange

    def _watch_rate_limits(self, exchange: Any) -> None:
        """Start the Retry-After window the moment ccxt sees a 429/418 answer."""
        original = exchange.handle_errors

        def handle_errors(code: int, reason: str, url: str, method: str,
                          headers: Any, *rest: Any) -> Any:
            if code in (418, 429):
                self._pause(parse_retry_after(headers))
            return original(code, reason, url, method, headers, *rest)

        exchange.handle_errors = handle_errors

    def _pause(self, retry_after: float | None) -> float:
        seconds = self.rate_limit_backoff if retry_after is None else retry_after
        self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
        return seconds

    def _check_not_paused(self) -> None:
        left = self._blocked_until - time.monotonic()
        if left > 0:
            raise RateLimitedError(
                f"{self.name or self.exchange_id} asked us to slow down: not sending for "
                f"another {left:.2f}s",
                retry_after=left,
            )

    async def call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """Run one ccxt call, ``await connector.call(lambda ex: ex.fetch_balance())``.

        Every request a subclass sends should go through here: it honours the Retry-After
        pause (raising :class:`RateLimitedError` without a request), and whatever the call
        raises comes out as a bagbot error from :meth:`classify_error`, scrubbed and not
        chained. Nothing is retried.
        """
        self._check_not_paused()
        exchange = self.exchange
        try:
            return await call(exchange)
        except Exception as exc:
            error = self.classify_error(exc)
            if isinstance(error, RateLimitedError):
                error.retry_after = self._pause(error.retry_after)
            _log.debug("%s call failed: %s", self.exchange_id, error)
            raise error from None

    # -- Connector API -----------------------------------------------------------------

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, Market]:
        """Markets by unified symbol, loaded once; ``reload=True`` asks the exchange again.

        :raises ExchangeUnavailableError: when the exchange cannot be reached.
        """
        if self._markets is not None and not reload:
            return self._markets
        async with self._markets_lock:
            if self._markets is not None and not reload:
                return self._markets
            raw = await self._call(lambda ex: ex.load_markets(reload))
            self._markets = {
                str(symbol): self.market_from_ccxt(market) for symbol, market in raw.items()
            }
            return self._markets

    async def fetch_quote(self, symbol: str) -> Quote:
        """Best bid/ask, reused for ``quote_max_age`` seconds per symbol (default 2 s) so
        routing does not cost a round trip per order.

        Staleness bound: a quote is at most ``quote_max_age`` seconds old when returned (its
        age is measured from when the answer arrived). When it has expired, concurrent callers
        share one request instead of each sending their own: at most one quote request per
        symbol per ``quote_max_age``, however many orders are in flight.
        """
        cached = self._quotes.get(symbol)
        if cached is not None and time.monotonic() - cached.taken_at <= self.quote_max_age:
            return cached
        pending = self._quote_fetches.get(symbol)
        if pending is None:
            pending = asyncio.ensure_future(self._refresh_quote(symbol))
            self._quote_fetches[symbol] = pending
            pending.add_done_callback(lambda done: self._quote_done(symbol, done))
        # Shielded: one caller giving up must not cancel the request the others wait for.
        return await asyncio.shield(pending)

    async def _refresh_quote(self, symbol: str) -> Quote:
        await self.load_markets()
        quote = await self._call(lambda ex: self.fetch_raw_quote(ex, symbol))
        self._quotes[symbol] = quote
        return quote

    def _quote_done(self, symbol: str, done: asyncio.Future[Quote]) -> None:
        if self._quote_fetches.get(symbol) is done:
            del self._quote_fetches[symbol]
        if not done.cancelled():
            done.exception()  # retrieved here: no "never retrieved" warning if all waiters left

    def prepare_order(
        self, order: OrderRequest, market: Market, reference_price: Decimal | None = None
    ) -> OrderRequest:
        """Round with ccxt's own precision rules, then check the market's limits.

        The amount goes through ``amount_to_precision`` (truncates). The price goes through
        ``price_to_precision`` (rounds to nearest); if that made it worse than asked (a buy
        higher, a sell lower) it moves one ``price_step`` back, so a limit never gets worse.
        Before the markets are loaded into ccxt it falls back to the core rounding.

        :raises ExchangeRejectedError: for an amount/price that rounds to nothing or
            breaks a minimum, before any request.
        """
        exchange = self._exchange
        if exchange is None or not exchange.markets or order.symbol not in exchange.markets:
            return super().prepare_order(order, market, reference_price)
        try:
            amount = Decimal(exchange.amount_to_precision(order.symbol, plain(order.amount)))
            price = order.price
            if price is not None:
                rounded = Decimal(exchange.price_to_precision(order.symbol, plain(price)))
                step = market.price_step
                if step and order.side is Side.BUY and rounded > price:
                    rounded -= step
                elif step and order.side is Side.SELL and rounded < price:
                    rounded += step
                price = rounded
        except Exception as exc:
            raise self.classify_error(exc) from None
        return check_market_limits(
            attrs.evolve(order, amount=amount, price=price), market, reference_price
        )

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        """Send ``order`` once, tagged with ``client_order_id``.

        Never retried. :class:`ExchangeUnavailableError` (timeout, dropped connection, 5xx,
        unreadable answer) means the order may or may not exist.
        """
        # Declared params only, re-checked here for direct callers; the connector's own keys
        # (the client order id) come last and win.
        params = {
            **params_to_send(order, self.allowed_params, connector=self.name or self.exchange_id),
            **self.create_params(order, client_order_id),
        }
        price = None if order.price is None else self.to_ccxt_number(order.price)
        amount = self.to_ccxt_number(order.amount)
        raw = await self._call(
            lambda ex: ex.create_order(
                order.symbol, order.type.value, order.side.value, amount, price, params
            )
        )
        return self._parse(raw, order.symbol, client_order_id)

    async def fetch_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """One order, by exchange id when known, else by client order id."""
        params = {} if external_id else self.lookup_params(client_order_id)
        raw = await self._call(lambda ex: ex.fetch_order(external_id, symbol, params))
        return self._parse(raw, symbol, client_order_id)

    async def cancel_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """Cancel one order (by exchange id when known, else client order id)."""
        params = {} if external_id else self.lookup_params(client_order_id)
        raw = await self._call(lambda ex: ex.cancel_order(external_id, symbol, params))
        return self._parse(raw, symbol, client_order_id)

    def parse(self, raw: Any, symbol: str, client_order_id: str) -> ExchangeOrder:
        """``raw`` (a ccxt order answer) through :meth:`order_from_ccxt`.

        Whatever the parser raises becomes :class:`ExchangeUnavailableError` ("unreadable
        order answer", secrets scrubbed): the order may exist, so it is never a rejection.
        """
        try:
            return self.order_from_ccxt(raw, symbol=symbol, client_order_id=client_order_id)
        except Exception as exc:
            raise ExchangeUnavailableError(
                f"{self.name or self.exchange_id}: unreadable order answer "
                f"({type(exc).__name__}: {scrub_secrets(str(exc), self.secrets())})"
            ) from None

    # ``_call``/``_parse`` are what subclasses used before ``call``/``parse`` were declared.
    # The base's own methods go through them, so overriding either spelling is honoured.

    async def _call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """Alias of :meth:`call`, kept for subclasses written against it."""
        return await self.call(call)

    def _parse(self, raw: Any, symbol: str, client_order_id: str) -> ExchangeOrder:
        """Alias of :meth:`parse`, kept for subclasses written against it."""
        return self.parse(raw, symbol, client_order_id)

    async def close(self) -> None:
        """Close the exchange object's HTTP session and drop the caches built on it.

        A later call builds a fresh exchange object (and loads markets again).
        """
        exchange, self._exchange = self._exchange, None
        self._markets = None
        self._quotes.clear()
        for pending in self._quote_fetches.values():
            pending.cancel()
        self._quote_fetches.clear()
        if exchange is not None:
            await exchange.close()

