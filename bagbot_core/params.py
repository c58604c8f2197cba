"""Pass-through order ``params``: only what the connector declares, never the order itself.

A payload's ``params`` travel to the connector and on to the exchange. Unchecked they could
carry an order past the risk checks: Binance reads ``quantity``, ``quoteOrderQty`` and
``price`` from them, ccxt prefers a caller's ``newClientOrderId`` to bagbot's, Coinbase takes
a whole ``order_configuration``. So a connector declares the params it accepts
(``Connector.allowed_params``, built with :func:`declare_params`), and the router refuses
every other key -- and any name in :data:`FORBIDDEN_PARAMS`, even when declared -- with
:class:`~bagbot_core.errors.OrderValidationError` before the risk checks, before a row is
written ``pending``, before any request. A connector that declares nothing takes no params.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from bagbot_core.errors import ExchangeRejectedError, OrderValidationError
from bagbot_core.money import normalize, to_decimal
from bagbot_core.orders import OrderRequest, OrderType

__all__ = [
    "FORBIDDEN_PARAMS",
    "MAX_PARAMS",
    "NO_PARAMS",
    "ParamKind",
    "ParamSpec",
    "declare_params",
    "is_forbidden",
    "params_to_send",
    "validate_params",
]

#: More entries than this is refused outright (no connector declares that many).
MAX_PARAMS = 8
#: Longest text value a ``TEXT`` param takes.
MAX_TEXT = 64

#: Names no param may have, compared after :func:`_fold` (case, ``_``/``-`` and width
#: ignored): they would change what the order *is* -- symbol, side, type, amount, cost,
#: price, stop price, client order id -- or where and whether it is placed, in the
#: spellings of bagbot, ccxt and the exchanges.
FORBIDDEN_PARAMS = frozenset({
    # what is traded, and which way
    "symbol", "market", "marketid", "productid", "pair", "instrument", "instrumentid",
    "instid", "side", "positionside", "type", "ordertype", "strategytype",
    # how much
    "amount", "quantity", "qty", "origqty", "size", "basesize", "quotesize",
    "quoteorderqty", "quoteqty", "quoteamount", "cost", "notional", "total", "funds",
    "volume", "icebergqty", "icebergamount", "ismax", "tradablebalance",
    # at what price, or when triggered
    "price", "limitprice", "stopprice", "triggerprice", "stoplossprice",
    "takeprofitprice", "stoploss", "takeprofit", "stopdirection", "triggerdirection",
    "trailingdelta", "trailingpercent", "trailingamount", "callbackrate",
    "activationprice", "activateprice", "trailingtriggerprice", "pricematch",
    "stoplossortakeprofit",
    # which order it is (reconcile finds orders by bagbot's client order id)
    "clientorderid", "newclientorderid", "origclientorderid", "clientoid",
    "clientalgoid", "newclientstrategyid", "clordid", "orderid", "orderlinkid",
    # a whole order shape, or a nested params dict
    "orderconfiguration", "params",
    # a different endpoint, account, margin or answer shape
    "test", "preview", "reduceonly", "closeposition", "marginmode", "margintype",
    "leverage", "isisolated", "sideeffecttype", "hedged", "portfoliomargin", "papi",
    "retailportfolioid", "portfolioid", "subaccount", "account", "neworderresptype",
    "isalgoorder", "sor",
})


def _fold(name: str) -> str:
    """``name`` compared loosely: NFKC, case-folded, letters and digits only."""
    return "".join(c for c in unicodedata.normalize("NFKC", name).casefold() if c.isalnum())


def is_forbidden(name: str) -> bool:
    """Would a param called ``name`` (in any case or spelling) change the order itself?"""
    return _fold(name) in FORBIDDEN_PARAMS


def _show(value: object, size: int = 40) -> str:
    """Untrusted text for an error message: cut, and escaped to printable ASCII."""
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:size]) + ("..." if len(text) > size else "")


class ParamKind(enum.StrEnum):
    """The type of a param's value."""

    #: ``True`` or ``False`` (a JSON boolean), nothing else.
    BOOL = "bool"
    #: A printable ASCII string of at most :data:`MAX_TEXT` characters.
    TEXT = "text"
    #: A positive number as ``Decimal``, ``int`` or a numeric string; sent as a plain string.
    DECIMAL = "decimal"


def _frozen_choices(value: Iterable[str] | None) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _frozen_types(value: Iterable[OrderType] | None) -> frozenset[OrderType] | None:
    return None if value is None else frozenset(OrderType(v) for v in value)


@attrs.frozen
class ParamSpec:
    """One pass-through param a connector accepts.

    :ivar name: the key, exactly as the caller writes it and the connector sends it.
    :ivar kind: the value's type.
    :ivar choices: for ``TEXT``, the only values accepted (exact, case-sensitive).
    :ivar order_types: the order types it applies to; ``None`` for every type.
    :ivar description: one line for docs and error messages.
    """

    name: str
    kind: ParamKind = ParamKind.TEXT
    choices: frozenset[str] | None = attrs.field(default=None, converter=_frozen_choices)
    order_types: frozenset[OrderType] | None = attrs.field(
        default=None, converter=_frozen_types)
    description: str = ""

    def check(self, value: object) -> Any:
        """``value`` as it is sent on, or :class:`OrderValidationError` naming the param."""
        what = f"params: {_show(self.name)}"
        if self.kind is ParamKind.BOOL:
            if type(value) is not bool:
                raise OrderValidationError(f"{what} must be true or false, got "
                                           f"{type(value).__name__}")
            return value
        if self.kind is ParamKind.DECIMAL:
            if isinstance(value, float):
                raise OrderValidationError(f"{what} must be a decimal string, not a float")
            return format(normalize(to_decimal(value, what)), "f")
        if not isinstance(value, str):
            raise OrderValidationError(f"{what} must be a string, got {type(value).__name__}")
        if self.choices is not None:
            if value not in self.choices:
                raise OrderValidationError(
                    f"{what} must be one of {', '.join(sorted(self.choices))}; got "
                    f"{_show(value, 20)}")
            return value
        if not value or len(value) > MAX_TEXT or not (value.isascii() and value.isprintable()):
            raise OrderValidationError(
                f"{what} must be 1-{MAX_TEXT} printable ASCII characters")
        return value


def declare_params(*specs: ParamSpec) -> Mapping[str, ParamSpec]:
    """A connector's ``allowed_params``: the specs by name, read-only.

    :raises ValueError: a spec's name is in :data:`FORBIDDEN_PARAMS` or given twice -- a
        connector cannot open what the core keeps shut.
    """
    allowed: dict[str, ParamSpec] = {}
    for spec in specs:
        if is_forbidden(spec.name):
            raise ValueError(f"param {spec.name!r} would change the order itself; it cannot "
                             "be declared")
        if spec.name in allowed:
            raise ValueError(f"param {spec.name!r} is declared twice")
        allowed[spec.name] = spec
    return MappingProxyType(allowed)


def validate_params(
    params: Mapping[str, Any], allowed: Mapping[str, ParamSpec], *,
    order_type: OrderType, connector: str,
) -> dict[str, Any]:
    """The order's ``params`` checked against ``allowed``, as they may be sent.

    Refused: more than :data:`MAX_PARAMS` entries; a key that is not a string, not declared
    (exact name) or forbidden; a value of the wrong type or outside the choices; a param
    declared for other order types.

    :raises OrderValidationError: for the first problem, naming the key (escaped and cut).
    """
    if not params:
        return {}
    if len(params) > MAX_PARAMS:
        raise OrderValidationError(f"params: at most {MAX_PARAMS} entries, got {len(params)}")
    accepted = ", ".join(sorted(allowed)) or "none"
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise OrderValidationError(f"params: keys must be strings, got {_show(key)}")
        if is_forbidden(key):
            raise OrderValidationError(
                f"params: {_show(key)} is refused: params cannot change the symbol, side, "
                "type, amount, cost, price, stop price or client order id of an order")
        spec = allowed.get(key)
        if spec is None or spec.name != key:
            raise OrderValidationError(
                f"params: {_show(key)} is not accepted by {connector} (accepted: {accepted})")
        if spec.order_types is not None and order_type not in spec.order_types:
            kinds = " or ".join(sorted(t.value for t in spec.order_types))
            raise OrderValidationError(
                f"params: {_show(key)} applies to {kinds} orders only, not {order_type.value}")
        clean[key] = spec.check(value)
    return clean


def params_to_send(
    order: OrderRequest, allowed: Mapping[str, ParamSpec], *, connector: str
) -> dict[str, Any]:
    """:func:`validate_params` again, inside a connector's ``create_order``, just before
    the request is built.

    The router has already validated; this guards callers that reach the connector
    directly. Nothing has been sent, so a problem is a definite refusal.

    :raises ExchangeRejectedError: the :func:`validate_params` message, "nothing was sent".
    """
    try:
        return validate_params(order.params, allowed, order_type=order.type,
                               connector=connector)
    except OrderValidationError as exc:
        raise ExchangeRejectedError(f"{exc}; nothing was sent") from None


#: The empty declaration: no params accepted (``Connector.allowed_params``' default).
NO_PARAMS: Mapping[str, ParamSpec] = MappingProxyType({})
