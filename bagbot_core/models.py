"""The ``orders`` table: the seed's columns plus what a real router needs.

Quantities and prices are exact decimals on every backend: ``NUMERIC(38, 18)`` where the
database has it, canonical decimal text on SQLite (which has no decimal type and would
otherwise round through float). Timestamps are timezone-aware UTC everywhere.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from bagbot_core.money import MAX_SCALE, decimal_text, normalize
from bagbot_core.status import OrderStatus
from bagbot_core.views import OrderView


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ExactDecimal(TypeDecorator[Decimal]):
    """Decimal stored without loss: NUMERIC(38, 18), or decimal text on SQLite."""

    impl = Numeric(38, MAX_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(48))
        return dialect.type_descriptor(Numeric(38, MAX_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money columns take Decimal, got {type(value).__name__}")
        return decimal_text(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return normalize(Decimal(value))


class ExactSum(ExactDecimal):
    """:class:`ExactDecimal` without a magnitude limit (NUMERIC without precision, or text):
    a sum of many ``NUMERIC(38, 18)`` values may not fit in one."""

    impl = Numeric(asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(80))
        return dialect.type_descriptor(Numeric(asdecimal=True))


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: bagbot stores timezone-aware UTC only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class Order(Base):
    """One ``route_order`` call. Exactly one row per call, whatever happened."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_connector_external_id", "connector", "external_id"),
        Index("ix_orders_status", "status"),
        # Risk history (bagbot_core.history): a user's orders in a window, in a status.
        Index("ix_orders_user_testnet_created_at", "user_id", "testnet", "created_at"),
        Index("ix_orders_user_status", "user_id", "status", "testnet"),
        # (ix_orders_position, which covered a user's fills per asset, went with 0005: the
        # positions table answers that.)
        UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    symbol: Mapped[str] = mapped_column(String(64), index=True)
    # active_history on every column an order's value is made of: the old value is known
    # on every change, so the aggregates (bagbot_core.positions, bagbot_core.notional) can
    # take back what a row counted before it.
    qty: Mapped[Decimal] = mapped_column(ExactDecimal(), active_history=True)
    price: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    side: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24), default=OrderStatus.PENDING.value,
                                        active_history=True)
    external_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow
    )
    # Beyond the seed: what routing, reconciliation and the audit trail need.
    client_order_id: Mapped[str] = mapped_column(String(64))
    connector: Mapped[str] = mapped_column(String(64))
    order_type: Mapped[str] = mapped_column(String(16))
    testnet: Mapped[bool] = mapped_column(Boolean, default=True)
    filled_qty: Mapped[Decimal] = mapped_column(ExactDecimal(), default=Decimal(0),
                                                active_history=True)
    #: The amount the caller asked for; ``qty`` is what was sent after market rounding.
    requested_qty: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    avg_price: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True,
                                                      active_history=True)
    #: The order's value in USD as its risk checks saw it (``None``: not valued in USD).
    notional_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True,
                                                         active_history=True)
    exchange_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    @property
    def order_status(self) -> OrderStatus:
        return OrderStatus(self.status)

    def view(self) -> OrderView:
        return OrderView(
            id=self.id, user_id=self.user_id, connector=self.connector, symbol=self.symbol,
            side=self.side, order_type=self.order_type, qty=self.qty, price=self.price,
            status=OrderStatus(self.status), client_order_id=self.client_order_id,
            external_id=self.external_id, filled_qty=self.filled_qty,
            avg_price=self.avg_price, testnet=self.testnet, reason=self.reason,
            details=self.details, created_at=self.created_at, updated_at=self.updated_at,
        )

    def __repr__(self) -> str:
        return (
            f"<Order id={self.id} {self.connector} {self.side} {self.qty} {self.symbol} "
            f"status={self.status} client_order_id={self.client_order_id}>"
        )


class TradingStateRow(Base):
    """The current trading state of one scope (the kill switch), with who set it and why.

    A scope is ``(user_id, connector)`` where ``""`` means any: ``("", "")`` is global,
    ``("", C)`` one connector, ``(U, "")`` one user everywhere, ``(U, C)`` one user on one
    connector (user ids and connector names are never empty). The primary key makes the
    router's per-order read one index lookup; the history is ``trading_state_changes``.
    """

    __tablename__ = "trading_states"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    who: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TradingStateChange(Base):
    """One change of a scope's trading state, kept forever (the row above is the latest)."""

    __tablename__ = "trading_state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128))
    connector: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    #: The scope's state before this change; ``None`` when it had never been set.
    previous: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    who: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True, default=utcnow)


class Position(Base):
    """Net filled quantity of one asset per user, connector and testnet flag: the sum over
    ``orders`` of filled buys minus filled sells (rejected rows count nothing) of symbols
    whose base is ``asset``.

    Maintained by :mod:`bagbot_core.positions` in the transaction that changes a row's fill,
    so a risk check reads one indexed row instead of a user's whole fill history.
    """

    __tablename__ = "positions"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    testnet: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    asset: Mapped[str] = mapped_column(String(64), primary_key=True)
    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(ExactSum())


class NotionalBucket(Base):
    """The USD value (:func:`bagbot_core.history.order_value_usd`) of the orders created in
    one UTC hour, per user, testnet flag, connector and symbol: the exact sum over the rows
    whose ``created_at`` falls in ``[hour, hour + 1 h)``.

    Maintained by :mod:`bagbot_core.notional` in the transaction that changes a row's value,
    so the daily notional control reads a day's buckets instead of every row of the day.
    """

    __tablename__ = "notional_buckets"
    __table_args__ = (
        # Queries over every user (a connector-wide notional): the window's hours.
        Index("ix_notional_buckets_testnet_hour", "testnet", "hour"),
    )

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    testnet: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    #: The hour's start (UTC, on the hour).
    hour: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Decimal] = mapped_column(ExactSum())


class ApiToken(Base):
    """One API token of ``bagbot serve`` (:mod:`bagbot_core.tokens`).

    The primary key is the token's public id, so authenticating is one index lookup. The
    raw token is never stored: ``hash`` is its argon2id hash, which is all a leaked table
    gives away. ``last_used_at`` is written at most once a minute, not on every request.
    """

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    admin: Mapped[bool] = mapped_column(Boolean)
    live: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:  # never the hash
        return f"<ApiToken id={self.id} user_id={self.user_id!r} admin={self.admin}>"


# The aggregates are kept by ORM events on Order: wherever Order is, they are too.
import bagbot_core.notional  # noqa: E402
import bagbot_core.positions  # noqa: E402, F401
