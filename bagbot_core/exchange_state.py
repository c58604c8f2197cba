"""How one exchange answer merges into an order row: apply it, ignore it, or distrust it.

Exchanges answer from replicas that lag and sometimes answer nonsense. The row must only ever
move forward, and only on an answer that adds up. :func:`merge_answer` is the one decision,
a pure function of the row's state and the answer; :func:`bagbot_core.store.apply_exchange_state`
writes what it decides.

**Inconsistent** -- the answer cannot be right, whatever the row says:

* a status that is not an exchange's (``pending``, ``unknown``);
* a negative filled quantity; a negative average price, or a zero one with a fill;
* an average price without a fill, or a fill without an average price (the two always come
  together, from the same answer);
* ``filled`` or ``partially_filled`` with nothing filled; ``rejected`` with a fill;
* more filled than ordered; an order size of zero or less, or larger than the one sent;
* ``filled`` with less than the row's quantity filled, unless the exchange reports the
  order's size as exactly what filled.

"Ordered" is the row's ``qty``; for a market buy it is ``qty * (1 + market_buy_tolerance)``,
a connector's declared slack for exchanges that size market buys in quote currency (Coinbase:
``quote_size = qty x reference price`` buys more base when the price fell, less when it rose,
so such a buy may also end ``filled`` below ``qty``).

**Stale** -- consistent, but older than what the row already records: less filled than
recorded, a status the state machine cannot reach from the row's (``open`` after
``partially_filled``), or any other status after a terminal one. Applying it would move the
row backward, so it is ignored.

**Apply** -- everything else: the status, the filled quantity and the average price of the
answer, together (``open`` with a fill is read as ``partially_filled``). An answer with the
fill already recorded and a later status moves the row to that status.
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from bagbot_core.money import decimal_text, normalize
from bagbot_core.orders import ExchangeOrder, OrderType, Side
from bagbot_core.status import OrderStatus, can_transition

__all__ = ["Apply", "Inconsistent", "Merge", "RowState", "Stale", "answer_summary",
           "merge_answer"]

_ZERO = Decimal(0)
_NOT_EXCHANGE_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.UNKNOWN})


@attrs.frozen
class RowState:
    """What the merge needs to know of an order row."""

    status: OrderStatus
    qty: Decimal
    filled_qty: Decimal = _ZERO
    avg_price: Decimal | None = None
    order_type: OrderType = OrderType.LIMIT
    side: Side = Side.BUY


@attrs.frozen
class Apply:
    """Write this: the answer's status, fill and average price (and ids the row lacks)."""

    status: OrderStatus
    filled_qty: Decimal
    avg_price: Decimal | None
    external_id: str | None
    raw_status: str | None
    reason: str | None


@attrs.frozen
class Stale:
    """An older answer: write nothing."""

    reason: str


@attrs.frozen
class Inconsistent:
    """An answer that does not add up: trust none of it."""

    reason: str


Merge = Apply | Stale | Inconsistent


def merge_answer(
    row: RowState, answer: ExchangeOrder, *, market_buy_tolerance: Decimal = _ZERO
) -> Merge:
    """Decide how ``answer`` merges into ``row`` (see the module docstring for the rules)."""
    problem = _inconsistency(row, answer, market_buy_tolerance)
    if problem is not None:
        return Inconsistent(problem)
    filled = normalize(answer.filled_qty)
    avg = None if filled == 0 else answer.avg_price
    status = answer.status
    if status is OrderStatus.OPEN and filled > 0:
        status = OrderStatus.PARTIALLY_FILLED  # open with a fill is a partial fill
    if row.status.is_terminal and status != row.status:
        return Stale(f"the row is already {row.status}; the exchange answered {status}")
    if filled < row.filled_qty:
        return Stale(f"the answer reports {filled} filled, {normalize(row.filled_qty)} is "
                     "already recorded")
    if not can_transition(row.status, status):
        return Stale(f"{row.status} cannot go back to {status}")
    return Apply(
        status=status,
        filled_qty=filled,
        avg_price=None if avg is None else normalize(avg),
        external_id=answer.external_id or None,
        raw_status=answer.raw_status,
        reason=answer.reason or None,
    )


def _inconsistency(
    row: RowState, answer: ExchangeOrder, market_buy_tolerance: Decimal
) -> str | None:
    """Why ``answer`` cannot be right, or ``None`` when it adds up."""
    status, filled, avg = answer.status, answer.filled_qty, answer.avg_price
    if status in _NOT_EXCHANGE_STATUSES:
        return f"status {status} is not an exchange's order status"
    if not filled.is_finite() or filled < 0:
        return f"filled quantity {filled} is not a quantity"
    if avg is not None and (not avg.is_finite() or avg < 0 or (avg == 0 and filled > 0)):
        return f"average price {avg} with {filled} filled"
    if avg is not None and avg > 0 and filled == 0:
        return f"average price {avg} without a fill"
    if filled > 0 and avg is None:
        return f"{filled} filled without an average price"
    if status in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED) and filled == 0:
        return f"status {status} ({answer.raw_status}) with nothing filled"
    if status is OrderStatus.REJECTED and filled > 0:
        return f"status rejected with {filled} filled"
    quote_sized = (row.order_type is OrderType.MARKET and row.side is Side.BUY
                   and market_buy_tolerance > 0)
    limit = row.qty * (1 + market_buy_tolerance) if quote_sized else row.qty
    if filled > limit:
        return f"{filled} filled of {normalize(row.qty)} ordered"
    amount = answer.amount
    if amount is not None and (not amount.is_finite() or amount <= 0 or amount > limit):
        return f"order size {amount} for {normalize(row.qty)} sent"
    if (status is OrderStatus.FILLED and filled < row.qty and not quote_sized
            and amount != filled):
        return f"status filled with {filled} of {normalize(row.qty)} filled"
    return None


def answer_summary(answer: ExchangeOrder) -> dict[str, str | None]:
    """The answer as text, for a row's ``details`` and the audit log."""

    return {
        "external_id": answer.external_id,
        "status": answer.status.value,
        "exchange_status": answer.raw_status,
        "filled_qty": decimal_text(answer.filled_qty),
        "avg_price": decimal_text(answer.avg_price),
        "amount": decimal_text(answer.amount),
    }
