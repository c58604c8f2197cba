"""Keep the amount the caller asked for next to the amount that was sent.

``orders.qty`` is what went to the exchange after rounding to the market's step; an audit
needs the caller's own figure too. Existing rows get ``requested_qty = qty`` (the best
available value: before this revision only the sent amount was kept).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import ExactDecimal

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("requested_qty", ExactDecimal(), nullable=True))
    op.execute("UPDATE orders SET requested_qty = qty WHERE requested_qty IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("requested_qty")
