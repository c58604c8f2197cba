"""The built-in ``paper`` connector passes the connector conformance suite.

``paper`` is its own exchange: the book lives in the router's database and the market in the
connector instance, so :class:`PaperHandle` works on the connector the suite attaches. What
paper cannot simulate is declared, and those tests skip with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bagbot_core.connector import Connector
from bagbot_core.orders import ExchangeOrder, OrderRequest, Side
from bagbot_core.paper.connector import PaperConnector
from bagbot_core.paper.models import PaperBalanceRow, PaperOrderRow
from bagbot_core.testing.conformance import (
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
    exchange, being called *is* receiving the request.
    """

    requirements = Requirements(
        drop_response=unsupported(
            "paper runs in-process: there is no network answer to drop"),
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

    @property
    def connector_config(self) -> Mapping[str, Any]:
        return self._config

    def attach(self, connector: Connector) -> None:
        super().attach(connector)
        create = connector.create_order
        seen = self._seen

        async def spy(order: OrderRequest, client_order_id: str) -> ExchangeOrder:
            seen.append(client_order_id)
            return await create(order, client_order_id)

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

    async def reject_next_order(self) -> str:
        # Paper refuses an order definitely only for funds (and for malformed orders the
        # router never sends): an empty quote balance makes the next buy its refusal.
        await self.drain_balance(self.symbol.split("/")[1])
        return "insufficient balance"

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


class TestPaperConformance(ConnectorConformance):
    connector_name = "paper"

    @pytest.fixture
    def handle(self) -> ExchangeHandle:
        return PaperHandle()
