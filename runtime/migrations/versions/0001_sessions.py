"""Sessions, messages, the event log, tool calls, plans and agent switches.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("title", sa.String(200), nullable=False, server_default=""),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="idle"),
        sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sessions_owner_updated", "sessions", ["owner", "updated_at", "id"])
    op.create_table(
        "messages",
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("tool_calls", sa.Text, nullable=True),
        sa.Column("tool_call_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("name", sa.String(64), nullable=False, server_default=""),
        sa.Column("agent", sa.String(32), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_events_session_last_seq", "events", ["session_id", "last_seq"])
    op.create_table(
        "tool_calls",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("tool_name", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("final_arguments", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("plan_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("offered_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tool_calls_session_status", "tool_calls", ["session_id", "status"])
    op.create_table(
        "plans",
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("plan_id", sa.String(128), primary_key=True),
        sa.Column("steps", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agent_switches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("from_agent", sa.String(32), nullable=False),
        sa.Column("to_agent", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agent_switches_session", "agent_switches", ["session_id", "id"])


def downgrade() -> None:
    for index, table in (
        ("ix_agent_switches_session", "agent_switches"),
        ("ix_tool_calls_session_status", "tool_calls"),
        ("ix_events_session_last_seq", "events"),
        ("ix_sessions_owner_updated", "sessions"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("agent_switches", "plans", "tool_calls", "events", "messages", "sessions"):
        op.drop_table(table)
