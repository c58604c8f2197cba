"""Where a connector's orders go, and whether that is live: bagbot's one live-host rule.

*Testnet* means every request that can place, cancel or read orders goes to the exchange's
documented sandbox host or to a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``).
Any other host is **live**: it needs ``testnet=False`` *and* the live opt-in
(``BAGBOT_ALLOW_LIVE``), or the connector is refused with
:class:`~bagbot_core.errors.LiveTradingNotAllowedError` before it can send anything.

A URL counts as sandbox or loopback only when that is *provable* from its text: anything two
HTTP clients could read differently -- user info (``http://127.0.0.1@api.example.com``),
backslashes, percent escapes, upper case, a trailing dot, decimal or hexadecimal IPv4,
IPv4-mapped IPv6, zone ids, whitespace -- is classified live. Refusing a strangely written
sandbox URL costs a configuration fix; accepting a strangely written production URL costs money.

Connectors declare where their orders go with :meth:`Connector.endpoints
<bagbot_core.connector.Connector.endpoints>` and :attr:`~bagbot_core.connector.Connector.
sandbox_hosts`; the router checks the declaration when it builds the connector, and connectors
that build their HTTP client lazily check again just before (see
:attr:`bagbot_core.ccxt_support.CcxtConnector.exchange`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from urllib.parse import urlsplit

from bagbot_core.errors import LiveTradingNotAllowedError

__all__ = [
    "check_endpoints",
    "endpoint_host",
    "endpoint_is_live",
    "is_loopback_host",
    "warn_undeclared",
]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: ``host[:port]`` written the one unambiguous way: a lower-case DNS name without a trailing
#: dot, or a bracketed IPv6 address in lower-case hex (no embedded IPv4, no zone id).
_NETLOC = re.compile(
    rf"(?P<host>(?:{_LABEL}\.)*{_LABEL}|\[[0-9a-f:]{{2,39}}\])(?::(?P<port>[0-9]{{1,5}}))?"
)
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")

#: Connector names already warned about for declaring no endpoints (once per process).
_warned_undeclared: set[str] = set()


def endpoint_host(url: str) -> str | None:
    """The host ``url`` sends to, or ``None`` unless the URL is written unambiguously.

    Unambiguous: ``http://`` or ``https://`` (lower case), then ``host[:port]`` as
    :data:`_NETLOC` allows, then nothing or a path/query/fragment; printable ASCII only,
    no ``@``, ``\\`` or ``%`` anywhere in the authority, and :func:`urllib.parse.urlsplit`
    must read the same host. Hosts are returned as written (IPv6 with its brackets).
    """
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
        return None
    if "@" in url or "\\" in url:  # userinfo tricks; no base URL needs either
        return None
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep:
        return None
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    match = _NETLOC.fullmatch(netloc)
    if match is None:
        return None
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    host = match.group("host")
    try:
        parsed = urlsplit(url)
        same = parsed.netloc == netloc and parsed.port == (None if port is None else int(port))
    except ValueError:
        return None
    return host if same else None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (as written in a URL) is provably this machine.

    ``localhost``, a canonical dotted-quad in ``127.0.0.0/8``, or ``::1`` (bracketed or not).
    Everything else is not: ``LOCALHOST``, ``localhost.``, ``127.1``, ``2130706433``,
    ``0x7f.0.0.1``, ``::ffff:127.0.0.1``, ``127.0.0.1.example.com``.
    """
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if not re.fullmatch(r"[0-9a-f:]{2,39}", host):
            return False
        try:
            return ipaddress.IPv6Address(host) == _IPV6_LOOPBACK
        except ValueError:
            return False
    if not _DOTTED_QUAD.fullmatch(host):
        return False
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return address.is_loopback and str(address) == host


def endpoint_is_live(url: str, sandbox_hosts: Collection[str] = ()) -> bool:
    """Whether requests to ``url`` reach a live exchange: True unless its host is provably
    loopback or exactly one of ``sandbox_hosts`` (compared in lower case)."""
    host = endpoint_host(url)
    if host is None:
        return True
    if is_loopback_host(host):
        return False
    return host not in {h.lower() for h in sandbox_hosts}


def check_endpoints(
    name: str,
    urls: Iterable[str],
    *,
    sandbox_hosts: Collection[str] = (),
    testnet: bool,
    allow_live: bool,
) -> bool:
    """Apply the live-host rule to a connector's order endpoints; return whether it is live.

    :param name: the connector, for the message.
    :param urls: every base URL orders are placed, canceled or read at; empty for an
        in-process exchange (never live).
    :raises LiveTradingNotAllowedError: a live endpoint while ``testnet`` is true, or
        without ``allow_live``. The message names the host, never the whole URL (which could
        carry a password).
    """
    urls = (urls,) if isinstance(urls, str) else tuple(urls)
    live = [url for url in urls if endpoint_is_live(url, sandbox_hosts)]
    if not live:
        return False
    where = _describe(live[0])
    if testnet:
        sandboxes = ", ".join(sorted(h.lower() for h in sandbox_hosts)) or "none declared"
        raise LiveTradingNotAllowedError(
            f"{name}: testnet was asked for, but {where} is neither {name}'s sandbox "
            f"({sandboxes}) nor a loopback address, so orders there would be live; point the "
            "connector at its sandbox or at 127.0.0.1, or trade live with testnet=False and "
            "BAGBOT_ALLOW_LIVE=1; nothing was sent"
        )
    if not allow_live:
        raise LiveTradingNotAllowedError(
            f"{name}: live trading on {where} needs testnet=False and BAGBOT_ALLOW_LIVE=1 in "
            "the environment; nothing was sent"
        )
    return True


def _describe(url: str) -> str:
    host = endpoint_host(url)
    if host is not None:
        return f"host {host}"
    return "an endpoint URL that is not a plain http(s)://host[:port] URL"


def warn_undeclared(name: str) -> None:
    """Log once per process that connector ``name`` does not declare its endpoints, so
    bagbot cannot tell whether its ``testnet`` really is a testnet."""
    if name in _warned_undeclared:
        return
    _warned_undeclared.add(name)
    from bagbot_core import audit

    audit.get_logger(connector=name).warning(
        "endpoints_undeclared",
        reason=f"connector {name!r} does not declare its endpoints (Connector.endpoints), "
               "so bagbot cannot check that testnet orders stay off live hosts",
    )
