"""Notional buckets: each hour's USD value of a user's orders, kept with the rows.

``notional_buckets`` holds one row per ``(user_id, testnet, hour, connector, symbol)``: the
exact sum of :func:`bagbot_core.history.order_value_usd` over the orders created in that UTC
hour. The daily notional control reads a window's whole hours from it instead of valuing
every row of the window. The upgrade fills it from the existing rows, summing in Python:
SQLite keeps decimals as text.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from bagbot_core.history import order_value_usd
from bagbot_core.models import ExactDecimal, ExactSum, UTCDateTime
from bagbot_core.money import normalize

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_EXACT = decimal.Context(prec=200, Emax=999_999, Emin=-999_999, traps=[decimal.Inexact])


def upgrade() -> None:
    buckets = op.create_table(
        "notional_buckets",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("testnet", sa.Boolean(), primary_key=True),
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("connector", sa.String(64), primary_key=True),
        sa.Column("symbol", sa.String(64), primary_key=True),
        sa.Column("value", ExactSum(), nullable=False),
    )
    op.create_index("ix_notional_buckets_testnet_hour", "notional_buckets",
                    ["testnet", "hour"])
    orders = sa.table(
        "orders", sa.column("user_id", sa.String()), sa.column("testnet", sa.Boolean()),
        sa.column("connector", sa.String()), sa.column("symbol", sa.String()),
        sa.column("created_at", UTCDateTime()), sa.column("status", sa.String()),
        sa.column("qty", ExactDecimal()), sa.column("filled_qty", ExactDecimal()),
        sa.column("avg_price", ExactDecimal()), sa.column("notional_usd", ExactDecimal()))
    totals: dict[tuple[str, bool, object, str, str], Decimal] = defaultdict(Decimal)
    rows = op.get_bind().execute(sa.select(
        orders.c.user_id, orders.c.testnet, orders.c.connector, orders.c.symbol,
        orders.c.created_at, orders.c.status, orders.c.qty, orders.c.filled_qty,
        orders.c.avg_price, orders.c.notional_usd,
    ).where(orders.c.status != "rejected"))
    with decimal.localcontext(_EXACT):
        for user_id, testnet, connector, symbol, created, status, qty, filled, avg, usd in rows:
            hour = created.replace(minute=0, second=0, microsecond=0)
            totals[user_id, bool(testnet), hour, connector, symbol] += order_value_usd(
                status, symbol, qty, filled or Decimal(0), avg, usd)
    if totals:
        op.bulk_insert(buckets, [
            {"user_id": u, "testnet": t, "hour": h, "connector": c, "symbol": s,
             "value": normalize(v)}
            for (u, t, h, c, s), v in totals.items() if v])


def downgrade() -> None:
    op.drop_table("notional_buckets")
