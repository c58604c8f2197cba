"""What one service process holds while it runs: the router, the database, the limits, and
the requests in flight (which a shutdown waits for)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bagbot_core.router import Router
from bagbot_core.service.config import ServiceSettings
from bagbot_core.service.token_check import TokenChecker
from bagbot_core.tokens import TokenIdentity


class InFlight:
    """The request tasks running now: a shutdown waits for them, then cancels the rest."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self._tasks:
                self._idle.set()
        return self._idle

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task under an ASGI server
            yield
            return
        self._tasks.add(task)
        self._event().clear()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._event().set()

    async def wait(self, seconds: float) -> bool:
        """Wait until none is running, at most ``seconds``; ``True`` if none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event().wait(), seconds)
        return not self._tasks

    def cancel(self) -> int:
        """Cancel every request still running (a route in flight records ``unknown``)."""
        for task in self._tasks:
            task.cancel()
        return len(self._tasks)


class KeyLocks:
    """One asyncio lock per idempotency key, dropped when nobody holds or waits for it:
    retries of one key in this process take turns, so the first creates the order and the
    others see its row (and answer 200)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        lock = entry[0] if entry is not None else asyncio.Lock()
        self._locks[key] = (lock, (entry[1] if entry is not None else 0) + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Runtime:
    """The process's service state, on ``app.state.bagbot`` while the app runs."""

    def __init__(self, settings: ServiceSettings, url: str, router: Router,
                 engine: AsyncEngine, limiter: Any, inflight: InFlight | None = None) -> None:
        self.settings = settings
        #: The database's synchronous URL.
        self.url = url
        #: Checks the Bearer tokens: reads that never wait for SQLite's write lock.
        self.tokens = TokenChecker(url)
        self.router = router
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.limiter = limiter
        self.inflight = inflight if inflight is not None else InFlight()
        self.keys = KeyLocks()
        #: Plugins loaded and the database reached at start-up.
        self.ready = False

    async def authenticate(self, raw: str) -> TokenIdentity | None:
        return await self.tokens.authenticate(raw)


def runtime(request: Request) -> Runtime:
    """The running app's :class:`Runtime` (a FastAPI dependency)."""
    service: Runtime = request.app.state.bagbot
    return service


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    """One ``AsyncSession`` per request (a FastAPI dependency), closed after it."""
    async with runtime(request).sessions() as db:
        yield db
