"""Runtime tools that need I/O (``codebase_search``), in a live conversation.

The model calls ``codebase_search``; the runtime runs it itself (the IDE is
offered nothing), answers the model with the tool message and records the
call, and the turn goes on; with calls for the IDE in the same reply, the
turn waits for those too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from llmproxy.offline import embed_text
from runtime.commands import UserMessage
from runtime.events import AssistantText, ToolCallEvent, TurnDone
from runtime.llm import TextChunk
from runtime.store import Store
from tests.runtime.test_conversation import (
    ScriptedLlm,
    assert_history_complete,
    call,
    make,
    read_result,
    tool_messages,
    until,
)

AUTH = "def hash_password(password, salt):\n    return pbkdf2_hmac(password, salt)\n"
UI = "def render_button(label, color):\n    return Button(label, color=color)\n"


class EmbeddingLlm(ScriptedLlm):
    """A scripted chat model that embeds as the offline model does."""

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        return [embed_text(text) for text in texts]


async def test_the_runtime_runs_codebase_search_and_the_turn_goes_on(store: Store) -> None:
    llm = EmbeddingLlm(
        [call("read_file", 0, path="ui.py"), call("read_file", 1, path="src/auth.py")],
        [call("codebase_search", query="where are passwords hashed")],
        [TextChunk("found it")],
    )
    conversation, outbox, session = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("find the hashing"))
    first = (await until(outbox, ToolCallEvent))[-1]
    second = (await until(outbox, ToolCallEvent))[-1]
    assert isinstance(first, ToolCallEvent)
    assert isinstance(second, ToolCallEvent)
    await conversation.handle(read_result(first.call_id, "ui.py", UI))
    await conversation.handle(read_result(second.call_id, "src/auth.py", AUTH))

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
    conversation, outbox, session = await make(store, llm, agent="ask")
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


async def test_a_model_with_no_embeddings_is_told_the_tool_is_unavailable(store: Store) -> None:
    llm = ScriptedLlm([call("codebase_search", query="x")], [TextChunk("ok")])
    conversation, outbox, session = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("search"))

    await until(outbox, TurnDone)

    assert "no embedding model" in tool_messages(session)[0]["error"]
    assert_history_complete(session)
