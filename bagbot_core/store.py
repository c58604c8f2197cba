"""Reading and writing order rows. Synchronous functions of a SQLAlchemy ``Session``.

Every function here ends the transaction it opened (commit, even after a read): the
router calls the exchange between database steps, and on SQLite an open transaction would
hold the file's write lock across that network call.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from bagbot_core import notional, positions
from bagbot_core.db import RELAXED_SYNC
from bagbot_core.errors import OrderNotFoundError
from bagbot_core.exchange_state import (
    Apply,
    Inconsistent,
    Merge,
    RowState,
    answer_summary,
    merge_answer,
)
from bagbot_core.models import Order, utcnow
from bagbot_core.orders import ExchangeOrder, OrderType, Side
from bagbot_core.status import OrderStatus, check_transition

MAX_PAGE = 1000


class ClientOrderIdTaken(Exception):
    """The unique ``client_order_id`` already has a row (a concurrent or repeated call)."""


def commit(session: Session, *, durable: bool = True) -> None:
    """Commit; ``durable=False`` lets the database acknowledge before its log is on disk.

    Only for writes that reconcile can redo: recording an exchange's answer on a row whose
    ``pending`` state was committed durably before the order was sent. A power loss may then
    drop that answer -- the row is back to ``pending`` and reconcile asks the exchange again
    -- but never the row itself, and never corrupts the database. A crash of the process
    alone loses nothing either way. (SQLite: ``synchronous=NORMAL`` for this commit, made
    durable by the next full commit's sync of the WAL, and only when this commit opens its
    transaction; PostgreSQL: ``SET LOCAL synchronous_commit = off``.) Saves one disk flush
    per routed order.
    """
    if durable:
        session.commit()
        return
    token = RELAXED_SYNC.set(True)
    try:
        connection = session.connection()  # begins the transaction if none is open
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
        session.commit()
    finally:
        RELAXED_SYNC.reset(token)


# NUL (PostgreSQL refuses it in text and JSON) and lone surrogates (what Python makes of
# bytes that are not UTF-8, e.g. in argv: no driver can encode them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Free text (exchange messages, error texts, argv) as every database can store it:
    NUL and lone surrogates become U+FFFD."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def storable_value(value: Any) -> Any:
    """``value`` with :func:`storable` applied to every string in it, keys included
    (the ``details`` JSON: a refused order quotes its hostile input there)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_value(k): storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_value(v) for v in value]
    return value


def insert_order(session: Session, *, commit: bool = True, **fields: Any) -> Order:
    """Insert and commit one row; every text field is made :func:`storable` first.

    One Core ``INSERT`` (no unit-of-work flush: the row is new and alone); the returned
    :class:`Order` is attached to ``session`` as the persistent row it is. ``commit=False``
    leaves the transaction open (the caller commits or rolls back; a rollback leaves the
    object expired, its row gone); a failed insert still rolls it back.

    :raises ClientOrderIdTaken: when ``client_order_id`` already exists (nothing written).
    """
    fields = {k: storable_value(v) for k, v in fields.items()}
    order = Order(**fields)  # refuses an unknown field, as before
    now = utcnow()
    values = {**_INSERT_DEFAULTS, "created_at": now, "updated_at": now, **fields}
    if values["status"] is None:
        values["status"] = OrderStatus.PENDING.value
    try:
        connection = session.connection()
        bucket = notional.insert_of(values)
        # With a session that expires on commit, the row comes back as the database holds
        # it (RETURNING), so the commit's expiry costs no reload.
        returning = session.expire_on_commit
        if bucket is not None and connection.dialect.name == "postgresql":
            # The row and its notional bucket in one round trip.
            params = {**values, **notional.bucket_params(*bucket)}
            if returning:
                values = _loaded(connection.execute(
                    _PG_INSERT_ORDER_AND_BUCKET_RETURNING, params).one())
            else:
                values["id"] = connection.execute(
                    _PG_INSERT_ORDER_AND_BUCKET, params).scalar_one()
        else:
            if returning:
                values = _loaded(connection.execute(_INSERT_ORDER_RETURNING, values).one())
            else:
                key = connection.execute(_INSERT_ORDER, values).inserted_primary_key
                assert key is not None
                values["id"] = key[0]
            if bucket is not None:
                notional.add(connection, *bucket)
        positions.row_inserted(connection, values)
        for name, value in values.items():
            set_committed_value(order, name, value)
        make_transient_to_detached(order)
        session.add(order)  # persistent: in the identity map, nothing to flush
        if commit:
            session.commit()
            if session.expire_on_commit:
                for name, value in values.items():
                    set_committed_value(order, name, value)
    except IntegrityError as exc:
        if order in session:
            session.expunge(order)
        session.rollback()
        if get_by_client_order_id(session, fields["client_order_id"]) is not None:
            raise ClientOrderIdTaken(fields["client_order_id"]) from exc
        raise
    except BaseException:
        if order in session:  # no row: the object must not stay in the identity map
            session.expunge(order)
        if session.in_transaction():
            session.rollback()
        raise
    return order


#: Every column but the key, as the ORM's defaults would fill it.
_ORDERS = cast(Table, Order.__table__)
_INSERT_DEFAULTS: dict[str, Any] = {
    column.key: None for column in _ORDERS.columns if column.key != "id"}
_INSERT_DEFAULTS.update(testnet=True, filled_qty=Decimal(0))
_INSERT_ORDER = insert(_ORDERS)
_INSERT_ORDER_RETURNING = _INSERT_ORDER.returning(*_ORDERS.columns)
_COLUMN_KEYS = tuple(column.key for column in _ORDERS.columns)
_INSERTED = (insert(_ORDERS).values({key: bindparam(key) for key in _INSERT_DEFAULTS})
             .returning(*_ORDERS.columns).cte("inserted_order"))
_PG_INSERT_ORDER_AND_BUCKET = select(_INSERTED.c.id).add_cte(notional.PG_BUCKET)
_PG_INSERT_ORDER_AND_BUCKET_RETURNING = select(*_INSERTED.c).add_cte(notional.PG_BUCKET)


def _loaded(row: Any) -> dict[str, Any]:
    """A ``RETURNING`` row of every column, by attribute name."""
    return dict(zip(_COLUMN_KEYS, row, strict=True))


def get_order(session: Session, order_id: int) -> Order:
    """:raises OrderNotFoundError: no row with that id."""
    # An id the column cannot hold (INTEGER is 32 bits on PostgreSQL) is not found, as on
    # SQLite, rather than a database error.
    largest = 2**31 - 1 if session.get_bind().dialect.name == "postgresql" else 2**63 - 1
    if not 1 <= order_id <= largest:
        raise OrderNotFoundError(f"no order with id {order_id}")
    order = session.get(Order, order_id)
    session.commit()
    if order is None:
        raise OrderNotFoundError(f"no order with id {order_id}")
    return order


def get_by_client_order_id(session: Session, client_order_id: str) -> Order | None:
    order = session.scalars(
        select(Order).where(Order.client_order_id == client_order_id)
    ).one_or_none()
    session.commit()
    return order


def get_by_external_id(session: Session, connector: str, external_id: str) -> Order | None:
    order = session.scalars(
        select(Order).where(Order.connector == connector, Order.external_id == external_id)
    ).one_or_none()
    session.commit()
    return order


def list_orders(
    session: Session,
    *,
    user_id: str | None = None,
    symbol: str | None = None,
    status: OrderStatus | str | Sequence[OrderStatus | str] | None = None,
    connector: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Order]:
    """Orders matching every given filter, newest first.

    ``since`` is inclusive and ``until`` exclusive; ``limit`` is capped at 1000.
    """
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be >= 0")
    if offset > _MAX_SQL_INTEGER:  # no database takes it, and no table holds that many rows
        session.commit()
        return []
    query = select(Order)
    if user_id is not None:
        query = query.where(Order.user_id == user_id)
    if symbol is not None:
        query = query.where(Order.symbol == symbol.upper())
    if connector is not None:
        query = query.where(Order.connector == connector)
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        query = query.where(Order.status.in_([OrderStatus(s).value for s in statuses]))
    if since is not None:
        query = query.where(Order.created_at >= since)
    if until is not None:
        query = query.where(Order.created_at < until)
    query = query.order_by(Order.created_at.desc(), Order.id.desc())
    rows = list(session.scalars(query.limit(min(limit, MAX_PAGE)).offset(offset)))
    session.commit()
    return rows


#: The largest integer SQLite and PostgreSQL (``BIGINT``) bind.
_MAX_SQL_INTEGER = 2**63 - 1


def set_status(
    session: Session, order: Order, status: OrderStatus, *, reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> OrderStatus:
    """Move ``order`` to ``status`` through the state machine and commit.

    :return: the previous status.
    :raises IllegalTransitionError: nothing is written.
    """
    old = OrderStatus(order.status)
    new = check_transition(old, status)
    order.status = new.value
    if reason is not None:
        order.reason = storable(reason)
    if details is not None:
        order.details = {**(order.details or {}), **storable_value(details)}
    order.updated_at = utcnow()
    session.commit()
    return old


def apply_exchange_state(
    session: Session, order: Order, state: ExchangeOrder, *, durable: bool = True,
    market_buy_tolerance: Decimal = Decimal(0),
) -> Merge:
    """Merge what the exchange says about ``order`` into it, as
    :func:`~bagbot_core.exchange_state.merge_answer` decides, and commit (see :func:`commit`
    for ``durable``).

    * apply: status, fill and average price of the answer together, ids the row lacks;
    * stale (an older answer): nothing is written;
    * inconsistent: a ``pending`` row -- the order was just sent, the exchange may well have
      it -- becomes ``unknown`` with the reason (reconcile asks again); any other row is left
      as it is.

    :return: the decision.
    """
    decision = merge_answer(_row_state(order), state, market_buy_tolerance=market_buy_tolerance)
    changes: dict[str, Any] = {}
    if isinstance(decision, Apply):
        changes["status"] = check_transition(order.status, decision.status).value
        if decision.external_id and not order.external_id:
            changes["external_id"] = storable(decision.external_id[:128])
        changes["filled_qty"] = decision.filled_qty
        changes["avg_price"] = decision.avg_price
        if decision.raw_status is not None:
            changes["exchange_status"] = storable(decision.raw_status[:32])
        if decision.reason:
            changes["reason"] = storable(decision.reason)
    elif isinstance(decision, Inconsistent) and order.status == OrderStatus.PENDING.value:
        changes["status"] = OrderStatus.UNKNOWN.value
        changes["reason"] = storable(
            f"the exchange's answer does not add up ({decision.reason}); the order may be on "
            "the exchange, reconcile will ask again")
        changes["details"] = {**(order.details or {}),
                              "inconsistent_answer": _storable_answer(state)}
    if changes:
        changes["updated_at"] = utcnow()
    _update_row(session, order, changes, durable=durable)
    return decision


def _update_row(session: Session, order: Order, changes: dict[str, Any], *,
                durable: bool) -> None:
    """Write ``changes`` to ``order``'s row and commit (see :func:`commit`).

    One Core ``UPDATE`` by primary key, and the position's and the notional bucket's change
    with it, when the session holds nothing else to flush; the unit of work otherwise. The
    object takes the new values once they are committed.
    """
    if (not changes or order not in session or session.new or session.deleted
            or session.dirty):
        for key, value in changes.items():
            setattr(order, key, value)
        commit(session, durable=durable)
        return
    before = positions.signed_fill(order.status, order.side, order.filled_qty)
    after = positions.signed_fill(changes.get("status", order.status), order.side,
                                  changes.get("filled_qty", order.filled_qty))
    with decimal.localcontext(positions.EXACT):
        fill_delta = after - before
    token = None if durable else RELAXED_SYNC.set(True)
    try:
        connection = session.connection()  # begins the transaction, relaxed if asked
        bucket = notional.change_of(order, changes)
        params = {"order_id": order.id, **changes}
        returning = session.expire_on_commit  # the commit expires the row: take it back
        if connection.dialect.name == "postgresql":
            # The row, its notional bucket, its position and the relaxed commit: one
            # statement, one round trip.
            position = positions.change_params(order, fill_delta)
            if bucket is not None:
                params.update(notional.bucket_params(*bucket))
            if position is not None:
                params.update(position)
            statement = _pg_update(bucket is not None, position is not None, not durable,
                                   returning)
            result = connection.execute(statement, params)
            row = _loaded(result.one()) if returning else changes
        else:
            if returning:  # as written, not by another SELECT
                row = _loaded(connection.execute(_UPDATE_ORDER_RETURNING, params).one())
            else:
                connection.execute(_UPDATE_ORDER, params)
                row = changes
            if bucket is not None:
                notional.add(connection, *bucket)
            positions.row_changed(connection, order, fill_delta)
        session.commit()
    except BaseException:
        if session.in_transaction():
            session.rollback()
        raise
    finally:
        if token is not None:
            RELAXED_SYNC.reset(token)
    for key, value in row.items():
        set_committed_value(order, key, value)


_UPDATE_ORDER = update(_ORDERS).where(_ORDERS.c.id == bindparam("order_id"))
_UPDATE_ORDER_RETURNING = _UPDATE_ORDER.returning(*_ORDERS.columns)
#: ``SET LOCAL synchronous_commit = off`` as a value a statement reads (see commit()):
#: an uncorrelated subquery, which PostgreSQL runs once, before the update.
_PG_RELAXED = select(func.set_config("synchronous_commit", "off", True)).scalar_subquery()


@functools.cache
def _pg_update(bucket: bool, position: bool, relaxed: bool, returning: bool) -> Any:
    """PostgreSQL: the row's ``UPDATE`` with what changes with it: the notional bucket
    (``b_*`` parameters) and the position (``p_*``) as common table expressions, the
    relaxed commit as :data:`_PG_RELAXED` in its ``WHERE``."""
    statement = _UPDATE_ORDER_RETURNING if returning else _UPDATE_ORDER
    if bucket:
        statement = statement.add_cte(notional.PG_BUCKET)
    if position:
        statement = statement.add_cte(positions.PG_POSITION)
    if relaxed:
        statement = statement.where(_PG_RELAXED.is_not(None))
    return statement


def _storable_answer(state: ExchangeOrder) -> dict[str, str | None]:
    """An exchange answer as text a row's ``details`` can hold."""
    return {k: None if v is None else storable(v[:128]) for k, v in answer_summary(state).items()}


def _row_state(order: Order) -> RowState:
    try:
        order_type, side = OrderType(order.order_type), Side(order.side)
    except ValueError:  # not a routable row: no slack for it
        order_type, side = OrderType.LIMIT, Side.SELL
    return RowState(
        status=OrderStatus(order.status), qty=order.qty, filled_qty=order.filled_qty or Decimal(0),
        avg_price=order.avg_price, order_type=order_type, side=side,
    )


def pending_or_unknown(
    session: Session, connector: str, *, older_than: dt.datetime | None = None
) -> list[Order]:
    """Rows ``reconcile`` must resolve, oldest first."""
    query = select(Order).where(
        Order.connector == connector,
        Order.status.in_([OrderStatus.PENDING.value, OrderStatus.UNKNOWN.value]),
    )
    if older_than is not None:
        query = query.where(Order.created_at <= older_than)
    rows = list(session.scalars(query.order_by(Order.id)))
    session.commit()
    return rows

