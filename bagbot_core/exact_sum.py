"""Exact decimal addition inside SQLite statements.

SQLite keeps bagbot's money as decimal text (:class:`bagbot_core.models.ExactDecimal`); its
own ``+`` would turn the texts into floats. ``bagbot_decimal_add(a, b)``, registered on each
connection that needs it, adds them with Python's :mod:`decimal` instead and returns the text
the column stores, so an aggregate row is updated by one ``INSERT ... ON CONFLICT DO UPDATE``
instead of a read, an addition in Python and a write. Any SQLite connection works, bagbot's
engines or a caller's own: the function is registered on first use.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from bagbot_core.money import decimal_text

__all__ = ["FUNCTION", "Upsert", "add", "register"]

FUNCTION = "bagbot_decimal_add"
_REGISTERED = "bagbot_decimal_add_registered"
# Wide enough that no sum of NUMERIC(38, 18) values is ever rounded; rounding would raise.
_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])


def _add(left: str | None, right: str | None) -> str | None:
    """``left + right`` as decimal text; ``NULL`` counts as nothing (a new row)."""
    if left is None:
        return right
    if right is None:
        return left
    return decimal_text(_EXACT.add(Decimal(left), Decimal(right)))


def register(connection: Connection) -> None:
    """Make ``bagbot_decimal_add`` available on ``connection`` (once per DBAPI connection)."""
    info = connection.info
    if not info.get(_REGISTERED):
        raw: Any = connection.connection.dbapi_connection
        raw.create_function(FUNCTION, 2, _add, deterministic=True)
        info[_REGISTERED] = True


def add(left: Any, right: Any) -> ColumnElement[Any]:
    """The SQL expression ``bagbot_decimal_add(left, right)`` (call :func:`register` on the
    connection that runs it)."""
    expression: ColumnElement[Any] = getattr(func, FUNCTION)(left, right, type_=left.type)
    return expression


class Upsert:
    """``INSERT`` a row of ``model``, or add its ``column`` to the row already at ``keys``:
    one atomic statement on both backends (PostgreSQL adds NUMERIC values; SQLite adds
    with :func:`add`). The statements are built once: building them per write costs more
    than running them."""

    def __init__(self, model: Any, keys: list[str], column: str) -> None:
        target = getattr(model, column)
        sqlite, postgres = sqlite_insert(model), pg_insert(model)
        self._sqlite = sqlite.on_conflict_do_update(
            index_elements=keys, set_={column: add(target, getattr(sqlite.excluded, column))})
        self._postgres = postgres.on_conflict_do_update(
            index_elements=keys, set_={column: target + getattr(postgres.excluded, column)})

    def __call__(self, connection: Connection, row: dict[str, Any]) -> None:
        """Write ``row`` in ``connection``'s transaction."""
        if connection.dialect.name == "postgresql":
            connection.execute(self._postgres, row)
            return
        register(connection)
        connection.execute(self._sqlite, row)
