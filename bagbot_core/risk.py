"""Pre-trade risk checks: the types plugins implement and the runner that applies them.

A check is a plain synchronous function of a :class:`RiskContext`. Everything that needs I/O
(markets, a reference price) is fetched by the router *before* the checks run, so checks are
pure, cheap and property-testable. Every registered check runs on every order and every
violation is collected: a trader sees all the reasons at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal

import attrs

from bagbot_core.money import decimal_text, parse_setting
from bagbot_core.orders import Market, OrderRequest, Quote

#: The seed's environment variables and defaults.
ENV_MAX_ORDER_QTY = "MAX_ORDER_QTY"
ENV_MAX_ORDER_VALUE_USD = "MAX_ORDER_VALUE_USD"
ENV_MIN_ORDER_QTY = "MIN_ORDER_QTY"

#: Quote currencies valued 1:1 as US dollars by the max-value check.
USD_QUOTES = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USDP", "DAI"})


@attrs.frozen
class RiskLimits:
    """The built-in checks' limits; boundaries are inclusive (``qty == max`` passes)."""

    max_order_qty: Decimal = Decimal("10.0")
    max_order_value_usd: Decimal = Decimal("100000.0")
    min_order_qty: Decimal = Decimal("0.0001")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RiskLimits:
        """Read ``MAX_ORDER_QTY``, ``MAX_ORDER_VALUE_USD``, ``MIN_ORDER_QTY``.

        :raises ConfigurationError: naming the variable when a value is malformed.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Decimal] = {}
        for var, field in (
            (ENV_MAX_ORDER_QTY, "max_order_qty"),
            (ENV_MAX_ORDER_VALUE_USD, "max_order_value_usd"),
            (ENV_MIN_ORDER_QTY, "min_order_qty"),
        ):
            raw = env.get(var)
            if raw is not None and raw.strip():
                kwargs[field] = parse_setting(raw, var)
        return cls(**kwargs)


@attrs.frozen
class RiskViolation:
    """Why a check refused an order: the check's name, its limit and the actual value."""

    check: str
    reason: str
    limit: str | None = None
    actual: str | None = None

    def describe(self) -> str:
        return f"{self.check}: {self.reason}"

    def as_dict(self) -> dict[str, str | None]:
        return {"check": self.check, "reason": self.reason, "limit": self.limit,
                "actual": self.actual}


@attrs.frozen
class RiskContext:
    """Everything a check may look at. ``market`` is ``None`` when the symbol is unknown.

    ``reference_price`` is the limit price, or for a market order the quote's ask (buy) or
    bid (sell); ``None`` when no price could be had. ``notional_usd`` is ``amount *
    reference_price`` when the quote currency counts as USD, else ``None``.
    """

    order: OrderRequest
    connector: str
    user_id: str
    limits: RiskLimits
    markets: Mapping[str, Market]
    quote: Quote | None = None

    @property
    def market(self) -> Market | None:
        return self.markets.get(self.order.symbol)

    @property
    def reference_price(self) -> Decimal | None:
        if self.order.price is not None:
            return self.order.price
        if self.quote is None:
            return None
        return self.quote.reference_price(self.order.side)

    @property
    def notional_usd(self) -> Decimal | None:
        price = self.reference_price
        if price is None or self.order.quote.upper() not in USD_QUOTES:
            return None
        return self.order.amount * price


CheckResult = RiskViolation | Iterable[RiskViolation] | None
CheckFunction = Callable[[RiskContext], CheckResult]


@attrs.frozen
class RiskCheck:
    """A named check a plugin offers through ``bagbot_add_risk_checks``.

    ``name`` is stable: it appears in rejected rows, audit events and ``bagbot plugins``.
    """

    name: str
    check: CheckFunction
    description: str = ""


def run_checks(checks: Sequence[RiskCheck], context: RiskContext) -> list[RiskViolation]:
    """Run every check and collect every violation.

    A check that raises is itself a violation (fail closed): an order is never sent because
    the code meant to stop it crashed.
    """
    violations: list[RiskViolation] = []
    for check in checks:
        try:
            result = check.check(context)
        except Exception as exc:
            violations.append(
                RiskViolation(check.name, f"check raised {type(exc).__name__}: {exc}")
            )
            continue
        if result is None:
            continue
        if isinstance(result, RiskViolation):
            violations.append(result)
            continue
        items: list[object] = list(result) if isinstance(result, Iterable) else [result]
        for item in items:
            if isinstance(item, RiskViolation):
                violations.append(item)
            else:
                violations.append(
                    RiskViolation(
                        check.name,
                        f"check returned {type(item).__name__}, expected RiskViolation or None",
                    )
                )
    return violations


def fmt(value: Decimal | None) -> str | None:
    """Decimal as plain text for a violation's ``limit``/``actual``."""
    return decimal_text(value)
