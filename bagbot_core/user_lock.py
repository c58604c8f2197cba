"""The per-user lock that makes "check the limits, then write the order" one atomic step.

Two processes routing for the same user must not both read the history, both see room under
a limit and both insert: the second must read after the first committed. So the router runs
the checks and inserts the ``pending`` row in one transaction that first takes a lock
scoped to the user and held until that transaction ends (commit or rollback, including a
dead process's connection being closed).

* PostgreSQL: ``pg_advisory_xact_lock`` on a 64-bit hash of the user id. An advisory lock
  rather than ``SELECT ... FOR UPDATE`` on a row per user: it needs no table and no row to
  exist (a locked row would need one per user, created race-free before the first order),
  writes nothing (no dead tuples, no WAL for a lock row on every order), and is released
  with the transaction. Users whose hashes collide (odds 2**-64 per pair) only wait for
  each other; nothing is ever counted wrong. Other users' orders never wait: each user has
  their own key. The default READ COMMITTED isolation is what makes it exact: every
  statement after the lock sees every order committed before it was granted.
* SQLite: the database's single write lock, which bagbot's engines take with
  ``BEGIN IMMEDIATE`` (:mod:`bagbot_core.db`). For an engine set up elsewhere, whose
  transaction would begin deferred and could read a snapshot older than the lock, a no-op
  ``UPDATE`` is the transaction's first statement: it takes the write lock before anything
  is read (a bagbot engine's transaction already holds it: no statement is needed). SQLite
  has one writer at a time anyway, so every user shares it.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session

from bagbot_core.db import BEGINS_IMMEDIATE

_PERSON = b"bagbot-user"


def user_lock_key(user_id: str) -> int:
    """The signed 64-bit advisory-lock key of ``user_id`` (stable across processes and
    Python versions, unlike ``hash()``)."""
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8,
                             person=_PERSON).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_user(session: Session, user_id: str) -> None:
    """Begin a fresh transaction on ``session`` that holds ``user_id``'s lock.

    A transaction the session already had is committed first (the router commits its
    session anyway), so the lock is the first thing the new transaction does. The lock is
    released when the caller commits or rolls back.
    """
    if session.in_transaction():
        session.commit()
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": user_lock_key(user_id)})
    elif dialect == "sqlite" and not connection.info.get(BEGINS_IMMEDIATE):
        connection.exec_driver_sql("UPDATE orders SET id = id WHERE 0")
