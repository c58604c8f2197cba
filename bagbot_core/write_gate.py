"""Hand SQLite's write lock from coroutine to coroutine without the busy handler's sleeps.

A SQLite file has one write lock, and every bagbot transaction takes it when it begins
(``BEGIN IMMEDIATE``). A connection that finds it taken sleeps in SQLite's busy handler --
1, 2, 5, 10 ... up to 100 ms between tries -- so with many orders in flight on one event
loop the lock often sits free while its next user sleeps. The router's ``AsyncSession``
transactions on a SQLite file therefore first take this process's asyncio lock for that
file, on that event loop: the next transaction starts as soon as the last one ends, in the
order they asked. Other processes, threads and transactions still meet at SQLite's own
lock, as before; the gate only orders the ones that pass through it.

A gate held longer than SQLite's busy timeout is given up on: the transaction then begins
anyway and waits in SQLite's busy handler, as it would without the gate, so a holder that
never ends (a transaction a caller left open) costs a waiter its busy timeout twice at
worst, never a hang.
"""

from __future__ import annotations

import asyncio
import weakref

from bagbot_core.group_commit import sqlite_file

__all__ = ["gate_for"]

_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def gate_for(url: str | None) -> asyncio.Lock | None:
    """The running loop's gate for the SQLite file ``url`` names; ``None`` for any other
    database (or ``:memory:``)."""
    if url is None:
        return None
    path = sqlite_file(url)
    if path is None:
        return None
    loop = asyncio.get_running_loop()
    gates = _gates.get(loop)
    if gates is None:
        gates = _gates[loop] = {}
    gate = gates.get(path)
    if gate is None:
        gate = gates[path] = asyncio.Lock()
    return gate
