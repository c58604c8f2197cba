"""The service's token check reads the ``api_tokens`` row on every request without taking
SQLite's write lock: requests authenticate while a writer holds it, many orders and reads at
once all succeed, and a revocation made by another process applies to the very next request.
Real HTTP on loopback, a SQLite file and the PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from bagbot_core.db import create_read_engine, get_engine, session_factory
from bagbot_core.models import ApiToken, utcnow
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.service.app import create_app
from bagbot_core.service.config import ServiceSettings
from bagbot_core.service.token_check import TokenChecker
from bagbot_core.tokens import (
    TOKEN_ROW,
    authenticate,
    check_token,
    create_token,
    forget_verified,
)
from tests.service_helpers import Served, make_token, serve_in_thread

PAPER = {"connector": "paper", "symbol": "BTC/USDT", "side": "buy", "type": "market",
         "amount": "0.01"}
#: Seconds a request may take while another connection holds the write lock (the old token
#: check waited for the lock: the busy timeout below, far longer).
ANSWER_WITHIN = 20.0


@pytest.fixture(autouse=True)
def long_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_SQLITE_BUSY_TIMEOUT_MS", "120000")


@contextlib.contextmanager
def running(db_url: str) -> Iterator[Served]:
    router = Router(PluginRegistry(disabled=(), load_entrypoints=False), limits=RiskLimits())
    settings = ServiceSettings(rate_limit=0)
    with serve_in_thread(create_app(settings, database_url=db_url, router=router),
                         settings) as served:
        yield served


def sqlite_path(url: str) -> str:
    path = make_url(url).database
    assert path
    return path


def last_used(db_url: str, token_id: str) -> dt.datetime | None:
    with session_factory(get_engine(db_url))() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        return row.last_used_at


def set_last_used(db_url: str, token_id: str, when: dt.datetime) -> None:
    with session_factory(get_engine(db_url))() as session:
        session.execute(update(ApiToken).where(ApiToken.id == token_id)
                        .values(last_used_at=when))
        session.commit()


def test_a_request_authenticates_while_a_writer_holds_the_sqlite_lock(sqlite_url: str) -> None:
    token = make_token(sqlite_url, "alice")
    token_id = token.split("_")[1]
    stale = utcnow() - dt.timedelta(minutes=5)
    with running(sqlite_url) as served:
        with served.client(token) as client:
            assert client.get("/v1/me").status_code == 200  # verified and cached
        set_last_used(sqlite_url, token_id, stale)  # so this request owes a write
        holder = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool, \
                    served.client(token) as client:
                answer = pool.submit(client.get, "/v1/me").result(ANSWER_WITHIN)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == "alice"
    # The write owed waited for the lock, after the answer; the shutdown let it finish.
    written = last_used(sqlite_url, token_id)
    assert written is not None and written > stale + dt.timedelta(minutes=1)


def test_many_orders_and_reads_at_once_all_succeed(db_url: str) -> None:
    """Paper orders keep the database's writers busy while other clients read: no request
    fails (on SQLite, the token check used to wait for the write lock)."""
    writers = [make_token(db_url, f"writer{n}") for n in range(8)]
    readers = [make_token(db_url, f"reader{n}") for n in range(8)]
    with running(db_url) as served:

        def write(token: str) -> list[int]:
            with served.client(token) as client:
                return [client.post("/v1/orders", json=PAPER).status_code for _ in range(5)]

        def read(token: str) -> list[int]:
            with served.client(token) as client:
                return [client.get(path).status_code
                        for _ in range(10) for path in ("/v1/me", "/v1/orders")]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            wrote = pool.map(write, writers)
            read_ = pool.map(read, readers)
            assert [c for codes in wrote for c in codes] == [201] * 40
            assert [c for codes in read_ for c in codes] == [200] * 160
        with served.client(readers[0]) as client:
            assert client.get("/v1/orders").json()["orders"] == []  # a reader's own: none


def test_a_revocation_by_another_process_applies_to_the_next_request(db_url: str) -> None:
    token = make_token(db_url, "alice")
    token_id = token.split("_")[1]
    with running(db_url) as served, served.client(token) as client:
        assert client.get("/v1/me").status_code == 200  # verified and cached
        subprocess.run([str(Path(sys.executable).with_name("bagbot")), "--database-url",
                        db_url, "tokens", "revoke", token_id],
                       check=True, capture_output=True, env=dict(os.environ))
        refused = client.get("/v1/me")
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"


def test_a_reader_the_loop_cannot_serve_waits_in_a_thread(sqlite_url: str) -> None:
    """A connection in exclusive locking mode shuts every reader out (SQLite answers
    ``busy``): the loop's read fails at once and the thread's waits for the lock."""
    with session_factory(get_engine(sqlite_url))() as session:
        raw, made = create_token(session, "alice")
    forget_verified()
    get_engine(sqlite_url).dispose()  # the holder must be the file's only connection
    holder = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None,
                             check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE api_tokens SET label = 'held' WHERE id = ?", (made.token_id,))
    holder.execute("COMMIT")  # the exclusive lock stays until the connection closes
    probe = create_read_engine(sqlite_url, busy_timeout_ms=0)  # what the loop reads with
    try:
        with pytest.raises(OperationalError, match="locked"), probe.connect() as conn:
            conn.execute(TOKEN_ROW, {"token_id": made.token_id}).first()
    finally:
        probe.dispose()
    release = threading.Timer(0.5, holder.close)

    async def check() -> object:
        checker = TokenChecker(sqlite_url)
        try:
            release.start()
            return await checker.authenticate(raw)
        finally:
            await checker.aclose(wait=30)

    try:
        assert asyncio.run(check()) == made
    finally:
        release.join()
    assert last_used(sqlite_url, made.token_id) is not None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_read_only_check_agrees_with_authenticate(sqlite_url: str,
                                                      data: st.DataObject) -> None:
    engine = get_engine(sqlite_url)
    with session_factory(engine)() as session:
        raw, made = create_token(session, "alice")
    position = data.draw(st.integers(0, len(raw)))
    text = data.draw(st.one_of(
        st.just(raw), st.text(max_size=80),
        st.builds(lambda s: raw[:position] + s + raw[position + 1:],
                  st.text(min_size=0, max_size=2))))
    reader = create_read_engine(sqlite_url)
    try:
        with reader.connect() as conn:
            found, _due = check_token(conn, text)
    finally:
        reader.dispose()
    with session_factory(engine)() as session:
        assert found == authenticate(session, text)
    assert (found == made) == (text == raw)


def test_the_read_engine_cannot_write(sqlite_url: str) -> None:
    get_engine(sqlite_url)
    reader = create_read_engine(sqlite_url)
    try:
        with reader.connect() as conn, pytest.raises(Exception, match="readonly"):
            conn.exec_driver_sql("DELETE FROM api_tokens")
    finally:
        reader.dispose()


def test_requests_without_a_usable_token_stay_401(db_url: str) -> None:
    token = make_token(db_url, "alice")
    expired = make_token(db_url, "bob", expires_in=dt.timedelta(hours=1))
    with running(db_url) as served:
        with served.client(expired) as client:
            assert client.get("/v1/me").status_code == 200
        with session_factory(get_engine(db_url))() as session:
            session.execute(update(ApiToken).where(ApiToken.id == expired.split("_")[1])
                            .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
            session.commit()
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with httpx.Client(base_url=served.url, timeout=60) as client:
            for bad in (expired, forged, "bgt_" + "z" * 12 + token[16:], "nonsense"):
                response = client.get("/v1/me", headers={"Authorization": f"Bearer {bad}"})
                assert response.status_code == 401, bad
            ok = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200


@pytest.mark.postgres
def test_a_dropped_server_connection_is_replaced_for_the_next_read(postgres_url: str) -> None:
    with session_factory(get_engine(postgres_url))() as session:
        raw, made = create_token(session, "alice")

    async def check() -> None:
        checker = TokenChecker(postgres_url)
        try:
            assert await checker.authenticate(raw) == made
            with checker._thread_engine.connect() as conn:  # the pooled connection
                pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with get_engine(postgres_url).connect() as other:
                assert other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})"
                                             ).scalar_one() is True
            assert await checker.authenticate(raw) == made
        finally:
            await checker.aclose(wait=30)

    asyncio.run(check())
