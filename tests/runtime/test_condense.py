"""Condensing on a real database with the real LLM proxy (offline model):
a long session keeps a summary of its start, durably, and reports usage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

import llmproxy.fastpath  # noqa: F401  # LiteLLM's slow import, at collection, not in a test
from runtime.commands import Condense, UserMessage
from runtime.condense import SUMMARY_NAME
from runtime.conversation import Conversation
from runtime.events import ContextCondensed, ErrorEvent, Event, TurnDone, TurnStatus
from runtime.llm import ChatMessage, Chunk, LlmClient, ToolSpec
from runtime.settings import ConversationSettings
from runtime.state import Session
from runtime.store import Store
from tests.llmproxy.conftest import INTERNAL_KEY, StartProxy, fast_path, start_proxy
from tests.runtime.conftest import LIVE

__all__ = ["fast_path", "start_proxy"]  # fixtures

WINDOW = 4000
SMALL_WINDOW = f"""
model_list:
  - model_name: small
    litellm_params: {{model: offline/echo, reply_tokens: 8}}
    model_info: {{max_input_tokens: {WINDOW}}}
"""


class Recording:
    """The real LLM client, remembering the system prompt of every call."""

    def __init__(self, client: LlmClient) -> None:
        self.client = client
        self.systems: list[str] = []

    async def context_window(self, model: str) -> int:
        return await self.client.context_window(model)

    def stream_chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        self.systems.append(messages[0].content)
        return self.client.stream_chat(model, messages, tools, request_id=request_id)


async def conversation_of(store: Store, llm: Recording, session_id: str) -> Conversation:
    session = Session.from_store(await store.load(session_id))
    conversation = Conversation(session, llm, store, ConversationSettings(model="small"))
    LIVE.append(conversation)
    return conversation


async def next_of(queue: asyncio.Queue[Any], *kinds: type) -> list[Event]:
    """Events up to and including the first of one of ``kinds``."""
    events = []
    while True:
        event = (await asyncio.wait_for(queue.get(), 30)).event
        events.append(event)
        if isinstance(event, kinds):
            return events


@pytest.mark.timeout(900)
async def test_a_300_turn_session_keeps_a_summary_of_its_start_and_reports_usage(
    store: Store, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(SMALL_WINDOW)
    llm = Recording(LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=30))
    session_id = f"long-{uuid.uuid4().hex[:8]}"
    await store.create_session(session_id, "alice", "coder")
    conversation = await conversation_of(store, llm, session_id)
    queue = conversation.subscribe().queue

    condensed: list[ContextCondensed] = []
    done: list[TurnDone] = []
    for index in range(300):
        await conversation.handle(UserMessage(f"turn {index}: remember item-{index}"))
        events = await next_of(queue, TurnDone)
        condensed += [e for e in events if isinstance(e, ContextCondensed)]
        done.append(events[-1])  # type: ignore[arg-type]
        assert done[-1].status is TurnStatus.COMPLETED

    # 300 turns are ~10,000 tokens: the 4,000-token window was condensed
    # again and again, and each summary still starts with the first request.
    assert len(condensed) >= 5
    assert all("first: turn 0: remember item-0" in c.summary for c in condensed)
    assert all(0 < c.tokens_after < c.tokens_before for c in condensed)
    assert "first: turn 0: remember item-0" in llm.systems[-1], "the model is sent the summary"
    # Every turn reported how full the window is, never over it.
    contexts = [d.context for d in done]
    assert all(c is not None and c.window == WINDOW for c in contexts)
    assert all(
        0 < c.tokens <= WINDOW and c.percent == round(100 * c.tokens / WINDOW)
        for c in contexts
        if c is not None
    )
    await conversation.close()
    LIVE.remove(conversation)

    # Durable: the history keeps every message and the summaries; a runtime
    # that loads the session sends the latest summary, not the start.
    loaded = await store.load(session_id)
    assert loaded.messages[0].content == "turn 0: remember item-0"
    summaries = [m for m in loaded.messages if m.name.startswith(SUMMARY_NAME)]
    assert [m.content for m in summaries] == [c.summary for c in condensed]
    reloaded = await conversation_of(store, llm, session_id)
    queue = reloaded.subscribe().queue
    await reloaded.handle(UserMessage("what did I ask first?"))
    await next_of(queue, TurnDone)
    assert condensed[-1].summary in llm.systems[-1]
    replayed, _ = await reloaded.stream.events_after(0)
    assert [e.event for e in replayed if isinstance(e.event, ContextCondensed)] == condensed


async def test_condense_on_request_and_when_there_is_nothing_to_condense(
    store: Store, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(SMALL_WINDOW.replace(str(WINDOW), "32000"))
    llm = Recording(LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=30))
    session_id = f"ask-{uuid.uuid4().hex[:8]}"
    await store.create_session(session_id, "alice", "coder")
    conversation = await conversation_of(store, llm, session_id)
    queue = conversation.subscribe().queue

    await conversation.handle(Condense())
    refused = await next_of(queue, ErrorEvent)
    assert refused[-1].code == "nothing_to_condense"  # type: ignore[union-attr]

    for index in range(6):
        await conversation.handle(UserMessage(f"step {index}"))
        await next_of(queue, TurnDone)
    await conversation.handle(Condense())
    event = (await next_of(queue, ContextCondensed, ErrorEvent))[-1]
    assert isinstance(event, ContextCondensed), event
    assert event.summary.startswith("The user asked, first: step 0")
    # The newest turns stay verbatim: about a third of what was sent.
    assert event.messages_replaced == 8
    await conversation.handle(UserMessage("and now?"))
    await next_of(queue, TurnDone)
    assert event.summary in llm.systems[-1]
