"""Trading states -- the kill switch: ACTIVE, REDUCING or HALTED, per scope, in the database.

A scope is global, one connector, one user, or one user on one connector. The state that
applies to an order is the most restrictive of every scope that covers it (HALTED over
REDUCING over ACTIVE), so an operator can stop everything, one exchange or one user without
knowing what the others set. A scope never set is ACTIVE: until someone changes a state,
bagbot routes as before.

* HALTED: every new order is refused; cancels, syncs and reconciles still work.
* REDUCING: an order passes only if it reduces the user's net filled position in the
  symbol's base asset on that connector -- a sell up to the long position, a buy up to the
  short one, counting live orders already on the way in the same direction.
* ACTIVE: no restriction from this control.

States live in bagbot's database (``trading_states``: the current state per scope, with
who set it, when and why; ``trading_state_changes``: every change, kept), so every process
routing into that database obeys a halt at its next order: the ``trading_state`` check
reads them on the routing transaction, one primary-key lookup per order. Every change is
also one ``trading_state_changed`` audit event.

SQLAlchemy is imported by the functions that query, not by this module: registering the
check stays as cheap as the other built-in ones.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs

from bagbot_core import audit
from bagbot_core.errors import ConfigurationError
from bagbot_core.orders import Side
from bagbot_core.payload import check_connector_name
from bagbot_core.risk import RiskCheck, RiskContext, RiskViolation, fmt

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bagbot_core.models import Order, TradingStateRow

#: The check's stable name, as rejected rows and audit events carry it.
CHECK_NAME = "trading_state"
#: Longest reason kept; an operator's note, not a document.
MAX_REASON = 500
#: What the ``user_id``/``connector`` columns hold for "any".
_ANY = ""


class TradingState(enum.StrEnum):
    """From least to most restrictive."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@attrs.frozen
class Scope:
    """Who a state applies to; ``None`` means any (both ``None``: global)."""

    user_id: str | None = None
    connector: str | None = None

    @property
    def kind(self) -> str:
        if self.user_id is None:
            return "global" if self.connector is None else "connector"
        return "user" if self.connector is None else "user_connector"

    def describe(self) -> str:
        if self.user_id is None:
            return "global" if self.connector is None else f"connector {self.connector}"
        where = "" if self.connector is None else f" on {self.connector}"
        return f"user {self.user_id}{where}"

    @property
    def breadth(self) -> int:
        """0 for global up to 3 for a user on a connector: ties go to the broader scope."""
        return ("global", "connector", "user", "user_connector").index(self.kind)

    @classmethod
    def from_columns(cls, user_id: str, connector: str) -> Scope:
        return cls(user_id or None, connector or None)


@attrs.frozen
class ScopeState:
    """A scope's current state and who set it, when and why."""

    scope: Scope
    state: TradingState
    reason: str
    who: str
    changed_at: dt.datetime

    def describe(self) -> str:
        """``by WHO since WHEN (SCOPE): REASON``."""
        when = self.changed_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"by {self.who} since {when} ({self.scope.describe()}): {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"scope": self.scope.kind, "user_id": self.scope.user_id,
                "connector": self.scope.connector, "state": self.state.value,
                "reason": self.reason, "who": self.who,
                "changed_at": self.changed_at.isoformat()}

    @classmethod
    def from_row(cls, row: Any) -> ScopeState:
        """From a row of :data:`_COLUMNS` (plain columns: never a cached, stale object)."""
        return cls(Scope.from_columns(row.user_id, row.connector), TradingState(row.state),
                   row.reason, row.who, row.changed_at)


@attrs.frozen
class EffectiveState:
    """The state that applies to an order; ``source`` is the scope that decided it
    (``None``: ACTIVE because no covering scope is restricted)."""

    state: TradingState
    source: ScopeState | None = None


@attrs.frozen
class CancelOutcome:
    """One open order ``bagbot halt --cancel-open`` tried to cancel: its row (as recorded
    after the attempt) and the error, if the cancel failed."""

    order: Order
    error: Exception | None = None


@attrs.frozen
class StateChange:
    """One recorded change; ``canceled`` lists the cancels a halt asked for."""

    id: int
    scope: Scope
    state: TradingState
    previous: TradingState | None
    reason: str
    who: str
    changed_at: dt.datetime
    canceled: tuple[CancelOutcome, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "scope": self.scope.kind, "user_id": self.scope.user_id,
                "connector": self.scope.connector, "state": self.state.value,
                "previous": None if self.previous is None else self.previous.value,
                "reason": self.reason, "who": self.who,
                "changed_at": self.changed_at.isoformat()}


def most_restrictive(states: Iterable[ScopeState]) -> EffectiveState:
    """HALTED over REDUCING over ACTIVE; among equals, the broadest scope is named."""
    chosen: ScopeState | None = None
    for item in states:
        if item.state is TradingState.ACTIVE:
            continue
        if chosen is None or (item.state.rank, -item.scope.breadth) > (
                chosen.state.rank, -chosen.scope.breadth):
            chosen = item
    return EffectiveState(TradingState.ACTIVE) if chosen is None else EffectiveState(
        chosen.state, chosen)


# -- validation -----------------------------------------------------------------------------


def _name(value: object, what: str, size: int) -> str:
    if (not isinstance(value, str) or not value.strip() or len(value) > size
            or not value.isprintable()):
        raise ConfigurationError(
            f"{what} must be a non-empty string of at most {size} printable characters, "
            f"got {ascii(value)[:60]}")
    return value


def make_scope(user_id: str | None = None, connector: str | None = None) -> Scope:
    """:raises ConfigurationError: a user id or connector name no order could carry."""
    if user_id is not None:
        _name(user_id, "user_id", 128)
    if connector is not None and not check_connector_name(connector):
        raise ConfigurationError(
            "connector must be 1-64 characters of letters, digits, '_', '.' or '-', got "
            f"{ascii(connector)[:60]}")
    return Scope(user_id, connector)


def check_change(*, user_id: str | None, connector: str | None, reason: object, who: object
                 ) -> tuple[Scope, str, str]:
    """The scope, reason and who of a change, as stored.

    :raises ConfigurationError: an invalid user id or connector name, an empty reason (or
        one over :data:`MAX_REASON` characters), an empty who.
    """
    return make_scope(user_id, connector), _reason(reason), _name(who, "who", 128)


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError("a trading state change needs a reason (non-empty text)")
    from bagbot_core.store import storable

    text = storable(value.strip())
    if len(text) > MAX_REASON:
        raise ConfigurationError(
            f"reason is {len(text)} characters; at most {MAX_REASON} are kept")
    return text


# -- reading and writing --------------------------------------------------------------------


def read_states(session: Session, user_id: str, connector: str) -> list[ScopeState]:
    """Every set scope covering ``user_id`` on ``connector``: one primary-key lookup.

    Neither commits nor writes: the router runs it on its routing transaction.
    """
    rows = session.execute(_read_statement(), {"any_user": _ANY, "user_id": user_id,
                                               "any_connector": _ANY, "connector": connector})
    return [ScopeState.from_row(row) for row in rows]


@functools.cache
def _read_statement() -> Any:
    """:func:`read_states`'s query, built once (with bound parameters, no expanding IN)."""
    from sqlalchemy import bindparam, select

    from bagbot_core.models import TradingStateRow

    return select(*_columns(TradingStateRow)).where(
        TradingStateRow.user_id.in_([bindparam("any_user"), bindparam("user_id")]),
        TradingStateRow.connector.in_([bindparam("any_connector"), bindparam("connector")]))


def _columns(table: type[TradingStateRow]) -> tuple[Any, ...]:
    return (table.user_id, table.connector, table.state, table.reason, table.who,
            table.changed_at)


def effective_state(session: Session, *, user_id: str, connector: str) -> EffectiveState:
    """The state that applies to ``user_id``'s next order on ``connector``."""
    states = read_states(session, user_id, connector)
    session.commit()
    return most_restrictive(states)


def scope_states(session: Session) -> list[ScopeState]:
    """Every scope ever set, broadest first (global, connectors, users, users on a
    connector), then by name."""
    from sqlalchemy import select

    from bagbot_core.models import TradingStateRow

    states = [ScopeState.from_row(row)
              for row in session.execute(select(*_columns(TradingStateRow)))]
    session.commit()
    return sorted(states, key=lambda s: (s.scope.breadth, s.scope.connector or "",
                                         s.scope.user_id or ""))


def state_changes(session: Session, *, limit: int = 100) -> list[StateChange]:
    """The latest ``limit`` changes, newest first."""
    from sqlalchemy import select

    from bagbot_core.models import TradingStateChange

    rows = session.scalars(select(TradingStateChange).order_by(
        TradingStateChange.id.desc()).limit(limit))
    changes = [StateChange(
        row.id, Scope.from_columns(row.user_id, row.connector), TradingState(row.state),
        None if row.previous is None else TradingState(row.previous), row.reason, row.who,
        row.changed_at) for row in rows]
    session.commit()
    return changes


def set_trading_state(
    db: Session, state: TradingState | str, *, user_id: str | None = None,
    connector: str | None = None, reason: str, who: str,
) -> StateChange:
    """Set the state of one scope (both ``None``: global), record the change, commit it, and
    log one ``trading_state_changed`` audit event.

    Routing processes see it at their next order. Setting ACTIVE lifts this scope's own
    restriction only: a broader scope that is still halted keeps applying.

    :raises ConfigurationError: an unknown state, an invalid scope, an empty reason or who.
    """
    from sqlalchemy import select

    from bagbot_core.models import TradingStateChange, TradingStateRow, utcnow

    try:
        new = TradingState(state)
    except ValueError:
        raise ConfigurationError(
            f"trading state must be one of {', '.join(s.value for s in TradingState)}, got "
            f"{ascii(state)[:40]}") from None
    scope, text, who = check_change(user_id=user_id, connector=connector, reason=reason,
                                    who=who)
    key = (scope.user_id or _ANY, scope.connector or _ANY)
    now = utcnow()
    try:
        if session_dialect(db) == "postgresql":
            # Changes queue for each other; the router's reads (ACCESS SHARE) never wait.
            db.execute(_lock_statement())
        row = db.scalars(select(TradingStateRow).where(
            TradingStateRow.user_id == key[0], TradingStateRow.connector == key[1])
            .execution_options(populate_existing=True)).first()  # as stored, not as cached
        previous = None if row is None else TradingState(row.state)
        if row is None:
            row = TradingStateRow(user_id=key[0], connector=key[1])
            db.add(row)
        row.state, row.reason, row.who, row.changed_at = new.value, text, who, now
        change = TradingStateChange(user_id=key[0], connector=key[1], state=new.value,
                                    previous=None if previous is None else previous.value,
                                    reason=text, who=who, changed_at=now)
        db.add(change)
        db.flush()
        change_id = change.id
        db.commit()
    except BaseException:
        db.rollback()
        raise
    log = audit.get_logger(user_id=scope.user_id, connector=scope.connector)
    (log.info if new is TradingState.ACTIVE else log.warning)(
        "trading_state_changed", scope=scope.kind, state=new.value,
        previous=None if previous is None else previous.value, reason=text, who=who,
        change_id=change_id)
    return StateChange(change_id, scope, new, previous, text, who, now)


#: The name the design notes use.
set_state = set_trading_state


def session_dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _lock_statement() -> Any:
    from sqlalchemy import text

    return text("LOCK TABLE trading_states IN SHARE ROW EXCLUSIVE MODE")


def open_orders(session: Session, *, user_id: str | None = None,
                connector: str | None = None) -> list[Order]:
    """The scope's orders that can be canceled (open, partially filled), oldest first.

    ``pending`` and ``unknown`` rows are left to reconcile: they may still be on their way.
    """
    from sqlalchemy import select

    from bagbot_core.models import Order
    from bagbot_core.status import OrderStatus

    query = select(Order).where(Order.status.in_(
        (OrderStatus.OPEN.value, OrderStatus.PARTIALLY_FILLED.value)))
    if user_id is not None:
        query = query.where(Order.user_id == user_id)
    if connector is not None:
        query = query.where(Order.connector == connector)
    rows = list(session.scalars(query.order_by(Order.id)))
    session.commit()
    return rows


# -- the check ------------------------------------------------------------------------------


async def trading_state(ctx: RiskContext) -> RiskViolation | None:
    """The ``trading_state`` risk check (see the module docstring).

    Fails closed: without ``ctx.history`` (a context built outside the router) the state
    cannot be read, and the order is refused.
    """
    history = ctx.history
    if history is None:
        return RiskViolation(CHECK_NAME, "no database view in the risk context: the trading "
                             "state cannot be read")
    states: Sequence[ScopeState] = [ScopeState.from_row(row) for row in
                                    await history.trading_state_rows(ctx.connector)]
    effective = most_restrictive(states)
    source = effective.source
    if source is None:
        return None
    order = ctx.order
    limit = f"{effective.state.value} ({source.scope.describe()})"
    wanted = f"{order.side} {fmt(order.amount)} {order.base}"
    if effective.state is TradingState.HALTED:
        return RiskViolation(
            CHECK_NAME, f"trading is halted {source.describe()}; no new orders (cancels "
            "still work)", limit=limit, actual=f"new order: {wanted}")
    base = order.base
    position = await history.position(base, connector=ctx.connector)
    live = await history.live_quantity(base, order.side, connector=ctx.connector)
    if order.amount <= reducible(position, live, order.side):
        return None
    direction = f"{order.side}s"
    return RiskViolation(
        CHECK_NAME,
        f"trading is reducing-only {source.describe()}; a {wanted} would not reduce the "
        f"position of {fmt(position)} {base} on {ctx.connector} ({fmt(live)} {base} already "
        f"in live {direction})", limit=limit,
        actual=f"{wanted}; position {fmt(position)} {base}, live {direction} {fmt(live)}")


def reducible(position: Decimal, live_same_side: Decimal, side: Side) -> Decimal:
    """How much an order on ``side`` may trade under REDUCING (``<= 0``: nothing)."""
    return (position if side == Side.SELL else -position) - live_same_side


def _prefetch(ctx: RiskContext) -> None:
    """The scopes' rows, fetched with the order's other queries (see ``RiskCheck.prefetch``)."""
    if ctx.history is not None:
        ctx.history.expect("trading_state_rows", ctx.connector)


TRADING_STATE_CHECK = RiskCheck(
    CHECK_NAME, trading_state,
    "trading state (bagbot halt|reduce|resume) of the global, connector and user scope: "
    "halted refuses every order, reducing all but position-reducing ones",
    prefetch=_prefetch,
)
