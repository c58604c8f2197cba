"""Engines and sessions: SQLite by default, any SQLAlchemy URL (PostgreSQL) by choice.

SQLite is set up for several processes writing one file: WAL journal, a busy timeout, and
``BEGIN IMMEDIATE`` for every transaction, so two writers queue for the lock instead of one
failing with "database is locked" halfway through.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from bagbot_core.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

ENV_DATABASE_URL = "BAGBOT_DATABASE_URL"
#: How errors name the setting a database URL comes from.
URL_SETTING = f"--database-url / {ENV_DATABASE_URL}"
ENV_SQLITE_BUSY_TIMEOUT = "BAGBOT_SQLITE_BUSY_TIMEOUT_MS"
DEFAULT_BUSY_TIMEOUT_MS = 30_000

#: Set while a transaction that may skip its disk flush begins (see store.commit).
RELAXED_SYNC: ContextVar[bool] = ContextVar("bagbot_relaxed_sync", default=False)
#: ``Connection.info`` key, true on a SQLite connection of a bagbot engine: its every
#: transaction begins ``IMMEDIATE``, holding the write lock (see user_lock).
BEGINS_IMMEDIATE = "bagbot_begins_immediate"
_SYNC_LEVEL = "bagbot_synchronous"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_E = TypeVar("_E")

#: Python module of a database driver -> what to install for it.
_DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle", "psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'",
    "asyncpg": "asyncpg", "pg8000": "pg8000", "pyodbc": "pyodbc", "aiosqlite": "aiosqlite",
}


def default_database_path() -> Path:
    """``$XDG_DATA_HOME/bagbot/bagbot.db`` (``~/.local/share/bagbot/bagbot.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bagbot" / "bagbot.db"


def database_url(url: str | None = None) -> str:
    """The URL to use: ``url``, else ``BAGBOT_DATABASE_URL``, else the default SQLite file.

    :raises ConfigurationError: the URL holds NUL or bytes that are not UTF-8 (no driver
        can pass them on).
    """
    if url is None:
        from bagbot_core.settings import Settings

        url = Settings.from_env(only=("database_url",)).database_url
    chosen = url
    if chosen:
        if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in chosen):
            raise ConfigurationError(
                f"the database URL ({URL_SETTING}) contains NUL or bytes that are not UTF-8 "
                "text: write it in UTF-8"
            )
        return chosen
    return f"sqlite:///{default_database_path()}"


def _busy_timeout_ms() -> int:
    from bagbot_core.settings import Settings

    return Settings.from_env(only=("sqlite_busy_timeout_ms",)).sqlite_busy_timeout_ms


def _configure_sqlite(engine: Engine) -> None:
    busy_ms = _busy_timeout_ms()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()
        record.info[_SYNC_LEVEL] = "FULL"
        record.info[BEGINS_IMMEDIATE] = True

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Full durability unless this transaction asked otherwise (store.commit); SQLite
        # only lets the level change between transactions, and keeps it per connection:
        # the PRAGMA is sent only when the level changes.
        level = "NORMAL" if RELAXED_SYNC.get() else "FULL"
        info = conn.info
        if info.get(_SYNC_LEVEL) != level:
            conn.exec_driver_sql(f"PRAGMA synchronous = {level}")
            info[_SYNC_LEVEL] = level
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def parse_url(url: str | URL) -> URL:
    """``url`` parsed; a malformed one is a :class:`ConfigurationError` that names the
    setting (and never quotes the text: it may hold a password)."""
    try:
        return make_url(url)
    except Exception:
        raise ConfigurationError(
            f"invalid database URL ({URL_SETTING}): not a SQLAlchemy URL; write e.g. "
            "sqlite:////path/to/bagbot.db or postgresql+psycopg://USER@HOST/DBNAME"
        ) from None


def _create(factory: Callable[..., _E], url: URL, **kwargs: Any) -> _E:
    """``factory(url)``, with a missing driver or unknown dialect as a ConfigurationError."""
    try:
        return factory(url, **kwargs)
    except NoSuchModuleError:
        raise ConfigurationError(
            f"the database URL ({URL_SETTING}) names the dialect {url.drivername!r},"
            " which SQLAlchemy does not know: bagbot runs on sqlite:///PATH and "
            "postgresql+psycopg://USER@HOST/DBNAME"
        ) from None
    except ImportError as exc:
        module = exc.name or str(exc)
        package = _DRIVER_PACKAGES.get(module.split(".")[0], module)
        raise ConfigurationError(
            f"the database URL ({URL_SETTING}) needs the Python driver {module!r} for "
            f"{url.drivername!r}, which is not installed: pip install {package} "
            "(bagbot is tested on SQLite and PostgreSQL: pip install 'bagbot-core[postgres]')"
        ) from None
    except (TypeError, ValueError) as exc:  # e.g. a query argument the driver does not take
        text = str(exc).replace(url.password, "***") if url.password else str(exc)
        raise ConfigurationError(
            f"the database URL ({URL_SETTING}) cannot be used: {text}"
        ) from None


def _prepare_sqlite_path(url: str | URL) -> None:
    parsed = parse_url(url)
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith(
        "file:"
    ):
        directory = Path(parsed.database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the directory '{directory}' for the SQLite "
                f"database ({URL_SETTING}): {exc.strerror or exc}; check the path"
            ) from None


#: A pooled server connection used this recently is handed out without a ping.
PING_BYPASS_SECONDS = 0.5
_LAST_USED = "bagbot_last_used"


def _ping_when_idle(engine: Engine) -> None:
    """Ping a server connection before it is handed out, unless it was in use within the
    last :data:`PING_BYPASS_SECONDS`.

    A connection the server or the network dropped (a restart, an idle timeout) is then
    replaced before a transaction starts on it. SQLAlchemy's ``pool_pre_ping`` pings on
    every checkout: two round trips per routed order, one per transaction. A connection
    that answered half a second ago is alive but for a drop in that half second (the same
    trade-off as HikariCP's ``aliveBypassWindowMs``), which fails its next statement with
    SQLAlchemy's ``OperationalError`` (``connection_invalidated`` set), as any drop in
    the middle of a transaction does, and the pool replaces it. The router tries its
    first statement of a step once more on such an error (see ``Router._lock`` and
    ``Router._record_answer``).
    """
    @event.listens_for(engine, "connect")
    def _connected(_dbapi_conn: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is not None and time.monotonic() - last <= PING_BYPASS_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # The pool discards the connection and checks out a new one.
            raise DisconnectionError(f"the pooled connection is gone: {exc}") from exc
        record.info[_LAST_USED] = time.monotonic()


def _roll_back_open_transactions_on_return(engine: Engine) -> None:
    """Reset a connection returned to the pool only when it is inside a transaction.

    For an engine made with ``pool_reset_on_return=None``. A transaction left open would
    hold SQLite's write lock; one that ended (committed or rolled back) needs no rollback.
    """

    @event.listens_for(engine, "reset")
    def _reset(dbapi_conn: Any, _record: Any, state: Any) -> None:
        if state.terminate_only or not state.asyncio_safe:
            return  # discarded without a close handshake: nothing can be awaited
        driver = getattr(dbapi_conn, "driver_connection", None)
        if getattr(driver, "in_transaction", True):  # unknown: roll back, as the pool would
            dbapi_conn.rollback()


def get_engine(url: str | None = None, *, create_tables: bool = True) -> Engine:
    """A process-wide engine per URL (created once, then reused).

    :param url: SQLAlchemy URL; default :func:`database_url`.
    :param create_tables: create missing bagbot tables (idempotent) on first use.
    """
    resolved = database_url(url)
    with _lock:
        engine = _engines.get(resolved)
        if engine is not None:
            return engine
        parsed = parse_url(resolved)
        if parsed.get_backend_name() == "sqlite":
            _prepare_sqlite_path(parsed)
            engine = _create(create_engine, parsed)
            _configure_sqlite(engine)
        else:
            engine = _create(create_engine, parsed)
            _ping_when_idle(engine)
        if create_tables:
            try:
                init_db(engine)
            except BaseException:
                engine.dispose()
                raise
        _engines[resolved] = engine
        return engine


def get_async_engine(url: str | None = None, *, create_tables: bool = True) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``url`` (``sqlite`` -> aiosqlite, ``postgresql`` -> psycopg).

    Needs the ``bagbot-core[asyncio]`` extra (greenlet, aiosqlite).
    """
    try:
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError as exc:
        raise ConfigurationError(
            f"async database sessions need the asyncio extra: pip install 'bagbot-core[asyncio]' "
            f"({exc})"
        ) from None
    parsed = parse_url(database_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite_path(parsed)
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        # The pool's rollback of every returned connection is a thread hop on aiosqlite:
        # two per routed order, for connections whose transaction already ended.
        from bagbot_core import aiosqlite_hops

        one_hop = aiosqlite_hops.dbapi()  # None: SQLAlchemy's own cursors
        engine = _create(create_async_engine, parsed, pool_reset_on_return=None,
                         **({} if one_hop is None else {"module": one_hop}))
        _configure_sqlite(engine.sync_engine)
        _roll_back_open_transactions_on_return(engine.sync_engine)
    else:
        engine = _create(create_async_engine, parsed)
        _ping_when_idle(engine.sync_engine)
    if create_tables:
        # DDL runs once through the matching synchronous engine (same database, same tables).
        sync_driver = "sqlite" if backend == "sqlite" else "postgresql+psycopg"
        if backend in ("sqlite", "postgresql"):
            get_engine(parsed.set(drivername=sync_driver).render_as_string(hide_password=False))
    return engine


def create_read_engine(url: str, *, busy_timeout_ms: int | None = None) -> Engine:
    """A new engine for reads that must never queue behind a writer (the service's token
    checks): autocommit, so each statement reads what was committed before it.

    On SQLite the connections are ``query_only`` and never ``BEGIN IMMEDIATE``: in WAL mode a
    reader does not wait for the write lock. ``busy_timeout_ms`` bounds what a reader waits
    in the rare cases SQLite still makes it (a WAL being recovered or reset); default the
    configured busy timeout. On a server the connections are not pinged before use (one
    round trip per read, not two): a read that finds its connection dropped raises an error
    with ``connection_invalidated`` set, and a retry gets a new one. The caller disposes of
    the engine.
    """
    parsed = parse_url(sync_url(database_url(url)))
    if parsed.get_backend_name() != "sqlite":
        return _create(create_engine, parsed, isolation_level="AUTOCOMMIT")
    busy_ms = _busy_timeout_ms() if busy_timeout_ms is None else busy_timeout_ms
    engine = _create(create_engine, parsed, isolation_level="AUTOCOMMIT")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    return engine


def init_db(engine: Engine) -> None:
    """Make sure ``engine``'s database has bagbot's tables at the current schema.

    An empty database is created through the migrations; one behind the current schema is
    refused with a :class:`ConfigurationError` telling to run ``bagbot db upgrade``; so is a
    SQLite file that cannot be opened (a path that is a directory, a read-only place).
    """
    from bagbot_core.migrate import ensure_schema

    try:
        ensure_schema(engine)
    except OperationalError as exc:
        if engine.dialect.name != "sqlite" or "unable to open" not in str(exc.orig):
            raise  # e.g. a server that is down: may pass, not a setting to fix
        raise ConfigurationError(
            f"cannot open the SQLite database {str(engine.url.database)!r} "
            f"({URL_SETTING}): {exc.orig}; check the path (a file in a writable directory)"
        ) from None


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False)


def get_db(url: str | None = None) -> Iterator[Session]:
    """The seed's generator: ``db = next(get_db())``; closes the session when exhausted."""
    session = session_factory(get_engine(url))()
    try:
        yield session
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def sync_url(url: str) -> str:
    """The synchronous-driver form of ``url`` (``sqlite+aiosqlite`` -> ``sqlite``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    elif backend == "postgresql" and parsed.get_driver_name() in ("asyncpg", "psycopg_async"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)
