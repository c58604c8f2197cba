"""Coinbase and the live-host rule: ``testnet`` means api-sandbox.coinbase.com or loopback.

Custom mode (``api_url``) on any other host is live trading. Nothing here leaves the
machine: ccxt's transport (``Exchange.fetch``) is wrapped to record every URL ccxt asks for
and forward the request to the fake server on 127.0.0.1 with the original ``Host`` header
(the fake checks the JWT's ``uri`` against it, as Coinbase does) -- or, where nothing may be
sent, to fail it. Constructions of ccxt's coinbase object are counted too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from bagbot_coinbase.connector import PRODUCTION_URL, SANDBOX_URL, CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, generate_cdp_key
from sqlalchemy.orm import Session

from bagbot_core.connector import ConnectorSettings
from bagbot_core.db import dispose_engines, get_engine, session_factory
from bagbot_core.errors import ConfigurationError, LiveTradingNotAllowedError
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router

LIMIT_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "40000"}
MARKET_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.001"}


@attrs.define
class Wire:
    """What ccxt's coinbase objects did: how many were built, which URLs they asked for."""

    built: int = 0
    urls: list[str] = attrs.Factory(list)
    #: The fake server's URL that requests are forwarded to; ``None``: send nothing.
    forward_to: str | None = None


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    import ccxt.async_support as ccxt_async

    wire = Wire()
    cls = ccxt_async.coinbase
    init, fetch = cls.__init__, cls.fetch

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        wire.built += 1
        init(self, *args, **kwargs)

    async def recording_fetch(self: Any, url: str, method: str = "GET", headers: Any = None,
                              body: Any = None) -> Any:
        wire.urls.append(url)
        if wire.forward_to is None:
            raise AssertionError(f"nothing may be sent, but ccxt asked for {method} {url}")
        parts = urlsplit(url)
        local = wire.forward_to + parts.path + (f"?{parts.query}" if parts.query else "")
        return await fetch(self, local, method, {**(headers or {}), "Host": parts.netloc}, body)

    monkeypatch.setattr(cls, "__init__", counting_init)
    monkeypatch.setattr(cls, "fetch", recording_fetch)
    return wire


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Session]:
    session = session_factory(get_engine(f"sqlite:///{tmp_path / 'live-host.db'}"))()
    yield session
    session.close()
    dispose_engines()


def keys(server: FakeCoinbaseServer, **config: Any) -> dict[str, Any]:
    return {"api_key": server.api_key, "api_secret": server.api_secret,
            "enable_rate_limit": False, "timeout": 2, **config}


@pytest.fixture
async def router_factory() -> AsyncIterator[Any]:
    routers: list[Router] = []

    def make(*, allow_live: bool, **config: Any) -> Router:
        router = Router(PluginRegistry(disabled=()), limits=RiskLimits(), allow_live=allow_live,
                        connector_config={"coinbase": config})
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.aclose()


def only_row(db: Session) -> Order:
    db.expire_all()
    (row,) = db.query(Order).all()
    return row


# -- refused: testnet=True aimed at production -------------------------------------------


@pytest.mark.parametrize("allow_live", [False, True])
@pytest.mark.parametrize("source", ["config", "environment"])
async def test_custom_mode_on_production_with_testnet_is_refused_before_ccxt_is_built(
    coinbase_server: FakeCoinbaseServer, wire: Wire, db: Session, router_factory: Any,
    monkeypatch: pytest.MonkeyPatch, source: str, allow_live: bool,
) -> None:
    if source == "config":
        router = router_factory(allow_live=allow_live, **keys(coinbase_server,
                                                               api_url=PRODUCTION_URL))
    else:
        monkeypatch.setenv("BAGBOT_COINBASE_API_URL", PRODUCTION_URL)
        router = router_factory(allow_live=allow_live, **keys(coinbase_server))
    with pytest.raises(LiveTradingNotAllowedError, match=r"host api\.coinbase\.com") as info:
        await router.route_order("coinbase", LIMIT_BUY, db, "u", testnet=True)
    row = only_row(db)
    assert row.status == "rejected" and row.reason == str(info.value)
    assert wire.built == 0 and wire.urls == [] and coinbase_server.requests == []


@pytest.mark.parametrize("url", [
    "https://api.coinbase.com/", "https://api.exchange.coinbase.com", "https://proxy.example.com",
    "https://api-sandbox.coinbase.com.evil.com", "http://localhost.:8080",
])
async def test_custom_mode_on_any_non_loopback_host_is_live(wire: Wire, url: str) -> None:
    name, pem = generate_cdp_key()
    for allow_live in (False, True):
        conn = CoinbaseConnector(ConnectorSettings(testnet=True, allow_live=allow_live, config={
            "api_key": name, "api_secret": pem, "api_url": url}))
        with pytest.raises(LiveTradingNotAllowedError):
            await conn.load_markets()
        await conn.close()
    assert wire.built == 0 and wire.urls == []


async def test_a_connector_built_without_the_router_checks_too(wire: Wire) -> None:
    name, pem = generate_cdp_key()
    settings = {"api_key": name, "api_secret": pem}
    for conn in (
        CoinbaseConnector(ConnectorSettings(testnet=True, config={**settings,
                                                                   "api_url": PRODUCTION_URL})),
        CoinbaseConnector(ConnectorSettings(testnet=False, config=settings)),
    ):
        with pytest.raises(LiveTradingNotAllowedError):
            conn.exchange  # noqa: B018 - the property builds the ccxt object
        assert conn._exchange is None
        await conn.close()
    assert wire.built == 0 and wire.urls == []


# -- allowed ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_url", [None, PRODUCTION_URL])
async def test_live_with_the_opt_in_goes_to_production_and_says_so(
    coinbase_server: FakeCoinbaseServer, wire: Wire, db: Session, router_factory: Any,
    api_url: str | None,
) -> None:
    wire.forward_to = coinbase_server.url
    config = keys(coinbase_server) if api_url is None else keys(coinbase_server, api_url=api_url)
    router = router_factory(allow_live=True, **config)
    order = await router.route_order("coinbase", MARKET_BUY, db, "u", testnet=False)
    assert order.status == "filled" and order.testnet is False
    assert wire.built == 1 and wire.urls
    assert all(url.startswith(PRODUCTION_URL + "/api/v3/brokerage/") for url in wire.urls)
    assert [r.method for r in coinbase_server.requests_to("/api/v3/brokerage/orders")] == ["POST"]


async def test_the_sandbox_is_a_testnet(router_factory: Any, wire: Wire) -> None:
    router = router_factory(allow_live=False)
    connector = await router.get_connector("coinbase", testnet=True)
    assert connector.endpoints() == (SANDBOX_URL,) and connector.live is False
    assert wire.urls == []


async def test_a_live_request_on_loopback_is_recorded_as_testnet(
    coinbase_server: FakeCoinbaseServer, wire: Wire, db: Session, router_factory: Any,
) -> None:
    wire.forward_to = coinbase_server.url
    router = router_factory(allow_live=True, **keys(coinbase_server, api_url=coinbase_server.url))
    order = await router.route_order("coinbase", LIMIT_BUY, db, "u", testnet=False)
    assert order.status == "open" and order.testnet is True
    assert {urlsplit(url).netloc for url in wire.urls} == {urlsplit(coinbase_server.url).netloc}


# -- credentials that cannot be sent ------------------------------------------------------


@pytest.mark.parametrize(("key", "bad"), [("api_key", "\n"), ("api_key", "\t"),
                                          ("api_secret", "\t"), ("api_secret", "\x00"),
                                          ("api_secret", "\r")])
async def test_a_control_character_in_a_credential_rejects_before_sending(
    coinbase_server: FakeCoinbaseServer, wire: Wire, db: Session, router_factory: Any,
    key: str, bad: str,
) -> None:
    config = keys(coinbase_server, api_url=coinbase_server.url)
    value = config[key]
    cut = value.index("\n", 40) + 5 if key == "api_secret" else 20
    config[key] = value[:cut] + bad + value[cut:]
    router = router_factory(allow_live=False, **config)
    with pytest.raises(ConfigurationError, match=key) as info:
        await router.route_order("coinbase", LIMIT_BUY, db, "u")
    row = only_row(db)
    assert row.status == "rejected"
    for text in (str(info.value), row.reason or ""):
        assert value[:cut][-12:] not in text
    assert wire.built == 0 and coinbase_server.requests == []


async def test_a_pem_with_crlf_line_breaks_is_accepted(
    coinbase_server: FakeCoinbaseServer, wire: Wire, db: Session, router_factory: Any,
) -> None:
    wire.forward_to = coinbase_server.url
    config = keys(coinbase_server, api_url=coinbase_server.url)
    config["api_secret"] = config["api_secret"].replace("\n", "\r\n")
    router = router_factory(allow_live=False, **config)
    order = await router.route_order("coinbase", LIMIT_BUY, db, "u")
    assert order.status == "open"
