"""The Bearer token check of every request: a read that never waits for a writer.

The ``api_tokens`` row is still read on every request (so a revocation or an expiry applies
at once, in every process), but through an engine of its own that only reads, in autocommit:

* SQLite: on the event loop. A primary-key lookup in a local file takes tens of
  microseconds, and a WAL reader never waits for the write lock (that engine never says
  ``BEGIN IMMEDIATE``). In the rare cases SQLite still makes a reader wait (a WAL being
  recovered or reset), the loop's read fails at once instead and is retried in a worker
  thread, which may wait.
* PostgreSQL: in a worker thread, one round trip (autocommit, no ping first; a dropped
  connection is retried once). Measured faster than SQLAlchemy's async driver, whose
  greenlet hops cost more than the thread hand-off; on the loop it would stall every
  request for the network.

The argon2 verify of a token this process has not verified yet runs in a worker thread
(tens of ms). ``last_used_at`` (written at most once a minute) is written after the answer,
in a background task through the ordinary engine, which takes the write lock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import anyio.to_thread
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from bagbot_core import audit
from bagbot_core.db import create_read_engine, get_engine, session_factory
from bagbot_core.models import utcnow
from bagbot_core.tokens import (
    TOKEN_ROW,
    TokenIdentity,
    identity_of,
    last_used_stale,
    record_use,
    token_id_of,
    usable,
    verified_before,
    verify_secret,
)

#: SQLite's primary result code for "busy" (a lock another connection holds).
_SQLITE_BUSY = 5


def _busy(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_BUSY


class TokenChecker:
    """Authenticates raw tokens for one service process (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        """:param url: the database's synchronous URL."""
        self.url = url
        self._sqlite = make_url(url).get_backend_name() == "sqlite"
        # SQLite: the loop's engine never waits for a lock; the thread's may.
        self._loop_engine = create_read_engine(url, busy_timeout_ms=0) if self._sqlite else None
        self._thread_engine = create_read_engine(url)
        self._recording: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def authenticate(self, raw: str) -> TokenIdentity | None:
        """The identity behind ``raw``, or ``None`` (malformed, unknown, wrong secret,
        expired, revoked), like :func:`bagbot_core.tokens.authenticate`."""
        token_id = token_id_of(raw)
        if token_id is None:
            return None
        row = await self._read(token_id)
        now = utcnow()
        if row is None or not usable(row, now):
            return None
        if not verified_before(raw, token_id) and not await anyio.to_thread.run_sync(
                verify_secret, row, raw):
            return None
        if last_used_stale(row, now):
            self._record_use(token_id, now)
        return identity_of(row)

    async def _read(self, token_id: str) -> Any:
        if self._loop_engine is not None:
            try:
                with self._loop_engine.connect() as conn:
                    return conn.execute(TOKEN_ROW, {"token_id": token_id}).first()
            except OperationalError as exc:
                if not _busy(exc):
                    raise
        return await anyio.to_thread.run_sync(self._read_in_thread, token_id)

    def _read_in_thread(self, token_id: str) -> Any:
        for attempt in (1, 2):
            try:
                with self._thread_engine.connect() as conn:
                    return conn.execute(TOKEN_ROW, {"token_id": token_id}).first()
            except DBAPIError as exc:  # a pooled connection the server dropped: once more
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_use(self, token_id: str, now: dt.datetime) -> None:
        if token_id in self._recording:  # one write per token in flight
            return
        self._recording.add(token_id)
        task = asyncio.get_running_loop().create_task(self._write_use(token_id, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_use(self, token_id: str, now: dt.datetime) -> None:
        try:
            await anyio.to_thread.run_sync(self._write_use_now, token_id, now)
        except Exception as exc:  # informational: never fails a request
            # The error's class only: a driver's message may quote the database URL.
            audit.get_logger().warning("token_last_used_not_written", id=token_id,
                                       error=type(exc).__name__)
        finally:
            self._recording.discard(token_id)

    def _write_use_now(self, token_id: str, now: dt.datetime) -> None:
        with session_factory(get_engine(self.url))() as session:
            record_use(session, token_id, now)

    async def aclose(self, wait: float) -> None:
        """Let pending ``last_used_at`` writes finish (at most ``wait`` seconds), then close
        the read engines."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=wait)
        if self._loop_engine is not None:
            self._loop_engine.dispose()
        self._thread_engine.dispose()
