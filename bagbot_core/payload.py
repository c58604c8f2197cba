"""Turning a caller's ``order_payload`` dict into a validated :class:`OrderRequest`.

This is the boundary where untrusted input stops: after :func:`parse_order_payload`
everything is typed, exact and within storage limits. Every refusal is an
:class:`~bagbot_core.errors.OrderValidationError` whose message says what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bagbot_core.errors import OrderValidationError
from bagbot_core.money import to_decimal
from bagbot_core.orders import OrderRequest, OrderType, Side

#: ``BASE/QUOTE``: letters and digits, 1-20 characters each side.
SYMBOL_RE = re.compile(r"[A-Z0-9]{1,20}/[A-Z0-9]{1,20}")
#: Caller-supplied idempotency keys: safe for every supported exchange's id rules.
CLIENT_ORDER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,36}")

#: Connector names: 1-64 ASCII characters, so that every database stores them alike (the
#: ``connector`` column is ``VARCHAR(64)``) and no name can carry control characters.
CONNECTOR_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

KNOWN_KEYS = frozenset({"symbol", "side", "type", "amount", "price", "params", "client_order_id"})


def check_connector_name(name: object) -> bool:
    """Is ``name`` a valid connector name (:data:`CONNECTOR_NAME_RE`)?"""
    return isinstance(name, str) and CONNECTOR_NAME_RE.fullmatch(name) is not None


def connector_name_error(name: object) -> OrderValidationError:
    """The refusal of an invalid connector name; the value shown escaped and clipped."""
    shown = ascii(name[:40]) if isinstance(name, str) else f"a {type(name).__name__}"
    return OrderValidationError(
        f"connector must be 1-64 characters of letters, digits, '_', '.' or '-', got {shown}"
    )


def storable_connector_name(name: object) -> str:
    """An invalid connector name as a row can hold it: ASCII-escaped, at most 64 characters.

    Identical on every database: no NUL, no surrogate, no length the column refuses.
    """
    text = name if isinstance(name, str) else f"<{type(name).__name__}>"
    return ascii(text)[1:-1][:64]


def _text(payload: Mapping[str, Any], key: str) -> str:
    if key not in payload or payload[key] is None:
        raise OrderValidationError(f"missing required field {key!r}")
    value = payload[key]
    if not isinstance(value, str):
        raise OrderValidationError(f"{key} must be a string, got {type(value).__name__}")
    return value


def parse_order_payload(payload: object) -> OrderRequest:
    """Validate ``payload`` and return the order it describes.

    Fields: ``symbol`` (``BASE/QUOTE``, case-insensitive), ``side`` (``buy``/``sell``),
    ``type`` (``market``/``limit``), ``amount`` (> 0), ``price`` (limit orders only),
    optional ``params`` (a dict of connector extras, checked later against what the connector
    declares: :mod:`bagbot_core.params`) and ``client_order_id`` (the
    idempotency key, ``[A-Za-z0-9_-]{1,36}``). Amounts and prices: see
    :func:`~bagbot_core.money.to_decimal`. Unknown keys are refused, so a typo such as
    ``"prcie"`` cannot turn a limit order into something else.

    :raises OrderValidationError: for the first problem found.
    """
    if not isinstance(payload, Mapping):
        raise OrderValidationError(
            f"order_payload must be a mapping, got {type(payload).__name__}"
        )
    unknown = [str(k) for k in payload if k not in KNOWN_KEYS]
    if unknown:
        raise OrderValidationError(
            f"unknown field(s) {', '.join(repr(k[:40]) for k in sorted(unknown)[:5])}; "
            f"allowed: {', '.join(sorted(KNOWN_KEYS))}"
        )

    symbol = _text(payload, "symbol").strip().upper()
    if not SYMBOL_RE.fullmatch(symbol):
        raise OrderValidationError(
            f"symbol must look like BASE/QUOTE (e.g. BTC/USDT), got {symbol[:40]!r}"
        )
    side_text = _text(payload, "side").strip().lower()
    try:
        side = Side(side_text)
    except ValueError:
        raise OrderValidationError(
            f"side must be 'buy' or 'sell', got {side_text[:20]!r}"
        ) from None
    type_text = _text(payload, "type").strip().lower()
    try:
        order_type = OrderType(type_text)
    except ValueError:
        raise OrderValidationError(
            f"type must be 'market' or 'limit', got {type_text[:20]!r}"
        ) from None

    if payload.get("amount") is None:
        raise OrderValidationError("missing required field 'amount'")
    amount = to_decimal(payload["amount"], "amount")

    raw_price = payload.get("price")
    if order_type is OrderType.LIMIT:
        if raw_price is None:
            raise OrderValidationError("a limit order needs a price")
        price = to_decimal(raw_price, "price")
    else:
        if raw_price is not None:
            raise OrderValidationError(
                "a market order takes no price (use type 'limit' to set one)"
            )
        price = None

    params = payload.get("params") or {}
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise OrderValidationError("params must be a mapping with string keys")

    client_order_id = payload.get("client_order_id")
    if client_order_id is not None and (
        not isinstance(client_order_id, str) or not CLIENT_ORDER_ID_RE.fullmatch(client_order_id)
    ):
        raise OrderValidationError(
            "client_order_id must be 1-36 characters of letters, digits, '_' or '-'"
        )

    return OrderRequest(
        symbol=symbol, side=side, type=order_type, amount=amount, price=price,
        params=dict(params), client_order_id=client_order_id,
    )
