"""``bagbot-soak`` in the test suite: a 200-order fault soak on SQLite and PostgreSQL, the
canary-credential check, and proof that the soak's own checks catch what they claim to."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
from bagbot_binance import soak
from bagbot_binance.testing import FakeBinanceServer, default_book

from bagbot_core import audit
from bagbot_core.models import Order
from bagbot_core.testing.databases import postgres_schema_url
from bagbot_core.testing.fake_exchange import LoggedRequest

CANARY_KEY = f"CANARYkey{uuid.uuid4().hex}"
CANARY_SECRET = f"CANARYsecret{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def _restore_audit() -> Iterator[None]:
    saved_config, saved_configured = structlog.get_config(), audit._configured
    yield
    structlog.configure(**saved_config)
    audit._configured = saved_configured


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema_url(prefix="bagbot_soak") as url:
        yield url


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict[str, object]]:
    report = Path(args[args.index("--workdir") + 1]) / "report.json"
    code = soak.main([*args, "--report-json", str(report)])
    captured = capsys.readouterr()
    output = captured.out + captured.err
    print(output)
    return code, output, json.loads(report.read_text()) if report.exists() else {}


def _check_report(code: int, output: str, report: dict[str, object], orders: int) -> None:
    assert code == soak.EXIT_PASS, output
    assert "RESULT: PASS" in output
    for label in ("orders attempted", "accepted by the exchange", "rows in the DB",
                  "duplicates on the exchange", "rows missing", "disagreeing",
                  "inside a Retry-After window"):
        assert label in output
    assert report["attempted"] == report["rows"] == orders
    assert report["duplicates"] == report["missing_rows"] == report["disagreements"] == 0
    assert report["requests_in_retry_window"] == 0
    assert report["unresolved"] == 0
    # The faults did happen: unknown outcomes, resolved by reconcile, and rate-limit windows.
    assert len(report["faults_injected"]) >= 6, report["faults_injected"]  # type: ignore[arg-type]
    assert report["outcomes"]["OrderStatusUnknownError"] > 0  # type: ignore[index]
    assert report["reconcile_changed"] > 0  # type: ignore[operator]
    assert report["retry_windows"] > 0  # type: ignore[operator]
    assert "soak: routed" in output  # progress lines
    # Orders with hostile params were in the mix; each was refused and none was sent.
    assert report["hostile_params"] > 0  # type: ignore[operator]
    hostile = report["hostile_orders"]
    assert isinstance(hostile, list) and len(hostile) == report["hostile_params"]
    assert all(cid for cid, _ in hostile), "a hostile call left no row"
    assert any(planted for _, planted in hostile), "no client id was planted"
    assert report["hostile_not_refused"] == report["hostile_reached_exchange"] == []
    assert "orders with hostile params" in output


def test_soak_200_orders_with_canary_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output, report = _run(
        ["-n", "200", "--seed", "7", "--workdir", str(tmp_path), "--progress-every", "50",
         "--api-key", CANARY_KEY, "--api-secret", CANARY_SECRET], capsys)
    _check_report(code, output, report, 200)
    # The canaries reached the server (it checks every signature) but nothing else.
    assert report["credential_leaks"] == []
    log = (tmp_path / "soak.audit.log").read_text()
    assert "order_received" in log and "unknown" in log
    with sqlite3.connect(tmp_path / "soak.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert "pending_written" in log and dump.count("INSERT INTO") >= 200
    for canary in (CANARY_KEY, CANARY_SECRET):
        assert canary not in output
        assert canary not in log
        assert canary not in dump
        assert canary not in (tmp_path / "report.json").read_text()


@pytest.mark.parametrize("_pg", [pytest.param(None, marks=[pytest.mark.postgres])])
def test_soak_200_orders_on_postgres(
    _pg: None, postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output, report = _run(
        ["-n", "200", "--seed", "11", "--workdir", str(tmp_path), "--database-url",
         postgres_url], capsys)
    _check_report(code, output, report, 200)


def test_soak_refuses_a_database_with_unresolved_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bagbot_core.db import get_engine, session_factory

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    with session_factory(get_engine(url))() as db:
        db.add(Order(user_id="someone", symbol="BTC/USDT", qty=Decimal(1), side="buy",
                     status="unknown", client_order_id="bbexisting", connector="binance",
                     order_type="market"))
        db.commit()
    assert soak.main(["-n", "5", "--database-url", url, "--workdir", str(tmp_path)]) == 2
    assert "throwaway database" in capsys.readouterr().err


def test_soak_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(["--fault", "bogus=0.1"]) == soak.EXIT_USAGE
    assert soak.main(["--fault", "late=2"]) == soak.EXIT_USAGE
    assert soak.main(["--orders", "0"]) == soak.EXIT_USAGE
    assert soak.main(["--help"]) == 0
    assert "bagbot-soak" in capsys.readouterr().out


def test_soak_as_a_command(tmp_path: Path) -> None:
    """``python -m bagbot_core.soak`` (what the ``bagbot-soak`` script runs): exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "bagbot_core.soak", "-n", "30", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT: PASS" in proc.stdout


# -- the checks have teeth ---------------------------------------------------------------


def _row(client_order_id: str, status: str, filled: str = "0", external_id: str | None = None
         ) -> Order:
    return Order(user_id="u", symbol="BTC/USDT", qty=Decimal("0.001"), side="buy",
                 status=status, client_order_id=client_order_id, connector="binance",
                 order_type="market", filled_qty=Decimal(filled), external_id=external_id)


def test_evaluate_catches_every_kind_of_failure() -> None:
    server = FakeBinanceServer(default_book())
    book = server.book
    a = book.place("BTCUSDT", "buy", "market", Decimal("0.001"), client_order_id="a")
    book.place("BTCUSDT", "buy", "market", Decimal("0.001"), client_order_id="a")  # doubled
    b = book.place("BTCUSDT", "buy", "limit", Decimal("0.001"), Decimal("40000"),
                   client_order_id="b")
    book.place("BTCUSDT", "buy", "market", Decimal("0.001"), client_order_id="orphan")
    server.requests.append(LoggedRequest("POST", "/api/v3/order", "", "", 0.0,
                                         in_retry_window=True))
    rows = [
        _row("a", "filled", "0.001", str(a.order_id)),
        _row("b", "filled", "0.001", str(b.order_id)),  # the exchange says open, unfilled
        _row("c", "filled"),  # claims an order the exchange never saw
        _row("d", "unknown"),  # never resolved
        _row("e", "rejected"),  # fine: never reached the exchange
    ]
    result = soak.SoakResult(attempted=6)
    soak.evaluate(server, rows, result, secrets=["s3cr3tvalue"], log_text="x s3cr3tvalue y")
    assert result.duplicates == 1 and result.duplicate_ids == ["a"]
    assert result.orphan_exchange_orders == ["orphan"]
    assert result.calls_without_row == 1
    assert result.missing_rows == 2
    # b, c, d -- and a, whose row names the first of its two exchange orders
    assert result.disagreements == 4 and result.unresolved == 1
    assert result.requests_in_retry_window == 1
    assert result.credential_leaks == ["audit log"]
    assert not result.passed and len(result.failures()) == 5
    assert "RESULT: FAIL" in soak.format_report(result, soak.SoakConfig())


def test_the_soak_sees_hostile_params_that_reach_the_exchange() -> None:
    """A hostile order whose row id or planted id got to the server is a failure."""
    server = FakeBinanceServer(default_book())
    server.book.place("BTCUSDT", "buy", "market", Decimal("0.5"), client_order_id="evil1")
    server.requests.append(LoggedRequest(
        "POST", "/api/v3/order", "", "symbol=BTCUSDT&newClientOrderId=bbrow2", 0.0))
    result = soak.SoakResult(attempted=3, hostile_params=3, hostile_orders=[
        ("bbrow1", "evil1"), ("bbrow2", None), ("bbrow3", "evil3")])
    rows = [_row("bbrow1", "rejected"), _row("bbrow2", "rejected"), _row("bbrow3", "rejected")]
    soak.evaluate(server, rows, result)
    assert result.hostile_reached_exchange == ["bbrow2", "evil1"]
    assert not result.passed
    assert any("hostile params reached the exchange" in f for f in result.failures())


async def test_a_hostile_order_the_router_lets_through_is_a_failure(tmp_path: Path) -> None:
    """The routing loop records a hostile order that was not refused (here: its params
    are stripped on the way, so it is placed) -- the check does not only trust the router."""
    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.router import Router

    class Stripping(Router):
        async def route_order(self, connector_name, order_payload, db, user_id,  # type: ignore[override]
                              testnet=True):
            clean = {k: v for k, v in order_payload.items() if k != "params"}
            return await super().route_order(connector_name, clean, db, user_id, testnet)

    server = FakeBinanceServer(default_book())
    async with server:
        plain = soak._make_router(server, soak.SoakConfig(), 1.0)
        router = Stripping(plain.registry, limits=plain.limits, allow_live=False,
                           connector_config=plain.connector_config)
        config = soak.SoakConfig(orders=4, hostile_rate=1.0, rates={})
        result = soak.SoakResult()
        with session_factory(get_engine(f"sqlite:///{tmp_path}/s.db"))() as db:
            try:
                await soak._route_all(router, server, db, "u", config, result, io.StringIO())
            finally:
                await router.aclose()
                await plain.aclose()
    assert result.hostile_params == 4
    assert len(result.hostile_not_refused) == 4 and not result.passed


def test_evaluate_passes_a_consistent_state() -> None:
    server = FakeBinanceServer(default_book())
    placed = server.book.place("BTCUSDT", "buy", "market", Decimal("0.001"),
                               client_order_id="a")
    rows = [_row("a", "filled", "0.001", str(placed.order_id)), _row("b", "rejected")]
    result = soak.evaluate(server, rows, soak.SoakResult(attempted=2))
    assert result.passed, result.failures()
