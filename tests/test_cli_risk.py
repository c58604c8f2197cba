"""The risk controls on the command line: ``--config``, ``route --dry-run``, ``risk show``.

Every control refuses an order through ``bagbot route`` against the paper exchange (ask
50005, bid 49995 on BTC/USDT), leaving a ``rejected`` row with the check's name, limit and
actual value; the dry run reports the same violations and writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bagbot_core.cli import cli
from bagbot_core.status import OrderStatus
from tests.test_cli import (
    as_json,
    ok,
    one_error_line,
    rows_in,
    run,
)

pytestmark = pytest.mark.usefixtures("cli_environment")


@pytest.fixture
def url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def config_file(tmp_path: Path, text: str, name: str = "bagbot.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def limit_buy(amount: str, price: str) -> list[str]:
    return ["BTC/USDT", "buy", amount, "--type", "limit", "--price", price]


# (config, orders that pass, the order refused, (limit, actual); None: not fixed)
CONTROLS: dict[str, tuple[str, list[list[str]], list[str], tuple[str, str | None]]] = {
    "price_collar": ('price_collar_pct = "1"', [limit_buy("0.001", "50505.05")],
                     limit_buy("0.001", "50505.06"), ("50505.05", "50505.06")),
    "duplicate_order": ("duplicate_window_seconds = 60", [limit_buy("0.001", "40000")],
                        limit_buy("0.001", "40000"), ("60", None)),
    "order_rate": ("order_rate = 2", [limit_buy("0.001", "40000"), limit_buy("0.001", "40001")],
                   limit_buy("0.001", "40002"), ("2", "3")),
    "max_open_orders": ("max_open_orders = 1", [limit_buy("0.001", "40000")],
                        limit_buy("0.001", "40001"), ("1", "2")),
    "daily_notional": ('daily_notional_usd = "100"',
                       [limit_buy("0.001", "40000"), limit_buy("0.0015", "40000")],
                       limit_buy("0.001", "40000"), ("100", "140")),
    "max_position": ('max_position = { BTC = "0.001" }', [["BTC/USDT", "buy", "0.001"]],
                     limit_buy("0.001", "40000"), ("0.001", "0.002")),
}


def prepared(runner: CliRunner, url: str, tmp_path: Path, control: str
             ) -> tuple[Path, list[str], tuple[str, str | None]]:
    """The control's config file, with the orders that pass it already routed."""
    text, passing, refused, expected = CONTROLS[control]
    path = config_file(tmp_path, f"[risk]\n{text}\n")
    for args in passing:
        ok(run(runner, url, "--config", str(path), "route", *args, "--user", "alice"))
    return path, [*refused, "--user", "alice"], expected


@pytest.mark.parametrize("control", list(CONTROLS))
def test_each_control_refuses_through_the_cli_and_records_name_limit_actual(
        runner: CliRunner, url: str, tmp_path: Path, control: str) -> None:
    path, refused, (limit, actual) = prepared(runner, url, tmp_path, control)
    before = len(rows_in(url))
    line = one_error_line(run(runner, url, "--config", str(path), "route", *refused), 1)
    assert f"refused by risk checks: {control}: " in line
    rows = rows_in(url)
    assert len(rows) == before + 1
    row = rows[-1]
    assert row.status == OrderStatus.REJECTED and f"order {row.id} recorded as rejected" in line
    shown = as_json(run(runner, url, "orders", "show", str(row.id), "--json"))
    (violation,) = shown["details"]["violations"]
    assert (violation["check"], violation["limit"]) == (control, limit)
    assert violation["actual"] == actual if actual is not None else violation["actual"]
    # Without the file the same order passes: the control is off by default.
    assert ok(run(runner, url, "route", *refused, "--json"))


@pytest.mark.parametrize("control", list(CONTROLS))
def test_dry_run_reports_each_control_and_writes_nothing(runner: CliRunner, url: str,
                                                         tmp_path: Path, control: str) -> None:
    path, refused, (limit, actual) = prepared(runner, url, tmp_path, control)
    before = len(rows_in(url))
    result = run(runner, url, "--config", str(path), "route", *refused, "--dry-run", "--json")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: dry run: the order would be refused by 1 risk "
                                    f"check(s): {control}")
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["passed"] is False
    (violation,) = data["violations"]
    assert (violation["check"], violation["limit"]) == (control, limit)
    if actual is not None:
        assert violation["actual"] == actual
    table = run(runner, url, "--config", str(path), "route", *refused, "--dry-run")
    assert table.exit_code == 1 and table.stdout.splitlines()[0].split() == [
        "CHECK", "LIMIT", "ACTUAL", "REASON"]
    assert table.stdout.splitlines()[1].startswith(control)
    assert len(rows_in(url)) == before  # no row, nothing sent


def test_dry_run_of_an_order_that_passes(runner: CliRunner, url: str) -> None:
    result = ok(run(runner, url, "route", "BTC/USDT", "buy", "0.001", "--dry-run"))
    assert "passes every risk check" in result.stdout
    assert as_json(run(runner, url, "route", "BTC/USDT", "buy", "0.001", "--dry-run",
                       "--json")) == {"dry_run": True, "passed": True, "violations": []}
    assert rows_in(url) == []


def test_dry_run_lists_every_violation(runner: CliRunner, url: str) -> None:
    result = run(runner, url, "route", "BTC/USDT", "buy", "20", "--dry-run", "--json")
    assert result.exit_code == 1
    checks = [v["check"] for v in json.loads(result.stdout)["violations"]]
    assert checks == ["max_quantity", "max_value"]
    assert rows_in(url) == []


def test_config_from_the_environment_and_per_user_scope(runner: CliRunner, url: str,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = config_file(tmp_path, '[risk.users.alice]\nmax_order_qty = "0.001"\n')
    monkeypatch.setenv("BAGBOT_CONFIG", str(path))
    line = one_error_line(run(runner, url, "route", "BTC/USDT", "buy", "0.002", "--user",
                              "alice"), 1)
    assert "max_quantity: quantity 0.002 exceeds 0.001" in line
    ok(run(runner, url, "route", "BTC/USDT", "buy", "0.002", "--user", "bob"))


def test_config_option_holds_for_its_command_only(runner: CliRunner, url: str,
                                                  tmp_path: Path) -> None:
    path = config_file(tmp_path, "[risk]\norder_rate = 0\n")
    line = one_error_line(run(runner, url, "--config", str(path), "route", "BTC/USDT", "buy",
                              "0.001"), 1)
    assert "order_rate: 1 orders within 60 s with this one; at most 0" in line
    ok(run(runner, url, "route", "BTC/USDT", "buy", "0.001"))  # the same process, no --config


@pytest.mark.parametrize("command", [["route", "BTC/USDT", "buy", "0.001"], ["risk", "show"]])
def test_a_bad_config_is_one_error_line_naming_file_key_and_value(
        runner: CliRunner, url: str, tmp_path: Path, command: list[str]) -> None:
    path = config_file(tmp_path, '[risk.users.alice]\norder_rate = "lots"\n')
    line = one_error_line(run(runner, url, "--config", str(path), *command), 1)
    assert str(path) in line and "[risk.users.alice]" in line
    assert "order_rate = 'lots'" in line
    missing = tmp_path / "nope.toml"
    line = one_error_line(run(runner, url, "--config", str(missing), *command), 1)
    assert f"config file {missing}: cannot read it" in line
    assert rows_in(url) == []  # no router, no row: nothing was attempted


SHOWN = """
[risk]
max_order_qty = "5"
order_rate = 20
[risk.users.alice]
daily_notional_usd = "1000"
[risk.symbols."BTC/USDT"]
order_rate = false
"""


def test_risk_show_lists_active_checks_with_value_scope_and_source(
        runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config_file(tmp_path, SHOWN)
    monkeypatch.setenv("MIN_ORDER_QTY", "0.01")
    data = as_json(runner.invoke(cli, ["--config", str(path), "risk", "show", "--json"]))
    assert data["config_file"] == str(path) and data["user"] is None
    rows = {(r["check"], r["limit"], r["scope"]): (r["value"], r["source"])
            for r in data["checks"]}
    assert rows[("max_quantity", "max_order_qty", "global")] == ("5", f"file {path} [risk]")
    assert rows[("min_quantity", "min_order_qty", "global")] == ("0.01", "env MIN_ORDER_QTY")
    assert rows[("max_value", "max_order_value_usd", "global")] == ("100000", "default")
    assert rows[("order_rate", "order_rate", "global")] == ("20", f"file {path} [risk]")
    assert rows[("order_rate", "order_rate", "symbol BTC/USDT")] == (
        None, f'file {path} [risk.symbols."BTC/USDT"]')
    assert rows[("daily_notional", "daily_notional_usd", "user alice")] == (
        "1000", f"file {path} [risk.users.alice]")
    assert rows[("valid_symbol", None, "global")] == (None, "plugin risk (bagbot-core)")
    assert data["off"] == ["price_collar", "duplicate_order", "max_open_orders", "max_position"]
    assert data["skipped"] == []

    bob = as_json(runner.invoke(cli, ["--config", str(path), "risk", "show", "--user", "bob",
                                      "--json"]))
    assert not any(r["check"] == "daily_notional" for r in bob["checks"])
    alice = as_json(runner.invoke(cli, ["--config", str(path), "risk", "show", "--user",
                                        "alice", "--json"]))
    assert any(r["check"] == "daily_notional" and r["scope"] == "user alice"
               for r in alice["checks"])


def test_risk_show_table_marks_skipped_checks_and_names_the_file(
        runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "xdg-config"  # the default location (cli_environment points here)
    (xdg / "bagbot").mkdir(parents=True)
    default = config_file(xdg / "bagbot", SHOWN)
    monkeypatch.setenv("BAGBOT_SKIP_RISK_CHECKS", "order_rate")
    out = ok(runner.invoke(cli, ["risk", "show"])).stdout
    header, *lines = out.splitlines()
    assert header.split() == ["CHECK", "LIMIT", "VALUE", "SCOPE", "SOURCE"]
    assert any(line.startswith("order_rate (SKIPPED)") and " 20 " in line for line in lines)
    assert any(line.startswith("max_quantity ") and f"file {default} [risk]" in line
               for line in lines)
    assert f"config file: {default}" in out
    assert "off (not configured): price_collar, duplicate_order" in out
    assert "SKIPPED by BAGBOT_SKIP_RISK_CHECKS: order_rate" in out


def test_help_shows_the_config_option_and_the_risk_group(runner: CliRunner) -> None:
    top = ok(runner.invoke(cli, ["--help"])).stdout
    assert "--config PATH" in top and "BAGBOT_CONFIG" in top and "risk " in top
    assert "show" in ok(runner.invoke(cli, ["risk", "--help"])).stdout
    route_help = ok(runner.invoke(cli, ["route", "--help"])).stdout
    assert "--dry-run" in route_help
