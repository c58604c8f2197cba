"""The Binance spot connector (``ccxt.async_support.binance``).

Importing this module does not import ccxt; the exchange object is built on first use.

Configuration (``ConnectorSettings.config``, environment variable as fallback):

==================== ================================ =========================================
key                  environment                      meaning
==================== ================================ =========================================
``api_key``          ``BAGBOT_BINANCE_API_KEY``       API key (required)
``api_secret``       ``BAGBOT_BINANCE_API_SECRET``    API secret (required)
``api_url``          ``BAGBOT_BINANCE_API_URL``       base URL replacing the host of every
                                                      endpoint (paths kept); default: the
                                                      official testnet or production host
``enable_rate_limit``                                 ccxt's client-side limiter; keep it on
                                                      (default) against Binance, off for fakes
``timeout``                                           seconds per request (default 10)
``quote_max_age``                                     seconds a bid/ask is reused (default 2)
``rate_limit_backoff``                                pause after a 429/418 without
                                                      ``Retry-After`` (default 1 s)
==================== ================================ =========================================

Testnet (``ConnectorSettings.testnet=True``, the default) calls ccxt's
``set_sandbox_mode(True)`` before any URL override; live trading is used only when
``testnet`` is False, which the router allows only with the environment opt-in. An
``api_url`` on any host but ``testnet.binance.vision`` or a loopback address is live too
(:mod:`bagbot_core.endpoints`): with ``testnet=True`` the connector is refused before
anything is built or sent.

Spot only: markets load with ``fetchMarkets.types = ["spot"]`` and without currencies or
margin data -- one ``GET /api/v3/exchangeInfo``. Quotes come from
``GET /api/v3/ticker/bookTicker`` (best bid/ask only; weight 2), not the 24 h ticker.
Fills are read from Binance's raw JSON (``executedQty``, ``cummulativeQuoteQty``, ``fills``)
as :class:`~decimal.Decimal`, never from ccxt's floats.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from bagbot_core.plugin import (
    CCXT_CONFIG_KEYS,
    BagbotError,
    Capabilities,
    CcxtConnector,
    ConfigKey,
    ConfigurationError,
    ConnectorSettings,
    ExchangeOrder,
    ExchangeRejectedError,
    OrderStatus,
    OrderType,
    ParamSpec,
    Quote,
    Secret,
    average_price,
    classify_ccxt_error,
    config_secret,
    decimal_or_none,
    declare_config,
    declare_params,
    endpoint_is_live,
    exchange_message,
    http_base_url,
    positive_or_none,
    scrub_secrets,
)

__all__ = ["PARAMS", "BinanceConnector", "map_status"]

ENV_API_KEY = "BAGBOT_BINANCE_API_KEY"
ENV_API_SECRET = "BAGBOT_BINANCE_API_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_API_URL = "BAGBOT_BINANCE_API_URL"

PRODUCTION_URL = "https://api.binance.com"
TESTNET_HOST = "testnet.binance.vision"
TESTNET_URL = f"https://{TESTNET_HOST}"

#: Binance order status -> bagbot status (before the partial-fill adjustments).
STATUS_MAP: Mapping[str, OrderStatus] = {
    "NEW": OrderStatus.OPEN,
    "PENDING_NEW": OrderStatus.OPEN,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELED,
    "PENDING_CANCEL": OrderStatus.OPEN,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
    "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
}

#: Binance codes that are a definite "no" whatever ccxt made of them. -2015 becomes
#: ``DDoSProtection`` in ccxt once a private call succeeded on the instance (Binance also
#: sends it during temporary bans); either way the request was refused, nothing was placed.
_REJECT_CODES = frozenset({-2015, -2014, -1022})

#: The pass-through params a Binance order takes (``order_payload["params"]``); anything
#: else is refused before sending. ``NONE`` (no self-trade prevention) and ``TRANSFER``
#: (moves the match between accounts) are left out on purpose.
PARAMS = declare_params(
    ParamSpec("timeInForce", choices={"GTC", "IOC", "FOK"}, order_types={OrderType.LIMIT},
              description="GTC (default): rest until canceled; IOC: fill what crosses now, "
                          "expire the rest; FOK: fill completely now or expire"),
    ParamSpec("selfTradePreventionMode",
              choices={"EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"},
              description="what Binance expires when the order would trade with this "
                          "account's own order (default EXPIRE_MAKER)"),
)


def map_status(raw_status: str | None, filled: Decimal) -> OrderStatus:
    """Binance's status as bagbot's.

    ``NEW``/``PENDING_CANCEL`` are open -- or ``partially_filled`` once something filled (a
    partial fill never goes back to ``open``). ``EXPIRED``/``EXPIRED_IN_MATCH`` are
    ``expired`` and keep their filled quantity. A missing status (an ``ACK`` answer) is
    ``open``: the order was accepted.
    """
    if raw_status is None:
        return OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.OPEN
    status = STATUS_MAP.get(raw_status.upper())
    if status is None:
        raise ValueError(f"unknown Binance order status {raw_status!r}")
    if status is OrderStatus.OPEN and filled > 0:
        return OrderStatus.PARTIALLY_FILLED
    return status


class BinanceConnector(CcxtConnector):
    """Binance spot through ``ccxt.async_support.binance``; see the module docs for config."""

    name = "binance"
    exchange_id = "binance"
    capabilities = Capabilities(
        market_orders=True,
        limit_orders=True,
        cancel=True,
        fetch_by_client_order_id=True,
        fills_in_create_response=True,
    )
    allowed_params = PARAMS
    config_keys = declare_config(
        ConfigKey("api_key", "secret", "API key (required)", ENV_API_KEY),
        ConfigKey("api_secret", "secret", "API secret (required)", ENV_API_SECRET),
        ConfigKey("api_url", "url", "base URL replacing the host of every endpoint",
                  ENV_API_URL),
        *CCXT_CONFIG_KEYS.values(),
    )

    #: Binance's spot testnet; every other host but a loopback address is live.
    sandbox_hosts = frozenset({TESTNET_HOST})

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        self.allow_live = settings.allow_live
        config = settings.config
        api_key = config_secret(config, "api_key", ENV_API_KEY)
        api_secret = config_secret(config, "api_secret", ENV_API_SECRET)
        missing = [
            name
            for name, value in (("api_key", api_key), ("api_secret", api_secret))
            if value is None
        ]
        if missing:
            raise ConfigurationError(
                f"binance: {' and '.join(missing)} missing: set them in the connector config "
                f"or in {ENV_API_KEY} / {ENV_API_SECRET}"
            )
        assert api_key is not None
        assert api_secret is not None
        self.api_key: Secret = api_key
        self.api_secret: Secret = api_secret
        url = config.get("api_url") or os.environ.get(ENV_API_URL) or None
        # A query string in api_url is dropped (the URL only replaces hosts).
        self.api_url: str | None = (
            None if url is None else http_base_url(url, "binance: api_url", allow_query=True)
        )

    @property
    def base_url(self) -> str:
        """Where requests go: ``api_url`` or the official host for the mode."""
        return self.api_url or (TESTNET_URL if self.testnet else PRODUCTION_URL)

    def endpoints(self) -> Sequence[str]:
        """Every request, orders included, goes to :attr:`base_url`."""
        return (self.base_url,)

    def __repr__(self) -> str:
        mode = "live" if endpoint_is_live(self.base_url, self.sandbox_hosts) else "testnet"
        return f"<BinanceConnector {mode} {self.base_url}>"

    # -- CcxtConnector hooks -----------------------------------------------------------

    def secrets(self) -> Sequence[Secret]:
        return (self.api_key, self.api_secret)

    def exchange_config(self) -> dict[str, Any]:
        config = super().exchange_config()
        config["apiKey"] = self.api_key.reveal()
        config["secret"] = self.api_secret.reveal()
        config["options"] = {
            **config["options"],
            "defaultType": "spot",
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
        }
        return config

    def configure_exchange(self, exchange: Any) -> None:
        if self.testnet:
            # Replaces urls['api'] wholesale, so it must come before the host override.
            exchange.set_sandbox_mode(True)
        if self.api_url is not None:
            exchange.urls["api"] = {
                key: self.api_url + urlsplit(value).path
                for key, value in exchange.urls["api"].items()
                if isinstance(value, str)
            }
        for key in ("public", "private"):
            # The host the live-host rule checked (endpoints()) must be where ccxt sends
            # spot requests, orders included -- whatever a ccxt release does to its URLs.
            url = exchange.urls["api"].get(key)
            if not isinstance(url, str) or not url.startswith(self.base_url + "/"):
                raise ConfigurationError(
                    f"binance: ccxt's {key} spot API is not under {self.base_url}; nothing "
                    "was sent"
                )
        if self.base_url != PRODUCTION_URL:
            # ccxt picks Binance's spot error table by matching the production/testnet URL;
            # elsewhere spot-only codes would fall through to a plain ExchangeError.
            for kind in ("exact", "broad"):
                table = exchange.exceptions.get("spot", {}).get(kind)
                if table:
                    exchange.exceptions[kind].update(table)

    def create_params(self, order: Any, client_order_id: str) -> dict[str, Any]:
        # ccxt reads newClientOrderId before clientOrderId: bagbot's id goes under the name
        # ccxt prefers, so it wins over anything a params dict could still carry.
        return {"newClientOrderId": client_order_id}

    def lookup_params(self, client_order_id: str) -> dict[str, Any]:
        return {"clientOrderId": client_order_id}  # ccxt sends it as origClientOrderId

    def classify_error(self, exc: BaseException) -> BagbotError:
        code = _binance_code(exc)
        if code in _REJECT_CODES:
            message = scrub_secrets(exchange_message(exc, self.exchange_id), self.secrets())
            return ExchangeRejectedError(
                f"binance rejected the request ({type(exc).__name__}): {message}"
            )
        return classify_ccxt_error(
            exc, exchange=self._exchange, name=self.name, secrets=self.secrets()
        )

    async def fetch_raw_quote(self, exchange: Any, symbol: str) -> Quote:
        """``GET /api/v3/ticker/bookTicker?symbol=...``: best bid/ask as Decimal strings."""
        raw = await exchange.publicGetTickerBookTicker({"symbol": exchange.market_id(symbol)})
        return Quote(
            symbol=symbol,
            bid=positive_or_none(raw.get("bidPrice")),
            ask=positive_or_none(raw.get("askPrice")),
            taken_at=time.monotonic(),
        )

    def order_from_ccxt(
        self, order: Mapping[str, Any], *, symbol: str, client_order_id: str | None
    ) -> ExchangeOrder:
        """Read Binance's raw order JSON (``order["info"]``), not ccxt's floats.

        ``filled_qty`` = ``executedQty``; ``avg_price`` = ``cummulativeQuoteQty /
        executedQty`` (or the fills' weighted average when the cumulative figure is absent);
        ``raw_status`` = Binance's status. A cancel answer's ``clientOrderId`` is the
        cancel's own id, so ``origClientOrderId`` wins when present.
        """
        info = order.get("info") if isinstance(order, Mapping) else None
        if not isinstance(info, Mapping) or info.get("orderId") in (None, ""):
            raise ValueError("the answer does not identify a Binance order")
        raw_status = info.get("status")
        filled = decimal_or_none(info.get("executedQty")) or Decimal(0)
        avg: Decimal | None = None
        if filled > 0:
            cumulative = decimal_or_none(info.get("cummulativeQuoteQty"))
            if cumulative is not None and cumulative > 0:
                avg = average_price(cumulative, filled)
            else:
                avg = _fills_average(info.get("fills"))
        price = positive_or_none(info.get("price"))
        return ExchangeOrder(
            external_id=str(info["orderId"]),
            client_order_id=(
                info.get("origClientOrderId") or info.get("clientOrderId") or client_order_id
            ),
            status=map_status(None if raw_status is None else str(raw_status), filled),
            symbol=symbol,
            filled_qty=filled,
            avg_price=avg,
            amount=positive_or_none(info.get("origQty")),
            price=price,
            raw_status=None if raw_status is None else str(raw_status),
        )


def _fills_average(fills: object) -> Decimal | None:
    if not isinstance(fills, list):
        return None
    qty = Decimal(0)
    cost = Decimal(0)
    for fill in fills:
        if not isinstance(fill, Mapping):
            continue
        q, p = decimal_or_none(fill.get("qty")), decimal_or_none(fill.get("price"))
        if q and p:
            qty += q
            cost += q * p
    return average_price(cost, qty) if qty > 0 else None


def _binance_code(exc: BaseException) -> int | None:
    """Binance's numeric error code from a ccxt exception text, if it carries the JSON."""
    text = str(exc)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            payload = json.loads(text[start : end + 1])
        except ValueError:
            return None
        if isinstance(payload, dict):
            try:
                return int(payload.get("code"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
    return None
