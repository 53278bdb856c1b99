"""Branches of a session's history: the messages a retry or an edit replaced,
kept (runtime.branches), and the branch of each checkpoint.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "branches",
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("branch", sa.Integer, primary_key=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("from_position", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "branch_messages",
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("branch", sa.Integer, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("tool_calls", sa.Text, nullable=True),
        sa.Column("tool_call_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("name", sa.String(64), nullable=False, server_default=""),
        sa.Column("agent", sa.String(32), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("checkpoints", sa.Column("branch", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("branch")
    op.drop_table("branch_messages")
    op.drop_table("branches")
