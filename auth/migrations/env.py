"""Alembic environment for the auth schema.

``auth.store.migrate`` passes an open (sync-facing) connection in
``config.attributes["connection"]``. Without one, the URL comes from
``sqlalchemy.url`` or ``AUTH_SERVICE__DATABASE_URL`` and an async engine is
created here, so async URLs work from the ``alembic`` command line too.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from auth.config import ENV_PREFIX, AuthConfig
from auth.schema import metadata
from mesh.env import Env

config = context.config
target_metadata = metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or AuthConfig.from_env(Env(ENV_PREFIX)).database_url


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async(_database_url()))


if context.is_offline_mode():
    run_offline()
else:
    run_online()
