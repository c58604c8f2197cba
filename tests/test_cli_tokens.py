"""``bagbot tokens create|list|revoke``: in process (CliRunner) and as the console script."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bagbot_core import tokens
from bagbot_core.cli import cli
from bagbot_core.cli_tokens import parse_lifetime
from bagbot_core.db import get_engine, session_factory
from bagbot_core.models import utcnow
from tests import environment

pytestmark = pytest.mark.usefixtures("cli_environment")

TOKEN_LINE = re.compile(r"bgt_[a-z0-9]{12}_[A-Za-z0-9_-]{43}\n")
BAGBOT_SCRIPT = Path(sys.executable).with_name("bagbot")


@pytest.fixture
def run(sqlite_url: str) -> Any:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--database-url", sqlite_url, *args])

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert result.stdout == ""
    return line


def who(sqlite_url: str, raw: str) -> tokens.TokenIdentity | None:
    with session_factory(get_engine(sqlite_url))() as session:
        return tokens.authenticate(session, raw)


def test_create_prints_the_token_once_and_warns(run: Any, sqlite_url: str) -> None:
    result = ok(run("tokens", "create", "--user", "alice"))
    assert TOKEN_LINE.fullmatch(result.stdout)
    raw = result.stdout.strip()
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warning: token ") and "shown only this once" in warning
    assert "user alice" in warning and "expires -" in warning
    identity = who(sqlite_url, raw)
    assert identity is not None
    assert (identity.user_id, identity.admin, identity.live, identity.expires_at) == (
        "alice", False, False, None)
    assert identity.token_id in warning and raw not in warning


def test_create_json_with_every_grant(run: Any, sqlite_url: str) -> None:
    result = ok(run("tokens", "create", "--user", "ops", "--admin", "--live", "--expires",
                    "12h", "--label", "on-call", "--json"))
    data = json.loads(result.stdout)
    assert set(data) == {"token", "token_id", "user_id", "admin", "live", "label",
                         "expires_at"}
    assert (data["user_id"], data["admin"], data["live"], data["label"]) == (
        "ops", True, True, "on-call")
    expires = dt.datetime.fromisoformat(data["expires_at"])
    assert dt.timedelta(hours=11) < expires - utcnow() <= dt.timedelta(hours=12)
    assert "admin, live" in result.stderr
    identity = who(sqlite_url, data["token"])
    assert identity is not None and identity.token_id == data["token_id"]
    assert identity.admin and identity.live


@pytest.mark.parametrize(("text", "expected"), [
    ("30d", dt.timedelta(days=30)), ("12h", dt.timedelta(hours=12)),
    ("90m", dt.timedelta(minutes=90)), ("3650d", dt.timedelta(days=3650)),
])
def test_lifetimes(text: str, expected: dt.timedelta) -> None:
    assert parse_lifetime(text) == expected


@pytest.mark.parametrize("bad", ["0d", "30", "1w", "-1d", "3651d", "99999999d", "1.5h",
                                 "\uff11d", "d", "", "30 d", "1e3d"])
def test_bad_lifetime_is_one_usage_error(run: Any, bad: str) -> None:
    line = one_error(run("tokens", "create", "--user", "alice", "--expires", bad), 2)
    assert "--expires" in line


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=12))
def test_any_lifetime_text_is_parsed_or_refused(text: str) -> None:
    try:
        lifetime = parse_lifetime(text)
    except ValueError:
        return
    assert dt.timedelta(0) < lifetime <= dt.timedelta(days=3650)
    assert re.fullmatch(r"[0-9]+[dhm]", text.strip(), re.ASCII)


@pytest.mark.parametrize("bad", ["", "  ", "tab\there", "x" * 129])
def test_bad_user_is_one_usage_error(run: Any, sqlite_url: str, bad: str) -> None:
    line = one_error(run("tokens", "create", "--user", bad), 2)
    assert "user_id must be" in line
    assert json.loads(ok(run("tokens", "list", "--json")).stdout) == []


def test_user_is_required(run: Any) -> None:
    assert "--user" in one_error(run("tokens", "create"), 2)


def test_list_shows_grants_and_status_but_no_secret(run: Any) -> None:
    assert ok(run("tokens", "list")).stdout == "no API tokens\n"
    raw_a = ok(run("tokens", "create", "--user", "alice", "--label", "laptop")).stdout.strip()
    ok(run("tokens", "create", "--user", "bob", "--admin", "--expires", "30d"))
    table = ok(run("tokens", "list")).stdout
    header, first, second = table.splitlines()
    assert header.split()[:5] == ["ID", "USER", "ADMIN", "LIVE", "STATUS"]
    assert first.split()[1:5] == ["alice", "no", "no", "ACTIVE"] and "laptop" in first
    assert second.split()[1:5] == ["bob", "yes", "no", "ACTIVE"]
    listed = json.loads(ok(run("tokens", "list", "--json")).stdout)
    assert [t["user_id"] for t in listed] == ["alice", "bob"]
    assert raw_a.split("_", 1)[1] not in table + json.dumps(listed)
    assert "argon2" not in table + json.dumps(listed)
    assert all("hash" not in t for t in listed)
    only_bob = json.loads(ok(run("tokens", "list", "--user", "bob", "--json")).stdout)
    assert [t["user_id"] for t in only_bob] == ["bob"]
    assert ok(run("tokens", "list", "--user", "carol")).stdout == "no API tokens for user carol\n"


def test_revoke_refuses_the_token_from_then_on(run: Any, sqlite_url: str) -> None:
    data = json.loads(ok(run("tokens", "create", "--user", "alice", "--json")).stdout)
    assert who(sqlite_url, data["token"]) is not None
    revoked = ok(run("tokens", "revoke", data["token_id"]))
    assert revoked.stdout == f"revoked token {data['token_id']} (user alice)\n"
    assert who(sqlite_url, data["token"]) is None
    again = ok(run("tokens", "revoke", data["token_id"]))
    assert again.stdout.startswith(f"token {data['token_id']} was already revoked at ")
    (listed,) = json.loads(ok(run("tokens", "list", "--json")).stdout)
    assert listed["status"] == "revoked"


@pytest.mark.parametrize("token_id", ["nosuchtoken1", "'; DROP TABLE api_tokens; --",
                                      "\x1b[31mred"])
def test_revoking_an_unknown_token_is_one_error(run: Any, token_id: str) -> None:
    ok(run("tokens", "create", "--user", "alice"))
    line = one_error(run("tokens", "revoke", token_id), 1)
    assert "no API token with id" in line and "\x1b" not in line
    (listed,) = json.loads(ok(run("tokens", "list", "--json")).stdout)
    assert listed["status"] == "active"


def test_audit_log_records_changes_but_never_the_secret(run: Any, tmp_path: Path) -> None:
    data = json.loads(ok(run("tokens", "create", "--user", "alice", "--json")).stdout)
    ok(run("tokens", "revoke", data["token_id"]))
    log = (tmp_path / "bagbot.audit.log").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    assert [e["event"] for e in events] == ["token_created", "token_revoked"]
    assert all(e["id"] == data["token_id"] for e in events)
    assert data["token"][len("bgt_") + 13:] not in log


def test_console_script_creates_and_lists(tmp_path: Path, sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))

    def bagbot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BAGBOT_SCRIPT), "--database-url", sqlite_url, *args],
                              capture_output=True, text=True, env=env, timeout=120)

    made = bagbot("tokens", "create", "--user", "alice", "--expires", "90m")
    assert made.returncode == 0, made.stderr
    assert TOKEN_LINE.fullmatch(made.stdout)
    identity = who(sqlite_url, made.stdout.strip())
    assert identity is not None and identity.user_id == "alice"
    listed = bagbot("tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["token_id"] == identity.token_id and entry["status"] == "active"
    refused = bagbot("tokens", "revoke", "nosuchtoken1")
    assert refused.returncode == 1 and refused.stderr.startswith("error: no API token")


def test_without_the_service_extra_says_what_to_install(tmp_path: Path, sqlite_url: str
                                                        ) -> None:
    """argon2-cffi comes with bagbot-core[service]: without it, one error line says so."""
    probe = ("import sys; sys.modules['argon2'] = None; from bagbot_core.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in environment.SETTINGS}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    done = subprocess.run(
        [sys.executable, "-c", probe, "--database-url", sqlite_url, "tokens", "create",
         "--user", "alice"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: API tokens need the service extra")
    assert "pip install 'bagbot-core[service]'" in line
