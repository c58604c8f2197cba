"""Database URLs that cannot work: one ``error:`` line naming the setting and the way out.

A directory that cannot be created, a driver that is not installed, a dialect SQLAlchemy
does not know, a malformed URL, a damaged ``alembic_version``: each is a
:class:`ConfigurationError` from the library (``get_engine``), and on the command line one
line on stderr, exit 1, no traceback -- and never the URL's password.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from bagbot_core.cli import cli
from bagbot_core.db import dispose_engines, get_async_engine, get_engine
from bagbot_core.errors import ConfigurationError
from bagbot_core.migrations import HEAD

BAGBOT = Path(sys.executable).with_name("bagbot")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-CANARY-7f3a"
SETTING = "BAGBOT_DATABASE_URL"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in ("BAGBOT_DATABASE_URL", "BAGBOT_LOG_FILE", "BAGBOT_LOG_LEVEL",
                 "BAGBOT_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("BAGBOT_LOG_FILE", str(tmp_path / "audit.log"))
    yield
    dispose_engines()


def one_error_line(stderr: str, exit_code: int, code: int = 1) -> str:
    assert exit_code == code, (exit_code, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def cli_error(monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> str:
    """The error line for ``args`` with ``url`` in the environment, and with ``--database-url``."""
    monkeypatch.setenv(SETTING, url)
    result = CliRunner().invoke(cli, list(args))
    line = one_error_line(result.stderr, result.exit_code)
    monkeypatch.delenv(SETTING)
    flagged = CliRunner().invoke(cli, ["--database-url", url, *args])
    assert one_error_line(flagged.stderr, flagged.exit_code) == line
    assert SETTING in line and "--database-url" in line
    assert PASSWORD not in line
    return line


COMMANDS = [("orders", "list"), ("route", "BTC/USDT", "buy", "0.001"), ("db", "init"),
            ("db", "upgrade")]


@pytest.mark.parametrize("args", COMMANDS)
def test_a_directory_that_cannot_be_created(monkeypatch: pytest.MonkeyPatch,
                                            args: tuple[str, ...]) -> None:
    line = cli_error(monkeypatch, "sqlite:////proc/nope/x.db", *args)
    assert "/proc/nope" in line and "check the path" in line
    with pytest.raises(ConfigurationError, match="check the path"):
        get_engine("sqlite:////proc/nope/x.db")


def test_a_path_that_is_a_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    line = cli_error(monkeypatch, f"sqlite:///{tmp_path}", "orders", "list")
    assert "cannot open the SQLite database" in line and "check the path" in line


@pytest.mark.parametrize(("url", "module", "install"), [
    (f"mysql://bagbot:{PASSWORD}@127.0.0.1/bagbot", "MySQLdb", "pip install mysqlclient"),
    (f"oracle://bagbot:{PASSWORD}@127.0.0.1/bagbot", "oracledb", "pip install oracledb"),
    (f"mssql+pyodbc://bagbot:{PASSWORD}@127.0.0.1/bagbot", "pyodbc", "pip install pyodbc"),
])
@pytest.mark.parametrize("args", COMMANDS)
def test_a_driver_that_is_not_installed(monkeypatch: pytest.MonkeyPatch, url: str, module: str,
                                        install: str, args: tuple[str, ...]) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    line = cli_error(monkeypatch, url, *args)
    assert repr(module) in line and install in line
    with pytest.raises(ConfigurationError, match=install):
        get_engine(url)


@pytest.mark.parametrize("args", COMMANDS)
def test_an_unknown_dialect(monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    line = cli_error(monkeypatch, f"nosuchdb://u:{PASSWORD}@127.0.0.1/x", *args)
    assert "'nosuchdb'" in line and "does not know" in line and "postgresql+psycopg" in line


@pytest.mark.parametrize("url", ["not a url", "://nothing", f"postgresql://u:{PASSWORD}@h:port/x",
                                 f"postgresql://u:{PASSWORD}@[::1/x", "sqlite:/x.db"])
@pytest.mark.parametrize("args", [*COMMANDS, ("db", "url")])
def test_a_malformed_url(monkeypatch: pytest.MonkeyPatch, url: str,
                         args: tuple[str, ...]) -> None:
    line = cli_error(monkeypatch, url, *args)
    assert "invalid database URL" in line and "sqlite:///" in line
    with pytest.raises(ConfigurationError, match="invalid database URL"):
        get_engine(url)


@pytest.mark.parametrize("url", [f"nosuchdb://u:{PASSWORD}@h/x", "not a url"])
def test_the_async_engine_refuses_them_too(url: str) -> None:
    with pytest.raises(ConfigurationError, match=SETTING):
        get_async_engine(url)


@pytest.mark.parametrize("args", [("orders", "list"), ("db", "url")])
def test_a_url_with_undecodable_bytes(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates; no driver takes them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAGBOT_")}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT),
               BAGBOT_DATABASE_URL=os.fsdecode(b"sqlite:///" + os.fsencode(tmp_path)
                                               + b"/\xff.db"))
    done = subprocess.run([str(BAGBOT), *args], capture_output=True, env=env, timeout=60,
                          check=False)
    line = one_error_line(done.stderr.decode("utf-8", "replace"), done.returncode)
    assert SETTING in line and "not UTF-8" in line


# -- alembic_version ----------------------------------------------------------------------------


@pytest.fixture
def damaged(db_url: str) -> Iterator[str]:
    """``db_url`` whose alembic_version holds garbage; repaired afterwards (the PostgreSQL
    schema is shared by the whole run)."""
    engine = get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'garbage'"))
    dispose_engines()  # the next engine checks the schema again
    yield db_url
    with get_engine(db_url, create_tables=False).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": HEAD})
    dispose_engines()


@pytest.mark.parametrize("args", [("orders", "list"), ("orders", "show", "1"),
                                  ("route", "BTC/USDT", "buy", "0.001"), ("db", "init"),
                                  ("db", "upgrade")])
def test_garbage_in_alembic_version(damaged: str, args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, ["--database-url", damaged, *args])
    line = one_error_line(result.stderr, result.exit_code)
    assert "'garbage'" in line and "alembic_version" in line
    assert "restore it from a backup" in line and SETTING in line
    dispose_engines()
    with pytest.raises(ConfigurationError, match="no bagbot wrote"):
        get_engine(damaged)


@pytest.mark.parametrize("revision", ["0000", "", "2", "\u0662"])
def test_other_revisions_bagbot_never_wrote(damaged: str, revision: str) -> None:
    with get_engine(damaged, create_tables=False).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    dispose_engines()
    with pytest.raises(ConfigurationError, match="no bagbot wrote"):
        get_engine(damaged)


def test_a_newer_revision_says_upgrade_bagbot(damaged: str) -> None:
    with get_engine(damaged, create_tables=False).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    dispose_engines()
    for args in (["orders", "list"], ["db", "upgrade"]):
        result = CliRunner().invoke(cli, ["--database-url", damaged, *args])
        assert "newer than this bagbot" in one_error_line(result.stderr, result.exit_code)
        dispose_engines()


@pytest.mark.parametrize("revision", ["bogus", "\x1b[2J", "9999"])
def test_an_unknown_target_revision(db_url: str, revision: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", db_url, "db", "upgrade", "--revision",
                                      revision])
    line = one_error_line(result.stderr, result.exit_code)
    assert "cannot upgrade to schema revision" in line and "\x1b" not in line
