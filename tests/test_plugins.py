"""Plugin discovery: built-ins, real installed distributions, disabling, loud errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bagbot_core import hookimpl
from bagbot_core.connector import ConnectorSpec
from bagbot_core.errors import DuplicateNameError, PluginError, PluginLoadError
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskCheck

ROOT = Path(__file__).resolve().parent.parent

ACME_PLUGIN = '''
"""A third-party bagbot plugin: one connector and one risk check."""
import time
from decimal import Decimal
from bagbot_core import hookimpl
from bagbot_core.connector import Connector, ConnectorSpec
from bagbot_core.orders import ExchangeOrder, Market, Quote
from bagbot_core.risk import RiskCheck, RiskViolation
from bagbot_core.status import OrderStatus


class AcmeConnector(Connector):
    name = "acme"

    async def load_markets(self, *, reload=False):
        return {"BTC/USDT": Market("BTC/USDT", "BTC", "USDT")}

    async def fetch_quote(self, symbol):
        return Quote(symbol, Decimal("100"), Decimal("101"), time.monotonic())

    async def create_order(self, order, client_order_id):
        return ExchangeOrder("acme-1", client_order_id, OrderStatus.FILLED, order.symbol,
                             filled_qty=order.amount, avg_price=Decimal("101"),
                             raw_status="DONE")

    async def fetch_order(self, symbol, *, external_id, client_order_id):
        raise NotImplementedError

    async def cancel_order(self, symbol, *, external_id, client_order_id):
        raise NotImplementedError


def no_fridays(ctx):
    if ctx.order.amount == Decimal("0.13"):
        return RiskViolation("acme_unlucky", "0.13 is unlucky", limit="!= 0.13", actual="0.13")
    return None


@hookimpl
def bagbot_add_connectors():
    return [ConnectorSpec("acme", lambda settings: AcmeConnector(), "Acme exchange")]


@hookimpl
def bagbot_add_risk_checks():
    return [RiskCheck("acme_unlucky", no_fridays, "refuses 0.13")]
'''


def build_and_install(tmp: Path, dist: str, module: str, source: str, ep: str) -> Path:
    """Write a real distribution and pip-install it into its own target directory."""
    project = tmp / f"src-{dist}"
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.bagbot]
        {ep} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    target = tmp / f"site-{dist}"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(project)],
        check=True, capture_output=True, timeout=300,
    )
    return target


def run_with(site: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env,
               "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_and_install(tmp_path_factory.mktemp("acme"), "acme-bagbot", "acme_bagbot",
                             ACME_PLUGIN, "acme")


def test_installed_third_party_plugin_is_discovered_and_composed(acme_site: Path,
                                                                 tmp_path: Path) -> None:
    result = run_with(acme_site, f"""
        import asyncio, json
        from bagbot_core import Router, PluginRegistry, RiskCheckError
        from bagbot_core.db import get_engine, session_factory

        async def main():
            registry = PluginRegistry()
            infos = {{i.provenance.plugin: i for i in registry.plugin_infos()}}
            acme = infos["acme"]
            router = Router(registry)
            db = session_factory(get_engine("sqlite:///{tmp_path}/t.db"))()
            order = await router.route_order("acme", {{"symbol": "BTC/USDT", "side": "buy",
                "type": "market", "amount": "0.5"}}, db, "u")
            try:
                await router.route_order("acme", {{"symbol": "BTC/USDT", "side": "buy",
                    "type": "market", "amount": "0.13"}}, db, "u")
                refused = None
            except RiskCheckError as exc:
                refused = [v.check for v in exc.violations]
            print(json.dumps({{"dist": acme.provenance.distribution,
                "version": acme.provenance.version, "connectors": acme.connectors,
                "checks": acme.risk_checks, "status": order.status,
                "external_id": order.external_id, "refused": refused,
                "builtin": sorted(infos)}}))
            await router.aclose()

        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["dist"] == "acme-bagbot" and out["version"] == "1.2.3"
    assert out["connectors"] == ["acme"] and out["checks"] == ["acme_unlucky"]
    assert out["status"] == "filled" and out["external_id"] == "acme-1"
    assert out["refused"] == ["acme_unlucky"]
    assert {"acme", "paper", "risk"} <= set(out["builtin"])


def test_plugin_can_be_disabled_from_the_environment(acme_site: Path) -> None:
    code = """
        from bagbot_core import PluginRegistry
        print(sorted(PluginRegistry().connectors()))
    """
    assert "acme" in run_with(acme_site, code).stdout
    disabled = run_with(acme_site, code, BAGBOT_DISABLE_PLUGINS="acme, paper")
    assert disabled.returncode == 0, disabled.stderr
    remaining = disabled.stdout.strip()
    assert "acme" not in remaining and "paper" not in remaining


def test_broken_plugin_names_its_distribution_and_cause(tmp_path: Path) -> None:
    site = build_and_install(tmp_path, "broken-bagbot", "broken_bagbot",
                             "import no_such_module_anywhere\n", "broken")
    result = run_with(site, """
        from bagbot_core import PluginRegistry
        PluginRegistry()
    """)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "PluginLoadError" in last and "broken-bagbot 1.2.3" in last
    assert "No module named 'no_such_module_anywhere'" in last


def test_duplicate_connector_names_both_distributions(tmp_path: Path) -> None:
    source = """
        from bagbot_core import hookimpl
        from bagbot_core.connector import ConnectorSpec

        @hookimpl
        def bagbot_add_connectors():
            return [ConnectorSpec("paper", lambda s: None)]
    """
    site = build_and_install(tmp_path, "paper-clone", "paper_clone", source, "clone")
    result = run_with(site, """
        from bagbot_core import PluginRegistry
        PluginRegistry().connectors()
    """)
    last = result.stderr.strip().splitlines()[-1]
    assert "DuplicateNameError" in last
    assert "bagbot-core" in last and "paper-clone 1.2.3" in last


def test_builtins_register_like_any_plugin() -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    infos = {i.provenance.plugin: i for i in registry.plugin_infos()}
    assert infos["paper"].connectors == ("paper",)
    assert infos["paper"].provenance.distribution == "bagbot-core"
    assert infos["risk"].risk_checks == (
        "max_quantity", "max_value", "min_quantity", "valid_side", "valid_symbol",
        "price_collar", "duplicate_order", "order_rate", "max_open_orders", "daily_notional",
        "max_position", "trading_state")


def test_disable_and_unregister_from_code() -> None:
    registry = PluginRegistry(disabled={"paper"}, load_entrypoints=False)
    assert "paper" not in registry.connectors() and registry.risk_checks()
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    registry.unregister("paper")
    assert "paper" not in registry.connectors()


def test_listing_plugins_does_not_import_ccxt() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from bagbot_core import PluginRegistry; "
         "r = PluginRegistry(); r.plugin_infos(); print(sorted(r.connectors())); "
         "assert 'ccxt' not in sys.modules, 'ccxt imported'"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def bagbot_add_conectors(self) -> list[ConnectorSpec]:
            return []

    with pytest.raises(PluginLoadError, match="bagbot_add_conectors"):
        PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("typo", Typo())])


def test_wrong_return_type_names_the_plugin() -> None:
    class Wrong:
        @hookimpl
        def bagbot_add_risk_checks(self) -> list[str]:
            return ["not a check"]

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("wrong", Wrong())])
    with pytest.raises(PluginError, match=r"'wrong'.*expected RiskCheck"):
        registry.risk_checks()


def test_duplicate_risk_check_name_in_process() -> None:
    class Again:
        @hookimpl
        def bagbot_add_risk_checks(self) -> list[RiskCheck]:
            return [RiskCheck("max_quantity", lambda c: None)]

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("again", Again())])
    with pytest.raises(DuplicateNameError, match=r"max_quantity") as raised:
        registry.risk_checks()
    assert "bagbot-core" in str(raised.value) and "'again'" in str(raised.value)


def test_a_failing_notification_hook_does_not_fail_routing() -> None:
    class Loud:
        @hookimpl
        def bagbot_before_route(self) -> None:
            raise RuntimeError("pager down")

    registry = PluginRegistry(disabled=(), load_entrypoints=False, plugins=[("loud", Loud())])
    failures = registry.notify("bagbot_before_route", connector="c", user_id="u", order=None)
    assert [(name, str(exc)) for name, exc in failures] == [("loud", "pager down")]
