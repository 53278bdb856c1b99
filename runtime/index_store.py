"""Each session's semantic search index in SQL: the ``search_chunks`` table.

A row is one chunk of a file the session read (:mod:`runtime.codeindex`):
its path, line range, text and embedding, a unit vector stored as a float32
blob. The same table and the same ranking in Python serve SQLite and
PostgreSQL; the rows of a session are bounded (files and chunks), so a
search reads at most that many. Rows belong to one session and are only
ever read by it; deleting the session deletes them
(:meth:`runtime.store.Store.delete_session`). Reached as
:attr:`runtime.store.Store.index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runtime.records import now
from runtime.schema import search_chunks

_FILE_CHUNKS = (
    sa.select(
        search_chunks.c.model,
        search_chunks.c.start_line,
        search_chunks.c.end_line,
        search_chunks.c.text,
    )
    .where(
        search_chunks.c.session_id == sa.bindparam("b_session_id"),
        search_chunks.c.path == sa.bindparam("b_path"),
    )
    .order_by(search_chunks.c.id)
)
"""What :meth:`IndexStore.file_chunks` reads (every ``read_file`` asks it):
built once, its compiled form cached."""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk with its embedding (packed float32s, :func:`runtime.codeindex.pack`)."""

    path: str
    start_line: int
    end_line: int
    text: str
    vector: bytes


@dataclass(frozen=True, slots=True)
class IndexStats:
    files: int
    chunks: int


class IndexStore:
    """Writes and reads of the search index; each method is one short transaction,
    safe to cancel."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def replace_file(
        self,
        session_id: str,
        path: str,
        chunks: Sequence[StoredChunk],
        *,
        model: str,
        max_files: int,
        max_chunks: int,
    ) -> list[str]:
        """Make ``chunks`` the session's index of ``path`` (none: forget it).

        To stay within ``max_files`` files and ``max_chunks`` chunks, the
        files indexed longest ago are forgotten first; returns their paths.
        ``chunks`` must number at most ``max_chunks``.
        """
        where = (search_chunks.c.session_id == session_id, search_chunks.c.path == path)
        evicted: list[str] = []
        async with self._engine.begin() as conn:
            await conn.execute(search_chunks.delete().where(*where))
            if chunks:
                evicted = await self._make_room(
                    conn, session_id, len(chunks), max_files, max_chunks
                )
                stamp = now()
                await conn.execute(
                    search_chunks.insert(),
                    [
                        {
                            "session_id": session_id,
                            "path": path,
                            "start_line": c.start_line,
                            "end_line": c.end_line,
                            "text": c.text,
                            "vector": c.vector,
                            "model": model,
                            "created_at": stamp,
                        }
                        for c in chunks
                    ],
                )
        return evicted

    @staticmethod
    async def _make_room(
        conn: AsyncConnection, session_id: str, adding: int, max_files: int, max_chunks: int
    ) -> list[str]:
        files = (
            await conn.execute(
                sa.select(search_chunks.c.path, sa.func.count(), sa.func.min(search_chunks.c.id))
                .where(search_chunks.c.session_id == session_id)
                .group_by(search_chunks.c.path)
                .order_by(sa.func.min(search_chunks.c.id))
            )
        ).all()
        total = sum(count for _, count, _ in files)
        evicted: list[str] = []
        for path, count, _ in files:
            if len(files) - len(evicted) < max_files and total + adding <= max_chunks:
                break
            evicted.append(path)
            total -= count
        if evicted:
            await conn.execute(
                search_chunks.delete().where(
                    search_chunks.c.session_id == session_id, search_chunks.c.path.in_(evicted)
                )
            )
        return evicted

    async def file_chunks(self, session_id: str, path: str) -> list[tuple[str, int, int, str]]:
        """What the session's index holds of ``path``, in order: each chunk's
        model, first and last line, and text (no vectors)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(_FILE_CHUNKS, {"b_session_id": session_id, "b_path": path})
            return [tuple(row) for row in rows]

    async def chunks(self, session_id: str, model: str, under: str = ".") -> list[StoredChunk]:
        """The session's chunks embedded by ``model``, of the files at or under ``under``."""
        query = sa.select(
            search_chunks.c.path,
            search_chunks.c.start_line,
            search_chunks.c.end_line,
            search_chunks.c.text,
            search_chunks.c.vector,
        ).where(search_chunks.c.session_id == session_id, search_chunks.c.model == model)
        prefix = under.strip("/")
        if prefix not in ("", "."):
            query = query.where(
                sa.or_(
                    search_chunks.c.path == prefix,
                    # A LIKE pattern would need escaping for _ and %: compare the prefix.
                    sa.func.substr(search_chunks.c.path, 1, len(prefix) + 1) == prefix + "/",
                )
            )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(search_chunks.c.id))
            return [StoredChunk(*row) for row in rows]

    async def stats(self, session_id: str) -> IndexStats:
        """How many files and chunks the session's index holds."""
        query = sa.select(sa.func.count(sa.distinct(search_chunks.c.path)), sa.func.count()).where(
            search_chunks.c.session_id == session_id
        )
        async with self._engine.connect() as conn:
            files, chunks = (await conn.execute(query)).one()
        return IndexStats(int(files), int(chunks))
