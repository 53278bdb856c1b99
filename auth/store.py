"""The users table's queries, the engine, and schema migrations.

:class:`UserStore` works on any SQLAlchemy async engine (SQLite via
aiosqlite, PostgreSQL via asyncpg). Each method is one short transaction, is
safe to cancel (the transaction rolls back) and raises
:class:`~auth.errors.NotFound` / :class:`~auth.errors.AlreadyExists` where
documented. Passwords never reach this module, only their hashes.

The schema belongs to Alembic (``auth/migrations``): :func:`migrate` brings a
database to the newest revision and is idempotent. Nothing here calls
``create_all``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

from auth.errors import AlreadyExists, InvalidUsername, NotFound
from auth.schema import MAX_USERNAME_LENGTH, metadata, users

__all__ = ["MAX_USERNAME_LENGTH", "User", "UserStore", "create_engine", "metadata", "migrate"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_USERNAME = re.compile(r"[A-Za-z0-9._@+-]+")


@dataclass(frozen=True, slots=True)
class User:
    """One row of ``users``; ``id`` is a UUID string that never changes."""

    id: str
    username: str
    password_hash: str
    disabled: bool
    created_at: datetime


def check_username(username: str) -> None:
    """Raise :class:`InvalidUsername` unless the username is acceptable for a new user."""
    if not username:
        raise InvalidUsername("the username must not be empty")
    if len(username) > MAX_USERNAME_LENGTH:
        raise InvalidUsername(f"the username must have at most {MAX_USERNAME_LENGTH} characters")
    if not _USERNAME.fullmatch(username):
        raise InvalidUsername("the username may contain only letters, digits and . _ @ + -")


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url``; for a SQLite file, creates its directory."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    # hide_parameters: errors would otherwise quote password hashes.
    engine = create_async_engine(url, pool_pre_ping=True, hide_parameters=True)
    if url.get_backend_name() == "sqlite":
        _begin_immediate(engine)
    return engine


def _begin_immediate(engine: AsyncEngine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``.

    A deferred transaction that reads and then writes can fail at once with
    "database is locked" when another connection writes concurrently (SQLite
    refuses to wait where waiting could deadlock). Taking the write lock at
    BEGIN makes concurrent writers queue on the busy timeout instead, which
    is what the conditional updates of refresh rotation and the login
    throttle rely on. This is SQLAlchemy's documented pysqlite recipe.
    """

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _row_to_user(row: sa.RowMapping) -> User:
    created_at: datetime = row["created_at"]
    if created_at.tzinfo is None:
        # SQLite keeps no time zone; we only ever write UTC.
        created_at = created_at.replace(tzinfo=UTC)
    return User(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        disabled=bool(row["disabled"]),
        created_at=created_at,
    )


_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.password_hash,
    users.c.disabled,
    users.c.created_at,
)


class UserStore:
    """Queries on ``users``; takes an engine it does not own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get_by_username(self, username: str) -> User | None:
        """The user, or None; matching is exact (case-sensitive)."""
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.select(*_COLUMNS).where(users.c.username == username))
            row = result.mappings().one_or_none()
        return None if row is None else _row_to_user(row)

    async def get_by_id(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.select(*_COLUMNS).where(users.c.id == user_id))
            row = result.mappings().one_or_none()
        return None if row is None else _row_to_user(row)

    async def list_users(self) -> list[User]:
        """Every user, ordered by username."""
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.select(*_COLUMNS).order_by(users.c.username))
            return [_row_to_user(row) for row in result.mappings()]

    async def add_user(self, username: str, password_hash: str) -> User:
        """Insert a new enabled user; raises :class:`InvalidUsername`, :class:`AlreadyExists`."""
        check_username(username)
        user = User(
            id=str(uuid.uuid4()),
            username=username,
            password_hash=password_hash,
            disabled=False,
            created_at=datetime.now(UTC),
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    users.insert().values(
                        id=user.id,
                        username=user.username,
                        password_hash=user.password_hash,
                        disabled=user.disabled,
                        created_at=user.created_at,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"user {username!r} already exists") from None
        return user

    async def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable or enable a user; idempotent; raises :class:`NotFound`."""
        await self._update_by_username(username, disabled=disabled)

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace a user's password hash; raises :class:`NotFound`."""
        await self._update_by_username(username, password_hash=password_hash)

    async def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Swap the hash only if it is still ``old_hash`` (for rehash on login).

        Returns False, without error, if the user changed password meanwhile.
        """
        async with self._engine.begin() as conn:
            result = await conn.execute(
                users.update()
                .where(users.c.id == user_id, users.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
        return result.rowcount == 1

    async def _update_by_username(self, username: str, **values: object) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                users.update().where(users.c.username == username).values(**values)
            )
        if result.rowcount == 0:
            raise NotFound(f"no user {username!r}")


def alembic_config() -> Config:
    """An Alembic config pointing at this package's migrations, from any cwd."""
    from alembic.config import Config  # imported here: the CLI starts faster without it

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


_LOCK = {"name": "codelab_auth_migrate"}


def _upgrade(connection: sa.Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        # Replicas starting together must not run the same migration twice;
        # the lock is released when the migration transaction ends.
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext('codelab_auth_migrate'))")
        )
    command.upgrade(config, "head")


async def migrate(database_url: str) -> None:
    """Upgrade the database to the newest schema; idempotent."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await _run_upgrade(conn)
    finally:
        await engine.dispose()


async def _run_upgrade(conn: AsyncConnection) -> None:
    await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: sa.Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
