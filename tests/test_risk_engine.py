"""The risk engine in the router: async and stateful checks, quotes for every order type,
the checked notional on the row, and the dry run."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bagbot_core import hookimpl
from bagbot_core.errors import (
    ExchangeUnavailableError,
    OrderValidationError,
    RiskCheckError,
)
from bagbot_core.models import Order
from bagbot_core.risk import RiskCheck, RiskContext, RiskViolation
from bagbot_core.router import Router, check_order, route_order
from tests.scripted import ScriptedExchange

MARKET_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "market", "amount": "0.01"}
LIMIT_BUY = {"symbol": "BTC/USDT", "side": "buy", "type": "limit", "amount": "0.01",
             "price": "40000"}


def count(db: Session) -> int:
    db.expire_all()
    return int(db.scalar(select(func.count()).select_from(Order)) or 0)


async def max_two_open(ctx: RiskContext) -> RiskViolation | None:
    assert ctx.history is not None
    live = await ctx.history.open_orders()
    if live >= 2:
        return RiskViolation("max_two_open", f"{live} orders are open", limit="2",
                             actual=str(live + 1))
    return None


class Plugin:
    def __init__(self, *checks: RiskCheck) -> None:
        self.checks = checks

    @hookimpl
    def bagbot_add_risk_checks(self) -> list[RiskCheck]:
        return list(self.checks)


def add(router: Router, *checks: RiskCheck) -> None:
    router.registry.register(Plugin(*checks), f"extra{len(router.registry.risk_checks())}")


async def test_async_stateful_check_counts_committed_orders(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    add(router, RiskCheck("max_two_open", max_two_open))
    for _ in range(2):
        assert (await route_order("scripted", LIMIT_BUY, db, "u")).status == "open"
    await route_order("scripted", LIMIT_BUY, db, "other")  # another user's order
    with pytest.raises(RiskCheckError) as info:
        await route_order("scripted", LIMIT_BUY, db, "u")
    assert [v.check for v in info.value.violations] == ["max_two_open"]
    assert not db.in_transaction()  # the step rolled back, the rejected row committed
    row = info.value.order
    assert row.status == "rejected"
    assert row.details["violations"][0] == {"check": "max_two_open",
                                            "reason": "2 orders are open", "limit": "2",
                                            "actual": "3"}
    assert exchange.create_calls == 3 and count(db) == 4


async def test_async_check_that_raises_fails_closed(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    async def broken(ctx: RiskContext) -> None:
        raise RuntimeError("limit service down")

    ran: list[str] = []

    def after(ctx: RiskContext) -> None:
        ran.append(ctx.order.symbol)

    add(router, RiskCheck("broken", broken), RiskCheck("after", after))
    with pytest.raises(RiskCheckError) as info:
        await route_order("scripted", MARKET_BUY, db, "u")
    assert [(v.check, v.reason) for v in info.value.violations] == [
        ("broken", "check raised RuntimeError: limit service down")]
    assert ran == ["BTC/USDT"]  # the other checks still ran
    assert exchange.create_calls == 0
    assert count(db) == 1 and info.value.order.status == "rejected"


async def test_checks_see_testnet_history_and_a_quote_for_limit_orders(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    seen: list[RiskContext] = []
    add(router, RiskCheck("probe", seen.append))
    await route_order("scripted", LIMIT_BUY, db, "u")
    await route_order("scripted", MARKET_BUY, db, "u")
    limit, market = seen
    for ctx in (limit, market):
        assert ctx.testnet is True and ctx.history is not None
        assert (ctx.history.user_id, ctx.history.connector, ctx.history.testnet) == (
            "u", "scripted", True)
        assert ctx.quote is not None and ctx.quote.ask == exchange.ask
    assert limit.reference_price == Decimal(40000)  # the limit price still values it
    assert exchange.quote_calls == 2


@pytest.mark.parametrize("error", [ExchangeUnavailableError("ticker down"),
                                   KeyError("parser bug")])
async def test_a_limit_order_routes_without_a_quote(
    router: Router, db: Session, exchange: ScriptedExchange, error: Exception
) -> None:
    seen: list[RiskContext] = []
    add(router, RiskCheck("probe", seen.append))
    exchange.quote_error = error
    order = await route_order("scripted", LIMIT_BUY, db, "u")
    assert order.status == "open" and seen[0].quote is None
    if isinstance(error, ExchangeUnavailableError):
        # A market order has no price without it: max_value fails closed, as before.
        with pytest.raises(RiskCheckError, match="no reference price"):
            await route_order("scripted", MARKET_BUY, db, "u")


async def test_pending_row_keeps_the_checked_usd_notional(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    notional: list[Decimal | None] = []
    add(router, RiskCheck("probe", lambda ctx: notional.append(ctx.notional_usd)))
    market = await route_order("scripted", {**MARKET_BUY, "amount": "0.123456789"}, db, "u")
    limit = await route_order("scripted", LIMIT_BUY, db, "u")
    no_value_check = Router(router.registry, limits=router.limits,
                            skip_risk_checks="max_value")
    other = await no_value_check.route_order(
        "scripted", {"symbol": "ETH/BTC", "side": "buy", "type": "limit", "amount": "1",
                     "price": "0.05"}, db, "u")
    await no_value_check.aclose()
    db.expire_all()
    # The amount sent (rounded to the step) at the ask: what the second check run saw.
    assert db.get(Order, market.id).notional_usd == Decimal("0.12345") * exchange.ask  # type: ignore[union-attr]
    assert notional[:2] == [Decimal("0.123456789") * exchange.ask,
                            Decimal("0.12345") * exchange.ask]
    assert db.get(Order, limit.id).notional_usd == Decimal(400)  # type: ignore[union-attr]
    assert db.get(Order, other.id).notional_usd is None  # type: ignore[union-attr]


# -- dry run ------------------------------------------------------------------------------


async def test_dry_run_reports_every_violation_and_writes_nothing(
    router: Router, db: Session, exchange: ScriptedExchange
) -> None:
    add(router, RiskCheck("max_two_open", max_two_open))
    assert await check_order("scripted", LIMIT_BUY, db, "u") == []
    for _ in range(2):
        await route_order("scripted", LIMIT_BUY, db, "u")
    calls, rows = exchange.create_calls, count(db)
    violations = await router.check_order("scripted", {**LIMIT_BUY, "amount": "11"}, db, "u")
    assert {v.check for v in violations} == {"max_quantity", "max_value", "max_two_open"}
    assert await router.check_order("scripted", LIMIT_BUY, db, "v") == []
    assert not db.in_transaction()  # rolled back: the lock is released
    assert exchange.create_calls == calls and count(db) == rows


@pytest.mark.parametrize(("payload", "user"), [
    ({**MARKET_BUY, "amount": "-1"}, "u"),
    ({**MARKET_BUY, "params": {"nope": 1}}, "u"),
    (MARKET_BUY, ""),
])
async def test_dry_run_validation_errors_raise_and_write_nothing(
    router: Router, db: Session, payload: dict[str, Any], user: str
) -> None:
    with pytest.raises(OrderValidationError):
        await router.check_order("scripted", payload, db, user)
    assert count(db) == 0


async def test_dry_run_refuses_an_idempotency_key_of_another_order(
    router: Router, db: Session
) -> None:
    await route_order("scripted", {**MARKET_BUY, "client_order_id": "k1"}, db, "u")
    with pytest.raises(OrderValidationError, match="already used"):
        await router.check_order("scripted", {**LIMIT_BUY, "side": "sell",
                                              "client_order_id": "k1"}, db, "u")
    assert await router.check_order("scripted", {**MARKET_BUY, "client_order_id": "k1"},
                                    db, "u") == []
    assert count(db) == 1


async def test_dry_run_on_an_async_session(router: Router, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    add(router, RiskCheck("max_two_open", max_two_open))
    engine = get_async_engine(db_url)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        for _ in range(2):
            await router.route_order("scripted", LIMIT_BUY, session, "u")
        violations = await router.check_order("scripted", LIMIT_BUY, session, "u")
        assert [v.check for v in violations] == ["max_two_open"]
        with pytest.raises(RiskCheckError):
            await router.route_order("scripted", LIMIT_BUY, session, "u")
    await engine.dispose()


async def test_a_refusal_or_a_dry_run_leaves_the_callers_rows_loaded(
    router: Router, db_url: str
) -> None:
    from bagbot_core.db import get_engine, session_factory

    with session_factory(get_engine(db_url))() as session:
        first = await route_order("scripted", MARKET_BUY, session, "u")
        with pytest.raises(RiskCheckError):
            await route_order("scripted", {**MARKET_BUY, "amount": "11"}, session, "u")
        assert await router.check_order("scripted", MARKET_BUY, session, "u") == []
    # Read after the session closed: a rollback would have expired (and so detached) it.
    assert (first.status, first.filled_qty) == ("filled", Decimal("0.01"))
