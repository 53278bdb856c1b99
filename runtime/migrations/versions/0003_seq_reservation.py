"""Sequence numbers reserved ahead of the text deltas a model call streams.

Text deltas are sent before they are written; ``seq_reserved`` is how far
they may be numbered. A runtime that takes over a session cut off mid-turn
numbers on after it, so no seq a client saw is ever given to another event.
Sessions cut off mid-turn before this column existed get a margin far past
any model call's deltas.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LEGACY_MARGIN = 1_000_000


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("seq_reserved", sa.BigInteger, nullable=False, server_default="0")
        )
    sessions = sa.table(
        "sessions",
        sa.column("state", sa.String),
        sa.column("last_seq", sa.BigInteger),
        sa.column("seq_reserved", sa.BigInteger),
    )
    op.execute(
        sessions.update()
        .where(sessions.c.state == "running")
        .values(seq_reserved=sessions.c.last_seq + _LEGACY_MARGIN)
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("seq_reserved")
