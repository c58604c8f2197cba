"""Crash matrix: SIGKILL the routing process at every point of the flow, reconcile, compare.

Three kinds of real processes, none of them the pytest process:

* the **fake Binance server** runs in its own process (``python <this file> serve``) so it
  survives every kill; it adds a few ``/_test/...`` control routes (arm a fault, list the
  book, tell whether an order request has arrived);
* a **zygote** (``python <this file> zygote``) imports the router, SQLAlchemy, ccxt and the
  connector once, then for every kill forks a child that routes one order through the
  real router into the database file and is SIGKILLed at its point. Forking a warmed
  interpreter costs milliseconds instead of a second of start-up per kill; the child is
  still a separate process that dies without running any cleanup;
* **reconcile** runs in a fresh interpreter: the real ``bagbot orders reconcile`` command,
  first with the default grace (young rows must be left alone), then -- once every
  request held by the server has landed -- with no grace.

Kill points (the router is not touched; hooks come from outside it):

``before_pending``        ``bagbot_before_route`` hook: no row may exist, nothing sent
``after_pending_commit``  SQLAlchemy ``after_commit`` once the pending row's INSERT ran;
                          on SQLite with group commit on (the default) the commit did
                          not flush the disk: killed before the shared flush
``before_send``           the connector's ``create_order`` is entered: the row was flushed,
                          nothing was sent
``in_flight``             the request reached the server, which holds it 5 s *before*
                          placing it: the order lands after the client died
``after_send``            the server placed the order and holds the answer: the client dies
                          before reading it
``after_answer``          a connector wrapper kills after ``create_order`` returned
``before_final_commit``   the ``UPDATE`` of the row's new status ran, before COMMIT

After reconcile: every order on the exchange has exactly one row with the exchange's
status and fill, no row claims an order the exchange never saw unless it is ``rejected``,
no client order id is on the exchange twice, nothing is left ``pending``/``unknown``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

#: ``in_flight`` comes last so that some of its orders are still held by the server when
#: the first reconcile runs.
POINTS = (
    "before_pending",
    "after_pending_commit",
    "before_send",
    "after_send",
    "after_answer",
    "before_final_commit",
    "in_flight",
)
#: Kills per point with the SQLite file (the issue asks for at least 20) and on PostgreSQL.
KILLS = {"sqlite": int(os.environ.get("BAGBOT_CRASH_KILLS", "20")),
         "postgres": int(os.environ.get("BAGBOT_CRASH_KILLS_POSTGRES", "10"))}
#: How long the server holds an ``in_flight`` request before placing it: longer than the
#: first reconcile takes to reach those rows, so some are still held when it asks, and
#: shorter than the 10 s recvWindow ccxt signs with (later, Binance refuses the request).
HOLD_SECONDS = 7.0
#: How long the server holds the answer of an ``after_send`` order (the client is dead).
ANSWER_HOLD_SECONDS = 5.0
ORDER_PATH = "/api/v3/order"
THIS = Path(__file__).resolve()



pytestmark = [pytest.mark.slow]


# =======================================================================================
# The processes (this file is also the script they run)
# =======================================================================================


def serve() -> None:
    """Run the fake server until stdin closes; print its URL first."""
    from aiohttp import web
    from bagbot_binance.testing import FakeBinanceServer, default_book

    class ControlledServer(FakeBinanceServer):
        def add_routes(self, app: web.Application) -> None:
            super().add_routes(app)
            app.add_routes([
                web.get("/_test/orders", self.test_orders),
                web.get("/_test/seen", self.test_seen),
                web.post("/_test/fault", self.test_fault),
            ])

        async def test_orders(self, request: web.Request) -> web.Response:
            return web.json_response([
                {"client_order_id": o.client_order_id, "order_id": o.order_id,
                 "raw_status": self.raw_status(o), "filled": str(o.filled)}
                for o in list(self.book.orders.values())
            ])

        async def test_seen(self, request: web.Request) -> web.Response:
            client_id = request.query["client_id"]
            arrived = any(
                r.path == ORDER_PATH and r.method == "POST"
                and f"newClientOrderId={client_id}" in r.body
                for r in list(self.requests)
            )
            on_book = bool(self.book.orders_with_client_id(client_id))
            return web.json_response({"arrived": arrived, "on_book": on_book})

        async def test_fault(self, request: web.Request) -> web.Response:
            spec = await request.json()
            if spec["kind"] == "latency":
                self.add_latency(spec["seconds"], method="POST", path=ORDER_PATH, times=1)
            elif spec["kind"] == "hang_after":
                self.hang_after_accept(spec["seconds"], method="POST", path=ORDER_PATH)
            else:
                self.clear_faults()
            return web.json_response({"ok": True})

    book = default_book()
    book.deposit("USDT", "10000000")
    server = ControlledServer(book)
    with server.run_in_thread():
        print(server.url, flush=True)
        sys.stdin.read()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(point: str, index: int, url: str, server_url: str, user: str) -> None:
    """Route one order and get killed at ``point`` (runs in a forked child)."""
    from bagbot_binance.connector import BinanceConnector
    from bagbot_binance.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from bagbot_core import hookimpl
    from bagbot_core.connector import Connector, ConnectorSettings, ConnectorSpec
    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.orders import ExchangeOrder, OrderRequest
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.risk import RiskLimits
    from bagbot_core.router import Router

    # The row's writes are seen at the database connection, whatever statement writes them.
    engine = get_engine(url, create_tables=False)  # the parent created the tables

    def _row_status(statement: str, parameters: Any, verb: str) -> str | None:
        """The status an INSERT/UPDATE of ``orders`` writes (``None``: another statement)."""
        prefix = "INSERT INTO ORDERS " if verb == "INSERT" else "UPDATE ORDERS "
        upper = statement.lstrip().upper()
        # The row's write alone, or after a WITH: on PostgreSQL the row's notional bucket is
        # written by a common table expression of the same statement.
        at = upper.find(prefix) if upper.startswith("WITH ") else (
            0 if upper.startswith(prefix) else -1)
        if at < 0:
            return None
        statement = statement.lstrip()[at:]
        columns = (statement.split("(", 1)[1].split(")", 1)[0] if verb == "INSERT"
                   else statement.split(" SET ", 1)[1].split(" WHERE ", 1)[0])
        names = [c.split("=")[0].strip() for c in columns.split(",")]
        if isinstance(parameters, dict):
            return parameters.get("status")
        return dict(zip(names, parameters, strict=False)).get("status")

    if point == "after_pending_commit":
        inserted: list[str] = []

        @event.listens_for(engine, "after_cursor_execute")
        def _inserted(conn: Any, cursor: Any, statement: str, parameters: Any,
                      context: Any, executemany: bool) -> None:
            if _row_status(statement, parameters, "INSERT") == "pending":
                inserted.append(statement)

        @event.listens_for(Session, "after_commit")
        def _committed(session: Session) -> None:
            if inserted:
                _die()

    if point == "before_final_commit":

        @event.listens_for(engine, "after_cursor_execute")
        def _updated(conn: Any, cursor: Any, statement: str, parameters: Any,
                     context: Any, executemany: bool) -> None:
            status = _row_status(statement, parameters, "UPDATE")
            if status not in (None, "pending"):
                _die()  # the UPDATE is in the open transaction; COMMIT never comes

    class CrashingConnector(BinanceConnector):
        """The real connector, killing the process around ``create_order``."""

        async def create_order(self, order: OrderRequest, client_order_id: str
                               ) -> ExchangeOrder:
            if point == "before_send":
                _die()
            if point == "after_answer":
                await super().create_order(order, client_order_id)
                _die()
            if point in ("in_flight", "after_send"):
                import aiohttp

                task = asyncio.ensure_future(super().create_order(order, client_order_id))
                key = "arrived" if point == "in_flight" else "on_book"
                async with aiohttp.ClientSession() as http:
                    while not task.done():
                        async with http.get(f"{server_url}/_test/seen",
                                            params={"client_id": client_order_id}) as resp:
                            if (await resp.json())[key]:
                                _die()
                        await asyncio.sleep(0.002)
                os._exit(5)  # the answer came before the kill: the point was missed
            return await super().create_order(order, client_order_id)

    class CrashPlugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> Connector:
                return CrashingConnector(settings)

            return [ConnectorSpec("binance", factory, "binance, killed at a crash point")]

        @hookimpl
        def bagbot_before_route(self) -> None:
            if point == "before_pending":
                _die()

    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("crash", CrashPlugin())])
    router = Router(registry, limits=RiskLimits(), allow_live=False, connector_config={
        "binance": {"api_key": DEFAULT_API_KEY, "api_secret": DEFAULT_API_SECRET,
                    "api_url": server_url, "enable_rate_limit": False, "timeout": 30}})
    if index % 2:
        payload = {"symbol": "BTC/USDT", "side": "buy", "type": "limit",
                   "amount": "0.0002", "price": str(Decimal("40000") + index)}
    else:
        payload = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.0002"}
    with session_factory(engine)() as db:
        asyncio.run(router.route_order("binance", payload, db, user))
    os._exit(0)  # never killed


def _control(server_url: str, spec: dict[str, Any]) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"{server_url}/_test/fault", data=json.dumps(spec).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # 127.0.0.1 only
        resp.read()


def zygote(url: str, server_url: str, kills: int, run: str, points: list[str]) -> None:
    """Fork one child per kill, point after point; print a JSON line per point."""
    import aiohttp  # noqa: F401 - warm every import the children need before forking
    import bagbot_binance.connector  # noqa: F401
    import ccxt.async_support  # noqa: F401
    import sqlalchemy.orm  # noqa: F401

    import bagbot_core.router  # noqa: F401
    from bagbot_core.db import dispose_engines, get_engine

    get_engine(url)  # imports what schema checks need; no connection survives the fork
    dispose_engines()
    for point in points:
        started = time.monotonic()
        outcomes: Counter[str] = Counter()
        for index in range(kills):
            if point == "in_flight":
                _control(server_url, {"kind": "latency", "seconds": HOLD_SECONDS})
            elif point == "after_send":
                _control(server_url, {"kind": "hang_after", "seconds": ANSWER_HOLD_SECONDS})
            pid = os.fork()
            if pid == 0:
                try:
                    _child(point, index, url, server_url, f"crash-{run}-{point}")
                finally:
                    os._exit(4)  # an exception: not killed at the point
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status = -1
                    break
                time.sleep(0.002)
            if status == -1:
                outcomes["hung"] += 1
            elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                outcomes["killed"] += 1
            else:
                outcomes[f"exit {os.waitstatus_to_exitcode(status)}"] += 1
            _control(server_url, {"kind": "clear"})
        print(json.dumps({"point": point, "outcomes": outcomes,
                          "seconds": time.monotonic() - started}), flush=True)


# =======================================================================================
# The test
# =======================================================================================


class Matrix:
    """What one full run of the matrix left behind, per point."""

    def __init__(self, url: str, run: str, kills: int) -> None:
        self.url = url
        self.run = run
        self.kills = kills
        self.zygote: dict[str, dict[str, Any]] = {}
        self.first_reconcile: list[dict[str, Any]] = []
        #: Per point: rows still pending/unknown after the first (default grace) reconcile.
        self.deferred: dict[str, int] = {}
        self.exchange: list[dict[str, Any]] = []
        self.rows: dict[str, list[Any]] = {}
        self.seconds = 0.0


def _reconcile(url: str, server_url: str, grace: float, tmp: Path) -> list[dict[str, Any]]:
    """``bagbot orders reconcile`` in a fresh interpreter."""
    env = {**os.environ, "BAGBOT_BINANCE_API_URL": server_url,
           "BAGBOT_LOG_FILE": str(tmp / "reconcile.audit.log")}
    from bagbot_binance.testing import DEFAULT_API_KEY, DEFAULT_API_SECRET

    env["BAGBOT_BINANCE_API_KEY"] = DEFAULT_API_KEY
    env["BAGBOT_BINANCE_API_SECRET"] = DEFAULT_API_SECRET
    proc = subprocess.run(
        [sys.executable, "-m", "bagbot_core.cli", "--database-url", url, "orders",
         "reconcile", "--connector", "binance", "--grace", str(grace), "--json"],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout or "[]")  # type: ignore[no-any-return]


def _run_matrix(url: str, tmp: Path, kills: int) -> Matrix:
    from sqlalchemy import select

    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.models import Order

    get_engine(url)  # create the tables before any child needs them
    run = uuid.uuid4().hex[:8]
    matrix = Matrix(url, run, kills)
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, str(THIS), "serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server_url = server.stdout.readline().strip()
        assert server_url.startswith("http://127.0.0.1:"), server_url
        env = {**os.environ, "BAGBOT_LOG_FILE": str(tmp / "children.audit.log")}
        # Two batches, each followed by reconcile in a fresh process with the default
        # grace: rows the exchange has are resolved; rows it has not (yet) are young and
        # must be left alone. The second batch is in_flight alone, so that reconcile
        # reaches its rows while the server still holds some of their requests.
        for batch in (POINTS[:-1], POINTS[-1:]):
            proc = subprocess.run(
                [sys.executable, str(THIS), "zygote", "--url", url, "--server", server_url,
                 "--kills", str(kills), "--run", run, *batch],
                env=env, capture_output=True, text=True, timeout=600, check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
            for line in proc.stdout.splitlines():
                data = json.loads(line)
                matrix.zygote[data["point"]] = data
            last_kill = time.monotonic()
            matrix.first_reconcile += _reconcile(url, server_url, 60, tmp)
            with session_factory(get_engine(url))() as db:
                for point in batch:
                    matrix.deferred[point] = len(list(db.scalars(select(Order).where(
                        Order.user_id == f"crash-{run}-{point}",
                        Order.status.in_(["pending", "unknown"])))))
        time.sleep(max(0.0, last_kill + HOLD_SECONDS + 1.0 - time.monotonic()))
        _reconcile(url, server_url, 0, tmp)
        import urllib.request

        with urllib.request.urlopen(f"{server_url}/_test/orders", timeout=10) as resp:
            matrix.exchange = json.loads(resp.read())
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    with session_factory(get_engine(url))() as db:
        for point in POINTS:
            matrix.rows[point] = list(db.scalars(
                select(Order).where(Order.user_id == f"crash-{run}-{point}")))
    matrix.seconds = time.monotonic() - started
    _print_matrix(matrix)
    return matrix


def _print_matrix(matrix: Matrix) -> None:
    by_client = Counter(o["client_order_id"] for o in matrix.exchange)
    print(f"\ncrash matrix on {matrix.url.split('?')[0]}: {matrix.kills} kills per "
          f"point, {matrix.seconds:.1f} s total")
    print(f"{'point':<22} {'kills':>5} {'s':>5} {'rows':>5} {'on exch':>7} "
          f"{'dup':>3} {'deferred':>8}  statuses after reconcile")
    for point in POINTS:
        rows = matrix.rows[point]
        z = matrix.zygote.get(point, {})
        on_exchange = sum(1 for r in rows if r.client_order_id in by_client)
        dup = sum(1 for r in rows if by_client.get(r.client_order_id, 0) > 1)
        statuses = dict(Counter(r.status for r in rows))
        print(f"{point:<22} {z.get('outcomes', {}).get('killed', 0):>5} "
              f"{z.get('seconds', 0):>5.1f} {len(rows):>5} {on_exchange:>7} {dup:>3} "
              f"{matrix.deferred.get(point, 0):>8}  "
              f"{statuses} {dict(z.get('outcomes', {}))}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                               marks=[pytest.mark.postgres])])
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp(f"crash-{request.param}")
    if request.param == "sqlite":
        from bagbot_core.db import dispose_engines

        yield _run_matrix(f"sqlite:///{tmp / 'crash.db'}", tmp, KILLS["sqlite"])
        dispose_engines()
    else:
        from bagbot_core.testing.databases import postgres_schema_url

        with postgres_schema_url(prefix="bagbot_crash") as url:
            yield _run_matrix(url, tmp, KILLS["postgres"])


EXPECTED_ON_EXCHANGE = {
    "before_pending": False,
    "after_pending_commit": False,
    "before_send": False,
    "in_flight": True,
    "after_send": True,
    "after_answer": True,
    "before_final_commit": True,
}


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_point_then_reconciled(matrix: Matrix, point: str) -> None:
    from bagbot_binance.connector import map_status

    from bagbot_core.status import OrderStatus

    outcomes = matrix.zygote[point]["outcomes"]
    assert outcomes == {"killed": matrix.kills}, f"{point}: {outcomes}"
    rows = matrix.rows[point]
    exchange: dict[str, list[dict[str, Any]]] = {}
    for placed in matrix.exchange:
        exchange.setdefault(placed["client_order_id"], []).append(placed)

    if point == "before_pending":
        assert rows == []  # killed before anything was written or sent
        return
    assert len(rows) == matrix.kills
    assert len({r.client_order_id for r in rows}) == len(rows)
    for row in rows:
        found = exchange.get(row.client_order_id, [])
        assert len(found) <= 1, f"{row.client_order_id} is on the exchange {len(found)} times"
        assert bool(found) is EXPECTED_ON_EXCHANGE[point], (row, found)
        if not found:
            assert row.status == OrderStatus.REJECTED, row
            continue
        placed = found[0]
        expected = map_status(placed["raw_status"], Decimal(placed["filled"]))
        assert (row.status, row.filled_qty, row.external_id) == (
            expected.value, Decimal(placed["filled"]), str(placed["order_id"])), row


def test_first_reconcile_left_young_unknowns_alone(matrix: Matrix) -> None:
    """With the default grace, only rows older than it and unknown to the exchange were
    declared lost; in_flight rows whose request the server still held were left alone."""
    never_sent = {r.client_order_id for point in ("after_pending_commit", "before_send")
                  for r in matrix.rows[point]}
    rejected = {o["client_order_id"] for o in matrix.first_reconcile
                if o["status"] == "rejected"}
    assert rejected <= never_sent


def test_every_exchange_order_has_exactly_one_row(matrix: Matrix) -> None:
    rows = {r.client_order_id: r for point in POINTS for r in matrix.rows[point]}
    counts = Counter(o["client_order_id"] for o in matrix.exchange)
    assert [cid for cid, n in counts.items() if n > 1] == []
    assert [cid for cid in counts if cid not in rows] == []
    expected = sum(matrix.kills for on in EXPECTED_ON_EXCHANGE.values() if on)
    assert len(matrix.exchange) == expected


# =======================================================================================


def _main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    z = sub.add_parser("zygote")
    z.add_argument("--url", required=True)
    z.add_argument("--server", required=True)
    z.add_argument("--kills", type=int, default=KILLS["sqlite"])
    z.add_argument("--run", required=True)
    z.add_argument("points", nargs="+", choices=POINTS)
    args = parser.parse_args()
    if args.command == "serve":
        serve()
    else:
        zygote(args.url, args.server, args.kills, args.run, args.points)


if __name__ == "__main__":
    _main()
