"""The fault soak, for any connector with a fake exchange: "nothing lost, nothing doubled".

Routes N orders (default 1,000) through the real router and a connector against its fake
exchange server (a :class:`~bagbot_core.testing.fake_exchange.FakeExchangeServer`, on
127.0.0.1 in a thread), with faults injected into the order requests: answers dropped after
the exchange accepted, answers held past the client's timeout, connections closed before
the exchange saw the request, 5xx (and the exchange's own "status unknown" answers), 429
with ``Retry-After``, truncated JSON after the order was placed, latency, requests that
arrive only after the client gave up, and definite refusals. Then it runs ``reconcile``
(its first pass under faults too) until no row is ``pending``/``unknown`` and compares the
database with the exchange's book.

What is exchange-specific -- the connector's plugin, its fake server, the order path, how
the exchange reports a status, which params would be hostile -- comes in a
:class:`SoakTarget`; a connector plugin builds one and adds ``bagbot soak --connector NAME``
through ``bagbot_register_commands`` (``bagbot_binance.soak`` is the bundled example). The
fake book must list ``BTC/USDT`` (about 50,000) and ``ETH/USDT``.

A run exits non-zero unless all of these hold:

* 0 duplicates: no client order id has more than one order on the exchange;
* 0 missing rows: every exchange order has a row, every call left one;
* 0 disagreements: after reconcile every row has the exchange's status and fill (a row
  the exchange never saw must be ``rejected``);
* 0 requests reached the server inside a ``Retry-After`` window it announced;
* 0 orders with hostile ``params`` reached the exchange, and each left a ``rejected`` row;
* 0 credentials in the audit log or in the database rows;
* 0 exceptions outside bagbot's documented hierarchy.

Nothing leaves 127.0.0.1. Use a throwaway database: reconcile resolves every row of the
connector in it, so the soak refuses to start when the database already holds unresolved
rows of that connector.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bagbot_core.models import Order
    from bagbot_core.router import Router
    from bagbot_core.status import OrderStatus
    from bagbot_core.testing.fake_exchange import FakeExchangeServer, FakeOrder, Fault

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

#: Fault kinds and what each does to one request.
FAULTS: Mapping[str, str] = {
    "drop_after": "connection closed after the exchange placed the order",
    "timeout": "answer held past the client timeout (order placed)",
    "drop_before": "connection closed before the exchange saw the request",
    "http_5xx": "500/502/503 or the exchange's own 'status unknown' answer, not placed",
    "rate_limit": "429 with Retry-After (not placed; the window refuses everything)",
    "malformed": "200 with truncated JSON (order placed)",
    "latency": "answer delayed, within the timeout",
    "late": "request held before processing until after the client timed out",
    "reject": "definite refusal (e.g. insufficient balance)",
}
#: Default share of order requests per fault kind (the rest go through clean).
DEFAULT_RATES: Mapping[str, float] = {
    "drop_after": 0.03, "timeout": 0.015, "drop_before": 0.02, "http_5xx": 0.03,
    "rate_limit": 0.02, "malformed": 0.02, "latency": 0.05, "late": 0.01, "reject": 0.02,
}
DEFAULT_HOSTILE_RATE = 0.05

#: Kinds also injected into reconcile's first pass (lookups, GET /api/v3/order).
RECONCILE_FAULTS = ("drop_after", "timeout", "drop_before", "http_5xx", "rate_limit",
                    "malformed")


def _ccxt_config(server: FakeExchangeServer, api_key: str, api_secret: str,
                 timeout: float) -> dict[str, Any]:
    return {"api_key": api_key, "api_secret": api_secret, "api_url": server.url,
            "enable_rate_limit": False, "timeout": timeout}


@dataclass(frozen=True)
class SoakTarget:
    """What the soak needs to know about one connector and its fake exchange."""

    #: The connector's name (``binance``).
    connector: str
    #: The plugin object (module) that provides the connector.
    plugin: object
    #: ``make_server(api_key, api_secret)``: a fresh fake exchange with funded balances,
    #: checking those credentials.
    make_server: Callable[[str, str], FakeExchangeServer]
    #: Credentials used when the run is given none.
    default_credentials: tuple[str, str]
    #: The HTTP path orders are placed (POST) and looked up (GET) on.
    order_path: str
    #: The status bagbot must end up with for an order on the exchange's book.
    expected_status: Callable[[FakeExchangeServer, FakeOrder], OrderStatus]
    #: The request field that carries the client order id (to see what reached the wire).
    client_id_field: str
    #: Params that try to change an order past the risk checks or hide it from reconcile;
    #: the soak adds them, in turn, to a share of the orders (``"{evil}"`` becomes a fresh
    #: planted client id). All must be refused before anything is sent.
    hostile_params: tuple[Mapping[str, Any], ...]
    #: Arm a definite refusal (``reject``) for the next matching request.
    refuse: Callable[[FakeExchangeServer, str, str], Fault]
    #: Extra ``(status, JSON body)`` answers of the ``http_5xx`` kind: the exchange's own
    #: "status unknown" errors (Binance: 408 with -1007).
    unavailable_answers: tuple[tuple[int, str], ...] = ()
    #: ``(server, api_key, api_secret, timeout)`` -> the connector's config (default: the
    #: ccxt connectors' ``api_key``/``api_secret``/``api_url``/``timeout``, no rate limiter).
    connector_config: Callable[[FakeExchangeServer, str, str, float], dict[str, Any]] = (
        _ccxt_config)
    #: The command line's name, for ``--help``.
    prog: str = "bagbot soak"


@dataclass
class SoakConfig:
    orders: int = 1000
    seed: int = 1
    database_url: str | None = None
    workdir: Path | None = None
    log_file: Path | None = None
    timeout: float = 0.5
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    api_key: str | None = None
    api_secret: str | None = None
    progress_every: int = 100
    report_json: Path | None = None
    max_reconcile_passes: int = 10
    #: Share of orders that carry hostile params (drawn from their own random stream, so
    #: the rest of the mix and its faults are the same at any rate).
    hostile_rate: float = DEFAULT_HOSTILE_RATE


@dataclass
class SoakResult:
    """What the run saw; :meth:`failures` applies the pass criteria."""

    attempted: int = 0
    accepted: int = 0
    rows: int = 0
    rows_by_status: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    missing_rows: int = 0
    calls_without_row: int = 0
    orphan_exchange_orders: list[str] = field(default_factory=list)
    disagreements: int = 0
    disagreement_examples: list[str] = field(default_factory=list)
    unresolved: int = 0
    requests: int = 0
    requests_in_retry_window: int = 0
    retry_windows: int = 0
    reconcile_passes: int = 0
    reconcile_changed: int = 0
    credential_leaks: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    hostile_params: int = 0
    #: Per hostile order: the client order id of its row (``None``: no row) and the id it
    #: tried to plant, if any.
    hostile_orders: list[tuple[str | None, str | None]] = field(default_factory=list)
    hostile_not_refused: list[str] = field(default_factory=list)
    hostile_reached_exchange: list[str] = field(default_factory=list)
    seconds_routing: float = 0.0
    seconds_total: float = 0.0
    database: str = ""
    log_file: str = ""

    def failures(self) -> list[str]:
        failed = []
        if self.duplicates:
            failed.append(f"{self.duplicates} duplicate exchange order(s)")
        if self.missing_rows:
            failed.append(f"{self.missing_rows} missing row(s)")
        if self.disagreements:
            failed.append(f"{self.disagreements} row(s) disagree with the exchange")
        if self.requests_in_retry_window:
            failed.append(f"{self.requests_in_retry_window} request(s) inside a Retry-After "
                          "window")
        if self.credential_leaks:
            failed.append(f"credentials found in: {', '.join(self.credential_leaks)}")
        if self.unexpected:
            failed.append(f"{len(self.unexpected)} exception(s) outside BagbotError")
        if self.hostile_not_refused:
            failed.append(f"{len(self.hostile_not_refused)} order(s) with hostile params not "
                          "refused with a rejected row")
        if self.hostile_reached_exchange:
            failed.append(f"{len(self.hostile_reached_exchange)} order(s) with hostile params "
                          "reached the exchange")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict[str, Any]:
        data = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(self).items()}
        data["passed"] = self.passed
        data["failures"] = self.failures()
        return data


# -- the order mix ------------------------------------------------------------------------


def order_payload(rng: random.Random) -> dict[str, Any]:
    """One order of the mix: market buys/sells, resting and crossing limits, two symbols."""
    roll = rng.random()
    steps = rng.randint(2, 10)
    if roll < 0.1:
        return {"symbol": "ETH/USDT", "side": "buy", "type": "market",
                "amount": str(Decimal("0.0100") * steps)}
    amount = str(Decimal("0.0001") * steps)
    if roll < 0.45:
        return {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": amount}
    if roll < 0.65:
        return {"symbol": "BTC/USDT", "side": "sell", "type": "market", "amount": amount}
    if roll < 0.88:  # rests on the book: well below the market
        price = Decimal("45000") + Decimal(rng.randint(0, 300000)) / 100
        return {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": amount,
                "price": str(price)}
    price = Decimal("49000") + Decimal(rng.randint(0, 99999)) / 100  # crosses: fills
    return {"symbol": "BTC/USDT", "side": "sell", "type": "limit", "amount": amount,
            "price": str(price)}


def hostile_params(target: SoakTarget, rng: random.Random, number: int, turn: int
                   ) -> tuple[dict[str, Any], str | None]:
    """The target's hostile params number ``turn`` (cycling), with a planted client id
    unique to order ``number``; returns the params and the planted id, if any."""
    evil = f"evil{number}x{rng.randrange(10**6)}"
    chosen = target.hostile_params[turn % len(target.hostile_params)]
    params = {k: evil if v == "{evil}" else v for k, v in chosen.items()}
    return params, (evil if evil in params.values() else None)


def choose_fault(rng: random.Random, rates: Mapping[str, float]) -> str | None:
    roll = rng.random()
    for kind, rate in rates.items():
        if roll < rate:
            return kind
        roll -= rate
    return None


def inject(target: SoakTarget, server: FakeExchangeServer, kind: str, rng: random.Random,
           timeout: float, *, method: str, path: str) -> Fault:
    """Arm one fault of ``kind`` for the next matching request."""
    if kind == "drop_after":
        return server.drop_after_accept(method=method, path=path)
    if kind == "timeout":
        return server.hang_after_accept(timeout + 0.5, method=method, path=path)
    if kind == "drop_before":
        return server.drop_before_accept(method=method, path=path)
    if kind == "http_5xx":
        own = dict(target.unavailable_answers)
        status = rng.choice([500, 502, 503, *own])
        if status in own:
            return server.fail_http(status, own[status], method=method, path=path)
        body = "<html><body><h1>502 Bad Gateway</h1></body></html>" if status == 502 else ""
        return server.fail_http(status, body, method=method, path=path,
                                content_type="text/html" if body else "application/json")
    if kind == "rate_limit":
        return server.rate_limit(rng.choice([0.05, 0.1, 0.2, 0.3]), method=method, path=path)
    if kind == "malformed":
        return server.malformed_json(method=method, path=path)
    if kind == "latency":
        return server.add_latency(rng.uniform(0.01, timeout / 3), method=method, path=path,
                                  times=1)
    if kind == "late":
        return server.add_latency(timeout + 0.25, method=method, path=path, times=1)
    if kind == "reject":
        return target.refuse(server, method, path)
    raise ValueError(f"unknown fault kind {kind!r}")


# -- running ------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int, every: int, out: TextIO) -> None:
        self.total, self.every, self.out = total, max(1, every), out
        self.started = time.monotonic()
        self.last = self.started

    def step(self, done: int, outcomes: Counter[str]) -> None:
        now = time.monotonic()
        if done % self.every and done != self.total and now - self.last < 5:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        unknown = outcomes.get("OrderStatusUnknownError", 0)
        print(f"soak: routed {done}/{self.total} ({rate:.0f}/s, {unknown} unknown so far)",
              file=self.out, flush=True)


def make_router(target: SoakTarget, server: FakeExchangeServer, config: SoakConfig,
                grace: float, credentials: tuple[str, str] | None = None) -> Router:
    """A router with only the target's plugin (and the built-ins), pointed at ``server``."""
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskLimits
    from bagbot_core.router import Router

    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[(target.connector, target.plugin)])
    api_key, api_secret = credentials or target.default_credentials
    return Router(
        registry,
        limits=RiskLimits(),
        allow_live=False,
        reconcile_grace=dt.timedelta(seconds=grace),
        connector_config={target.connector: target.connector_config(
            server, api_key, api_secret, config.timeout)},
    )


def _unresolved(db: Session, user_id: str) -> int:
    from sqlalchemy import func, select

    from bagbot_core.models import Order
    from bagbot_core.status import OrderStatus

    count = db.scalar(select(func.count()).select_from(Order).where(
        Order.user_id == user_id,
        Order.status.in_([OrderStatus.PENDING.value, OrderStatus.UNKNOWN.value])))
    db.commit()
    return int(count or 0)


def _foreign_unresolved(db: Session, connector: str) -> int:
    from sqlalchemy import func, select

    from bagbot_core.models import Order
    from bagbot_core.status import OrderStatus

    count = db.scalar(select(func.count()).select_from(Order).where(
        Order.connector == connector,
        Order.status.in_([OrderStatus.PENDING.value, OrderStatus.UNKNOWN.value])))
    db.commit()
    return int(count or 0)


async def route_all(target: SoakTarget, router: Router, server: FakeExchangeServer,
                    db: Session, user_id: str, config: SoakConfig, result: SoakResult,
                    out: TextIO) -> None:
    """Route the whole mix, one order at a time, each with its fault armed first."""
    from bagbot_core.errors import BagbotError, OrderValidationError

    rng = random.Random(config.seed)
    hostile_rng = random.Random(config.seed + 2)
    progress = Progress(config.orders, config.progress_every, out)
    for i in range(config.orders):
        payload = order_payload(rng)
        kind = choose_fault(rng, config.rates)
        planted: str | None = None
        hostile = hostile_rng.random() < config.hostile_rate
        if hostile:
            payload["params"], planted = hostile_params(target, hostile_rng, i,
                                                        result.hostile_params)
            result.hostile_params += 1
        server.clear_faults()  # a fault the previous order never reached does not stack
        fault = None
        if kind is not None:
            fault = inject(target, server, kind, rng, config.timeout, method="POST",
                           path=target.order_path)
        result.attempted += 1
        row: Order | None = None
        refused = False
        try:
            row = await router.route_order(target.connector, payload, db, user_id)
            result.outcomes[f"returned {row.status}"] += 1
        except BagbotError as exc:
            result.outcomes[type(exc).__name__] += 1
            row = exc.order
            refused = isinstance(exc, OrderValidationError)
        except Exception as exc:  # anything outside the hierarchy is a finding
            result.outcomes["UNEXPECTED"] += 1
            result.unexpected.append(f"order {i}: {type(exc).__name__}: {exc}"[:300])
        if hostile:
            cid = None if row is None else row.client_order_id
            result.hostile_orders.append((cid, planted))
            if not refused or row is None or row.status != "rejected":
                result.hostile_not_refused.append(f"order {i}: {payload['params']}"[:200])
        if fault is not None and fault not in server.faults:
            result.faults_injected[kind or ""] += 1
        progress.step(i + 1, result.outcomes)
    server.clear_faults()


async def reconcile_all(target: SoakTarget, router: Router, server: FakeExchangeServer,
                        db: Session, user_id: str, config: SoakConfig, grace: float,
                        result: SoakResult, out: TextIO) -> None:
    """Reconcile until nothing is pending/unknown: first pass under lookup faults and with
    the grace period (young rows deferred), later passes clean, waiting out the grace."""
    rng = random.Random(config.seed + 1)
    started = time.monotonic()
    for attempt in range(config.max_reconcile_passes):
        remaining = _unresolved(db, user_id)
        if remaining == 0:
            break
        faulty = attempt == 0
        if faulty:
            for _ in range(remaining // 5 + 1):
                kind = rng.choice(RECONCILE_FAULTS)
                inject(target, server, kind, rng, config.timeout, method="GET",
                       path=target.order_path)
        else:
            server.clear_faults()
            # Anything still unresolved must be older than the grace before it may be called
            # lost; rate-limit windows must have passed before the connector sends again.
            await asyncio.sleep(max(0.0, grace - (time.monotonic() - started)) + 0.3)
        changed = await router.reconcile(db, target.connector)
        result.reconcile_passes += 1
        result.reconcile_changed += len(changed)
        print(f"soak: reconcile pass {attempt + 1}{' (under faults)' if faulty else ''}: "
              f"{remaining} unresolved before, {len(changed)} resolved", file=out, flush=True)
    server.clear_faults()


def _row_text(order: Order) -> str:
    view = order.view().as_dict()
    return json.dumps(view, default=str, sort_keys=True)


def evaluate(target: SoakTarget, server: FakeExchangeServer, rows: Sequence[Order],
             result: SoakResult, secrets: Iterable[str] = (), log_text: str = ""
             ) -> SoakResult:
    """Compare the database rows with the exchange's book; fill in the pass criteria."""
    from bagbot_core.status import OrderStatus

    book_orders = list(server.book.orders.values())
    result.accepted = len(book_orders)
    by_client: dict[str, list[Any]] = {}
    for placed in book_orders:
        by_client.setdefault(str(placed.client_order_id), []).append(placed)
    result.duplicate_ids = sorted(cid for cid, found in by_client.items() if len(found) > 1)
    result.duplicates = sum(len(found) - 1 for found in by_client.values())

    result.rows = len(rows)
    result.rows_by_status = Counter(str(row.status) for row in rows)
    row_ids = {row.client_order_id for row in rows}
    result.orphan_exchange_orders = sorted(cid for cid in by_client if cid not in row_ids)
    result.calls_without_row = max(0, result.attempted - len(rows))
    result.missing_rows = len(result.orphan_exchange_orders) + result.calls_without_row

    problems: list[str] = []
    unresolved = 0
    for row in rows:
        found = by_client.get(row.client_order_id, [])
        status = OrderStatus(row.status)
        if status in (OrderStatus.PENDING, OrderStatus.UNKNOWN):
            unresolved += 1
            problems.append(f"{row.client_order_id}: still {status.value}")
            continue
        if not found:
            if status is not OrderStatus.REJECTED:
                problems.append(f"{row.client_order_id}: {status.value} but the exchange "
                                "never saw it")
            continue
        placed = found[-1]
        expected = target.expected_status(server, placed)
        if status is not expected or row.filled_qty != placed.filled or (
            row.external_id != str(placed.order_id)
        ):
            problems.append(
                f"{row.client_order_id}: row {status.value} filled {row.filled_qty} id "
                f"{row.external_id}, exchange {expected.value} filled {placed.filled} id "
                f"{placed.order_id}")
    result.unresolved = unresolved
    result.disagreements = len(problems)
    result.disagreement_examples = problems[:10]

    result.requests = len(server.requests)
    result.requests_in_retry_window = len(server.requests_in_retry_windows())
    result.retry_windows = len(server.retry_windows)

    sent_ids = {
        dict(parse_qsl(r.query + "&" + r.body)).get(target.client_id_field)
        for r in server.requests_to(target.order_path, "POST")
    }
    result.hostile_reached_exchange = sorted(
        cid for pair in result.hostile_orders for cid in pair
        if cid is not None and (cid in sent_ids or server.book.orders_with_client_id(cid)))

    leaks = []
    wanted = [s for s in secrets if s]
    if any(s in log_text for s in wanted):
        leaks.append("audit log")
    if any(s in _row_text(row) for row in rows for s in wanted):
        leaks.append("database rows")
    result.credential_leaks = leaks
    return result


def format_report(result: SoakResult, config: SoakConfig) -> str:
    routing_rate = result.attempted / max(result.seconds_routing, 1e-9)
    lines = [
        f"bagbot soak: {result.attempted} orders, seed {config.seed}, "
        f"{result.seconds_total:.1f} s total ({result.seconds_routing:.1f} s routing, "
        f"{routing_rate:.0f} orders/s)",
        f"database: {result.database}",
        f"audit log: {result.log_file}",
        "faults that hit an order request: " + (", ".join(
            f"{k} {v}" for k, v in sorted(result.faults_injected.items())) or "none"),
        "route_order outcomes: " + ", ".join(
            f"{k} {v}" for k, v in sorted(result.outcomes.items())),
        f"reconcile: {result.reconcile_passes} pass(es), {result.reconcile_changed} row(s) "
        f"resolved; {result.requests} requests, {result.retry_windows} Retry-After window(s)",
        "",
    ]
    table: list[tuple[str, str, str]] = [
        ("orders attempted", str(result.attempted), ""),
        ("accepted by the exchange", str(result.accepted), ""),
        ("rows in the DB", str(result.rows), ""),
    ]
    for status, count in sorted(result.rows_by_status.items()):
        table.append((f"  {status}", str(count), ""))

    def check(label: str, value: int) -> None:
        table.append((label, str(value), "ok" if value == 0 else "FAIL"))

    check("duplicates on the exchange (per client order id)", result.duplicates)
    check("rows missing", result.missing_rows)
    check("rows disagreeing with the exchange after reconcile", result.disagreements)
    check("requests sent inside a Retry-After window", result.requests_in_retry_window)
    check("credentials found in the log or the DB", len(result.credential_leaks))
    table.append(("orders with hostile params", str(result.hostile_params), ""))
    check("  not refused with a rejected row", len(result.hostile_not_refused))
    check("  reached the exchange", len(result.hostile_reached_exchange))
    check("exceptions outside BagbotError", len(result.unexpected))
    width = max(len(label) for label, _, _ in table)
    lines.append(f"{'metric'.ljust(width)}  {'value':>7}  pass")
    lines += [f"{label.ljust(width)}  {value:>7}  {mark}".rstrip()
              for label, value, mark in table]
    details: list[str] = []
    if result.duplicate_ids:
        details.append(f"duplicated ids: {result.duplicate_ids[:5]}")
    if result.orphan_exchange_orders:
        details.append(f"exchange orders without a row: {result.orphan_exchange_orders[:5]}")
    details += [f"disagreement: {text}" for text in result.disagreement_examples]
    details += [f"unexpected: {text}" for text in result.unexpected[:5]]
    details += [f"hostile params not refused: {text}"
                for text in result.hostile_not_refused[:5]]
    if result.hostile_reached_exchange:
        details.append(f"hostile params reached the exchange: "
                       f"{result.hostile_reached_exchange[:5]}")
    lines += ["", *details] if details else []
    failures = result.failures()
    lines.append("")
    lines.append("RESULT: PASS" if not failures else "RESULT: FAIL -- " + "; ".join(failures))
    return "\n".join(lines)


def run_soak(target: SoakTarget, config: SoakConfig, out: TextIO | None = None
             ) -> SoakResult:
    """Run the whole soak (fake server in a thread, router in ``asyncio.run``)."""
    from sqlalchemy import select

    from bagbot_core import audit
    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.errors import ConfigurationError
    from bagbot_core.models import Order

    out = out or sys.stderr
    started = time.monotonic()
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="bagbot-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    url = config.database_url or f"sqlite:///{workdir / 'soak.db'}"
    log_path = config.log_file or workdir / "soak.audit.log"
    api_key = config.api_key or target.default_credentials[0]
    api_secret = config.api_secret or target.default_credentials[1]
    user_id = f"soak-{uuid.uuid4().hex[:12]}"
    result = SoakResult(log_file=str(log_path))
    grace = config.timeout + 0.25 + 1.0  # longer than any request can be held before landing

    server = target.make_server(api_key, api_secret)
    engine = get_engine(url)
    from sqlalchemy.engine import make_url

    result.database = make_url(url).render_as_string(hide_password=True)
    log_stream = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    audit.configure(fmt="json", stream=log_stream, force=True)
    try:
        with session_factory(engine)() as db:
            if _foreign_unresolved(db, target.connector):
                raise ConfigurationError(
                    f"{result.database} already holds pending/unknown {target.connector} rows; "
                    "the soak's reconcile would touch them: use a throwaway database")
            with server.run_in_thread():

                async def run() -> None:
                    router = make_router(target, server, config, grace,
                                         (api_key, api_secret))
                    try:
                        t0 = time.monotonic()
                        await route_all(target, router, server, db, user_id, config, result,
                                        out)
                        result.seconds_routing = time.monotonic() - t0
                        await reconcile_all(target, router, server, db, user_id, config,
                                            grace, result, out)
                    finally:
                        await router.aclose()

                asyncio.run(run())
            rows = list(db.scalars(select(Order).where(Order.user_id == user_id)
                                   .order_by(Order.id)))
            db.commit()
    finally:
        audit.configure(fmt="json", stream=sys.__stderr__ or sys.stderr, force=True)
        log_stream.close()
        engine.dispose()
    log_text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    evaluate(target, server, rows, result, secrets=(api_key, api_secret), log_text=log_text)
    result.seconds_total = time.monotonic() - started
    return result


# -- command line -------------------------------------------------------------------------


def _parse_rates(items: Sequence[str]) -> dict[str, float]:
    rates = dict(DEFAULT_RATES)
    for item in items:
        if item == "none":
            rates = {k: 0.0 for k in rates}
            continue
        kind, _, value = item.partition("=")
        if kind not in FAULTS:
            raise argparse.ArgumentTypeError(
                f"unknown fault {kind!r} (known: {', '.join(FAULTS)})")
        try:
            rates[kind] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--fault {item!r}: rate must be a number") from None
        if not 0 <= rates[kind] <= 1:
            raise argparse.ArgumentTypeError(f"--fault {item!r}: rate must be within 0..1")
    if sum(rates.values()) > 1:
        raise argparse.ArgumentTypeError("fault rates add up to more than 1")
    return rates


def build_parser(target: SoakTarget, prog: str | None = None) -> argparse.ArgumentParser:
    fault_help = "; ".join(f"{k} ({DEFAULT_RATES[k]:g}): {v}" for k, v in FAULTS.items())
    parser = argparse.ArgumentParser(
        prog=prog or target.prog,
        description=f"Route orders through the {target.connector} connector against its "
                    "fake server with injected faults, reconcile, and check that nothing was "
                    "lost or doubled. Exit 0 when every check passes, 1 when one fails, 2 on "
                    "bad usage. (Also runs as bagbot-soak when it is the only soak "
                    "installed.)",
    )
    parser.add_argument("-n", "--orders", type=int, default=1000,
                        help="orders to route (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of a throwaway database (default: a new SQLite "
                             "file in the work directory)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the SQLite file and the audit log go (default: a new "
                             "temporary directory, printed at the end)")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="audit log path (default: WORKDIR/soak.audit.log)")
    parser.add_argument("--timeout", type=float, default=0.5,
                        help="client timeout per request in seconds (default 0.5)")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                        help=f"share of order requests per fault ('none' zeroes all). "
                             f"{fault_help}")
    parser.add_argument("--api-key", default=None,
                        help="credentials the fake server and the connector share (e.g. "
                             "canary values to grep for afterwards)")
    parser.add_argument("--api-secret", default=None)
    parser.add_argument("--hostile-params", type=float, default=DEFAULT_HOSTILE_RATE,
                        metavar="RATE",
                        help=f"share of orders carrying params that try to change the order "
                             f"or plant a client id; all must be refused (default "
                             f"{DEFAULT_HOSTILE_RATE:g})")
    parser.add_argument("--progress-every", type=int, default=100,
                        help="print progress every N orders (and at least every 5 s)")
    parser.add_argument("--report-json", type=Path, default=None,
                        help="also write the measurements as JSON to this file")
    return parser


def main(target: SoakTarget, argv: Sequence[str] | None = None, prog: str | None = None
         ) -> int:
    """The soak's command line for ``target``; returns the exit code."""
    parser = build_parser(target, prog)
    try:
        args = parser.parse_args(argv)
        rates = _parse_rates(args.fault)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.orders < 1 or args.timeout <= 0:
        print("error: --orders must be >= 1 and --timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.hostile_params <= 1:
        print("error: --hostile-params must be within 0..1", file=sys.stderr)
        return EXIT_USAGE
    config = SoakConfig(
        orders=args.orders, seed=args.seed, database_url=args.database_url,
        workdir=args.workdir, log_file=args.log_file, timeout=args.timeout, rates=rates,
        api_key=args.api_key, api_secret=args.api_secret,
        progress_every=args.progress_every, report_json=args.report_json,
        hostile_rate=args.hostile_params,
    )
    from bagbot_core.errors import BagbotError

    try:
        result = run_soak(target, config)
    except BagbotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(result, config), flush=True)
    if config.report_json is not None:
        config.report_json.write_text(json.dumps(result.as_dict(), indent=2, default=str),
                                      encoding="utf-8")
    return EXIT_PASS if result.passed else EXIT_FAIL
