"""Group commit: concurrent writers in one process share one disk flush.

The router commits an order's ``pending`` row before it sends the order, and that row must
be on disk first. With ``synchronous=FULL`` SQLite flushes its write-ahead log (WAL) inside
every commit, *while holding the database's single write lock*: 50 orders in flight wait
for 50 flushes one after the other. Databases solve this with group commit, and so does
this module, for a SQLite file:

1. the transaction commits with ``synchronous=NORMAL`` (:func:`begin_relaxed`): SQLite
   writes the WAL frames to the operating system and releases the write lock at once, no
   flush;
2. the caller then waits (:meth:`Flusher.wait` in a thread, :meth:`Flusher.wait_async` in a
   coroutine) for a flush *that started after its commit returned*. The first caller with
   no flush running starts one (it leads); callers arriving while a flush runs join the
   next one, which starts as soon as the running one ends; one ``fsync`` then covers every
   commit made before it started. The flush runs in a worker thread: an event loop never
   blocks on the disk.

Why one ``fdatasync`` of the ``-wal`` file is enough (SQLite flushes it the same way): it
works on the file (the inode), so any descriptor flushes the frames SQLite wrote through
its own. The file is opened by
path for every flush, so a WAL that SQLite deleted and created again is never missed. It
can only have been reset or deleted after a checkpoint copied every committed frame into
the database file and, at ``synchronous=NORMAL`` or ``FULL``, synced that file: a missing
``-wal`` means the data is in the database file, which is then flushed instead. The first
flush of each new WAL file also flushes its directory, as SQLite does (the file's name
must survive a power cut too). WAL recovery keeps the longest valid prefix of frames, so a
flushed commit never survives without the commits before it.

A failed ``fsync`` fails every caller of that flush, and every later one: after a failed
``fsync`` Linux may have dropped the dirty pages it could not write, and a WAL frame lost
in the middle invalidates every frame after it, so a later successful ``fsync`` proves
nothing about what was committed in between. The process then refuses to wait (each
routed order is recorded ``rejected``, nothing is sent) until it is restarted once the
disk is checked -- PostgreSQL stops on a failed ``fsync`` for the same reason.

Only SQLite files (:func:`for_url`): ``:memory:`` has no disk to wait for, and PostgreSQL
already group-commits on the server: a backend's commit waits until the WAL is flushed up
to its commit record, and one flush covers every commit record before its position, so
concurrent commits share flushes (``commit_delay``/``commit_siblings`` can widen the
groups). ``BAGBOT_GROUP_COMMIT=0`` turns this off: every ``pending`` row then commits with
SQLite's own flush again.

Flushers are per database file and process-wide (one for every thread and event loop of
the process); a forked child starts with none.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from bagbot_core.db import RELAXED_SYNC
from bagbot_core.settings import Settings

T = TypeVar("T")


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``BAGBOT_GROUP_COMMIT`` (default on).

    :raises ConfigurationError: a value that is neither true nor false.
    """
    return Settings.from_env(environ, only=("group_commit",)).group_commit


def begin_relaxed(session: Any, begin: Callable[..., T], *args: Any) -> T:
    """``begin(session, *args)``, the transaction it begins committing without a disk flush
    (``synchronous=NORMAL`` on a bagbot SQLite engine, see :mod:`bagbot_core.db`).

    The caller must then wait for a :class:`Flusher` before relying on what it committed.
    """
    token = RELAXED_SYNC.set(True)
    try:
        return begin(session, *args)
    finally:
        RELAXED_SYNC.reset(token)


class _Round:
    """One flush and the callers waiting for it."""

    __slots__ = ("done", "error", "futures")

    def __init__(self) -> None:
        self.done = False
        self.error: OSError | None = None
        self.futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []


class Flusher:
    """Shared flushes of one SQLite database file (see the module docstring).

    :param database: the database file's path, as SQLite opened it.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self.wal = database + "-wal"
        #: Flushes run (each one ``fsync`` of the WAL, or of the database file).
        self.flushes = 0
        #: Calls of :meth:`wait` and :meth:`wait_async`.
        self.waits = 0
        self._cond = threading.Condition()
        self._running: _Round | None = None
        self._queued: _Round | None = None
        self._failed: OSError | None = None
        self._synced_wal: tuple[int, int] | None = None  # (device, inode) of the last WAL

    def wait(self) -> None:
        """Block until a flush that started after this call has ended.

        :raises OSError: that flush, or an earlier one, failed.
        """
        with self._cond:
            round_, lead = self._join()
            if not lead:
                while not round_.done:
                    self._cond.wait()
        if lead:
            self._run(round_, chain=False)
        if round_.error is not None:
            raise _copy(round_.error) from round_.error

    async def wait_async(self) -> None:
        """:meth:`wait` for a coroutine: the flush runs in a worker thread.

        :raises OSError: that flush, or an earlier one, failed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            round_, lead = self._join()
            if round_.done:  # refused at once: an earlier flush failed
                future.set_exception(_copy(round_.error or OSError("flush failed")))
            else:
                round_.futures.append((loop, future))
        if lead:
            self._start(round_)
        await future

    # -- the rounds ----------------------------------------------------------------------

    def _join(self) -> tuple[_Round, bool]:
        """The round this caller waits for, and whether it must start it (lock held)."""
        self.waits += 1
        if self._failed is not None:
            refused = _Round()
            refused.done, refused.error = True, self._sticky()
            return refused, False
        if self._running is None:
            self._running = _Round()
            return self._running, True
        if self._queued is None:
            self._queued = _Round()
        return self._queued, False

    def _start(self, round_: _Round) -> None:
        try:
            _executor().submit(self._run, round_, chain=True)
        except RuntimeError:  # the interpreter is shutting down: flush here
            self._run(round_, chain=True)

    def _run(self, round_: _Round | None, *, chain: bool) -> None:
        """Flush for ``round_``, then start the round queued meanwhile: here if ``chain``
        (a worker thread), else in a worker (a caller's thread, which must return)."""
        while round_ is not None:
            error: OSError | None = None
            interrupted: BaseException | None = None
            try:
                self._sync()
            except OSError as exc:
                error = exc
            except BaseException as exc:  # e.g. KeyboardInterrupt: its waiters must not hang
                interrupted = exc
                error = OSError(errno.EINTR, f"the flush was interrupted ({type(exc).__name__})")
            with self._cond:
                self.flushes += 1
                if error is not None and interrupted is None and self._failed is None:
                    self._failed = error
                round_.error, round_.done = error, True
                finished = [round_]
                self._running, round_, self._queued = self._queued, self._queued, None
                if round_ is not None and self._failed is not None:
                    round_.error, round_.done = self._sticky(), True
                    finished.append(round_)
                    self._running = round_ = None
                self._cond.notify_all()
            for done in finished:
                _settle(done)
            if interrupted is not None:
                if round_ is not None:
                    self._start(round_)
                raise interrupted
            if round_ is not None and not chain:
                self._start(round_)
                return

    def _sync(self) -> None:
        try:
            fd = os.open(self.wal, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            # Checkpointed and deleted: the data is in the database file.
            _fsync_path(self.database)
            return
        try:
            _datasync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._synced_wal:  # a WAL file not flushed before: its name too
            _fsync_directory(os.path.dirname(self.wal) or ".")
            self._synced_wal = identity

    def _sticky(self) -> OSError:
        assert self._failed is not None
        failed = self._failed
        return OSError(failed.errno, (
            f"{failed.strerror or failed} (an earlier flush of {self.wal} failed: what was "
            "committed since may not be on disk; check the disk, then restart the process)"),
            failed.filename)


def _copy(error: OSError) -> OSError:
    """A fresh exception per waiter (one instance raised in many tasks would share and grow
    one traceback)."""
    if error.errno is None:
        return OSError(*error.args)
    return OSError(error.errno, error.strerror, error.filename)


def _resolve(future: asyncio.Future[None], error: OSError | None) -> None:
    if future.done():  # the waiter was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(_copy(error))


def _settle(round_: _Round) -> None:
    for loop, future in round_.futures:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
            loop.call_soon_threadsafe(_resolve, future, round_.error)


def _datasync(fd: int) -> None:
    """``fdatasync`` where there is one, as SQLite flushes its files: the data and what is
    needed to read it back (the size), not the modification time."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS, Windows
        os.fsync(fd)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _datasync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: str) -> None:
    """Flush a directory's entries; like SQLite, a file system that cannot is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the flushers of the process -----------------------------------------------------------

_lock = threading.Lock()
_flushers: dict[str, Flusher] = {}
_paths: dict[str, str | None] = {}
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bagbot-flush")
    return _pool


def sqlite_file(url: str) -> str | None:
    """The absolute path of the SQLite file ``url`` names; ``None`` for any other database,
    ``:memory:``, a temporary database or a ``file:`` URI."""
    path = _paths.get(url)
    if path is None and url not in _paths:
        parsed = make_url(url)
        database = parsed.database
        if (parsed.get_backend_name() != "sqlite" or not database or database == ":memory:"
                or database.startswith("file:") or parsed.query.get("uri")):
            path = None
        else:
            path = os.path.abspath(database)
        with _lock:
            _paths[url] = path
    return path


def flusher(database: str) -> Flusher:
    """The process's :class:`Flusher` of the SQLite file ``database`` (created once)."""
    database = os.path.abspath(database)
    found = _flushers.get(database)
    if found is None:
        with _lock:
            found = _flushers.setdefault(database, Flusher(database))
    return found


def for_url(url: str) -> Flusher | None:
    """The :class:`Flusher` of a SQLite file URL; ``None`` where group commit does not
    apply (see :func:`sqlite_file`)."""
    path = sqlite_file(url)
    return None if path is None else flusher(path)


def reset() -> None:
    """Forget every flusher (and a failed flush with it): tests, and a forked child."""
    global _pool
    _flushers.clear()
    _paths.clear()
    _pool = None


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    reset()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork)
