"""The runtime's SQL schema: sessions, messages, the event log, tool calls,
plans, agent switches and each user's approval rules, as SQLAlchemy Core tables.

Alembic owns the schema in the database (``runtime/migrations``, which
compares against :data:`metadata`); :mod:`runtime.store` reads and writes
these tables.
"""

from __future__ import annotations

import sqlalchemy as sa

VERSION_TABLE = "runtime_alembic_version"

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("title", sa.String(200), nullable=False, server_default=""),
    sa.Column("agent", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="idle"),
    sa.Column("last_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seq_reserved", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    # The lease holder's advertised gRPC address: a gateway refused by
    # another replica connects straight there (runtime.leases).
    sa.Column("lease_address", sa.String(255), nullable=True),
    # A deleted session keeps only this row (id, owner, deleted_at): its id
    # stays taken, so no one opens a new session under it.
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    # The model group the user chose (runtime.models); "": each agent's default.
    sa.Column("model", sa.String(128), nullable=False, server_default=""),
    sa.Index("ix_sessions_owner_updated", "owner", "updated_at", "id"),
)

messages = sa.Table(
    "messages",
    metadata,
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

events = sa.Table(
    "events",
    metadata,
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_events_session_last_seq", "session_id", "last_seq"),
)

tool_calls = sa.Table(
    "tool_calls",
    metadata,
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
    sa.Column("parent_call_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("job", sa.Text, nullable=True),
    sa.Index("ix_tool_calls_session_status", "session_id", "status"),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("before", sa.Text, nullable=True),
    sa.Column("after", sa.Text, nullable=True),
    sa.Column("undone", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The branch (runtime.branches) whose turns made it; NULL: the active history.
    sa.Column("branch", sa.Integer, nullable=True),
    sa.Index("ix_checkpoints_session", "session_id", "id"),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("plan_id", sa.String(128), primary_key=True),
    sa.Column("steps", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

agent_switches = sa.Table(
    "agent_switches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("from_agent", sa.String(32), nullable=False),
    sa.Column("to_agent", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_agent_switches_session", "session_id", "id"),
)

approval_rules = sa.Table(
    "approval_rules",
    metadata,
    sa.Column("owner", sa.String(255), primary_key=True),
    # The rules as JSON ({"allow": [...], "deny": [...], "max_auto_approvals_per_turn": N}),
    # validated by runtime.rules before they are written.
    sa.Column("rules", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

user_instructions = sa.Table(
    "user_instructions",
    metadata,
    sa.Column("owner", sa.String(255), primary_key=True),
    # The user's custom instructions (runtime.instructions), as they wrote them.
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

branches = sa.Table(
    "branches",
    metadata,
    # Parts of a session's history a retry or an edit replaced (runtime.branches).
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), primary_key=True),
    sa.Column("branch", sa.Integer, primary_key=True),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("from_position", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

branch_messages = sa.Table(
    "branch_messages",
    metadata,
    # A replaced message, as it was in ``messages`` (same columns).
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

search_chunks = sa.Table(
    "search_chunks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(128), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("start_line", sa.Integer, nullable=False),
    sa.Column("end_line", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    # A unit vector as little-endian float32s (runtime.codeindex.pack).
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_search_chunks_session_path", "session_id", "path"),
)
