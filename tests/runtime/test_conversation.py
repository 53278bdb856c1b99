"""The turn loop without a network: a scripted LLM client drives Conversation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from runtime.conversation import CancelTurn, Conversation, Unsupported, UserMessage
from runtime.errors import InvalidArgument, PermissionDenied, UpstreamError
from runtime.events import AssistantText, ErrorEvent, Sequenced, TurnDone, TurnStatus, Usage
from runtime.llm import ChatMessage, Chunk, StreamEnd, TextChunk
from runtime.session import SessionRegistry


class ScriptedLlm:
    """Yields the given chunks; optionally blocks before the end or fails."""

    def __init__(
        self,
        chunks: Sequence[Chunk],
        *,
        hold: asyncio.Event | None = None,
        fail: UpstreamError | None = None,
    ) -> None:
        self.chunks = chunks
        self.hold = hold
        self.fail = fail
        self.seen: list[list[ChatMessage]] = []
        self.closed = asyncio.Event()

    async def stream_chat(
        self, model: str, messages: Sequence[ChatMessage], *args: Any, **kwargs: Any
    ) -> AsyncIterator[Chunk]:
        self.seen.append(list(messages))
        try:
            for chunk in self.chunks:
                yield chunk
            if self.hold is not None:
                await self.hold.wait()
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed.set()


async def drain_until_done(outbox: asyncio.Queue[Sequenced]) -> list[Sequenced]:
    items = []
    while True:
        item = await asyncio.wait_for(outbox.get(), 5)
        items.append(item)
        if isinstance(item.event, TurnDone):
            return items


def make(llm: ScriptedLlm) -> tuple[Conversation, asyncio.Queue[Sequenced], Any]:
    session, _ = SessionRegistry("coder").open("s1", "alice")
    outbox: asyncio.Queue[Sequenced] = asyncio.Queue(maxsize=64)
    conversation = Conversation(session, llm, model="offline", outbox=outbox)  # type: ignore[arg-type]
    return conversation, outbox, session


async def test_streams_text_then_done_and_stores_the_answer() -> None:
    llm = ScriptedLlm(
        [TextChunk("Hello "), TextChunk("world"), StreamEnd("stop", Usage(3, 2), "offline")]
    )
    conversation, outbox, session = make(llm)
    await conversation.handle(UserMessage("hi"))
    items = await drain_until_done(outbox)
    assert [i.event for i in items] == [
        AssistantText("Hello "),
        AssistantText("world"),
        TurnDone(TurnStatus.COMPLETED, Usage(3, 2)),
    ]
    assert [i.seq for i in items] == [1, 2, 3]
    assert session.messages == [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "Hello world"),
    ]
    # The next turn sees the whole conversation.
    await conversation.handle(UserMessage("again"))
    await drain_until_done(outbox)
    assert [m.content for m in llm.seen[1]] == ["hi", "Hello world", "again"]


async def test_second_message_during_a_turn_is_refused() -> None:
    hold = asyncio.Event()
    conversation, outbox, session = make(ScriptedLlm([TextChunk("x")], hold=hold))
    await conversation.handle(UserMessage("first"))
    assert (await outbox.get()).event == AssistantText("x")
    await conversation.handle(UserMessage("second"))
    refused = (await outbox.get()).event
    assert isinstance(refused, ErrorEvent)
    assert refused.code == "turn_in_progress"
    assert refused.retryable
    hold.set()
    await drain_until_done(outbox)
    assert [m.content for m in session.messages] == ["first", "x"]


async def test_cancel_stops_the_llm_stream_and_stores_no_partial_answer() -> None:
    llm = ScriptedLlm([TextChunk("partial")], hold=asyncio.Event())
    conversation, outbox, session = make(llm)
    await conversation.handle(UserMessage("go"))
    assert (await outbox.get()).event == AssistantText("partial")
    await conversation.handle(CancelTurn())
    done = (await outbox.get()).event
    assert done == TurnDone(TurnStatus.CANCELLED)
    assert llm.closed.is_set()
    assert session.messages == [ChatMessage("user", "go")]
    assert not conversation.turn_running


async def test_cancel_without_a_turn_is_an_error() -> None:
    conversation, outbox, _ = make(ScriptedLlm([]))
    await conversation.handle(CancelTurn())
    event = (await outbox.get()).event
    assert isinstance(event, ErrorEvent)
    assert event.code == "no_turn_running"


async def test_upstream_failure_is_an_error_event_not_an_answer() -> None:
    failure = UpstreamError("LLM proxy: down", code="llm_unavailable", retryable=True)
    llm = ScriptedLlm([TextChunk("half")], fail=failure)
    conversation, outbox, session = make(llm)
    await conversation.handle(UserMessage("go"))
    events = [i.event for i in await drain_until_done(outbox)]
    assert events[0] == AssistantText("half")
    assert events[1] == ErrorEvent("llm_unavailable", "LLM proxy: down", True)
    assert events[2] == TurnDone(TurnStatus.FAILED)
    assert session.messages == [ChatMessage("user", "go")]


async def test_close_cancels_the_running_turn() -> None:
    llm = ScriptedLlm([TextChunk("a")], hold=asyncio.Event())
    conversation, outbox, _ = make(llm)
    await conversation.handle(UserMessage("go"))
    await outbox.get()
    await conversation.close()
    assert llm.closed.is_set()
    assert not conversation.turn_running
    await conversation.close()  # idempotent


async def test_unsupported_events_get_a_clear_error() -> None:
    conversation, outbox, _ = make(ScriptedLlm([]))
    await conversation.handle(Unsupported("plan_approval"))
    event = (await outbox.get()).event
    assert isinstance(event, ErrorEvent)
    assert event.code == "unsupported"
    assert "plan_approval" in event.message


def test_sessions_belong_to_their_creator() -> None:
    registry = SessionRegistry("coder")
    session, created = registry.open("abc", "alice")
    assert created
    again, created_again = registry.open("abc", "alice")
    assert again is session
    assert not created_again
    with pytest.raises(PermissionDenied):
        registry.open("abc", "mallory")


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 129, "white space", "../etc"])
def test_malformed_session_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        SessionRegistry("coder").open(bad, "alice")
