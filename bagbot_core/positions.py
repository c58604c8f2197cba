"""The ``positions`` aggregate: each user's net filled quantity per asset, kept current.

:meth:`bagbot_core.history.History.position` must not sum a user's whole fill history on
every order. Instead every ORM flush that inserts, changes or deletes an ``orders`` row adds
the change in what that row counts (``+filled`` for a buy, ``-filled`` for a sell, nothing
when rejected or when the symbol has no base) to its ``(user, testnet, asset, connector)``
row, on the flush's own connection: the aggregate commits, or rolls back, with the fill
(:func:`bagbot_core.store.apply_exchange_state` is where fills change).

Exact on both backends, in one atomic upsert: PostgreSQL adds NUMERIC values; SQLite keeps
decimals as text, so its upsert adds them with :mod:`bagbot_core.exact_sum`'s SQL function
(Python's decimal arithmetic, registered on the connection). :mod:`bagbot_core.store`
writes its rows with Core statements and calls :func:`row_inserted` / :func:`row_changed`
itself; other rows written behind the ORM (bulk ``insert`` or ``delete`` statements) are not
seen: call :func:`rebuild` after such a write.
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, delete, event, insert, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bagbot_core import exact_sum
from bagbot_core.models import Order, Position
from bagbot_core.money import normalize
from bagbot_core.status import OrderStatus

__all__ = ["EXACT", "PG_POSITION", "asset_of", "change_params", "rebuild", "signed_fill"]

Key = tuple[str, bool, str, str]  # user_id, testnet, asset, connector

#: Exact arithmetic for position changes: an inexact result raises instead of rounding.
EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])
_ZERO = Decimal(0)
_REJECTED = OrderStatus.REJECTED.value
_KEY_COLUMNS = ("user_id", "testnet", "symbol", "connector", "side")


def asset_of(symbol: str) -> str | None:
    """The base of ``symbol`` as stored (``"BTC"`` for ``"BTC/USDT"``); ``None`` without a
    ``/`` (such a row is no position, as ``History.position`` counts)."""
    base, slash, _ = symbol.partition("/")
    return base if slash else None


def signed_fill(status: str, side: str, filled: Decimal | None) -> Decimal:
    """What one row adds to its position: ``+filled`` bought, ``-filled`` sold, nothing
    when rejected."""
    if not filled or status == _REJECTED:
        return _ZERO
    return filled if side == "buy" else -filled


def _key(user_id: str, testnet: bool, symbol: str, connector: str) -> Key | None:
    asset = asset_of(symbol)
    return None if asset is None else (user_id, bool(testnet), asset, connector)


def _add(connection: Connection, key: Key, delta: Decimal) -> None:
    """Add ``delta`` to the position at ``key``, in ``connection``'s transaction."""
    user_id, testnet, asset, connector = key
    row = {"user_id": user_id, "testnet": testnet, "asset": asset, "connector": connector,
           "quantity": delta}
    _UPSERT(connection, row)


_UPSERT = exact_sum.Upsert(Position, ["user_id", "testnet", "asset", "connector"], "quantity")
_PG_UPSERT = pg_insert(Position)
#: PostgreSQL: the upsert as a common table expression with parameters ``p_*``
#: (:func:`change_params`), for the store to add to the statement that updates the row
#: itself: one round trip for both.
PG_POSITION = _PG_UPSERT.values(
    user_id=bindparam("p_user_id"), testnet=bindparam("p_testnet"),
    asset=bindparam("p_asset"), connector=bindparam("p_connector"),
    quantity=bindparam("p_quantity"),
).on_conflict_do_update(
    index_elements=["user_id", "testnet", "asset", "connector"],
    set_={"quantity": Position.quantity + _PG_UPSERT.excluded.quantity},
).cte("position_change")


def change_params(order: Order, delta: Decimal) -> dict[str, Any] | None:
    """:data:`PG_POSITION`'s parameters for ``order``'s fill changing by ``delta``;
    ``None`` when its position does not change."""
    key = _key(order.user_id, order.testnet, order.symbol, order.connector)
    if not delta or key is None:
        return None
    user_id, testnet, asset, connector = key
    return {"p_user_id": user_id, "p_testnet": testnet, "p_asset": asset,
            "p_connector": connector, "p_quantity": delta}


def _old(state: Any, name: str) -> Any:
    """An attribute's value before the pending change (needs ``active_history``, or a
    loaded value, when it changed)."""
    history = state.attrs[name].history
    if history.deleted:
        return history.deleted[0]
    if history.unchanged:
        return history.unchanged[0]
    return getattr(state.obj(), name)


def row_inserted(connection: Connection, values: dict[str, Any]) -> None:
    """What a row inserted behind the ORM (:func:`bagbot_core.store.insert_order`) adds."""
    delta = signed_fill(values["status"], values["side"], values["filled_qty"])
    key = _key(values["user_id"], values["testnet"], values["symbol"], values["connector"])
    if delta and key is not None:
        _add(connection, key, delta)


def row_changed(connection: Connection, order: Order, delta: Decimal) -> None:
    """``order``'s fill changed by ``delta`` (signed) in an update behind the ORM
    (:func:`bagbot_core.store.apply_exchange_state`); its key columns did not change."""
    key = _key(order.user_id, order.testnet, order.symbol, order.connector)
    if delta and key is not None:
        _add(connection, key, delta)


@event.listens_for(Order, "after_insert", propagate=True)
def _inserted(_mapper: Any, connection: Connection, order: Order) -> None:
    delta = signed_fill(order.status, order.side, order.filled_qty)
    key = _key(order.user_id, order.testnet, order.symbol, order.connector)
    if delta and key is not None:
        _add(connection, key, delta)


@event.listens_for(Order, "after_update", propagate=True)
def _updated(_mapper: Any, connection: Connection, order: Order) -> None:
    state = inspect(order)
    attrs = state.attrs
    if not (attrs.filled_qty.history.has_changes() or attrs.status.history.has_changes()
            or any(attrs[name].history.has_changes() for name in _KEY_COLUMNS)):
        return
    if any(attrs[name].history.has_changes() for name in _KEY_COLUMNS):
        # bagbot never moves a row to another user, symbol or side; if something does, the
        # old key is not known for sure: recount everything (exact, and never on a hot path).
        rebuild(connection)
        return
    before = signed_fill(_old(state, "status"), order.side, _old(state, "filled_qty"))
    after = signed_fill(order.status, order.side, order.filled_qty)
    key = _key(order.user_id, order.testnet, order.symbol, order.connector)
    if key is not None and before != after:
        with decimal.localcontext(EXACT):
            delta = after - before
        _add(connection, key, delta)


@event.listens_for(Order, "after_delete", propagate=True)
def _deleted(_mapper: Any, connection: Connection, order: Order) -> None:
    before = signed_fill(_old(inspect(order), "status"), order.side,
                         _old(inspect(order), "filled_qty"))
    key = _key(order.user_id, order.testnet, order.symbol, order.connector)
    if before and key is not None:
        _add(connection, key, -before)


def rebuild(connection: Connection) -> None:
    """Recount every position from ``orders`` (after rows were written behind the ORM),
    in ``connection``'s transaction."""
    totals: dict[Key, Decimal] = defaultdict(Decimal)
    rows = connection.execute(select(
        Order.user_id, Order.testnet, Order.symbol, Order.connector, Order.side,
        Order.status, Order.filled_qty,
    ).where(Order.status != _REJECTED, Order.filled_qty != _ZERO))
    with decimal.localcontext(EXACT):
        for user_id, testnet, symbol, connector, side, status, filled in rows:
            key = _key(user_id, testnet, symbol, connector)
            if key is not None:
                totals[key] += signed_fill(status, side, filled)
    connection.execute(delete(Position))
    if totals:
        connection.execute(insert(Position), [
            {"user_id": u, "testnet": t, "asset": a, "connector": c, "quantity": normalize(q)}
            for (u, t, a, c), q in totals.items()])

