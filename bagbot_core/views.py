"""Frozen snapshots of order rows, handed to plugins and printed by the CLI.

Plugins get a snapshot, never the live ORM object: a notification hook cannot change an
order's row by accident.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import attrs

from bagbot_core.money import decimal_text
from bagbot_core.status import OrderStatus


@attrs.frozen
class OrderView:
    id: int
    user_id: str
    connector: str
    symbol: str
    side: str
    order_type: str
    qty: Decimal
    price: Decimal | None
    status: OrderStatus
    client_order_id: str
    external_id: str | None
    filled_qty: Decimal
    avg_price: Decimal | None
    testnet: bool
    reason: str | None
    details: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as plain strings, datetimes as ISO 8601."""
        out: dict[str, Any] = {}
        for field in attrs.fields(OrderView):
            value = getattr(self, field.name)
            if isinstance(value, Decimal):
                value = decimal_text(value)
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, OrderStatus):
                value = value.value
            out[field.name] = value
        return out
