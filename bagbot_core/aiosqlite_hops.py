"""Async SQLite with one thread hop per statement.

aiosqlite runs every call on the connection's own thread; SQLAlchemy's adapter makes each
statement four such calls (open a cursor, execute, fetch, close), and every call is a
hand-off to that thread and back through the event loop, which costs more CPU than the
statement itself. :class:`OneHopCursor` does the four in one call: a routed order's
statements take 9 hand-offs instead of 24 (the pool's needless rollbacks gone too,
see :mod:`bagbot_core.db`). Same SQL, same driver, same connection thread,
same errors; server-side cursors (``stream_results``) keep SQLAlchemy's own.

It uses a little of aiosqlite beyond its documented API, as SQLAlchemy's own adapter does
(the connection's call queue, ``_execute``, and its ``sqlite3`` connection, ``_conn``).
:func:`dbapi` returns ``None`` when the installed SQLAlchemy or aiosqlite lacks those
parts: the engine then uses the stock adapter.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

try:  # SQLAlchemy 2.1 names it await_; await_only is the 2.0 name
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await

__all__ = ["OneHopCursor", "dbapi"]


def _execute(connection: Any, operation: str, parameters: Any) -> tuple[Any, int, Any, Any]:
    """On the connection's thread: the statement, its rows, then the cursor is closed."""
    cursor = connection.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _executemany(connection: Any, operation: str, parameters: Any) -> tuple[Any, int, Any, Any]:
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, None
    finally:
        cursor.close()


class OneHopCursor:
    """A DBAPI cursor of an adapted aiosqlite connection that runs each statement, fetches
    its rows and closes in one call on the connection's thread (rows are buffered, as
    SQLAlchemy's adapter buffers them)."""

    server_side = False
    __slots__ = ("_adapt_connection", "_connection", "_rows", "arraysize", "description",
                 "lastrowid", "rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection  # the aiosqlite.Connection
        self._rows: collections.deque[Any] = collections.deque()
        self.arraysize = 1
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: Any = None

    def _run(self, fn: Callable[..., tuple[Any, int, Any, Any]], operation: str,
             parameters: Any) -> None:
        try:
            result = _await(self._call(fn, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
            raise  # _handle_exception always raises
        self.description, self.rowcount, self.lastrowid, rows = result
        self._rows = collections.deque(rows) if rows else collections.deque()

    async def _call(self, fn: Callable[..., Any], operation: str, parameters: Any) -> Any:
        # aiosqlite's own queueing (a closed connection raises, as its cursors do), under
        # the adapter's lock, as SQLAlchemy's cursors run theirs.
        connection = self._connection
        mutex = getattr(self._adapt_connection, "_execute_mutex", None)
        if mutex is None:
            return await connection._execute(fn, connection._conn, operation, parameters)
        async with mutex:
            return await connection._execute(fn, connection._conn, operation, parameters)

    def execute(self, operation: str, parameters: Any = None) -> None:
        self._run(_execute, operation, parameters)

    def executemany(self, operation: str, seq_of_parameters: Any) -> None:
        self._run(_executemany, operation, seq_of_parameters)

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]

    def fetchall(self) -> Sequence[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    def __enter__(self) -> OneHopCursor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """What SQLAlchemy's async result calls to close the driver's cursor early: this
        cursor holds none past its statement."""
        return None

    def setinputsizes(self, *_sizes: Any) -> None:
        return None  # sqlite3 ignores them too

    def nextset(self) -> None:
        return None  # one result set per statement


@functools.cache
def dbapi() -> Any:
    """The DBAPI module for ``create_async_engine(..., module=...)`` whose connections make
    :class:`OneHopCursor` cursors; ``None`` if this SQLAlchemy or aiosqlite lacks the parts
    it builds on."""
    try:
        import sqlite3

        import aiosqlite
        from sqlalchemy.dialects.sqlite.aiosqlite import (
            AsyncAdapt_aiosqlite_connection,
            AsyncAdapt_aiosqlite_dbapi,
        )
    except ImportError:
        return None
    if not (hasattr(AsyncAdapt_aiosqlite_connection, "_handle_exception")
            and hasattr(AsyncAdapt_aiosqlite_connection, "cursor")):
        return None

    class OneHopConnection(AsyncAdapt_aiosqlite_connection):
        __slots__ = ()

        def cursor(self, server_side: bool = False) -> Any:
            if server_side:
                return super().cursor(server_side=True)
            return OneHopCursor(self)

    class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
        def connect(self, *args: Any, **kwargs: Any) -> Any:
            connection = super().connect(*args, **kwargs)
            inner = getattr(connection, "_connection", None)
            if not hasattr(inner, "_execute"):
                return connection  # an aiosqlite without its call queue: the stock cursors
            connection.__class__ = OneHopConnection  # the same object, one method more
            return connection

    return OneHopDbapi(aiosqlite, sqlite3)
