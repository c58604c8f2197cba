"""Schema versions: check them cheaply, upgrade them with Alembic on request.

A new, empty database is created at :data:`~bagbot_core.migrations.HEAD`. An existing
database behind it is never changed behind the user's back: bagbot refuses to use it and
says to run ``bagbot db upgrade`` (back up first). Databases created before migrations
existed (tables present, no ``alembic_version``) are taken as revision ``0001``. A revision
bagbot never wrote (a damaged ``alembic_version``, another application's database) is a
:class:`ConfigurationError`, like every other problem with the database setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text

from bagbot_core.db import URL_SETTING
from bagbot_core.errors import ConfigurationError
from bagbot_core.migrations import HEAD

FIRST_RELEASED = "0001"


def known_revisions() -> frozenset[str]:
    """Every revision this bagbot has a migration for: ``0001`` up to HEAD."""
    return frozenset(f"{n:04d}" for n in range(1, int(HEAD) + 1))


def _is_newer(revision: str) -> bool:
    return len(revision) == 4 and revision.isascii() and revision.isdigit() and revision > HEAD


def _check_revision(revision: str, engine: Engine) -> None:
    """:raises ConfigurationError: ``revision`` is not one this bagbot can upgrade from."""
    if revision in known_revisions():
        return
    url = engine.url.render_as_string(hide_password=True)
    if _is_newer(revision):
        raise ConfigurationError(
            f"database {url} has schema revision {revision}, newer than this "
            f"bagbot's {HEAD}: upgrade bagbot"
        )
    raise ConfigurationError(
        f"database {url} has schema revision {revision!r} in its "
        f"alembic_version table, which no bagbot wrote: the database is damaged or is not "
        f"bagbot's; restore it from a backup, or set {URL_SETTING} to bagbot's database"
    )


def current_revision(connection: Connection) -> str | None:
    """The database's revision; ``None`` for an empty database."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        row = connection.execute(text("SELECT version_num FROM alembic_version")).first()
        if row is not None:
            return str(row[0])
    if "orders" in tables:
        return FIRST_RELEASED
    return None


def _config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to ``revision``; returns (before, after).

    :raises ConfigurationError: the database's revision is not bagbot's, or ``revision`` is
        unknown.
    """
    from alembic import command
    from alembic.util import CommandError

    with engine.begin() as connection:
        before = current_revision(connection)
        if before is not None:
            _check_revision(before, engine)
        config = _config(connection)
        if before is not None and not _has_version_table(connection):
            command.stamp(config, before)
        try:
            command.upgrade(config, revision)
        except CommandError as exc:
            raise ConfigurationError(
                f"cannot upgrade to schema revision {revision!r}: {exc} "
                f"(known revisions: {', '.join(sorted(known_revisions()))}, or head)"
            ) from None
        after = current_revision(connection)
    assert after is not None
    return before, after


def _has_version_table(connection: Connection) -> bool:
    return "alembic_version" in inspect(connection).get_table_names()


def ensure_schema(engine: Engine) -> None:
    """Create a new database at HEAD; refuse one that needs an upgrade.

    :raises ConfigurationError: the database is behind (run ``bagbot db upgrade``) or ahead
        (a newer bagbot wrote it) of this bagbot.
    """
    with engine.connect() as connection:
        revision = current_revision(connection)
        connection.commit()
    if revision == HEAD:
        return
    if revision is None:
        upgrade(engine)
        return
    _check_revision(revision, engine)  # damaged or newer: refused here
    url = engine.url.render_as_string(hide_password=True)
    raise ConfigurationError(
        f"database {url} has schema revision {revision}; this bagbot needs {HEAD}: "
        "back it up, then run `bagbot db upgrade`"
    )
