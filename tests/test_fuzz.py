"""Payload fuzzing: hostile input through ``route_order``, the ``bagbot route`` command (in
process) and the real console script (subprocesses).

For every generated call:

* nothing escapes but bagbot's documented hierarchy (:class:`BagbotError`);
* the process survives (the subprocesses exit 0, 1, 2 or 3 with a one-line error);
* every order that reaches the connector respects every limit: a known, active market,
  ``MIN_ORDER_QTY <= amount <= MAX_ORDER_QTY``, value <= ``MAX_ORDER_VALUE_USD``, the
  market's step, minimum and minimum cost, finite positive decimals;
* every call with a valid user id leaves exactly one new row (or, for a repeated
  idempotency key, none: the first row is the answer), and a call without one leaves none;
* an amount or price written with any non-ASCII character, a ``testnet`` that is not a
  bool and a malformed connector name are refused (``OrderValidationError``) and nothing
  reaches the connector.

Payloads mix wrong types, NaN/inf, huge exponents (``1e999999``), negative zero, unicode
look-alikes and digits of every script, SQL-looking strings, missing and extra keys, and
``params`` dicts of any shape. The big run (10,000 payloads
through ``route_order``) is marked ``slow``; a 1,000-payload run is part of the default
suite.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.cli import cli
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import BagbotError, OrderValidationError
from bagbot_core.models import Order
from bagbot_core.orders import OrderType, Side
from bagbot_core.payload import CLIENT_ORDER_ID_RE, check_connector_name, parse_order_payload
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router, set_router
from tests.scripted import MARKETS, ScriptedExchange, scripted_plugin

ROOT = Path(__file__).resolve().parent.parent
LIMITS = RiskLimits()
USD = {"USD", "USDT", "USDC", "BUSD", "DAI", "TUSD", "FDUSD"}

# -- the generators ----------------------------------------------------------------------

SQLISH = [
    "'; DROP TABLE orders; --", "1 OR 1=1", "\" OR \"\"=\"", "BTC/USDT'--", "1; SELECT pg_sleep(5)",
    "$(rm -rf /)", "%s%s%s%n", "{0.__class__}", "../../etc/passwd", "<script>alert(1)</script>",
    "NULL", "None", "\x00", "\u202e", "\ufeff",
]
NUMBER_TEXT = [
    "1e999999", "-1e999999", "1e-999999", "1E+20", "1e20", "99999999999999999999.1", "-0",
    "-0.0", "0", "0.0", "+0", "NaN", "nan", "-nan", "sNaN", "inf", "-inf", "Infinity",
    "-Infinity", "0x10", "1_000", " 1 ", "1,5", "\uff11", "٣", "½", "1e-19",
    "0.0000000000000000001",
    "0.000000000000000001", "9" * 60, "0.0001", "0.00009999", "0.00001", "10", "10.0",
    "10.000000001", "2", "1.99999", "2.00001", "0.5", "0.01", "0.001", "49990", "50010",
    "50000", "0.01", "100000", "1e-5", "1E-4", "   ", "", "abc", "1.2.3", "--1", "1e",
]
PLAUSIBLE_AMOUNTS = ["0.0001", "0.00011", "0.001", "0.01", "0.1", "1", "1.5", "2", "2.00001",
                     "9.99999", "10", "10.00001", "0.00009999", "0.000015"]
PLAUSIBLE_PRICES = ["49990", "50010", "50000", "49999.999", "50000.005", "1", "0.01",
                    "10000", "0.001", "100000", "1000000"]
SYMBOLS = ["BTC/USDT", "btc/usdt", " BTC/USDT ", "ETH/BTC", "OLD/USDT", "DOGE/USDT", "BTC-USDT",
           "BTCUSDT", "\uff22\uff34\uff23/USDT", "BTC/USDT\x00", "₿/USDT", "BTC/", "/USDT",
           "BTC//USDT", "A" * 21 + "/USDT", "BTC/USDT/ETH", ""]
SIDES = ["buy", "sell", "BUY", " Sell ", "short", "", "bUy", "\uff42\uff55\uff59", "buy\n"]
TYPES = ["market", "limit", "LIMIT", " market", "stop", "", "limit_maker"]

#: Digits of other scripts: Arabic-Indic, Devanagari, full-width, mathematical bold...
foreign_digits = st.characters(categories=("Nd",)).filter(lambda c: not c.isascii())
#: Numbers with at least one non-ASCII character in them: every one must be refused.
NON_ASCII_TEXT = ["0\u06601", "\uff11", "\U0001d7ce.\U0001d7d3", "\u0661\u0660", "0.\u0665",
                  "\u00a01", "1\u00a0", "\u20030.5", "0.5\u3000", "1\u0301", "\u0661e1",
                  "0\uff0e5"]
non_ascii_numbers = st.one_of(
    st.sampled_from(NON_ASCII_TEXT),
    st.lists(st.one_of(st.sampled_from("0123456789.e-"), foreign_digits), min_size=1,
             max_size=10).map("".join).filter(lambda t: not t.isascii()),
    st.tuples(st.sampled_from(PLAUSIBLE_AMOUNTS), st.integers(0, 8),
              st.characters(min_codepoint=0x80, exclude_categories=("Cs",))).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:]),
)
weird = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0), st.just(float("nan")),
    st.decimals(allow_nan=True, allow_infinity=True), st.just(Decimal("-0")),
    st.just(Decimal("sNaN")), st.text(max_size=40), st.binary(max_size=8),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=2),
    st.sampled_from(SQLISH), st.just(object()),
)
number = st.one_of(
    st.sampled_from(PLAUSIBLE_AMOUNTS), st.sampled_from(NUMBER_TEXT), non_ascii_numbers,
    st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("12"), places=6).map(str),
    st.floats(min_value=0.00001, max_value=12), st.integers(min_value=-3, max_value=12), weird,
)
price = st.one_of(st.sampled_from(PLAUSIBLE_PRICES), st.sampled_from(NUMBER_TEXT),
                  non_ascii_numbers,
                  st.decimals(min_value=1, max_value=60000, places=3).map(str), weird)
client_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True).map(lambda s: f"f{s}"[:36]),
    st.sampled_from(["replay-1", "replay-2", "a" * 36, "a" * 37, "has space", "ünïcode",
                     "semi;colon", "", *SQLISH]),
    weird,
)

#: Keys that would change what is sent if passed through, and harmless-looking ones.
PARAM_KEYS = ["quantity", "quoteOrderQty", "cost", "price", "stopPrice", "symbol", "side",
              "type", "amount", "newClientOrderId", "clientOrderId", "client_order_id",
              "order_configuration", "product_id", "timeInForce", "postOnly",
              "selfTradePreventionMode", "test", "recvWindow", "__class__", ""]
param_values = st.recursive(
    st.one_of(weird, non_ascii_numbers, st.sampled_from(["50", "0.001", "IOC", "GTC", "FOK",
                                                         "ETH/USDT", "sell", "evil1"])),
    lambda inner: st.one_of(st.lists(inner, max_size=2),
                            st.dictionaries(st.text(max_size=6), inner, max_size=2)),
    max_leaves=4,
)
params_dicts = st.dictionaries(st.one_of(st.sampled_from(PARAM_KEYS), st.text(max_size=12)),
                               param_values, max_size=4)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "symbol": st.one_of(st.sampled_from(SYMBOLS), st.sampled_from(SQLISH), st.text(max_size=30),
                        weird),
    "side": st.one_of(st.sampled_from(SIDES), st.text(max_size=8), weird),
    "type": st.one_of(st.sampled_from(TYPES), st.text(max_size=8), weird),
    "amount": number,
    "price": price,
    "params": st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), st.integers(),
                                                    max_size=2), params_dicts, weird),
    "client_order_id": client_ids,
}


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A payload: mostly plausible orders with a few fields bent, often plain garbage."""
    shape = draw(st.integers(0, 9))
    if shape == 0:  # not a mapping at all
        return draw(st.one_of(weird, st.lists(st.text(max_size=5), max_size=3)))
    payload: dict[Any, Any] = {
        "symbol": draw(st.sampled_from(["BTC/USDT"] * 6 + ["ETH/BTC", "OLD/USDT"])),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "type": draw(st.sampled_from(["market", "limit"])),
        "amount": draw(st.sampled_from(PLAUSIBLE_AMOUNTS)),
    }
    if payload["type"] == "limit":
        payload["price"] = draw(st.sampled_from(PLAUSIBLE_PRICES))
    bent = draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 1, 2, 4]))
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=bent, max_size=bent,
                             unique=True)):
        payload[key] = draw(FIELDS[key])
    if draw(st.integers(0, 7)) == 0:  # missing keys
        for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2, unique=True)):
            del payload[key]
    if draw(st.integers(0, 9)) == 0:  # extra keys, of any type
        payload[draw(st.one_of(st.text(max_size=10), st.sampled_from(["prcie", "qty", "__class__",
                                                                     *SQLISH]),
                               st.integers(), st.none()))] = draw(weird)
    return payload


ODD_TESTNETS: list[Any] = ["false", "False", "no", "", "true", "0", "1", 0, 1, 0.0, None, [],
                           {}, Decimal(1), b"", "\u0661"]
odd_testnets = st.sampled_from(ODD_TESTNETS)
#: Mostly a real bool; sometimes what a careless caller passes instead.
testnets = st.integers(0, 9).flatmap(
    lambda i: st.sampled_from([True] * 19 + [False]) if i < 8 else odd_testnets)
BAD_CONNECTORS = ["", "a" * 65, "scr\x00ipted", "scripted\n", "pa per", "p\u00e4per", "\u202e",
                  "scripted;--", "\udcff", 42, None]
connectors = st.integers(0, 19).flatmap(
    lambda i: st.just("scripted") if i < 17 else st.sampled_from(["nope", *BAD_CONNECTORS]))

odd_users = st.one_of(
    st.sampled_from(["", "   ", "u" * 128, "u" * 129, "ünïcode-user", *SQLISH]), weird)
#: Mostly a valid user id (Hypothesis picks one_of branches evenly, so weight by hand).
users = st.integers(0, 9).flatmap(lambda i: st.just("fuzz") if i < 8 else odd_users)


# -- the oracle --------------------------------------------------------------------------


def valid_user(user: object) -> bool:
    return (isinstance(user, str) and bool(user.strip()) and len(user) <= 128
            and user.isprintable())


def violations_of(request: Any) -> list[str]:
    """Why an order that reached the connector should not have (empty: it is fine)."""
    problems = []
    amount, order_price = request.amount, request.price
    market = MARKETS.get(request.symbol)
    if market is None or not market.active:
        return [f"market {request.symbol!r} unknown or inactive"]
    if not (isinstance(amount, Decimal) and amount.is_finite() and amount > 0):
        problems.append(f"amount {amount!r}")
        return problems
    if not LIMITS.min_order_qty <= amount <= LIMITS.max_order_qty:
        problems.append(f"amount {amount} outside [{LIMITS.min_order_qty}, "
                        f"{LIMITS.max_order_qty}]")
    if market.amount_step and amount % market.amount_step:
        problems.append(f"amount {amount} not a multiple of {market.amount_step}")
    if market.min_amount is not None and amount < market.min_amount:
        problems.append(f"amount {amount} below the market minimum")
    if request.side not in (Side.BUY, Side.SELL):
        problems.append(f"side {request.side!r}")
    if request.type is OrderType.LIMIT:
        if not (isinstance(order_price, Decimal) and order_price.is_finite()
                and order_price > 0):
            return [*problems, f"price {order_price!r}"]
        if market.price_step and order_price % market.price_step:
            problems.append(f"price {order_price} not a multiple of {market.price_step}")
        reference = order_price
    else:
        if order_price is not None:
            problems.append("market order with a price")
        reference = Decimal("50010") if request.side is Side.BUY else Decimal("49990")
    if market.quote.upper() not in USD:
        problems.append(f"value of {request.symbol} in USD unknown")
    elif amount * reference > LIMITS.max_order_value_usd:
        problems.append(f"value {amount * reference} over {LIMITS.max_order_value_usd}")
    if market.min_cost is not None and amount * reference < market.min_cost:
        problems.append(f"value {amount * reference} below the market's minimum cost")
    return problems


def non_ascii_number(payload: object) -> bool:
    """Is the amount or price text with a non-ASCII character (which must be refused)?"""
    return isinstance(payload, dict) and any(
        isinstance(payload.get(key), str) and not payload[key].isascii()
        for key in ("amount", "price"))


def count_rows(db: Session) -> int:
    total = db.scalar(select(func.count()).select_from(Order))
    db.commit()
    return int(total or 0)


def known_client_id(db: Session, payload: object) -> bool:
    """The payload is valid and its idempotency key already has a row: a replay, which
    returns (or refuses with) the first order and writes nothing."""
    try:
        cid = parse_order_payload(payload).client_order_id
    except OrderValidationError:
        return False  # refused before the key is looked at: a new rejected row
    if cid is None:
        return False
    found = db.scalar(select(func.count()).select_from(Order)
                      .where(Order.client_order_id == cid))
    db.commit()
    return bool(found)


# -- route_order -------------------------------------------------------------------------


class Harness:
    """One router, one database, one event loop for thousands of calls."""

    def __init__(self, url: str) -> None:
        #: PostgreSQL refuses NUL in text columns (see test_nul_bytes_leave_a_row): the
        #: general fuzz replaces NUL there so it keeps testing everything else.
        self.exchange = ScriptedExchange()
        registry = PluginRegistry(disabled=(), load_entrypoints=False,
                                  plugins=[("scripted", scripted_plugin(self.exchange))])
        self.router = Router(registry, limits=LIMITS, allow_live=False)
        self.loop = asyncio.new_event_loop()
        self.db = session_factory(get_engine(url))()
        self.rows = count_rows(self.db)
        self.calls = 0
        self.outcomes: Counter[str] = Counter()
        self.sent = 0

    def route(self, payload: Any, user: Any, connector: Any = "scripted",
              testnet: Any = True) -> None:
        self.calls += 1
        # A malformed connector name or testnet is refused (with a row) before the
        # idempotency key is looked at, like a malformed payload.
        must_refuse = (not check_connector_name(connector) or not isinstance(testnet, bool)
                       or non_ascii_number(payload))
        replay = (check_connector_name(connector) and isinstance(testnet, bool)
                  and known_client_id(self.db, payload))
        placed_before = len(self.exchange.placed)
        error: BaseException | None = None
        try:
            order = self.loop.run_until_complete(
                self.router.route_order(connector, payload, self.db, user, testnet))
            self.outcomes[f"ok {order.status}"] += 1
        except BagbotError as exc:
            self.outcomes[type(exc).__name__] += 1
            error = exc
        except Exception as exc:  # outside the documented hierarchy
            raise AssertionError(f"{type(exc).__name__}: {exc} for {payload!r}") from exc
        finally:
            self.db.rollback()
        rows, before = count_rows(self.db), self.rows
        self.rows = rows
        expected = 1 if valid_user(user) and not replay else 0
        assert rows - before == expected, (payload, user, connector, testnet, rows - before)
        new = list(self.exchange.placed.values())[placed_before:]
        if must_refuse and not replay:
            assert isinstance(error, OrderValidationError), (payload, connector, testnet, error)
            assert new == [], (payload, connector, testnet)
            if valid_user(user):
                assert error.order is not None and error.order.status == "rejected"
                assert error.order.testnet is (testnet if isinstance(testnet, bool) else True)
        self.sent += len(new)
        for placed in new:
            assert violations_of(placed.request) == [], (payload, placed.request)

    def close(self) -> None:
        self.db.close()
        self.loop.run_until_complete(self.router.aclose())
        self.loop.close()


@pytest.fixture
def harness(db_url: str, log_stream_json: object) -> Iterator[Harness]:
    h = Harness(db_url)
    yield h
    h.close()


def _fuzz_route_order(harness: Harness, examples: int) -> None:
    @settings(max_examples=examples, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads(), user=users, connector=connectors, testnet=testnets)
    def run(payload: Any, user: Any, connector: Any, testnet: Any) -> None:
        harness.route(payload, user, connector, testnet)

    run()
    print(f"\nroute_order fuzz: {harness.calls} calls, {harness.sent} reached the connector; "
          f"{dict(harness.outcomes)}")
    assert harness.calls >= examples
    assert harness.sent > examples // 20  # the fuzz does reach the exchange, not just reject


def test_fuzz_route_order(harness: Harness) -> None:
    _fuzz_route_order(harness, 1000)


@pytest.mark.slow
def test_fuzz_route_order_10k(sqlite_url: str, log_stream_json: object) -> None:
    """10,000 payloads on a SQLite file (PostgreSQL gets the 1,000 of the test above)."""
    harness = Harness(sqlite_url)
    try:
        _fuzz_route_order(harness, 10_000)
    finally:
        harness.close()


def test_fixed_nasty_payloads(harness: Harness) -> None:
    """The classics, each on its own, so a regression names the payload."""
    base = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}
    cases: list[Any] = [None, [], "order", 42, b"\x00", {}, {"": ""}]
    for key in ("amount", "price"):
        for value in ["1e999999", "-1e999999", "NaN", "-0", "-0.0", -0.0, float("inf"),
                      float("nan"), Decimal("sNaN"), Decimal("-0"), 10**400, True, [], {}]:
            cases.append({**base, "type": "limit" if key == "price" else "market",
                          "price": "50000" if key == "amount" else value,
                          "amount": value if key == "amount" else "0.01"}
                         if key == "price" else {**base, key: value})
    cases += [{**base, "symbol": s} for s in SYMBOLS + SQLISH]
    cases += [{**base, "side": s} for s in SIDES] + [{**base, "type": t} for t in TYPES]
    cases += [{k: v for k, v in base.items() if k != key} for key in base]
    cases += [{**base, "amount": text} for text in NON_ASCII_TEXT]
    cases += [{**base, "type": "limit", "price": text} for text in NON_ASCII_TEXT]
    cases += [{**base, "prcie": "1"}, {**base, None: 1}, {**base, 3: 1},
              {**base, "client_order_id": "x" * 37}, {**base, "params": []},
              {**base, "params": {1: 2}}]
    for payload in cases:
        harness.route(payload, "fuzz")
    for testnet in ODD_TESTNETS:
        harness.route(base, "fuzz", testnet=testnet)
    for connector in BAD_CONNECTORS:
        harness.route(base, "fuzz", connector=connector)
    assert harness.calls == len(cases) + len(ODD_TESTNETS) + len(BAD_CONNECTORS)


@pytest.mark.postgres
def test_nul_bytes_leave_a_row(postgres_url: str, log_stream_json: object) -> None:
    """PostgreSQL refuses NUL in text: it is replaced in stored text, refused in user ids."""
    from sqlalchemy import text

    with get_engine(postgres_url).begin() as conn:
        conn.execute(text("TRUNCATE orders RESTART IDENTITY CASCADE"))
    harness = Harness(postgres_url)
    base = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}
    try:
        harness.route({**base, "symbol": "BTC/USDT\x00"}, "fuzz")
        harness.route({**base, "side": "b\x00uy"}, "fuzz")
        harness.route(base, "fu\x00zz")
        harness.route(base, "fuzz", connector="scr\x00ipted")
    finally:
        harness.close()


# -- the CLI, in process -----------------------------------------------------------------

CLI_TEXT = [*NUMBER_TEXT, *SQLISH, *SYMBOLS, "-", "--", "-1", "--help", "--json", "0.01",
            "BTC/USDT", "buy", "sell"]
cli_text = st.one_of(st.sampled_from(CLI_TEXT),
                     st.text(st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\x00"), max_size=20))


def mostly(good: st.SearchStrategy[str], bad: st.SearchStrategy[str] = cli_text
           ) -> st.SearchStrategy[str]:
    """``good`` four times in five (Hypothesis picks one_of branches evenly)."""
    return st.integers(0, 4).flatmap(lambda i: good if i else bad)


@st.composite
def cli_args(draw: st.DrawFn) -> tuple[list[str], str]:
    symbol = draw(mostly(st.just("BTC/USDT")))
    side = draw(mostly(st.sampled_from(["buy", "sell", "BUY"])))
    amount = draw(mostly(st.sampled_from(PLAUSIBLE_AMOUNTS)))
    user = draw(mostly(st.just("fuzz"), st.sampled_from(["", " ", "u" * 129, *SQLISH])))
    args = [symbol, side, amount, "--connector", "scripted", "--user", user]
    if draw(st.booleans()):
        args += ["--type", "limit", "--price", draw(mostly(st.sampled_from(PLAUSIBLE_PRICES)))]
    elif draw(st.integers(0, 4)) == 0:
        args += ["--type", draw(cli_text)]
    if draw(st.integers(0, 3)) == 0:
        args += ["--client-order-id", draw(mostly(st.uuids().map(lambda u: u.hex)))]
    return args, user


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ScriptedExchange]:
    for name in ("BAGBOT_DATABASE_URL", "BAGBOT_LOG_FILE", "BAGBOT_ALLOW_LIVE",
                 "BAGBOT_DISABLE_PLUGINS", "BAGBOT_SKIP_RISK_CHECKS", "MAX_ORDER_QTY",
                 "MAX_ORDER_VALUE_USD", "MIN_ORDER_QTY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    exchange = ScriptedExchange()
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("scripted", scripted_plugin(exchange))])
    saved_config, saved_configured = structlog.get_config(), audit._configured
    set_router(Router(registry, limits=LIMITS, allow_live=False))
    yield exchange
    set_router(None)
    structlog.configure(**saved_config)
    audit._configured = saved_configured


def test_fuzz_cli_route(db_url: str, cli_env: ScriptedExchange) -> None:
    runner = CliRunner()
    factory = session_factory(get_engine(db_url))
    codes: Counter[int] = Counter()

    @settings(max_examples=300, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(cli_args())
    def run(generated: tuple[list[str], str]) -> None:
        args, user = generated
        cid = args[args.index("--client-order-id") + 1] if "--client-order-id" in args else None
        with factory() as db:
            before = count_rows(db)
            # Only a valid key can have a row (others are refused before any lookup);
            # and PostgreSQL would refuse a query carrying a NUL.
            replay = (cid is not None and CLIENT_ORDER_ID_RE.fullmatch(cid) is not None
                      and bool(db.scalar(select(func.count()).select_from(Order)
                                         .where(Order.client_order_id == cid))))
        placed_before = len(cli_env.placed)
        result = runner.invoke(cli, ["--database-url", db_url, "route", *args])
        codes[result.exit_code] += 1
        assert result.exit_code in (0, 1, 2, 3), (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args, result.exception)
        assert "Traceback" not in result.output
        if result.exit_code:
            one_line = result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
            assert one_line or result.exit_code == 2, (args, result.stderr)
        with factory() as db:
            after = count_rows(db)
        helped = result.exit_code == 0 and result.output.startswith("Usage:")  # a "--help"
        routed = result.exit_code in (0, 1, 3) and valid_user(user) and not helped
        if replay:  # a repeated idempotency key: the first row answers, none is added
            assert after - before in (0, 1), (args, result.output)
        else:
            assert after - before == (1 if routed else 0), (args, result.output)
        for placed in list(cli_env.placed.values())[placed_before:]:
            assert violations_of(placed.request) == [], (args, placed.request)

    run()
    print(f"\nCLI fuzz: {sum(codes.values())} invocations, exit codes {dict(codes)}, "
          f"{len(cli_env.placed)} reached the connector")
    assert sum(codes.values()) >= 300
    # The generator must reach every outcome, successes included (seen: 34-57 of 300).
    assert codes[0] >= 10 and codes[1] and codes[2]


# -- the CLI, real processes -------------------------------------------------------------

SUBPROCESS_CASES: list[list[str]] = [
    ["BTC/USDT", "buy", "0.001"],
    ["BTC/USDT", "buy", "1e999999"],
    ["BTC/USDT", "buy", "NaN"],
    ["BTC/USDT", "buy", "-0"],
    ["BTC/USDT", "sell", "0.001", "--type", "limit", "--price", "inf"],
    ["BTC/USDT'; DROP TABLE orders; --", "buy", "0.001"],
    ["\uff22\uff34\uff23/USDT", "buy", "0.001"],
    ["BTC/USDT", "buy", "100"],
    ["BTC/USDT", "buy", "0.001", "--client-order-id", "'; DROP TABLE orders; --"],
    ["BTC/USDT", "buy", "0.001", "--user", ""],
    ["\u202eBTC/USDT", "buy", "0.001", "--user", "\u202e"],
    ["BTC/USDT", "buy", "9" * 80],
]


@pytest.mark.slow
def test_fuzz_cli_subprocesses(tmp_path: Path) -> None:
    """The installed command in real processes (paper exchange): no crash, one line."""
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BAGBOT_", "MAX_ORDER", "MIN_ORDER"))}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT))
    factory = session_factory(get_engine(url))
    for args in SUBPROCESS_CASES:
        user = args[args.index("--user") + 1] if "--user" in args else "fuzz"
        if "--user" not in args:
            args = [*args, "--user", "fuzz"]
        with factory() as db:
            before = count_rows(db)
        proc = subprocess.run(
            [sys.executable, "-m", "bagbot_core.cli", "--database-url", url, "route", *args,
             "--connector", "paper"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode in (0, 1, 2, 3), (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, (args, proc.stderr)
        if proc.returncode:
            assert proc.stderr.startswith("error: ") or proc.returncode == 2, proc.stderr
        with factory() as db:
            after = count_rows(db)
        routed = proc.returncode in (0, 1, 3) and valid_user(user)
        assert after - before == (1 if routed else 0), (args, proc.returncode, proc.stderr)
