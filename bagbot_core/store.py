"""Reading and writing order rows. Synchronous functions of a SQLAlchemy ``Session``.

Every function here ends the transaction it opened (commit, even after a read): the
router calls the exchange between database steps, and on SQLite an open transaction would
hold the file's write lock across that network call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bagbot_core.db import RELAXED_SYNC
from bagbot_core.errors import OrderNotFoundError
from bagbot_core.models import Order, utcnow
from bagbot_core.money import normalize
from bagbot_core.orders import ExchangeOrder
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


def storable(text: str) -> str:
    """Free text (exchange messages, error texts) as every database can store it."""
    return text.replace("\x00", "\ufffd")


def insert_order(session: Session, **fields: Any) -> Order:
    """Insert and commit one row.

    :raises ClientOrderIdTaken: when ``client_order_id`` already exists (nothing written).
    """
    if isinstance(fields.get("reason"), str):
        fields["reason"] = storable(fields["reason"])
    order = Order(**fields)
    session.add(order)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        if get_by_client_order_id(session, fields["client_order_id"]) is not None:
            raise ClientOrderIdTaken(fields["client_order_id"]) from exc
        raise
    return order


def get_order(session: Session, order_id: int) -> Order:
    """:raises OrderNotFoundError: no row with that id."""
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
        order.details = {**(order.details or {}), **details}
    order.updated_at = utcnow()
    session.commit()
    return old


def apply_exchange_state(
    session: Session, order: Order, state: ExchangeOrder, *, durable: bool = True
) -> OrderStatus:
    """Record what the exchange says about ``order``: status, ids, fills. Commits
    (see :func:`commit` for ``durable``).

    Fills only grow: an answer reporting less filled than already recorded keeps the
    larger figure (exchanges answer from replicas that may lag).

    :return: the previous status.
    :raises IllegalTransitionError: e.g. the exchange reports ``open`` for a ``filled`` row.
    """
    old = OrderStatus(order.status)
    new = check_transition(old, state.status)
    order.status = new.value
    if state.external_id and not order.external_id:
        order.external_id = state.external_id
    if state.filled_qty is not None and state.filled_qty > (order.filled_qty or 0):
        order.filled_qty = normalize(state.filled_qty)
    if state.avg_price is not None:
        order.avg_price = normalize(state.avg_price)
    if state.raw_status is not None:
        order.exchange_status = state.raw_status[:32]
    if state.reason:
        order.reason = storable(state.reason)
    order.updated_at = utcnow()
    commit(session, durable=durable)
    return old


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

