"""``bagbot halt|reduce|resume`` and ``bagbot risk status``, in process (CliRunner)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bagbot_core import store
from bagbot_core.cli import cli
from bagbot_core.db import get_engine, session_factory

pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.fixture
def run(sqlite_url: str) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--database-url", sqlite_url, *args])

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def route(run: Any, user: str, side: str = "buy", *extra: str) -> Result:
    result: Result = run("route", "BTC/USDT", side, "0.01", "--user", user, "--json", *extra)
    return result


def resting(run: Any, user: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(route(run, user, "buy", "--type", "limit",
                                               "--price", "40000")).stdout)
    assert data["status"] == "open"
    return data


def test_halt_refuses_orders_until_resumed(run: Any) -> None:
    halted = ok(run("halt", "--reason", "exchange incident"))
    assert halted.stdout.startswith("halted: global (was never set; by tester: ")
    refused = route(run, "alice")
    assert refused.exit_code == 1
    assert "trading_state: trading is halted by tester" in refused.stderr
    assert "exchange incident" in refused.stderr and "recorded as rejected" in refused.stderr
    (row,) = json.loads(ok(run("orders", "list", "--json")).stdout)
    assert row["status"] == "rejected"
    (violation,) = row["details"]["violations"]
    assert violation["check"] == "trading_state" and violation["limit"] == "halted (global)"
    assert violation["actual"] == "new order: buy 0.01 BTC"
    resumed = ok(run("resume", "--reason", "all clear", "--by", "alice"))
    assert resumed.stdout.startswith("resumed: global (was halted; by alice: all clear)")
    assert json.loads(ok(route(run, "alice")).stdout)["status"] == "filled"


def test_reduce_lets_only_reducing_orders_through(run: Any) -> None:
    ok(route(run, "alice"))
    ok(run("reduce", "--user", "alice", "--connector", "paper", "--reason", "review"))
    refused = route(run, "alice", "buy")
    assert refused.exit_code == 1 and "would not reduce" in refused.stderr
    assert json.loads(ok(route(run, "alice", "sell")).stdout)["status"] == "filled"
    ok(route(run, "bob", "buy"))  # another user is not affected


def test_status_lists_every_scope_with_who_when_why(run: Any) -> None:
    assert "trading is active everywhere" in ok(run("risk", "status")).stdout
    assert json.loads(ok(run("risk", "status", "--json")).stdout) == []
    ok(run("halt", "--connector", "paper", "--reason", "maintenance", "--by", "ops"))
    ok(run("reduce", "--user", "alice", "--reason", "review"))
    ok(run("halt", "--reason", "stop", "--by", "cto"))
    data = json.loads(ok(run("risk", "status", "--json")).stdout)
    assert [(d["scope"], d["user_id"], d["connector"], d["state"], d["who"], d["reason"])
            for d in data] == [
        ("global", None, None, "halted", "cto", "stop"),
        ("connector", None, "paper", "halted", "ops", "maintenance"),
        ("user", "alice", None, "reducing", "tester", "review"),
    ]
    assert all(d["changed_at"].endswith("+00:00") for d in data)
    table = ok(run("risk", "status")).stdout.splitlines()
    assert table[0].split() == ["SCOPE", "USER", "CONNECTOR", "STATE", "SINCE", "(UTC)", "BY",
                                "REASON"]
    assert table[1].split()[:4] == ["global", "*", "*", "HALTED"]
    assert table[3].split()[:4] == ["user", "alice", "*", "REDUCING"]


def test_change_as_json(run: Any) -> None:
    data = json.loads(ok(run("reduce", "--connector", "paper", "--reason", "r",
                             "--json")).stdout)
    assert (data["scope"], data["connector"], data["state"], data["previous"]) == (
        "connector", "paper", "reducing", None)


def test_the_audit_log_gets_one_event_per_change_and_stdout_none(
        run: Any, sqlite_url: str) -> None:
    result = ok(run("halt", "--user", "alice", "--reason", "why"))
    assert "trading_state_changed" not in result.output
    log = Path(sqlite_url.removeprefix("sqlite:///")).with_suffix(".audit.log")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (change,) = [e for e in events if e["event"] == "trading_state_changed"]
    assert (change["user_id"], change["state"], change["reason"], change["who"]) == (
        "alice", "halted", "why", "tester")


@pytest.mark.parametrize("args", [
    ["halt"],                                   # --reason is required
    ["halt", "--reason", "   "],
    ["reduce", "--reason", "r", "--user", ""],
    ["resume", "--reason", "r", "--connector", "a b"],
    ["halt", "--reason", "r", "--by", ""],
    ["halt", "--reason", "x" * 501],
])
def test_bad_usage_exits_2_and_changes_nothing(run: Any, args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert json.loads(ok(run("risk", "status", "--json")).stdout) == []


def test_unknown_connector_exits_1_and_changes_nothing(run: Any) -> None:
    result = run("halt", "--connector", "papr", "--reason", "typo")
    assert result.exit_code == 1 and "no connector named 'papr'" in result.stderr
    assert json.loads(ok(run("risk", "status", "--json")).stdout) == []


def test_halt_cancel_open_cancels_the_scope_s_orders_and_reports_each(run: Any) -> None:
    mine = [resting(run, "alice")["id"] for _ in range(2)]
    other = resting(run, "bob")["id"]
    result = ok(run("halt", "--user", "alice", "--reason", "stop", "--cancel-open"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("halted: user alice")
    assert [line.split()[:3] for line in lines[1:]] == [
        ["canceled", "order", str(mine[0])], ["canceled", "order", str(mine[1])]]
    assert all(line.endswith("now canceled") for line in lines[1:])
    statuses = {o["id"]: o["status"] for o in
                json.loads(ok(run("orders", "list", "--json")).stdout)}
    assert statuses == {mine[0]: "canceled", mine[1]: "canceled", other: "open"}
    again = ok(run("halt", "--user", "alice", "--reason", "stop", "--cancel-open"))
    assert again.stdout.splitlines()[1] == "no open orders to cancel"


def test_halt_cancel_open_exits_1_when_a_cancel_fails(run: Any, sqlite_url: str) -> None:
    real = resting(run, "alice")["id"]
    with session_factory(get_engine(sqlite_url))() as session:
        ghost = store.insert_order(  # open in our rows, unknown to the exchange
            session, user_id="alice", connector="paper", symbol="BTC/USDT", side="buy",
            order_type="limit", qty=Decimal("0.01"), price=Decimal("40000"), testnet=True,
            client_order_id="ghost-" + uuid.uuid4().hex, status="open").id
    result = run("halt", "--reason", "stop", "--cancel-open", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    outcomes = {c["order"]["id"]: c for c in data["canceled"]}
    assert outcomes[real]["error"] is None and outcomes[real]["order"]["status"] == "canceled"
    assert outcomes[ghost]["error"] is not None
    assert result.stderr == ("error: 1 of 2 open order(s) could not be canceled; trading "
                             "stays halted\n")
    assert json.loads(ok(run("risk", "status", "--json")).stdout)[0]["state"] == "halted"


def test_help_lists_the_commands() -> None:
    out = ok(CliRunner().invoke(cli, ["--help"])).stdout
    for command in ("halt", "reduce", "resume", "risk"):
        assert command in out
    assert "status" in ok(CliRunner().invoke(cli, ["risk", "--help"])).stdout
