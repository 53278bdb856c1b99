"""SQL engines and Alembic migrations as every service of the mesh uses them.

SQLite (aiosqlite) is the embedded default and PostgreSQL (asyncpg) the
production backend. SQLite files get WAL journaling, ``synchronous=NORMAL``,
foreign keys and a busy timeout, and their directory is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5000


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def create_engine(database_url: str, **options: Any) -> AsyncEngine:
    """An async engine for ``database_url`` (parameters hidden from errors)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite":
        options.setdefault("pool_pre_ping", True)
        return create_async_engine(url, hide_parameters=True, **options)
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, hide_parameters=True, **options)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return engine


def alembic_config(migrations_dir: Path) -> Config:
    """An Alembic config for ``migrations_dir``, usable from any working directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return config


async def upgrade(database_url: str, migrations_dir: Path, revision: str = "head") -> None:
    """Bring the database to ``revision``; idempotent. Uses the env.py in the dir."""
    engine = create_engine(database_url)
    config = alembic_config(migrations_dir)

    def run(connection: sa.Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def current_revision(engine: AsyncEngine, version_table: str) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: sa.Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
