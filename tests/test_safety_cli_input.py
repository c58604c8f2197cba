"""Hostile command-line input: undecodable bytes, huge numbers, terminal escape sequences.

Python turns argv bytes that are not UTF-8 into lone surrogates (``b"\\xff"`` ->
``"\\udcff"``), which no database driver can encode. Every text bagbot stores is made
storable at one choke point (``store.insert_order``/``set_status``), so a refused order with
such a symbol or connector still leaves its one ``rejected`` row; filters carrying them are a
usage error. Real processes get real bytes; in-process runs get what Python makes of them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session

from bagbot_core import audit, store
from bagbot_core.cli import cli
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import BagbotError, ConfigurationError, OrderValidationError
from bagbot_core.models import Order
from bagbot_core.reconcile_grace import DEFAULT_RECONCILE_GRACE
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from tests import environment
from tests.scripted import ScriptedExchange

pytestmark = pytest.mark.usefixtures("cli_environment")

BAGBOT = Path(sys.executable).with_name("bagbot")
ROOT = Path(__file__).resolve().parent.parent
MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}
#: What may never reach a terminal raw: ESC, CSI, other C0/C1 controls, bidi overrides.
RAW_CONTROLS = ["\x1b", "\x9b", "\x07", "\x08", "\r", "\u202e"]


def rows(url: str) -> list[Order]:
    with session_factory(get_engine(url))() as session:
        return list(session.scalars(select(Order).order_by(Order.id)))


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, *args])


def one_error_line(stderr: str, code: int, exit_code: int) -> str:
    assert exit_code == code, (exit_code, stderr)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def bagbot(url: str, *args: bytes, tmp_path: Path, **env: str
           ) -> subprocess.CompletedProcess[bytes]:
    """The installed console script with raw bytes in argv, as a shell would pass them."""
    environ = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    environ.update(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"),
                   BAGBOT_LOG_FILE=str(tmp_path / "audit.log"), USER="tester",
                   PYTHONPATH=str(ROOT), **env)
    return subprocess.run([os.fsencode(BAGBOT), b"--database-url", url.encode(), *args],
                          capture_output=True, env=environ, timeout=120, check=False)


# -- item 5: undecodable bytes in arguments --------------------------------------------------


def storable(text: str) -> bool:
    """What every database stores alike: no NUL, no lone surrogate."""
    return not any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in text)


@pytest.mark.parametrize(("args", "field", "stored"), [
    ([b"BTC/\xff", b"buy", b"0.001"], "symbol", "BTC/"),
    ([b"BTC/USDT", b"buy", b"0.001", b"--connector", b"pa\xffper"], "connector", "pa"),
])
def test_undecodable_bytes_in_route_leave_one_rejected_row(
    db_url: str, tmp_path: Path, args: list[bytes], field: str, stored: str,
) -> None:
    done = bagbot(db_url, b"route", *args, tmp_path=tmp_path)
    stderr = done.stderr.decode("utf-8", "replace")
    line = one_error_line(stderr, 1, done.returncode)
    assert "recorded as rejected" in line
    (row,) = rows(db_url)
    assert row.status == OrderStatus.REJECTED
    value = getattr(row, field)
    assert value.startswith(stored) and storable(value), value


def test_undecodable_bytes_in_route_in_process(db_url: str) -> None:
    symbol = os.fsdecode(b"BTC/\xff\x1b[2J")  # what Python makes of argv bytes
    result = invoke(db_url, "route", symbol, "buy", "0.001")
    line = one_error_line(result.stderr, 1, result.exit_code)
    assert "\x1b" not in line and "\\x1b" in line  # shown escaped, never obeyed
    result = invoke(db_url, "route", "BTC/USDT", "buy", "0.001", "--connector",
                    os.fsdecode(b"\xfe\xffpaper"))
    assert "recorded as rejected" in one_error_line(result.stderr, 1, result.exit_code)
    first, second = rows(db_url)
    assert (first.symbol, first.status) == ("BTC/\ufffd\x1b[2J", OrderStatus.REJECTED)
    assert second.status == OrderStatus.REJECTED
    assert storable(second.connector) and storable(second.reason or "")


@pytest.mark.parametrize("option", ["--user", "--symbol", "--connector"])
def test_undecodable_filter_is_a_usage_error(db_url: str, tmp_path: Path, option: str) -> None:
    done = bagbot(db_url, b"orders", b"list", option.encode(), b"x\xff", tmp_path=tmp_path)
    line = one_error_line(done.stderr.decode("utf-8", "replace"), 2, done.returncode)
    assert option in line and "not UTF-8" in line
    result = invoke(db_url, "orders", "list", option, os.fsdecode(b"\xff"))
    assert option in one_error_line(result.stderr, 2, result.exit_code)


def test_undecodable_reconcile_connector_is_a_usage_error(db_url: str) -> None:
    result = invoke(db_url, "orders", "reconcile", "--connector", os.fsdecode(b"pa\xffper"))
    assert "--connector" in one_error_line(result.stderr, 2, result.exit_code)


async def test_route_order_stores_hostile_text_on_every_backend(
    db: Session, router: Router, log_stream_json: io.StringIO,
) -> None:
    """The library path: a lone surrogate or NUL in the symbol or connector still gets its
    one rejected row, on SQLite and PostgreSQL alike."""
    with pytest.raises(OrderValidationError):
        await router.route_order("scripted", {**MARKET_BUY, "symbol": "BTC/\udcff\x00"}, db, "u")
    with pytest.raises(BagbotError):
        await router.route_order("scr\udcffipted\x00", MARKET_BUY, db, "u")
    first, second = db.scalars(select(Order).order_by(Order.id)).all()
    assert first.symbol == "BTC/\ufffd\ufffd" and first.status == OrderStatus.REJECTED
    assert second.status == OrderStatus.REJECTED
    for row in (first, second):
        assert all(storable(text or "") for text in (row.symbol, row.connector, row.reason))


def test_store_makes_every_text_field_and_the_details_storable(db: Session) -> None:
    hostile = "a\udcff\x00b"
    order = store.insert_order(
        db, user_id=hostile, connector=hostile, symbol=hostile, side=hostile,
        order_type=hostile, qty=Decimal("1"), price=None, testnet=True,
        client_order_id="c\udcff", status=OrderStatus.PENDING.value, reason=hostile,
        details={"payload": {hostile: [hostile, 1]}},
    )
    store.set_status(db, order, OrderStatus.UNKNOWN, reason=hostile,
                     details={"note": hostile})
    db.expire_all()
    stored = db.get(Order, order.id)
    assert stored is not None
    clean = "a\ufffd\ufffdb"
    assert (stored.user_id, stored.symbol, stored.connector, stored.side, stored.reason) == (
        clean, clean, clean, clean, clean)
    assert stored.client_order_id == "c\ufffd"
    assert stored.details == {"payload": {clean: [clean, 1]}, "note": clean}


# -- item 6: huge ids and impossible grace periods ---------------------------------------------


@pytest.mark.parametrize("command", ["show", "sync", "cancel"])
@pytest.mark.parametrize("order_id", ["99999999999999999999999", str(2**63), "0", "-1"])
def test_out_of_range_order_id_is_a_usage_error(db_url: str, command: str,
                                                order_id: str) -> None:
    result = invoke(db_url, "orders", command, "--", order_id)
    line = one_error_line(result.stderr, 2, result.exit_code)
    assert "'ID'" in line and f"1 to {2**63 - 1}" in line


def test_largest_order_id_is_looked_up(db_url: str) -> None:
    result = invoke(db_url, "orders", "show", str(2**63 - 1))
    assert f"no order with id {2**63 - 1}" in one_error_line(result.stderr, 1, result.exit_code)


@pytest.mark.parametrize("grace", ["nan", "NaN", "inf", "-inf", "-1", "1e300", "1e999",
                                   "31536001", "\u0661"])
def test_impossible_grace_is_a_usage_error(sqlite_url: str, grace: str) -> None:
    result = invoke(sqlite_url, "orders", "reconcile", "--connector", "paper", "--grace", grace)
    line = one_error_line(result.stderr, 2, result.exit_code)
    assert "--grace" in line and "from 0 to 31536000" in line


def test_reconcile_help_shows_the_grace_the_router_uses() -> None:
    result = CliRunner().invoke(cli, ["orders", "reconcile", "--help"])
    seconds = int(DEFAULT_RECONCILE_GRACE.total_seconds())
    assert f"(default {seconds};" in " ".join(result.stdout.split())
    assert Router().reconcile_grace == DEFAULT_RECONCILE_GRACE


# -- item 13: a replayed unresolved order keeps exit code 3 --------------------------------------


def test_replaying_an_unknown_order_exits_3(db_url: str, scripted: ScriptedExchange) -> None:
    scripted.script("timeout_after_accept")
    args = ["route", "BTC/USDT", "buy", "0.5", "--connector", "scripted", "--client-order-id",
            "k-unknown-1", "--json"]
    first = invoke(db_url, *args)
    assert first.exit_code == 3, first.output
    again = invoke(db_url, *args)
    line = one_error_line(again.stderr, 3, again.exit_code)
    assert "do NOT resend" in line
    assert "bagbot orders reconcile --connector scripted" in line
    assert json.loads(again.stdout)["status"] == "unknown"  # the row is still shown
    assert scripted.create_calls == 1 and len(rows(db_url)) == 1


def test_replaying_a_pending_order_exits_3(db_url: str, scripted: ScriptedExchange) -> None:
    with session_factory(get_engine(db_url))() as session:
        store.insert_order(session, user_id="tester", connector="scripted", symbol="BTC/USDT",
                           side="buy", order_type="market", qty=Decimal("0.5"), price=None,
                           testnet=True, client_order_id="k-pending-1",
                           status=OrderStatus.PENDING.value)
    result = invoke(db_url, "route", "BTC/USDT", "buy", "0.5", "--connector", "scripted",
                    "--client-order-id", "k-pending-1")
    line = one_error_line(result.stderr, 3, result.exit_code)
    assert "pending" in line and "do NOT resend" in line
    assert scripted.create_calls == 0


# -- item 16: log settings and terminal escapes ------------------------------------------------


@pytest.mark.parametrize(("variable", "accepted"), [
    ("BAGBOT_LOG_LEVEL", "debug, info, warning, error, critical"),
    ("BAGBOT_LOG_FORMAT", "json, console"),
])
@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_bogus_log_setting_is_a_configuration_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, variable: str, accepted: str,
    verbose: list[str],
) -> None:
    monkeypatch.setenv(variable, "bogus")
    result = CliRunner().invoke(cli, ["--database-url", sqlite_url, *verbose, "route",
                                      "BTC/USDT", "buy", "0.001"])
    line = one_error_line(result.stderr, 1, result.exit_code)
    assert f"{variable}='bogus'" in line and accepted in line
    assert rows(sqlite_url) == []  # refused before anything was routed
    with pytest.raises(ConfigurationError, match=variable):
        audit.configure(stream=io.StringIO(), force=True)


def test_log_settings_accept_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAGBOT_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("BAGBOT_LOG_FORMAT", "Json")
    stream = io.StringIO()
    audit.configure(stream=stream, force=True)
    audit.get_logger().info("quiet")
    audit.get_logger().warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


HOSTILE = "BTC/\x1b[2J\x1b]0;owned\x07\u202eX\x9b31m\udcff\r"


def test_console_log_escapes_control_characters() -> None:
    stream = io.StringIO()
    audit.configure(fmt="console", stream=stream, force=True)
    audit.get_logger(symbol=HOSTILE).warning("rejected", reason=f"bad {HOSTILE}",
                                             user_id="\x1b[31mu")
    out = stream.getvalue()
    for control in RAW_CONTROLS:
        assert control not in out, repr(control)
    assert "\\x1b[2J" in out and "\\u202e" in out


def test_json_log_escapes_control_characters() -> None:
    stream = io.StringIO()
    audit.configure(fmt="json", stream=stream, force=True)
    audit.get_logger(symbol=HOSTILE).warning("rejected")
    out = stream.getvalue()
    for control in RAW_CONTROLS:
        assert control not in out, repr(control)
    assert json.loads(out)["symbol"] == HOSTILE  # escaped, not lost


def test_verbose_cli_never_writes_escape_sequences_raw(sqlite_url: str) -> None:
    result = invoke(sqlite_url, "-v", "route", "BTC/\x1b[2J\u202eX", "buy", "0.001")
    assert result.exit_code == 1
    assert "order_received" in result.stderr
    for control in RAW_CONTROLS:
        assert control not in result.stderr, repr(control)
    assert "\\x1b[2J" in result.stderr


def test_error_line_never_writes_escape_sequences_raw(tmp_path: Path, sqlite_url: str) -> None:
    done = bagbot(sqlite_url, b"route", b"BTC/\x1b]0;owned\x07\xff", b"buy", b"0.001",
                  tmp_path=tmp_path)
    line = one_error_line(done.stderr.decode("utf-8", "replace"), 1, done.returncode)
    for control in RAW_CONTROLS:
        assert control not in line, repr(control)
    assert "\\x1b]0;OWNED\\x07" in line  # the symbol as typed (upper-cased), escaped


@pytest.mark.parametrize("bound", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_time_utc_cannot_hold_is_the_calendars_end(tmp_path: Path, bound: str) -> None:
    """A valid ISO time in a far zone at either end of the calendar is a bound, not a crash."""
    url = f"sqlite:///{tmp_path}/bagbot.db"
    for option in ("--since", "--until"):
        result = CliRunner().invoke(cli, ["--database-url", url, "orders", "list", option,
                                          bound, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == []
