"""Alembic environment for the runtime's schema.

:func:`runtime.store.migrate` (through :func:`mesh.database.upgrade`) passes
an open connection in ``config.attributes["connection"]``. From the
``alembic`` command line, the URL comes from ``sqlalchemy.url`` (the
environment is read by the composition root only: ``python -m runtime
migrate`` is the usual way). The version table is
``runtime_alembic_version`` so the runtime and auth can share a database.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context

from mesh.database import create_engine
from runtime.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or run `python -m runtime migrate`")
    asyncio.run(_run_async(url))
