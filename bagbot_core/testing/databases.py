"""A throwaway PostgreSQL schema for tests.

:func:`postgres_schema_url` creates a schema with a unique name on the server named by
``BAGBOT_TEST_POSTGRES_URL`` (default :data:`DEFAULT_POSTGRES_URL`), yields a URL whose
``search_path`` is that schema, and drops it afterwards. When no server answers, the test
is skipped -- visibly, with the reason -- unless ``BAGBOT_REQUIRE_POSTGRES=1`` (CI sets it),
which turns the skip into a failure::

    @pytest.fixture
    def postgres_url() -> Iterator[str]:
        with postgres_schema_url() as url:
            yield url
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from bagbot_core.db import dispose_engines
from bagbot_core.settings import env_bool

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "ENV_POSTGRES_URL",
    "ENV_REQUIRE_POSTGRES",
    "postgres_schema_url",
]

ENV_POSTGRES_URL = "BAGBOT_TEST_POSTGRES_URL"
ENV_REQUIRE_POSTGRES = "BAGBOT_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def postgres_schema_url(
    base_url: str | None = None, *, prefix: str = "bagbot_test"
) -> Iterator[str]:
    """A URL into a fresh schema ``<prefix>_<random>``, dropped when the block ends.

    :param base_url: the server and database; default ``BAGBOT_TEST_POSTGRES_URL`` or
        :data:`DEFAULT_POSTGRES_URL`.
    :param prefix: the schema name's start, to tell suites' leftovers apart.

    Engines opened on the URL (:func:`bagbot_core.db.get_engine`) are disposed of before the
    schema is dropped.
    """
    base = base_url or os.environ.get(ENV_POSTGRES_URL, DEFAULT_POSTGRES_URL)
    try:
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
    except Exception as exc:
        _unreachable(base, exc)
    try:
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        admin.dispose()
        _unreachable(base, exc)
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _unreachable(base: str, exc: Exception) -> NoReturn:
    reason = f"PostgreSQL not reachable at {base}: {type(exc).__name__}: {exc}"
    if env_bool(ENV_REQUIRE_POSTGRES):
        pytest.fail(f"{reason} ({ENV_REQUIRE_POSTGRES}=1)")
    pytest.skip(reason)
