"""The ``bagbot`` command line, in process (CliRunner) and as a real console script."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from bagbot_core import store
from bagbot_core.cli import cli, format_table, main, order_row
from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import Order
from bagbot_core.router import set_router
from bagbot_core.status import OrderStatus
from tests import environment
from tests.scripted import ScriptedExchange

pytestmark = pytest.mark.usefixtures("cli_environment")

BAGBOT_SCRIPT = Path(sys.executable).with_name("bagbot")
RISK_CHECKS = ["max_quantity", "max_value", "min_quantity", "valid_side", "valid_symbol",
               "price_collar", "duplicate_order", "order_rate", "max_open_orders",
               "daily_notional", "max_position", "trading_state"]


@pytest.fixture
def url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, url: str, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(cli, ["--database-url", url, *args], **kwargs)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def route(runner: CliRunner, url: str, *args: str) -> dict[str, Any]:
    data = as_json(run(runner, url, "route", *args, "--json"))
    assert isinstance(data, dict)
    return data


def one_error_line(result: Result, code: int) -> str:
    """The failure is exactly one ``error:`` line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def rows_in(url: str) -> list[Order]:
    engine = get_engine(url)
    with session_factory(engine)() as session:
        rows = list(session.scalars(select(Order).order_by(Order.id)))
    return rows


# -- help, version, plugins -----------------------------------------------------------------


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = ok(runner.invoke(cli, ["--help"]))
    for command in ("route", "orders", "plugins", "db", "demo"):
        assert command in result.stdout
    assert "--database-url" in result.stdout and "--verbose" in result.stdout
    orders_help = ok(runner.invoke(cli, ["orders", "--help"])).stdout
    for command in ("list", "show", "sync", "cancel", "reconcile"):
        assert command in orders_help


def test_version(runner: CliRunner) -> None:
    assert "bagbot, version" in ok(runner.invoke(cli, ["--version"])).stdout


def test_plugins_json_lists_paper_and_the_risk_checks_from_bagbot_core(runner: CliRunner) -> None:
    data = as_json(runner.invoke(cli, ["plugins", "--json"]))
    by_name = {p["plugin"]: p for p in data}
    assert by_name["paper"]["distribution"] == "bagbot-core"
    assert by_name["paper"]["connectors"] == ["paper"]
    assert by_name["risk"]["distribution"] == "bagbot-core"
    assert by_name["risk"]["risk_checks"] == RISK_CHECKS
    assert all(p["version"] for p in data)


def test_plugins_table(runner: CliRunner) -> None:
    out = ok(runner.invoke(cli, ["plugins"])).stdout
    header, *lines = out.splitlines()
    assert header.split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "CONNECTORS", "RISK", "CHECKS"]
    paper = next(line for line in lines if line.startswith("paper "))
    assert "bagbot-core" in paper
    risk = next(line for line in lines if line.startswith("risk "))
    assert ", ".join(RISK_CHECKS) in risk


def test_plugins_respects_disabled_plugins(runner: CliRunner,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_DISABLE_PLUGINS", "paper")
    names = [p["plugin"] for p in as_json(runner.invoke(cli, ["plugins", "--json"]))]
    assert "paper" not in names and "risk" in names


# -- route ----------------------------------------------------------------------------------


def test_route_market_buy_prints_exact_decimals_as_json(runner: CliRunner, url: str) -> None:
    order = route(runner, url, "BTC/USDT", "buy", "0.00123000")
    assert order["status"] == "filled"
    assert order["qty"] == "0.00123"
    assert order["filled_qty"] == "0.00123"
    assert order["avg_price"] == "50005"  # paper's ask for BTC/USDT at 50000
    assert order["connector"] == "paper" and order["testnet"] is True
    assert order["user_id"] == "tester"  # $USER
    assert order["created_at"].endswith("+00:00")
    stored = rows_in(url)
    assert [o.qty for o in stored] == [Decimal("0.00123")]


def test_route_table_output_has_plain_decimals(runner: CliRunner, url: str) -> None:
    out = ok(run(runner, url, "route", "BTC/USDT", "buy", "0.001", "--type", "limit",
                 "--price", "40000")).stdout
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["ID", "CREATED", "(UTC)"]
    assert "40000" in row.split() and "0.001" in row.split() and "open" in row.split()
    assert "E+" not in out and "E-" not in out
    created = row.split()[1]
    assert dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")


def test_route_user_and_client_order_id(runner: CliRunner, url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_USER", "from-env")
    first = route(runner, url, "ETH/USDT", "sell", "0.5", "--client-order-id", "my-key-1")
    assert first["user_id"] == "from-env" and first["client_order_id"] == "my-key-1"
    again = route(runner, url, "ETH/USDT", "sell", "0.5", "--client-order-id", "my-key-1")
    assert again["id"] == first["id"]  # idempotent: the first order, not a second one
    other = route(runner, url, "ETH/USDT", "sell", "0.5", "--user", "alice")
    assert other["user_id"] == "alice"
    assert len(rows_in(url)) == 2


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["BTC/USDT", "buy", "abc"], 2, "amount is not a number"),
        (["BTC/USDT", "buy", "NaN"], 2, "must be finite"),
        (["BTC/USDT", "buy", "Infinity"], 2, "must be finite"),
        (["BTC/USDT", "buy", "0"], 2, "greater than zero"),
        (["BTC/USDT", "hold", "1"], 2, "'hold' is not one of"),
        (["BTC/USDT", "buy", "1", "--type", "limit"], 2, "needs --price"),
        (["BTC/USDT", "buy", "1", "--price", "100"], 2, "only for limit orders"),
        (["BTC/USDT", "buy", "1", "--type", "limit", "--price", "x"], 2, "price is not a number"),
        (["BTC/USDT", "buy", "1", "--connector", "nope"], 1, "no connector named 'nope'"),
        (["BTC/USDT", "buy", "50"], 1, "refused by risk checks: max_quantity: quantity 50 "
                                       "exceeds 10"),
        (["BTC/USDT", "buy", "0.001", "--live"], 1, "BAGBOT_ALLOW_LIVE=1"),
        (["BTC/USDT", "buy", "1", "--client-order-id", "no spaces"], 1, "client_order_id"),
        (["NOPE/USDT", "buy", "1"], 1, "valid_symbol: NOPE/USDT is not a market on paper"),
    ],
)
def test_route_errors_are_one_line_with_the_right_exit_code(
    runner: CliRunner, url: str, args: list[str], code: int, fragment: str,
) -> None:
    line = one_error_line(run(runner, url, "route", *args), code)
    assert fragment in line
    if code == 2:
        assert rows_in(url) == []  # a usage error records nothing
        assert "(see 'bagbot route --help')" in line


def test_risk_rejection_lists_every_violation_and_the_recorded_row(runner: CliRunner,
                                                                   url: str) -> None:
    line = one_error_line(run(runner, url, "route", "BTC/USDT", "buy", "20"), 1)
    assert "max_quantity: quantity 20 exceeds 10" in line
    assert "max_value: order value 1000100 USD exceeds 100000 USD" in line
    (row,) = rows_in(url)
    assert f"(order {row.id} recorded as rejected)" in line
    assert row.status == OrderStatus.REJECTED


def test_risk_limits_come_from_the_environment(runner: CliRunner, url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_ORDER_QTY", "0.001")
    assert "max_quantity" in one_error_line(run(runner, url, "route", "BTC/USDT", "buy",
                                                "0.002"), 1)
    monkeypatch.setenv("MAX_ORDER_QTY", "lots")
    set_router(None)  # the process router reads the limits once, when it is built
    line = one_error_line(run(runner, url, "route", "BTC/USDT", "buy", "0.002"), 1)
    assert "MAX_ORDER_QTY" in line


def test_exchange_refusal_is_one_line(runner: CliRunner, url: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_ORDER_VALUE_USD", "10000000")
    line = one_error_line(run(runner, url, "route", "BTC/USDT", "buy", "9"), 1)
    assert "insufficient balance" in line  # 9 BTC cost more than paper's 100000 USDT
    assert "recorded as rejected" in line


def test_unknown_status_says_do_not_resend_and_exits_3(runner: CliRunner, url: str,
                                                       scripted: ScriptedExchange) -> None:
    scripted.script("timeout_after_accept")
    line = one_error_line(run(runner, url, "route", "--connector", "scripted", "BTC/USDT",
                              "buy", "0.5"), 3)
    assert "do NOT resend" in line
    assert "bagbot orders reconcile --connector scripted" in line
    (row,) = rows_in(url)
    assert row.status == OrderStatus.UNKNOWN
    assert scripted.create_calls == 1

    changed = as_json(run(runner, url, "orders", "reconcile", "--connector", "scripted",
                          "--json"))
    assert [(o["id"], o["status"], o["filled_qty"]) for o in changed] == [
        (row.id, "filled", "0.5")]
    assert scripted.create_calls == 1  # never resent


def test_exchange_rejection_exits_1(runner: CliRunner, url: str,
                                    scripted: ScriptedExchange) -> None:
    scripted.script("reject")
    line = one_error_line(run(runner, url, "route", "--connector", "scripted", "BTC/USDT",
                              "buy", "0.5"), 1)
    assert "insufficient balance" in line and "recorded as rejected" in line


# -- orders ---------------------------------------------------------------------------------


@pytest.fixture
def book(runner: CliRunner, url: str) -> dict[str, dict[str, Any]]:
    """Five orders of two users, three symbols and four statuses (oldest first)."""
    orders = {
        "a_btc_filled": route(runner, url, "BTC/USDT", "buy", "0.01", "--user", "alice"),
        "a_eth_open": route(runner, url, "ETH/USDT", "buy", "0.1", "--type", "limit",
                            "--price", "1000", "--user", "alice"),
        "b_sol_filled": route(runner, url, "SOL/USDT", "sell", "1.5", "--user", "bob"),
        "b_btc_open": route(runner, url, "BTC/USDT", "sell", "0.01", "--type", "limit",
                            "--price", "90000.5", "--user", "bob"),
    }
    run(runner, url, "route", "BTC/USDT", "buy", "11", "--user", "bob")
    (rejected,) = [o for o in rows_in(url) if o.status == OrderStatus.REJECTED]
    orders["b_btc_rejected"] = rejected.view().as_dict()
    return orders


def ids(result: Result) -> list[int]:
    return [o["id"] for o in as_json(result)]


def test_orders_list_json_is_newest_first_with_exact_decimals(
    runner: CliRunner, url: str, book: dict[str, dict[str, Any]],
) -> None:
    data = as_json(run(runner, url, "orders", "list", "--json"))
    assert [o["id"] for o in data] == sorted((o["id"] for o in book.values()), reverse=True)
    by_id = {o["id"]: o for o in data}
    assert by_id[book["b_btc_open"]["id"]]["price"] == "90000.5"
    assert by_id[book["b_sol_filled"]["id"]]["qty"] == "1.5"
    assert by_id[book["a_btc_filled"]["id"]]["avg_price"] == "50005"
    assert by_id[book["b_btc_rejected"]["id"]]["status"] == "rejected"


def test_orders_list_filters(runner: CliRunner, url: str,
                             book: dict[str, dict[str, Any]]) -> None:
    def listed(*args: str) -> set[int]:
        return set(ids(run(runner, url, "orders", "list", "--json", *args)))

    def named(*names: str) -> set[int]:
        return {book[n]["id"] for n in names}

    assert listed("--user", "alice") == named("a_btc_filled", "a_eth_open")
    assert listed("--symbol", "btc/usdt") == named("a_btc_filled", "b_btc_open",
                                                   "b_btc_rejected")
    assert listed("--status", "open") == named("a_eth_open", "b_btc_open")
    assert listed("--status", "open", "--status", "rejected") == named(
        "a_eth_open", "b_btc_open", "b_btc_rejected")
    assert listed("--user", "bob", "--symbol", "BTC/USDT", "--status", "open") == named(
        "b_btc_open")
    assert listed("--connector", "paper") == named(*book)
    assert listed("--connector", "binance") == set()
    now = dt.datetime.now(dt.UTC)
    assert listed("--since", (now - dt.timedelta(hours=1)).isoformat()) == named(*book)
    assert listed("--since", (now + dt.timedelta(hours=1)).isoformat()) == set()
    assert listed("--until", "2000-01-01") == set()
    assert listed("--until", (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")) == \
        named(*book)


def test_orders_list_pagination(runner: CliRunner, url: str,
                                book: dict[str, dict[str, Any]]) -> None:
    everything = ids(run(runner, url, "orders", "list", "--json"))
    pages = [ids(run(runner, url, "orders", "list", "--json", "--limit", "2", "--offset", str(n)))
             for n in (0, 2, 4, 6)]
    assert pages == [everything[0:2], everything[2:4], everything[4:], []]
    text = ok(run(runner, url, "orders", "list", "--limit", "2")).stdout
    assert "next page: --offset 2" in text
    assert "no orders past offset 6" in ok(run(runner, url, "orders", "list",
                                                "--offset", "6")).stdout
    # Past what any database binds (2**63 - 1): still just an empty page, not a crash.
    for huge in (str(2**63 - 1), str(2**63), "9" * 40):
        assert ids(run(runner, url, "orders", "list", "--json", "--offset", huge)) == []
        assert "no orders past offset" in ok(run(runner, url, "orders", "list",
                                                  "--offset", huge)).stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--status", "lost"], "'lost' is not one of"),
        (["--since", "yesterday"], "not an ISO 8601 time"),
        (["--limit", "0"], "--limit"),
        (["--limit", "5000"], "--limit"),
        (["--offset", "-1"], "--offset"),
    ],
)
def test_orders_list_bad_arguments(runner: CliRunner, url: str, args: list[str],
                                   fragment: str) -> None:
    assert fragment in one_error_line(run(runner, url, "orders", "list", *args), 2)


def test_orders_list_table(runner: CliRunner, url: str,
                           book: dict[str, dict[str, Any]]) -> None:
    out = ok(run(runner, url, "orders", "list")).stdout
    header, *lines = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "CREATED", "(UTC)", "USER"]
    assert len(lines) == len(book)
    assert all(line.split()[-1] == "test" for line in lines)
    assert "E+" not in out
    assert "no orders match" in ok(run(runner, url, "orders", "list", "--user", "zed")).stdout


def test_orders_show(runner: CliRunner, url: str) -> None:
    order = route(runner, url, "BTC/USDT", "buy", "0.01")
    shown = as_json(run(runner, url, "orders", "show", str(order["id"]), "--json"))
    assert shown["client_order_id"] == order["client_order_id"]
    assert shown["qty"] == "0.01"
    text = ok(run(runner, url, "orders", "show", str(order["id"]))).stdout
    fields = dict(line.split(None, 1) for line in text.strip().splitlines())
    assert fields["status"] == "filled" and fields["avg_price"] == "50005"
    assert fields["price"] == "-"


@pytest.mark.parametrize("command", ["show", "sync", "cancel"])
def test_unknown_order_id_is_one_error_line(runner: CliRunner, url: str, command: str) -> None:
    assert "no order with id 999" in one_error_line(
        run(runner, url, "orders", command, "999"), 1)


def test_orders_id_must_be_an_integer(runner: CliRunner, url: str) -> None:
    assert "'x' is not a valid integer" in one_error_line(
        run(runner, url, "orders", "show", "x"), 2)


def test_orders_sync_and_cancel(runner: CliRunner, url: str) -> None:
    order = route(runner, url, "BTC/USDT", "buy", "0.01", "--type", "limit", "--price", "30000")
    assert order["status"] == "open"
    synced = as_json(run(runner, url, "orders", "sync", str(order["id"]), "--json"))
    assert synced["status"] == "open" and synced["price"] == "30000"
    table = ok(run(runner, url, "orders", "sync", str(order["id"]))).stdout
    assert "open" in table.splitlines()[1].split()
    canceled = as_json(run(runner, url, "orders", "cancel", str(order["id"]), "--json"))
    assert canceled["status"] == "canceled"
    line = one_error_line(run(runner, url, "orders", "cancel", str(order["id"])), 1)
    assert "is canceled: there is nothing to cancel" in line


def test_orders_reconcile_resolves_what_never_reached_the_exchange(runner: CliRunner,
                                                                   url: str) -> None:
    engine = get_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        lost = store.insert_order(
            session, user_id="u", connector="paper", symbol="BTC/USDT", side="buy",
            order_type="market", qty=Decimal("0.01"), price=None, testnet=True,
            client_order_id="lost-in-transit", status=OrderStatus.UNKNOWN.value,
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    # Younger than the grace period: left alone.
    out = ok(run(runner, url, "orders", "reconcile", "--connector", "paper", "--grace",
                 "3600")).stdout
    assert out.strip() == "reconcile paper: no order changed"
    out = ok(run(runner, url, "orders", "reconcile", "--connector", "paper", "--grace",
                 "0")).stdout
    assert "reconcile paper: 1 order(s) changed" in out
    assert str(lost.id) in out.splitlines()[2].split()
    assert "rejected" in out
    assert as_json(run(runner, url, "orders", "reconcile", "--connector", "paper",
                       "--json")) == []


def test_orders_reconcile_errors(runner: CliRunner, url: str) -> None:
    assert "no connector named 'nope'" in one_error_line(
        run(runner, url, "orders", "reconcile", "--connector", "nope"), 1)
    assert "--connector" in one_error_line(run(runner, url, "orders", "reconcile"), 2)
    assert "--grace" in one_error_line(
        run(runner, url, "orders", "reconcile", "--connector", "paper", "--grace", "-1"), 2)


# -- db -------------------------------------------------------------------------------------


def test_db_init_creates_the_tables(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh/init.db"
    assert ok(runner.invoke(cli, ["--database-url", url, "db", "init"])).stdout.strip() == \
        f"initialized {url}"
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"orders", "paper_orders", "paper_balances"} <= tables


def test_db_url_hides_the_password_and_honours_the_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = ok(runner.invoke(cli, ["--database-url", "postgresql://u:s3cret@db/bagbot",
                                 "db", "url"])).stdout
    assert out.strip() == "postgresql://u:***@db/bagbot"
    default = ok(runner.invoke(cli, ["db", "url"])).stdout.strip()
    assert default == f"sqlite:///{tmp_path}/xdg/bagbot/bagbot.db"
    monkeypatch.setenv("BAGBOT_DATABASE_URL", "sqlite:////env/bagbot.db")
    assert ok(runner.invoke(cli, ["db", "url"])).stdout.strip() == "sqlite:////env/bagbot.db"
    out = ok(runner.invoke(cli, ["--database-url", "sqlite:////flag.db", "db", "url"])).stdout
    assert out.strip() == "sqlite:////flag.db"
    assert "invalid database URL" in one_error_line(
        runner.invoke(cli, ["--database-url", "not a url", "db", "url"]), 1)


# -- the audit log --------------------------------------------------------------------------


def test_audit_log_goes_to_a_file_next_to_the_database(runner: CliRunner, tmp_path: Path
                                                       ) -> None:
    url = f"sqlite:///{tmp_path}/logs/trading.db"
    result = ok(run(runner, url, "route", "BTC/USDT", "buy", "0.01"))
    assert result.stderr == ""
    events = [json.loads(line) for line in
              (tmp_path / "logs" / "trading.audit.log").read_text().splitlines()]
    assert {"order_received", "submitted", "persisted"} <= {e["event"] for e in events}


def test_audit_log_file_from_the_environment(runner: CliRunner, url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "elsewhere.log"
    monkeypatch.setenv("BAGBOT_LOG_FILE", str(log))
    ok(run(runner, url, "route", "BTC/USDT", "buy", "0.01"))
    assert "order_received" in log.read_text()


def test_verbose_sends_the_audit_log_to_stderr(runner: CliRunner, url: str) -> None:
    result = ok(run(runner, url, "-v", "route", "BTC/USDT", "buy", "0.01", "--json"))
    assert "order_received" in result.stderr and "risk_check" in result.stderr
    assert json.loads(result.stdout)["status"] == "filled"  # stdout stays machine-readable


# -- formatting -----------------------------------------------------------------------------


def test_format_table_aligns_columns() -> None:
    table = format_table(("NAME", "QTY"), [["a", "1"], ["long-name", "0.00000001"]],
                         frozenset({1}))
    assert table.splitlines() == [
        "NAME              QTY",
        "a                   1",
        "long-name  0.00000001",
    ]


def test_order_row_never_uses_scientific_notation(url: str) -> None:
    engine = get_engine(url)
    with Session(engine, expire_on_commit=False) as session:
        order = store.insert_order(
            session, user_id="u\x1b[31m", connector="paper", symbol="BTC/USDT", side="buy",
            order_type="limit", qty=Decimal("1E-8"), price=Decimal("1E+5"), testnet=False,
            client_order_id="fmt", status="open")
    row = order_row(order.view())
    assert row[7:9] == ["0.00000001", "100000"]
    assert row[2] == "u?[31m"  # control characters never reach the terminal
    assert row[-1] == "LIVE"


# -- main() and real processes --------------------------------------------------------------


def test_main_returns_the_exit_code(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", url, "orders", "show", "1"]) == 1
    assert capsys.readouterr().err.strip() == "error: no order with id 1"
    assert main(["--database-url", url, "db", "url"]) == 0
    assert main(["route"]) == 2


def _subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"), **extra)
    return env


_PROBE = """
import json, sys, time
start = time.perf_counter()
from bagbot_core.cli import main
code = main(sys.argv[2:])
sys.stdout.flush()
loaded = {m.split(".")[0] for m in sys.modules}
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "ccxt": "ccxt" in loaded, "sqlalchemy": "sqlalchemy" in loaded,
               "seconds": time.perf_counter() - start}, f)
"""


def _probe(tmp_path: Path, *args: str) -> dict[str, Any]:
    report = tmp_path / "probe.json"
    subprocess.run([sys.executable, "-c", _PROBE, str(report), *args], check=True,
                   capture_output=True, env=_subprocess_env(tmp_path), timeout=60)
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def test_help_imports_neither_sqlalchemy_nor_ccxt(tmp_path: Path) -> None:
    probe = _probe(tmp_path, "--help")
    assert probe["code"] == 0
    assert probe["ccxt"] is False
    assert probe["sqlalchemy"] is False


def test_plugins_never_imports_ccxt(tmp_path: Path) -> None:
    probe = _probe(tmp_path, "plugins", "--json")
    assert probe["code"] == 0
    assert probe["ccxt"] is False


@pytest.mark.parametrize("args", [["--help"], ["plugins"]])
def test_console_script_starts_quickly(tmp_path: Path, args: list[str]) -> None:
    started = time.perf_counter()
    done = subprocess.run([str(BAGBOT_SCRIPT), *args], capture_output=True, text=True,
                          env=_subprocess_env(tmp_path), timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 3, f"bagbot {' '.join(args)} took {elapsed:.2f}s"


def _demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BAGBOT_SCRIPT), "demo"], capture_output=True, text=True,
                          env=_subprocess_env(tmp_path, **env), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done


@pytest.mark.slow
def test_demo_on_a_fresh_machine_twice(tmp_path: Path) -> None:
    """No config, no keys, no network: the default SQLite file, and it can run again."""
    first = _demo(tmp_path).stdout
    assert "refused by risk checks: max_quantity: quantity 20 exceeds 10" in first
    assert "rejected  market buy above MAX_ORDER_QTY" in first
    assert "open: resting on the book" in first
    assert '"event"' not in first  # the audit log went to its file, not over the table
    database = tmp_path / "xdg" / "bagbot" / "bagbot.db"
    assert str(database) in first
    assert (tmp_path / "xdg" / "bagbot" / "bagbot.audit.log").stat().st_size > 0
    second = _demo(tmp_path).stdout
    assert "refused by risk checks" in second

    orders = rows_in(f"sqlite:///{database}")
    assert len(orders) == 8
    assert len({o.client_order_id for o in orders}) == 8
    assert all(o.client_order_id.startswith("demo-") and o.user_id == "demo" for o in orders)
    assert [o.status for o in orders] == ["filled", "open", "filled", "rejected"] * 2


@pytest.mark.slow
def test_demo_with_an_explicit_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    out = _demo(tmp_path, BAGBOT_DATABASE_URL=url).stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ID "))
    assert [line.split()[-2] for line in lines[header + 1:header + 5]] == [
        "filled", "open", "filled", "rejected"]
    assert f"database:  {url}" in out
    assert (tmp_path / "demo.audit.log").exists()
