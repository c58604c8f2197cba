"""The config file's ``[settings]`` table: between the environment and the defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from bagbot_core.cli import cli
from bagbot_core.errors import ConfigurationError
from bagbot_core.models import Order
from bagbot_core.risk_config import RiskConfig
from bagbot_core.settings import FILE_KEYS, Settings, using_config_file

pytestmark = pytest.mark.usefixtures("cli_environment")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def env_for(path: Path, **extra: str) -> dict[str, str]:
    return {"BAGBOT_CONFIG": str(path), **extra}


#: Every key the file may set, a TOML value for it and the value Settings holds.
FILE_CASES: list[tuple[str, str, Any]] = [
    ("database_url", '"sqlite:////data/x.db"', "sqlite:////data/x.db"),
    ("log_level", '"WARNING"', "warning"),
    ("log_format", '"console"', "console"),
    ("log_file", '"/var/log/bagbot.log"', Path("/var/log/bagbot.log")),
    ("sqlite_busy_timeout_ms", "1234", 1234),
    ("sqlite_busy_timeout_ms", '"99"', 99),
    ("disable_plugins", '["paper", "extra"]', frozenset({"paper", "extra"})),
    ("disable_plugins", '"paper, extra"', frozenset({"paper", "extra"})),
    ("trace_hooks", "true", True),
    ("trace_hooks", '"yes"', True),
    ("group_commit", "false", False),
    ("group_commit", '"off"', False),
    ("user", '"desk-1"', "desk-1"),
    ("service_rate_limit", "50", 50),
    ("service_max_body", '"1024"', 1024),
    ("service_shutdown_grace", "5", 5),
    ("service_timeout", "3", 3),
    ("reconcile_interval", "0", 0),
]


def test_every_settable_key_is_covered() -> None:
    assert {case[0] for case in FILE_CASES} == set(FILE_KEYS)


@pytest.mark.parametrize(("key", "toml", "expected"), FILE_CASES)
def test_each_key_is_read_from_the_file(tmp_path: Path, key: str, toml: str,
                                        expected: Any) -> None:
    path = write(tmp_path / "bagbot.toml", f"[settings]\n{key} = {toml}\n")
    got = Settings.from_env(env_for(path))
    assert getattr(got, key) == expected
    assert got.sources[key] == f"file {path} [settings]"
    assert getattr(Settings.from_env(env_for(path), only=(key,)), key) == expected


def test_the_default_location_is_read(tmp_path: Path) -> None:
    write_to = tmp_path / "xdg" / "bagbot" / "bagbot.toml"
    write_to.parent.mkdir(parents=True)
    write(write_to, '[settings]\nuser = "from-default"\n')
    got = Settings.from_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert got.user == "from-default"
    assert got.sources["user"] == f"file {write_to} [settings]"


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml",
                 '[settings]\nlog_level = "debug"\nuser = "file-user"\ntrace_hooks = true\n')
    got = Settings.from_env(env_for(path, BAGBOT_LOG_LEVEL="error", BAGBOT_TRACE_HOOKS="0"))
    assert (got.log_level, got.trace_hooks, got.user) == ("error", False, "file-user")
    assert got.sources["log_level"] == "BAGBOT_LOG_LEVEL"
    assert got.sources["trace_hooks"] == "BAGBOT_TRACE_HOOKS"
    assert got.sources["user"] == f"file {path} [settings]"


@pytest.mark.parametrize(("key", "why"), [
    ("allow_live", "environment"), ("skip_risk_checks", "environment"),
    ("config", "cannot name itself")])
def test_refused_keys(tmp_path: Path, key: str, why: str) -> None:
    path = write(tmp_path / "bagbot.toml", f'[settings]\n{key} = "all"\n')
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env_for(path), only=("user",))
    message = str(info.value)
    assert str(path) in message and key in message and why in message
    # nor does the file reach the setting itself
    assert Settings.from_env(env_for(path), only=("allow_live",)).allow_live is False


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml", "[settings]\nlog_levl = \"debug\"\n")
    with pytest.raises(ConfigurationError, match="unknown key 'log_levl'") as info:
        Settings.from_env(env_for(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("line", "key", "shown"), [
    ('log_level = "loud"', "log_level", "loud"),
    ("sqlite_busy_timeout_ms = -5", "sqlite_busy_timeout_ms", "-5"),
    ('trace_hooks = "maybe"', "trace_hooks", "maybe"),
    ("user = 5", "user", None),
])
def test_bad_values_name_file_key_and_value(tmp_path: Path, line: str, key: str,
                                            shown: str | None) -> None:
    path = write(tmp_path / "bagbot.toml", f"[settings]\n{line}\n")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env_for(path))
    message = str(info.value)
    assert f"file {path} [settings] {key}" in message
    if shown is not None:
        assert shown in message


def test_a_bad_database_url_is_named_but_never_shown(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml",  # a NUL (TOML escape): no driver can pass it on
                 '[settings]\ndatabase_url = "postgresql+psycopg://bob:s3cr3t-pw@db/x\\u0000"\n')
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env_for(path))
    message = str(info.value)
    assert f"file {path} [settings] database_url" in message
    assert "s3cr3t-pw" not in message and "bob" not in message


def test_a_database_url_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml",
                 '[settings]\ndatabase_url = ["postgresql://bob:s3cr3t-pw@db/x"]\n')
    with pytest.raises(ConfigurationError, match="database_url must be a string") as info:
        Settings.from_env(env_for(path))
    assert "s3cr3t-pw" not in str(info.value)


def test_the_risk_reader_accepts_the_settings_table(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml",
                 '[settings]\nuser = "u"\n[risk]\nmax_order_qty = "3"\n')
    config = RiskConfig.load(path, environ={})
    assert str(config.limit("max_order_qty", user_id=None, connector=None,
                            symbol=None).value) == "3"


def test_no_file_is_todays_behaviour(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "nothing-here")}
    assert Settings.from_env(env) == Settings()
    assert Settings.from_env(env).sources == {}


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path / "bagbot.toml", '[settings]\nuser = "first"\n')
    assert Settings.from_env(env_for(path)).user == "first"
    write(path, '[settings]\nuser = "second-one"\n')  # another size: seen even in one tick
    assert Settings.from_env(env_for(path)).user == "second-one"


def test_using_config_file_wins_over_bagbot_config(tmp_path: Path) -> None:
    named = write(tmp_path / "named.toml", '[settings]\nuser = "named"\n')
    chosen = write(tmp_path / "chosen.toml", '[settings]\nuser = "chosen"\n')
    with using_config_file(chosen):
        assert Settings.from_env(env_for(named)).user == "chosen"
    assert Settings.from_env(env_for(named)).user == "named"


def _orders_in(db_file: Path) -> int:
    if not db_file.exists():
        return 0
    engine = create_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(Order)).scalar_one())
    finally:
        engine.dispose()


def test_cli_config_routes_into_the_files_database(tmp_path: Path) -> None:
    from_file = tmp_path / "from-file.db"
    path = write(tmp_path / "bagbot.toml", f'[settings]\ndatabase_url = "sqlite:///{from_file}"\n')
    default = tmp_path / "xdg" / "bagbot" / "bagbot.db"  # cli_environment's XDG_DATA_HOME
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(path), "route", "BTC/USDT", "buy", "0.001",
                                 "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["status"]
    assert _orders_in(from_file) == 1 and _orders_in(default) == 0
    # --config is for that command only
    result = runner.invoke(cli, ["route", "BTC/USDT", "buy", "0.001", "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert _orders_in(from_file) == 1 and _orders_in(default) == 1
