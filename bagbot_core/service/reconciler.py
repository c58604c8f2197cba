"""The background reconciler of ``bagbot serve``: resolves ``pending``/``unknown`` rows
left by crashes and timeouts without anyone running ``bagbot orders reconcile``.

A round asks :meth:`Router.reconcile <bagbot_core.router.Router.reconcile>` about every
connector that has such rows older than the grace (younger ones may still be in flight in
some process), then refreshes the ``bagbot_unknown_orders`` and ``bagbot_trading_state``
gauges from the database, so they also show what other processes and the CLI changed.
Rounds run at start-up and then every ``interval`` seconds; 0 turns the reconciler off.

Several service processes share one database, and two reconciles of one row would ask the
exchange twice and race to record the answer, so one round runs at a time across all of
them: on PostgreSQL the round holds ``pg_try_advisory_lock`` on a connection of its own
(keyed by the schema, so two bagbot schemas in one database do not exclude each other); on
SQLite an exclusive ``flock`` on ``<database>.reconcile.lock`` next to the file. Whoever does
not get the lock skips the round instead of waiting: the holder is doing the work. Other
databases, and SQLite in memory, take no lock (one process is all they can have).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.errors import BagbotError
from bagbot_core.models import Order, utcnow
from bagbot_core.service import metrics
from bagbot_core.status import OrderStatus
from bagbot_core.trading_state import scope_states

if TYPE_CHECKING:
    from bagbot_core.router import Router

T = TypeVar("T")

#: The advisory lock's first key (the second is the schema's hash): "bagb" in ASCII.
ADVISORY_CLASS = 0x62616762
_UNRESOLVED = (OrderStatus.PENDING.value, OrderStatus.UNKNOWN.value)


async def _maybe(value: Any) -> Any:
    """A sync engine's result as is, an async engine's awaited: one code path for both."""
    return await value if inspect.isawaitable(value) else value


class _NoLock:
    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class _AdvisoryLock:
    """PostgreSQL: a session-level advisory lock on a dedicated connection."""

    _TRY = text("SELECT pg_try_advisory_lock(:c, hashtext(current_schema()))")
    _UNLOCK = text("SELECT pg_advisory_unlock(:c, hashtext(current_schema()))")

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        self._engine = engine
        self._conn: Any = None

    async def acquire(self) -> bool:
        conn = await _maybe(self._engine.connect())
        try:
            got = bool((await _maybe(conn.execute(self._TRY, {"c": ADVISORY_CLASS}))).scalar())
            await _maybe(conn.commit())  # the lock outlives the transaction; idle, not open
        except BaseException:
            await _maybe(conn.close())
            raise
        if not got:
            await _maybe(conn.close())
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        try:
            await _maybe(conn.execute(self._UNLOCK, {"c": ADVISORY_CLASS}))
            await _maybe(conn.commit())
        except BaseException:
            # Never hand a connection that may still hold the lock back to the pool.
            await _maybe(conn.invalidate())
            raise
        finally:
            await _maybe(conn.close())


class _FileLock:
    """SQLite: ``flock`` on a file next to the database (per open file, so it excludes
    other processes and other reconcilers of this one alike)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        import fcntl

        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def lock_file(engine: Engine | AsyncEngine) -> Path | None:
    """Where a SQLite database's reconcile lock lives (``None``: not a SQLite file)."""
    url = engine.url
    database = url.database
    if (url.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:")):
        return None
    return Path(database).expanduser().with_suffix(".reconcile.lock")


def _round_lock(engine: Engine | AsyncEngine) -> _NoLock | _AdvisoryLock | _FileLock:
    if engine.url.get_backend_name() == "postgresql":
        return _AdvisoryLock(engine)
    path = lock_file(engine)
    return _NoLock() if path is None else _FileLock(path)


def _stale_connectors(session: Session, horizon: dt.datetime) -> list[str]:
    found = session.scalars(select(Order.connector).distinct().where(
        Order.status.in_(_UNRESOLVED), Order.created_at <= horizon)).all()
    session.commit()
    return sorted(found)


def _awaiting(session: Session, horizon: dt.datetime) -> int:
    """Unknown rows, and pending rows past the grace (younger ones are in flight)."""
    count = session.scalar(select(func.count()).select_from(Order).where(or_(
        Order.status == OrderStatus.UNKNOWN.value,
        and_(Order.status == OrderStatus.PENDING.value, Order.created_at <= horizon))))
    session.commit()
    return int(count or 0)


class Reconciler:
    """Reconciles in the background of one service process; see the module docstring.

    :param router: the process's router (its connectors are reused).
    :param engine: the database, sync or async (the service passes its async engine, so a
        round never blocks the event loop on the database).
    :param interval: seconds between rounds; 0 or less: off.
    :param grace: how old a row must be before "not found" means "never placed"; default
        the router's ``reconcile_grace``.
    """

    def __init__(self, router: Router, engine: Engine | AsyncEngine, *, interval: float,
                 grace: dt.timedelta | None = None) -> None:
        self.router = router
        self.engine = engine
        self.interval = interval
        self.grace = grace
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = audit.get_logger(component="reconciler")

    async def _run(self, session: Session | AsyncSession, work: Callable[..., T],
                   *args: Any) -> T:
        if isinstance(session, AsyncSession):
            return await session.run_sync(work, *args)
        return work(session, *args)

    def _session(self) -> Any:
        if isinstance(self.engine, AsyncEngine):
            return AsyncSession(self.engine, expire_on_commit=False)
        return Session(self.engine, expire_on_commit=False)

    async def run_once(self) -> int:
        """One round; returns how many rows changed (0 when another instance had the lock).

        A connector that cannot be reached or is no longer installed is logged
        (``reconcile_failed``) and the others are still reconciled; a database failure
        propagates.
        """
        grace = self.router.reconcile_grace if self.grace is None else self.grace
        horizon = utcnow() - grace
        lock = _round_lock(self.engine)
        changed = 0
        session = self._session()
        try:
            if await lock.acquire():
                try:
                    for name in await self._run(session, _stale_connectors, horizon):
                        try:
                            rows = await self.router.reconcile(session, name, grace=self.grace)
                        except BagbotError as exc:
                            self._log.warning("reconcile_failed", connector=name, error=exc)
                            continue
                        changed += len(rows)
                finally:
                    await lock.release()
                self._log.info("reconcile_round", changed=changed)
            else:
                self._log.info("reconcile_skipped", reason="another instance is reconciling")
            metrics.set_unknown_orders(await self._run(session, _awaiting, horizon))
            metrics.set_trading_state(await self._run(session, scope_states))
        finally:
            await _maybe(session.close())
        return changed

    async def run_forever(self) -> None:
        """A round now, then one every ``interval`` seconds until :meth:`stop`; a failed
        round is logged (``reconcile_round_failed``) and the next one still runs."""
        if self.interval <= 0:
            return
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as exc:
                self._log.error("reconcile_round_failed", error=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def start(self) -> None:
        """Run :meth:`run_forever` as a task of the running loop (nothing when off)."""
        if self.interval > 0 and self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(
                self.run_forever(), name="bagbot-reconciler")

    async def stop(self, wait: float | None = None) -> None:
        """Stop after the round in progress, if any; cancel it after ``wait`` seconds
        (a cancelled round leaves rows as they were: the next round resumes them)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=wait)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
