"""Orders ready for stateful risk checks: the checked USD notional, and the indexes the
history queries use.

``notional_usd`` is the order's value in USD as its risk checks saw it (``NULL`` when it
could not be valued in USD, and for rows written before this revision): a daily-notional
limit counts a live order at that value. The indexes serve
:class:`bagbot_core.history.History`: one user's orders over a time window, one user's
orders in a status (the live ones), and one user's fills per asset (covering: the position
is summed from the index alone).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import ExactDecimal

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("notional_usd", ExactDecimal(), nullable=True))
    op.create_index("ix_orders_user_testnet_created_at", "orders",
                    ["user_id", "testnet", "created_at"])
    op.create_index("ix_orders_user_status", "orders", ["user_id", "status", "testnet"])
    op.create_index("ix_orders_position", "orders",
                    ["user_id", "testnet", "symbol", "side", "filled_qty", "status"])


def downgrade() -> None:
    op.drop_index("ix_orders_position", "orders")
    op.drop_index("ix_orders_user_status", "orders")
    op.drop_index("ix_orders_user_testnet_created_at", "orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("notional_usd")
