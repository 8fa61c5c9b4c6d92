"""files: metadata of uploaded files (the bytes live under `<data dir>/files/`)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_files_created", "files", ["created_at", "id"])
    op.create_index("ix_files_scope", "files", ["scope_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_files_scope", table_name="files")
    op.drop_index("ix_files_created", table_name="files")
    op.drop_table("files")
