"""SQL engines and Alembic migrations as every service of the mesh uses them.

SQLite (aiosqlite) is the embedded default and PostgreSQL (asyncpg) the
production backend. SQLite files get WAL journaling, ``synchronous=NORMAL``,
foreign keys and a busy timeout, a pool that keeps every connection it opens
(:data:`SQLITE_POOL_SIZE`), each with a small page cache
(:data:`SQLITE_CACHE_KIB`), and their directory is created; their statements
go through :mod:`mesh.sqlite_driver` (one trip to SQLite's thread each; a
transaction run by :func:`transact`, one trip in all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mesh import sqlite_driver

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_POOL_SIZE = 15
"""SQLite connections open at once at most, all kept open once opened.

Each aiosqlite connection is a thread of its own. SQLAlchemy's default pool
(5 kept, 10 more on demand and closed when returned) made a burst of
queries start and end threads and SQLite connections by the hundred (about
250 in two minutes of ``scripts/bench-mesh --soak`` at 300 sessions), and
the C allocator kept the memory of their per-thread arenas: the runtime's
RSS grew ~20 MiB in that soak. As many connections, never closed, serve the
same concurrency with a fixed set of threads.
"""
SQLITE_CACHE_KIB = 512
"""Each SQLite connection's page cache (SQLite's default: 2,000 KiB).

Every pooled connection fills a cache of its own as the file grows, so the
pool holds up to :data:`SQLITE_POOL_SIZE` times this (7.5 MiB, not 30).
Pages not cached are read from the operating system's cache.
"""


def is_sqlite(url: str | sa.URL) -> bool:
    return sa.make_url(url).get_backend_name() == "sqlite"


def create_engine(database_url: str, *, immediate: bool = False, **options: Any) -> AsyncEngine:
    """An async engine for ``database_url`` (parameters hidden from errors).

    ``immediate`` makes every SQLite transaction ``BEGIN IMMEDIATE`` (see
    :func:`_begin_immediate`); it changes nothing on PostgreSQL.
    """
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite":
        options.setdefault("pool_pre_ping", True)
        return create_async_engine(url, hide_parameters=True, **options)
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if not in_memory and "poolclass" not in options:  # (in memory: one connection)
        options.setdefault("pool_size", SQLITE_POOL_SIZE)
        options.setdefault("max_overflow", 0)
    if url.get_driver_name() == "aiosqlite":
        options.setdefault("module", sqlite_driver.Dbapi())
    engine = create_async_engine(url, hide_parameters=True, **options)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if immediate:
        _begin_immediate(engine)
    return engine


async def transact(engine: AsyncEngine, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` in a transaction of its own, committed when it
    returns and rolled back when it raises; ``connection`` is SQLAlchemy's
    synchronous one.

    On :mod:`mesh.sqlite_driver`, ``fn`` and the commit run on SQLite's
    thread in one trip (its statements run there without a trip and a
    greenlet each); elsewhere ``fn`` runs through
    :meth:`AsyncConnection.run_sync` (each statement awaited in turn). For
    a transaction of several statements on a hot path: ``fn`` may run with
    the GIL on another thread, so keep it to statements and the little
    Python they need, and let it not commit or roll back itself.
    """
    async with engine.begin() as conn:
        sync = conn.sync_connection
        dbapi = sync.connection.dbapi_connection if sync is not None else None
        if isinstance(dbapi, sqlite_driver.Connection):
            # Committed on the thread; SQLAlchemy's commit then finds nothing open.
            return cast(T, await dbapi.run_here(fn, sync, *args))
        return await conn.run_sync(fn, *args)


WAL_SWITCH_ATTEMPTS = 50


def _switch_to_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so; later connections find it).

    Switching needs the database to itself, and SQLite answers "database is
    locked" at once rather than waiting on the busy timeout when another
    connection (a replica migrating the same new file) holds it: so check
    first, and retry with a short (non-blocking) pause.
    """
    for attempt in range(WAL_SWITCH_ATTEMPTS):
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError
            if "locked" not in str(exc) or attempt + 1 == WAL_SWITCH_ATTEMPTS:
                raise
        sa.util.await_(asyncio.sleep(0.01 * (attempt + 1)))


def _begin_immediate(engine: AsyncEngine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``.

    A deferred transaction that reads and then writes can fail at once with
    "database is locked" when another connection writes concurrently (SQLite
    refuses to wait where waiting could deadlock). Taking the write lock at
    BEGIN makes concurrent writers queue on the busy timeout instead, which
    conditional updates and concurrent migrations rely on. This is
    SQLAlchemy's documented pysqlite recipe.
    """

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(migrations_dir: Path) -> Config:
    """An Alembic config for ``migrations_dir``, usable from any working directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    return config


async def upgrade(
    database_url: str,
    migrations_dir: Path,
    revision: str = "head",
    *,
    engine: AsyncEngine | None = None,
) -> None:
    """Bring the database to ``revision``; idempotent. Uses the env.py in the dir.

    Replicas starting together run it one at a time: on PostgreSQL the
    migration holds an advisory lock named after the migrations, on SQLite
    the write lock taken at BEGIN.
    ``engine`` (optional) is used instead of a fresh one, and not disposed.
    """
    own = engine is None
    engine = engine if engine is not None else create_engine(database_url, immediate=True)
    config = alembic_config(migrations_dir)
    lock = f"codelab_migrate:{migrations_dir.parent.name}"

    def run(connection: sa.Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Released when the migration transaction ends.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": lock}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        if own:
            await engine.dispose()


async def current_revision(engine: AsyncEngine, version_table: str) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: sa.Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
