"""Routing through ``paper``: the book's fill, its balances and the order row in one
transaction (``Router._submit_in_transaction``), on SQLite files and PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from bagbot_core import audit
from bagbot_core.connector import ConnectorSettings, ConnectorSpec
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ExchangeRejectedError, ExchangeUnavailableError
from bagbot_core.markers import hookimpl
from bagbot_core.models import Order
from bagbot_core.paper.connector import PaperConnector
from bagbot_core.paper.models import PaperBalanceRow, PaperOrderRow
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from tests.test_concurrency import run_workers

D = Decimal
BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}


def paper_router(account: str, **config: Any) -> Router:
    return Router(PluginRegistry(load_entrypoints=False), limits=RiskLimits(),
                  connector_config={"paper": {"account": account, **config}})


class Statements:
    """Every statement and every COMMIT an engine sends, while attached."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.sql, self.commits = engine, [], 0

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.sql.append(statement)

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)


def book(url: str, account: str) -> tuple[int, dict[str, tuple[Decimal, Decimal]]]:
    """The account's paper orders and balances, read from the database."""
    with session_factory(get_engine(url))() as session:
        orders = session.scalar(select(func.count()).select_from(PaperOrderRow)
                                .where(PaperOrderRow.account == account)) or 0
        balances = {b.asset: (b.free, b.locked) for b in session.scalars(
            select(PaperBalanceRow).where(PaperBalanceRow.account == account))}
    return int(orders), balances


def order_rows(url: str) -> list[Order]:
    with session_factory(get_engine(url))() as session:
        return list(session.scalars(select(Order).order_by(Order.id)))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, force=True)
    yield stream
    audit.configure(force=True)


def event_names(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()
            if line.strip()]


async def test_one_commit_per_paper_order(db_url: str, log_stream: io.StringIO) -> None:
    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account)
    engine = get_engine(db_url)
    try:
        with session_factory(engine)() as db:
            await router.route_order("paper", BUY, db, "u1")  # warm: balances created
            log_stream.truncate(0)
            log_stream.seek(0)
            with Statements(engine) as seen:
                order = await router.route_order("paper", BUY, db, "u1")
            assert order.status == OrderStatus.FILLED
            assert order.filled_qty == D("0.01") and order.avg_price == D("50005")
            assert seen.commits == 1, seen.sql
            # Book and row in the one transaction: the paper order's INSERT comes after the
            # pending row's, the answer's UPDATE after both, and nothing commits between.
            inserts = [s for s in seen.sql if s.lstrip().upper().startswith("INSERT")]
            assert any("paper_orders" in s for s in inserts)
            assert sum("paper_balances" in s and s.lstrip().upper().startswith("UPDATE")
                       for s in seen.sql) == 1  # one executemany for both balances
    finally:
        await router.aclose()
    checks = len(router.registry.risk_checks())
    assert event_names(log_stream) == ["order_received"] + ["risk_check"] * checks + [
        "pending_written", "submitted", "exchange_answered", "persisted", "status_changed"]
    orders, balances = book(db_url, account)
    assert orders == 2
    assert balances["USDT"] == (D(100_000) - 2 * D("500.05"), D(0))
    assert balances["BTC"] == (D(10) + D("0.02"), D(0))
    [_, second] = order_rows(db_url)
    assert second.external_id and second.external_id.startswith("paper-")


async def test_one_commit_on_an_async_session(db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account, balances={"USDT": "1500"})  # two buys, not three
    engine = get_async_engine(db_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as db:
            await router.route_order("paper", BUY, db, "u1")
            with Statements(engine.sync_engine) as seen:
                order = await router.route_order("paper", BUY, db, "u1")
                assert order.status == OrderStatus.FILLED
            assert seen.commits == 1, seen.sql
            with pytest.raises(ExchangeRejectedError, match="insufficient balance"):
                await router.route_order("paper", BUY, db, "u1")
    finally:
        await router.aclose()
        await engine.dispose()
    statuses = [row.status for row in order_rows(db_url)]
    assert statuses == ["filled", "filled", "rejected"]
    assert book(db_url, account)[0] == 2


async def test_a_refusal_of_the_book_commits_a_rejected_row_once(
        db_url: str, log_stream: io.StringIO) -> None:
    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account, balances={"USDT": "100"})
    engine = get_engine(db_url)
    try:
        with (session_factory(engine)() as db, Statements(engine) as seen,
              pytest.raises(ExchangeRejectedError, match="insufficient balance") as caught):
            await router.route_order("paper", BUY, db, "u1")
    finally:
        await router.aclose()
    assert seen.commits == 1
    [row] = order_rows(db_url)
    assert caught.value.order is not None and caught.value.order.id == row.id
    assert row.status == OrderStatus.REJECTED and "insufficient balance" in (row.reason or "")
    assert row.external_id is None
    names = event_names(log_stream)
    assert names[names.index("pending_written"):] == [
        "pending_written", "submitted", "rejected", "status_changed"]
    orders, balances = book(db_url, account)
    assert orders == 0 and balances["USDT"] == (D(100), D(0))


def _install_fault(url: str) -> None:
    """A real trigger that fails every balance UPDATE: the book's last write of an order,
    after its paper order row was inserted."""
    with get_engine(url).begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER paper_fault BEFORE UPDATE ON paper_balances "
                "BEGIN SELECT RAISE(ABORT, 'injected book fault'); END")
        else:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION paper_fault() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'injected book fault'; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql(
                "CREATE TRIGGER paper_fault BEFORE UPDATE ON paper_balances "
                "FOR EACH ROW EXECUTE FUNCTION paper_fault()")


def _remove_fault(url: str) -> None:
    with get_engine(url).begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER paper_fault")
        else:
            conn.exec_driver_sql("DROP TRIGGER paper_fault ON paper_balances")
            conn.exec_driver_sql("DROP FUNCTION paper_fault()")


async def test_a_fault_in_the_middle_rolls_back_book_and_row(db_url: str) -> None:
    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account)
    try:
        with session_factory(get_engine(db_url))() as db:
            await router.route_order("paper", BUY, db, "u1")
            before = book(db_url, account)
            _install_fault(db_url)
            try:
                with pytest.raises(ExchangeUnavailableError, match="nothing was placed") as caught:
                    await router.route_order("paper", {**BUY, "client_order_id": "key-1"},
                                             db, "u1")
            finally:
                _remove_fault(db_url)
            assert "injected book fault" in str(caught.value)
            assert book(db_url, account) == before  # no paper order, no balance moved
            rows = order_rows(db_url)
            assert len(rows) == 2  # exactly one row for the failed call
            failed = rows[-1]
            assert failed.status == OrderStatus.REJECTED
            assert failed.client_order_id == "key-1" and failed.external_id is None
            assert failed.details is not None and failed.details["rolled_back"] is True
            assert "nothing was placed" in (failed.reason or "")
            assert caught.value.order is not None and caught.value.order.id == failed.id
            # The key is used: a retry replays the refusal, places nothing.
            with pytest.raises(ExchangeRejectedError):
                await router.route_order("paper", {**BUY, "client_order_id": "key-1"}, db, "u1")
            # A new key, the fault gone: the order goes through.
            order = await router.route_order("paper", BUY, db, "u1")
            assert order.status == OrderStatus.FILLED
    finally:
        await router.aclose()
    assert len(order_rows(db_url)) == 3
    assert book(db_url, account)[0] == 2


async def test_a_fault_in_the_middle_on_an_async_session(db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account)
    engine = get_async_engine(db_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as db:
            await router.route_order("paper", BUY, db, "u1")
            before = book(db_url, account)
            _install_fault(db_url)
            try:
                with pytest.raises(ExchangeUnavailableError, match="nothing was placed"):
                    await router.route_order("paper", BUY, db, "u1")
            finally:
                _remove_fault(db_url)
            assert book(db_url, account) == before
            order = await router.route_order("paper", BUY, db, "u1")
            assert order.status == OrderStatus.FILLED and order.filled_qty == D("0.01")
    finally:
        await router.aclose()
        await engine.dispose()
    assert [row.status for row in order_rows(db_url)] == ["filled", "rejected", "filled"]
    assert book(db_url, account)[0] == 2


async def test_the_ordinary_path_when_the_book_is_in_another_database(
        db_url: str, tmp_path: Any) -> None:
    other_url = f"sqlite:///{tmp_path}/book.db"
    account = f"tx-{uuid.uuid4().hex[:10]}"

    class Elsewhere:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            def factory(settings: ConnectorSettings) -> PaperConnector:
                assert settings.database_url is not None  # the router's: ignored here
                return PaperConnector(ConnectorSettings(config={"account": account},
                                                        database_url=other_url))
            return [ConnectorSpec("elsewhere", factory, "paper in its own database")]

    router = Router(PluginRegistry(load_entrypoints=False, plugins=[("e", Elsewhere())]),
                    limits=RiskLimits())
    engine = get_engine(db_url)
    try:
        with session_factory(engine)() as db:
            await router.route_order("elsewhere", BUY, db, "u1")
            with Statements(engine) as seen, Statements(get_engine(other_url)) as book_seen:
                order = await router.route_order("elsewhere", BUY, db, "u1")
    finally:
        await router.aclose()
    assert order.status == OrderStatus.FILLED
    assert seen.commits == 2  # the durable pending row, then the answer
    assert book_seen.commits == 1  # the book's own transaction
    assert book(other_url, account)[0] == 2 and book(db_url, account)[0] == 0


def _usdt(url: str, account: str) -> Decimal:
    return book(url, account)[1]["USDT"][0]


def _paper_workers(url: str) -> None:
    account = f"w-{uuid.uuid4().hex[:8]}"
    # 10,000 USDT buys 19 market orders of 0.01 BTC at 50005 (500.05 each), not 20.
    results = run_workers(url, [{"n": "15", "user": f"p{i}", "connector": "paper",
                                 "account": account, "usdt": "10000"} for i in range(4)])
    filled = sum(Counter(r["statuses"]).get("filled", 0) for r in results)  # type: ignore[arg-type]
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result["errors"])  # type: ignore[arg-type]
    assert filled == 19
    assert errors == {"ExchangeRejectedError": 60 - 19}, errors  # nothing else went wrong
    rows = order_rows(url)
    assert len(rows) == 60 and len({r.client_order_id for r in rows}) == 60
    assert Counter(r.status for r in rows) == {"filled": 19, "rejected": 41}
    orders, balances = book(url, account)
    assert orders == 19
    assert balances["USDT"] == (D(10_000) - 19 * D("500.05"), D(0))
    assert balances["BTC"] == (D("0.19"), D(0))
    with session_factory(get_engine(url))() as session:
        placed = set(session.scalars(select(PaperOrderRow.client_order_id)
                                     .where(PaperOrderRow.account == account)))
    assert placed == {r.client_order_id for r in rows if r.status == "filled"}


@pytest.mark.slow
def test_processes_never_overspend_a_paper_balance_sqlite(sqlite_url: str) -> None:
    get_engine(sqlite_url)  # the schema, before the processes race for it
    _paper_workers(sqlite_url)


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_never_overspend_a_paper_balance_postgres(postgres_url: str) -> None:
    with get_engine(postgres_url).begin() as conn:
        conn.execute(text("TRUNCATE orders, positions RESTART IDENTITY CASCADE"))
    _paper_workers(postgres_url)


def test_a_subclass_or_a_wrapped_create_order_keeps_the_ordinary_path(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/x.db"

    class Sub(PaperConnector):
        async def create_order(self, order: Any, client_order_id: str) -> Any:
            return await super().create_order(order, client_order_id)

    plain = PaperConnector(ConnectorSettings(database_url=url))
    assert plain._shares_transaction(url)
    assert not plain._shares_transaction(f"sqlite:///{tmp_path}/y.db")
    assert not plain._shares_transaction(None)
    assert not Sub(ConnectorSettings(database_url=url))._shares_transaction(url)
    wrapped = PaperConnector(ConnectorSettings(database_url=url))
    wrapped.create_order = plain.create_order  # type: ignore[method-assign]
    assert not wrapped._shares_transaction(url)
    memory = PaperConnector(ConnectorSettings(database_url="sqlite://"))
    assert not memory._shares_transaction("sqlite://")


async def test_a_resting_order_fills_when_the_next_routed_order_touches_the_book(
        db_url: str) -> None:
    account = f"tx-{uuid.uuid4().hex[:10]}"
    router = paper_router(account)
    engine = get_engine(db_url)
    try:
        with session_factory(engine)() as db:
            resting = await router.route_order(
                "paper", {"symbol": "BTC/USDT", "side": "buy", "type": "limit",
                          "amount": "0.1", "price": "49000"}, db, "u1")
            assert resting.status == OrderStatus.OPEN
            [paper] = router._connectors.values()
            assert isinstance(paper, PaperConnector)
            paper._prices["BTC/USDT"] = D(48_000)  # moved, not yet seen by the book
            with Statements(engine) as seen:
                order = await router.route_order("paper", BUY, db, "u1")
            assert seen.commits == 1
            assert order.status == OrderStatus.FILLED and order.avg_price == D("48004.80")
            with session_factory(engine)() as reader:  # filled by that order's transaction
                assert reader.scalar(select(PaperOrderRow.status).where(
                    PaperOrderRow.client_order_id == resting.client_order_id)) == "filled"
            synced = await router.sync_order(db, resting.id)
            assert synced.status == OrderStatus.FILLED and synced.avg_price == D(49_000)
    finally:
        await router.aclose()
    orders, balances = book(db_url, account)
    assert orders == 2
    # 0.1 at 49,000 (maker, at its limit) and 0.01 at the new ask.
    assert balances["USDT"] == (D(100_000) - D(4_900) - D("480.048"), D(0))
    assert balances["BTC"] == (D(10) + D("0.11"), D(0))
