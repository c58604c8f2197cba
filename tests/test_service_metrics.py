"""Prometheus metrics (bagbot_core.service.metrics): orders routed through a real router
with the metrics plugin installed, read back from the exposition text; and several
processes writing one PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import (
    ExchangeRejectedError,
    OrderStatusUnknownError,
    OrderValidationError,
    RiskCheckError,
    UnknownConnectorError,
)
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskLimits
from bagbot_core.router import Router
from bagbot_core.service import metrics
from bagbot_core.trading_state import scope_states
from tests.scripted import ScriptedExchange, scripted_plugin

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes | None = None) -> Samples:
    body = metrics.render()[0] if text is None else text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(data: Samples, name: str, **labels: str) -> float:
    return data.get((name, frozenset(labels.items())), 0.0)


class Delta:
    """What changed in the exposition text since it was made (metrics are process-wide)."""

    def __init__(self) -> None:
        self.before = samples()

    def __call__(self, name: str, **labels: str) -> float:
        return value(samples(), name, **labels) - value(self.before, name, **labels)


@pytest.fixture
def exchange() -> ScriptedExchange:
    return ScriptedExchange()


@pytest.fixture
async def router(exchange: ScriptedExchange) -> AsyncIterator[Router]:
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("scripted", scripted_plugin(exchange))])
    metrics.install(registry)
    r = Router(registry, limits=RiskLimits(max_order_qty=Decimal(1)), allow_live=False,
               connector_config={"paper": {"account": uuid.uuid4().hex[:12]}})
    yield r
    await r.aclose()


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Session]:
    session = session_factory(get_engine(sqlite_url))()
    yield session
    session.close()


def market(amount: str = "0.01", side: str = "buy") -> dict[str, str]:
    return {"symbol": "BTC/USDT", "side": side, "type": "market", "amount": amount}


def limit(amount: str = "0.01") -> dict[str, str]:
    return {**market(amount), "type": "limit", "price": "40000"}


async def test_routes_on_paper_are_counted_and_timed(router: Router, db: Session) -> None:
    delta = Delta()
    filled = await router.route_order("paper", market(), db, "alice")
    resting = await router.route_order("paper", limit(), db, "alice")
    with pytest.raises(RiskCheckError):
        await router.route_order("paper", market("5"), db, "alice")
    with pytest.raises(OrderValidationError):
        await router.route_order("paper", {"symbol": "BTC/USDT", "side": "buy"}, db, "alice")
    assert (filled.status, resting.status) == ("filled", "open")
    await router.sync_order(db, resting)
    await router.cancel_order(db, resting)

    assert delta("bagbot_orders_total", connector="paper", status="filled") == 1
    assert delta("bagbot_orders_total", connector="paper", status="open") == 1
    assert delta("bagbot_orders_total", connector="paper", status="rejected") == 2
    assert delta("bagbot_risk_refusals_total", check="max_quantity") == 1
    # Timed: the two placed and the refused one; not the payload that never got a clock.
    assert delta("bagbot_route_seconds_count", connector="paper") == 3
    assert delta("bagbot_route_seconds_sum", connector="paper") > 0
    for operation in ("create_order", "fetch_order", "cancel_order"):
        expected = 2 if operation == "create_order" else 1
        assert delta("bagbot_exchange_request_seconds_count", connector="paper",
                     operation=operation) == expected
        assert delta("bagbot_exchange_errors_total", connector="paper",
                     operation=operation) == 0
    assert delta("bagbot_order_transitions_total", connector="paper", old="pending",
                 new="filled") == 1
    assert delta("bagbot_order_transitions_total", connector="paper", old="open",
                 new="canceled") == 1


async def test_exchange_errors_are_requests_without_an_answer(
        router: Router, db: Session, exchange: ScriptedExchange) -> None:
    delta = Delta()
    exchange.script("timeout_before_accept", "crash", "reject")
    with pytest.raises(OrderStatusUnknownError):
        await router.route_order("scripted", market(), db, "alice")
    with pytest.raises(OrderStatusUnknownError):
        await router.route_order("scripted", market(), db, "alice")
    with pytest.raises(ExchangeRejectedError):  # a refusal is an answer: timed, not an error
        await router.route_order("scripted", market(), db, "alice")
    assert delta("bagbot_exchange_request_seconds_count", connector="scripted",
                 operation="create_order") == 3
    assert delta("bagbot_exchange_errors_total", connector="scripted",
                 operation="create_order") == 2
    assert delta("bagbot_orders_total", connector="scripted", status="unknown") == 2
    assert delta("bagbot_orders_total", connector="scripted", status="rejected") == 1
    # Reconcile asks for both unknown rows; "not found" is an answer too.
    await router.reconcile(db, "scripted")
    assert delta("bagbot_exchange_request_seconds_count", connector="scripted",
                 operation="fetch_order") == 2
    assert delta("bagbot_exchange_errors_total", connector="scripted",
                 operation="fetch_order") == 0


async def test_labels_carry_no_user_id_and_no_unknown_connector(router: Router,
                                                               db: Session) -> None:
    delta = Delta()
    user = f"user-{uuid.uuid4().hex}"
    bogus = f"nosuch{uuid.uuid4().hex[:8]}"
    await router.route_order("paper", market(), db, user)
    with pytest.raises(UnknownConnectorError):
        await router.route_order(bogus, market(), db, user)
    with pytest.raises(OrderValidationError):
        await router.route_order("paper", market(), db, "")  # no row: status "none"
    text = metrics.render()[0].decode()
    assert user not in text and bogus not in text
    assert delta("bagbot_orders_total", connector="other", status="rejected") == 1
    assert delta("bagbot_orders_total", connector="other", status="none") == 1


async def test_connectors_stay_what_their_plugin_made(router: Router) -> None:
    from bagbot_core.paper.connector import PaperConnector

    connector = await router.get_connector("paper")
    assert type(connector) is PaperConnector
    assert "create_order" in vars(connector)  # timed on the instance, not the class


def test_install_is_idempotent_and_lists_no_extra_plugin() -> None:
    registry = PluginRegistry(disabled=(), load_entrypoints=False)
    before = [info.provenance.plugin for info in registry.plugin_infos()]
    plugin = metrics.install(registry)
    assert metrics.install(registry) is plugin
    assert [info.provenance.plugin for info in registry.plugin_infos()] == before


def test_http_requests_by_route_template_and_method() -> None:
    delta = Delta()
    metrics.observe_http("/v1/orders/{order_id}", "get", 200, 0.012)
    metrics.observe_http("/v1/orders/{order_id}", "GET", 404, 0.001)
    metrics.observe_http("/v1/orders", "BREW", 405, 0.001)
    metrics.observe_http("x" * 500, "POST", 404, 0.001)
    assert delta("bagbot_http_requests_total", route="/v1/orders/{order_id}", method="GET",
                 code="200") == 1
    assert delta("bagbot_http_requests_total", route="/v1/orders/{order_id}", method="GET",
                 code="404") == 1
    assert delta("bagbot_http_requests_total", route="/v1/orders", method="other",
                 code="405") == 1
    assert delta("bagbot_http_requests_total", route="other", method="POST", code="404") == 1
    assert delta("bagbot_http_request_seconds_count", route="/v1/orders/{order_id}",
                 method="GET") == 2


async def test_gauges_unknown_orders_and_trading_state(router: Router, db: Session) -> None:
    metrics.set_unknown_orders(7)
    assert value(samples(), "bagbot_unknown_orders") == 7
    await router.halt(db, reason="incident", who="ops")
    await router.reduce(db, reason="review", who="ops", connector="paper")
    await router.halt(db, reason="margin", who="ops", user_id="carol-private")
    await router.reduce(db, reason="check", who="ops", user_id="dave", connector="paper")
    metrics.set_trading_state(scope_states(db))
    data = samples()
    assert value(data, "bagbot_trading_state", scope="global") == 2
    assert value(data, "bagbot_trading_state", scope="connector:paper") == 1
    assert value(data, "bagbot_trading_state", scope="user") == 2
    assert "carol-private" not in metrics.render()[0].decode()
    await router.resume(db, reason="ok", who="ops")
    await router.resume(db, reason="ok", who="ops", user_id="carol-private")
    metrics.set_trading_state(scope_states(db))
    data = samples()
    assert value(data, "bagbot_trading_state", scope="global") == 0
    assert value(data, "bagbot_trading_state", scope="user") == 1


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from bagbot_core.db import get_engine, session_factory
    from bagbot_core.plugins import PluginRegistry
    from bagbot_core.router import Router
    from bagbot_core.service import metrics

    async def main(url, gauge):
        registry = PluginRegistry(disabled=(), load_entrypoints=False)
        metrics.install(registry)
        router = Router(registry, allow_live=False)
        with session_factory(get_engine(url))() as db:
            order = await router.route_order("paper", {"symbol": "BTC/USDT", "side": "buy",
                                             "type": "market", "amount": "0.01"}, db, "u")
            assert order.status == "filled", order.status
        await router.aclose()
        metrics.observe_http("/v1/orders", "POST", 201, 0.05)
        metrics.set_unknown_orders(int(gauge))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def test_processes_share_one_multiprocess_directory(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, metrics.ENV_MULTIPROC_DIR: str(shared), "BAGBOT_LOG_LEVEL": "error"}
    children = [subprocess.Popen(
        [sys.executable, "-c", _CHILD, f"sqlite:///{tmp_path}/worker{i}.db", str(gauge)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, gauge in enumerate((3, 5))]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, out + err
    assert len({p.name for p in shared.iterdir()}) >= 2  # each process wrote its own files
    monkeypatch.setenv(metrics.ENV_MULTIPROC_DIR, str(shared))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    merged = samples(body)
    assert value(merged, "bagbot_orders_total", connector="paper", status="filled") == 2
    assert value(merged, "bagbot_route_seconds_count", connector="paper") == 2
    assert value(merged, "bagbot_exchange_request_seconds_count", connector="paper",
                 operation="create_order") == 2
    assert value(merged, "bagbot_http_requests_total", route="/v1/orders", method="POST",
                 code="201") == 2
    # A gauge is the latest value one process set, never the processes' sum.
    assert value(merged, "bagbot_unknown_orders") in (3, 5)
