"""The live-host rule, credentials that cannot be sent, and passwords in URLs.

*Testnet* means orders go to the exchange's sandbox or to a loopback address; anything else
is live and needs ``testnet=False`` plus the opt-in (:mod:`bagbot_core.endpoints`). The host
classifier is checked against two independent URL parsers (urllib's and yarl's, which
aiohttp -- and so ccxt -- uses): a URL it calls "not live" must be sandbox/loopback to both.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
from collections.abc import Sequence
from urllib.parse import urlsplit

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from bagbot_core import endpoints, hookimpl
from bagbot_core.connector import (
    Connector,
    ConnectorSettings,
    ConnectorSpec,
    config_secret,
    http_base_url,
)
from bagbot_core.endpoints import check_endpoints, endpoint_is_live, is_loopback_host
from bagbot_core.errors import (
    ConfigurationError,
    LiveTradingNotAllowedError,
    OrderValidationError,
)
from bagbot_core.models import Order
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.secrets import Secret
from tests.scripted import ScriptedConnector, ScriptedExchange, scripted_plugin

SANDBOX = "sandbox.example.test"
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.001"}


# -- the host classifier -----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8123", "http://127.0.0.1", "https://127.255.255.254/api",
    "http://localhost:9/x?y=1", "http://[::1]:80", "http://[0:0:0:0:0:0:0:1]",
    f"https://{SANDBOX}", f"https://{SANDBOX}:443/api/v3",
])
def test_sandbox_and_loopback_urls_are_not_live(url: str) -> None:
    assert not endpoint_is_live(url, {SANDBOX})


@pytest.mark.parametrize("url", [
    "https://api.binance.com", "https://api.example.com/api/v3",
    # loopback or sandbox look-alikes
    "http://127.0.0.1.example.com", "http://localhost.example", "http://localhost.",
    f"https://{SANDBOX}.", f"https://evil-{SANDBOX}", f"https://{SANDBOX}.evil.com",
    # user info: the host is what follows the last @ (or something else to another parser)
    "http://127.0.0.1@api.binance.com", "http://localhost:80@api.binance.com",
    "http://a@127.0.0.1@api.binance.com", "http://user:pw@127.0.0.1:9",
    "http://127.0.0.1\\@api.binance.com", "http://127.0.0.1\\.api.binance.com",
    # numbers other parsers read as 127.0.0.1, IPv4-mapped and zoned IPv6
    "http://2130706433", "http://0x7f.0.0.1", "http://0177.0.0.1", "http://127.1",
    "http://127.000.0.1", "http://[::ffff:127.0.0.1]", "http://[::ffff:7f00:1]",
    "http://[::1%25lo]", "http://[fe80::1]",
    # case, escapes, whitespace, control characters, odd ports and schemes
    "http://LOCALHOST", "HTTP://localhost", f"https://{SANDBOX.upper()}",
    "http://127.0.0.1%2eexample.com", "http://local%68ost", " http://127.0.0.1",
    "http://127.0.0.1 .example.com", "http://local\nhost", "http://127.0.0.1\t",
    "http://127.0.0.1:", "http://127.0.0.1:0", "http://127.0.0.1:99999", "http://127.0.0.1:+80",
    "ftp://127.0.0.1", "//127.0.0.1", "127.0.0.1:80", "http:/127.0.0.1", "",
    "http://ⓛocalhost", "http://localhost\u3002", "http://xn--localhost",
])
def test_anything_not_provably_sandbox_or_loopback_is_live(url: str) -> None:
    assert endpoint_is_live(url, {SANDBOX})


def test_loopback_hosts() -> None:
    for host in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("LOCALHOST", "localhost.", "127.1", "2130706433", "::ffff:127.0.0.1",
                 "0.0.0.0", "[::]", "128.0.0.1", "127.0.0.1.nip.io", "", "[::1"):
        assert not is_loopback_host(host), host


def _host_is_safe(host: str | None) -> bool:
    """Sandbox or loopback by plain reading, as a parser's host string."""
    if host is None:
        return False
    if host in ("localhost", SANDBOX):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parsed_hosts(url: str) -> list[str | None]:
    hosts: list[str | None] = []
    for parse in (lambda u: urlsplit(u).hostname, lambda u: yarl.URL(u).host):
        try:
            hosts.append(parse(url))
        except (ValueError, TypeError):
            hosts.append(None)
    return hosts


_TRICKY_HOSTS = [
    "127.0.0.1", "localhost", "[::1]", SANDBOX, "api.binance.com", "LOCALHOST", "localhost.",
    "2130706433", "127.1", "0x7f.0.0.1", "[::ffff:127.0.0.1]", f"{SANDBOX}.", "127.0.0.1.evil",
    "localhost.evil", "evil.localhost", "[::1%25eth0]", "0", "0.0.0.0",
]
_PIECE = st.sampled_from(["", ".", "@", ":", "\\", "%2e", "/", "#", "?", "\t", " ", "[", "]",
                          ".evil.com", "evil.", "80", "user:pw@", "@api.binance.com"])


@st.composite
def urls(draw: st.DrawFn) -> str:
    """URLs assembled from the parts attacks use: schemes, user info, look-alike hosts,
    separators, ports, paths -- mostly well-formed enough to reach the host check."""
    scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "http:/", "//", "ws://"]))
    userinfo = draw(st.sampled_from(["", "", "", "u:p@", "127.0.0.1@", "localhost:1@"]))
    host = draw(st.one_of(st.sampled_from(_TRICKY_HOSTS),
                          st.text(alphabet="abcdefxl0127.:[]%@\\-", max_size=20)))
    host = draw(_PIECE) + host + draw(_PIECE) if draw(st.booleans()) else host
    port = draw(st.sampled_from(["", "", ":80", ":8123", ":", ":0", ":99999", ":0x50"]))
    path = draw(st.sampled_from(["", "/", "/api/v3", "?q=1", "#f", "/@api.binance.com"]))
    return scheme + userinfo + host + port + path


@given(st.one_of(urls(), st.text(max_size=60)))
def test_a_url_called_not_live_is_sandbox_or_loopback_to_every_parser(url: str) -> None:
    if endpoint_is_live(url, {SANDBOX}):
        return
    hosts = _parsed_hosts(url)
    assert all(_host_is_safe(host) for host in hosts), (url, hosts)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.one_of(
        st.just("localhost"), st.just("[::1]"), st.just(SANDBOX),
        st.tuples(*[st.integers(0, 255)] * 3).map(lambda t: "127.{}.{}.{}".format(*t)),
    ),
    port=st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    path=st.sampled_from(["", "/", "/api/v3", "/api/v3/brokerage"]),
)
def test_plainly_written_sandbox_and_loopback_urls_are_testnet(
    scheme: str, host: str, port: str, path: str
) -> None:
    assert not endpoint_is_live(f"{scheme}://{host}{port}{path}", {SANDBOX})


def test_check_endpoints_refuses_live_hosts_unless_live_was_asked_and_allowed() -> None:
    live = ["http://127.0.0.1:9", "https://api.example.com/api"]
    with pytest.raises(LiveTradingNotAllowedError, match=r"host api\.example\.com") as info:
        check_endpoints("ex", live, sandbox_hosts={SANDBOX}, testnet=True, allow_live=True)
    assert SANDBOX in str(info.value) and "nothing was sent" in str(info.value)
    with pytest.raises(LiveTradingNotAllowedError, match="BAGBOT_ALLOW_LIVE=1"):
        check_endpoints("ex", live, testnet=False, allow_live=False)
    assert check_endpoints("ex", live, testnet=False, allow_live=True) is True
    assert check_endpoints("ex", ["http://localhost:1", f"https://{SANDBOX}"],
                           sandbox_hosts={SANDBOX}, testnet=True, allow_live=False) is False
    assert check_endpoints("ex", (), testnet=True, allow_live=False) is False


def test_the_refusal_names_the_host_never_the_url() -> None:
    with pytest.raises(LiveTradingNotAllowedError) as info:
        check_endpoints("ex", ["https://user:canary-pw@api.example.com/?key=canary-key"],
                        testnet=True, allow_live=False)
    assert "canary" not in str(info.value)


# -- the router: a connector that declares its endpoints -----------------------------------


class DeclaringConnector(ScriptedConnector):
    """The scripted exchange behind a configurable URL, declared as its endpoint."""

    name = "declaring"
    sandbox_hosts = frozenset({SANDBOX})

    def __init__(self, exchange: ScriptedExchange, settings: ConnectorSettings) -> None:
        super().__init__(exchange, settings)
        self.api_key = config_secret(settings.config, "api_key", "DECLARING_TEST_API_KEY")
        self.api_url = http_base_url(settings.config["api_url"], "declaring: api_url")

    def endpoints(self) -> Sequence[str]:
        return (self.api_url,)


def declaring_plugin(exchange: ScriptedExchange) -> object:
    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Connector:
                exchange.factory_calls += 1
                return DeclaringConnector(exchange, settings)

            return [ConnectorSpec("declaring", factory, "scripted exchange behind a URL")]

    return Plugin()


def make_router(exchange: ScriptedExchange, *, allow_live: bool, **config: object) -> Router:
    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[
        ("declaring", declaring_plugin(exchange)), ("scripted", scripted_plugin(exchange))])
    return Router(registry, limits=RiskLimits(), allow_live=allow_live,
                  connector_config={"declaring": dict(config)})


def rows(db: Session) -> list[Order]:
    db.expire_all()
    return list(db.scalars(select(Order).order_by(Order.id)))


@pytest.mark.parametrize("allow_live", [False, True])
async def test_testnet_on_a_live_host_is_refused_before_anything_is_sent(
    db: Session, exchange: ScriptedExchange, allow_live: bool
) -> None:
    router = make_router(exchange, allow_live=allow_live, api_url="https://api.example.com")
    try:
        with pytest.raises(LiveTradingNotAllowedError, match=r"host api\.example\.com"):
            await router.route_order("declaring", MARKET_BUY, db, "u", testnet=True)
        with pytest.raises(LiveTradingNotAllowedError):  # not cached: refused every time
            await router.get_connector("declaring", testnet=True)
    finally:
        await router.aclose()
    (row,) = rows(db)
    assert row.status == "rejected" and "nothing was sent" in (row.reason or "")
    assert exchange.create_calls == 0 and exchange.placed == {}
    assert exchange.factory_calls == 2


async def test_a_live_host_needs_testnet_false_and_the_opt_in(
    db: Session, exchange: ScriptedExchange
) -> None:
    refusing = make_router(exchange, allow_live=False, api_url="https://api.example.com")
    with pytest.raises(LiveTradingNotAllowedError, match="BAGBOT_ALLOW_LIVE=1"):
        await refusing.route_order("declaring", MARKET_BUY, db, "u", testnet=False)
    await refusing.aclose()
    assert exchange.factory_calls == 0
    router = make_router(exchange, allow_live=True, api_url="https://api.example.com")
    try:
        order = await router.route_order("declaring", MARKET_BUY, db, "u", testnet=False)
        connector = await router.get_connector("declaring", testnet=False)
    finally:
        await router.aclose()
    assert order.status == "filled" and order.testnet is False
    assert connector.live is True and connector.allow_live is True


async def test_the_row_says_testnet_when_a_live_request_went_to_loopback(
    db: Session, exchange: ScriptedExchange
) -> None:
    router = make_router(exchange, allow_live=True, api_url="http://127.0.0.1:9")
    payload = {**MARKET_BUY, "client_order_id": "loop-1"}
    try:
        order = await router.route_order("declaring", payload, db, "u", testnet=False)
        again = await router.route_order("declaring", payload, db, "u", testnet=False)
        also = await router.route_order("declaring", payload, db, "u", testnet=True)
    finally:
        await router.aclose()
    assert order.testnet is True and order.status == "filled"
    assert again.id == also.id == order.id
    assert exchange.create_calls == 1 and len(rows(db)) == 1


async def test_a_live_row_never_answers_a_testnet_request(
    db: Session, exchange: ScriptedExchange
) -> None:
    router = make_router(exchange, allow_live=True, api_url="https://api.example.com")
    payload = {**MARKET_BUY, "client_order_id": "live-1"}
    try:
        order = await router.route_order("declaring", payload, db, "u", testnet=False)
        with pytest.raises(OrderValidationError, match="different parameters"):
            await router.route_order("declaring", payload, db, "u", testnet=True)
    finally:
        await router.aclose()
    assert order.testnet is False and exchange.create_calls == 1


async def test_an_undeclared_connector_keeps_the_callers_testnet_and_is_warned_about_once(
    db: Session, exchange: ScriptedExchange, log_stream_json: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoints, "_warned_undeclared", set())
    routers = [make_router(exchange, allow_live=False) for _ in range(2)]
    try:
        for router in routers:
            order = await router.route_order("scripted", MARKET_BUY, db, "u")
            assert order.testnet is True and order.status == "filled"
    finally:
        for router in routers:
            await router.aclose()
    events = [json.loads(line) for line in log_stream_json.getvalue().splitlines()]
    warnings = [e for e in events if e.get("event") == "endpoints_undeclared"]
    assert len(warnings) == 1 and warnings[0]["connector"] == "scripted"


# -- credentials that cannot be sent (control characters) ---------------------------------

BAD_CHARACTERS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\ud800", "\u200b"]


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
def test_a_credential_with_a_control_character_is_a_configuration_error(bad: str) -> None:
    value = f"canary{bad}value"
    for given_as in (value, Secret(value)):
        with pytest.raises(ConfigurationError, match="connector config key 'api_key'") as info:
            config_secret({"api_key": given_as}, "api_key", "UNUSED_TEST_ENV")
        assert "canary" not in str(info.value)


@pytest.mark.parametrize("bad", ["\n", "\t", "\x1b", "\udcff"])
def test_a_credential_from_the_environment_is_checked_the_same(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAGBOT_TEST_SECRET", f"canary{bad}value")
    with pytest.raises(ConfigurationError, match="BAGBOT_TEST_SECRET") as info:
        config_secret({}, "api_secret", "BAGBOT_TEST_SECRET")
    assert "canary" not in str(info.value)


def test_line_breaks_are_allowed_only_where_a_pem_is_expected() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\r\nBBBB\n-----END EC PRIVATE KEY-----\n"
    secret = config_secret({"k": pem}, "k", "UNUSED_TEST_ENV", multiline=True)
    assert secret is not None and secret.reveal() == pem.strip()
    for bad in ("\t", "\r", "\x00"):
        with pytest.raises(ConfigurationError, match="'k'"):
            config_secret({"k": pem.replace("AAAA", f"AA{bad}AA")}, "k", "UNUSED_TEST_ENV",
                          multiline=True)
    with pytest.raises(ConfigurationError):
        config_secret({"k": pem}, "k", "UNUSED_TEST_ENV")


def test_surrounding_whitespace_is_still_stripped() -> None:
    secret = config_secret({"k": "  key-from-a-file\n"}, "k", "UNUSED_TEST_ENV")
    assert secret is not None and secret.reveal() == "key-from-a-file"
    assert config_secret({"k": " \n\t "}, "k", "UNUSED_TEST_ENV_UNSET") is None
    assert "UNUSED_TEST_ENV_UNSET" not in os.environ


async def test_a_control_character_in_a_key_rejects_the_order_before_sending(
    db: Session, exchange: ScriptedExchange
) -> None:
    router = make_router(exchange, allow_live=False, api_url="http://127.0.0.1:9",
                         api_key="canary\nkey")
    try:
        with pytest.raises(ConfigurationError, match="api_key"):
            await router.route_order("declaring", MARKET_BUY, db, "u")
    finally:
        await router.aclose()
    (row,) = rows(db)
    assert row.status == "rejected" and "canary" not in (row.reason or "")
    assert exchange.create_calls == 0


# -- passwords in URLs ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://user:canary-pw@127.0.0.1:9", "https://canary-token@api.example.com",
    "http://127.0.0.1:9/?apikey=canary-key", "ftp://canary:pw@127.0.0.1",
    "canary-not-a-url", "http://[canary", "http://127.0.0.1:canary",
    "http://127.0.0.1/canary\nx", 12345,
])
def test_a_bad_base_url_is_refused_without_quoting_it(url: object) -> None:
    with pytest.raises(ConfigurationError, match="x: api_url must be an http") as info:
        http_base_url(url, "x: api_url")
    assert "canary" not in str(info.value) and "12345" not in str(info.value)


def test_user_info_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="user info"):
        http_base_url("http://user:pw@127.0.0.1:9", "x: api_url")
    assert http_base_url("https://127.0.0.1:9/api/?q=1#f", "x", allow_query=True) == \
        "https://127.0.0.1:9/api"


async def test_a_password_in_the_url_reaches_no_row_and_no_log(
    db: Session, exchange: ScriptedExchange, log_stream_json: io.StringIO
) -> None:
    router = make_router(exchange, allow_live=False,
                         api_url="http://user:canary-pw@127.0.0.1:9")
    try:
        with pytest.raises(ConfigurationError, match="user info") as info:
            await router.route_order("declaring", MARKET_BUY, db, "u")
    finally:
        await router.aclose()
    (row,) = rows(db)
    assert row.status == "rejected" and exchange.create_calls == 0
    stored = json.dumps([row.reason, row.details], default=str)
    assert "canary" not in stored + str(info.value) + log_stream_json.getvalue()


def test_paper_declares_that_it_sends_nothing_anywhere() -> None:
    from bagbot_core.paper.connector import PaperConnector

    paper = PaperConnector(ConnectorSettings(testnet=False))
    assert paper.endpoints() == ()
    assert paper.check_endpoints(testnet=True, allow_live=False) is False
