"""The Coinbase Advanced Trade connector (``ccxt.async_support.coinbase``).

Importing this module does not import ccxt; the exchange object is built on first use.

Configuration (``ConnectorSettings.config``, environment variable as fallback):

===================== ================================ ========================================
key                   environment                      meaning
===================== ================================ ========================================
``api_key``           ``BAGBOT_COINBASE_API_KEY``      CDP API key *name*,
                                                       ``organizations/{org}/apiKeys/{id}``
``api_secret``        ``BAGBOT_COINBASE_API_SECRET``   its ECDSA (P-256) private key, PEM; a
                                                       value with literal ``\\n`` is unescaped
``api_url``           ``BAGBOT_COINBASE_API_URL``      one base URL for *every* request (market
                                                       data and orders), e.g. a fake server;
                                                       requests are then always signed
``market_data_url``                                    sandbox mode only: where public product
                                                       data comes from (default production's
                                                       read-only ``/market/`` endpoints)
``fetch_after_create``                                 fetch the order right after creating it
                                                       (default true; see below)
``client_id_search_pages``                             pages of 100 orders searched to find an
                                                       order by client order id (default 10)
``enable_rate_limit``, ``timeout``,                    as for every ccxt connector
``quote_max_age``, ``rate_limit_backoff``              (:mod:`bagbot_core.ccxt_support`)
===================== ================================ ========================================

Where requests go -- three modes, and a guard that refuses anything else before it is sent:

* **sandbox** (``testnet=True``, no ``api_url``; the default). Order and account requests go
  to Coinbase's static Advanced Trade sandbox, ``https://api-sandbox.coinbase.com``, *unsigned*
  (the sandbox takes no authentication; credentials are optional and never sent there). The
  sandbox has no market data, so products and best bid/ask come from production's public,
  unauthenticated ``GET /api/v3/brokerage/market/...`` endpoints (``market_data_url``). The
  guard allows exactly those two routes: no request can reach a private production endpoint,
  and no credential can leave the process. **The sandbox does not simulate trading:** every
  answer is pre-defined, orders never fill, ``client_order_id`` is not de-duplicated and an
  order created there cannot be found again. It checks request shapes, nothing more.
* **live** (``testnet=False``, only through the router's live opt-in). Everything goes to
  ``https://api.coinbase.com/api/v3/brokerage/``, signed.
* **custom** (``api_url`` set, either mode). Everything goes to ``api_url``, signed: the fake
  server of :mod:`bagbot_coinbase.testing`, or a proxy. Unless its host is a loopback address
  (or the sandbox), that is live trading (:mod:`bagbot_core.endpoints`): it needs
  ``testnet=False`` and the live opt-in, and with ``testnet=True`` the connector is refused
  before anything is built or sent.

Credentials: CDP API keys with the **ECDSA** signature algorithm -- ccxt signs an ES256 JWT
per request (``kid`` = key name, ``uri`` = method, host and path, valid 120 s). Ed25519 CDP
keys and legacy HMAC API keys are refused at construction (ccxt would silently switch to
another signing scheme for them); the key is parsed once to fail early, and held as a
:class:`~bagbot_core.secrets.Secret`.

Markets: one ``GET /api/v3/brokerage/market/products?product_type=SPOT``. ccxt's own
``load_markets`` would also call ``/v2/currencies``, ``/v2/currencies/crypto``,
``/v2/exchange-rates``, ``transaction_summary`` and the futures product list.

Orders: the router's client order id is sent as Coinbase's ``client_order_id`` (ccxt would
send its own ``ccxt-<uuid>``). Coinbase de-duplicates on it: creating again with the same id
returns the existing order and places nothing, so :meth:`CoinbaseConnector.create_order` is
idempotent per client order id. A market buy is sent as ``quote_size`` = amount x the ask
the router's max-value check used (``OrderRequest.reference_price``; the current ask when
called without the router), as ccxt does and Coinbase documents for market buys; the filled
base amount is what the exchange reports, which may differ slightly if the price moved
(``market_buy_tolerance``: up to 10 % more than the amount; more does not add up).
Coinbase's create answer carries no status, amount or price: with ``fetch_after_create``
(default) the connector reads the order once (``GET /orders/historical/{id}``); if that read
fails, or is off, the order is reported ``open`` with nothing filled -- accepted and live --
and sync settles it.
No fill is ever invented.

Finding an order by client order id (reconcile after a timeout): Advanced Trade has no lookup
by client order id, so the connector pages through ``GET /orders/historical/batch`` for the
symbol's product (newest first) up to ``client_id_search_pages`` pages. Not found in a
complete list: :class:`~bagbot_core.errors.ExchangeOrderNotFoundError`; list longer than the
search: :class:`~bagbot_core.errors.ExchangeUnavailableError` (never a false "not found").

Errors: a create answered ``success: false`` is a definite refusal whatever its reason
(``INSUFFICIENT_FUND`` included); HTTP 400 ``INVALID_ARGUMENT`` is a refusal with Coinbase's
message; 401 is a refusal; a 404 ``NOT_FOUND`` on an order lookup is
:class:`~bagbot_core.errors.ExchangeOrderNotFoundError` (ccxt's own match string for it never
matches); 429 is a rate limit (honouring ``Retry-After``); timeouts, dropped connections and
5xx are "unavailable", i.e. ``unknown`` for a placement.

Statuses (``filled_size`` and ``average_filled_price`` read as Decimal from the raw JSON):
``PENDING``, ``QUEUED``, ``OPEN``, ``CANCEL_QUEUED``, ``EDIT_QUEUED`` -> ``open`` (or
``partially_filled`` once something filled); ``FILLED`` -> ``filled``; ``CANCELLED`` ->
``canceled``; ``EXPIRED`` -> ``expired``; ``FAILED`` -> ``rejected`` (``canceled`` if it had
filled something); ``UNKNOWN_ORDER_STATUS`` (or anything new) is unreadable: the row is left
unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

from bagbot_core.plugin import (
    CCXT_CONFIG_KEYS,
    BagbotError,
    Capabilities,
    CcxtConnector,
    ConfigKey,
    ConfigurationError,
    ConnectorSettings,
    ExchangeOrder,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    OrderRequest,
    OrderStatus,
    OrderType,
    ParamKind,
    ParamSpec,
    Quote,
    Secret,
    Side,
    average_price,
    config_bool,
    config_secret,
    decimal_or_none,
    declare_config,
    declare_params,
    http_base_url,
    normalize,
    params_to_send,
    plain,
    positive_or_none,
)

__all__ = [
    "PARAMS",
    "PRODUCTION_URL",
    "SANDBOX_URL",
    "CoinbaseConnector",
    "Route",
    "map_status",
]

_log = logging.getLogger(__name__)

ENV_API_KEY = "BAGBOT_COINBASE_API_KEY"
ENV_API_SECRET = "BAGBOT_COINBASE_API_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_API_URL = "BAGBOT_COINBASE_API_URL"

PRODUCTION_URL = "https://api.coinbase.com"
SANDBOX_URL = "https://api-sandbox.coinbase.com"
BROKERAGE_PATH = "/api/v3/brokerage/"
MARKET_DATA_PATH = "/api/v3/brokerage/market/"

_KEY_NAME = re.compile(r"^organizations/[^/\s]+/apiKeys/[^/\s]+$")

#: The pass-through params a Coinbase order takes (``order_payload["params"]``); anything
#: else is refused before sending. ccxt turns ``postOnly`` into the limit configuration's
#: ``post_only`` and leaves base size, limit price and product as bagbot set them.
PARAMS = declare_params(
    ParamSpec("postOnly", kind=ParamKind.BOOL, order_types={OrderType.LIMIT},
              description="true: refuse the limit order instead of letting it take "
                          "liquidity on arrival"),
)

Mode = Literal["sandbox", "live", "custom"]

#: Coinbase order status -> bagbot status (before the partial-fill adjustments).
STATUS_MAP: Mapping[str, OrderStatus] = {
    "PENDING": OrderStatus.OPEN,
    "QUEUED": OrderStatus.OPEN,
    "OPEN": OrderStatus.OPEN,
    "CANCEL_QUEUED": OrderStatus.OPEN,
    "EDIT_QUEUED": OrderStatus.OPEN,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELED,
    "EXPIRED": OrderStatus.EXPIRED,
    "FAILED": OrderStatus.REJECTED,
}


def map_status(raw_status: str | None, filled: Decimal) -> OrderStatus:
    """Coinbase's order status as bagbot's.

    Live statuses become ``partially_filled`` once something filled (a partial fill never
    goes back to ``open``); ``FAILED`` after a partial fill is ``canceled`` (the state
    machine forbids ``partially_filled -> rejected``, and the fill is real).

    :raises ValueError: for ``UNKNOWN_ORDER_STATUS``, a missing or an unheard-of status.
    """
    status = STATUS_MAP.get((raw_status or "").upper())
    if status is None:
        raise ValueError(f"unreadable Coinbase order status {raw_status!r}")
    if status is OrderStatus.OPEN and filled > 0:
        return OrderStatus.PARTIALLY_FILLED
    if status is OrderStatus.REJECTED and filled > 0:
        return OrderStatus.CANCELED
    return status


@attrs.frozen
class Route:
    """Requests the connector may send: ``origin`` + a path under ``prefix``.

    ``signed=False`` routes refuse any request carrying credentials; ``methods`` limits the
    HTTP methods (empty: any).
    """

    origin: str
    prefix: str
    signed: bool
    methods: frozenset[str] = frozenset()

    def allows(self, url: str, method: str, has_auth: bool) -> bool:
        parts = urlsplit(url)
        return (
            f"{parts.scheme}://{parts.netloc}" == self.origin
            and parts.path.startswith(self.prefix)
            and (not self.methods or method.upper() in self.methods)
            and (self.signed or not has_auth)
        )


def _check_cdp_key(name: Secret, secret: Secret) -> Secret:
    """Refuse anything but a CDP key name + ECDSA P-256 PEM; return the usable PEM.

    Messages never quote the values.
    """
    if not _KEY_NAME.match(name.reveal()):
        raise ConfigurationError(
            "coinbase: api_key must be a CDP API key name "
            "('organizations/{org_id}/apiKeys/{key_id}'); legacy API keys are not supported"
        )
    pem = secret.reveal()
    if "\\n" in pem and "\n" not in pem:  # a PEM pasted into one environment line
        pem = pem.replace("\\n", "\n")
    if not pem.startswith("-----BEGIN"):
        raise ConfigurationError(
            "coinbase: api_secret must be the CDP key's ECDSA private key in PEM form "
            "('-----BEGIN EC PRIVATE KEY-----...'); Ed25519 and HMAC secrets are not supported"
        )
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            "coinbase: api_secret is not a readable unencrypted PEM private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigurationError(
            "coinbase: api_secret must be an ECDSA P-256 key (CDP 'ECDSA' signature "
            "algorithm); Ed25519 keys do not work with the Advanced Trade API through ccxt"
        )
    return Secret(pem + ("" if pem.endswith("\n") else "\n"))


class CoinbaseConnector(CcxtConnector):
    """Coinbase Advanced Trade through ``ccxt.async_support.coinbase``; see the module docs."""

    name = "coinbase"
    exchange_id = "coinbase"
    allowed_params = PARAMS
    capabilities = Capabilities(
        market_orders=True,
        limit_orders=True,
        cancel=True,
        fetch_by_client_order_id=True,
        # The create answer is only {order_id, client_order_id}: fills come from a fetch.
        fills_in_create_response=False,
    )
    #: Market buys are sized in quote currency: the base bought follows the price.
    market_buy_tolerance = Decimal("0.1")

    config_keys = declare_config(
        ConfigKey("api_key", "secret", "CDP API key name", ENV_API_KEY),
        ConfigKey("api_secret", "secret", "its ECDSA private key (PEM)", ENV_API_SECRET,
                  multiline=True),
        ConfigKey("api_url", "url", "one base URL for every request", ENV_API_URL),
        ConfigKey("market_data_url", "url", "sandbox mode: where public product data comes from"),
        ConfigKey("fetch_after_create", "bool", "fetch the order right after creating it"),
        ConfigKey("client_id_search_pages", "int",
                  "pages of 100 orders searched to find an order by client order id"),
        *CCXT_CONFIG_KEYS.values(),
    )

    #: Where sandbox orders go; every other host but a loopback address is live.
    sandbox_hosts = frozenset({urlsplit(SANDBOX_URL).netloc})

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        self.allow_live = settings.allow_live
        config = settings.config
        url = config.get("api_url") or os.environ.get(ENV_API_URL) or None
        self.api_url: str | None = None if url is None else http_base_url(url, "coinbase: api_url")
        self.mode: Mode = (
            "custom" if self.api_url is not None else "sandbox" if self.testnet else "live"
        )
        market_url = config.get("market_data_url") or PRODUCTION_URL
        self.market_data_url = http_base_url(market_url, "coinbase: market_data_url")
        self.fetch_after_create = config_bool(config.get("fetch_after_create", True))
        self.client_id_search_pages = max(1, int(config.get("client_id_search_pages", 10)))

        api_key = config_secret(config, "api_key", ENV_API_KEY)
        api_secret = config_secret(config, "api_secret", ENV_API_SECRET, multiline=True)
        self.api_key: Secret | None = None
        self.api_secret: Secret | None = None
        if api_key is None or api_secret is None:
            if self.mode != "sandbox":
                missing = " and ".join(
                    n for n, v in (("api_key", api_key), ("api_secret", api_secret)) if v is None
                )
                raise ConfigurationError(
                    f"coinbase: {missing} missing: set them in the connector config or in "
                    f"{ENV_API_KEY} / {ENV_API_SECRET} (a CDP key name and its ECDSA key)"
                )
        else:
            self.api_key = api_key
            self.api_secret = _check_cdp_key(api_key, api_secret)
        self._raw_secrets = tuple(s for s in (api_key, api_secret) if s is not None)

    # -- where requests go -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Where order requests go in this mode."""
        if self.api_url is not None:
            return self.api_url
        return SANDBOX_URL if self.mode == "sandbox" else PRODUCTION_URL

    def endpoints(self) -> Sequence[str]:
        """Orders are placed, read and canceled at :attr:`base_url` only. (Sandbox mode also
        reads public market data from ``market_data_url``: unsigned GETs, never orders.)"""
        return (self.base_url,)

    @property
    def signs_requests(self) -> bool:
        """Whether private requests carry a JWT (never in sandbox mode)."""
        return self.mode != "sandbox"

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every request must match one of these, or it is refused before it is sent."""
        if self.mode == "sandbox":
            return (
                Route(SANDBOX_URL, BROKERAGE_PATH, signed=False),
                Route(self.market_data_url, MARKET_DATA_PATH, signed=False,
                      methods=frozenset({"GET"})),
            )
        parts = urlsplit(self.base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        return (Route(origin, parts.path + BROKERAGE_PATH, signed=True),)

    def __repr__(self) -> str:
        return f"<CoinbaseConnector {self.mode} {self.base_url}>"

    def check_route(self, url: str, method: str, headers: Mapping[str, Any] | None) -> None:
        """Refuse (before sending) any request outside :attr:`routes`.

        :raises ExchangeRejectedError: nothing was sent.
        """
        has_auth = any(
            str(k).lower() in ("authorization", "cb-access-key", "cb-access-sign")
            for k in (headers or {})
        )
        if any(route.allows(url, method, has_auth) for route in self.routes):
            return
        parts = urlsplit(url)
        raise ExchangeRejectedError(
            f"coinbase ({self.mode} mode) refused to send {method} "
            f"{parts.scheme}://{parts.netloc}{parts.path}"
            f"{' with credentials' if has_auth else ''}: not an allowed route; nothing was sent"
        )

    # -- CcxtConnector hooks -----------------------------------------------------------

    def secrets(self) -> Sequence[Secret]:
        return (*self._raw_secrets, *(s for s in (self.api_secret,) if s is not None))

    def exchange_config(self) -> dict[str, Any]:
        config = super().exchange_config()
        if self.signs_requests and self.api_key is not None and self.api_secret is not None:
            config["apiKey"] = self.api_key.reveal()
            config["secret"] = self.api_secret.reveal()
        config["options"] = {
            **config["options"],
            "brokerId": "bagbot",
            "fetchMarkets": "fetchMarketsV3",
            "fetchTicker": "fetchTickerV3",
            "adjustForTimeDifference": False,
        }
        return config

    def configure_exchange(self, exchange: Any) -> None:
        import ccxt.async_support as ccxt_async

        exchange.urls["api"] = {
            "rest": self.market_data_url if self.mode == "sandbox" else self.base_url
        }
        # load_markets: the spot product list only (no /v2 currencies, fees, futures).
        exchange.has["fetchCurrencies"] = False

        async def fetch_markets(params: Mapping[str, Any] | None = None) -> list[Any]:
            response = await exchange.v3PublicGetBrokerageMarketProducts(
                {"product_type": "SPOT", **(params or {})}
            )
            products = response.get("products") if isinstance(response, Mapping) else None
            parsed = (exchange.parse_spot_market(p, {}) for p in products or [])
            return [m for m in parsed if m is not None]

        exchange.fetch_markets = fetch_markets

        original_sign = exchange.sign

        def sign(path: str, api: Any = None, method: str = "GET",
                 params: Any = None) -> dict[str, Any]:
            api = list(api or [])
            params = {} if params is None else params
            private = len(api) > 1 and api[1] == "private"
            if not (private and self.mode == "sandbox"):
                return original_sign(path, api, method, params)  # type: ignore[no-any-return]
            # Sandbox: the same request, unsigned, to the sandbox host.
            request: dict[str, Any] = original_sign(path, [api[0], "public"], method, params)
            parts = urlsplit(request["url"])
            request["url"] = SANDBOX_URL + parts.path + (f"?{parts.query}" if parts.query else "")
            if method != "GET":
                query = exchange.omit(params, exchange.extract_params(path))
                if query:
                    request["body"] = exchange.json(query)
                    request["headers"] = {"Content-Type": "application/json"}
            return request

        exchange.sign = sign

        original_fetch = exchange.fetch

        async def fetch(url: str, method: str = "GET", headers: Any = None,
                        body: Any = None) -> Any:
            self.check_route(url, method, headers)
            return await original_fetch(url, method, headers, body)

        exchange.fetch = fetch

        inner_handle_errors = exchange.handle_errors
        errors = ccxt_async  # exception classes live on the package

        def handle_errors(code: int, reason: str, url: str, method: str, headers: Any,
                          body: str, response: Any, *rest: Any) -> Any:
            path = urlsplit(url).path
            if code in (418, 429):
                try:  # the base's wrapper starts the Retry-After pause first
                    inner_handle_errors(code, reason, url, method, headers, body, response,
                                        *rest)
                except (errors.RateLimitExceeded, errors.DDoSProtection):
                    raise
                except Exception:  # noqa: S110 - replaced by the rate-limit error below
                    pass
                raise errors.RateLimitExceeded(f"coinbase HTTP {code}: {_text(response, body)}")
            if isinstance(response, Mapping):
                failure = response.get("error_response")
                if (response.get("success") is False and isinstance(failure, Mapping)
                        and method == "POST" and path.endswith("/brokerage/orders")):
                    raise _create_failure(errors, failure, response)
                if code == 404 and "/brokerage/orders/historical/" in path:
                    raise errors.OrderNotFound(f"coinbase {_text(response, body)}")
            return inner_handle_errors(code, reason, url, method, headers, body, response,
                                       *rest)

        exchange.handle_errors = handle_errors

    # -- market data -------------------------------------------------------------------

    async def fetch_raw_quote(self, exchange: Any, symbol: str) -> Quote:
        """``GET /market/products/{id}/ticker?limit=1``: ``best_bid``/``best_ask`` strings."""
        raw = await exchange.v3PublicGetBrokerageMarketProductsProductIdTicker(
            {"product_id": exchange.market_id(symbol), "limit": 1}
        )
        return Quote(
            symbol=symbol,
            bid=positive_or_none(raw.get("best_bid")),
            ask=positive_or_none(raw.get("best_ask")),
            taken_at=time.monotonic(),
        )

    # -- orders ------------------------------------------------------------------------

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        """Send ``order`` once with ``client_order_id``; read its state once if configured.

        A market buy is sized in quote currency at the current ask (Coinbase's
        ``quote_size``). Sending the same ``client_order_id`` again returns the existing
        order (Coinbase de-duplicates) and places nothing.

        :raises ExchangeRejectedError: refused (nothing placed), including ``success: false``.
        :raises ExchangeUnavailableError: no definite answer: the order may exist.
        """
        try:
            await self.load_markets()
        except BagbotError as exc:  # nothing was sent: a refusal, not an unknown outcome
            raise ExchangeRejectedError(
                f"coinbase: markets unavailable ({exc}); nothing was sent"
            ) from None
        # Declared params only (re-checked for direct callers); bagbot's own keys win.
        params: dict[str, Any] = {
            **params_to_send(order, self.allowed_params, connector=self.name),
            "client_order_id": client_order_id,
        }
        price: str | None = None if order.price is None else plain(order.price)
        market_buy = order.type is OrderType.MARKET and order.side is Side.BUY
        if market_buy and order.reference_price is not None:
            # Size at the price the max-value check used: the order sent is the order that
            # was checked, even if the quote cache has moved on since.
            params["cost"] = plain(order.amount * order.reference_price)
            price = None
        if market_buy and "cost" not in params:
            try:
                quote = await self.fetch_quote(order.symbol)
            except BagbotError as exc:
                raise ExchangeRejectedError(
                    f"coinbase: cannot size the market buy in {order.quote} without a "
                    f"quote ({exc}); nothing was sent"
                ) from None
            if quote.ask is None:
                raise ExchangeRejectedError(
                    f"coinbase: no ask for {order.symbol} to size the market buy; nothing "
                    "was sent"
                )
            params["cost"] = plain(order.amount * quote.ask)
            price = None
        amount = plain(order.amount)
        raw = await self._call(
            lambda ex: ex.create_order(
                order.symbol, order.type.value, order.side.value, amount, price, params
            )
        )
        info = raw.get("info") if isinstance(raw, Mapping) else None
        order_id = (info or {}).get("order_id") or (raw or {}).get("id")
        if not order_id:
            raise ExchangeUnavailableError(
                "coinbase: the create answer carries no order id; the order may exist, "
                "reconcile will look for it"
            )
        accepted = ExchangeOrder(
            external_id=str(order_id),
            client_order_id=str((info or {}).get("client_order_id") or client_order_id),
            status=OrderStatus.OPEN,
            symbol=order.symbol,
            amount=order.amount,
            price=order.price,
            reason="accepted; state not read yet (sync settles it)",
        )
        if not self.fetch_after_create:
            return accepted
        try:
            return await self.fetch_order(
                order.symbol, external_id=str(order_id), client_order_id=client_order_id
            )
        except BagbotError as exc:
            # The order IS on the exchange: never let a failed read make it look failed.
            _log.warning("coinbase: order %s accepted, reading it failed: %s", order_id, exc)
            return accepted

    async def fetch_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """``GET /orders/historical/{id}``, or a search by client order id (see module)."""
        if not external_id:
            return await self._find_by_client_order_id(symbol, client_order_id)
        raw = await self._call(lambda ex: ex.fetch_order(external_id, symbol))
        return self._parse(raw, symbol, client_order_id)

    async def cancel_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """``POST /orders/batch_cancel``, then read the order's state.

        :raises ExchangeOrderNotFoundError: the exchange does not know the order.
        :raises ExchangeRejectedError: it refused (the order is already finished, ...).
        """
        if not external_id:
            found = await self._find_by_client_order_id(symbol, client_order_id)
            external_id = found.external_id
        assert external_id is not None
        order_id = external_id
        answer = await self._call(
            lambda ex: ex.v3PrivatePostBrokerageOrdersBatchCancel({"order_ids": [order_id]})
        )
        results = answer.get("results") if isinstance(answer, Mapping) else None
        result = next(
            (r for r in results or [] if isinstance(r, Mapping)
             and str(r.get("order_id")) == order_id),
            None,
        )
        if result is None or result.get("success") is not True:
            why = (result or {}).get("failure_reason") or "no result for the order"
            # Failure reasons are coarse: ask the order itself what it is.
            state = await self.fetch_order(
                symbol, external_id=order_id, client_order_id=client_order_id
            )
            if state.status.is_terminal:
                raise ExchangeRejectedError(
                    f"coinbase refused to cancel {order_id} ({why}): it is already "
                    f"{state.raw_status}"
                )
            raise ExchangeRejectedError(f"coinbase refused to cancel {order_id}: {why}")
        return await self.fetch_order(
            symbol, external_id=order_id, client_order_id=client_order_id
        )

    async def _find_by_client_order_id(self, symbol: str, client_order_id: str) -> ExchangeOrder:
        await self.load_markets()
        try:
            product_id = self.exchange.market_id(symbol)
        except Exception as exc:
            raise self.classify_error(exc) from None
        cursor: str | None = None
        for _ in range(self.client_id_search_pages):
            request: dict[str, Any] = {"product_ids": [product_id], "limit": 100}
            if cursor:
                request["cursor"] = cursor
            page = await self._call(_list_orders(request))
            for info in page.get("orders") or []:
                if isinstance(info, Mapping) and info.get("client_order_id") == client_order_id:
                    return self._parse_info(info, symbol, client_order_id)
            cursor = page.get("cursor") or None
            if not page.get("has_next") or not cursor:
                raise ExchangeOrderNotFoundError(
                    f"coinbase: no {symbol} order with client order id {client_order_id}"
                )
        raise ExchangeUnavailableError(
            f"coinbase: client order id {client_order_id} not among the newest "
            f"{self.client_id_search_pages * 100} {symbol} orders; not declaring it missing "
            "(raise client_id_search_pages to search further)"
        )

    def order_from_ccxt(
        self, order: Mapping[str, Any], *, symbol: str, client_order_id: str | None
    ) -> ExchangeOrder:
        """Read Coinbase's raw order JSON (``order["info"]``), never ccxt's floats."""
        info = order.get("info") if isinstance(order, Mapping) else None
        if not isinstance(info, Mapping):
            raise ValueError("the answer does not carry Coinbase's order JSON")
        return self.order_from_info(info, symbol=symbol, client_order_id=client_order_id)

    def _parse_info(
        self, info: Mapping[str, Any], symbol: str, client_order_id: str
    ) -> ExchangeOrder:
        """One order object from a list answer, read like a ccxt answer carrying it."""
        return self._parse({"info": info}, symbol, client_order_id)

    @staticmethod
    def order_from_info(
        info: Mapping[str, Any], *, symbol: str, client_order_id: str | None
    ) -> ExchangeOrder:
        """One Advanced Trade order object as an :class:`ExchangeOrder`.

        ``filled_qty`` = ``filled_size``; ``avg_price`` = ``average_filled_price`` (else
        ``filled_value / filled_size``); ``amount``/``price`` from ``order_configuration``
        (``base_size``/``limit_price``; a market buy sized in quote has no base amount).

        :raises ValueError: no ``order_id``, or an unreadable status.
        """
        order_id = info.get("order_id")
        if order_id in (None, ""):
            raise ValueError("the answer does not identify a Coinbase order")
        raw_status = info.get("status")
        filled = decimal_or_none(info.get("filled_size")) or Decimal(0)
        status = map_status(None if raw_status is None else str(raw_status), filled)
        avg: Decimal | None = None
        if filled > 0:
            reported = positive_or_none(info.get("average_filled_price"))
            value = positive_or_none(info.get("filled_value"))
            if reported is not None:
                avg = average_price(reported, Decimal(1))
            elif value is not None:
                avg = average_price(value, filled)
        configuration = info.get("order_configuration")
        details: Mapping[str, Any] = {}
        if isinstance(configuration, Mapping):
            details = next((v for v in configuration.values() if isinstance(v, Mapping)), {})
        reason = None
        if status is OrderStatus.REJECTED:
            reason = _first_text(info, "reject_message", "reject_reason") or "FAILED"
        elif status is OrderStatus.CANCELED:
            reason = _first_text(info, "cancel_message", "reject_message")
        return ExchangeOrder(
            external_id=str(order_id),
            client_order_id=str(info.get("client_order_id") or client_order_id or "") or None,
            status=status,
            symbol=symbol,
            filled_qty=normalize(filled),
            avg_price=avg,
            amount=positive_or_none(details.get("base_size")),
            price=positive_or_none(details.get("limit_price")),
            raw_status=str(raw_status),
            reason=reason,
        )


# -- helpers ---------------------------------------------------------------------------


def _first_text(info: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = info.get(key)
        if isinstance(value, str) and value.strip() and not value.endswith("_UNSPECIFIED"):
            return value.strip()
    return None


def _list_orders(request: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
    async def call(exchange: Any) -> Any:
        return await exchange.v3PrivateGetBrokerageOrdersHistoricalBatch(request)

    return call


def _text(response: Any, body: str) -> str:
    """Coinbase's words from an error body: ``ERROR: message``, else the raw body."""
    if isinstance(response, Mapping):
        failure = response.get("error_response")
        if isinstance(failure, Mapping):
            return _failure_text(failure, response)[1]
        code = response.get("error")
        message = response.get("message") or response.get("error_details")
        if isinstance(code, str) and isinstance(message, str) and message:
            return f"{code}: {message}"
        errors = response.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            return str(errors[0].get("message") or errors[0].get("id") or body)
    return (body or "").strip()[:300] or "no details"


#: Failure reason fields of an ``error_response``, most specific first (``error`` is the
#: deprecated one).
_FAILURE_FIELDS = ("new_order_failure_reason", "preview_failure_reason", "error")


def _is_specific(reason: object) -> bool:
    """A failure reason that says something: not empty, not ``UNKNOWN_*``/``*_UNSPECIFIED``."""
    return (isinstance(reason, str) and bool(reason.strip())
            and not reason.startswith("UNKNOWN_") and not reason.endswith("_UNSPECIFIED"))


def _failure_text(failure: Mapping[str, Any],
                  response: Mapping[str, Any]) -> tuple[list[str], str]:
    """The specific failure reasons of an ``error_response`` and its text for the row.

    Coinbase often answers ``error: UNKNOWN_FAILURE_REASON`` with an empty ``message`` and
    puts the cause in ``preview_failure_reason`` or ``new_order_failure_reason`` (the shape
    ccxt recorded from the real API): the specific field names the refusal, not the generic.
    """
    reasons: list[str] = []
    for value in (*(failure.get(k) for k in _FAILURE_FIELDS), response.get("failure_reason")):
        if _is_specific(value) and str(value).strip() not in reasons:
            reasons.append(str(value).strip())
    message = next((str(m).strip() for m in (failure.get("message"),
                                               failure.get("error_details"))
                    if isinstance(m, str) and m.strip()), "")
    if not reasons:
        return reasons, f"coinbase refused the order without a reason: {message or 'no details'}"
    if not message:
        return reasons, f"coinbase {', '.join(reasons)}"
    more = f" ({', '.join(reasons[1:])})" if len(reasons) > 1 else ""
    return reasons, f"coinbase {reasons[0]}: {message}{more}"


def _create_failure(errors: Any, failure: Mapping[str, Any],
                    response: Mapping[str, Any]) -> Exception:
    """A ``success: false`` create answer as a ccxt refusal (never a plain ExchangeError),
    named by its most specific failure reason."""
    reasons, text = _failure_text(failure, response)
    if any("INSUFFICIENT_FUND" in r for r in reasons):
        return errors.InsufficientFunds(text)  # type: ignore[no-any-return]
    return errors.InvalidOrder(text)  # type: ignore[no-any-return]
