"""Checkpoints of agents' changes to the workspace, and calls the runtime
issues on a model's call's behalf.

``checkpoints`` keeps each changed file's state before and after a change,
so a turn can be undone. A tool call issued by the runtime (a ``read_file``
before a write, the write of an ``apply_diff``) names the model's call it
serves (``parent_call_id``) and carries the state of that work (``job``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tool_calls") as batch:
        batch.add_column(
            sa.Column("parent_call_id", sa.String(64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("job", sa.Text, nullable=True))
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("turn", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("before", sa.Text, nullable=True),
        sa.Column("after", sa.Text, nullable=True),
        sa.Column("undone", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_checkpoints_session", "checkpoints", ["session_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_checkpoints_session", table_name="checkpoints")
    op.drop_table("checkpoints")
    with op.batch_alter_table("tool_calls") as batch:
        batch.drop_column("job")
        batch.drop_column("parent_call_id")
