"""``codebase_search``'s executor: the sessions' search indexes, one process's.

``codebase_search`` is a tool of :attr:`~runtime.tools.Side.EXECUTOR`
declared in :data:`runtime.tools.TOOLS`: it passes the gate of any call,
needs no approval (it reads only what the runtime holds), and is run by
:class:`CodebaseSearch` (:mod:`runtime.executions`), which answers with
:meth:`runtime.codeindex.SessionIndex.search`. As a
:class:`~runtime.executors.Watcher`, the same executor is told every
answered call of every session (:meth:`~runtime.dispatch.Dispatcher.resolve`:
a full read or a write is indexed, a delete or a move forgets) and every
``file_changed`` (forgets), without awaiting.
"""

from __future__ import annotations

from typing import Any

import structlog

from runtime.codeindex import Embedder, SearchSettings, SessionIndex
from runtime.errors import UpstreamError
from runtime.executors import Execution, Offer
from runtime.index_store import IndexStore
from runtime.state import PendingCall

log = structlog.get_logger("runtime.search")

TOOL = "codebase_search"


class CodebaseSearch:
    """Runs ``codebase_search`` and fills the sessions' indexes.

    A session's :class:`~runtime.codeindex.SessionIndex` is kept here only
    while files wait to be indexed: the index is in the database, so a
    search needs nothing else (and works the same after a restart).
    ``model`` embeds unless ``settings.model`` names another group. Without
    an ``embedder`` nothing is indexed and a search says so.
    """

    def __init__(
        self,
        store: IndexStore,
        embedder: Embedder | None,
        model: str,
        settings: SearchSettings,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._model = settings.model or model
        self._settings = settings
        self._indexes: dict[str, SessionIndex] = {}
        """Session id → its index while files of it wait to be indexed."""

    def _index(self, session_id: str) -> SessionIndex:
        index = self._indexes.get(session_id)
        if index is None:
            index = SessionIndex(
                session_id,
                self._store,
                self._embedder,
                self._model,
                self._settings,
                on_idle=self._idle,
            )
        return index

    def _keep(self, index: SessionIndex) -> None:
        if index.busy:
            self._indexes[index.session_id] = index

    def _idle(self, index: SessionIndex) -> None:
        if self._indexes.get(index.session_id) is index:
            del self._indexes[index.session_id]

    # -- the executor (runtime.executors.Executor) -------------------------------

    def runs(self, tool_name: str) -> bool:
        return tool_name == TOOL

    async def offer(self, agent: str) -> Offer:
        return Offer()  # declared in runtime.tools; the agents' data grants it

    async def run(self, execution: Execution) -> dict[str, Any]:
        try:
            return await self._index(execution.session_id).search(execution.arguments)
        except UpstreamError as exc:
            log.warning("search_failed", session_id=execution.session_id, code=exc.code)
            return {"error": f"{TOOL} failed: {exc}"}

    async def close(self) -> None:
        indexes, self._indexes = list(self._indexes.values()), {}
        for index in indexes:
            await index.close()

    # -- the watcher (runtime.executors.Watcher) ---------------------------------

    def saw(self, session_id: str, call: PendingCall, payload: dict[str, Any], status: str) -> None:
        index = self._index(session_id)
        index.observe(call, payload, status)
        self._keep(index)

    def changed(self, session_id: str, path: str) -> None:
        index = self._index(session_id)
        index.forget(path)
        self._keep(index)

    async def release(self, session_id: str) -> None:
        """Stop indexing the session's files (what still waits is dropped)."""
        index = self._indexes.pop(session_id, None)
        if index is not None:
            await index.close()
