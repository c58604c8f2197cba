"""Coinbase and the live-host rule: ``testnet`` means api-sandbox.coinbase.com or loopback.

Custom mode (``api_url``) on any other host is live trading. Nothing here leaves the
machine: ccxt's transport (``Exchange.fetch``) is wrapped (``intercept_ccxt``) to record every
URL ccxt asks for and forward the request to the fake server on 127.0.0.1 with the original
``Host`` header (the fake checks the JWT's ``uri`` against it, as Coinbase does) -- or, where
nothing may be sent, to fail it. Constructions of ccxt's coinbase object are counted too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
import pytest
from bagbot_coinbase.connector import PRODUCTION_URL, SANDBOX_URL, CoinbaseConnector
from bagbot_coinbase.testing import FakeCoinbaseServer, generate_cdp_key
from sqlalchemy.orm import Session

from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import ConfigurationError, LiveTradingNotAllowedError
from bagbot_core.models import Order
from bagbot_core.router import Router
from bagbot_core.testing.fake_exchange import CcxtWire, intercept_ccxt

LIMIT_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "limit", "amount": "0.001",
             "price": "40000"}
MARKET_BUY = {"symbol": "BTC/USD", "side": "buy", "type": "market", "amount": "0.001"}


@pytest.fixture
def wire() -> Iterator[CcxtWire]:
    with intercept_ccxt(ccxt_async.coinbase) as wire:
        yield wire


def only_row(db: Session) -> Order:
    db.expire_all()
    (row,) = db.query(Order).all()
    return row


# -- refused: testnet=True aimed at production -------------------------------------------


@pytest.mark.parametrize("allow_live", [False, True])
@pytest.mark.parametrize("source", ["config", "environment"])
async def test_custom_mode_on_production_with_testnet_is_refused_before_ccxt_is_built(
    coinbase_server: FakeCoinbaseServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch, source: str,
    allow_live: bool,
) -> None:
    if source == "config":
        router = make_router(allow_live=allow_live, api_url=PRODUCTION_URL)
    else:
        monkeypatch.setenv("BAGBOT_COINBASE_API_URL", PRODUCTION_URL)
        router = make_router(allow_live=allow_live, api_url=None)
    with pytest.raises(LiveTradingNotAllowedError, match=r"host api\.coinbase\.com") as info:
        await router.route_order("coinbase", LIMIT_BUY, db, "u", testnet=True)
    row = only_row(db)
    assert row.status == "rejected" and row.reason == str(info.value)
    assert wire.built == 0 and wire.urls == [] and coinbase_server.requests == []


@pytest.mark.parametrize("url", [
    "https://api.coinbase.com/", "https://api.exchange.coinbase.com", "https://proxy.example.com",
    "https://api-sandbox.coinbase.com.evil.com", "http://localhost.:8080",
])
async def test_custom_mode_on_any_non_loopback_host_is_live(wire: CcxtWire, url: str) -> None:
    name, pem = generate_cdp_key()
    for allow_live in (False, True):
        conn = CoinbaseConnector(ConnectorSettings(testnet=True, allow_live=allow_live, config={
            "api_key": name, "api_secret": pem, "api_url": url}))
        with pytest.raises(LiveTradingNotAllowedError):
            await conn.load_markets()
        await conn.close()
    assert wire.built == 0 and wire.urls == []


async def test_a_connector_built_without_the_router_checks_too(wire: CcxtWire) -> None:
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
    coinbase_server: FakeCoinbaseServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], api_url: str | None,
) -> None:
    wire.forward_to = coinbase_server.url
    router = make_router(allow_live=True, api_url=api_url)
    order = await router.route_order("coinbase", MARKET_BUY, db, "u", testnet=False)
    assert order.status == "filled" and order.testnet is False
    assert wire.built == 1 and wire.urls
    assert all(url.startswith(PRODUCTION_URL + "/api/v3/brokerage/") for url in wire.urls)
    assert [r.method for r in coinbase_server.requests_to("/api/v3/brokerage/orders")] == ["POST"]


async def test_the_sandbox_is_a_testnet(
    make_router: Callable[..., Router], wire: CcxtWire
) -> None:
    router = make_router(api_url=None)
    connector = await router.get_connector("coinbase", testnet=True)
    assert connector.endpoints() == (SANDBOX_URL,) and connector.live is False
    assert wire.urls == []


async def test_a_live_request_on_loopback_is_recorded_as_testnet(
    coinbase_server: FakeCoinbaseServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router],
) -> None:
    wire.forward_to = coinbase_server.url
    router = make_router(allow_live=True)
    order = await router.route_order("coinbase", LIMIT_BUY, db, "u", testnet=False)
    assert order.status == "open" and order.testnet is True
    assert {urlsplit(url).netloc for url in wire.urls} == {urlsplit(coinbase_server.url).netloc}


# -- credentials that cannot be sent ------------------------------------------------------


@pytest.mark.parametrize(("key", "bad"), [("api_key", "\n"), ("api_key", "\t"),
                                          ("api_secret", "\t"), ("api_secret", "\x00"),
                                          ("api_secret", "\r")])
async def test_a_control_character_in_a_credential_rejects_before_sending(
    coinbase_server: FakeCoinbaseServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router], key: str, bad: str,
) -> None:
    value = getattr(coinbase_server, key)
    cut = value.index("\n", 40) + 5 if key == "api_secret" else 20
    router = make_router(**{key: value[:cut] + bad + value[cut:]})
    with pytest.raises(ConfigurationError, match=key) as info:
        await router.route_order("coinbase", LIMIT_BUY, db, "u")
    row = only_row(db)
    assert row.status == "rejected"
    for text in (str(info.value), row.reason or ""):
        assert value[:cut][-12:] not in text
    assert wire.built == 0 and coinbase_server.requests == []


async def test_a_pem_with_crlf_line_breaks_is_accepted(
    coinbase_server: FakeCoinbaseServer, wire: CcxtWire, db: Session,
    make_router: Callable[..., Router],
) -> None:
    wire.forward_to = coinbase_server.url
    router = make_router(api_secret=coinbase_server.api_secret.replace("\n", "\r\n"))
    order = await router.route_order("coinbase", LIMIT_BUY, db, "u")
    assert order.status == "open"
