"""route_order end to end: real router, real database (SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import route_order
from bagbot_core.errors import (
    BagbotError,
    ExchangeRejectedError,
    LiveTradingNotAllowedError,
    OrderStatusUnknownError,
    OrderValidationError,
    RiskCheckError,
    UnknownConnectorError,
)
from bagbot_core.models import Order
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from tests.scripted import ScriptedExchange

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.5"}


def count(db: Session) -> int:
    n = db.scalar(select(func.count()).select_from(Order))
    db.commit()
    return int(n or 0)


async def test_market_buy_is_filled_and_persisted(router: Router, db: Session,
                                                  exchange: ScriptedExchange) -> None:
    order = await route_order("scripted", MARKET_BUY, db, user_id="trader123")
    assert order.status == OrderStatus.FILLED
    assert order.external_id == "1000"
    assert order.filled_qty == Decimal("0.5")
    assert order.avg_price == Decimal("50010")  # bought at the ask
    assert order.client_order_id in exchange.placed
    db.expire_all()
    stored = db.get(Order, order.id)
    assert stored is not None and stored.qty == Decimal("0.5") and stored.testnet is True
    assert stored.created_at.tzinfo is not None
    assert count(db) == 1


async def test_limit_order_rests_open(router: Router, db: Session) -> None:
    order = await route_order("scripted", {"symbol": "BTC/USDT", "side": "sell",
                                           "type": "limit", "amount": "1",
                                           "price": "60000.004"}, db, "u")
    assert order.status == OrderStatus.OPEN
    assert order.price == Decimal("60000.01")  # a sell is rounded up to the tick, never down
    assert order.filled_qty == 0


async def test_amount_is_rounded_down_to_the_market_step(router: Router, db: Session,
                                                         exchange: ScriptedExchange) -> None:
    order = await route_order("scripted", {**MARKET_BUY, "amount": "0.123456789"}, db, "u")
    sent = exchange.placed[order.client_order_id].request
    assert sent.amount == Decimal("0.12345") == order.qty


async def test_risk_rejection_leaves_rejected_row_with_every_violation(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    with pytest.raises(RiskCheckError) as info:
        await route_order("scripted", {**MARKET_BUY, "amount": "11"}, db, "u")
    checks = {v.check for v in info.value.violations}
    assert checks == {"max_quantity", "max_value"}
    order = info.value.order
    assert order.status == OrderStatus.REJECTED
    db.expire_all()
    row = db.get(Order, order.id)
    assert row is not None and row.status == "rejected"
    assert "max_quantity" in (row.reason or "")
    violations = {v["check"]: v for v in row.details["violations"]}
    assert violations["max_quantity"]["limit"] == "10"
    assert violations["max_quantity"]["actual"] == "11"
    assert exchange.create_calls == 0
    assert count(db) == 1


async def test_exchange_rejection_is_recorded_and_reraised(router: Router, db: Session,
                                                           exchange: ScriptedExchange) -> None:
    exchange.script("reject")
    with pytest.raises(ExchangeRejectedError, match="insufficient balance") as info:
        await route_order("scripted", MARKET_BUY, db, "u")
    assert info.value.order.status == OrderStatus.REJECTED
    assert "insufficient balance" in info.value.order.reason
    assert count(db) == 1


async def test_rejected_status_in_a_normal_answer_raises(router: Router, db: Session,
                                                         exchange: ScriptedExchange) -> None:
    exchange.script("reject_status")
    with pytest.raises(ExchangeRejectedError, match="post-only"):
        await route_order("scripted", {**MARKET_BUY, "type": "limit", "price": "1000"}, db, "u")
    assert count(db) == 1


async def test_timeout_after_accept_is_unknown_not_rejected(router: Router, db: Session,
                                                            exchange: ScriptedExchange) -> None:
    exchange.script("timeout_after_accept")
    with pytest.raises(OrderStatusUnknownError, match="do not resend") as info:
        await route_order("scripted", MARKET_BUY, db, "u")
    order = info.value.order
    assert order.status == OrderStatus.UNKNOWN
    assert exchange.create_calls == 1  # never resent
    changed = await router.reconcile(db, "scripted")
    assert [o.id for o in changed] == [order.id]
    assert order.status == OrderStatus.FILLED and order.external_id == "1000"
    assert len(exchange.placed) == 1 and count(db) == 1


async def test_connector_crash_after_send_is_unknown(router: Router, db: Session,
                                                     exchange: ScriptedExchange) -> None:
    exchange.script("crash")
    with pytest.raises(OrderStatusUnknownError) as info:
        await route_order("scripted", MARKET_BUY, db, "u")
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.order.status == OrderStatus.UNKNOWN


async def test_cancelled_task_leaves_unknown_row(router: Router, db: Session,
                                                 exchange: ScriptedExchange) -> None:
    exchange.script("hang")
    task = asyncio.create_task(route_order("scripted", MARKET_BUY, db, "u"))
    while exchange.create_calls == 0:  # noqa: ASYNC110 - polling the exchange double
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = db.scalars(select(Order)).all()
    assert [r.status for r in rows] == ["unknown"]


async def test_unknown_never_reaching_the_exchange_is_rejected_by_reconcile(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    exchange.script("timeout_before_accept")
    with pytest.raises(OrderStatusUnknownError):
        await route_order("scripted", MARKET_BUY, db, "u")
    # Too young: it could still be in flight, so reconcile leaves it alone by default.
    assert await router.reconcile(db, "scripted") == []
    import datetime as dt

    changed = await router.reconcile(db, "scripted", grace=dt.timedelta(0))
    assert changed[0].status == OrderStatus.REJECTED
    assert "never reached the exchange" in (changed[0].reason or "")


async def test_validation_error_leaves_rejected_row(router: Router, db: Session,
                                                    exchange: ScriptedExchange) -> None:
    with pytest.raises(OrderValidationError, match="amount must be finite") as info:
        await route_order("scripted", {**MARKET_BUY, "amount": "NaN"}, db, "u")
    row = info.value.order
    assert row.status == "rejected" and row.qty == 0 and row.symbol == "BTC/USDT"
    assert row.details["stage"] == "validation"
    assert exchange.create_calls == 0 and count(db) == 1


async def test_missing_user_id_is_refused_without_a_row(router: Router, db: Session) -> None:
    with pytest.raises(OrderValidationError, match="user_id"):
        await route_order("scripted", MARKET_BUY, db, "")
    assert count(db) == 0


async def test_unknown_connector_lists_the_available_ones(router: Router, db: Session) -> None:
    with pytest.raises(UnknownConnectorError, match="available: paper, scripted"):
        await route_order("kraken", MARKET_BUY, db, "u")
    assert count(db) == 1


async def test_live_needs_the_environment_opt_in(registry: object, db: Session,
                                                 exchange: ScriptedExchange,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAGBOT_ALLOW_LIVE", raising=False)
    router = Router(registry)  # type: ignore[arg-type]
    with pytest.raises(LiveTradingNotAllowedError, match="BAGBOT_ALLOW_LIVE=1"):
        await router.route_order("scripted", MARKET_BUY, db, "u", testnet=False)
    assert exchange.factory_calls == 0 and exchange.create_calls == 0
    monkeypatch.setenv("BAGBOT_ALLOW_LIVE", "1")
    order = await router.route_order("scripted", MARKET_BUY, db, "u", testnet=False)
    assert order.testnet is False and order.status == "filled"
    await router.aclose()


async def test_connector_is_created_once_and_reused(router: Router, db: Session,
                                                    exchange: ScriptedExchange) -> None:
    for _ in range(5):
        await route_order("scripted", MARKET_BUY, db, "u")
    assert exchange.factory_calls == 1
    await route_order("scripted", MARKET_BUY, db, "u", testnet=True)
    assert exchange.factory_calls == 1


async def test_idempotency_key_returns_the_same_order(router: Router, db: Session,
                                                      exchange: ScriptedExchange) -> None:
    payload = {**MARKET_BUY, "client_order_id": "my-key-1"}
    first = await route_order("scripted", payload, db, "u")
    second = await route_order("scripted", payload, db, "u")
    assert first.id == second.id and first.client_order_id == "my-key-1"
    assert exchange.create_calls == 1 and count(db) == 1


async def test_idempotency_key_with_other_parameters_is_refused(router: Router,
                                                                db: Session) -> None:
    await route_order("scripted", {**MARKET_BUY, "client_order_id": "k2"}, db, "u")
    with pytest.raises(OrderValidationError, match="already used"):
        await route_order("scripted", {**MARKET_BUY, "side": "sell", "client_order_id": "k2"},
                          db, "u")


async def test_concurrent_calls_with_one_key_place_one_order(router: Router, db_url: str,
                                                             exchange: ScriptedExchange) -> None:
    from bagbot_core.db import get_engine, session_factory

    factory = session_factory(get_engine(db_url))
    payload = {**MARKET_BUY, "client_order_id": "race-1"}

    async def one() -> Order:
        with factory() as session:
            return await route_order("scripted", payload, session, "u")

    results = await asyncio.gather(*(one() for _ in range(5)), return_exceptions=True)
    ids = {r.id for r in results if isinstance(r, Order)}
    assert len(ids) == 1, results
    assert exchange.create_calls == 1


async def test_on_replay_is_called_for_every_call_but_the_one_that_wrote_the_row(
        router: Router, db_url: str, exchange: ScriptedExchange) -> None:
    """Which of concurrent calls with one key created the order (an HTTP service answers it
    201, the others 200) is the router's to say: a lookup before the call would race."""
    from bagbot_core.db import get_engine, session_factory

    factory = session_factory(get_engine(db_url))
    payload = {**MARKET_BUY, "client_order_id": "race-2"}
    replays: list[Order] = []

    async def one() -> Order:
        with factory() as session:
            return await router.route_order("scripted", payload, session, "u",
                                            on_replay=replays.append)

    results = await asyncio.gather(*(one() for _ in range(5)))
    assert len({r.id for r in results}) == 1 and exchange.create_calls == 1
    assert len(replays) == 4 and {r.id for r in replays} == {results[0].id}
    with factory() as session:
        fresh = await router.route_order("scripted", MARKET_BUY, session, "u",
                                         on_replay=replays.append)
    assert fresh.id != results[0].id and len(replays) == 4


async def test_async_session_works_too(router: Router, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    engine = get_async_engine(db_url)
    try:
        async with async_sessionmaker(engine)() as session:
            order = await route_order("scripted", MARKET_BUY, session, "async-user")
            assert order.status == "filled" and order.filled_qty == Decimal("0.5")
            with pytest.raises(RiskCheckError):
                await route_order("scripted", {**MARKET_BUY, "amount": "50"}, session, "u")
    finally:
        await engine.dispose()


async def test_quote_failure_fails_closed(router: Router, db: Session,
                                          exchange: ScriptedExchange) -> None:
    exchange.ask = None  # type: ignore[assignment]
    with pytest.raises(RiskCheckError, match="no reference price"):
        await route_order("scripted", MARKET_BUY, db, "u")


async def test_non_usd_quote_cannot_be_valued_and_is_rejected(router: Router,
                                                              db: Session) -> None:
    with pytest.raises(RiskCheckError, match="not a USD currency"):
        await route_order("scripted", {"symbol": "ETH/BTC", "side": "buy", "type": "limit",
                                       "amount": "1", "price": "0.05"}, db, "u")


async def test_inactive_and_missing_symbols_are_rejected(router: Router, db: Session) -> None:
    with pytest.raises(RiskCheckError, match="not active"):
        await route_order("scripted", {**MARKET_BUY, "symbol": "OLD/USDT"}, db, "u")
    with pytest.raises(RiskCheckError, match="not a market"):
        await route_order("scripted", {**MARKET_BUY, "symbol": "DOGE/USDT"}, db, "u")
    assert count(db) == 2


async def test_every_error_is_a_bagbot_error(router: Router, db: Session) -> None:
    for payload in ({}, {"symbol": 1}, [], None, {**MARKET_BUY, "amount": "1e999999"}):
        with pytest.raises(BagbotError):
            await route_order("scripted", payload, db, "u")  # type: ignore[arg-type]


async def test_lifecycle_hooks_are_told_in_order(router: Router, db: Session,
                                                 exchange: ScriptedExchange) -> None:
    from bagbot_core import hookimpl

    calls: list[tuple[str, object]] = []

    class Observer:
        @hookimpl
        def bagbot_before_route(self, connector: str, user_id: str, order: object) -> None:
            calls.append(("before", (connector, user_id, getattr(order, "amount", None))))

        @hookimpl
        def bagbot_after_route(self, order: object) -> None:
            calls.append(("after", getattr(order, "status", None)))

        @hookimpl
        def bagbot_on_route_error(self, order: object, error: BaseException) -> None:
            calls.append(("error", (getattr(order, "status", None), type(error).__name__)))

    router.registry.register(Observer(), "observer")
    await route_order("scripted", MARKET_BUY, db, "u")
    assert calls == [("before", ("scripted", "u", Decimal("0.5"))), ("after", "filled")]
    calls.clear()
    exchange.script("timeout_after_accept")
    with pytest.raises(OrderStatusUnknownError):
        await route_order("scripted", MARKET_BUY, db, "u")
    assert calls[-1] == ("error", ("unknown", "OrderStatusUnknownError"))
    calls.clear()
    with pytest.raises(OrderValidationError):
        await route_order("scripted", {"symbol": "nope"}, db, "u")
    assert calls == [("error", ("rejected", "OrderValidationError"))]


async def test_a_crashing_observer_does_not_change_the_result(router: Router, db: Session,
                                                              log_stream_json: object) -> None:
    from bagbot_core import hookimpl

    class Broken:
        @hookimpl
        def bagbot_after_route(self, order: object) -> None:
            raise RuntimeError("metrics backend down")

    router.registry.register(Broken(), "broken")
    order = await route_order("scripted", MARKET_BUY, db, "u")
    assert order.status == "filled"
    assert '"event": "hook_failed"' in log_stream_json.getvalue()  # type: ignore[attr-defined]


async def test_rate_limited_answer_is_rejected_not_unknown(db: Session) -> None:
    from bagbot_core import hookimpl
    from bagbot_core.connector import ConnectorSpec
    from bagbot_core.errors import RateLimitedError
    from bagbot_core.plugins import PluginRegistry
    from tests.scripted import ScriptedConnector

    class Throttled(ScriptedConnector):
        async def create_order(self, order: object, client_order_id: str) -> object:
            raise RateLimitedError("429 Too Many Requests", retry_after=3.0)

    class Plugin:
        @hookimpl
        def bagbot_add_connectors(self) -> list[ConnectorSpec]:
            return [ConnectorSpec("throttled", lambda s: Throttled(ScriptedExchange(), s))]

    router = Router(PluginRegistry(disabled=(), load_entrypoints=False,
                                   plugins=[("p", Plugin())]))
    with pytest.raises(RateLimitedError) as info:
        await router.route_order("throttled", MARKET_BUY, db, "u")
    assert info.value.retry_after == 3.0
    assert info.value.order.status == OrderStatus.REJECTED
    assert "rate limited, nothing was placed" in info.value.order.reason
    await router.aclose()
