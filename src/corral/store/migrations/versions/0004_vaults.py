"""vaults and vault credentials (secrets encrypted at rest)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE = sa.text("archived_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "vaults",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("archived_at", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_vaults_created", "vaults", ["created_at", "id"])
    op.create_table(
        "vault_credentials",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("vault_id", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=2100), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("archived_at", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_vault_credentials_vault", "vault_credentials", ["vault_id", "created_at", "id"])
    op.create_index(
        "uq_vault_credentials_target",
        "vault_credentials",
        ["vault_id", "target"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_vault_credentials_target", table_name="vault_credentials")
    op.drop_index("ix_vault_credentials_vault", table_name="vault_credentials")
    op.drop_table("vault_credentials")
    op.drop_index("ix_vaults_created", table_name="vaults")
    op.drop_table("vaults")
