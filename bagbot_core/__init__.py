"""bagbot: plugin-based order routing for crypto trading.

The public API is importable from here; names load lazily, so ``import bagbot_core`` (and
``bagbot --help``) stays cheap::

    from bagbot_core import route_order, hookimpl
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bagbot_core.markers import hookimpl, hookspec

if TYPE_CHECKING:
    from bagbot_core.connector import (
        Capabilities,
        Connector,
        ConnectorSettings,
        ConnectorSpec,
    )
    from bagbot_core.db import get_db, get_engine, init_db
    from bagbot_core.errors import (
        BagbotError,
        ConfigurationError,
        DuplicateNameError,
        ExchangeError,
        ExchangeOrderNotFoundError,
        ExchangeRejectedError,
        ExchangeUnavailableError,
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
    from bagbot_core.history import ALL_USERS, History
    from bagbot_core.models import Order
    from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote, Side
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskCheck, RiskContext, RiskLimits, RiskViolation
    from bagbot_core.risk_config import Limit, RiskConfig
    from bagbot_core.router import (
        Router,
        cancel_order,
        check_order,
        get_router,
        reconcile,
        route_order,
        set_router,
        sync_order,
    )
    from bagbot_core.status import OrderStatus
    from bagbot_core.views import OrderView

_EXPORTS = {
    "bagbot_core.connector": ("Capabilities", "Connector", "ConnectorSettings", "ConnectorSpec"),
    "bagbot_core.db": ("get_db", "get_engine", "init_db"),
    "bagbot_core.errors": (
        "BagbotError", "ConfigurationError", "DuplicateNameError", "ExchangeError",
        "ExchangeOrderNotFoundError", "ExchangeRejectedError", "ExchangeUnavailableError",
        "IllegalTransitionError", "LiveTradingNotAllowedError", "OrderNotFoundError",
        "OrderStatusUnknownError", "OrderValidationError", "PluginError", "PluginLoadError",
        "RateLimitedError", "RiskCheckError", "UnknownConnectorError",
    ),
    "bagbot_core.history": ("ALL_USERS", "History"),
    "bagbot_core.models": ("Order",),
    "bagbot_core.orders": ("ExchangeOrder", "Market", "OrderRequest", "OrderType", "Quote",
                           "Side"),
    "bagbot_core.plugins": ("PluginRegistry",),
    "bagbot_core.risk": ("RiskCheck", "RiskContext", "RiskLimits", "RiskViolation"),
    "bagbot_core.risk_config": ("Limit", "RiskConfig"),
    "bagbot_core.router": ("Router", "cancel_order", "check_order", "get_router", "reconcile",
                           "route_order", "set_router", "sync_order"),
    "bagbot_core.status": ("OrderStatus",),
    "bagbot_core.views": ("OrderView",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ALL_USERS",
    "BagbotError",
    "Capabilities",
    "ConfigurationError",
    "Connector",
    "ConnectorSettings",
    "ConnectorSpec",
    "DuplicateNameError",
    "ExchangeError",
    "ExchangeOrder",
    "ExchangeOrderNotFoundError",
    "ExchangeRejectedError",
    "ExchangeUnavailableError",
    "History",
    "IllegalTransitionError",
    "Limit",
    "LiveTradingNotAllowedError",
    "Market",
    "Order",
    "OrderNotFoundError",
    "OrderRequest",
    "OrderStatus",
    "OrderStatusUnknownError",
    "OrderType",
    "OrderValidationError",
    "OrderView",
    "PluginError",
    "PluginLoadError",
    "PluginRegistry",
    "Quote",
    "RateLimitedError",
    "RiskCheck",
    "RiskCheckError",
    "RiskConfig",
    "RiskContext",
    "RiskLimits",
    "RiskViolation",
    "Router",
    "Side",
    "UnknownConnectorError",
    "cancel_order",
    "check_order",
    "get_db",
    "get_engine",
    "get_router",
    "hookimpl",
    "hookspec",
    "init_db",
    "reconcile",
    "route_order",
    "set_router",
    "sync_order",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bagbot_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
