"""Pre-trade risk checks: the types plugins implement and the runner that applies them.

A check is a function of a :class:`RiskContext`, plain or ``async def``. What needs the
network (markets, a reference quote) is fetched by the router *before* the checks run; a
stateful check reads past orders through ``ctx.history`` (:mod:`bagbot_core.history`),
bound to the transaction that holds the user's lock, so its limit holds across processes.
Every registered check runs on every order and every violation is collected: a trader sees
all the reasons at once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

import attrs

from bagbot_core.errors import ConfigurationError
from bagbot_core.money import decimal_text
from bagbot_core.orders import Market, OrderRequest, Quote
from bagbot_core.settings import Settings

if TYPE_CHECKING:
    from bagbot_core.history import History
    from bagbot_core.risk_config import RiskConfig

#: The limits' environment variables (the seed's unprefixed names are aliases, see
#: :mod:`bagbot_core.settings`).
ENV_MAX_ORDER_QTY = "BAGBOT_MAX_ORDER_QTY"
ENV_MAX_ORDER_VALUE_USD = "BAGBOT_MAX_ORDER_VALUE_USD"
ENV_MIN_ORDER_QTY = "BAGBOT_MIN_ORDER_QTY"
#: Comma-separated risk check names to skip, or ``all``: the only way to bypass checks.
ENV_SKIP_RISK_CHECKS = "BAGBOT_SKIP_RISK_CHECKS"
#: The ``BAGBOT_SKIP_RISK_CHECKS`` value that skips every check.
SKIP_ALL = "all"
_FIELD_ENV = {
    "max_order_qty": ENV_MAX_ORDER_QTY,
    "max_order_value_usd": ENV_MAX_ORDER_VALUE_USD,
    "min_order_qty": ENV_MIN_ORDER_QTY,
}

#: Quote currencies valued 1:1 as US dollars by the max-value check.
USD_QUOTES = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USDP", "DAI"})


@attrs.frozen
class RiskLimits:
    """The built-in checks' limits; boundaries are inclusive (``qty == max`` passes).

    :raises ConfigurationError: a limit that is not a finite, positive Decimal, or a
        minimum above the maximum (no order could ever pass: a setup mistake, not a policy).
    """

    max_order_qty: Decimal = Decimal("10.0")
    max_order_value_usd: Decimal = Decimal("100000.0")
    min_order_qty: Decimal = Decimal("0.0001")

    def __attrs_post_init__(self) -> None:
        for field, var in _FIELD_ENV.items():
            value = getattr(self, field)
            if (isinstance(value, bool) or not isinstance(value, Decimal)
                    or not value.is_finite() or value <= 0):
                raise ConfigurationError(
                    f"{field} ({var}) must be a finite Decimal greater than zero, got "
                    f"{value!r}"
                )
        if self.min_order_qty > self.max_order_qty:
            raise ConfigurationError(
                f"min_order_qty ({ENV_MIN_ORDER_QTY}) = {decimal_text(self.min_order_qty)} is "
                f"greater than max_order_qty ({ENV_MAX_ORDER_QTY}) = "
                f"{decimal_text(self.max_order_qty)}: no order could pass; lower the one or "
                "raise the other"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RiskLimits:
        """Read ``BAGBOT_MAX_ORDER_QTY``, ``BAGBOT_MAX_ORDER_VALUE_USD``,
        ``BAGBOT_MIN_ORDER_QTY`` (or the seed's unprefixed aliases) through
        :class:`~bagbot_core.settings.Settings`.

        :raises ConfigurationError: naming the variable when a value is malformed (ASCII
            digits only) or differs from its alias, or both when the minimum is above the
            maximum.
        """
        settings = Settings.from_env(environ, only=_FIELD_ENV)
        kwargs: dict[str, Decimal] = {}
        for field in _FIELD_ENV:
            value = getattr(settings, field)
            if value is not None:
                kwargs[field] = value
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

    ``quote`` is the reference quote for every order type (market and limit), from the
    connector's cache within its staleness bound; ``None`` when none could be had.
    ``reference_price`` is the limit price, or for a market order the quote's ask (buy) or
    bid (sell); ``None`` when no price could be had. ``notional_usd`` is ``amount *
    reference_price`` when the quote currency counts as USD, else ``None``.

    ``testnet`` is where the order goes (a sandbox or loopback host when ``True``).
    ``history`` is the read-only view of the router's own orders, inside the transaction
    that holds the user's lock; ``None`` only for a context built outside the router.
    """

    order: OrderRequest
    connector: str
    user_id: str
    limits: RiskLimits
    markets: Mapping[str, Market]
    quote: Quote | None = None
    testnet: bool = True
    history: History | None = None
    #: Effective limits per user/connector/symbol (:mod:`bagbot_core.risk_config`); ``None``
    #: outside the router: the seed's checks then read ``limits``, the controls stay off.
    config: RiskConfig | None = None

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
#: A plain function or an ``async def`` one.
CheckFunction = Callable[[RiskContext], CheckResult | Awaitable[CheckResult]]


@attrs.frozen
class RiskCheck:
    """A named check a plugin offers through ``bagbot_add_risk_checks``.

    ``name`` is stable: it appears in rejected rows, audit events and ``bagbot plugins``.
    ``prefetch``, if given, is called with the context before any check of the order runs
    (only when ``ctx.history`` is set), to announce the queries the check will make
    (:meth:`~bagbot_core.history.History.expect`): every announced query of the order is
    then fetched in one round trip. It only saves time: the check's answer is the same
    without it.
    """

    name: str
    check: CheckFunction
    description: str = ""
    prefetch: Callable[[RiskContext], None] | None = None


async def run_checks(
    checks: Sequence[RiskCheck], context: RiskContext
) -> list[RiskViolation]:
    """Run every check, in order, awaiting ``async def`` ones, and collect every violation.

    A check that raises is itself a violation (fail closed): an order is never sent because
    the code meant to stop it crashed. Checks run one after another: they share the
    routing transaction, which runs one statement at a time.
    """
    if context.history is not None:
        for check in checks:
            if check.prefetch is not None:
                # A failure here only loses the shared round trip: the check itself still
                # runs, and fails closed if it must.
                with contextlib.suppress(Exception):
                    check.prefetch(context)
    violations: list[RiskViolation] = []
    for check in checks:
        try:
            result = check.check(context)
            if inspect.isawaitable(result):
                result = await result
            found = _violations(check, result)  # a generator may raise while iterated
        except Exception as exc:
            found = [_raised(check, exc)]
        violations.extend(found)
    return violations


def run_checks_sync(checks: Sequence[RiskCheck], context: RiskContext) -> list[RiskViolation]:
    """:func:`run_checks` without an event loop, for plain checks (tests, tools).

    An ``async def`` check cannot run here: it is a violation (fail closed), never a pass.
    """
    violations: list[RiskViolation] = []
    for check in checks:
        try:
            result = check.check(context)
        except Exception as exc:
            violations.append(_raised(check, exc))
            continue
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            violations.append(RiskViolation(
                check.name, "async check cannot run without an event loop (use run_checks)"))
            continue
        try:
            found = _violations(check, result)
        except Exception as exc:
            found = [_raised(check, exc)]
        violations.extend(found)
    return violations


def _raised(check: RiskCheck, exc: Exception) -> RiskViolation:
    return RiskViolation(check.name, f"check raised {type(exc).__name__}: {exc}")


def _violations(check: RiskCheck, result: object) -> list[RiskViolation]:
    """A check's result as violations; anything but violations or ``None`` is one itself."""
    if result is None:
        return []
    if isinstance(result, RiskViolation):
        return [result]
    items: list[object] = list(result) if isinstance(result, Iterable) else [result]
    return [
        item if isinstance(item, RiskViolation) else RiskViolation(
            check.name, f"check returned {type(item).__name__}, expected RiskViolation or None")
        for item in items
    ]


def parse_skip_list(value: str | Iterable[str] | None) -> frozenset[str]:
    """Check names from ``"a, b"`` or an iterable of names; ``None`` reads the environment.

    :raises ConfigurationError: an entry that is not a string.
    """
    if value is None:
        return Settings.from_env(only=("skip_risk_checks",)).skip_risk_checks
    items = value.split(",") if isinstance(value, str) else list(value)
    names = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(
                f"{ENV_SKIP_RISK_CHECKS}: check names are strings, got {type(item).__name__}")
        if item.strip():
            names.add(item.strip())
    return frozenset(names)


def resolve_skipped(requested: frozenset[str], available: Sequence[str]) -> tuple[str, ...]:
    """The check names ``requested`` stands for, in ``available`` order.

    :raises ConfigurationError: naming every unknown entry and the checks that exist: a typo
        must neither skip nothing nor everything.
    """
    if not requested:
        return ()
    if SKIP_ALL in requested:
        if len(requested) > 1:
            raise ConfigurationError(
                f"{ENV_SKIP_RISK_CHECKS}: {SKIP_ALL!r} cannot be combined with check names")
        return tuple(available)
    unknown = sorted(requested.difference(available))
    if unknown:
        raise ConfigurationError(
            f"{ENV_SKIP_RISK_CHECKS}: no risk check named "
            f"{', '.join(ascii(name[:40]) for name in unknown[:5])} (checks: "
            f"{', '.join(available) or 'none'}; or {SKIP_ALL!r})"
        )
    return tuple(name for name in available if name in requested)


def fmt(value: Decimal | None) -> str | None:
    """Decimal as plain text for a violation's ``limit``/``actual``."""
    return decimal_text(value)
