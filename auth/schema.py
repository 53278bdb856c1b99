"""Every table of the auth database, in one SQLAlchemy ``MetaData``.

The schema belongs to Alembic (``auth/migrations``); these definitions are
what the code queries and what the migration test compares the migrated
database against. Times in the tables added by revision 0002 are unix seconds
(``Float``), which compare the same way on SQLite and PostgreSQL.

Secrets are never stored: passwords and client secrets as argon2id hashes,
refresh tokens as the hex SHA-256 of the token.
"""

from __future__ import annotations

import sqlalchemy as sa

MAX_USERNAME_LENGTH = 150
MAX_CLIENT_ID_LENGTH = 100

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(MAX_USERNAME_LENGTH), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("username", name="uq_users_username"),
)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(MAX_CLIENT_ID_LENGTH), primary_key=True),
    # NULL for a public client; an argon2id hash for a confidential one.
    sa.Column("secret_hash", sa.String(255), nullable=True),
    sa.Column("scopes", sa.String(1000), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("family_id", sa.String(36), nullable=False, index=True),
    sa.Column("user_id", sa.String(36), nullable=False, index=True),
    sa.Column("client_id", sa.String(MAX_CLIENT_ID_LENGTH), nullable=False),
    sa.Column("scope", sa.String(1000), nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

login_failures = sa.Table(
    "login_failures",
    metadata,
    # "address:<ip>" or "account:<username>|<ip>"; see auth.throttle.
    sa.Column("bucket", sa.String(255), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failure_at", sa.Float, nullable=False),
    sa.Column("blocked_until", sa.Float, nullable=False),
)

revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sub", sa.String(MAX_CLIENT_ID_LENGTH), nullable=False),
    sa.Column("not_before", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(36), nullable=True),
    sa.Column("username", sa.String(MAX_USERNAME_LENGTH), nullable=True),
    sa.Column("client_id", sa.String(MAX_CLIENT_ID_LENGTH), nullable=True),
    sa.Column("address", sa.String(64), nullable=True),
    sa.Column("detail", sa.String(255), nullable=True),
)
