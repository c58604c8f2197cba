"""``bagbot serve`` on the command line: start-up checks, and several workers as a real
subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from bagbot_core.cli import cli
from tests import environment
from tests.service_helpers import START_TIMEOUT, make_token, serve_process

pytestmark = pytest.mark.usefixtures("cli_environment")

_PROBE = """
import json, sys
from bagbot_core.cli import main
code = main(sys.argv[2:])
heavy = ["fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client", "argon2",
         "jinja2", "sqlalchemy"]
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "loaded": [m for m in heavy if m in sys.modules]}, out)
"""


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "cfg"),
               HOME=str(tmp_path / "home"), **extra)
    return env


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_help_loads_no_web_framework(tmp_path: Path, args: list[str]) -> None:
    report = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", _PROBE, str(report), *args], check=True,
                   capture_output=True, env=clean_env(tmp_path), timeout=60)
    probe = json.loads(report.read_text())
    assert probe == {"code": 0, "loaded": []}


def test_without_the_service_extra_one_error_line_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, "serve"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == ["error: bagbot serve needs the service extra (uvicorn missing): "
                     "pip install 'bagbot-core[service]'"]


@pytest.mark.parametrize(("name", "value", "says"), [
    ("BAGBOT_SERVICE_MAX_BODY", "64k", "BAGBOT_SERVICE_MAX_BODY must be a whole number"),
    ("BAGBOT_SERVICE_TIMEOUT", "0", "BAGBOT_SERVICE_TIMEOUT must be >= 1"),
    ("BAGBOT_SERVICE_RATE_LIMIT", "-1", "BAGBOT_SERVICE_RATE_LIMIT must be >= 0"),
    ("BAGBOT_RECONCILE_INTERVAL", "\u0661", "BAGBOT_RECONCILE_INTERVAL must be a whole"),
])
def test_a_bad_service_setting_is_one_error_line(monkeypatch: pytest.MonkeyPatch,
                                                 sqlite_url: str, name: str, value: str,
                                                 says: str) -> None:
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, "serve"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {says}")


def test_connector_options_are_refused_as_usage(sqlite_url: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, "--connector-option",
                                      "paper.spread=0.1", "serve"])
    assert result.exit_code == 2
    assert "[connectors.NAME]" in result.output


def test_several_workers_serve_one_database_and_stop_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bagbot.db"
    token = make_token(url, "alice")
    env = clean_env(tmp_path, TMPDIR=str(tmp_path), BAGBOT_LOG_FILE=str(tmp_path / "a.log"))
    log = tmp_path / "serve.log"
    order = {"connector": "paper", "symbol": "BTC/USDT", "side": "buy", "type": "market",
             "amount": "0.01"}
    with serve_process(url, env, args=("--workers", "2"), log=log) as served:
        with served.client(token) as client:
            statuses = [client.post("/v1/orders", json=order).status_code for _ in range(6)]
            listed = client.get("/v1/orders").json()["orders"]
        with httpx.Client(base_url=served.url, timeout=30) as anonymous:
            text = anonymous.get("/metrics").text  # any worker: every worker's counts
        assert served.process is not None
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(START_TIMEOUT) == 0, log.read_text()
    assert statuses == [201] * 6 and len(listed) == 6
    assert 'bagbot_orders_total{connector="paper",status="filled"} 6.0' in text
    assert "alice" not in text and token not in text
    assert not list(tmp_path.glob("bagbot-metrics-*"))  # the multiprocess directory is gone
