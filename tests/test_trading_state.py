"""The trading state (kill switch): halt, reduce and resume at every scope, through the real
router and the paper exchange, on real databases."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import structlog
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, func, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from bagbot_core import audit
from bagbot_core.connector import ConnectorSpec
from bagbot_core.db import get_engine, session_factory
from bagbot_core.errors import ConfigurationError, RiskCheckError, UnknownConnectorError
from bagbot_core.markers import hookimpl
from bagbot_core.models import Order, TradingStateChange, TradingStateRow
from bagbot_core.orders import OrderRequest, OrderType, Side
from bagbot_core.paper.plugin import make_paper_connector
from bagbot_core.plugins import PluginRegistry
from bagbot_core.risk import RiskContext, RiskLimits
from bagbot_core.router import Router
from bagbot_core.status import OrderStatus
from bagbot_core.trading_state import (
    CHECK_NAME,
    Scope,
    ScopeState,
    TradingState,
    effective_state,
    most_restrictive,
    read_states,
    scope_states,
    set_trading_state,
    state_changes,
    trading_state,
)

D = Decimal
T = TypeVar("T")
USERS = ("alice", "bob")
CONNECTORS = ("paper", "paper2")
#: Every scope, broadest first (the order ties are named in).
SCOPES: list[tuple[str | None, str | None]] = [
    (None, None), *((None, c) for c in CONNECTORS), *((u, None) for u in USERS),
    *((u, c) for u in USERS for c in CONNECTORS)]
RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class SecondPaper:
    """The real paper exchange under a second name: orders on two connectors."""

    @hookimpl
    def bagbot_add_connectors(self) -> list[ConnectorSpec]:
        return [ConnectorSpec("paper2", make_paper_connector, "a second paper exchange")]


def make_router(run_id: str) -> Router:
    registry = PluginRegistry(disabled=(), load_entrypoints=False,
                              plugins=[("paper2", SecondPaper())])
    return Router(registry, limits=RiskLimits(), allow_live=False, skip_risk_checks=(),
                  connector_config={c: {"account": f"{run_id}-{c}"} for c in CONNECTORS})


def market(side: str, amount: str | Decimal) -> dict[str, str]:
    return {"symbol": "BTC/USDT", "side": side, "type": "market", "amount": str(amount)}


def resting(side: str, amount: str | Decimal) -> dict[str, str]:
    """A limit order that rests open on the paper book (the reference price is 50000)."""
    price = "40000" if side == "buy" else "60000"
    return {**market(side, amount), "type": "limit", "price": price}


def state_events(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in stream.getvalue().splitlines() if line.strip())
    return [e for e in lines if e.get("event") == "trading_state_changed"]


def reset_states(session: Session) -> None:
    session.execute(delete(TradingStateChange))
    session.execute(delete(TradingStateRow))
    session.commit()


@pytest.fixture
async def router() -> Any:
    router = make_router(uuid.uuid4().hex[:12])
    yield router
    await router.aclose()


# -- the stateful property -----------------------------------------------------------------


class KillSwitch(RuleBasedStateMachine):
    """Changes at all scopes interleaved with orders, cancels and checks of the effective
    state, against a model: the most restrictive covering scope decides; HALTED lets
    nothing through; REDUCING only what reduces the position on that connector."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.run_id = uuid.uuid4().hex[:10]
        self.loop = asyncio.new_event_loop()
        self.router = make_router(self.run_id)
        self.session = session_factory(get_engine(self.url))()
        reset_states(self.session)
        self.stream = io.StringIO()
        self.saved_log = structlog.get_config(), audit._configured
        audit.configure(fmt="json", stream=self.stream, force=True)
        self.states: dict[tuple[str | None, str | None], TradingState] = {}
        self.changes = 0
        self.position: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self.live: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
        self.resting: list[tuple[int, str, str, str, Decimal]] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def uid(self, user: str | None) -> str | None:
        """User ids unique to this example: earlier examples' orders never count."""
        return None if user is None else f"{user}-{self.run_id}"

    def expected(self, user: str, connector: str
                 ) -> tuple[TradingState, tuple[str | None, str | None] | None]:
        covering = [(None, None), (None, connector), (user, None), (user, connector)]
        best: tuple[TradingState, tuple[str | None, str | None] | None] = (
            TradingState.ACTIVE, None)
        for scope in covering:  # broadest first: a tie keeps the broader scope
            state = self.states.get(scope, TradingState.ACTIVE)
            if RANK[state] > RANK[best[0]]:
                best = (state, scope)
        return best

    # Weighted: one HALTED at a broad scope would otherwise leave REDUCING little to decide.
    @rule(scope=st.sampled_from(SCOPES), state=st.sampled_from(
        [TradingState.ACTIVE] * 2 + [TradingState.REDUCING] * 3 + [TradingState.HALTED]))
    def change(self, scope: tuple[str | None, str | None], state: TradingState) -> None:
        user, connector = scope
        method = {TradingState.HALTED: self.router.halt,
                  TradingState.REDUCING: self.router.reduce,
                  TradingState.ACTIVE: self.router.resume}[state]
        before = len(state_events(self.stream))
        change = self.run(method(self.session, user_id=self.uid(user), connector=connector,
                                 reason=f"change {self.changes}", who="tester"))
        assert change.state is state
        assert change.previous is self.states.get(scope)
        assert change.scope == Scope(self.uid(user), connector)
        self.states[scope] = state
        self.changes += 1
        events = state_events(self.stream)
        assert len(events) == before + 1, "one audit event per change"
        assert events[-1]["state"] == state.value and events[-1]["change_id"] == change.id
        assert events[-1]["user_id"] == self.uid(user)
        assert events[-1]["connector"] == connector
        stored = self.session.scalar(select(func.count()).select_from(TradingStateChange))
        self.session.commit()
        assert stored == self.changes, "one stored record per change"

    @initialize(data=st.data())
    def positions(self, data: st.DataObject) -> None:
        """Start with long, short and flat positions and live orders on both sides, so
        that REDUCING has something to decide."""
        for user in USERS:
            for connector in CONNECTORS:
                net = data.draw(st.sampled_from(["-0.01", "-0.004", "0", "0.004", "0.01"]))
                if net != "0":
                    self.order(user, connector, "sell" if net[0] == "-" else "buy",
                               abs(D(net)), rests=False)
                for side in ("buy", "sell"):
                    live = data.draw(st.sampled_from(["0", "0.002", "0.005"]))
                    if live != "0":
                        self.order(user, connector, side, D(live), rests=True)

    @rule(user=st.sampled_from(USERS), connector=st.sampled_from(CONNECTORS),
          side=st.sampled_from(["buy", "sell"]),
          amount=st.sampled_from(["0.001", "0.002", "0.005", "0.01"]).map(D),
          rests=st.booleans())
    def order(self, user: str, connector: str, side: str, amount: Decimal, rests: bool
              ) -> None:
        state, scope = self.expected(user, connector)
        sign = 1 if side == "sell" else -1
        room = sign * self.position[user, connector] - self.live[user, connector, side]
        payload = resting(side, amount) if rests else market(side, amount)
        uid = self.uid(user)
        assert uid is not None
        refused: RiskCheckError | None = None
        try:
            order = self.run(self.router.route_order(connector, payload, self.session, uid))
        except RiskCheckError as exc:
            refused = exc
        if refused is not None:
            assert state is not TradingState.ACTIVE, refused
            assert scope is not None
            assert not (state is TradingState.REDUCING and amount <= room), refused
            event(f"refused while {state.value}")
            (violation,) = refused.violations
            assert violation.check == CHECK_NAME
            named = Scope(self.uid(scope[0]), scope[1]).describe()
            assert violation.limit == f"{state.value} ({named})"
            assert violation.actual is not None and f"{side} {amount} BTC" in violation.actual
            row = refused.order
            assert row is not None and row.status == OrderStatus.REJECTED
            assert row.details is not None and row.details["violations"] == [violation.as_dict()]
            return
        assert state is not TradingState.HALTED, "HALTED let an order through"
        event(f"passed while {state.value}")
        if state is TradingState.REDUCING:
            assert amount <= room, "REDUCING let through an order that does not reduce"
        if rests:
            assert order.status == OrderStatus.OPEN
            self.live[user, connector, side] += amount
            self.resting.append((order.id, user, connector, side, amount))
        else:
            assert order.status == OrderStatus.FILLED and order.filled_qty == amount
            self.position[user, connector] -= sign * amount

    @precondition(lambda self: self.resting)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancels work whatever the state."""
        index = data.draw(st.integers(0, len(self.resting) - 1))
        order_id, user, connector, side, amount = self.resting.pop(index)
        order = self.run(self.router.cancel_order(self.session, order_id))
        assert order.status == OrderStatus.CANCELED
        self.live[user, connector, side] -= amount

    @invariant()
    def effective_state_is_the_most_restrictive(self) -> None:
        for user in USERS:
            for connector in CONNECTORS:
                uid = self.uid(user)
                assert uid is not None
                got = effective_state(self.session, user_id=uid, connector=connector)
                state, scope = self.expected(user, connector)
                assert got.state is state
                if scope is None:
                    assert got.source is None
                else:
                    assert got.source is not None
                    assert got.source.scope == Scope(self.uid(scope[0]), scope[1])

    def teardown(self) -> None:
        try:
            assert len(state_events(self.stream)) == self.changes
            self.run(self.router.aclose())
        finally:
            self.session.close()
            self.loop.close()
            structlog.configure(**self.saved_log[0])
            audit._configured = self.saved_log[1]


def test_kill_switch_state_machine(sqlite_url: str) -> None:
    KillSwitch.url = sqlite_url
    run_state_machine_as_test(
        KillSwitch, settings=settings(max_examples=60, stateful_step_count=40))


# -- REDUCING, HALTED: the named cases ----------------------------------------------------


async def test_reducing_lets_a_reducing_sell_through_and_refuses_the_buy(
        router: Router, db: Session) -> None:
    await router.route_order("paper", market("buy", "0.05"), db, "alice")
    await router.reduce(db, user_id="alice", reason="risk review", who="ops")
    sold = await router.route_order("paper", market("sell", "0.03"), db, "alice")
    assert sold.status == OrderStatus.FILLED
    with pytest.raises(RiskCheckError) as refused:
        await router.route_order("paper", market("buy", "0.01"), db, "alice")
    (violation,) = refused.value.violations
    assert violation.check == "trading_state"
    assert violation.limit == "reducing (user alice)"
    assert violation.actual == "buy 0.01 BTC; position 0.02 BTC, live buys 0"
    row = refused.value.order
    assert row is not None and row.status == "rejected"
    assert row.details is not None and row.details["violations"] == [{
        "check": "trading_state", "limit": "reducing (user alice)",
        "actual": "buy 0.01 BTC; position 0.02 BTC, live buys 0",
        "reason": violation.reason}]
    assert "by ops" in violation.reason and "risk review" in violation.reason
    # More than the remaining long is refused too: it would open a short.
    with pytest.raises(RiskCheckError, match="would not reduce"):
        await router.route_order("paper", market("sell", "0.02000001"), db, "alice")
    assert (await router.route_order("paper", market("sell", "0.02"), db, "alice")).status \
        == "filled"


async def test_reducing_counts_live_orders_in_the_same_direction(
        router: Router, db: Session) -> None:
    await router.route_order("paper", market("buy", "0.05"), db, "alice")
    await router.route_order("paper", resting("sell", "0.03"), db, "alice")
    await router.reduce(db, connector="paper", reason="wind down", who="ops")
    with pytest.raises(RiskCheckError) as refused:
        await router.route_order("paper", market("sell", "0.03"), db, "alice")
    assert refused.value.violations[0].actual == (
        "sell 0.03 BTC; position 0.05 BTC, live sells 0.03")
    assert refused.value.violations[0].limit == "reducing (connector paper)"
    assert (await router.route_order("paper", market("sell", "0.02"), db, "alice")).status \
        == "filled"


async def test_reducing_lets_a_buy_cover_a_short(router: Router, db: Session) -> None:
    await router.route_order("paper", market("sell", "0.04"), db, "bob")
    await router.reduce(db, reason="everyone flat", who="ops")
    with pytest.raises(RiskCheckError, match="would not reduce"):
        await router.route_order("paper", market("sell", "0.001"), db, "bob")
    with pytest.raises(RiskCheckError, match="would not reduce"):
        await router.route_order("paper", market("buy", "0.05"), db, "bob")
    assert (await router.route_order("paper", market("buy", "0.04"), db, "bob")).status \
        == "filled"


async def test_reducing_counts_the_position_on_the_order_s_connector(
        router: Router, db: Session) -> None:
    await router.route_order("paper", market("buy", "0.05"), db, "alice")
    await router.reduce(db, user_id="alice", reason="r", who="ops")
    with pytest.raises(RiskCheckError, match="position of 0 BTC on paper2"):
        await router.route_order("paper2", market("sell", "0.01"), db, "alice")


async def test_halted_refuses_every_order_but_cancels_work(router: Router, db: Session) -> None:
    open_order = await router.route_order("paper", resting("buy", "0.01"), db, "alice")
    await router.halt(db, reason="exchange incident", who="ops")
    for payload in (market("buy", "0.01"), market("sell", "0.01"), resting("sell", "0.01")):
        with pytest.raises(RiskCheckError) as refused:
            await router.route_order("paper", payload, db, "alice")
        (violation,) = refused.value.violations
        assert violation.limit == "halted (global)"
        assert violation.actual is not None and violation.actual.startswith("new order: ")
    canceled = await router.cancel_order(db, open_order.id)
    assert canceled.status == OrderStatus.CANCELED


async def test_the_most_restrictive_scope_applies_and_resume_lifts_only_its_own(
        router: Router, db: Session) -> None:
    await router.halt(db, connector="paper", reason="maintenance", who="ops")
    await router.reduce(db, user_id="alice", reason="review", who="ops")
    with pytest.raises(RiskCheckError, match="halted"):
        await router.route_order("paper", market("buy", "0.01"), db, "bob")
    assert (await router.route_order("paper2", market("buy", "0.01"), db, "bob")).status \
        == "filled"
    await router.resume(db, user_id="alice", reason="review done", who="ops")
    with pytest.raises(RiskCheckError, match="halted"):  # the connector is still halted
        await router.route_order("paper", market("buy", "0.01"), db, "alice")
    await router.resume(db, connector="paper", reason="back", who="ops")
    assert (await router.route_order("paper", market("buy", "0.01"), db, "alice")).status \
        == "filled"


async def test_halt_cancel_open_cancels_the_scope_s_open_orders(
        router: Router, db: Session) -> None:
    mine = [await router.route_order("paper", resting("buy", "0.01"), db, "alice")
            for _ in range(2)]
    other = await router.route_order("paper", resting("buy", "0.01"), db, "bob")
    change = await router.halt(db, user_id="alice", reason="stop", who="ops", cancel_open=True)
    assert [o.order.id for o in change.canceled] == [o.id for o in mine]
    assert all(o.error is None and o.order.status == "canceled" for o in change.canceled)
    db.expire_all()
    assert db.get(Order, other.id).status == "open"  # type: ignore[union-attr]


async def test_halt_cancel_open_reports_a_failed_cancel_and_tries_the_rest(
        router: Router, db: Session) -> None:
    from bagbot_core import store

    ghost = store.insert_order(
        db, user_id="alice", connector="paper", symbol="BTC/USDT", side="buy",
        order_type="limit", qty=D("0.01"), price=D("40000"), testnet=True,
        client_order_id="ghost-" + uuid.uuid4().hex, status="open")
    real = await router.route_order("paper", resting("buy", "0.01"), db, "alice")
    change = await router.halt(db, reason="stop", who="ops", cancel_open=True)
    outcomes = {o.order.id: o for o in change.canceled}
    assert outcomes[ghost.id].error is not None  # the exchange never had it
    assert outcomes[real.id].error is None and outcomes[real.id].order.status == "canceled"
    assert effective_state(db, user_id="alice", connector="paper").state is TradingState.HALTED


async def test_unknown_connector_changes_nothing(router: Router, db: Session) -> None:
    with pytest.raises(UnknownConnectorError):
        await router.halt(db, connector="papr", reason="typo", who="ops")
    assert scope_states(db) == []


async def test_async_session(router: Router, db_url: str) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from bagbot_core.db import get_async_engine

    engine = get_async_engine(db_url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            await router.halt(session, user_id="carol", reason="r", who="ops")
            with pytest.raises(RiskCheckError, match="halted"):
                await router.route_order("paper", market("buy", "0.01"), session, "carol")
            await router.resume(session, user_id="carol", reason="r", who="ops")
            order = await router.route_order("paper", market("buy", "0.01"), session, "carol")
            assert order.status == "filled"
    finally:
        await engine.dispose()


# -- cost, storage, validation --------------------------------------------------------------


async def test_with_no_state_set_the_check_costs_one_indexed_read(
        router: Router, sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "trading_state" in statement:
            statements.append(statement)

    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        with session_factory(engine)() as session:
            order = await router.route_order("paper", market("buy", "0.01"), session, "u")
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    assert order.status == "filled"
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")
    with engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statements[0]}", ("", "u", "", "paper")))
    assert "USING INDEX" in plan or "PRIMARY KEY" in plan, plan


def test_every_change_is_kept_with_who_when_why(db: Session) -> None:
    first = set_trading_state(db, "halted", reason="incident 42", who="alice")
    set_trading_state(db, TradingState.REDUCING, reason="winding down", who="bob")
    set_trading_state(db, "active", reason="all clear", who="carol")
    changes = state_changes(db)
    assert [(c.state, c.previous, c.who, c.reason) for c in changes] == [
        (TradingState.ACTIVE, TradingState.REDUCING, "carol", "all clear"),
        (TradingState.REDUCING, TradingState.HALTED, "bob", "winding down"),
        (TradingState.HALTED, None, "alice", "incident 42"),
    ]
    assert changes[-1].id == first.id and changes[0].changed_at >= first.changed_at
    (current,) = scope_states(db)
    assert (current.scope, current.state, current.who) == (Scope(), TradingState.ACTIVE,
                                                           "carol")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"state": "paused"}, "must be one of active, reducing, halted"),
    ({"reason": "  "}, "needs a reason"),
    ({"reason": "x" * 501}, "at most 500"),
    ({"who": ""}, "who must be"),
    ({"user_id": ""}, "user_id must be"),
    ({"user_id": "a\nb"}, "user_id must be"),
    ({"connector": "no spaces"}, "connector must be"),
])
def test_invalid_changes_are_refused_and_store_nothing(db: Session, kwargs: dict[str, Any],
                                                       match: str) -> None:
    args: dict[str, Any] = {"state": "halted", "reason": "r", "who": "ops", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        set_trading_state(db, args.pop("state"), **args)
    assert scope_states(db) == [] and state_changes(db) == []


def test_concurrent_changes_of_a_new_scope_all_land(db_url: str) -> None:
    """Changes queue for each other (PostgreSQL: a table lock readers never wait for)."""
    engine = get_engine(db_url)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def change(n: int) -> None:
        with session_factory(engine)() as session:
            barrier.wait()
            try:
                set_trading_state(session, "halted", user_id="racer", reason=f"{n}", who="t")
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=change, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory(engine)() as session:
        changes = state_changes(session)
    assert len(changes) == 6
    assert [c.previous for c in changes].count(None) == 1  # the others saw it set


async def test_without_history_the_check_fails_closed() -> None:
    ctx = RiskContext(order=OrderRequest("BTC/USDT", Side.BUY, OrderType.MARKET, D(1)),
                      connector="paper", user_id="u", limits=RiskLimits(), markets={})
    violation = await trading_state(ctx)
    assert violation is not None and violation.check == CHECK_NAME


def test_the_check_is_registered_by_the_builtin_risk_plugin() -> None:
    names = [c.name for c in PluginRegistry(load_entrypoints=False).risk_checks()]
    assert CHECK_NAME in names


def test_read_states_reads_only_covering_scopes(db: Session) -> None:
    for user, connector in SCOPES:
        set_trading_state(db, "reducing", user_id=user, connector=connector, reason="r",
                          who="t")
    set_trading_state(db, "halted", user_id="zed", reason="r", who="t")
    set_trading_state(db, "halted", connector="other", reason="r", who="t")
    got = {(s.scope.user_id, s.scope.connector) for s in read_states(db, "alice", "paper")}
    db.commit()
    assert got == {(None, None), (None, "paper"), ("alice", None), ("alice", "paper")}


_STATES = st.sampled_from(list(TradingState))


#: The scopes that cover one user's orders on one connector, broadest first.
_COVERING = [(None, None), (None, "paper"), ("alice", None), ("alice", "paper")]


@given(st.lists(st.tuples(st.sampled_from(_COVERING), _STATES), max_size=8))
def test_most_restrictive_is_the_maximum_naming_the_broadest_scope(
        entries: list[tuple[tuple[str | None, str | None], TradingState]]) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    latest = dict(entries)
    states = [ScopeState(Scope(*scope), state, "r", "t", now)
              for scope, state in latest.items()]
    got = most_restrictive(states)
    top = max((RANK[s] for s in latest.values()), default=0)
    assert RANK[got.state] == top
    if top == 0:
        assert got.source is None
    else:
        assert got.source is not None
        assert got.source.scope == Scope(*next(
            scope for scope in _COVERING if latest.get(scope) is got.state))


async def test_upgrading_to_0004_starts_every_scope_active(sqlite_url: str) -> None:
    from sqlalchemy import create_engine

    from bagbot_core.migrate import upgrade
    from bagbot_core.migrations import HEAD

    engine = create_engine(sqlite_url)
    upgrade(engine, "0003")
    assert upgrade(engine) == ("0003", HEAD)
    engine.dispose()
    router = make_router(uuid.uuid4().hex[:12])
    try:
        with session_factory(get_engine(sqlite_url))() as session:
            assert scope_states(session) == [] and state_changes(session) == []
            order = await router.route_order("paper", market("buy", "0.01"), session, "u")
            assert order.status == "filled"
    finally:
        await router.aclose()


async def test_a_change_made_elsewhere_applies_to_a_long_lived_session(
        router: Router, db_url: str) -> None:
    """Another process's halt is seen at the next order, whatever this session cached."""
    factory = session_factory(get_engine(db_url))
    with factory() as routing, factory() as operator:
        set_trading_state(operator, "reducing", user_id="alice", reason="r", who="ops")
        with pytest.raises(RiskCheckError, match="reducing-only"):
            await router.route_order("paper", market("buy", "0.01"), routing, "alice")
        assert effective_state(routing, user_id="alice",
                               connector="paper").state is TradingState.REDUCING
        set_trading_state(operator, "active", user_id="alice", reason="r", who="ops")
        await router.route_order("paper", market("buy", "0.01"), routing, "alice")
        set_trading_state(operator, "halted", user_id="alice", reason="r", who="ops")
        with pytest.raises(RiskCheckError, match="halted"):
            await router.route_order("paper", market("buy", "0.01"), routing, "alice")
        assert effective_state(routing, user_id="alice",
                               connector="paper").state is TradingState.HALTED
        change = set_trading_state(routing, "active", user_id="alice", reason="r", who="ops")
        assert change.previous is TradingState.HALTED
        assert [s.state for s in scope_states(routing)] == [TradingState.ACTIVE]
