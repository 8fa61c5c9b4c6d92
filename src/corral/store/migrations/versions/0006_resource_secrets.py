"""session_resource_secrets: encrypted authorization tokens of repository session resources

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_resource_secrets",
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("resource_id"),
    )
    op.create_index("ix_session_resource_secrets_session", "session_resource_secrets", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_session_resource_secrets_session", table_name="session_resource_secrets")
    op.drop_table("session_resource_secrets")
