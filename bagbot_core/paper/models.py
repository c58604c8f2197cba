"""The paper exchange's tables: ``paper_balances`` and ``paper_orders``.

They live on :data:`bagbot_core.models.Base`'s metadata, so :func:`bagbot_core.db.init_db`
creates them next to the router's ``orders`` table, in the same database -- also when the
``paper`` plugin is disabled: they are in the first released migration (``0001``), so every
database at a revision has one schema and ``bagbot db upgrade`` alone changes it (creating
them on first use would put DDL on the routing path, where processes race). Money columns are
:class:`~bagbot_core.models.ExactDecimal` (exact on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bagbot_core.models import Base, ExactDecimal, UTCDateTime, utcnow


class PaperBalanceRow(Base):
    """One asset of one paper account.

    ``free`` can be spent; ``locked`` is reserved by resting limit orders. The total the
    account owns is ``free + locked``. A row is created, with the configured starting
    amount, the first time the account touches the asset.
    """

    __tablename__ = "paper_balances"

    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    asset: Mapped[str] = mapped_column(String(32), primary_key=True)
    free: Mapped[Decimal] = mapped_column(ExactDecimal(), default=Decimal(0))
    locked: Mapped[Decimal] = mapped_column(ExactDecimal(), default=Decimal(0))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<PaperBalance {self.account} {self.asset} free={self.free} locked={self.locked}>"


class PaperOrderRow(Base):
    """One order on the paper exchange.

    ``reserved`` is what the order still holds in ``reserved_asset`` (quote for a resting
    buy, base for a resting sell); it is released when the order fills or is canceled and is
    always 0 once the order is closed.
    """

    __tablename__ = "paper_orders"
    __table_args__ = (
        UniqueConstraint("account", "client_order_id", name="uq_paper_orders_client_order_id"),
        UniqueConstraint("exchange_order_id", name="uq_paper_orders_exchange_order_id"),
        Index("ix_paper_orders_account_status_symbol", "account", "status", "symbol"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    exchange_order_id: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(8))
    order_type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    price: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    status: Mapped[str] = mapped_column(String(24))
    filled: Mapped[Decimal] = mapped_column(ExactDecimal(), default=Decimal(0))
    avg_price: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    reserved_asset: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reserved: Mapped[Decimal] = mapped_column(ExactDecimal(), default=Decimal(0))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:
        return (
            f"<PaperOrder {self.exchange_order_id} {self.account} {self.side} {self.amount} "
            f"{self.symbol} {self.order_type} status={self.status}>"
        )
