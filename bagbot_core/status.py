"""Order statuses and the state machine that moves between them.

A status only changes through :func:`check_transition`: terminal statuses never change
again, and nothing goes back to ``pending``. ``unknown`` means "we sent it and do not know
whether the exchange has it"; only the exchange's answer (through sync or reconcile) moves
it on.
"""

from __future__ import annotations

import enum

from bagbot_core.errors import IllegalTransitionError


class OrderStatus(enum.StrEnum):
    PENDING = "pending"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_LIVE = {OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED}
_ANY_EXCHANGE_STATE = _LIVE | TERMINAL_STATUSES

#: Allowed ``from -> {to}``. Staying in the same status is always allowed (an idempotent
#: update, e.g. a second sync that finds nothing new).
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(_ANY_EXCHANGE_STATE | {OrderStatus.UNKNOWN}),
    OrderStatus.UNKNOWN: frozenset(_ANY_EXCHANGE_STATE),
    OrderStatus.OPEN: frozenset(_ANY_EXCHANGE_STATE),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        {
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELED,
            OrderStatus.EXPIRED,
        }
    ),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


def can_transition(current: OrderStatus | str, new: OrderStatus | str) -> bool:
    """Whether ``current -> new`` is legal (same status counts as legal)."""
    current, new = OrderStatus(current), OrderStatus(new)
    return current == new or new in TRANSITIONS[current]


def check_transition(current: OrderStatus | str, new: OrderStatus | str) -> OrderStatus:
    """Return ``new`` as an :class:`OrderStatus`, or raise if the move is illegal.

    :raises IllegalTransitionError: e.g. ``filled -> open`` or anything ``-> pending``.
    """
    if not can_transition(current, new):
        raise IllegalTransitionError(f"order status cannot change from {current} to {new}")
    return OrderStatus(new)
