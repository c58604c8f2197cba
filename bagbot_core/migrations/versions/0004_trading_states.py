"""Trading states (the kill switch): the current state per scope, and every change.

``trading_states`` holds one row per scope that was ever set (``""`` in ``user_id`` or
``connector`` means any); the router reads it by primary key on every order.
``trading_state_changes`` keeps every change with who made it and why. Both start empty:
every scope is ``active`` until someone changes it, as before this revision.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trading_states",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("connector", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("who", sa.String(128), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "trading_state_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("connector", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("who", sa.String(128), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_trading_state_changes_changed_at", "trading_state_changes",
                    ["changed_at"])


def downgrade() -> None:
    op.drop_table("trading_state_changes")
    op.drop_table("trading_states")
