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
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

from auth.errors import AlreadyExists, InvalidUsername, NotFound
from auth.schema import MAX_USERNAME_LENGTH, metadata, users
from mesh import database

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
    """The mesh's engine for ``database_url`` (parameters hidden from errors, so
    none quotes a password hash). SQLite transactions begin IMMEDIATE: refresh
    rotation and the login throttle are conditional updates that concurrent
    writers must queue for, not fail."""
    return database.create_engine(database_url, immediate=True)


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
    return database.alembic_config(MIGRATIONS_DIR)


async def migrate(database_url: str) -> None:
    """Upgrade the database to the newest schema; idempotent, one replica at a time."""
    engine = create_engine(database_url)
    try:
        await database.upgrade(database_url, MIGRATIONS_DIR, engine=engine)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    return await database.current_revision(engine, "alembic_version")
