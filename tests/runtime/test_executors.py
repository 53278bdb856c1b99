"""``codebase_search`` in a live conversation, run by its executor (runtime.search).

The model calls ``codebase_search``; the runtime runs it itself through the
executor registry (the IDE is offered nothing, no approval), answers the
model with the tool message and records the call, and the turn goes on;
with calls for the IDE in the same reply, the turn waits for those too.
The executor learns what to index from the answers to the session's calls
and forgets what the IDE says changed. On both databases (the ``store``
fixture); tests/runtime/test_executions.py has the generic call flow.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

from llmproxy.offline import embed_text
from runtime.codeindex import SearchSettings
from runtime.commands import FileChanged, UserMessage
from runtime.conversation import Conversation, ConversationSettings
from runtime.events import AssistantText, ToolCallEvent, TurnDone
from runtime.executors import Executors
from runtime.hub import SessionHub
from runtime.llm import TextChunk
from runtime.search import CodebaseSearch
from runtime.state import Session
from runtime.store import Store
from tests.runtime.conftest import LIVE
from tests.runtime.test_conversation import (
    Made,
    ScriptedLlm,
    assert_history_complete,
    call,
    read_result,
    tool_messages,
    until,
)

AUTH = "def hash_password(password, salt):\n    return pbkdf2_hmac(password, salt)\n"
UI = "def render_button(label, color):\n    return Button(label, color=color)\n"


class EmbeddingLlm(ScriptedLlm):
    """A scripted chat model that embeds as the offline model does; with
    ``embed_hold``, an embedding waits for it."""

    embed_hold: asyncio.Event | None = None

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        if self.embed_hold is not None:
            await self.embed_hold.wait()
        return [embed_text(text) for text in texts]


async def make(store: Store, llm: ScriptedLlm, *, embeds: bool = True) -> Made:
    """An ``ask`` session whose runtime runs ``codebase_search`` (embedding with
    ``llm`` when ``embeds``)."""
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    await store.create_session(session_id, "alice", "ask")
    session = Session.from_store(await store.load(session_id))
    embedder = llm if embeds and isinstance(llm, EmbeddingLlm) else None
    search = CodebaseSearch(store.index, embedder, "m", SearchSettings())
    conversation = Conversation(
        session,
        llm,  # type: ignore[arg-type]
        store,
        ConversationSettings(model="m"),
        executors=Executors([search]),
    )
    LIVE.append(conversation)
    return conversation, conversation.subscribe().queue, session


async def read_two(conversation: Conversation, outbox: asyncio.Queue[object]) -> None:
    """Answer the model's reads of ui.py and src/auth.py."""
    first = (await until(outbox, ToolCallEvent))[-1]  # type: ignore[arg-type]
    second = (await until(outbox, ToolCallEvent))[-1]  # type: ignore[arg-type]
    assert isinstance(first, ToolCallEvent)
    assert isinstance(second, ToolCallEvent)
    await conversation.handle(read_result(first.call_id, "ui.py", UI))
    await conversation.handle(read_result(second.call_id, "src/auth.py", AUTH))


async def test_the_runtime_runs_codebase_search_and_the_turn_goes_on(store: Store) -> None:
    llm = EmbeddingLlm(
        [call("read_file", 0, path="ui.py"), call("read_file", 1, path="src/auth.py")],
        [call("codebase_search", query="where are passwords hashed")],
        [TextChunk("found it")],
    )
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("find the hashing"))
    await read_two(conversation, outbox)

    events = await until(outbox, TurnDone)

    assert not [e for e in events if isinstance(e, ToolCallEvent)], "the IDE runs nothing"
    assert AssistantText("found it") in events
    result = tool_messages(session)[-1]["result"]
    assert [m["path"] for m in result["matches"]] == ["src/auth.py", "ui.py"]
    assert "hash_password" in result["matches"][0]["text"]
    assert "codebase_search" in llm.tools_seen[0]
    assert_history_complete(session)
    (searched,) = [
        c.call_id for m in session.messages for c in m.tool_calls if c.name == "codebase_search"
    ]
    loaded = await store.load(session.session_id)
    assert searched in loaded.answered, "recorded, and answered"
    assert not loaded.pending


async def test_with_ide_calls_in_the_same_reply_the_turn_waits_for_them(store: Store) -> None:
    llm = EmbeddingLlm(
        [call("codebase_search", 0, query="buttons"), call("read_file", 1, path="ui.py")],
        [TextChunk("read")],
    )
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("look"))
    (read,) = await until(outbox, ToolCallEvent)
    assert isinstance(read, ToolCallEvent)
    assert read.tool_name == "read_file"

    await conversation.handle(read_result(read.call_id, "ui.py", UI))

    events = await until(outbox, TurnDone)
    assert AssistantText("read") in events
    answers = {m.name: json.loads(m.content) for m in session.messages if m.role == "tool"}
    assert "matches" in answers["codebase_search"]["result"], "answered in either order"
    assert len(llm.seen) == 2, "one model call after both answers"
    assert_history_complete(session)


async def test_a_file_the_ide_says_changed_is_forgotten(store: Store) -> None:
    llm = EmbeddingLlm(
        [call("read_file", 0, path="ui.py"), call("read_file", 1, path="src/auth.py")],
        [TextChunk("read")],
        [call("codebase_search", query="passwords")],
        [TextChunk("searched")],
    )
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("read them"))
    await read_two(conversation, outbox)
    await until(outbox, TurnDone)

    await conversation.handle(FileChanged("./src/auth.py", 1.0))
    await conversation.handle(UserMessage("search"))
    await until(outbox, TurnDone)

    result = tool_messages(session)[-1]["result"]
    assert [m["path"] for m in result["matches"]] == ["ui.py"], "auth.py is read again first"


async def test_a_model_with_no_embeddings_is_told_the_tool_is_unavailable(store: Store) -> None:
    llm = ScriptedLlm([call("codebase_search", query="x")], [TextChunk("ok")])
    conversation, outbox, session = await make(store, llm, embeds=False)
    await conversation.handle(UserMessage("search"))

    await until(outbox, TurnDone)

    assert "no embedding model" in tool_messages(session)[0]["error"]
    assert_history_complete(session)


async def test_deleting_a_session_stops_its_indexing(store: Store) -> None:
    llm = EmbeddingLlm([call("read_file", path="src/auth.py")], [TextChunk("read")])
    llm.embed_hold = asyncio.Event()  # the file's embedding never comes
    search = CodebaseSearch(store.index, llm, "m", SearchSettings())
    hub = SessionHub(
        store,
        llm,  # type: ignore[arg-type]
        ConversationSettings(model="m"),
        default_agent="ask",
        executors=Executors([search]),
    )
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    conversation, _ = await hub.open(session_id, "alice")
    outbox = conversation.subscribe().queue
    await conversation.handle(UserMessage("read"))
    (read,) = await until(outbox, ToolCallEvent)
    assert isinstance(read, ToolCallEvent)
    await conversation.handle(read_result(read.call_id, "src/auth.py", AUTH))
    await until(outbox, TurnDone)
    assert search._indexes, "the file waits to be embedded"

    await hub.delete(session_id, "alice")

    assert not search._indexes, "its indexing stopped with it"
    assert (await store.index.stats(session_id)).chunks == 0
    llm.embed_hold.set()
    await hub.close()
    await search.close()
