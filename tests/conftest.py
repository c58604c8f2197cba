"""Shared fixtures: real databases (SQLite files, the PostgreSQL server), routers, audit events
and a clean environment for the command line."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings
from sqlalchemy import text
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.models import Base
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router, set_router
from bagbot_core.testing.databases import postgres_schema_url
from tests import environment
from tests.scripted import ScriptedExchange, scripted_plugin

# Shared CI machines are noisy: no per-example deadline; failures print a reproduction blob.
settings.register_profile("bagbot", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("BAGBOT_HYPOTHESIS_PROFILE", "bagbot"))

@pytest.fixture(scope="session", autouse=True)
def no_risk_config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A developer's own risk config (``BAGBOT_CONFIG``, ``~/.config/bagbot/bagbot.toml``)
    never changes what a test's router checks."""
    patch = pytest.MonkeyPatch()
    patch.delenv("BAGBOT_CONFIG", raising=False)
    patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL into a fresh schema of the PostgreSQL server, dropped after the run.

    Skips (visibly) when no server answers, unless ``BAGBOT_REQUIRE_POSTGRES=1`` -- CI sets
    it, so there the skip becomes a failure.
    """
    with postgres_schema_url() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/bagbot.db"
    dispose_engines()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on a SQLite file and on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    url = str(request.getfixturevalue("postgres_url"))
    engine = get_engine(url)
    with engine.begin() as conn:  # a clean slate per test in the shared schema
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Session]:
    session = session_factory(get_engine(db_url))()
    yield session
    session.close()


@pytest.fixture
def log_stream_json() -> Iterator[io.StringIO]:
    """Audit events of the test, as JSON lines."""
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, force=True)
    yield stream
    audit.configure(force=True)


@pytest.fixture
def events(log_stream_json: io.StringIO) -> Callable[[str], list[dict[str, Any]]]:
    """``events(name)``: the test's audit events of that name, parsed."""
    def named(name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in log_stream_json.getvalue().splitlines()]
        return [e for e in lines if e.get("event") == name]

    return named


@pytest.fixture
def exchange() -> ScriptedExchange:
    return ScriptedExchange()


@pytest.fixture
def registry(exchange: ScriptedExchange) -> PluginRegistry:
    return PluginRegistry(disabled=(), load_entrypoints=False,
                          plugins=[("scripted", scripted_plugin(exchange))])


@pytest.fixture
async def router(registry: PluginRegistry) -> object:
    r = Router(registry, limits=RiskLimits(), allow_live=False)
    set_router(r)
    yield r
    set_router(None)
    await r.aclose()


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No setting leaks in; nothing is written outside tmp_path; global state is restored."""
    for name in environment.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))  # no risk config file
    monkeypatch.setenv("USER", "tester")
    saved_config, saved_configured = structlog.get_config(), audit._configured
    set_router(None)
    yield
    set_router(None)
    structlog.configure(**saved_config)
    audit._configured = saved_configured


@pytest.fixture
def scripted(registry: PluginRegistry, exchange: ScriptedExchange) -> ScriptedExchange:
    """``exchange``, behind a router the command line uses (installed globally)."""
    set_router(Router(registry, limits=RiskLimits(), allow_live=False))
    return exchange
