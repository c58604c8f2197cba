"""The one error hierarchy bagbot raises.

Catch :class:`BagbotError` for everything bagbot raises on purpose. The branches tell a
caller what to do next: fix the input (:class:`OrderValidationError`), respect a limit
(:class:`RiskCheckError`), accept the exchange's "no" (:class:`ExchangeRejectedError`), or
-- the one that costs money when mishandled -- *find out* what happened before trying again
(:class:`OrderStatusUnknownError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bagbot_core.risk import RiskViolation


class BagbotError(Exception):
    """Base class of every error bagbot raises on purpose."""

    #: The order row this error was recorded on, when there is one (set by the router).
    order: Any = None


class ConfigurationError(BagbotError):
    """A setting (environment variable, config value) is missing or malformed."""


class LiveTradingNotAllowedError(ConfigurationError):
    """``testnet=False`` was asked for but the environment does not allow live trading."""


class PluginError(BagbotError):
    """A plugin could not be loaded or contradicts another plugin."""


class PluginLoadError(PluginError):
    """A plugin's module failed to import or register."""


class DuplicateNameError(PluginError):
    """Two plugins claim the same connector or risk-check name."""


class UnknownConnectorError(PluginError):
    """No installed, enabled plugin provides the requested connector."""


class OrderValidationError(BagbotError, ValueError):
    """The order payload is malformed: nothing was sent to any exchange."""


class IdempotencyKeyReusedError(OrderValidationError):
    """The idempotency key (``client_order_id``) already names a different order, or
    another user's: nothing was done. A retry must reuse a key only for the same order."""


class RiskCheckError(BagbotError):
    """One or more pre-trade risk checks refused the order: nothing was sent."""

    def __init__(self, violations: Sequence[RiskViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(v.describe() for v in self.violations) or "risk check failed")


class IllegalTransitionError(BagbotError):
    """An order status change that the order state machine forbids."""


class OrderNotFoundError(BagbotError, LookupError):
    """No order row matches the lookup."""


class ExchangeError(BagbotError):
    """Base class of errors that come from talking to an exchange."""


class ExchangeRejectedError(ExchangeError):
    """The exchange definitely refused the order (bad order, funds, symbol, credentials).

    Nothing was placed; the row is ``rejected`` and carries the exchange's message.
    """


class ExchangeUnavailableError(ExchangeError):
    """The exchange could not be reached or answered with a server error.

    For a read (fetch, list) it is safe to retry. For an order placement the router turns
    it into :class:`OrderStatusUnknownError`, because the request may have arrived.
    """


class RateLimitedError(ExchangeUnavailableError):
    """The exchange asked us to slow down; ``retry_after`` is in seconds when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExchangeOrderNotFoundError(ExchangeError):
    """The exchange says it has no order with that id / client order id."""


class OrderStatusUnknownError(ExchangeError):
    """The order may or may not be on the exchange: do NOT resend it.

    Raised when the request may have reached the exchange but no answer came back (timeout,
    dropped connection, 5xx). The row is ``unknown``; ``reconcile`` finds out by client
    order id. Resending would risk a duplicate order.
    """


__all__ = [
    "BagbotError",
    "ConfigurationError",
    "DuplicateNameError",
    "ExchangeError",
    "ExchangeOrderNotFoundError",
    "ExchangeRejectedError",
    "ExchangeUnavailableError",
    "IdempotencyKeyReusedError",
    "IllegalTransitionError",
    "LiveTradingNotAllowedError",
    "OrderNotFoundError",
    "OrderStatusUnknownError",
    "OrderValidationError",
    "PluginError",
    "PluginLoadError",
    "RateLimitedError",
    "RiskCheckError",
    "UnknownConnectorError",
]
