"""One session per package: the core, each plugin under plugins/ (found automatically),
lint, typecheck, and the demo. ``nox`` runs them all; ``nox -s tests`` just the core."""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())

nox.options.sessions = ["tests", "plugin", "lint", "typecheck", "demo"]
nox.options.error_on_missing_interpreters = True

CORE_TEST = ".[testing,postgres,asyncio]"


@nox.session
def tests(session: nox.Session) -> None:
    """The core's test suite (SQLite files and the PostgreSQL server)."""
    session.install("-e", CORE_TEST)
    session.run("pytest", "tests", *session.posargs)


@nox.session
@nox.parametrize("name", PLUGINS, ids=PLUGINS)
def plugin(session: nox.Session, name: str) -> None:
    """One plugin: install it next to the core, smoke-import it, run its own tests."""
    path = ROOT / "plugins" / name
    session.install("-e", CORE_TEST, "-e", str(path))
    session.run("python", "-c", f"import {name}.plugin")
    session.run("pytest", str(path / "tests"), "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("mypy>=1.10", "-e", ".[testing,postgres,asyncio,ccxt]",
                    *(arg for name in PLUGINS for arg in ("-e", f"plugins/{name}")))
    session.run("mypy", "bagbot_core", *(f"plugins/{name}/{name}" for name in PLUGINS))


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: route orders through the paper exchange into SQLite."""
    session.install(".")
    tmp = session.create_tmp()
    session.run("bagbot", "--database-url", f"sqlite:///{tmp}/demo.db", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness (not in the default run): bagbot against the hand-written floor.

    ``nox -s bench`` runs everything (about 15 minutes; PostgreSQL at 127.0.0.1 if it answers);
    ``nox -s bench -- --quick`` is the smoke run; other arguments go to ``python -m benchmarks``.
    """
    session.install("-e", ".[postgres,asyncio,ccxt]", "-e", "plugins/bagbot_binance",
                    "aiohttp>=3.9")
    session.run("python", "-m", "benchmarks", *session.posargs)
