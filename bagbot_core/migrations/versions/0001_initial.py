"""The first released schema: ``orders``, ``paper_balances``, ``paper_orders``.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import ExactDecimal, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("qty", ExactDecimal(), nullable=False),
        sa.Column("price", ExactDecimal(), nullable=True),
        sa.Column("side", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("testnet", sa.Boolean(), nullable=False),
        sa.Column("filled_qty", ExactDecimal(), nullable=False),
        sa.Column("avg_price", ExactDecimal(), nullable=True),
        sa.Column("exchange_status", sa.String(32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
    )
    op.create_index("ix_orders_user_id", "orders", ["user_id"])
    op.create_index("ix_orders_symbol", "orders", ["symbol"])
    op.create_index("ix_orders_external_id", "orders", ["external_id"])
    op.create_index("ix_orders_created_at", "orders", ["created_at"])
    op.create_index("ix_orders_status", "orders", ["status"])
    op.create_index("ix_orders_connector_external_id", "orders", ["connector", "external_id"])

    op.create_table(
        "paper_balances",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("asset", sa.String(32), primary_key=True),
        sa.Column("free", ExactDecimal(), nullable=False),
        sa.Column("locked", ExactDecimal(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "paper_orders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("exchange_order_id", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("order_type", sa.String(16), nullable=False),
        sa.Column("amount", ExactDecimal(), nullable=False),
        sa.Column("price", ExactDecimal(), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("filled", ExactDecimal(), nullable=False),
        sa.Column("avg_price", ExactDecimal(), nullable=True),
        sa.Column("reserved_asset", sa.String(32), nullable=True),
        sa.Column("reserved", ExactDecimal(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("exchange_order_id", name="uq_paper_orders_exchange_order_id"),
        sa.UniqueConstraint("account", "client_order_id", name="uq_paper_orders_client_order_id"),
    )
    op.create_index("ix_paper_orders_account_status_symbol", "paper_orders",
                    ["account", "status", "symbol"])


def downgrade() -> None:
    op.drop_table("paper_orders")
    op.drop_table("paper_balances")
    op.drop_table("orders")
