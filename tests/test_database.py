"""mesh.database: a SQLite file's pool keeps the connections it opens, each with a small cache."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mesh.database import SQLITE_CACHE_KIB, SQLITE_POOL_SIZE, create_engine


async def test_sqlite_bursts_reuse_the_connections_they_opened(tmp_path: Path) -> None:
    """Queries more than the pool at once, burst after burst: no connection
    (each an aiosqlite thread) is opened beyond the pool, none after the first
    burst, and the threads stay as many as the connections."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}")
    opened: list[object] = []
    closed: list[object] = []

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _opened(dbapi_connection: Any, _record: Any) -> None:
        opened.append(dbapi_connection)

    @sa.event.listens_for(engine.sync_engine, "close")
    def _closed(dbapi_connection: Any, _record: Any) -> None:
        closed.append(dbapi_connection)

    # Threads are compared by identity: one that an earlier test left
    # running may end meanwhile, and a count would then come out short.
    threads_before = set(threading.enumerate())
    holding: list[None] = []
    full = asyncio.Event()

    async def query() -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            # The first pool-full of queries hold their connections together:
            # the rest of the burst finds the pool exhausted.
            holding.append(None)
            if len(holding) >= SQLITE_POOL_SIZE:
                full.set()
            await asyncio.wait_for(full.wait(), 10)

    wide = SQLITE_POOL_SIZE * 3
    try:
        await asyncio.gather(*(query() for _ in range(wide)))
        after_first = len(opened)
        for _ in range(3):
            await asyncio.gather(*(query() for _ in range(wide)))
        assert after_first == SQLITE_POOL_SIZE
        assert len(opened) == SQLITE_POOL_SIZE
        assert closed == []
        started = [t for t in threading.enumerate() if t not in threads_before]
        assert len(started) == SQLITE_POOL_SIZE
    finally:
        await engine.dispose()


async def test_sqlite_connections_cache_a_bounded_number_of_pages(tmp_path: Path) -> None:
    """Every pooled connection's page cache is SQLITE_CACHE_KIB, not SQLite's
    2,000 KiB: the pool's caches together stay within POOL_SIZE x that."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cache.db'}")
    full = asyncio.Event()
    sizes: list[int] = []

    async def read_cache_size() -> None:
        async with engine.connect() as conn:
            sizes.append((await conn.execute(sa.text("PRAGMA cache_size"))).scalar_one())
            if len(sizes) == SQLITE_POOL_SIZE:
                full.set()
            await asyncio.wait_for(full.wait(), 10)  # every connection of the pool at once

    try:
        await asyncio.gather(*(read_cache_size() for _ in range(SQLITE_POOL_SIZE)))
    finally:
        await engine.dispose()
    assert sizes == [-SQLITE_CACHE_KIB] * SQLITE_POOL_SIZE
