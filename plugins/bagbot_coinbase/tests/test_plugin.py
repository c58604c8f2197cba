"""Registration, lazy imports, configuration, and where requests may go (sandbox/live/custom).

Nothing here sends a request beyond 127.0.0.1: the sandbox and live checks replace ccxt's
transport with a recorder *underneath* the connector's route guard, so a guard bug would
show up as a recorded request, never as traffic to Coinbase.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D
from importlib.metadata import entry_points
from typing import Any

import pytest
from bagbot_coinbase import plugin
from bagbot_coinbase.connector import PRODUCTION_URL, SANDBOX_URL, CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, generate_cdp_key

from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import ConfigurationError, ExchangeRejectedError
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.status import OrderStatus
from bagbot_core.testing.fake_exchange import FakeMarket


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_importing_the_plugin_does_not_import_ccxt() -> None:
    result = _run(
        "import sys\n"
        "import bagbot_coinbase, bagbot_coinbase.plugin\n"
        "specs = bagbot_coinbase.plugin.bagbot_add_connectors()\n"
        "assert [s.name for s in specs] == ['coinbase'], specs\n"
        "conn = specs[0].factory(__import__('bagbot_core.connector').connector"
        ".ConnectorSettings())\n"
        "assert 'ccxt' not in sys.modules, 'ccxt imported'\n"
        "print('clean')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_entry_point_is_registered_and_bagbot_plugins_lists_it() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="bagbot")}
    assert eps.get("coinbase") == "bagbot_coinbase.plugin"
    result = _run("from bagbot_core.cli import main; main(['plugins'])")
    assert result.returncode == 0, result.stderr
    assert "coinbase" in result.stdout and "bagbot-coinbase" in result.stdout


def test_hook_returns_a_coinbase_spec_whose_factory_builds_the_connector() -> None:
    (spec,) = plugin.bagbot_add_connectors()
    assert spec.name == "coinbase" and spec.description
    conn = spec.factory(ConnectorSettings())
    assert isinstance(conn, CoinbaseConnector)
    assert conn.mode == "sandbox"
    assert not conn.capabilities.fills_in_create_response


# -- configuration -----------------------------------------------------------------------


def test_live_and_custom_modes_need_credentials() -> None:
    with pytest.raises(ConfigurationError, match="api_key and api_secret missing"):
        CoinbaseConnector(ConnectorSettings(testnet=False))
    _, pem = generate_cdp_key()
    with pytest.raises(ConfigurationError, match="api_key missing"):
        CoinbaseConnector(ConnectorSettings(config={"api_secret": pem,
                                                    "api_url": "http://127.0.0.1:1"}))


@pytest.mark.parametrize(
    ("key", "secret", "words"),
    [
        ("a1b2c3d4e5f6", None, "CDP API key name"),  # a legacy key id
        (None, "c2VjcmV0LWhtYWMtc2VjcmV0LXZhbHVlLWFhYWFhYWFhYWFhYWFh", "PEM form"),  # HMAC
        (None, "-----BEGIN EC PRIVATE KEY-----\nnot base64\n-----END EC PRIVATE KEY-----",
         "not a readable"),
        (None, "ed25519", "ECDSA P-256"),
    ],
)
def test_only_ecdsa_cdp_keys_are_accepted(key: str | None, secret: str | None,
                                          words: str) -> None:
    name, pem = generate_cdp_key()
    if secret == "ed25519":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        secret = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
    with pytest.raises(ConfigurationError, match=words) as info:
        CoinbaseConnector(ConnectorSettings(testnet=False, config={
            "api_key": key or name, "api_secret": secret or pem}))
    assert pem not in str(info.value)
    assert secret is None or secret not in str(info.value)


def test_credentials_and_url_from_the_environment_with_an_escaped_pem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, pem = generate_cdp_key()
    monkeypatch.setenv("BAGBOT_COINBASE_API_KEY", name)
    monkeypatch.setenv("BAGBOT_COINBASE_API_SECRET", pem.strip().replace("\n", "\\n"))
    monkeypatch.setenv("BAGBOT_COINBASE_API_URL", "http://127.0.0.1:8123/")
    conn = CoinbaseConnector(ConnectorSettings())
    assert conn.mode == "custom" and conn.base_url == "http://127.0.0.1:8123"
    assert conn.api_secret is not None and conn.api_secret.reveal() == pem
    assert name not in repr(conn)


def test_bad_urls_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="api_url"):
        CoinbaseConnector(ConnectorSettings(config={"api_url": "ftp://x"}))
    with pytest.raises(ConfigurationError, match="market_data_url"):
        CoinbaseConnector(ConnectorSettings(config={"market_data_url": "nope"}))


# -- where requests go -------------------------------------------------------------------


async def test_custom_url_sends_everything_to_the_fake_and_nothing_elsewhere(
    coinbase_server: FakeCoinbaseServer,
) -> None:
    from bagbot_coinbase.testing import connector_for

    conn = connector_for(coinbase_server)
    try:
        exchange = conn.exchange
        assert exchange.urls["api"] == {"rest": coinbase_server.url}
        assert all(route.origin == coinbase_server.url for route in conn.routes)
        for url in (f"{PRODUCTION_URL}/api/v3/brokerage/market/products",
                    f"{PRODUCTION_URL}/api/v3/brokerage/orders",
                    f"{SANDBOX_URL}/api/v3/brokerage/orders",
                    f"{coinbase_server.url}/v2/currencies"):
            with pytest.raises(ExchangeRejectedError, match="nothing was sent"):
                await exchange.fetch(url, "GET", {}, None)
        await conn.create_order(
            OrderRequest("BTC/USD", Side.BUY, OrderType.MARKET, D("0.001")), "bb-where")
    finally:
        await conn.close()
    assert coinbase_server.requests  # all of them reached 127.0.0.1, none was refused
    assert all(r.status == 200 for r in coinbase_server.requests)


def _canned(url: str, method: str, body: Any) -> Any:
    """Answers shaped like the sandbox's and the public market endpoints'."""
    path = url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
    market = FakeMarket("BTC-USD", "BTC", "USD", D("50000"), amount_step=D("0.00000001"),
                        price_step=D("0.01"), min_amount=D("0.00000001"),
                        max_amount=D("3400"), min_cost=D("1"))
    if path.endswith("market/products"):
        return {"products": [FakeCoinbaseServer().product_json(market)], "num_products": 1}
    if path.endswith("/ticker"):
        return {"trades": [], "best_bid": "49999.99", "best_ask": "50000.01"}
    if method == "POST" and path.endswith("brokerage/orders"):
        request = json.loads(body)
        return {"success": True, "success_response": {
            "order_id": "11111-00000-000000", "product_id": "BTC-USD", "side": "BUY",
            "client_order_id": request["client_order_id"]}}
    if path.endswith("batch_cancel"):
        return {"results": [{"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                             "order_id": "11111-00000-000000"}]}
    if "/orders/historical/" in path:
        return {"order": {"order_id": "11111-00000-000000", "product_id": "BTC-USD",
                          "side": "BUY", "client_order_id": "sandbox-static", "status": "OPEN",
                          "filled_size": "0", "average_filled_price": "0",
                          "order_configuration": {"limit_limit_gtc": {
                              "base_size": "0.001", "limit_price": "10000.00",
                              "post_only": False}}}}
    raise AssertionError(f"unexpected request {method} {url}")


class RecordingConnector(CoinbaseConnector):
    """Replaces ccxt's transport with a recorder below the route guard: no network."""

    sent: list[tuple[str, str, dict[str, Any]]]

    def configure_exchange(self, exchange: Any) -> None:
        self.sent = []

        async def record(url: str, method: str = "GET", headers: Any = None,
                         body: Any = None) -> Any:
            self.sent.append((method, url, dict(headers or {})))
            return _canned(url, method, body)

        exchange.fetch = record
        super().configure_exchange(exchange)


async def test_sandbox_sends_orders_unsigned_to_the_sandbox_and_reads_public_market_data(
) -> None:
    name, pem = generate_cdp_key()
    conn = RecordingConnector(ConnectorSettings(testnet=True, config={
        "api_key": name, "api_secret": pem, "enable_rate_limit": False}))
    try:
        assert conn.mode == "sandbox" and conn.base_url == SANDBOX_URL
        assert "apiKey" not in conn.exchange_config()  # credentials never reach ccxt
        await conn.load_markets()
        placed = await conn.create_order(
            OrderRequest("BTC/USD", Side.BUY, OrderType.MARKET,
                         D("0.001")), "bb-sandbox")
        await conn.cancel_order("BTC/USD", external_id=placed.external_id,
                                client_order_id="bb-sandbox")
        # the guard refuses production's private endpoints, signed or not
        for method, url in (("POST", f"{PRODUCTION_URL}/api/v3/brokerage/orders"),
                            ("GET", f"{PRODUCTION_URL}/api/v3/brokerage/accounts"),
                            ("GET", f"{PRODUCTION_URL}/v2/currencies"),
                            ("POST", f"{PRODUCTION_URL}/api/v3/brokerage/market/products")):
            with pytest.raises(ExchangeRejectedError, match="nothing was sent"):
                await conn.exchange.fetch(url, method, {}, None)
        with pytest.raises(ExchangeRejectedError, match="with credentials"):
            await conn.exchange.fetch(f"{SANDBOX_URL}/api/v3/brokerage/orders", "GET",
                                      {"Authorization": "Bearer x"}, None)
    finally:
        await conn.close()
    assert placed.status is OrderStatus.OPEN  # static sandbox: nothing ever fills
    assert [(m, u.split("?")[0]) for m, u, _ in conn.sent] == [
        ("GET", f"{PRODUCTION_URL}/api/v3/brokerage/market/products"),
        ("GET", f"{PRODUCTION_URL}/api/v3/brokerage/market/products/BTC-USD/ticker"),
        ("POST", f"{SANDBOX_URL}/api/v3/brokerage/orders"),
        ("GET", f"{SANDBOX_URL}/api/v3/brokerage/orders/historical/11111-00000-000000"),
        ("POST", f"{SANDBOX_URL}/api/v3/brokerage/orders/batch_cancel"),
        ("GET", f"{SANDBOX_URL}/api/v3/brokerage/orders/historical/11111-00000-000000"),
    ]
    for _, _, headers in conn.sent:
        assert not {k.lower() for k in headers} & {"authorization", "cb-access-key"}


async def test_sandbox_needs_no_credentials() -> None:
    conn = RecordingConnector(ConnectorSettings(testnet=True, config={
        "enable_rate_limit": False}))
    try:
        result = await conn.create_order(
            OrderRequest("BTC/USD", Side.BUY, OrderType.LIMIT,
                         D("0.001"),
                         D("10000")), "bb-anon")
    finally:
        await conn.close()
    assert result.external_id == "11111-00000-000000"
    (post,) = [(u, h) for m, u, h in conn.sent if m == "POST"]
    assert post[0] == f"{SANDBOX_URL}/api/v3/brokerage/orders" and "Authorization" not in post[1]


async def test_live_mode_signs_everything_for_the_production_brokerage_api_only() -> None:
    name, pem = generate_cdp_key()
    conn = RecordingConnector(ConnectorSettings(testnet=False, allow_live=True, config={
        "api_key": name, "api_secret": pem, "enable_rate_limit": False}))
    try:
        assert conn.mode == "live" and conn.base_url == PRODUCTION_URL
        await conn.create_order(
            OrderRequest("BTC/USD", Side.BUY, OrderType.LIMIT,
                         D("0.001"),
                         D("10000")), "bb-live")
        with pytest.raises(ExchangeRejectedError):
            await conn.exchange.fetch(f"{SANDBOX_URL}/api/v3/brokerage/orders", "POST", {}, None)
        with pytest.raises(ExchangeRejectedError):
            await conn.exchange.fetch(f"{PRODUCTION_URL}/v2/accounts", "GET", {}, None)
    finally:
        await conn.close()
    assert {u.split("/api/")[0] for _, u, _ in conn.sent} == {PRODUCTION_URL}
    private = [h for m, u, h in conn.sent if "/market/" not in u]
    assert private and all(h["Authorization"].startswith("Bearer ") for h in private)


async def test_router_refuses_live_without_the_opt_in() -> None:
    from bagbot_core.errors import LiveTradingNotAllowedError
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.router import Router

    router = Router(PluginRegistry(), allow_live=False)
    with pytest.raises(LiveTradingNotAllowedError):
        await router.get_connector("coinbase", testnet=False)
    await router.aclose()
