"""The ``notional_buckets`` aggregate: each hour's USD value of a user's orders, kept current.

:meth:`bagbot_core.history.History.notional_since` must not fetch and value every row of a
user's day on every order. Instead every write that inserts, changes or deletes an
``orders`` row adds the change in what that row is worth
(:func:`~bagbot_core.history.order_value_usd` after, minus before) to the bucket of the hour
the row was created in, ``(user, testnet, connector, symbol, hour)``, on the write's own
connection: the bucket commits, or rolls back, with the row. A window then reads its whole
hours from the buckets and values only the rows of its first, partial hour.

Exact on both backends, as :mod:`bagbot_core.positions`, in one atomic upsert: PostgreSQL
adds NUMERIC values (in the very statement that writes the row); SQLite keeps decimals as
text, so its upsert adds them with :mod:`bagbot_core.exact_sum`'s SQL function.
:mod:`bagbot_core.store` writes its rows with Core statements and calls
:func:`row_inserted` / :func:`row_changed` itself; the ORM events below cover every other
path (``set_status``, edits); rows written behind the ORM (bulk ``insert``, ``update`` or
``delete`` statements) are not seen: call :func:`rebuild` after such a write.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, delete, event, insert, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, object_session

# The module, not the name: history imports models, which imports this module to register
# its events, so history may still be loading here; order_value_usd is looked up per call.
from bagbot_core import exact_sum, history
from bagbot_core.models import NotionalBucket, Order
from bagbot_core.money import normalize

__all__ = ["PG_BUCKET", "add", "bucket_params", "change_of", "hour_of", "insert_of", "rebuild",
           "row_changed", "row_inserted", "row_value"]

Key = tuple[str, bool, str, str, dt.datetime]  # user_id, testnet, connector, symbol, hour

_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])
_ZERO = Decimal(0)
#: Columns that place a row in its bucket: a change of one moves the row's whole value.
_KEY_COLUMNS = ("user_id", "testnet", "connector", "symbol", "created_at")
#: Columns a row's value is made of (and ``symbol``, a key column).
_VALUE_COLUMNS = ("status", "qty", "filled_qty", "avg_price", "notional_usd")
_REBUILD = "bagbot_notional_rebuild"


def hour_of(when: dt.datetime) -> dt.datetime:
    """The start of ``when``'s UTC hour (``when`` timezone-aware)."""
    return when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def row_value(status: str, symbol: str, qty: Decimal, filled: Decimal | None,
              avg_price: Decimal | None, notional_usd: Decimal | None) -> Decimal:
    """What one row adds to its bucket: :func:`~bagbot_core.history.order_value_usd`."""
    return history.order_value_usd(status, symbol, qty, filled or _ZERO, avg_price,
                                    notional_usd)


def _key(user_id: str, testnet: bool, connector: str, symbol: str,
         created_at: dt.datetime) -> Key:
    return (user_id, bool(testnet), connector, symbol, hour_of(created_at))


def add(connection: Connection, key: Key, delta: Decimal) -> None:
    """Add ``delta`` to the bucket at ``key``, in ``connection``'s transaction."""
    user_id, testnet, connector, symbol, hour = key
    row = {"user_id": user_id, "testnet": testnet, "connector": connector, "symbol": symbol,
           "hour": hour, "value": delta}
    _ADD(connection, row)


_ADD = exact_sum.Upsert(NotionalBucket, ["user_id", "testnet", "hour", "connector", "symbol"],
                        "value")
_UPSERT = pg_insert(NotionalBucket)
#: PostgreSQL: the upsert as a common table expression with parameters ``b_*``
#: (:func:`bucket_params`), for the store to add to the statement that writes the row
#: itself: one round trip for both.
PG_BUCKET = pg_insert(NotionalBucket).values(
    user_id=bindparam("b_user_id"), testnet=bindparam("b_testnet"), hour=bindparam("b_hour"),
    connector=bindparam("b_connector"), symbol=bindparam("b_symbol"),
    value=bindparam("b_value"),
).on_conflict_do_update(
    index_elements=["user_id", "testnet", "hour", "connector", "symbol"],
    set_={"value": NotionalBucket.value + _UPSERT.excluded.value},
).cte("notional_bucket")


def bucket_params(key: Key, delta: Decimal) -> dict[str, Any]:
    """:data:`PG_BUCKET`'s parameters: add ``delta`` at ``key``."""
    user_id, testnet, connector, symbol, hour = key
    return {"b_user_id": user_id, "b_testnet": testnet, "b_connector": connector,
            "b_symbol": symbol, "b_hour": hour, "b_value": delta}


def insert_of(values: Mapping[str, Any]) -> tuple[Key, Decimal] | None:
    """Where a new row's value goes and what it adds (``None``: nothing)."""
    value = row_value(values["status"], values["symbol"], values["qty"], values["filled_qty"],
                      values["avg_price"], values["notional_usd"])
    if not value:
        return None
    return _key(values["user_id"], values["testnet"], values["connector"], values["symbol"],
                values["created_at"]), value


def change_of(order: Order, changes: Mapping[str, Any]) -> tuple[Key, Decimal] | None:
    """Where ``order``'s value is counted and by how much ``changes`` change it (``order``
    holds its committed values; no key column changes); ``None``: not at all."""
    before = row_value(order.status, order.symbol, order.qty, order.filled_qty,
                       order.avg_price, order.notional_usd)
    after = row_value(*(changes.get(name, getattr(order, name)) for name in (
        "status", "symbol", "qty", "filled_qty", "avg_price", "notional_usd")))
    if before == after:
        return None
    with decimal.localcontext(_EXACT):
        delta = after - before
    return _key(order.user_id, order.testnet, order.connector, order.symbol,
                order.created_at), delta


def row_inserted(connection: Connection, values: Mapping[str, Any]) -> None:
    """What a row inserted behind the ORM (:func:`bagbot_core.store.insert_order`) adds."""
    bucket = insert_of(values)
    if bucket is not None:
        add(connection, *bucket)


def row_changed(connection: Connection, order: Order, changes: Mapping[str, Any]) -> None:
    """``order`` (its committed values) takes ``changes`` in an update behind the ORM
    (:func:`bagbot_core.store.apply_exchange_state`); no key column changes."""
    bucket = change_of(order, changes)
    if bucket is not None:
        add(connection, *bucket)


def _old(state: Any, name: str) -> Any:
    """An attribute's value before the pending change (the columns are ``active_history``)."""
    history = state.attrs[name].history
    if history.deleted:
        return history.deleted[0]
    if history.unchanged:
        return history.unchanged[0]
    return getattr(state.obj(), name)


def _value_of(order: Order) -> Decimal:
    return row_value(order.status, order.symbol, order.qty, order.filled_qty,
                     order.avg_price, order.notional_usd)


def _rebuild_pending(order: Order) -> bool:
    session = object_session(order)
    return session is not None and bool(session.info.get(_REBUILD))


@event.listens_for(Order, "after_insert", propagate=True)
def _inserted(_mapper: Any, connection: Connection, order: Order) -> None:
    if _rebuild_pending(order):
        return
    value = _value_of(order)
    if value:
        add(connection, _key(order.user_id, order.testnet, order.connector, order.symbol,
                              order.created_at), value)


@event.listens_for(Order, "after_update", propagate=True)
def _updated(_mapper: Any, connection: Connection, order: Order) -> None:
    state = inspect(order)
    attrs = state.attrs
    if _rebuild_pending(order):
        return
    if any(attrs[name].history.has_changes() for name in _KEY_COLUMNS):
        # bagbot never moves a row to another user, symbol or hour; if something does, the
        # old key is not known for sure: recount everything once the flush's statements
        # have run (exact, and never on a hot path). A flush's events run after all of its
        # statements, so a recount now would count the flush's other rows twice.
        session = object_session(order)
        if session is None:  # pragma: no cover - a flushed object has its session
            rebuild(connection)
        else:
            session.info[_REBUILD] = True
        return
    if not any(attrs[name].history.has_changes() for name in _VALUE_COLUMNS):
        return
    before = row_value(*(_old(state, name) for name in (
        "status", "symbol", "qty", "filled_qty", "avg_price", "notional_usd")))
    after = _value_of(order)
    if before != after:
        with decimal.localcontext(_EXACT):
            delta = after - before
        add(connection, _key(order.user_id, order.testnet, order.connector, order.symbol,
                              order.created_at), delta)


@event.listens_for(Order, "after_delete", propagate=True)
def _deleted(_mapper: Any, connection: Connection, order: Order) -> None:
    if _rebuild_pending(order):
        return
    state = inspect(order)
    before = row_value(*(_old(state, name) for name in (
        "status", "symbol", "qty", "filled_qty", "avg_price", "notional_usd")))
    if before:
        add(connection, _key(_old(state, "user_id"), _old(state, "testnet"),
                              _old(state, "connector"), _old(state, "symbol"),
                              _old(state, "created_at")), -before)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    if session.info.pop(_REBUILD, False):
        rebuild(session.connection())


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_REBUILD, None)


def rebuild(connection: Connection) -> None:
    """Recount every bucket from ``orders`` (after rows were written behind the ORM), in
    ``connection``'s transaction."""
    totals: dict[Key, Decimal] = defaultdict(Decimal)
    rows = connection.execute(select(
        Order.user_id, Order.testnet, Order.connector, Order.symbol, Order.created_at,
        Order.status, Order.qty, Order.filled_qty, Order.avg_price, Order.notional_usd,
    ).where(Order.status != "rejected"))
    with decimal.localcontext(_EXACT):
        for user_id, testnet, connector, symbol, created, status, *money in rows:
            totals[_key(user_id, testnet, connector, symbol, created)] += row_value(
                status, symbol, *money)
    connection.execute(delete(NotionalBucket))
    rows_out = [{"user_id": u, "testnet": t, "connector": c, "symbol": s, "hour": h,
                 "value": normalize(v)}
                for (u, t, c, s, h), v in totals.items() if v]
    if rows_out:
        connection.execute(insert(NotionalBucket), rows_out)
