"""What risk checks may know about past orders: a read-only view of the router's own rows.

A stateful check (daily notional, order rate, open orders, position) must count what other
processes routed a moment ago. The router therefore builds one :class:`History` per order,
bound to the transaction that holds the per-user lock and will insert the order's
``pending`` row: every answer includes every order committed before this one, and no order of
the same user can be committed until this one is (see :meth:`bagbot_core.router.Router.
route_order`). A check never opens an engine of its own -- it could be another database.

The router gives the view one instant (:attr:`History.now`) and lets each check announce its
queries (:meth:`History.expect`) before any runs: the first query of the transaction then
fetches them all in one ``UNION ALL`` statement, one round trip per order however many
controls are on.

Money is summed in Python with an exact decimal context, over indexed row sets: SQLite keeps
decimals as text (:class:`~bagbot_core.models.ExactDecimal`) and its ``SUM`` would go through
binary floating point.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Final, NamedTuple, TypeVar

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy import bindparam as _bind
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import Label, TypeCoerce

from bagbot_core.models import NotionalBucket, Order, Position
from bagbot_core.money import MAX_SCALE, normalize
from bagbot_core.orders import OrderRequest, Side
from bagbot_core.status import OrderStatus
from bagbot_core.views import OrderView

__all__ = ["ALL_USERS", "LIVE_STATUSES", "TRADED_STATUSES", "History", "StateRow",
           "order_value_usd"]

T = TypeVar("T")


class _AllUsers:
    """The type of :data:`ALL_USERS`."""

    def __repr__(self) -> str:
        return "ALL_USERS"


#: Pass as ``user_id`` for a query over every user (e.g. a connector-wide order rate).
ALL_USERS: Final = _AllUsers()

UserFilter = str | None | _AllUsers

#: Rows that may be on the exchange: they count as live exposure.
LIVE_STATUSES: Final = frozenset({OrderStatus.PENDING, OrderStatus.OPEN,
                                  OrderStatus.PARTIALLY_FILLED, OrderStatus.UNKNOWN})
#: Rows whose filled part has traded and whose rest never will.
TRADED_STATUSES: Final = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED,
                                    OrderStatus.EXPIRED})
_LIVE = tuple(s.value for s in LIVE_STATUSES)
_REJECTED = OrderStatus.REJECTED.value
# Wide enough that no sum of NUMERIC(38, 18) products is ever rounded.
_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])
_SCALE = Decimal(1).scaleb(-MAX_SCALE)
_ZERO = Decimal(0)


@functools.lru_cache(maxsize=4096)
def _usd_quoted(symbol: str) -> bool:
    """Is the symbol's quote a USD currency, as :attr:`RiskContext.notional_usd` decides?"""
    from bagbot_core.risk import USD_QUOTES

    return symbol.partition("/")[2].upper() in USD_QUOTES


def _share(value: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``value * part / whole``, exact, or rounded up at the 18th decimal place.

    Rounding up keeps a limit safe: a share of an order's value is never under-counted.
    """
    context = _EXACT.copy()
    context.traps[decimal.Inexact] = False
    return context.divide(context.multiply(value, part), whole).quantize(
        _SCALE, rounding=decimal.ROUND_CEILING, context=context)


def order_value_usd(status: str, symbol: str, qty: Decimal, filled: Decimal | None,
                    avg_price: Decimal | None, notional_usd: Decimal | None) -> Decimal:
    """One row's USD exposure, as :meth:`History.notional_since` counts it.

    The traded part is ``filled * avg_price`` for a symbol quoted in a USD currency (else the
    filled share of ``notional_usd``); a live row adds its unfilled share of
    ``notional_usd``, the value its checks saw. ``rejected`` is worth nothing; so is an order
    that was never valued in USD (``notional_usd`` empty: not a USD quote, or a row written
    before bagbot stored it) beyond what it traded.
    """
    with decimal.localcontext(_EXACT):
        return _value(status, symbol, qty, filled, avg_price, notional_usd)


def _value(status: str, symbol: str, qty: Decimal, filled: Decimal | None,
           avg_price: Decimal | None, notional_usd: Decimal | None) -> Decimal:
    """:func:`order_value_usd`, for a caller that holds the exact context."""
    if status == _REJECTED:
        return _ZERO
    if not filled:  # the common rows first: unfilled, and filled at a USD price
        return notional_usd if notional_usd is not None and status in _LIVE else _ZERO
    if status not in _LIVE and avg_price is not None and _usd_quoted(symbol):
        return filled * avg_price
    total = _ZERO
    if avg_price is not None and _usd_quoted(symbol):
        total += filled * avg_price
    elif notional_usd is not None and qty > 0:
        total += _share(notional_usd, min(filled, qty), qty)
    remaining = qty - filled
    if status in _LIVE and notional_usd is not None and remaining > 0:
        total += _share(notional_usd, remaining, qty)
    return total


def _asset_pattern(asset: str) -> str:
    escaped = asset.upper().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%"


class History:
    """Read-only view of the router's own database, inside the routing transaction.

    Every query is scoped to the context's ``testnet`` flag (testnet orders never count
    against live limits and vice versa). ``user_id=None`` means the order's user;
    :data:`ALL_USERS` means every user. ``connector=None`` means every connector, except in
    :meth:`find_duplicate` (there: the order's connector). ``since`` is inclusive and must be
    timezone-aware.

    Live exposure = rows pending/open/partially_filled/unknown; traded = filled, and the
    filled part of canceled/expired (and of a live row); rejected counts for nothing.

    :param db: the ``Session`` or ``AsyncSession`` whose transaction the router holds. The
        view never commits: outside the router, the caller ends the transaction.
    """

    def __init__(self, db: Any, user_id: str, connector: str, testnet: bool = True, *,
                 now: dt.datetime | None = None) -> None:
        self._db = db
        self._is_async = hasattr(db, "run_sync")
        self.user_id = user_id
        self.connector = connector
        self.testnet = testnet
        #: The routing transaction's instant (timezone-aware UTC), taken once the user's
        #: lock is held: every check of the order measures its windows from it. ``None``
        #: for a view built outside the router (a check then reads its own clock).
        self.now = now
        # Answers of this transaction, by query and parameters (see _answer), and the
        # queries announced by expect(), fetched together by the first one asked.
        self._transaction: Any = None
        self._answers: dict[Any, Any] = {}
        self._expected: list[_Fact] = []

    def __repr__(self) -> str:
        return (f"History(user_id={self.user_id!r}, connector={self.connector!r}, "
                f"testnet={self.testnet})")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(session, *args)`` on the routing transaction's synchronous ``Session``.

        For a module's own read query (e.g. the trading state). ``fn`` must not commit,
        roll back or write: the transaction, and its lock, belong to the router.
        """
        if self._is_async:
            return await self._db.run_sync(fn, *args)  # type: ignore[no-any-return]
        return fn(self._db, *args)

    def _session(self) -> Session:
        """The synchronous ``Session`` (an ``AsyncSession``'s own): its transaction, read
        without I/O, keys the answers."""
        return self._db.sync_session if self._is_async else self._db  # type: ignore[no-any-return]

    def expect(self, query: str, *args: Any, **kwargs: Any) -> None:
        """Announce a query a check of this order will make (``query`` names a method of
        this class, with the arguments the check will pass): the first query of the
        transaction fetches every announced one in one statement, and the later calls are
        answered from that snapshot -- exact, since the user's lock keeps every other
        router of this user out until the transaction ends (a query over
        :data:`ALL_USERS` is as fresh as that first statement). A call not announced runs
        its own query.

        :raises ValueError: ``query`` is not a query this view can fetch ahead.
        """
        fact = getattr(self, f"_fact_{query}", None) if query in _PREFETCHABLE else None
        if fact is None:
            raise ValueError(f"cannot fetch {query!r} ahead")
        self._expected.append(fact(*args, **kwargs))

    # -- queries ------------------------------------------------------------------------
    # Statements are built once per shape (which filters, which dialect) with bound
    # parameters: building SQLAlchemy expressions per order would cost more than running
    # the indexed queries.

    def _scope(self, user_id: UserFilter, connector: str | None,
               symbol: str | None = None) -> tuple[_Shape, dict[str, Any]]:
        params: dict[str, Any] = {"testnet": self.testnet}
        if user_id is None:
            params["user_id"] = self.user_id
        elif not isinstance(user_id, _AllUsers):
            params["user_id"] = user_id
        if connector is not None:
            params["connector"] = connector
        if symbol is not None:
            params["symbol"] = symbol.upper()
        return _Shape("user_id" in params, connector is not None, symbol is not None), params

    async def _answer(self, fact: _Fact) -> Any:
        """The fact's answer, once per query and parameters in one transaction.

        The router re-runs every check after rounding an order, in the same transaction,
        which holds the user's lock and has written nothing yet: the second run reuses the
        first one's answers. A new transaction starts afresh. The first query of a
        transaction also fetches every query announced by :meth:`expect`.
        """
        if fact.key in self._answers and self._transaction is not None \
                and self._session().get_transaction() is self._transaction:
            return self._answers[fact.key]  # no trip into the session (a greenlet, if async)

        def cached(session: Session) -> Any:
            connection = session.connection()
            transaction = session.get_transaction()
            if transaction is not self._transaction:
                self._transaction, self._answers = transaction, {}
            elif fact.key in self._answers:
                return self._answers[fact.key]
            if self._expected:
                expected, self._expected = self._expected, []
                wanted = {f.key: f for f in expected if f.key not in self._answers}
                if len(wanted) > 1 or (wanted and fact.key not in wanted):
                    self._fetch(connection, [*wanted.values()])
                    if fact.key in self._answers:
                        return self._answers[fact.key]
            answer = self._answers[fact.key] = _decode(
                connection, fact, _select_rows(connection, fact))
            return answer

        return await self.run(cached)

    def _fetch(self, connection: Connection, facts: list[_Fact]) -> None:
        """Every fact's rows in one statement (see :func:`_union`), answers kept."""
        dialect = connection.dialect.name
        statement, layout = _union(dialect, tuple((f.kind, f.shape) for f in facts))
        params: dict[str, Any] = {}
        for index, fact in enumerate(facts):
            params.update((f"q{index}_{name}", value) for name, value in fact.params.items())
        rows: list[list[list[Any]]] = [[[] for _ in _parts(f.kind)] for f in facts]
        for row in connection.execute(statement, params):
            index, part, start, stop = layout[row[0]]
            rows[index][part].append(row[start:stop])
        for fact, fact_rows in zip(facts, rows, strict=True):
            self._answers[fact.key] = _decode(connection, fact, fact_rows)

    def _fact(self, kind: str, shape: _Shape, params: dict[str, Any]) -> _Fact:
        return _Fact(kind, shape, params, (kind, *sorted(params.items())))

    def _fact_open_orders(self, *, user_id: UserFilter = None, symbol: str | None = None,
                          connector: str | None = None) -> _Fact:
        return self._fact("open", *self._scope(user_id, connector, symbol))

    def _fact_orders_since(self, since: dt.datetime, *, user_id: UserFilter = None,
                           symbol: str | None = None, connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector, symbol)
        return self._fact("since", shape, {**params, "since": since})

    def _fact_notional_since(self, since: dt.datetime, *, user_id: UserFilter = None,
                             connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector)
        return self._fact("notional", shape, {**params, "since": since,
                                              "hour": _next_hour(since)})

    def _fact_notional_since_rows(self, since: dt.datetime, *, user_id: UserFilter = None,
                                  connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector)
        return self._fact("notional_rows", shape, {**params, "since": since})

    def _fact_position(self, asset: str, *, user_id: UserFilter = None,
                       connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector)
        return self._fact("position", shape, {**params, "asset": asset.upper()})

    def _fact_live_quantity(self, asset: str, side: Side, *, user_id: UserFilter = None,
                            connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector)
        params.update(_asset_params(asset), side=Side(side).value)
        return self._fact("live", shape, params)

    def _fact_exposure(self, asset: str, side: Side, *, user_id: UserFilter = None,
                       connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, connector)
        params.update(_asset_params(asset), asset=asset.upper(), side=Side(side).value)
        return self._fact("exposure", shape, params)

    def _fact_find_duplicate(self, since: dt.datetime, order: OrderRequest, *,
                             user_id: UserFilter = None,
                             connector: str | None = None) -> _Fact:
        shape, params = self._scope(user_id, self.connector if connector is None else connector,
                                    order.symbol)
        params.update(since=since, side=Side(order.side).value, order_type=str(order.type),
                      amount=order.amount)
        if order.price is None:
            return self._fact("duplicate_market", shape, params)
        return self._fact("duplicate", shape, {**params, "price": order.price})

    def _fact_trading_state_rows(self, connector: str) -> _Fact:
        return self._fact("states", _STATES_SHAPE, {
            "any_user": "", "user_id": self.user_id, "any_connector": "",
            "connector": connector})

    async def open_orders(self, *, user_id: UserFilter = None, symbol: str | None = None,
                          connector: str | None = None) -> int:
        """How many live rows (pending, open, partially filled, unknown) there are."""
        return int(await self._answer(self._fact_open_orders(
            user_id=user_id, symbol=symbol, connector=connector)))

    async def orders_since(self, since: dt.datetime, *, user_id: UserFilter = None,
                           symbol: str | None = None, connector: str | None = None) -> int:
        """How many orders (any status but rejected) were created at or after ``since``."""
        return int(await self._answer(self._fact_orders_since(
            since, user_id=user_id, symbol=symbol, connector=connector)))

    async def notional_since(self, since: dt.datetime, *, user_id: UserFilter = None,
                             connector: str | None = None) -> Decimal:
        """USD value of the orders created at or after ``since`` (see
        :func:`order_value_usd`): traded parts at ``filled * avg_price``, live remainders at
        their share of the notional their checks saw.

        The window's whole hours (from the first hour that starts at or after ``since``, with
        no upper bound: a row another process's clock dated ahead counts) are read from the
        ``notional_buckets`` aggregate (:mod:`bagbot_core.notional`), which every change of
        a row's value updates in its own transaction; only the rows of the first, partial
        hour are read and valued one by one. Equal, exactly, to
        :meth:`notional_since_rows`.
        """
        answer: Decimal = await self._answer(self._fact_notional_since(
            since, user_id=user_id, connector=connector))
        return answer

    async def notional_since_rows(self, since: dt.datetime, *, user_id: UserFilter = None,
                                  connector: str | None = None) -> Decimal:
        """:meth:`notional_since` computed from every row of the window, without the
        aggregate: the reference its tests compare against (and a cross-check after rows
        were written behind the ORM). Its cost grows with the window's rows."""
        answer: Decimal = await self._answer(self._fact_notional_since_rows(
            since, user_id=user_id, connector=connector))
        return answer

    async def position(self, asset: str, *, user_id: UserFilter = None,
                       connector: str | None = None) -> Decimal:
        """Net filled quantity of ``asset``: filled buys minus filled sells, over every
        symbol whose base is ``asset`` (any quote), all time.

        Reads the ``positions`` aggregate (:mod:`bagbot_core.positions`), which every fill
        updates in its own transaction: one indexed row per connector, whatever the history.
        """
        answer: Decimal = await self._answer(self._fact_position(
            asset, user_id=user_id, connector=connector))
        return answer

    async def live_quantity(self, asset: str, side: Side, *, user_id: UserFilter = None,
                            connector: str | None = None) -> Decimal:
        """Unfilled quantity (``qty - filled``) of the live ``side`` orders on ``asset``."""
        answer: Decimal = await self._answer(self._fact_live_quantity(
            asset, side, user_id=user_id, connector=connector))
        return answer

    async def exposure(self, asset: str, side: Side, *, user_id: UserFilter = None,
                       connector: str | None = None) -> tuple[Decimal, Decimal]:
        """``(position(asset), live_quantity(asset, side))`` in one round trip."""
        answer: tuple[Decimal, Decimal] = await self._answer(self._fact_exposure(
            asset, side, user_id=user_id, connector=connector))
        return answer

    async def find_duplicate(self, since: dt.datetime, order: OrderRequest, *,
                             user_id: UserFilter = None,
                             connector: str | None = None) -> OrderView | None:
        """The newest non-rejected order created at or after ``since`` with the same user,
        connector, symbol, side, type, amount (as asked, or as sent) and price, under
        another client order id; ``None`` if there is none."""
        candidates: list[tuple[Any, ...]] = await self._answer(self._fact_find_duplicate(
            since, order, user_id=user_id, connector=connector))
        for row_id, client_order_id, qty, requested, price in candidates:
            if order.client_order_id is not None and client_order_id == order.client_order_id:
                continue
            if order.amount in (qty, requested) and price == order.price:
                def whole(session: Session, row_id: int = row_id) -> OrderView | None:
                    found = session.get(Order, row_id)  # the whole row: only when refused
                    return None if found is None else found.view()

                return await self.run(whole)
        return None

    async def trading_state_rows(self, connector: str) -> list[StateRow]:
        """The ``trading_states`` rows that cover this user on ``connector`` (global,
        connector, user, user on connector): what the ``trading_state`` check reads."""
        answer: list[StateRow] = await self._answer(self._fact_trading_state_rows(connector))
        return answer


#: The queries :meth:`History.expect` can announce.
_PREFETCHABLE: Final = frozenset({
    "open_orders", "orders_since", "notional_since", "position", "live_quantity", "exposure",
    "find_duplicate", "trading_state_rows"})


class StateRow(NamedTuple):
    """One ``trading_states`` row, as :meth:`History.trading_state_rows` returns it."""

    user_id: str
    connector: str
    state: str
    reason: str
    who: str
    changed_at: dt.datetime


class _Fact(NamedTuple):
    """One query of :class:`History`: its kind and shape, its parameters, its cache key."""

    kind: str
    shape: _Shape
    params: dict[str, Any]
    key: tuple[Any, ...]


class _Shape(NamedTuple):
    """Which filters a query has (the testnet flag always)."""

    user: bool
    connector: bool
    symbol: bool


#: The trading-state query's shape: it has no variants.
_STATES_SHAPE: Final = _Shape(user=True, connector=True, symbol=False)


def _parts(kind: str) -> range:
    """How many row sets a query reads (the exposure: the position's rows, the live ones;
    the notional: the buckets, the partial hour's rows)."""
    return range(2 if kind in ("exposure", "notional") else 1)


@functools.lru_cache(maxsize=256)
def _part_statements(kind: str, dialect: str, shape: _Shape, prefix: str = "") -> tuple[Any, ...]:
    """One statement per row set of a query (see :func:`_parts`)."""
    if kind == "exposure":
        return (_position_statement(shape, prefix), _statement("live", dialect, shape, prefix))
    if kind == "notional":
        return (_bucket_statement(dialect, shape, prefix),
                _statement("notional", dialect, shape, prefix))
    if kind == "states":
        from bagbot_core.models import TradingStateRow

        table = TradingStateRow
        return (select(table.user_id, table.connector, table.state, table.reason, table.who,
                       _raw(table.changed_at)).where(
            table.user_id.in_([_bind(prefix + "any_user"), _bind(prefix + "user_id")]),
            table.connector.in_([_bind(prefix + "any_connector"),
                                 _bind(prefix + "connector")])),)
    return (_statement(kind, dialect, shape, prefix),)


@functools.lru_cache(maxsize=256)
def _union(dialect: str, queries: tuple[tuple[str, _Shape], ...],
           ) -> tuple[Any, dict[int, tuple[int, int, int, int]]]:
    """Several queries' row sets as one ``UNION ALL`` (one round trip), and where each row
    set's columns are: ``{tag: (query, row set, first column, end)}``, the tag being each
    row's first column. Query ``i``'s parameters are prefixed ``q{i}_``.

    SQLite shares the columns between row sets (it types values, not columns); PostgreSQL
    gives each row set columns of its own, ``NULL`` in the other rows, so that every
    column has one type.
    """
    parts = []
    for index, (kind, shape) in enumerate(queries):
        for part, statement in enumerate(_part_statements(kind, dialect, shape, f"q{index}_")):
            parts.append((index, part, statement.order_by(None)))
    shared = dialect != "postgresql"
    width = 1 + (max(len(s.selected_columns) for *_, s in parts) if shared
                 else sum(len(s.selected_columns) for *_, s in parts))
    layout: dict[int, tuple[int, int, int, int]] = {}
    members = []
    start = 1
    for tag, (index, part, statement) in enumerate(parts):
        columns = list(statement.selected_columns)
        stop = start + len(columns)
        layout[tag] = (index, part, start, stop)
        row: list[Any] = [literal_column(str(tag)).label("c0")]
        row.extend(_raw(column) for column in columns)
        members.append((start, row, statement))
        if not shared:
            start = stop
    nulls: list[Any] = [None]
    if shared:
        nulls = [null()] * width
    else:  # PostgreSQL types a NULL of two UNION members as text: each is cast
        for _, row, _ in members:
            nulls.extend(_raw(cast(null(), _column_type(column))) for column in row[1:])
    selects = []
    for start, row, statement in members:
        values = [*nulls[:start], *row[1:], *nulls[start + len(row) - 1:]]
        values[0] = row[0]
        selects.append(statement.with_only_columns(
            *(value if position == 0 else value.label(f"c{position}")
              for position, value in enumerate(values)), maintain_column_froms=True))
    return union_all(*selects), layout


def _column_type(column: Any) -> Any:
    """The database type of a selected column, under its labels and type coercions."""
    while True:
        if isinstance(column, Label):
            column = column.element
        elif isinstance(column, TypeCoerce):
            column = column.clause
        else:
            return column.type


def _select_rows(connection: Connection, fact: _Fact) -> list[list[Any]]:
    """The fact's row sets, from its own statement(s)."""
    dialect = connection.dialect.name
    statements = _part_statements(fact.kind, dialect, fact.shape)
    if len(statements) == 1:
        return [list(connection.execute(statements[0], fact.params))]
    statement, layout = _union(dialect, ((fact.kind, fact.shape),))
    rows: list[list[Any]] = [[] for _ in statements]
    params = {f"q0_{name}": value for name, value in fact.params.items()}
    for row in connection.execute(statement, params):
        _, part, start, stop = layout[row[0]]
        rows[part].append(row[start:stop])
    return rows


def _decode(connection: Connection, fact: _Fact, rows: list[list[Any]]) -> Any:
    """A query's answer from its row sets (driver values: text or Decimal for money)."""
    kind = fact.kind
    if kind in ("open", "since"):
        return int(rows[0][0][0] or 0) if rows[0] else 0
    if kind == "notional":  # the whole hours' buckets, then the first hour's rows
        if connection.dialect.name == "postgresql":
            buckets = Decimal(rows[0][0][0])
        else:
            buckets = _sum(Decimal(value) for value, in rows[0])
        partial = _notional(connection, fact, rows[1], "notional_rest")
        with decimal.localcontext(_EXACT):
            return normalize(buckets + partial)
    if kind == "notional_rows":
        return _notional(connection, fact, rows[0], "notional_rows_rest")
    if kind == "position":
        return _sum(Decimal(quantity) for quantity, in rows[0])
    if kind == "live":
        return _unfilled(rows[0])
    if kind == "exposure":
        return _sum(Decimal(quantity) for quantity, in rows[0]), _unfilled(rows[1])
    if kind == "states":
        return sorted(StateRow(user, connector, state, reason, who,
                               _when(connection.dialect, changed_at))
                      for user, connector, state, reason, who, changed_at in rows[0])
    if kind in ("duplicate", "duplicate_market"):  # newest first, as the statement orders
        candidates = sorted(
            ((_when(connection.dialect, created), row_id, coid, _decimal(qty),
              _decimal(requested), _decimal(price))
             for row_id, coid, qty, requested, price, created in rows[0]),
            key=lambda row: (row[0], row[1]), reverse=True)
        return [row[1:] for row in candidates]
    raise ValueError(kind)


def _notional(connection: Connection, fact: _Fact, first: list[Any], rest_kind: str) -> Decimal:
    """The value of the rows a notional statement fetched (SQLite), or its sum and the
    rest it could not sum (PostgreSQL, fetched by ``rest_kind``'s statement)."""
    dialect = connection.dialect.name
    rows: Any
    if dialect == "postgresql":
        # NUMERIC arithmetic is exact: the database sums the rows whose value is a product
        # or a column, and counts the rest (rare), fetched only if any.
        summed, rest = first[0]
        total = Decimal(summed)
        rows = connection.execute(_statement(rest_kind, dialect, fact.shape),
                                  fact.params).all() if rest else []
    else:
        # SQLite keeps decimals as text: every product and the sum are exact here.
        total = Decimal(0)
        rows = []
        with decimal.localcontext(_EXACT):
            for kind, status, symbol, qty, filled, avg, value in first:
                if kind == 1:
                    total += Decimal(filled) * Decimal(avg)
                elif kind == 0:
                    if value is not None:
                        total += Decimal(value)
                else:
                    rows.append((status, symbol, qty, filled, avg, value))
    with decimal.localcontext(_EXACT):
        for status, symbol, qty, filled, avg, value in rows:
            total += _value(status, symbol, Decimal(qty), Decimal(filled),
                            None if avg is None else Decimal(avg),
                            None if value is None else Decimal(value))
    return normalize(total)


def _when(dialect: Any, value: Any) -> dt.datetime:
    """A timestamp column's driver value (never ``NULL``) as timezone-aware UTC (SQLite
    returns text)."""
    if isinstance(value, str):
        return _datetime_processor(dialect)(value)  # type: ignore[no-any-return]
    when: dt.datetime = value
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@functools.lru_cache(maxsize=8)
def _datetime_processor(dialect: Any) -> Callable[[Any], Any]:
    from bagbot_core.models import UTCDateTime

    processor = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    if processor is None:  # pragma: no cover - every dialect bagbot supports parses text
        raise ValueError(f"no timestamp parser for {dialect.name}")
    return processor


def _asset_params(asset: str) -> dict[str, str]:
    """The LIKE pattern for "base is ``asset``"."""
    base = asset.upper()
    return {"pattern": _asset_pattern(base), "prefix": f"{base}/"}


@functools.lru_cache(maxsize=256)
def _statement(kind: str, dialect: str, shape: _Shape, prefix: str = "") -> Any:
    """The statement for one query shape, with bound parameters (built once); ``prefix``
    starts every parameter's name (one prefix per query of a prefetch, see :func:`_union`).
    """
    def bindparam(name: str) -> Any:
        return _bind(prefix + name)

    where: list[ColumnElement[bool]] = [Order.testnet == bindparam("testnet")]
    if shape.user:
        where.append(Order.user_id == bindparam("user_id"))
    if shape.connector:
        where.append(Order.connector == bindparam("connector"))
    if shape.symbol:
        where.append(Order.symbol == bindparam("symbol"))
    since = Order.created_at >= bindparam("since")
    not_rejected = Order.status != _REJECTED
    # No symbol range next to the pattern: it would lead SQLite to walk every row of the
    # user's asset, all time, instead of the user's few live rows (ix_orders_user_status).
    base_is: ColumnElement[bool] = Order.symbol.like(bindparam("pattern"), escape="\\")
    if dialect == "sqlite":  # its LIKE ignores case; PostgreSQL's does not
        base_is = func.instr(Order.symbol, bindparam("prefix")) == 1
    if kind == "open":
        return select(func.count()).select_from(Order).where(*where, _is_live())
    if kind == "since":
        return select(func.count()).select_from(Order).where(*where, since, not_rejected)
    if kind in ("notional", "notional_rest", "notional_rows", "notional_rows_rest"):
        # Each row's kind, decided once per row: 0 unfilled (its live remainder's notional),
        # 1 filled at a USD price (filled * avg_price), 2 anything else (decided in Python
        # by _value: rare). "notional": the rows of the window's first, partial hour (the
        # buckets hold the rest); "notional_rows": every row of the window.
        where += [since, not_rejected]
        if kind in ("notional", "notional_rest"):
            where.append(Order.created_at < bindparam("hour"))
        rest = kind in ("notional_rest", "notional_rows_rest")
        is_live = _is_live()
        unfilled = Order.filled_qty == Decimal(0)
        row_kind = case((unfilled, 0), (and_(not_(is_live), Order.avg_price.is_not(None),
                                             _usd_sql(dialect)), 1), else_=2)
        if dialect != "postgresql":
            # Unfilled rows that are no longer live count nothing: not even fetched.
            return select(row_kind, Order.status, Order.symbol, *_RAW_MONEY).where(
                *where, not_(and_(unfilled, not_(is_live))))
        if rest:
            return select(Order.status, Order.symbol, *_RAW_MONEY).where(*where, row_kind == 2)
        value = case((unfilled, case((is_live, func.coalesce(Order.notional_usd, 0)), else_=0)),
                     (row_kind == 1, Order.filled_qty * Order.avg_price), else_=None)
        rows = select(row_kind.label("kind"), value.label("value")).where(*where).subquery()
        # Aggregating the rare rest as arrays would cost more than the sum itself: it is
        # counted, and fetched by a second statement only when there is one.
        return select(func.coalesce(func.sum(rows.c.value), 0),
                      func.count().filter(rows.c.kind == 2))
    if kind == "position":
        return _position_statement(shape, prefix)
    if kind == "exposure":  # the position's row(s), then the live rows: one round trip
        live = select(literal(2).label("part"), _raw(Order.qty), _raw(Order.filled_qty)).where(
            *where, _is_live(), Order.side == bindparam("side"), base_is)
        held = _position_statement(shape, prefix).with_only_columns(
            literal(1).label("part"), _raw(Position.quantity), type_coerce(null(), String()))
        return union_all(held, live)
    if kind == "live":
        return select(_raw(Order.qty), _raw(Order.filled_qty)).where(
            *where, _is_live(), Order.side == bindparam("side"), base_is)
    if kind in ("duplicate", "duplicate_market"):
        # Equal decimals are equal text on SQLite: bagbot stores the canonical form.
        price = (Order.price == bindparam("price") if kind == "duplicate"
                 else Order.price.is_(None))
        return select(Order.id, Order.client_order_id, _raw(Order.qty),
                      _raw(Order.requested_qty), _raw(Order.price),
                      _raw(Order.created_at)).where(
            *where, since, not_rejected, Order.side == bindparam("side"),
            Order.order_type == bindparam("order_type"), price,
            or_(Order.qty == bindparam("amount"), Order.requested_qty == bindparam("amount")),
        ).order_by(Order.created_at.desc(), Order.id.desc())
    raise ValueError(kind)


def _bucket_statement(dialect: str, shape: _Shape, prefix: str = "") -> Any:
    """The ``notional_buckets`` of the window's whole hours: their values (SQLite: summed in
    Python, exactly), or their sum (PostgreSQL: NUMERIC is exact)."""
    def bindparam(name: str) -> Any:
        return _bind(prefix + name)

    table = NotionalBucket
    where = [table.testnet == bindparam("testnet"), table.hour >= bindparam("hour")]
    if shape.user:
        where.append(table.user_id == bindparam("user_id"))
    if shape.connector:
        where.append(table.connector == bindparam("connector"))
    if dialect == "postgresql":
        return select(func.coalesce(func.sum(table.value), 0)).where(*where)
    return select(_raw(table.value)).where(*where)


def _next_hour(since: dt.datetime) -> dt.datetime:
    """The first whole UTC hour at or after ``since`` (timezone-aware)."""
    start = since.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return start if start == since else start + dt.timedelta(hours=1)


def _is_live() -> ColumnElement[bool]:
    """``status IN (live statuses)`` with one bound parameter each: an expanding ``IN``
    would be re-rendered on every execution."""
    return Order.status.in_([literal(status) for status in sorted(_LIVE)])


def _position_statement(shape: _Shape, prefix: str = "") -> Any:
    def bindparam(name: str) -> Any:
        return _bind(prefix + name)

    where = [Position.testnet == bindparam("testnet"), Position.asset == bindparam("asset")]
    if shape.user:
        where.append(Position.user_id == bindparam("user_id"))
    if shape.connector:
        where.append(Position.connector == bindparam("connector"))
    return select(_raw(Position.quantity)).where(*where)


def _raw(column: Any) -> Any:
    """A money column as the driver returns it: text on SQLite, Decimal on PostgreSQL
    (skips normalising every row: only the sum is normalised)."""
    return type_coerce(column, String())


_RAW_MONEY = (_raw(Order.qty), _raw(Order.filled_qty), _raw(Order.avg_price),
              _raw(Order.notional_usd))


def _decimal(value: Any) -> Any:
    return None if value is None else Decimal(value)


def _usd_sql(dialect: str) -> ColumnElement[bool]:
    """:func:`_usd_quoted` in SQL."""
    from bagbot_core.risk import USD_QUOTES

    find = func.strpos if dialect == "postgresql" else func.instr
    slash = find(Order.symbol, literal("/"))
    return and_(slash > 0, func.upper(func.substr(Order.symbol, slash + 1)).in_(
        [literal(quote) for quote in sorted(USD_QUOTES)]))


def _unfilled(rows: Iterable[Any]) -> Decimal:
    """Sum of ``qty - filled`` (never below zero) over live rows."""
    return _sum(max(Decimal(qty) - Decimal(filled or 0), _ZERO) for qty, filled in rows)


def _sum(values: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    with decimal.localcontext(_EXACT):
        for value in values:
            total += value
    return normalize(total)
