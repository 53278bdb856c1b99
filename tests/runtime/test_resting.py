"""Resting sessions: histories out of memory between turns, read back at the next event."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from runtime import context as context_module
from runtime import resting as resting_module
from runtime.commands import Condense, FileChanged, Retry, ToolResult, UserMessage
from runtime.context import ContextWindow, Prompt
from runtime.conversation import Conversation
from runtime.events import ContextCondensed, ToolCallEvent, TurnDone
from runtime.hub import SessionHub
from runtime.llm import ChatMessage, Chunk, StreamEnd, TextChunk, ToolCallRequest
from runtime.records import MessageRecord, Step
from runtime.resting import Keeper, footprint
from runtime.settings import ConversationSettings
from runtime.state import Session, message_from_columns, message_from_record
from runtime.store import Store
from runtime.stream import Subscriber
from tests.runtime.test_conversation import ScriptedLlm, call, until
from tests.support import eventually


def resting_hub(store: Store, llm: Any, budget: int, after: float = 0.0) -> SessionHub:
    settings = ConversationSettings(model="m", resting_history_bytes=budget, resting_after_s=after)
    return SessionHub(store, llm, settings, default_agent="coder", replica="r1", lease_ttl=60)


def tool_turn_script(turns: int) -> list[list[Any]]:
    """Each turn: a read_file call, then an answer naming the turn."""
    script: list[list[Any]] = []
    for number in range(turns):
        script += [[call("read_file", path=f"f{number}.txt")], [TextChunk(f"answer {number}")]]
    return script


def normalized(prompts: list[list[ChatMessage]]) -> list[list[tuple[Any, ...]]]:
    """The prompts with each call id (the runtime makes them) as its order of appearance."""
    ids: dict[str, int] = {}
    return [
        [
            (
                m.role,
                m.content,
                tuple(
                    (ids.setdefault(c.call_id, len(ids)), c.name, c.arguments_json)
                    for c in m.tool_calls
                ),
                ids.setdefault(m.tool_call_id, len(ids)) if m.tool_call_id else None,
                m.name,
            )
            for m in prompt
        ]
        for prompt in prompts
    ]


async def tool_turn(conversation: Conversation, subscriber: Subscriber, text: str) -> None:
    await conversation.handle(UserMessage(text))
    offered = [e for e in await until(subscriber.queue, ToolCallEvent)][-1]
    assert isinstance(offered, ToolCallEvent)
    await conversation.handle(ToolResult(offered.call_id, result={"content": f"of {text}"}))
    await until(subscriber.queue, TurnDone)
    await conversation.wait_idle()


async def test_a_resting_sessions_next_turn_sees_the_history_it_would_have_seen(
    store: Store,
) -> None:
    """The same turns on two sessions, one put to rest between every two:
    the model is sent the same prompts, and the database holds the same
    history, numbered on without a gap."""
    turns = 4
    prompts: dict[str, list[list[ChatMessage]]] = {}
    for name, budget in (("awake", 1 << 30), ("rests", 0)):
        llm = ScriptedLlm(*tool_turn_script(turns))
        replica = resting_hub(store, llm, budget)
        conversation, _ = await replica.open(name, "alice")
        subscriber = conversation.subscribe()
        for number in range(turns):
            await tool_turn(conversation, subscriber, f"read file {number}")
            rested = replica.rest_idle()
            if name == "rests":
                assert rested == 1
                assert conversation.session.messages == []
                assert conversation.session.message_count == 4 * (number + 1)
            else:
                assert rested == 0
                assert len(conversation.session.messages) == 4 * (number + 1)
        prompts[name] = llm.seen
        conversation.unsubscribe(subscriber)
        await replica.close()
    assert len(prompts["rests"]) == 2 * turns
    assert normalized(prompts["rests"]) == normalized(prompts["awake"])
    awake, rests = await store.history("awake"), await store.history("rests")
    assert [m.position for m in rests] == list(range(4 * turns))
    assert [(m.role, m.content, m.agent) for m in rests] == [
        (m.role, m.content, m.agent) for m in awake
    ]


async def test_what_a_resting_session_reads_back_is_what_its_records_hold(
    store: Store,
) -> None:
    """The few columns a waking session reads make the same messages and
    agents as the full records: tool calls, tool answers, names."""
    step = Step("s1", 3, "coder", "idle", 3)
    calls = [{"call_id": "c1", "name": "read_file", "arguments_json": '{"path": "a.py"}'}]
    step.messages = [
        MessageRecord(0, "user", "read a.py", name="alice"),
        MessageRecord(1, "assistant", "", tool_calls=calls, agent="coder"),
        MessageRecord(2, "tool", '{"content": "x = 1"}', tool_call_id="c1", name="read_file"),
    ]
    await store.create_session("s1", "alice", "coder")
    await store.commit(step)

    rows = await store.history_columns("s1")
    records = await store.history("s1")

    assert [message_from_columns(*row[:5]) for row in rows] == [
        message_from_record(record) for record in records
    ]
    assert [row[5] for row in rows] == [record.agent for record in records]
    assert rows[1][2] is not None
    assert message_from_columns(*rows[1][:5]).tool_calls == (
        ToolCallRequest("c1", "read_file", '{"path": "a.py"}'),
    )


class CountingLlm(ScriptedLlm):
    """A :class:`ScriptedLlm` that counts what a prompt sends uncounted (7
    tokens a message) and answers the counts at the stream's end, as the
    proxy does; ``counts_seen``: each prompt's counts as sent."""

    def __init__(self, *scripts: Sequence[Chunk]) -> None:
        super().__init__(*scripts)
        self.counts_seen: list[list[int]] = []

    async def stream_chat(
        self, model: str, messages: Sequence[ChatMessage], *args: Any, **kwargs: Any
    ) -> AsyncIterator[Chunk]:
        if not isinstance(messages, Prompt):  # a summary's call: no window, no counts
            async for chunk in super().stream_chat(model, messages, *args, **kwargs):
                yield chunk
            return
        sent = list(messages.token_counts)
        self.counts_seen.append(sent)
        async for chunk in super().stream_chat(model, messages, *args, **kwargs):
            if isinstance(chunk, StreamEnd):
                chunk = replace(chunk, token_counts=tuple(7 for count in sent if count == 0))
            yield chunk


async def test_a_resting_sessions_history_is_not_counted_again(store: Store) -> None:
    """The counts a session's prompts send are the same whether it rested
    between turns or not: what the proxy counted once, it is not asked again."""
    turns = 3
    sent: dict[str, list[list[int]]] = {}
    for name, budget in (("awake", 1 << 30), ("rests", 0)):
        llm = CountingLlm(*tool_turn_script(turns))
        replica = resting_hub(store, llm, budget)
        conversation, _ = await replica.open(f"counted-{name}", "alice")
        subscriber = conversation.subscribe()
        for number in range(turns):
            await tool_turn(conversation, subscriber, f"read file {number}")
            assert replica.rest_idle() == (name == "rests")
        sent[name] = llm.counts_seen
        await replica.close()
    assert sent["rests"] == sent["awake"]
    assert sent["rests"][-1] == [7] * 10 + [0, 0], "only the call and its result are new"


async def test_a_session_with_a_turn_running_or_a_call_waiting_does_not_rest(
    store: Store,
) -> None:
    hold = asyncio.Event()
    llm = ScriptedLlm([TextChunk("streaming")], hold=hold)
    replica = resting_hub(store, llm, 0)
    streaming, _ = await replica.open("streaming", "alice")
    streaming_events = streaming.subscribe()
    await streaming.handle(UserMessage("go"))
    await asyncio.wait_for(streaming_events.queue.get(), 5)
    assert streaming.turn_running
    assert replica.rest_idle() == 0
    assert len(streaming.session.messages) == 1

    llm.hold = None
    llm.scripts = [[call("read_file", path="a.txt")], [TextChunk("done")]]
    waiting, _ = await replica.open("waiting", "alice")
    waiting_events = waiting.subscribe()
    await waiting.handle(UserMessage("read a.txt"))
    offered = [e for e in await until(waiting_events.queue, ToolCallEvent)][-1]
    assert isinstance(offered, ToolCallEvent)
    await waiting.wait_idle()
    assert waiting.session.pending
    hold.set()  # the streaming turn ends; the waiting one still waits
    await until(streaming_events.queue, TurnDone)
    await streaming.wait_idle()
    assert replica.rest_idle() == 1
    assert streaming.session.resting == 2
    assert waiting.session.resting is None
    await waiting.handle(ToolResult(offered.call_id, result={"content": "hi"}))
    await until(waiting_events.queue, TurnDone)
    await waiting.wait_idle()
    assert replica.rest_idle() == 1
    assert waiting.session.resting == 4
    await replica.close()


async def test_a_session_idle_for_less_than_resting_after_keeps_its_history(
    store: Store,
) -> None:
    """One taking a turn every few seconds would read its history back at
    each of them: only sessions idle for ``resting_after_s`` rest."""
    llm = ScriptedLlm(*tool_turn_script(2))
    replica = resting_hub(store, llm, 0, after=30.0)
    recent, _ = await replica.open("recent", "alice")
    idle, _ = await replica.open("idle", "alice")
    for number, conversation in enumerate((recent, idle)):
        await tool_turn(conversation, conversation.subscribe(), f"read file {number}")
    idle.history.active_at -= 31.0  # its last turn ended 31 s ago

    assert replica.rest_idle() == 1
    assert (recent.session.resting, idle.session.resting) == (None, 4)
    await replica.close()


async def test_the_sessions_idle_longest_rest_first_until_the_others_fit_the_bound(
    store: Store,
) -> None:
    llm = ScriptedLlm(*tool_turn_script(3))
    replica = resting_hub(store, llm, 0)
    conversations: list[Conversation] = []
    for number in range(3):
        conversation, _ = await replica.open(f"order-{number}", "alice")
        subscriber = conversation.subscribe()
        await tool_turn(conversation, subscriber, f"read file {number}")
        conversations.append(conversation)
    # Room for one of the three histories (they are the same size, give or take).
    one = footprint(conversations[2].session.messages)
    replica._settings = ConversationSettings(
        model="m", resting_history_bytes=one + 64, resting_after_s=0.0
    )
    assert replica.rest_idle() == 2
    assert [c.session.resting is not None for c in conversations] == [True, True, False]
    assert replica.rest_idle() == 0
    await replica.close()


async def test_events_arriving_together_at_a_resting_session_read_its_history_once(
    store: Store,
) -> None:
    llm = ScriptedLlm(*tool_turn_script(1), [TextChunk("again")])
    replica = resting_hub(store, llm, 0)
    conversation, _ = await replica.open("together", "alice")
    subscriber = conversation.subscribe()
    await tool_turn(conversation, subscriber, "read file 0")
    assert replica.rest_idle() == 1
    await asyncio.gather(
        conversation.handle(FileChanged("a.txt", 1.0)),
        conversation.handle(UserMessage("and now?")),
    )
    await until(subscriber.queue, TurnDone)
    await conversation.wait_idle()
    stored = await store.history("together")
    assert [m.content for m in conversation.session.messages] == [m.content for m in stored]
    roles = [m.role for m in stored]
    # The first turn, the notice of the changed file, the second turn: once each.
    assert roles == ["user", "assistant", "tool", "assistant", "user", "user", "assistant"]
    assert "a.txt" in stored[4].content
    await replica.close()


async def test_a_retry_of_a_resting_sessions_last_turn_reruns_it(store: Store) -> None:
    """A rerun asked over RPC (not a client event of the stream) reads the
    history back before it branches it."""
    llm = ScriptedLlm([TextChunk("first")], [TextChunk("second")])
    replica = resting_hub(store, llm, 0)
    conversation, _ = await replica.open("retry", "alice")
    subscriber = conversation.subscribe()
    await conversation.handle(UserMessage("hello"))
    await until(subscriber.queue, TurnDone)
    await conversation.wait_idle()
    assert replica.rest_idle() == 1
    await conversation.rerun(Retry(False), None, conversation.client)
    await until(subscriber.queue, TurnDone)
    await conversation.wait_idle()
    assert [m.content for m in conversation.session.messages] == ["hello", "second"]
    assert llm.seen[-1][-1].content == "hello"
    await replica.close()


async def test_a_rested_history_leaves_memory(store: Store) -> None:
    turns = 5
    llm = ScriptedLlm(*tool_turn_script(turns))
    replica = resting_hub(store, llm, 0)
    conversation, _ = await replica.open("memory", "alice")
    subscriber = conversation.subscribe()
    for number in range(turns):
        await tool_turn(conversation, subscriber, f"read file {number}")
    llm.seen.clear()  # the fake's record of the prompts it was sent
    gc.collect()
    before = _messages()
    assert replica.rest_idle() == 1
    gc.collect()
    assert before - _messages() == 4 * turns
    await replica.close()


async def test_a_started_hub_puts_idle_histories_to_rest_on_its_own(store: Store) -> None:
    llm = ScriptedLlm(*tool_turn_script(1))
    replica = resting_hub(store, llm, 0)
    replica.start()
    conversation, _ = await replica.open("swept", "alice")
    subscriber = conversation.subscribe()
    await tool_turn(conversation, subscriber, "read file 0")

    await eventually(lambda: conversation.session.resting is not None)
    assert conversation.session.resting == 4
    await replica.close()


async def test_a_histories_size_is_kept_as_it_grows_and_counted_again_when_it_changes(
    store: Store,
) -> None:
    session = Session("sized", "alice", "coder")
    keeper = Keeper(session, store)
    history = session.messages

    assert keeper.footprint == 0
    history += [ChatMessage("user", "hello"), ChatMessage("assistant", "hi there")]
    assert keeper.footprint == footprint(history)
    history.append(ChatMessage("user", "x" * 500))
    assert keeper.footprint == footprint(history)
    history[-1] = ChatMessage("user", "short")  # the last message replaced (an edit)
    assert keeper.footprint == footprint(history)
    del history[1:]  # shorter (an undo)
    assert keeper.footprint == footprint(history)
    keeper.forget()  # rested
    assert keeper.footprint == 0
    assert session.resting == 1


async def test_a_dozing_session_wakes_from_memory_to_the_same_prompts_and_counts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sessions take the same turns: one stays awake, one dozes
    between every two (its messages' objects go, their wire forms stay),
    one dozes and then rests past a budget of 0. The model is sent the same
    prompts with the same counts; only the one that rested reads its
    history back from the database."""
    turns = 3
    reads: list[str] = []
    read_back = store.history_columns

    async def counted(session_id: str) -> Any:
        reads.append(session_id)
        return await read_back(session_id)

    monkeypatch.setattr(store, "history_columns", counted)
    prompts: dict[str, list[list[ChatMessage]]] = {}
    counts: dict[str, list[list[int]]] = {}
    for name, budget in (("awake", 1 << 30), ("dozes", 1 << 30), ("rests", 0)):
        llm = CountingLlm(*tool_turn_script(turns))
        replica = resting_hub(store, llm, budget)
        conversation, _ = await replica.open(name, "alice")
        subscriber = conversation.subscribe()
        for number in range(turns):
            await tool_turn(conversation, subscriber, f"read file {number}")
            if name == "awake":
                continue
            replica.rest_idle(doze_after=0)
            history = conversation.history
            assert conversation.session.messages == []
            assert conversation.session.message_count == 4 * (number + 1)
            assert history.dozing is (name == "dozes")
            assert history.rested is (name == "rests")
            if name == "dozes":
                live = [message_from_record(record) for record in await store.history(name)]
                assert 0 < history.footprint < footprint(live) / 2
        prompts[name], counts[name] = llm.seen, llm.counts_seen
        conversation.unsubscribe(subscriber)
        await replica.close()
    assert normalized(prompts["dozes"]) == normalized(prompts["awake"])
    assert normalized(prompts["rests"]) == normalized(prompts["awake"])
    assert counts["dozes"] == counts["awake"] == counts["rests"]
    assert reads == ["rests"] * (turns - 1)


async def test_a_dozing_history_is_encoded_neither_to_doze_nor_to_wake(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doze keeps the wire forms the context window made for the last
    prompt (encoding only the reply that came after it), and the wake hands
    them back with the decoded messages: no message of that prompt is
    encoded again, to doze or for the next one."""
    encoded: list[ChatMessage] = []
    for module in (context_module, resting_module):
        real = module.encode_message

        def counting(message: ChatMessage, real: Any = real) -> bytes:
            encoded.append(message)
            return real(message)

        monkeypatch.setattr(module, "encode_message", counting)
    llm = CountingLlm(*tool_turn_script(3))
    replica = resting_hub(store, llm, 1 << 30)
    conversation, _ = await replica.open("s", "alice")
    subscriber = conversation.subscribe()
    for number in range(2):
        await tool_turn(conversation, subscriber, f"read file {number}")
    before = list(conversation.session.messages)
    encoded.clear()

    replica.rest_idle(doze_after=0)
    assert conversation.history.dozing
    assert encoded == [before[-1]]  # the reply: no prompt held it yet
    await tool_turn(conversation, subscriber, "read file 2")

    assert conversation.session.messages[: len(before)] == before
    assert not [m for m in encoded if m in before[:-1]]
    assert ChatMessage("user", "read file 2") in encoded
    # What the window holds is what it would have made itself: the history
    # up to the last prompt (the reply after it comes in at the next).
    window, messages = conversation.context.window, conversation.session.messages
    assert window._history == messages[:-1]
    assert bytes(window._wire) == b"".join(map(resting_module.encode_message, messages[:-1]))
    conversation.unsubscribe(subscriber)
    await replica.close()


async def test_a_condensed_history_dozes_and_wakes_to_the_same_prompts_and_counts(
    store: Store,
) -> None:
    """With a summary the context window holds a view of the history, not
    the history: a doze then encodes the history itself and the next prompt
    the view; what the model is sent is the same as awake, whether the
    session dozes before the summary's first prompt or after it."""
    script: list[list[Any]] = [[TextChunk(f"answer {n}")] for n in range(6)]
    script += [[TextChunk("The user asked, first: turn 0")]]
    script += [[TextChunk(f"answer {n}")] for n in (6, 7)]
    prompts: dict[str, list[list[ChatMessage]]] = {}
    counts: dict[str, list[list[int]]] = {}
    for name in ("awake", "dozes"):
        llm = CountingLlm(*script)
        replica = resting_hub(store, llm, 1 << 30)
        conversation, _ = await replica.open(f"condensed-{name}", "alice")
        subscriber = conversation.subscribe()
        for number in range(6):
            await conversation.handle(UserMessage(f"turn {number}"))
            await until(subscriber.queue, TurnDone)
            await conversation.wait_idle()
        await conversation.handle(Condense())
        await until(subscriber.queue, ContextCondensed)
        await conversation.wait_idle()
        for number in (6, 7):  # dozing before the summary's first prompt, then after
            if name == "dozes":
                replica.rest_idle(doze_after=0)
                assert conversation.history.dozing
            await conversation.handle(UserMessage(f"turn {number}"))
            await until(subscriber.queue, TurnDone)
            await conversation.wait_idle()
        prompts[name], counts[name] = llm.seen, llm.counts_seen
        conversation.unsubscribe(subscriber)
        await replica.close()
    assert "The user asked, first: turn 0" in prompts["dozes"][-1][0].content
    assert normalized(prompts["dozes"]) == normalized(prompts["awake"])
    assert counts["dozes"] == counts["awake"]


def _messages() -> int:
    return sum(isinstance(found, ChatMessage) for found in gc.get_objects())


@pytest.mark.parametrize(("words", "result_chars"), [(3, 20), (8, 200), (100, 2000)])
def test_the_footprint_estimate_is_close_to_what_a_history_holds(
    words: int, result_chars: int
) -> None:
    """What :func:`footprint` says a history costs, against tracemalloc's
    count of a history of tool turns and its prompt kept with its counts."""
    gc.collect()
    tracemalloc.start()
    try:
        history: list[ChatMessage] = []
        for turn in range(100):
            call_id = f"call-{turn:06d}-abcdef"
            arguments = json.dumps({"path": f"src/file{turn}.py"})
            history += [
                ChatMessage("user", " ".join(["read"] * words) + f" {turn}"),
                ChatMessage("assistant", "", (ToolCallRequest(call_id, "read_file", arguments),)),
                ChatMessage("tool", "x" * result_chars, (), call_id, "read_file"),
                ChatMessage("assistant", " ".join(["word"] * words)),
            ]
        window = ContextWindow()
        prompt = window.prompt("system", history, "m", 0)
        window.learn(prompt, [1234] * len(prompt._uncounted))
        del prompt
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert 0.75 <= footprint(history) / held <= 1.33


@pytest.mark.parametrize(("words", "result_chars"), [(3, 20), (8, 200), (100, 2000)])
def test_a_dozing_history_holds_its_text_and_a_few_bytes_a_message(
    words: int, result_chars: int
) -> None:
    """What a dozing history's footprint says it costs (its wire forms and
    :data:`DOZING_MESSAGE_BYTES` a message), against tracemalloc's count of
    what stays of a history of tool turns and its counted prompt after it
    dozed."""
    gc.collect()
    tracemalloc.start()
    try:
        session = Session("dozing", "alice", "coder")
        keeper = Keeper(session, None)  # type: ignore[arg-type]  # dozing reads nothing
        for turn in range(100):
            call_id = f"call-{turn:06d}-abcdef"
            arguments = json.dumps({"path": f"src/file{turn}.py"})
            session.messages += [
                ChatMessage("user", " ".join(["read"] * words) + f" {turn}"),
                ChatMessage("assistant", "", (ToolCallRequest(call_id, "read_file", arguments),)),
                ChatMessage("tool", "x" * result_chars, (), call_id, "read_file"),
                ChatMessage("assistant", " ".join(["word"] * words)),
            ]
            session.message_agents += ["coder"] * 4
        live = footprint(session.messages)
        window = ContextWindow()
        prompt = window.prompt("system", session.messages, "m", 0)
        window.learn(prompt, [1234] * len(prompt._uncounted))
        del prompt
        keeper.doze()
        window.rest()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert session.messages == []
    assert 0.75 <= keeper.footprint / held <= 1.33
    assert keeper.footprint < live / 2
