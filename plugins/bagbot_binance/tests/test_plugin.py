"""Registration, lazy imports, configuration and URL handling (no orders)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from bagbot_binance import plugin
from bagbot_binance.connector import PRODUCTION_URL, TESTNET_URL, BinanceConnector
from bagbot_binance.testing import FakeBinanceServer
from click.testing import CliRunner

from bagbot_core.cli import cli
from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import ConfigurationError
from bagbot_core.router import set_router


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_importing_the_plugin_does_not_import_ccxt() -> None:
    result = _run(
        "import sys\n"
        "import bagbot_binance, bagbot_binance.plugin, bagbot_core.ccxt_support\n"
        "specs = bagbot_binance.plugin.bagbot_add_connectors()\n"
        "assert [s.name for s in specs] == ['binance'], specs\n"
        "assert 'ccxt' not in sys.modules, 'ccxt imported'\n"
        "print('clean')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_building_the_connector_does_not_import_ccxt_until_first_use() -> None:
    result = _run(
        "import sys\n"
        "from bagbot_binance.plugin import bagbot_add_connectors\n"
        "from bagbot_core.connector import ConnectorSettings\n"
        "spec = bagbot_add_connectors()[0]\n"
        "conn = spec.factory(ConnectorSettings(config={'api_key': 'k', 'api_secret': 's'}))\n"
        "assert 'ccxt' not in sys.modules, 'ccxt imported by the factory'\n"
        "conn.exchange\n"
        "assert 'ccxt' in sys.modules\n"
        "print(type(conn).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BinanceConnector"


def test_entry_point_is_registered_in_the_bagbot_group() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="bagbot")}
    assert eps.get("binance") == "bagbot_binance.plugin"


def test_hook_returns_a_binance_spec_whose_factory_builds_the_connector() -> None:
    (spec,) = plugin.bagbot_add_connectors()
    assert spec.name == "binance"
    conn = spec.factory(ConnectorSettings(config={"api_key": "k", "api_secret": "s"}))
    assert isinstance(conn, BinanceConnector)
    assert conn.capabilities.fetch_by_client_order_id


async def test_missing_key_is_a_configuration_error_before_anything_is_sent(
    binance_server: FakeBinanceServer,
) -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        BinanceConnector(ConnectorSettings(config={
            "api_secret": "s", "api_url": binance_server.url,
        }))
    with pytest.raises(ConfigurationError, match="api_secret"):
        BinanceConnector(ConnectorSettings(config={"api_key": "k", "api_url": binance_server.url}))
    assert binance_server.requests == []


async def test_credentials_and_url_from_the_environment(
    binance_server: FakeBinanceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_BINANCE_API_KEY", binance_server.api_key)
    monkeypatch.setenv("BAGBOT_BINANCE_API_SECRET", binance_server.api_secret)
    monkeypatch.setenv("BAGBOT_BINANCE_API_URL", binance_server.url + "/")
    conn = BinanceConnector(ConnectorSettings(config={"enable_rate_limit": False}))
    try:
        assert conn.base_url == binance_server.url
        markets = await conn.load_markets()
        assert "BTC/USDT" in markets
        # A signed call proves the key and secret from the environment are the ones used.
        await conn.exchange.private_get_account()
    finally:
        await conn.close()
    assert [r.path for r in binance_server.requests] == ["/api/v3/exchangeInfo",
                                                        "/api/v3/account"]


def test_config_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_BINANCE_API_KEY", "from-env")
    monkeypatch.setenv("BAGBOT_BINANCE_API_SECRET", "from-env-secret")
    conn = BinanceConnector(ConnectorSettings(config={"api_key": "cfg", "api_secret": "cfgs"}))
    assert conn.api_key.reveal() == "cfg"
    assert conn.api_secret.reveal() == "cfgs"


def test_bad_api_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="api_url"):
        BinanceConnector(ConnectorSettings(config={
            "api_key": "k", "api_secret": "s", "api_url": "127.0.0.1:9"}))


async def test_testnet_is_the_default_and_uses_ccxt_sandbox_urls() -> None:
    conn = BinanceConnector(ConnectorSettings(config={"api_key": "k", "api_secret": "s"}))
    try:
        ex = conn.exchange
        assert conn.base_url == TESTNET_URL
        assert ex.isSandboxModeEnabled
        assert ex.urls["api"]["public"] == TESTNET_URL + "/api/v3"
        assert ex.urls["api"]["private"] == TESTNET_URL + "/api/v3"
    finally:
        await conn.close()


async def test_live_uses_the_production_host_only_when_testnet_is_false() -> None:
    conn = BinanceConnector(ConnectorSettings(
        testnet=False, allow_live=True, config={"api_key": "k", "api_secret": "s"}))
    try:
        ex = conn.exchange
        assert conn.base_url == PRODUCTION_URL
        assert not ex.isSandboxModeEnabled
        assert ex.urls["api"]["private"] == PRODUCTION_URL + "/api/v3"
        assert ex.enableRateLimit  # ccxt's limiter stays on unless config turns it off
    finally:
        await conn.close()


async def test_api_url_swaps_the_host_and_keeps_each_path_after_sandbox_mode() -> None:
    conn = BinanceConnector(ConnectorSettings(config={
        "api_key": "k", "api_secret": "s", "api_url": "http://127.0.0.1:1"}))
    try:
        ex = conn.exchange
        assert ex.isSandboxModeEnabled  # set before the override, which therefore survived
        assert ex.urls["api"]["public"] == "http://127.0.0.1:1/api/v3"
        assert ex.urls["api"]["private"] == "http://127.0.0.1:1/api/v3"
        assert "sapi" not in ex.urls["api"]  # the testnet table, not production's
        # Binance's spot-only error codes are restored off the official hosts.
        assert ex.exceptions["exact"]["-1131"] is ex.exceptions["spot"]["exact"]["-1131"]
    finally:
        await conn.close()


async def test_enable_rate_limit_config_turns_ccxt_limiter_off(
    binance_server: FakeBinanceServer,
) -> None:
    conn = BinanceConnector(ConnectorSettings(config={
        "api_key": "k", "api_secret": "s", "enable_rate_limit": "false"}))
    try:
        assert conn.exchange.enableRateLimit is False
        assert conn.exchange.options["maxRetriesOnFailure"] == 0
    finally:
        await conn.close()


async def test_cli_connector_options_reach_binance_over_the_environment(
    binance_server: FakeBinanceServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """``--connector-option`` routes a CLI order to a local fake, rate limiter off, and
    beats the environment (whose URL points at a closed port)."""
    monkeypatch.setenv("BAGBOT_BINANCE_API_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("BAGBOT_CONFIG", raising=False)
    options = [f"binance.api_url={binance_server.url}", "binance.enable_rate_limit=false",
               f"binance.api_key={binance_server.api_key}",
               f"binance.api_secret={binance_server.api_secret}", "binance.timeout=5"]
    args = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    for option in options:
        args += ["--connector-option", option]
    args += ["route", "BTC/USDT", "buy", "0.001", "--connector", "binance", "--json"]
    set_router(None)
    try:
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    finally:
        set_router(None)
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["status"] == "filled"
    assert binance_server.api_secret not in result.output
    assert any(r.path == "/api/v3/order" for r in binance_server.requests)


async def test_cli_refuses_an_unknown_binance_option_before_anything_is_sent(
    binance_server: FakeBinanceServer, tmp_path: Path,
) -> None:
    args = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}",
            "--connector-option", f"binance.api_url={binance_server.url}",
            "--connector-option", f"binance.api_key={binance_server.api_key}",
            "--connector-option", f"binance.api_secret={binance_server.api_secret}",
            "--connector-option", "binance.enable_rate_limt=false",
            "route", "BTC/USDT", "buy", "0.001", "--connector", "binance"]
    set_router(None)
    try:
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
    finally:
        set_router(None)
    assert result.exit_code != 0
    assert "did you mean 'enable_rate_limit'" in result.output
    assert binance_server.requests == []
