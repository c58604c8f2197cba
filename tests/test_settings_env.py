"""One typed settings object for every bagbot environment variable (bagbot_core.settings)."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest

import bagbot_core
from bagbot_core.errors import ConfigurationError
from bagbot_core.risk import RiskLimits
from bagbot_core.risk_config import RiskConfig
from bagbot_core.settings import SPECS, Settings, markdown_table

ROOT = Path(__file__).resolve().parents[1]
BAD = {"bool": "ture", "decimal": "1\u0660", "int": "3s", "path": "a\x00b", "text": "a\x00b",
       "choice": "loud"}


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind in BAD], ids=lambda s: s.name)
def test_every_bad_value_names_its_variable(spec: object) -> None:
    for name in (spec.name, spec.alias):  # type: ignore[attr-defined]
        if name is not None:
            with pytest.raises(ConfigurationError, match=name):
                Settings.from_env({name: BAD[spec.kind]})  # type: ignore[attr-defined]


def test_a_database_url_error_does_not_show_the_url() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"BAGBOT_DATABASE_URL": "postgresql://u:hunter2@h/\x00"})
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(Settings.from_env({"BAGBOT_DATABASE_URL": "x://u:hunter2@h"}))


def test_prefixed_names_and_seed_aliases() -> None:
    assert RiskLimits.from_env({"BAGBOT_MAX_ORDER_QTY": "3"}).max_order_qty == Decimal("3")
    assert RiskLimits.from_env({"MAX_ORDER_QTY": "3"}).max_order_qty == Decimal("3")
    both = Settings.from_env({"BAGBOT_MIN_ORDER_QTY": "0.5", "MIN_ORDER_QTY": "0.50"})
    assert both.min_order_qty == Decimal("0.5")
    assert both.sources["min_order_qty"] == "BAGBOT_MIN_ORDER_QTY"
    env = {"BAGBOT_MAX_ORDER_QTY": "2", "MAX_ORDER_QTY": "3", "XDG_CONFIG_HOME": "/nonexistent"}
    with pytest.raises(ConfigurationError, match=r"BAGBOT_MAX_ORDER_QTY.*MAX_ORDER_QTY.*disagree"):
        RiskLimits.from_env(env)
    with pytest.raises(ConfigurationError, match="disagree"):
        RiskConfig.load(environ=env)
    env = {"BAGBOT_MAX_ORDER_VALUE_USD": "7", "XDG_CONFIG_HOME": "/nonexistent"}
    limit = RiskConfig.load(environ=env).limit("max_order_value_usd", user_id=None,
                                                connector=None, symbol=None)
    assert (limit.value, limit.source) == (Decimal("7"), "env BAGBOT_MAX_ORDER_VALUE_USD")


def test_typed_values_and_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    got = Settings.from_env({"BAGBOT_ALLOW_LIVE": " Yes", "BAGBOT_DISABLE_PLUGINS": "a, ,b",
                             "BAGBOT_LOG_LEVEL": "DEBUG", "BAGBOT_SQLITE_BUSY_TIMEOUT_MS": "5",
                             "BAGBOT_CONFIG": " ", "BAGBOT_USER": "alice"})
    assert (got.allow_live, got.disable_plugins, got.log_level) == (True, {"a", "b"}, "debug")
    assert (got.sqlite_busy_timeout_ms, got.config_path, got.user) == (5, None, "alice")


def test_only_reads_the_fields_asked_for() -> None:
    env = {"BAGBOT_ALLOW_LIVE": "1", "BAGBOT_LOG_LEVEL": "loud"}
    assert Settings.from_env(env, only=("allow_live",)).allow_live is True


def test_the_readme_table_is_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "regenerate it: python -m bagbot_core.settings"
    fields = {a.name for a in Settings.__attrs_attrs__} - {"sources"}  # type: ignore[attr-defined]
    assert fields == {spec.field for spec in SPECS}


#: Reads of os.environ left outside bagbot_core/settings.py, and why: none is a bagbot setting.
EXCEPTIONS = {
    ("connector.py", "config_secret"): "credentials: per-connector names, kept out of Settings",
    ("db.py", "default_database_path"): "XDG_DATA_HOME",
    ("risk_config.py", "default_config_path"): "XDG_CONFIG_HOME, HOME",
    ("risk_config.py", "load"): "passes the environment on to Settings and the default path",
    ("cli.py", "_default_user"): "USER, after BAGBOT_USER",
    ("cli_state.py", "_who"): "USER",
    ("cli_serve.py", "_worker_environment"): "writes: hands the database URL, the config file "
                                             "and the audit log to the worker processes",
    ("cli_serve.py", "_metrics_directory"): "writes PROMETHEUS_MULTIPROC_DIR for the workers",
    ("service/metrics.py", "multiprocess_dir"): "PROMETHEUS_MULTIPROC_DIR, prometheus_client's",
}


def test_no_core_module_reads_the_environment_outside_settings() -> None:
    package = Path(bagbot_core.__file__).parent
    found = set()
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] == "testing" or rel.name == "settings.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}
                        and isinstance(node.value, ast.Name) and node.value.id == "os"):
                    found.add((rel.as_posix(), func.name))
    assert found <= set(EXCEPTIONS), sorted(found - set(EXCEPTIONS))
