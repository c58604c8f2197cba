"""The declared plugin API (``bagbot_core.plugin``): complete, cheap, and the only door in.

What a plugin imports from bagbot is a promise: these tests keep the lazy export tables
honest (what ``__all__`` names, mypy sees and ``__getattr__`` loads are one list), keep the
old module paths pointing at the very same objects, and hold the bundled plugins to the
declared API so a layout change in the core cannot break them silently.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import bagbot_core.plugin as api
from bagbot_core.ccxt_support import CcxtConnector
from bagbot_core.connector import ConnectorSettings
from bagbot_core.errors import ExchangeUnavailableError
from bagbot_core.status import OrderStatus

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = [
    ROOT / "plugins" / "bagbot_binance" / "bagbot_binance",
    ROOT / "plugins" / "bagbot_coinbase" / "bagbot_coinbase",
]


# ---------------------------------------------------------------------------------------
# Importing the API stays cheap
# ---------------------------------------------------------------------------------------


def test_importing_the_plugin_api_imports_neither_ccxt_nor_sqlalchemy() -> None:
    # A fresh interpreter: this process has long imported both.
    code = (
        "import sys\n"
        "from bagbot_core.plugin import ConnectorSpec, RiskCheck, hookimpl\n"
        "import bagbot_core.plugin\n"
        "heavy = sorted(m for m in ('ccxt', 'sqlalchemy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_lazy_names_of_the_plugin_api_load_on_first_access_in_a_fresh_interpreter() -> None:
    code = (
        "import sys\n"
        "import bagbot_core.plugin as api\n"
        "from bagbot_core.ccxt_support import CcxtConnector\n"
        "from bagbot_core.history import History\n"
        "assert api.CcxtConnector is CcxtConnector and api.History is History\n"
        "assert 'ccxt' not in sys.modules\n"  # the ccxt base itself imports ccxt lazily
        "assert {'CcxtConnector', 'History'} <= set(dir(api))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# The lazy export tables are in step with what can be imported
# ---------------------------------------------------------------------------------------


def _import_table(module: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(eager, type_checking, lazy)``: name -> defining module, read from the source.

    *eager* are the module-level ``from bagbot_core... import``s, *type_checking* those under
    ``if TYPE_CHECKING:`` (what mypy sees), *lazy* the ``_EXPORTS``/``_LAZY`` literal (what
    ``__getattr__`` loads).
    """
    path = Path(importlib.import_module(module).__file__ or "")
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def imports(body: list[ast.stmt]) -> Iterator[tuple[str, str]]:
        for node in body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bagbot_core"):
                for alias in node.names:
                    yield alias.asname or alias.name, str(node.module)

    eager = dict(imports(tree.body))
    type_checking: dict[str, str] = {}
    lazy: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            type_checking.update(imports(node.body))
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("_EXPORTS", "_LAZY")):
            table = ast.literal_eval(node.value)
            lazy.update({name: where for where, names in table.items() for name in names})
    return eager, type_checking, lazy


@pytest.mark.parametrize("module", ["bagbot_core", "bagbot_core.plugin"])
def test_lazy_all_matches_what_the_module_can_import(module: str) -> None:
    mod = importlib.import_module(module)
    eager, type_checking, lazy = _import_table(module)
    exported: list[str] = list(mod.__all__)

    assert lazy, f"{module}: no lazy export table found"
    assert len(exported) == len(set(exported)), f"{module}.__all__ lists a name twice"
    # What mypy sees is what __getattr__ loads, from the same module.
    assert type_checking == lazy
    assert not set(eager) & set(lazy), "a name is both imported and lazily loaded"
    # __all__ is exactly the eager imports plus the lazy table: nothing missing, nothing extra.
    assert sorted(exported) == sorted({*eager, *lazy})
    for name in exported:
        value = getattr(mod, name)
        where = eager.get(name) or lazy[name]
        assert value is getattr(importlib.import_module(where), name), (module, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = mod.no_such_name


# ---------------------------------------------------------------------------------------
# Old paths keep working: the same objects
# ---------------------------------------------------------------------------------------

#: Every (module, name) a plugin written before ``bagbot_core.plugin`` could have imported.
OLD_PATHS: list[tuple[str, str]] = [
    ("bagbot_core", "hookimpl"),
    ("bagbot_core.markers", "hookimpl"),
    *[("bagbot_core.connector", name) for name in (
        "Capabilities", "Connector", "ConnectorFactory", "ConnectorSettings", "ConnectorSpec",
        "check_market_limits", "config_bool", "config_seconds", "config_secret",
        "http_base_url",
    )],
    *[("bagbot_core.connector_config", name) for name in (
        "ConfigKey", "check_connector_config", "declare_config",
    )],
    *[("bagbot_core.ccxt_support", name) for name in (
        "CCXT_CONFIG_KEYS", "CcxtConnector", "average_price", "classify_ccxt_error",
        "decimal_or_none", "exchange_message", "parse_retry_after", "plain", "positive_or_none",
        "scrub_secrets",
    )],
    *[("bagbot_core.endpoints", name) for name in (
        "check_endpoints", "endpoint_host", "endpoint_is_live", "is_loopback_host",
    )],
    *[("bagbot_core.params", name) for name in (
        "FORBIDDEN_PARAMS", "NO_PARAMS", "ParamKind", "ParamSpec", "declare_params",
        "is_forbidden", "params_to_send",
    )],
    *[("bagbot_core.risk", name) for name in (
        "RiskCheck", "RiskContext", "RiskLimits", "RiskViolation", "fmt",
    )],
    ("bagbot_core.risk_config", "Limit"),
    ("bagbot_core.risk_config", "RiskConfig"),
    ("bagbot_core.history", "ALL_USERS"),
    ("bagbot_core.history", "History"),
    *[("bagbot_core.orders", name) for name in (
        "ExchangeOrder", "Market", "OrderRequest", "OrderType", "Quote", "Side",
    )],
    ("bagbot_core.status", "OrderStatus"),
    ("bagbot_core.secrets", "Secret"),
    ("bagbot_core.money", "normalize"),
    ("bagbot_core.money", "round_to_step"),
    *[("bagbot_core.errors", name) for name in importlib.import_module("bagbot_core.errors")
      .__all__],
    *[("bagbot_core", name) for name in (
        "ALL_USERS", "Capabilities", "Connector", "ConnectorSettings", "ConnectorSpec",
        "ExchangeOrder", "History", "Limit", "Market", "OrderRequest", "OrderStatus",
        "OrderType", "Quote", "RiskCheck", "RiskConfig", "RiskContext", "RiskLimits",
        "RiskViolation", "Side", "BagbotError", "ExchangeRejectedError",
    )],
]


@pytest.mark.parametrize(("module", "name"), OLD_PATHS, ids=[".".join(p) for p in OLD_PATHS])
def test_old_import_path_is_the_declared_object(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is getattr(api, name)


def test_every_declared_name_has_an_old_path() -> None:
    # Nothing is new or moved in the API: every name is pinned above at its older path.
    assert {name for _, name in OLD_PATHS} == set(api.__all__)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("bagbot_core.testing.conformance",
         ("ConnectorConformance", "ExchangeHandle", "Harness", "Requirements", "unsupported")),
        ("bagbot_core.testing.fake_exchange",
         ("FakeBook", "FakeExchangeServer", "FakeMarket", "FakeOrder", "connector_settings")),
    ],
)
def test_testing_modules_keep_their_paths(module: str, names: tuple[str, ...]) -> None:
    mod = importlib.import_module(module)
    assert set(names) <= set(mod.__all__)
    for name in names:
        assert getattr(mod, name) is not None


# ---------------------------------------------------------------------------------------
# The bundled plugins use the declared API only
# ---------------------------------------------------------------------------------------


def _is_testing_module(path: Path) -> bool:
    # ``soak.py``: a connector's fault soak, test tooling built on bagbot_core.testing.soak
    return path.stem in ("testing", "soak") or "testing" in path.parent.parts


def _bagbot_imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every bagbot module ``path`` imports, anywhere in the file (functions and
    ``TYPE_CHECKING`` blocks included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            if module.split(".")[0] == "bagbot_core":
                yield node.lineno, module


def _allowed(module: str, testing: bool) -> bool:
    if module == "bagbot_core.plugin":
        return True
    return testing and (module == "bagbot_core.testing"
                        or module.startswith("bagbot_core.testing."))


def test_bundled_plugins_import_bagbot_only_through_the_plugin_api() -> None:
    files = sorted(f for package in PLUGIN_PACKAGES for f in package.glob("*.py"))
    assert {f.name for f in files} >= {"connector.py", "plugin.py", "testing.py"}
    offending = [
        f"{f.relative_to(ROOT)}:{line}: {module}"
        for f in files
        for line, module in _bagbot_imports(f)
        if not _allowed(module, _is_testing_module(f))
    ]
    assert offending == []


def test_the_import_rule_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The rule above must catch imports hidden in functions and TYPE_CHECKING blocks.
    source = tmp_path / "connector.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import bagbot_core.orders\n"
        "from bagbot_core.plugin import Side\n"
        "if TYPE_CHECKING:\n"
        "    from bagbot_core.history import History\n"
        "def f():\n"
        "    from bagbot_core.testing.fake_exchange import FakeBook\n",
        encoding="utf-8",
    )
    found = [m for _, m in _bagbot_imports(source) if not _allowed(m, testing=False)]
    assert found == ["bagbot_core.orders", "bagbot_core.history",
                     "bagbot_core.testing.fake_exchange"]
    assert _allowed("bagbot_core.testing.fake_exchange", testing=True)


# ---------------------------------------------------------------------------------------
# CcxtConnector.call/parse are public; _call/_parse stay for older subclasses
# ---------------------------------------------------------------------------------------

RAW_ORDER = {"id": "42", "status": "closed", "filled": 1, "average": "100.5", "amount": 1}


def _settings() -> ConnectorSettings:
    return ConnectorSettings(testnet=True, config={})


class _NewStyle(CcxtConnector):
    """Sends nothing: ``call`` answers one canned order (the exchange object is never built)."""

    name = "newstyle"

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        self.calls = 0

    async def call(self, call: Any) -> Any:
        self.calls += 1
        return dict(RAW_ORDER)


async def test_base_requests_go_through_a_public_call_override() -> None:
    connector = _NewStyle(_settings())
    order = await connector.fetch_order("BTC/USDT", external_id="42", client_order_id="c1")
    assert connector.calls == 1
    assert (order.status, order.filled_qty, order.avg_price) == (
        OrderStatus.FILLED, Decimal(1), Decimal("100.5"))
    # The alias reaches the override too.
    assert await connector._call(lambda ex: ex) == RAW_ORDER
    assert connector.calls == 2


async def test_base_requests_still_go_through_old_underscore_overrides() -> None:
    calls: list[str] = []

    class Old(CcxtConnector):
        name = "old"

        async def _call(self, call: Any) -> Any:
            calls.append("_call")
            return dict(RAW_ORDER)

        def _parse(self, raw: Any, symbol: str, client_order_id: str) -> Any:
            calls.append("_parse")
            return super()._parse(raw, symbol, client_order_id)

    order = await Old(_settings()).cancel_order("BTC/USDT", external_id="42",
                                                client_order_id="c1")
    assert order.external_id == "42"
    assert calls == ["_call", "_parse"]


def test_parse_is_public_and_an_unreadable_answer_is_unavailable_not_rejected() -> None:
    connector = CcxtConnector(_settings())
    assert connector.parse(dict(RAW_ORDER), "BTC/USDT", "c1").external_id == "42"
    with pytest.raises(ExchangeUnavailableError, match="unreadable order answer"):
        connector.parse({"status": "open"}, "BTC/USDT", "c1")
    with pytest.raises(ExchangeUnavailableError):
        connector._parse(None, "BTC/USDT", "c1")
