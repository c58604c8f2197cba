"""One session per package: the core, each plugin under plugins/ (found automatically),
lint, typecheck, and the demo. ``nox`` runs them all; ``nox -s tests`` just the core."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())

nox.options.sessions = ["tests", "plugin", "lint", "typecheck", "demo", "build"]
nox.options.error_on_missing_interpreters = True

CORE_TEST = ".[testing,postgres,asyncio,service]"


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
    """ruff, and the import contracts of pyproject.toml (bagbot's layers, docs/architecture.md)."""
    session.install("ruff>=0.5", "import-linter>=2.17")
    session.run("ruff", "check", ".")
    session.run("lint-imports", "--no-cache")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("mypy>=1.10", "-e", ".[testing,postgres,asyncio,ccxt,service]",
                    *(arg for name in PLUGINS for arg in ("-e", f"plugins/{name}")))
    session.run("mypy", "bagbot_core", *(f"plugins/{name}/{name}" for name in PLUGINS))


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: route orders through the paper exchange into SQLite."""
    session.install(".")
    tmp = session.create_tmp()
    session.run("bagbot", "--database-url", f"sqlite:///{tmp}/demo.db", "demo")


@nox.session
def build(session: nox.Session) -> None:
    """The distributions as an index and a user get them (in the default run: building and
    installing into a fresh venv takes well under a minute).

    Wheels and sdists for the core and every plugin under plugins/ (each wheel built from
    its sdist), ``twine check`` on all of them, then the wheels alone installed into a new
    venv, where ``bagbot plugins`` must list every plugin's entry points with what they
    offer, ``bagbot new-plugin`` must find its templates and the dashboard's page and
    assets must be there.
    """
    session.install("build>=1.2", "twine>=5")
    tmp = Path(session.create_tmp())
    dist, fresh = tmp / "dist", tmp / "fresh"
    for old in (dist, fresh, tmp / "smoke"):
        shutil.rmtree(old, ignore_errors=True)
    projects = [ROOT, *(ROOT / "plugins" / name for name in PLUGINS)]
    for project in projects:
        session.run("python", "-m", "build", "--outdir", str(dist), str(project))
    session.run("twine", "check", *sorted(str(p) for p in dist.iterdir()))
    session.run("python", "-m", "venv", str(fresh))
    bindir = fresh / ("Scripts" if os.name == "nt" else "bin")
    session.run(str(bindir / "python"), "-m", "pip", "install", "--quiet",
                *sorted(str(p) for p in dist.glob("*.whl")), external=True)
    listed = json.loads(session.run(str(bindir / "bagbot"), "plugins", "--json",
                                    silent=True, stderr=None, external=True) or "[]")
    offered = {(row["distribution"], row["plugin"]): row["connectors"] + row["risk_checks"]
               for row in listed}
    for project in projects[1:]:
        meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        for plugin in meta.get("entry-points", {}).get("bagbot", {}):
            if not offered.get((meta["name"], plugin)):
                session.error(f"bagbot plugins does not list {plugin} from {meta['name']} "
                              f"with a connector or risk check: {listed}")
    session.run(str(bindir / "bagbot"), "new-plugin", "risk", "smoke", str(tmp / "smoke"),
                external=True)
    # `bagbot serve` reads its dashboard's page and assets from the installed package
    # (-I: not from the source tree in the working directory).
    session.run(str(bindir / "python"), "-I", "-c",
                "import importlib.resources as r; d = r.files('bagbot_core.service'); "
                "missing = [n for n in ('templates/dashboard.html', 'static/dashboard.js', "
                "'static/dashboard.css', 'static/favicon.svg') if not d.joinpath(n).is_file()]; "
                "assert not missing, f'not in the wheel: {missing}'", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness (not in the default run): bagbot against the hand-written floor.

    ``nox -s bench`` runs everything (about 15 minutes; PostgreSQL at 127.0.0.1 if it answers);
    ``nox -s bench -- --quick`` is the smoke run; other arguments go to ``python -m benchmarks``.
    """
    session.install("-e", ".[postgres,asyncio,ccxt]", "-e", "plugins/bagbot_binance",
                    "aiohttp>=3.9")
    session.run("python", "-m", "benchmarks", *session.posargs)
