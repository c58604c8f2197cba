"""``bagbot serve``: the HTTP API, its dashboard and metrics (see docs/http-api.md).

Attached to the root group by :func:`register` at the end of :mod:`bagbot_core.cli`. Only
click is imported at start-up: FastAPI, uvicorn and the service load when the command runs,
so ``bagbot --help`` stays light and works without the ``service`` extra.

One process (``--workers 1``) or several: either way uvicorn loads
``bagbot_core.service.app:app_factory`` in each, and this command hands them its database
URL, config file and audit log through the environment (``BAGBOT_DATABASE_URL``,
``BAGBOT_CONFIG``, ``BAGBOT_LOG_FILE``). SIGTERM or Ctrl-C is a graceful stop: exit 0.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from bagbot_core.cli import Settings

#: The modules of the ``service`` extra.
SERVICE_MODULES = ("fastapi", "uvicorn", "prometheus_client", "argon2", "jinja2")
INSTALL_HINT = "pip install 'bagbot-core[service]'"
APP = "bagbot_core.service.app:app_factory"


def _check_extra() -> None:
    missing = []
    for name in SERVICE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise click.ClickException(
            f"bagbot serve needs the service extra ({', '.join(missing)} missing): "
            f"{INSTALL_HINT}")


def _preflight(settings: Settings, url: str) -> Any:
    """Refuse a bad setting now, as one error line, rather than in every worker."""
    from bagbot_core.db import get_async_engine, get_engine
    from bagbot_core.router import Router
    from bagbot_core.service.config import ServiceSettings

    service = ServiceSettings.from_env()
    get_engine(url).dispose()  # a database behind the current schema is refused here
    get_async_engine(url, create_tables=False)  # the asyncio extra is there
    Router().registry.plugin_infos()  # the risk config, the plugins
    return service


def _worker_environment(settings: Settings, url: str) -> str | None:
    """What every worker reads; returns the audit log path (``None``: stderr)."""
    from bagbot_core.cli import audit_log_path

    os.environ["BAGBOT_DATABASE_URL"] = url
    if settings.config_path is not None:
        os.environ["BAGBOT_CONFIG"] = settings.config_path
    if settings.verbose:
        os.environ.pop("BAGBOT_LOG_FILE", None)
        return None
    path = audit_log_path(url)
    try:  # bagbot's data directory may not exist yet (a PostgreSQL URL creates nothing)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create the audit log's directory for {path}: "
                                   f"{exc.strerror or exc} (set BAGBOT_LOG_FILE, or use -v "
                                   "to log to stderr)") from None
    os.environ["BAGBOT_LOG_FILE"] = path
    return path


def _metrics_directory() -> str:
    """A fresh directory for prometheus_client's multiprocess mode (several workers)."""
    path = tempfile.mkdtemp(prefix="bagbot-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


@click.command(short_help="Serve the HTTP API, the dashboard and metrics.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put TLS in front).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (each applies the per-token rate limit itself).")
@click.pass_obj
def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve bagbot's HTTP API (/v1), the dashboard (/) and metrics (/metrics).

    Clients authenticate with tokens from `bagbot tokens create`. SIGTERM stops accepting,
    lets requests in flight finish (BAGBOT_SERVICE_SHUTDOWN_GRACE seconds), then exits 0.
    """
    _check_extra()
    if settings.connector_options:
        raise click.UsageError(
            "bagbot serve reads connector settings from the config file's [connectors.NAME] "
            "tables and the environment, not from --connector-option")
    from bagbot_core.cli import hidden_url

    url = settings.url()
    service = _preflight(settings, url)
    log_path = _worker_environment(settings, url)
    metrics_dir = _metrics_directory() if workers > 1 else None
    click.echo(f"bagbot serve: http://{host}:{port} ({workers} worker(s)); database "
               f"{hidden_url(url)}; audit log {log_path or 'stderr'}", err=True)
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: stopped.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run(host, port, workers, service.uvicorn_options())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(host: str, port: int, workers: int, options: dict[str, Any]) -> None:
    import uvicorn

    try:
        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, **options)
    except SystemExit as exc:  # uvicorn's "startup failed" (its code 3 means unknown here)
        if exc.code not in (None, 0):
            raise click.ClickException(
                "the service did not start (see the log above)") from None


def register(cli: click.Group) -> None:
    """Add ``serve`` to ``cli``."""
    cli.add_command(serve)
