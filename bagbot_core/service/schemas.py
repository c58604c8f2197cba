"""The API's request and response models (pydantic): what FastAPI validates and what the
OpenAPI document describes.

Requests refuse unknown fields (``extra="forbid"``): a typo such as ``"prcie"`` must not
turn a limit order into something else. Money and quantities are JSON strings of decimal
digits; a JSON number is refused ("money is a decimal string") because a client's JSON
library has already turned ``0.1`` into a binary float before bagbot could see it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

#: A decimal written plainly: digits, an optional point and fraction (no sign, no exponent).
MONEY_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,18})?$"
_MONEY = re.compile(MONEY_PATTERN)
MONEY_RULE = "money is a decimal string"


def _money(value: object) -> object:
    if not isinstance(value, str) or not _MONEY.fullmatch(value):
        raise PydanticCustomError(
            "money_string", MONEY_RULE + ' of ASCII digits, e.g. "0.01" (a JSON number is '
            "refused: it may already have been rounded to a binary float)")
    return value


def _seconds(value: object) -> object:
    if not isinstance(value, str) or not _MONEY.fullmatch(value):
        raise PydanticCustomError("decimal_string",
                                  'seconds are a decimal string of ASCII digits, e.g. "30"')
    return value


def _no_floats(value: object) -> object:
    """``params`` may hold strings, integers and booleans; a fractional JSON number is
    money or a price in disguise."""
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, float) or (isinstance(item, dict | list) and _has_float(item)):
                raise PydanticCustomError(
                    "money_string", MONEY_RULE + ": write fractional params as strings")
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


# The validator after the Field wraps it: it runs first (its message, not the pattern's),
# and the pattern stays in the OpenAPI document.
Money = Annotated[str, Field(pattern=MONEY_PATTERN, max_length=40, examples=["0.01"]),
                  BeforeValidator(_money)]
Seconds = Annotated[str, Field(pattern=MONEY_PATTERN, max_length=40, examples=["30"]),
                    BeforeValidator(_seconds)]
ConnectorName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", examples=["paper"])]
UserId = Annotated[str, Field(min_length=1, max_length=128)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrderIn(_Request):
    """An order to route (``POST /v1/orders``) or to check (``POST /v1/orders/check``).

    The user is the token's; the idempotency key is the ``Idempotency-Key`` header.
    """

    connector: ConnectorName
    symbol: str = Field(max_length=41, examples=["BTC/USDT"])
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"]
    amount: Money
    price: Money | None = Field(default=None, description="limit orders only")
    params: Annotated[dict[str, Any], BeforeValidator(_no_floats)] = Field(
        default_factory=dict, description="exchange extras the connector declares")
    testnet: bool = Field(default=True, strict=True,
                          description="false needs a live token and BAGBOT_ALLOW_LIVE")

    def payload(self) -> dict[str, Any]:
        """The router's ``order_payload``."""
        out: dict[str, Any] = {"symbol": self.symbol, "side": self.side, "type": self.type,
                               "amount": self.amount}
        if self.price is not None:
            out["price"] = self.price
        if self.params:
            out["params"] = self.params
        return out


class ViolationOut(BaseModel):
    check: str
    reason: str
    limit: str | None = None
    actual: str | None = None


class CheckOut(BaseModel):
    ok: bool
    violations: list[ViolationOut]


class OrderOut(BaseModel):
    """One order row: ``OrderView.as_dict()`` (what ``bagbot orders show --json`` prints)."""

    model_config = ConfigDict(extra="allow")

    id: int
    user_id: str
    connector: str
    symbol: str
    side: str
    order_type: str
    qty: str
    price: str | None
    status: str
    client_order_id: str
    external_id: str | None
    filled_qty: str
    avg_price: str | None
    testnet: bool
    reason: str | None
    details: dict[str, Any] | None
    created_at: str
    updated_at: str


class OrderListOut(BaseModel):
    orders: list[OrderOut]
    limit: int
    offset: int
    next_offset: int | None


class ReconcileIn(_Request):
    connector: ConnectorName
    grace_seconds: Seconds | None = Field(
        default=None, description="seconds a row must be old before an order the exchange "
                                  "does not know is declared rejected (default: the router's)")


class ReconcileOut(BaseModel):
    orders: list[OrderOut]


class StateChangeIn(_Request):
    """``POST /v1/reduce`` and ``/v1/resume``; both scope fields ``null``: everything."""

    user: UserId | None = None
    connector: ConnectorName | None = None
    reason: str = Field(min_length=1, max_length=500)


class HaltIn(StateChangeIn):
    cancel_open: bool = Field(default=False, strict=True)


class IdentityOut(BaseModel):
    token_id: str
    user_id: str
    admin: bool
    live: bool
    expires_at: str | None


class ErrorOut(BaseModel):
    """Every error (and the 202 of an order whose status is unknown)."""

    type: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    order: OrderOut | None = None
