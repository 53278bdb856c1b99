"""Semantic search over the files a session has seen: ``codebase_search``.

What is indexed: the text of every file the session read in full
(``read_file`` without a line range, whoever issued it: the model, or the
runtime before an edit) and of every file an agent wrote (``write_file``,
the content written). A file the IDE only listed is not read for the index:
reading it would be an IDE call of its own, on the turn's path, for content
nobody asked for. An agent's ``delete_file``/``move_file`` and the IDE's
``file_changed`` notice forget a file until it is read again.

How: a file is cut into chunks of :data:`CHUNK_LINES` lines overlapping by
:data:`CHUNK_OVERLAP`; the chunks are embedded through llmproxy's ``Embed``
(batches of :data:`EMBED_BATCH`) by a background task of the session's
:class:`SessionIndex`, off the turn's path, and stored with the session
(:mod:`runtime.index_store`). A file read again as the index holds it
(same chunks, same model) is not embedded or written again: the check is
one query. A search waits for what is still being
indexed, embeds the query, and ranks the session's chunks by cosine
similarity (plain Python over the stored vectors: the index is bounded by
:class:`SearchSettings`). Only the session's own chunks are read, so another
session, and another user, never sees them.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import posixpath
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from runtime import changes
from runtime.errors import UpstreamError
from runtime.index_store import IndexStore, StoredChunk
from runtime.state import PendingCall

log = structlog.get_logger("runtime.codeindex")

CHUNK_LINES = 40
CHUNK_OVERLAP = 10
MAX_CHUNK_CHARS = 4000
"""A chunk's text is cut here (a minified file's one line), embedded and shown alike."""
EMBED_BATCH = 32
"""Chunks per ``Embed`` call."""
DEFAULT_RESULTS = 5
MAX_SNIPPET_CHARS = 1500
"""A match's text in the tool's answer is cut here."""


@dataclass(frozen=True, slots=True)
class SearchSettings:
    """The embedding model and the bounds of one session's index
    (``AGENT_RUNTIME__EMBEDDING_MODEL``, ``AGENT_RUNTIME__SEARCH_*``)."""

    model: str = ""
    """The model group files and queries are embedded with; "": the agents' default."""

    max_files: int = 200
    """Files indexed at most; past it, the file indexed longest ago is forgotten."""
    max_file_bytes: int = 256_000
    """A file larger than this is not indexed."""
    max_chunks: int = 4000
    """Chunks indexed at most; past it, the files indexed longest ago are forgotten."""
    pending_files: int = 64
    """Files waiting to be indexed at most; past it, the oldest wait is dropped."""


@dataclass(frozen=True, slots=True)
class Chunk:
    start_line: int
    end_line: int
    text: str


@runtime_checkable
class Embedder(Protocol):
    """What the index needs of a model: :class:`runtime.llm.LlmClient`."""

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; raises UpstreamError."""
        ...


def normalize_path(path: str) -> str:
    """A workspace path as the index keys it: ``./src//a.py`` is ``src/a.py``."""
    return posixpath.normpath(path.strip()).lstrip("/")


def chunk_lines(content: str) -> list[Chunk]:
    """``content`` cut into overlapping windows of lines (1-based, inclusive);
    windows with nothing but blanks are left out."""
    lines = content.splitlines()
    chunks = []
    step = CHUNK_LINES - CHUNK_OVERLAP
    for start in range(0, max(len(lines) - CHUNK_OVERLAP, 1), step):
        window = lines[start : start + CHUNK_LINES]
        text = "\n".join(window)[:MAX_CHUNK_CHARS]
        if text.strip():
            chunks.append(Chunk(start + 1, start + len(window), text))
    return chunks


def pack(vector: Sequence[float]) -> bytes:
    """A vector, scaled to unit length, as little-endian float32s."""
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return struct.pack(f"<{len(vector)}f", *(v / norm for v in vector))


def unpack(blob: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(blob) // 4}f", blob)


@dataclass(frozen=True, slots=True)
class Match:
    path: str
    start_line: int
    end_line: int
    score: float
    text: str

    def to_json(self) -> dict[str, Any]:
        text = self.text
        if len(text) > MAX_SNIPPET_CHARS:
            text = text[:MAX_SNIPPET_CHARS] + "…"
        return {
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "score": round(self.score, 4),
            "text": text,
        }


def rank(query: Sequence[float], chunks: Sequence[StoredChunk], limit: int) -> list[Match]:
    """The ``limit`` chunks nearest ``query`` by cosine, best first; one per
    line range (a chunk overlapping a better one of its file is left out)."""
    unit = unpack(pack(query))
    scored = []
    for chunk in chunks:
        vector = unpack(chunk.vector)
        if len(vector) == len(unit):
            scored.append((math.fsum(a * b for a, b in zip(unit, vector, strict=True)), chunk))
    matches: list[Match] = []
    for score, chunk in heapq.nlargest(limit * 3, scored, key=lambda pair: pair[0]):
        if any(
            m.path == chunk.path
            and m.start_line <= chunk.end_line
            and chunk.start_line <= m.end_line
            for m in matches
        ):
            continue
        matches.append(Match(chunk.path, chunk.start_line, chunk.end_line, score, chunk.text))
        if len(matches) == limit:
            break
    return matches


_FORGETS = {"delete_file": ("path",), "move_file": ("source", "destination")}


class SessionIndex:
    """The search index of one session, and the task that fills it.

    :meth:`observe` and :meth:`forget` take what the session saw without
    awaiting; a background task embeds and stores it (at most
    ``limits.pending_files`` files wait; the oldest wait is dropped past
    that), and tells ``on_idle`` when nothing is left to index (the index
    itself is in the database: an idle one holds nothing else).
    :meth:`close` stops the task; idempotent. Without an ``embedder``
    nothing is indexed and a search says so.
    """

    def __init__(
        self,
        session_id: str,
        store: IndexStore,
        embedder: Embedder | None,
        model: str,
        limits: SearchSettings = SearchSettings(),
        *,
        on_idle: Callable[[SessionIndex], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self._on_idle = on_idle
        self._store = store
        self._embedder = embedder
        self._model = model
        self._limits = limits
        self._waiting: OrderedDict[str, str | None] = OrderedDict()
        """Path → its content to index, or None to forget it; the latest wins."""
        self._task: asyncio.Task[None] | None = None

    # -- what the session saw ------------------------------------------------

    def observe(self, call: PendingCall, payload: dict[str, Any], status: str) -> None:
        """Take in a tool call's answer: a full read or a write is indexed, a
        delete or a move forgets its paths."""
        if status != "completed" or "error" in payload:
            return
        arguments = call.arguments
        if call.tool_name == "read_file" and not {"start_line", "end_line"} & arguments.keys():
            content = changes.read_outcome(payload)
            if isinstance(content, str):
                self._queue(arguments["path"], content)
        elif call.tool_name == "write_file":
            self._queue(arguments["path"], arguments.get("content", ""))
        for field in _FORGETS.get(call.tool_name, ()):
            self._queue(arguments[field], None)

    def forget(self, path: str) -> None:
        """The file changed outside the session's sight: forget it until read again."""
        self._queue(path, None)

    def _queue(self, path: str, content: str | None) -> None:
        if self._embedder is None:
            return
        path = normalize_path(path)
        if content is not None and len(content.encode()) > self._limits.max_file_bytes:
            log.info("index_file_too_large", session_id=self.session_id, path=path)
            content = None
        self._waiting.pop(path, None)
        self._waiting[path] = content
        while len(self._waiting) > self._limits.pending_files:
            dropped, _ = self._waiting.popitem(last=False)
            log.info("index_wait_dropped", session_id=self.session_id, path=dropped)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._index_waiting())
            self._task.add_done_callback(self._done)

    def _done(self, _: asyncio.Task[None]) -> None:
        if self._on_idle is not None and not self.busy:
            self._on_idle(self)

    @property
    def busy(self) -> bool:
        """Whether files wait to be indexed, or are being indexed."""
        return bool(self._waiting) or (self._task is not None and not self._task.done())

    async def _index_waiting(self) -> None:
        while self._waiting:
            path, content = self._waiting.popitem(last=False)
            try:
                await self._index(path, content)
            except UpstreamError as exc:
                log.warning("index_failed", session_id=self.session_id, code=exc.code)
            except Exception:  # a database error: the file is not indexed, the turn goes on
                log.exception("index_failed", session_id=self.session_id)

    async def _index(self, path: str, content: str | None) -> None:
        assert self._embedder is not None
        chunks = chunk_lines(content or "")[: self._limits.max_chunks]
        if content is not None and await self._holds(path, chunks):
            log.debug("file_unchanged", session_id=self.session_id, path=path)
            return
        stored: list[StoredChunk] = []
        for first in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[first : first + EMBED_BATCH]
            vectors = await self._embedder.embed(self._model, [c.text for c in batch])
            stored.extend(
                StoredChunk(path, c.start_line, c.end_line, c.text, pack(v))
                for c, v in zip(batch, vectors, strict=True)
            )
        evicted = await self._store.replace_file(
            self.session_id,
            path,
            stored,
            model=self._model,
            max_files=self._limits.max_files,
            max_chunks=self._limits.max_chunks,
        )
        log.info(
            "file_indexed", session_id=self.session_id, chunks=len(stored), evicted=len(evicted)
        )

    async def _holds(self, path: str, chunks: Sequence[Chunk]) -> bool:
        """Whether the index already holds exactly ``chunks`` of ``path``,
        embedded by this model: a file read again unchanged costs this one
        query, not its embeddings and a write."""
        held = await self._store.file_chunks(self.session_id, path)
        return held == [(self._model, c.start_line, c.end_line, c.text) for c in chunks]

    async def settled(self) -> None:
        """Return once nothing waits to be indexed (as of now and since)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def close(self) -> None:
        """Stop indexing; what still waits is dropped. Idempotent."""
        self._waiting.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    # -- the tool --------------------------------------------------------------

    async def search(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Answer a ``codebase_search`` call: the best chunks for ``query``
        under ``path``, as its tool message's payload. Raises UpstreamError
        when the query cannot be embedded."""
        if self._embedder is None:
            return {"error": "codebase_search is not available: no embedding model is configured"}
        await self.settled()
        under = normalize_path(arguments.get("path") or ".")
        chunks = await self._store.chunks(self.session_id, self._model, under)
        if not chunks:
            return {
                "result": {
                    "query": arguments["query"],
                    "matches": [],
                    "note": "nothing searchable yet"
                    + ("" if under == "." else f" under {under}")
                    + ": codebase_search covers the files this session read in full "
                    "(read_file) or wrote; read the files first",
                }
            }
        [vector] = await self._embedder.embed(self._model, [arguments["query"]])
        limit = arguments.get("max_results", DEFAULT_RESULTS)
        matches = rank(vector, chunks, limit)
        return {
            "result": {
                "query": arguments["query"],
                "matches": [m.to_json() for m in matches],
                "searched_files": len({c.path for c in chunks}),
            }
        }
