"""Binance and the live-host rule: ``testnet`` means testnet.binance.vision or loopback.

Nothing here leaves the machine. ccxt's transport (``Exchange.fetch``) is wrapped for the
test (``intercept_ccxt``): it records every URL ccxt asks for and forwards the request to the
fake server on 127.0.0.1 (Binance signs the query, not the host, so the fake verifies it as
it would on its own URL) -- or, where nothing may be sent, fails the request. Constructions
of ccxt's binance object are counted too: a refused connector must not even build one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
import pytest
from bagbot_binance.connector import PRODUCTION_URL, TESTNET_URL, BinanceConnector
from bagbot_binance.testing import FakeBinanceServer
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import ConfigurationError, LiveTradingNotAllowedError
from bagbot_core.models import Order
from bagbot_core.router import Router
from bagbot_core.testing.fake_exchange import CcxtWire, intercept_ccxt

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}


@pytest.fixture
def wire() -> Iterator[CcxtWire]:
    with intercept_ccxt(ccxt_async.binance) as wire:
        yield wire


@pytest.fixture
def audit_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, level="debug", force=True)
    yield stream
    audit.configure(force=True)


def only_row(db: Session) -> Order:
    db.expire_all()
    (row,) = db.query(Order).all()
    return row


# -- refused: testnet=True aimed at production -------------------------------------------


@pytest.mark.parametrize("allow_live", [False, True])
@pytest.mark.parametrize("source", ["config", "environment"])
async def test_production_url_with_testnet_is_refused_before_ccxt_is_built(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch, source: str,
    allow_live: bool,
) -> None:
    if source == "config":
        router = make_router(allow_live=allow_live, api_url=PRODUCTION_URL)
    else:
        monkeypatch.setenv("BAGBOT_BINANCE_API_URL", PRODUCTION_URL)
        router = make_router(allow_live=allow_live, api_url=None)
    with pytest.raises(LiveTradingNotAllowedError, match=r"host api\.binance\.com") as info:
        await router.route_order("binance", MARKET_BUY, db, "u", testnet=True)
    row = only_row(db)
    assert row.status == "rejected" and row.reason == str(info.value)
    assert "nothing was sent" in row.reason
    assert wire.built == 0 and wire.urls == [] and binance_server.requests == []


@pytest.mark.parametrize("url", [
    "https://api.binance.com/", "https://API.binance.com", "https://api1.binance.com",
    "https://testnet.binance.vision.evil.com", "http://127.0.0.1.nip.io:8080",
    "http://2130706433:8080",
])
async def test_any_host_but_the_testnet_or_loopback_is_refused_as_testnet(
    wire: CcxtWire, url: str
) -> None:
    conn = BinanceConnector(ConnectorSettings(
        testnet=True, allow_live=True, config={"api_key": "k", "api_secret": "s", "api_url": url}))
    assert "live" in repr(conn)
    with pytest.raises(LiveTradingNotAllowedError):
        await conn.load_markets()
    await conn.close()
    assert wire.built == 0 and wire.urls == []


async def test_a_connector_built_without_the_router_checks_too(wire: CcxtWire) -> None:
    """Defence in depth: the exchange object is never built for a refused endpoint."""
    settings = {"api_key": "k", "api_secret": "s"}
    for conn in (
        BinanceConnector(ConnectorSettings(testnet=True, config={**settings,
                                                                  "api_url": PRODUCTION_URL})),
        BinanceConnector(ConnectorSettings(testnet=False, config=settings)),
    ):
        with pytest.raises(LiveTradingNotAllowedError):
            conn.exchange  # noqa: B018 - the property builds the ccxt object
        assert conn._exchange is None
        await conn.close()
    assert wire.built == 0 and wire.urls == []


# -- allowed ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_url", [None, PRODUCTION_URL])
async def test_live_with_the_opt_in_goes_to_production_and_says_so(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], api_url: str | None,
) -> None:
    wire.forward_to = binance_server.url
    router = make_router(allow_live=True, api_url=api_url)
    order = await router.route_order("binance", MARKET_BUY, db, "u", testnet=False)
    assert order.status == "filled" and order.testnet is False
    assert wire.built == 1 and wire.urls
    assert all(url.startswith(PRODUCTION_URL + "/api/v3/") for url in wire.urls), wire.urls
    assert len(binance_server.requests_to("/api/v3/order", "POST")) == 1


async def test_the_default_testnet_goes_to_the_binance_testnet_only(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router],
) -> None:
    wire.forward_to = binance_server.url
    router = make_router(api_url=None)
    order = await router.route_order("binance", MARKET_BUY, db, "u", testnet=True)
    assert order.status == "filled" and order.testnet is True
    assert all(url.startswith(TESTNET_URL + "/api/v3/") for url in wire.urls), wire.urls
    connector = await router.get_connector("binance", testnet=True)
    assert connector.live is False and "testnet" in repr(connector)


async def test_a_live_request_on_loopback_is_recorded_as_testnet(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router],
) -> None:
    wire.forward_to = binance_server.url
    router = make_router(allow_live=True)
    order = await router.route_order("binance", MARKET_BUY, db, "u", testnet=False)
    assert order.status == "filled" and order.testnet is True
    assert {urlsplit(url).netloc for url in wire.urls} == {urlsplit(binance_server.url).netloc}


# -- credentials and URLs that must not be sent -------------------------------------------


@pytest.mark.parametrize(("key", "bad"), [("api_key", "\n"), ("api_key", "\r"),
                                          ("api_secret", "\t"), ("api_secret", "\x00")])
async def test_a_control_character_in_a_credential_rejects_before_sending(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], key: str, bad: str,
) -> None:
    wire.forward_to = binance_server.url
    real = getattr(binance_server, key)
    value = real[:8] + bad + real[8:]
    router = make_router(**{key: value})
    with pytest.raises(ConfigurationError, match=key) as info:
        await router.route_order("binance", MARKET_BUY, db, "u")
    row = only_row(db)
    assert row.status == "rejected"  # not unknown: nothing was sent
    assert value not in str(info.value) and value[:8] not in (row.reason or "")
    assert wire.built == 0 and binance_server.requests == []


async def test_a_password_in_api_url_reaches_no_row_no_log_no_error(
    binance_server: FakeBinanceServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], audit_log: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    canary = "canary-password-7d1e"
    netloc = urlsplit(binance_server.url).netloc
    router = make_router(api_url=f"http://user:{canary}@{netloc}")
    with pytest.raises(ConfigurationError, match="user info") as info:
        await router.route_order("binance", MARKET_BUY, db, "u")
    row = only_row(db)
    assert row.status == "rejected"
    seen = (str(info.value) + json.dumps([row.reason, row.details], default=str)
            + audit_log.getvalue() + caplog.text)
    assert canary not in seen
    assert wire.built == 0 and binance_server.requests == []
