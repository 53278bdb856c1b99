"""Deleted sessions: the row stays as a tombstone (``deleted_at``), every
row of the session's data is deleted.

A tombstone keeps the id taken, so a later handshake on it (by anyone)
cannot silently bring the session back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Without the column a tombstone would list as an empty session.
    sessions = sa.table("sessions", sa.column("deleted_at", sa.DateTime(timezone=True)))
    op.execute(sessions.delete().where(sessions.c.deleted_at.is_not(None)))
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("deleted_at")
