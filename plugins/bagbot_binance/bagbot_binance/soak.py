"""``bagbot soak --connector binance`` (also ``bagbot-soak``): the fault soak for Binance.

Drives the exchange-agnostic soak (:mod:`bagbot_core.testing.soak`) through the Binance
connector against :class:`~bagbot_binance.testing.FakeBinanceServer` on 127.0.0.1: what is
Binance's own here is the :data:`BINANCE` target -- the order path, ``newClientOrderId``,
Binance's statuses, its -1007 "status unknown" and -2010 refusal answers, and the params
that would change an order past the risk checks. ``bagbot_binance.plugin`` adds the
command through ``bagbot_register_commands``; it imports this module only when it runs.

Test tooling like :mod:`bagbot_binance.testing` (it needs the ``testing`` extra's aiohttp).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from bagbot_core.plugin import OrderStatus
from bagbot_core.testing import soak as _engine
from bagbot_core.testing.soak import (
    DEFAULT_HOSTILE_RATE,
    DEFAULT_RATES,
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_USAGE,
    FAULTS,
    RECONCILE_FAULTS,
    Progress,
    SoakConfig,
    SoakResult,
    SoakTarget,
    choose_fault,
    format_report,
    order_payload,
)

if TYPE_CHECKING:
    import random

    from sqlalchemy.orm import Session

    from bagbot_binance.testing import FakeBinanceServer
    from bagbot_core.testing.fake_exchange import FakeExchangeServer, FakeOrder, Fault

__all__ = [
    "BINANCE", "DEFAULT_HOSTILE_RATE", "DEFAULT_RATES", "EXIT_FAIL", "EXIT_PASS", "EXIT_USAGE",
    "FAULTS", "HOSTILE_PARAMS", "ORDER_PATH", "PROG", "RECONCILE_FAULTS", "Progress",
    "SoakConfig", "SoakResult", "build_parser", "choose_fault", "evaluate", "format_report",
    "hostile_params", "inject", "main", "order_payload", "run_soak", "target",
]

CONNECTOR = "binance"
ORDER_PATH = "/api/v3/order"
PROG = "bagbot soak --connector binance"

#: Params that try to change an order past the risk checks or hide it from reconcile.
HOSTILE_PARAMS: tuple[dict[str, Any], ...] = (
    {"newClientOrderId": "{evil}"}, {"quantity": "50"}, {"quoteOrderQty": "900000"},
    {"cost": "900000"}, {"price": "60000"}, {"clientOrderId": "{evil}"},
    {"type": "MARKET"}, {"side": "SELL"}, {"symbol": "ETHUSDT"}, {"stopPrice": "1"},
    {"timeInForce": "GTX"}, {"TimeInForce": "GTC"}, {"test": True},
    {"newOrderRespType": "ACK"}, {"timeInForce": "IOC", "quantity": "50"},
)
#: Binance's "Send status unknown; execution status unknown." (408, -1007).
UNKNOWN_STATUS_ANSWER = json.dumps({
    "code": -1007, "msg": "Timeout waiting for response from backend server. Send status "
                          "unknown; execution status unknown."})


def _server(api_key: str, api_secret: str) -> FakeExchangeServer:
    from bagbot_binance.testing import FakeBinanceServer, default_book

    book = default_book()
    book.deposit("USDT", "1000000")
    book.deposit("BTC", "100")
    book.deposit("ETH", "1000")
    return FakeBinanceServer(book, api_key=api_key, api_secret=api_secret)


def _expected_status(server: FakeExchangeServer, order: FakeOrder) -> OrderStatus:
    from bagbot_binance.connector import map_status
    from bagbot_binance.testing import FakeBinanceServer

    assert isinstance(server, FakeBinanceServer)
    return map_status(server.raw_status(order), order.filled)


def _refuse(server: FakeExchangeServer, method: str, path: str) -> Fault:
    from bagbot_binance.testing import FakeBinanceServer

    assert isinstance(server, FakeBinanceServer)
    server.fail_with("insufficient_balance", method=method, path=path)
    return server.faults[-1]


def _credentials() -> tuple[str, str]:
    from bagbot_binance.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET

    return DEFAULT_API_KEY, DEFAULT_API_SECRET


def _plugin() -> object:
    import bagbot_binance.plugin

    return bagbot_binance.plugin


def target() -> SoakTarget:
    """The Binance soak target (built on use: it names the plugin and the fake server)."""
    return SoakTarget(
        connector=CONNECTOR, plugin=_plugin(), make_server=_server,
        default_credentials=_credentials(), order_path=ORDER_PATH,
        expected_status=_expected_status, client_id_field="newClientOrderId",
        hostile_params=HOSTILE_PARAMS, refuse=_refuse,
        unavailable_answers=((408, UNKNOWN_STATUS_ANSWER),), prog=PROG,
    )


BINANCE = target()


def hostile_params(rng: random.Random, number: int, turn: int
                   ) -> tuple[dict[str, Any], str | None]:
    """:data:`HOSTILE_PARAMS` number ``turn`` (cycling), with a planted client id."""
    return _engine.hostile_params(BINANCE, rng, number, turn)


def inject(server: FakeExchangeServer, kind: str, rng: random.Random, timeout: float,
           *, method: str, path: str) -> Fault:
    """Arm one fault of ``kind`` for the next matching request."""
    return _engine.inject(BINANCE, server, kind, rng, timeout, method=method, path=path)


def _make_router(server: FakeBinanceServer, config: SoakConfig, grace: float) -> Any:
    return _engine.make_router(BINANCE, server, config, grace,
                               (server.api_key, server.api_secret))


async def _route_all(router: Any, server: FakeExchangeServer, db: Session, user_id: str,
                     config: SoakConfig, result: SoakResult, out: TextIO) -> None:
    await _engine.route_all(BINANCE, router, server, db, user_id, config, result, out)


def evaluate(server: FakeExchangeServer, rows: Sequence[Any], result: SoakResult,
             secrets: Iterable[str] = (), log_text: str = "") -> SoakResult:
    """Compare the database rows with the exchange's book; fill in the pass criteria."""
    return _engine.evaluate(BINANCE, server, rows, result, secrets, log_text)


def run_soak(config: SoakConfig, out: TextIO | None = None) -> SoakResult:
    """Run the whole Binance soak (fake server in a thread, router in ``asyncio.run``)."""
    return _engine.run_soak(BINANCE, config, out)


def build_parser(prog: str = PROG) -> Any:
    return _engine.build_parser(BINANCE, prog)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """The Binance soak's command line; returns the exit code."""
    return _engine.main(BINANCE, argv, prog)


if __name__ == "__main__":
    sys.exit(main())
