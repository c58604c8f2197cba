"""Positions: each user's net filled quantity per asset, kept with the fills.

``positions`` holds one row per ``(user_id, testnet, asset, connector)``: filled buys minus
filled sells (rejected rows count nothing) over the symbols whose base is ``asset``. The
router's position control reads it instead of summing a user's whole fill history (whose
index, ``ix_orders_position``, goes: every fill had to update it). The
upgrade fills it from the existing rows, summing in Python: SQLite keeps decimals as text.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import ExactDecimal, ExactSum
from bagbot_core.money import normalize

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])


def upgrade() -> None:
    positions = op.create_table(
        "positions",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("testnet", sa.Boolean(), primary_key=True),
        sa.Column("asset", sa.String(64), primary_key=True),
        sa.Column("connector", sa.String(64), primary_key=True),
        sa.Column("quantity", ExactSum(), nullable=False),
    )
    orders = sa.table(
        "orders", sa.column("user_id", sa.String()), sa.column("testnet", sa.Boolean()),
        sa.column("symbol", sa.String()), sa.column("connector", sa.String()),
        sa.column("side", sa.String()), sa.column("status", sa.String()),
        sa.column("filled_qty", ExactDecimal()))
    totals: dict[tuple[str, bool, str, str], Decimal] = defaultdict(Decimal)
    rows = op.get_bind().execute(sa.select(
        orders.c.user_id, orders.c.testnet, orders.c.symbol, orders.c.connector,
        orders.c.side, orders.c.filled_qty,
    ).where(orders.c.status != "rejected"))
    with decimal.localcontext(_EXACT):
        for user_id, testnet, symbol, connector, side, filled in rows:
            base, slash, _ = symbol.partition("/")
            if slash and filled:
                totals[user_id, bool(testnet), base, connector] += (
                    filled if side == "buy" else -filled)
    # Every fill updated this index; nothing reads a user's whole fill history any more.
    op.drop_index("ix_orders_position", table_name="orders")
    if totals:
        op.bulk_insert(positions, [
            {"user_id": u, "testnet": t, "asset": a, "connector": c, "quantity": normalize(q)}
            for (u, t, a, c), q in totals.items()])


def downgrade() -> None:
    op.create_index("ix_orders_position", "orders",
                    ["user_id", "testnet", "symbol", "side", "filled_qty", "status"])
    op.drop_table("positions")
