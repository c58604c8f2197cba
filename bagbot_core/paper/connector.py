"""``PaperConnector``: a simulated exchange that keeps its book in bagbot's own database.

No keys, no network, no ccxt. Orders and balances are rows in ``paper_orders`` and
``paper_balances`` (see :mod:`bagbot_core.paper.models`) in the router's database, so
separate ``bagbot`` invocations see the same book and the same balances.

Market model
    Every market has a *reference price* (defaults below, overridable through config
    ``prices``, movable with :meth:`PaperConnector.set_price`). The touch is
    ``bid = ref * (1 - spread)`` rounded down to the price step and ``ask = ref * (1 + spread)``
    rounded up (default spread 0.0001 per side: BTC/USDT 50000 quotes 49995 / 50005).
    There is no order book between accounts: every order trades against this quote.

Fill rule
    * market buy fills at once, in full, at the ask; market sell at the bid;
    * a limit order that crosses on arrival (buy ``price >= ask``, sell ``price <= bid``) is a
      taker and fills at once at the *better of its limit and the touch* -- which is always the
      touch (a buy at 51000 with the ask at 50005 pays 50005);
    * any other limit order rests ``open`` with its funds reserved (``amount * price`` of the
      quote for a buy, ``amount`` of the base for a sell) until it is canceled or the
      reference price moves through it; it then fills in full as a maker at its *own* limit
      price. Resting orders are matched whenever this account's book is touched (create,
      fetch, cancel, :meth:`~PaperConnector.set_price`, balances) against the current prices
      of this connector instance.
    * No partial fills and no fees: every fill moves exactly ``amount`` of the base and
      ``amount * price`` of the quote.

Funds
    A buy needs ``amount * price`` (limit) or ``amount * ask`` (market) of free quote, a sell
    ``amount`` of free base; otherwise ``ExchangeRejectedError("insufficient balance ...")``
    and nothing is written. Starting balances (config ``balances``) are created per
    (account, asset) the first time the account touches the asset.

Idempotency
    A client order id is unique per account. Creating an order with a client order id the
    account already used returns the existing order, unchanged (like Coinbase), provided it
    is the same order (symbol, side, type, amount, price); a *different* order under a used id
    is refused with :class:`~bagbot_core.errors.ExchangeRejectedError`.

Consistency
    Every operation is one database transaction: balance updates and the order row commit
    together or not at all. Routed through bagbot's router on the book's own database, a new
    order is placed in the router's transaction (:meth:`PaperConnector.create_order_in`):
    the router's order row, the paper order and the balances commit together. On SQLite the
    engine starts every transaction with ``BEGIN IMMEDIATE`` (one writer at a time, across
    processes); on PostgreSQL the rows are locked with ``SELECT ... FOR UPDATE`` (orders by
    id, then balances by asset), so two processes cannot spend the same balance twice. The
    statements are Core statements (no unit of work). On SQLite an order on a market where
    the account has nothing resting reads its balances and that fact in one statement and
    skips the resting-order scan; on PostgreSQL the scan is one indexed read. Database work
    is short and synchronous; the coroutines call it directly.

Reference prices belong to the connector instance (defaults + config); they are not stored,
so a new process starts from the configured prices again.

Config keys (``ConnectorSettings.config``):
    ``account``   account name (default ``"default"``);
    ``balances``  starting balances ``{"USDT": "100000", ...}`` (replaces the defaults);
    ``prices``    reference price overrides ``{"BTC/USDT": "51000"}``;
    ``markets``   a list replacing the default markets, each a mapping with ``symbol``,
                  ``price`` and optionally ``amount_step``, ``price_step``, ``min_amount``,
                  ``max_amount``, ``min_cost``, ``active``;
    ``spread``    fraction of the reference price on each side (default ``"0.0001"``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import Any, TypeVar, cast

import attrs
from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bagbot_core.connector import Capabilities, Connector, ConnectorSettings
from bagbot_core.connector_config import ConfigKey, declare_config
from bagbot_core.db import RELAXED_SYNC, database_url, get_engine, parse_url
from bagbot_core.errors import (
    ConfigurationError,
    ExchangeOrderNotFoundError,
    ExchangeRejectedError,
    ExchangeUnavailableError,
    OrderValidationError,
)
from bagbot_core.models import utcnow
from bagbot_core.money import (
    MAX_SCALE,
    normalize,
    parse_number_text,
    round_to_step,
    to_decimal,
)
from bagbot_core.orders import ExchangeOrder, Market, OrderRequest, OrderType, Quote, Side
from bagbot_core.paper.models import PaperBalanceRow, PaperOrderRow
from bagbot_core.params import params_to_send
from bagbot_core.status import OrderStatus
from bagbot_core.store import commit

T = TypeVar("T")

#: Arithmetic on money must never round: any inexact result raises instead.
_EXACT = Context(
    prec=80,
    Emax=999_999,
    Emin=-999_999,
    traps=[InvalidOperation, Inexact, DivisionByZero, Overflow],
)
#: For deliberate rounding (the touch, to the price step).
_ROUNDING = Context(prec=80, Emax=999_999, Emin=-999_999)

_MAX_ID_LENGTH = 64
_DEFAULT_STEP = "0.00000001"
DEFAULT_ACCOUNT = "default"
DEFAULT_SPREAD = Decimal("0.0001")
DEFAULT_BALANCES: Mapping[str, Decimal] = {
    "USDT": Decimal(100_000),
    "USD": Decimal(100_000),
    "BTC": Decimal(10),
    "ETH": Decimal(100),
    "SOL": Decimal(1_000),
}
#: The config keys (the module docstring says what each holds).
CONFIG_KEYS = declare_config(
    ConfigKey("account", "text", "account name (default \"default\")"),
    ConfigKey("balances", "table", "starting balances, e.g. {USDT = \"100000\"}"),
    ConfigKey("prices", "table", "reference price overrides, e.g. {\"BTC/USDT\" = \"51000\"}"),
    ConfigKey("markets", "list", "markets replacing the default ones"),
    ConfigKey("spread", "decimal", "fraction of the reference price on each side"),
)
_CONFIG_KEYS = frozenset(CONFIG_KEYS)


@attrs.frozen
class PaperMarket:
    """A paper market and its default reference price."""

    market: Market
    price: Decimal


@attrs.frozen
class PaperBalance:
    """One asset of the account: ``free`` to spend, ``locked`` by resting orders."""

    asset: str
    free: Decimal
    locked: Decimal

    @property
    def total(self) -> Decimal:
        return normalize(_EXACT.add(self.free, self.locked))


def _market(
    symbol: str,
    price: str,
    *,
    amount_step: str,
    price_step: str,
    min_amount: str,
    min_cost: str,
    active: bool = True,
) -> PaperMarket:
    base, quote = symbol.split("/")
    return PaperMarket(
        market=Market(
            symbol=symbol,
            base=base,
            quote=quote,
            active=active,
            amount_step=Decimal(amount_step),
            price_step=Decimal(price_step),
            min_amount=Decimal(min_amount),
            min_cost=Decimal(min_cost),
        ),
        price=Decimal(price),
    )


#: The markets a paper account trades when config ``markets`` is not given.
DEFAULT_MARKETS: tuple[PaperMarket, ...] = (
    _market("BTC/USDT", "50000", amount_step="0.00001", price_step="0.01",
            min_amount="0.00001", min_cost="5"),
    _market("ETH/USDT", "3000", amount_step="0.0001", price_step="0.01",
            min_amount="0.0001", min_cost="5"),
    _market("SOL/USDT", "150", amount_step="0.001", price_step="0.001",
            min_amount="0.01", min_cost="5"),
    _market("BTC/USD", "50000", amount_step="0.00000001", price_step="0.01",
            min_amount="0.00001", min_cost="1"),
    _market("ETH/BTC", "0.06", amount_step="0.0001", price_step="0.000001",
            min_amount="0.001", min_cost="0.0001"),
    # Listed but halted: quotes work, orders are refused.
    _market("LUNA/USDT", "0.0001", amount_step="1", price_step="0.0000001",
            min_amount="1", min_cost="1", active=False),
)  # fmt: skip


# ---------------------------------------------------------------------------
# Config parsing
# ---------------------------------------------------------------------------


def _config_decimal(value: object, name: str, *, allow_zero: bool = False) -> Decimal:
    if allow_zero and isinstance(value, Decimal | int | str) and not isinstance(value, bool):
        zero = parse_number_text(str(value)) if not isinstance(value, Decimal) else value
        if zero is not None and zero == 0:
            return Decimal(0)  # else to_decimal names the problem below
    try:
        return to_decimal(value, name)
    except OrderValidationError as exc:
        raise ConfigurationError(f"paper connector config: {exc}") from None


def _parse_symbol(value: object) -> tuple[str, str, str]:
    if not isinstance(value, str) or value.count("/") != 1:
        raise ConfigurationError(f"paper connector config: bad market symbol {value!r}")
    base, quote = value.split("/")
    if not base or not quote:
        raise ConfigurationError(f"paper connector config: bad market symbol {value!r}")
    return value, base, quote


def _parse_market(entry: object) -> PaperMarket:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"paper connector config: a market must be a mapping: {entry!r}")
    unknown = set(entry) - {
        "symbol", "price", "amount_step", "price_step", "min_amount", "max_amount", "min_cost",
        "active",
    }  # fmt: skip
    if unknown:
        raise ConfigurationError(f"paper connector config: unknown market keys {sorted(unknown)}")
    symbol, base, quote = _parse_symbol(entry.get("symbol"))
    if "price" not in entry:
        raise ConfigurationError(f"paper connector config: market {symbol} needs a price")

    def optional(key: str) -> Decimal | None:
        value = entry.get(key)
        return None if value is None else _config_decimal(value, f"{symbol} {key}")

    active = entry.get("active", True)
    if not isinstance(active, bool):
        raise ConfigurationError(f"paper connector config: {symbol} active must be true/false")
    return PaperMarket(
        market=Market(
            symbol=symbol,
            base=base,
            quote=quote,
            active=active,
            amount_step=_config_decimal(entry.get("amount_step", _DEFAULT_STEP),
                                        f"{symbol} amount_step"),
            price_step=_config_decimal(entry.get("price_step", _DEFAULT_STEP),
                                       f"{symbol} price_step"),
            min_amount=optional("min_amount"),
            max_amount=optional("max_amount"),
            min_cost=optional("min_cost"),
        ),
        price=_config_decimal(entry["price"], f"{symbol} price"),
    )  # fmt: skip


def _parse_mapping(value: object, key: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"paper connector config: {key} must be a mapping")
    return value


# ---------------------------------------------------------------------------
# Exact money helpers
# ---------------------------------------------------------------------------


def _mul(a: Decimal, b: Decimal) -> Decimal:
    return normalize(_EXACT.multiply(a, b))


def _add(a: Decimal, b: Decimal) -> Decimal:
    return normalize(_EXACT.add(a, b))


def _sub(a: Decimal, b: Decimal) -> Decimal:
    return normalize(_EXACT.subtract(a, b))


def _storable(value: Decimal, what: str) -> Decimal:
    """Refuse a value ``NUMERIC(38, 18)`` cannot hold exactly."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_SCALE:
        raise ExchangeRejectedError(f"{what} {value} needs more than {MAX_SCALE} decimal places")
    if value != 0 and value.adjusted() >= 20:
        raise ExchangeRejectedError(f"{what} {value} is too large")
    return value


def _is_multiple(value: Decimal, step: Decimal | None) -> bool:
    if step is None or step <= 0:
        return True
    return _ROUNDING.remainder(value, step) == 0


_round_to_step = round_to_step  # one rounding rule: bagbot_core.money

# ---------------------------------------------------------------------------
# The connector
# ---------------------------------------------------------------------------


class PaperConnector(Connector):
    """The built-in ``paper`` exchange. See the module docstring for the rules it follows.

    :param settings: ``database_url`` picks the database (default
        :func:`bagbot_core.db.database_url`); ``config`` is described in the module docstring.
    :param engine: use this engine instead of :func:`bagbot_core.db.get_engine` (tests).
    :raises ConfigurationError: for a malformed config.
    """

    name = "paper"
    config_keys = CONFIG_KEYS
    capabilities = Capabilities(
        market_orders=True,
        limit_orders=True,
        cancel=True,
        fetch_by_client_order_id=True,
        fills_in_create_response=True,
    )

    def endpoints(self) -> Sequence[str]:
        """No endpoints: paper trades in bagbot's own database, never on an exchange."""
        return ()

    def __init__(
        self, settings: ConnectorSettings | None = None, *, engine: Engine | None = None
    ) -> None:
        settings = settings or ConnectorSettings()
        config = settings.config
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ConfigurationError(
                f"paper connector config: unknown keys {sorted(unknown)} "
                f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
            )
        account = config.get("account", DEFAULT_ACCOUNT)
        if not isinstance(account, str) or not account or len(account) > _MAX_ID_LENGTH:
            raise ConfigurationError(
                f"paper connector config: account must be a non-empty string of at most "
                f"{_MAX_ID_LENGTH} characters, got {account!r}"
            )
        self.account: str = account

        if "markets" in config:
            raw_markets = config["markets"]
            if isinstance(raw_markets, str | bytes) or not isinstance(raw_markets, Sequence):
                raise ConfigurationError("paper connector config: markets must be a list")
            markets = [_parse_market(entry) for entry in raw_markets]
        else:
            markets = list(DEFAULT_MARKETS)
        self._markets: dict[str, PaperMarket] = {}
        for paper_market in markets:
            symbol = paper_market.market.symbol
            if symbol in self._markets:
                raise ConfigurationError(f"paper connector config: market {symbol} listed twice")
            self._markets[symbol] = paper_market
        self._prices: dict[str, Decimal] = {s: m.price for s, m in self._markets.items()}
        for symbol, price in _parse_mapping(config.get("prices", {}), "prices").items():
            if symbol not in self._markets:
                raise ConfigurationError(
                    f"paper connector config: price for unknown market {symbol!r}"
                )
            self._prices[symbol] = _config_decimal(price, f"price of {symbol}")

        raw_balances = config.get("balances", DEFAULT_BALANCES)
        self._starting: dict[str, Decimal] = {
            str(asset): _config_decimal(amount, f"balance of {asset}", allow_zero=True)
            for asset, amount in _parse_mapping(raw_balances, "balances").items()
        }
        spread = _config_decimal(config.get("spread", DEFAULT_SPREAD), "spread", allow_zero=True)
        if spread >= 1:
            raise ConfigurationError(f"paper connector config: spread must be < 1, got {spread}")
        self._spread = spread

        self._database_url = settings.database_url
        self._engine = engine
        self._session_factory: sessionmaker[Session] | None = None
        self._own_url: str | None = None  # see _shares_transaction

    # -- database plumbing ---------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine holding the book (created on first use, shared per URL)."""
        if self._engine is None:
            self._engine = get_engine(database_url(self._database_url))
        return self._engine

    def _run(self, work: Callable[[Session], T], *, pass_integrity_errors: bool = False,
             durable: bool = True) -> T:
        """Run ``work`` in one transaction: all of it commits, or none of it.

        ``durable=False`` (see :func:`bagbot_core.store.commit`): the commit does not wait
        for the disk. For a new order: the router's ``pending`` row, committed durably before
        the order was sent, comes first in the database's log, and the answer the router
        records after it comes later; a power loss keeps a prefix of that log, so it may
        lose the paper order and that answer together (reconcile then finds no order: the
        row is refused, as for an exchange that never got it), never the answer alone.

        :raises ExchangeUnavailableError: the database failed (locked past the busy timeout,
            connection lost); nothing of ``work`` is committed.
        """
        try:
            if self._session_factory is None:
                self._session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)
            with self._session_factory() as session:
                if durable:
                    with session.begin():
                        return work(session)
                token = RELAXED_SYNC.set(True)  # SQLite: set as the transaction begins
                try:
                    result = work(session)
                    commit(session, durable=False)
                except BaseException:
                    session.rollback()
                    raise
                finally:
                    RELAXED_SYNC.reset(token)
                return result
        except SQLAlchemyError as exc:
            if pass_integrity_errors and isinstance(exc, IntegrityError):
                raise
            raise ExchangeUnavailableError(f"paper exchange database error: {exc}") from exc

    async def _call(self, work: Callable[[Session], T], *,
                    pass_integrity_errors: bool = False, durable: bool = True) -> T:
        """:meth:`_run` in a worker thread, off the event loop.

        In an async process (``bagbot serve``) another task's ``AsyncSession`` may hold
        SQLite's write lock and needs the loop to commit it: waiting for that lock on the
        loop would stall both until the busy timeout. An in-memory database stays on this
        thread (each thread would see its own, empty one).
        """
        url = (self._engine.url if self._engine is not None
               else parse_url(database_url(self._database_url)))  # no engine yet: _run's job
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return self._run(work, pass_integrity_errors=pass_integrity_errors,
                             durable=durable)
        return await asyncio.to_thread(self._run, work,
                                       pass_integrity_errors=pass_integrity_errors,
                                       durable=durable)

    # -- markets and prices --------------------------------------------------------------

    async def load_markets(self, *, reload: bool = False) -> Mapping[str, Market]:
        return {symbol: paper.market for symbol, paper in self._markets.items()}

    def _paper_market(self, symbol: str) -> PaperMarket:
        try:
            return self._markets[symbol]
        except KeyError:
            raise ExchangeRejectedError(
                f"unknown symbol {symbol!r}: the paper exchange lists "
                f"{', '.join(sorted(self._markets))}"
            ) from None

    def reference_price(self, symbol: str) -> Decimal:
        """The current reference price of ``symbol`` (mid of the quote)."""
        self._paper_market(symbol)
        return self._prices[symbol]

    def _touch(self, symbol: str) -> tuple[Decimal, Decimal]:
        step = self._markets[symbol].market.price_step
        ref = self._prices[symbol]
        bid = _round_to_step(_ROUNDING.multiply(ref, 1 - self._spread), step, ROUND_FLOOR)
        ask = _round_to_step(_ROUNDING.multiply(ref, 1 + self._spread), step, ROUND_CEILING)
        if bid <= 0:
            bid = step if step is not None and step < ask else ref
        return bid, ask

    async def fetch_quote(self, symbol: str) -> Quote:
        self._paper_market(symbol)
        bid, ask = self._touch(symbol)
        return Quote(symbol=symbol, bid=bid, ask=ask, taken_at=time.monotonic())

    async def set_price(self, symbol: str, price: Decimal | str | int) -> list[ExchangeOrder]:
        """Move ``symbol``'s reference price and fill this account's resting orders it crosses.

        :return: The orders that filled because of the move (maker fills at their limit).
        :raises ExchangeRejectedError: for an unknown symbol.
        :raises OrderValidationError: for a price that is not a positive number.
        """
        self._paper_market(symbol)
        self._prices[symbol] = to_decimal(price, "price")

        def work(session: Session) -> list[ExchangeOrder]:
            return [self._view(row) for row in self._fill_crossed(session.connection(),
                                                                  [symbol])]

        return await self._call(work)

    # -- balances ------------------------------------------------------------------------

    def _ensure_balances(self, connection: Connection, assets: Collection[str]) -> None:
        """Create missing balance rows with their starting amounts (race-free)."""
        now = utcnow()
        values = [
            {
                "account": self.account,
                "asset": asset,
                "free": self._starting.get(asset, Decimal(0)),
                "locked": Decimal(0),
                "updated_at": now,
            }
            for asset in sorted(assets)
        ]
        if not values:
            return
        dialect = connection.dialect.name
        if dialect == "sqlite":
            connection.execute(sqlite.insert(_BALANCES).values(values).on_conflict_do_nothing())
        elif dialect == "postgresql":
            connection.execute(
                postgresql.insert(_BALANCES).values(values).on_conflict_do_nothing()
            )
        else:  # pragma: no cover - other backends: check, then insert
            have = set(connection.scalars(
                select(_BALANCES.c.asset).where(_BALANCES.c.account == self.account,
                                                _BALANCES.c.asset.in_(list(assets)))))
            missing = [v for v in values if v["asset"] not in have]
            if missing:
                connection.execute(insert(_BALANCES), missing)

    def _lock_balances(self, connection: Connection, assets: Iterable[str]) -> dict[str, _Balance]:
        """The account's balances of ``assets``, locked for update (in asset order)."""
        wanted = sorted(set(assets))
        params = {"account": self.account, "assets": wanted}
        rows = connection.execute(_LOCK_BALANCES, params).all()
        if len(rows) < len(wanted):  # first touch of an asset: create it, read again
            self._ensure_balances(connection, wanted)
            rows = connection.execute(_LOCK_BALANCES, params).all()
        return {row.asset: _Balance(row.asset, row.free, row.locked) for row in rows}

    def _write_balances(self, connection: Connection, balances: Mapping[str, _Balance]) -> None:
        """One ``UPDATE`` (an executemany) for every balance that changed."""
        now = utcnow()
        changed = [{"b_account": self.account, "b_asset": b.asset, "free": b.free,
                    "locked": b.locked, "updated_at": now}
                   for b in balances.values() if b.changed]
        if changed:
            connection.execute(_UPDATE_BALANCE, changed)

    async def fetch_balances(self) -> dict[str, PaperBalance]:
        """Every balance of the account (starting balances are created if missing)."""

        def work(session: Session) -> dict[str, PaperBalance]:
            connection = session.connection()
            self._fill_crossed(connection, None)
            self._ensure_balances(connection, self._starting)
            rows = connection.execute(
                select(_BALANCES.c.asset, _BALANCES.c.free, _BALANCES.c.locked)
                .where(_BALANCES.c.account == self.account)
                .order_by(_BALANCES.c.asset)
            ).all()
            return {r.asset: PaperBalance(r.asset, r.free, r.locked) for r in rows}

        return await self._call(work)

    # -- orders --------------------------------------------------------------------------

    @staticmethod
    def _view(row: _Order) -> ExchangeOrder:
        return ExchangeOrder(
            external_id=row.exchange_order_id,
            client_order_id=row.client_order_id,
            status=OrderStatus(row.status),
            symbol=row.symbol,
            filled_qty=row.filled,
            avg_price=row.avg_price,
            amount=row.amount,
            price=row.price,
            raw_status=row.status,
        )

    def _find(
        self,
        session: Session | Connection,
        external_id: str | None,
        client_order_id: str | None,
        *,
        lock: bool = False,
    ) -> _Order | None:
        query = _SELECT_ORDER.where(_ORDERS.c.account == self.account)
        if external_id:
            query = query.where(_ORDERS.c.exchange_order_id == external_id)
        elif client_order_id:
            query = query.where(_ORDERS.c.client_order_id == client_order_id)
        else:
            return None
        if lock:
            query = query.with_for_update()
        connection = session.connection() if isinstance(session, Session) else session
        row = connection.execute(query).one_or_none()
        return None if row is None else _Order(**row._mapping)

    def _crosses(self, row: _Order) -> bool:
        paper = self._markets.get(row.symbol)
        if paper is None or not paper.market.active or row.price is None:
            return False
        bid, ask = self._touch(row.symbol)
        return ask <= row.price if row.side == Side.BUY else bid >= row.price

    def _fill_crossed(self, connection: Connection,
                      symbols: Sequence[str] | None) -> list[_Order]:
        """Fill (as makers, at their limit) the account's open orders the prices crossed.

        One indexed read when the account has no open order on ``symbols`` (the common
        case): nothing else is read or written then.
        """
        query = _SELECT_ORDER.where(_ORDERS.c.account == self.account,
                                    _ORDERS.c.status == OrderStatus.OPEN.value)
        if symbols is not None:
            query = query.where(_ORDERS.c.symbol.in_(list(symbols)))
        rows = connection.execute(query.order_by(_ORDERS.c.id).with_for_update()).all()
        if not rows:
            return []
        crossed = [order for order in (_Order(**row._mapping) for row in rows)
                   if self._crosses(order)]
        if not crossed:
            return []
        assets: set[str] = set()
        for order in crossed:
            market = self._markets[order.symbol].market
            assets.update((market.base, market.quote))
        balances = self._lock_balances(connection, assets)
        for order in crossed:
            assert order.price is not None
            self._apply_fill(order, balances, order.price)
        self._write_balances(connection, balances)
        connection.execute(_UPDATE_ORDER, [self._order_changes(order) for order in crossed])
        return crossed

    @staticmethod
    def _order_changes(order: _Order) -> dict[str, Any]:
        return {"o_id": order.id, "status": order.status, "filled": order.filled,
                "avg_price": order.avg_price, "reserved": order.reserved,
                "closed_at": order.closed_at, "updated_at": order.closed_at or utcnow()}

    def _apply_fill(
        self, row: _Order, balances: Mapping[str, _Balance], price: Decimal
    ) -> None:
        """Fill ``row`` in full at ``price``: move base and quote, release its reservation."""
        market = self._markets[row.symbol].market
        cost = _storable(_mul(row.amount, price), "order value")
        if row.side == Side.BUY:
            spend_asset, spend, get_asset, get = market.quote, cost, market.base, row.amount
        else:
            spend_asset, spend, get_asset, get = market.base, row.amount, market.quote, cost
        paying = balances[spend_asset]
        if row.reserved:
            if row.reserved_asset != spend_asset or row.reserved < spend:
                raise AssertionError(f"paper order {row.exchange_order_id}: bad reservation")
            paying.locked = _sub(paying.locked, row.reserved)
            paying.free = _add(paying.free, _sub(row.reserved, spend))
        else:
            paying.free = _sub(paying.free, spend)
        receiving = balances[get_asset]
        receiving.free = _add(receiving.free, get)
        if paying.free < 0 or paying.locked < 0:
            raise AssertionError(f"paper balance of {spend_asset} would go negative")
        paying.changed = receiving.changed = True
        row.status = OrderStatus.FILLED.value
        row.filled = row.amount
        row.avg_price = price
        row.reserved = Decimal(0)
        row.closed_at = utcnow()

    @staticmethod
    def _check_client_order_id(client_order_id: str) -> None:
        if not isinstance(client_order_id, str) or not client_order_id:
            raise ExchangeRejectedError("client order id must be a non-empty string")
        if len(client_order_id) > _MAX_ID_LENGTH:
            raise ExchangeRejectedError(
                f"client order id is longer than {_MAX_ID_LENGTH} characters"
            )

    @staticmethod
    def _same_order(row: _Order, order: OrderRequest) -> ExchangeOrder:
        same = (
            row.symbol == order.symbol
            and row.side == order.side
            and row.order_type == order.type
            and row.amount == order.amount
            and (order.type == OrderType.MARKET or row.price == order.price)
        )
        if not same:
            raise ExchangeRejectedError(
                f"client order id {row.client_order_id!r} is already used by paper order "
                f"{row.exchange_order_id} ({row.side} {row.order_type} {row.amount} "
                f"{row.symbol}); a different order needs a new client order id"
            )
        return PaperConnector._view(row)

    def _validated(self, order: OrderRequest) -> tuple[Market, Decimal, Decimal | None]:
        market = self._paper_market(order.symbol).market
        if not market.active:
            raise ExchangeRejectedError(f"market {order.symbol} is not active on paper")
        if order.side not in (Side.BUY, Side.SELL):
            raise ExchangeRejectedError(f"unsupported side {order.side!r}")
        if order.type not in (OrderType.MARKET, OrderType.LIMIT):
            raise ExchangeRejectedError(f"unsupported order type {order.type!r}")
        amount = order.amount
        if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
            raise ExchangeRejectedError(f"amount must be a positive Decimal, got {amount!r}")
        amount = _storable(normalize(amount), "amount")
        if not _is_multiple(amount, market.amount_step):
            raise ExchangeRejectedError(
                f"amount {amount} is not a multiple of {market.symbol}'s step {market.amount_step}"
            )
        if market.min_amount is not None and amount < market.min_amount:
            raise ExchangeRejectedError(
                f"amount {amount} is below {market.symbol}'s minimum {market.min_amount}"
            )
        if market.max_amount is not None and amount > market.max_amount:
            raise ExchangeRejectedError(
                f"amount {amount} is above {market.symbol}'s maximum {market.max_amount}"
            )
        if order.type == OrderType.MARKET:
            return market, amount, None
        price = order.price
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise ExchangeRejectedError(
                f"a limit order needs a positive Decimal price, got {price!r}"
            )
        price = _storable(normalize(price), "price")
        if not _is_multiple(price, market.price_step):
            raise ExchangeRejectedError(
                f"price {price} is not a multiple of {market.symbol}'s tick {market.price_step}"
            )
        return market, amount, price

    def _create_in(
        self, session: Session, order: OrderRequest, client_order_id: str
    ) -> ExchangeOrder:
        """Place ``order`` in ``session``'s transaction; the caller commits.

        A client order id the account already used returns that order (or refuses a
        different one), whatever else would refuse the order now.
        """
        connection = session.connection()
        try:
            return self._place(connection, order, client_order_id)
        except ExchangeRejectedError:
            existing = self._find(connection, None, client_order_id)
            if existing is None:
                raise
            return self._same_order(existing, order)

    def _place(
        self, connection: Connection, order: OrderRequest, client_order_id: str
    ) -> ExchangeOrder:
        """Check, then write: every refusal comes before the first write of the order
        (resting orders the prices crossed and first-touch balance rows may be written
        before it: legitimate, complete changes of the book)."""
        market, amount, price = self._validated(order)
        balances = self._balances_if_nothing_rests(connection, market)
        if balances is None:
            self._fill_crossed(connection, [market.symbol])
        bid, ask = self._touch(market.symbol)
        buy = order.side == Side.BUY
        touch = ask if buy else bid
        # A crossing limit order is a taker: it fills at the better of limit and touch,
        # which for a crossing order is always the touch.
        crosses = price is None or (price >= ask if buy else price <= bid)
        unit = touch if price is None else price
        value = _storable(_mul(amount, unit), "order value")
        if market.min_cost is not None and value < market.min_cost:
            raise ExchangeRejectedError(
                f"order value {value} is below {market.symbol}'s minimum {market.min_cost}"
            )
        hold_asset, hold = (market.quote, value) if buy else (market.base, amount)
        if balances is None:
            balances = self._lock_balances(connection, (market.base, market.quote))
        available = balances[hold_asset].free
        if available < hold:
            raise ExchangeRejectedError(
                f"insufficient balance: {order.side} {amount} {market.symbol} needs {hold} "
                f"{hold_asset}, account {self.account!r} has {available} {hold_asset} free"
            )
        row = _Order(
            id=0,
            exchange_order_id=f"paper-{uuid.uuid4().hex}",
            client_order_id=client_order_id,
            symbol=market.symbol,
            side=str(order.side),
            order_type=str(order.type),
            amount=amount,
            price=price,
            status=OrderStatus.OPEN.value,
            filled=Decimal(0),
            avg_price=None,
            reserved_asset=None,
            reserved=Decimal(0),
        )
        if crosses:
            self._apply_fill(row, balances, touch)
        else:
            paying = balances[hold_asset]
            paying.free = _sub(paying.free, hold)
            paying.locked = _add(paying.locked, hold)
            paying.changed = True
            row.reserved_asset = hold_asset
            row.reserved = hold
        # The order first: a client order id already used (a concurrent create that
        # committed first) inserts nothing, and then no balance moves either.
        if not self._insert_order(connection, row):
            existing = self._find(connection, None, client_order_id)
            if existing is None:
                raise ExchangeUnavailableError(
                    f"paper exchange could not store order {client_order_id!r}")
            return self._same_order(existing, order)
        self._write_balances(connection, balances)
        return self._view(row)

    def _balances_if_nothing_rests(self, connection: Connection,
                                   market: Market) -> dict[str, _Balance] | None:
        """SQLite: the balances of ``market``'s assets and whether the account has an order
        resting on it, in one statement; the balances when none rests (the resting-order
        scan is then skipped), else None. Exact: SQLite has one writer at a time, and this
        transaction is it. None on PostgreSQL, where the resting orders are locked before
        the balances (the order every operation of the book locks them in), and when a
        balance row does not exist yet.
        """
        if connection.dialect.name != "sqlite":
            return None
        wanted = sorted({market.base, market.quote})
        rows = connection.execute(_BALANCES_UNLESS_RESTING, {
            "account": self.account, "assets": wanted, "symbol": market.symbol}).all()
        if len(rows) < len(wanted) or any(row.resting for row in rows):
            return None
        return {row.asset: _Balance(row.asset, row.free, row.locked) for row in rows}

    def _insert_order(self, connection: Connection, row: _Order) -> bool:
        """Insert ``row``; False when its client order id is already used (nothing written)."""
        now = utcnow()
        values = {
            "account": self.account, "exchange_order_id": row.exchange_order_id,
            "client_order_id": row.client_order_id, "symbol": row.symbol, "side": row.side,
            "order_type": row.order_type, "amount": row.amount, "price": row.price,
            "status": row.status, "filled": row.filled, "avg_price": row.avg_price,
            "reserved_asset": row.reserved_asset, "reserved": row.reserved,
            "created_at": now, "updated_at": now, "closed_at": row.closed_at,
        }
        dialect = connection.dialect.name
        if dialect == "sqlite":
            statement: Any = _INSERT_ORDER_SQLITE
        elif dialect == "postgresql":
            statement = _INSERT_ORDER_POSTGRESQL
        else:  # pragma: no cover - other backends: check, then insert
            if self._find(connection, None, row.client_order_id) is not None:
                return False
            statement = insert(_ORDERS).returning(_ORDERS.c.id)
        return connection.execute(statement, values).first() is not None

    # -- placing an order in the router's own transaction (private to bagbot) -------------

    def _shares_transaction(self, url: str | None) -> bool:
        """May the router place orders through :meth:`create_order_in`, in the transaction
        that writes its order row, on the database at ``url`` (a synchronous URL)?

        Only when the book is in that same database (not an in-memory SQLite one: two
        engines would each have their own) and ``create_order`` is this class's own: a
        subclass or a wrapper that changes what creating an order does keeps the ordinary
        path, where :meth:`create_order` is called.
        """
        if url is None or "create_order" in vars(self):
            return False
        if type(self).create_order is not PaperConnector.create_order:
            return False
        if self._own_url is None:
            from bagbot_core.db import sync_url

            if self._engine is not None:
                own = self._engine.url
            else:
                own = parse_url(database_url(self._database_url))
            memory = own.get_backend_name() == "sqlite" and own.database in (None, "",
                                                                              ":memory:")
            self._own_url = "" if memory else sync_url(own.render_as_string(hide_password=False))
        return bool(self._own_url) and self._own_url == url

    def create_order_in(
        self, session: Session, order: OrderRequest, client_order_id: str
    ) -> ExchangeOrder:
        """:meth:`create_order` inside ``session``'s open transaction, which must be on the
        book's database; it is neither committed nor rolled back here.

        The router uses it to place a paper order, record the order row and commit both
        at once. An :class:`ExchangeRejectedError` leaves the transaction usable (nothing
        of the order was written); any other exception leaves the book half-written: the
        caller must roll back.
        """
        self._check_client_order_id(client_order_id)
        params_to_send(order, self.allowed_params, connector=self.name or "paper")
        return self._create_in(session, order, client_order_id)

    async def create_order(self, order: OrderRequest, client_order_id: str) -> ExchangeOrder:
        """Place ``order``; see the module docstring for fills, funds and idempotency.

        :raises ExchangeRejectedError: unknown or inactive symbol, step/minimum violations,
            insufficient balance, a different order under a used client order id, or any
            ``params`` (paper accepts none).
        """
        self._check_client_order_id(client_order_id)
        # Paper honours no params (allowed_params is empty): an order carrying any is
        # refused, as the router would, never placed as if they were not there.
        params_to_send(order, self.allowed_params, connector=self.name or "paper")
        try:
            return await self._call(
                lambda session: self._create_in(session, order, client_order_id),
                pass_integrity_errors=True, durable=False,
            )
        except IntegrityError:
            # A concurrent create with the same client order id committed first.
            existing = await self._call(lambda session: self._find(session, None, client_order_id))
            if existing is None:
                raise ExchangeUnavailableError(
                    f"paper exchange could not store order {client_order_id!r}"
                ) from None
            return self._same_order(existing, order)

    def _not_found(
        self, symbol: str, external_id: str | None, client_order_id: str
    ) -> ExchangeOrderNotFoundError:
        key = f"id {external_id!r}" if external_id else f"client order id {client_order_id!r}"
        return ExchangeOrderNotFoundError(
            f"paper account {self.account!r} has no {symbol} order with {key}"
        )

    async def fetch_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """The order by ``external_id`` when given, else by client order id.

        :raises ExchangeOrderNotFoundError: no such order on ``symbol`` for this account.
        """

        def work(session: Session) -> ExchangeOrder:
            connection = session.connection()
            if symbol in self._markets:
                self._fill_crossed(connection, [symbol])
            row = self._find(connection, external_id, client_order_id)
            if row is None or row.symbol != symbol:
                raise self._not_found(symbol, external_id, client_order_id)
            return self._view(row)

        return await self._call(work)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        """The account's resting orders, oldest first (optionally for one symbol)."""

        def work(session: Session) -> list[ExchangeOrder]:
            connection = session.connection()
            self._fill_crossed(connection, None if symbol is None else [symbol])
            query = _SELECT_ORDER.where(
                _ORDERS.c.account == self.account,
                _ORDERS.c.status == OrderStatus.OPEN.value,
            )
            if symbol is not None:
                query = query.where(_ORDERS.c.symbol == symbol)
            rows = connection.execute(query.order_by(_ORDERS.c.id))
            return [self._view(_Order(**r._mapping)) for r in rows]

        return await self._call(work)

    async def cancel_order(
        self, symbol: str, *, external_id: str | None, client_order_id: str
    ) -> ExchangeOrder:
        """Cancel a resting order and release what it reserved.

        :raises ExchangeOrderNotFoundError: no such order on ``symbol`` for this account.
        :raises ExchangeRejectedError: the order is already filled or canceled.
        """

        def work(session: Session) -> ExchangeOrder:
            connection = session.connection()
            if symbol in self._markets:
                self._fill_crossed(connection, [symbol])
            row = self._find(connection, external_id, client_order_id, lock=True)
            if row is None or row.symbol != symbol:
                raise self._not_found(symbol, external_id, client_order_id)
            if row.status != OrderStatus.OPEN.value:
                raise ExchangeRejectedError(
                    f"paper order {row.exchange_order_id} is already {row.status}; "
                    f"only open orders can be canceled"
                )
            if row.reserved:
                assert row.reserved_asset is not None
                balances = self._lock_balances(connection, [row.reserved_asset])
                paying = balances[row.reserved_asset]
                paying.locked = _sub(paying.locked, row.reserved)
                paying.free = _add(paying.free, row.reserved)
                paying.changed = True
                self._write_balances(connection, balances)
            row.status = OrderStatus.CANCELED.value
            row.reserved = Decimal(0)
            row.closed_at = utcnow()
            connection.execute(_UPDATE_ORDER, [self._order_changes(row)])
            return self._view(row)

        return await self._call(work)


# ---------------------------------------------------------------------------
# The book's statements (Core: built once, no unit of work)
# ---------------------------------------------------------------------------


@attrs.define
class _Balance:
    """One balance row as read under its lock; ``changed`` once it must be written."""

    asset: str
    free: Decimal
    locked: Decimal
    changed: bool = False


@attrs.define
class _Order:
    """One ``paper_orders`` row's fields the book reads and writes."""

    id: int
    exchange_order_id: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    amount: Decimal
    price: Decimal | None
    status: str
    filled: Decimal
    avg_price: Decimal | None
    reserved_asset: str | None
    reserved: Decimal
    closed_at: dt.datetime | None = None


_BALANCES = cast(Table, PaperBalanceRow.__table__)
_ORDERS = cast(Table, PaperOrderRow.__table__)
_LOCK_BALANCES = (
    select(_BALANCES.c.asset, _BALANCES.c.free, _BALANCES.c.locked)
    .where(_BALANCES.c.account == bindparam("account"),
           _BALANCES.c.asset.in_(bindparam("assets", expanding=True)))
    .order_by(_BALANCES.c.asset)
    .with_for_update()
)
_RESTING = (
    select(_ORDERS.c.id)
    .where(_ORDERS.c.account == bindparam("account"),
           _ORDERS.c.status == OrderStatus.OPEN.value,
           _ORDERS.c.symbol == bindparam("symbol"))
    .exists()
)
_BALANCES_UNLESS_RESTING = (
    select(_BALANCES.c.asset, _BALANCES.c.free, _BALANCES.c.locked, _RESTING.label("resting"))
    .where(_BALANCES.c.account == bindparam("account"),
           _BALANCES.c.asset.in_(bindparam("assets", expanding=True)))
    .order_by(_BALANCES.c.asset)
)
_UPDATE_BALANCE = (
    update(_BALANCES)
    .where(_BALANCES.c.account == bindparam("b_account"),
           _BALANCES.c.asset == bindparam("b_asset"))
    .values(free=bindparam("free"), locked=bindparam("locked"),
            updated_at=bindparam("updated_at"))
)
_SELECT_ORDER = select(*(_ORDERS.c[field.name] for field in attrs.fields(_Order)))
_UPDATE_ORDER = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("o_id"))
    .values(status=bindparam("status"), filled=bindparam("filled"),
            avg_price=bindparam("avg_price"), reserved=bindparam("reserved"),
            closed_at=bindparam("closed_at"), updated_at=bindparam("updated_at"))
)
# RETURNING: a row back means it was inserted (rowcount is not reliable here).
_INSERT_ORDER_SQLITE = sqlite.insert(_ORDERS).on_conflict_do_nothing().returning(_ORDERS.c.id)
_INSERT_ORDER_POSTGRESQL = (postgresql.insert(_ORDERS).on_conflict_do_nothing()
                            .returning(_ORDERS.c.id))
