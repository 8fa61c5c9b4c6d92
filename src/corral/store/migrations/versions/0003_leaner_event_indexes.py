"""leaner event indexes: drop (session_id, type), make (session_id, ref) partial

Every index on `events` costs each append a page write; listing by type scans the session's
primary-key range instead, and only answering events carry a `ref`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

REF_NOT_NULL = sa.text("ref IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_events_session_type", table_name="events")
    op.drop_index("ix_events_session_ref", table_name="events")
    op.create_index(
        "ix_events_session_ref",
        "events",
        ["session_id", "ref"],
        sqlite_where=REF_NOT_NULL,
        postgresql_where=REF_NOT_NULL,
    )


def downgrade() -> None:
    op.drop_index("ix_events_session_ref", table_name="events")
    op.create_index("ix_events_session_ref", "events", ["session_id", "ref"])
    op.create_index("ix_events_session_type", "events", ["session_id", "type"])
