"""API tokens for ``bagbot serve``: one row per token, keyed by its public id.

``api_tokens`` holds the argon2id hash of each token, never the token itself, with who it
acts for (``user_id``, ``admin``, ``live``), when it expires and whether it was revoked. It
starts empty: a database upgraded to this revision has no token until ``bagbot tokens
create`` makes one.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bagbot_core.models import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("hash", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_table("api_tokens")
