"""bagbot's declared plugin API: everything a connector or a risk check may import.

A plugin that imports only from here (and, in its tests, from ``bagbot_core.testing``)
does not depend on how bagbot lays out its modules. Every name is the very object its
defining module holds, so the older paths (``bagbot_core.connector.Connector``,
``bagbot_core.ccxt_support.CcxtConnector``, ...) keep working and mean the same thing.
``docs/plugin-api.md`` lists each name.

Importing this module is cheap: the ccxt base (which imports structlog, and ccxt once a
request is made) and the order history (SQLAlchemy) load on first attribute access, so a
plugin's entry-point module can import from here without slowing ``bagbot plugins``::

    from bagbot_core.plugin import ConnectorSpec, hookimpl
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bagbot_core.connector import (
    Capabilities,
    Connector,
    ConnectorFactory,
    ConnectorSettings,
    ConnectorSpec,
    check_market_limits,
    config_bool,
    config_seconds,
    config_secret,
    http_base_url,
)
from bagbot_core.connector_config import ConfigKey, check_connector_config, declare_config
from bagbot_core.endpoints import (
    check_endpoints,
    endpoint_host,
    endpoint_is_live,
    is_loopback_host,
)
from bagbot_core.errors import (
    BagbotError,
    ConfigurationError,
    DuplicateNameError,
    ExchangeError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    IdempotencyKeyReusedError,
    IllegalTransitionError,
    LiveTradingNotAllowedError,
    OrderNotFoundError,
    OrderStatusUnknownError,
    OrderValidationError,
    PluginError,
    PluginLoadError,
    RateLimitedError,
    RiskCheckError,
    UnknownConnectorError,
)
from bagbot_core.markers import hookimpl
from bagbot_core.money import normalize, round_to_step
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote, Side
from bagbot_core.params import (
    FORBIDDEN_PARAMS,
    NO_PARAMS,
    ParamKind,
    ParamSpec,
    declare_params,
    is_forbidden,
    params_to_send,
)
from bagbot_core.risk import RiskCheck, RiskContext, RiskLimits, RiskViolation, fmt
from bagbot_core.risk_config import Limit, RiskConfig
from bagbot_core.secrets import Secret
from bagbot_core.status import OrderStatus

if TYPE_CHECKING:
    from bagbot_core.ccxt_support import (
        CCXT_CONFIG_KEYS,
        CcxtConnector,
        average_price,
        classify_ccxt_error,
        decimal_or_none,
        exchange_message,
        parse_retry_after,
        plain,
        positive_or_none,
        scrub_secrets,
    )
    from bagbot_core.history import ALL_USERS, History

#: Names loaded on first access, by defining module (each pulls a heavy import).
_LAZY = {
    "bagbot_core.ccxt_support": (
        "CCXT_CONFIG_KEYS", "CcxtConnector", "average_price", "classify_ccxt_error",
        "decimal_or_none", "exchange_message", "parse_retry_after", "plain", "positive_or_none",
        "scrub_secrets",
    ),
    "bagbot_core.history": ("ALL_USERS", "History"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "ALL_USERS",
    "CCXT_CONFIG_KEYS",
    "FORBIDDEN_PARAMS",
    "NO_PARAMS",
    "BagbotError",
    "Capabilities",
    "CcxtConnector",
    "ConfigKey",
    "ConfigurationError",
    "Connector",
    "ConnectorFactory",
    "ConnectorSettings",
    "ConnectorSpec",
    "DuplicateNameError",
    "ExchangeError",
    "ExchangeOrder",
    "ExchangeOrderNotFoundError",
    "ExchangeRejectedError",
    "ExchangeUnavailableError",
    "History",
    "IdempotencyKeyReusedError",
    "IllegalTransitionError",
    "Limit",
    "LiveTradingNotAllowedError",
    "Market",
    "OrderNotFoundError",
    "OrderRequest",
    "OrderStatus",
    "OrderStatusUnknownError",
    "OrderType",
    "OrderValidationError",
    "ParamKind",
    "ParamSpec",
    "PluginError",
    "PluginLoadError",
    "Quote",
    "RateLimitedError",
    "RiskCheck",
    "RiskCheckError",
    "RiskConfig",
    "RiskContext",
    "RiskLimits",
    "RiskViolation",
    "Secret",
    "Side",
    "UnknownConnectorError",
    "average_price",
    "check_connector_config",
    "check_endpoints",
    "check_market_limits",
    "classify_ccxt_error",
    "config_bool",
    "config_seconds",
    "config_secret",
    "decimal_or_none",
    "declare_config",
    "declare_params",
    "endpoint_host",
    "endpoint_is_live",
    "exchange_message",
    "fmt",
    "hookimpl",
    "http_base_url",
    "is_forbidden",
    "is_loopback_host",
    "normalize",
    "params_to_send",
    "parse_retry_after",
    "plain",
    "positive_or_none",
    "round_to_step",
    "scrub_secrets",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bagbot_core.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
