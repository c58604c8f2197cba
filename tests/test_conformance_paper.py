"""The built-in ``paper`` connector passes the connector conformance suite.

``paper`` is its own exchange: the book lives in the router's database and the market in the
connector instance, so :class:`PaperHandle` works on the connector the suite attaches. What
paper cannot simulate is declared, and those tests skip with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import InternalError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from bagbot_core.connector import Connector
from bagbot_core.orders import ExchangeOrder, OrderRequest, Side
from bagbot_core.paper.connector import PaperConnector
from bagbot_core.paper.models import PaperBalanceRow, PaperOrderRow
from bagbot_core.testing.conformance import (
    ORDER_READS,
    ConnectorConformance,
    ExchangeHandle,
    Placement,
    Requirements,
    unsupported,
)


class PaperHandle(ExchangeHandle):
    """The suite's handle on a paper account (a fresh account per test).

    Order placements are observed by wrapping the connector's ``create_order`` with a spy
    that records the client order id and calls through unchanged: for an in-process
    exchange, being called *is* receiving the request, and raising after the call is the
    answer getting lost. Paper's exchange is the database: a read fault is a database
    error inside paper's own transaction, which paper must report as unavailable.
    """

    requirements = Requirements(
        fail_market_reads=unsupported(
            "paper's markets and quotes are local configuration: no request to fail"),
        count_market_requests=unsupported(
            "paper's markets are local configuration: there is no market request to count"),
        credentials=unsupported("paper takes no credentials"),
    )
    insufficient_funds_text = "insufficient balance"
    #: Off round numbers, so a float anywhere on the way changes the result.
    amount = Decimal("0.00137")
    price = Decimal("43217.89")

    def __init__(self, **config: Any) -> None:
        self.account = f"conformance-{uuid.uuid4().hex[:12]}"
        self._config = {"account": self.account, "prices": {self.symbol: str(self.price)},
                        **config}
        self._seen: list[str] = []
        self._drop_next = False
        self._refill: tuple[str, Decimal] | None = None

    @property
    def connector_config(self) -> Mapping[str, Any]:
        return self._config

    def attach(self, connector: Connector) -> None:
        super().attach(connector)
        create = connector.create_order
        seen = self._seen

        async def spy(order: OrderRequest, client_order_id: str) -> ExchangeOrder:
            seen.append(client_order_id)
            try:
                state = await create(order, client_order_id)
            finally:
                self._restore_balance()
            if self._drop_next:
                self._drop_next = False
                raise ConnectionResetError("the answer was lost on the way back")
            return state

        connector.create_order = spy  # type: ignore[method-assign]

    @property
    def paper(self) -> PaperConnector:
        assert isinstance(self.connector, PaperConnector), self.connector
        return self.connector

    def _session(self) -> Session:
        return Session(self.paper.engine)

    async def market_fill_price(self, side: Side) -> Decimal:
        quote = await self.paper.fetch_quote(self.symbol)
        price = quote.ask if side is Side.BUY else quote.bid
        assert price is not None
        return price

    async def set_price(self, price: Decimal) -> None:
        await self.paper.set_price(self.symbol, price)

    async def drop_next_response(self) -> None:
        self._drop_next = True

    async def fail_next_read(self, operation: str, fault: str) -> None:
        if operation not in ORDER_READS:
            raise NotImplementedError(f"paper has no request to fail for {operation}")
        paper, error = self.paper, _DATABASE_FAULTS[fault]()
        run = type(paper)._run.__get__(paper)

        def failing(work: Callable[[Session], Any], **kwargs: Any) -> Any:
            del paper._run  # type: ignore[method-assign]  # once

            def broken(session: Session) -> Any:
                raise error

            return run(broken, **kwargs)

        paper._run = failing  # type: ignore[method-assign]

    async def fill_partially(self, client_order_id: str, qty: Decimal) -> None:
        """Fill ``qty`` of a resting limit buy at its limit, as paper would if it filled in
        parts: the base arrives, the spent part of the reservation goes."""
        with self._session() as session, session.begin():
            row = session.scalars(select(PaperOrderRow).where(
                PaperOrderRow.account == self.account,
                PaperOrderRow.client_order_id == client_order_id)).one()
            assert row.status == "open" and row.side == "buy" and row.price is not None, row
            assert 0 < qty < row.amount and row.reserved_asset is not None, (qty, row.amount)
            cost = qty * row.price
            quote = session.get(PaperBalanceRow, (self.account, row.reserved_asset))
            assert quote is not None and quote.locked >= cost
            quote.locked -= cost
            base_asset = row.symbol.split("/")[0]
            base = session.get(PaperBalanceRow, (self.account, base_asset))
            if base is None:
                base = PaperBalanceRow(account=self.account, asset=base_asset,
                                       free=Decimal(0), locked=Decimal(0))
                session.add(base)
            base.free += qty
            row.reserved -= cost
            row.filled, row.avg_price, row.status = qty, row.price, "partially_filled"

    async def reject_next_order(self) -> str:
        # Paper refuses an order definitely only for funds (and for malformed orders the
        # router never sends): an empty quote balance makes the next buy its refusal, and
        # the balance comes back after it (the spy restores it).
        asset = self.symbol.split("/")[1]
        await self.paper.fetch_balances()
        with self._session() as session:
            row = session.get(PaperBalanceRow, (self.account, asset))
            assert row is not None
            self._refill = (asset, row.free)
        await self.drain_balance(asset)
        return "insufficient balance"

    def _restore_balance(self) -> None:
        if self._refill is None:
            return
        (asset, free), self._refill = self._refill, None
        with self._session() as session, session.begin():
            session.execute(
                update(PaperBalanceRow)
                .where(PaperBalanceRow.account == self.account, PaperBalanceRow.asset == asset)
                .values(free=PaperBalanceRow.free + free)
            )

    async def drain_balance(self, asset: str) -> None:
        await self.paper.fetch_balances()  # creates the starting balance rows
        with self._session() as session, session.begin():
            session.execute(
                update(PaperBalanceRow)
                .where(PaperBalanceRow.account == self.account, PaperBalanceRow.asset == asset)
                .values(free=Decimal(0))
            )

    async def orders_for_client_id(self, client_order_id: str) -> int:
        with self._session() as session:
            return int(session.scalar(
                select(func.count()).select_from(PaperOrderRow).where(
                    PaperOrderRow.account == self.account,
                    PaperOrderRow.client_order_id == client_order_id,
                )
            ) or 0)

    async def client_ids_seen(self) -> Sequence[str]:
        return list(self._seen)

    async def placements(self) -> Sequence[Placement]:
        """The account's orders as paper stored them (an order paper refused is not stored:
        being refused, it never became an order)."""
        with self._session() as session:
            rows = session.scalars(select(PaperOrderRow).where(
                PaperOrderRow.account == self.account).order_by(PaperOrderRow.id))
            return [Placement(symbol=row.symbol, side=row.side, type=row.order_type,
                              amount=row.amount, price=row.price,
                              client_order_id=row.client_order_id) for row in rows]


#: What a read fault looks like from inside paper: its database failing.
_DATABASE_FAULTS: dict[str, Callable[[], SQLAlchemyError]] = {
    "server_error": lambda: InternalError(None, None, Exception("internal error")),
    "disconnect": lambda: OperationalError(
        None, None, Exception("server closed the connection"), connection_invalidated=True),
    "timeout": lambda: OperationalError(None, None, Exception("database is locked")),
}


class TestPaperConformance(ConnectorConformance):
    connector_name = "paper"

    @pytest.fixture
    def handle(self) -> ExchangeHandle:
        return PaperHandle()
