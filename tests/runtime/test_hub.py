"""SessionHub: ownership and leases of live sessions."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from runtime.commands import ApprovalDecision, ToolResult, UserMessage
from runtime.context import ContextWindow
from runtime.conversation import Conversation
from runtime.errors import PermissionDenied, Unavailable
from runtime.events import AssistantText, ErrorEvent, Sequenced, ToolCallEvent, TurnDone
from runtime.hub import SessionHub
from runtime.llm import ChatMessage, TextChunk, ToolCallRequest
from runtime.rules import ApprovalRules
from runtime.settings import ConversationSettings
from runtime.state import PendingCall, Session
from runtime.store import Store
from runtime.stream import SEQ_RESERVE_BLOCK
from tests.runtime.test_conversation import ScriptedLlm, call, until


def hub(store: Store, replica: str, llm: Any = None) -> SessionHub:
    settings = ConversationSettings(model="m")
    return SessionHub(store, llm, settings, default_agent="coder", replica=replica, lease_ttl=60)


async def test_a_session_is_served_by_one_replica_and_only_its_owner(store: Store) -> None:
    first, second = hub(store, "r1"), hub(store, "r2")
    _, created = await first.open("s1", "alice")
    assert created
    with pytest.raises(PermissionDenied):
        await first.open("s1", "mallory")
    with pytest.raises(Unavailable):
        await second.open("s1", "alice")
    assert await store.leases.owner("s1") == "r1"
    await first.close()
    assert await store.leases.owner("s1") is None, "closing releases the lease"
    again, _ = await second.open("s1", "alice")
    assert again.session.owner == "alice"
    await second.close()


async def test_reopening_right_after_an_eviction_keeps_the_lease(store: Store) -> None:
    replica = hub(store, "r1")
    conversation, _ = await replica.open("s2", "alice")
    subscriber = conversation.subscribe()
    conversation.unsubscribe(subscriber)  # idle: evicted, its lease release scheduled
    reopened, created = await replica.open("s2", "alice")
    assert not created
    assert reopened is not conversation
    await asyncio.sleep(0)  # let any scheduled release run
    assert await store.leases.owner("s2") == "r1", "the late release did not drop the new lease"
    await replica.close()


async def test_a_seq_a_client_saw_is_never_given_to_another_event_after_a_crash(
    store: Store,
) -> None:
    """Two windows; the runtime dies mid-answer after window A saw one more
    delta than window B. Whoever reopens the session first, the interruption
    notice gets a seq neither window holds, and both resume recovered."""
    hold = asyncio.Event()
    first = hub(
        store, "r1", ScriptedLlm([TextChunk("a"), TextChunk("b"), TextChunk("c")], hold=hold)
    )
    conversation, _ = await first.open("crash", "alice")
    window_a = conversation.subscribe()
    await conversation.handle(UserMessage("go"))
    seen_a: list[Sequenced] = []
    while len([i for i in seen_a if isinstance(i.event, AssistantText)]) < 3:
        seen_a.append(await asyncio.wait_for(window_a.queue.get(), 5))
    deltas = [i.seq for i in seen_a if isinstance(i.event, AssistantText)]
    b_position = deltas[-2]  # B dropped before the last delta
    # The process dies: nothing more is written, its lease runs out.
    await conversation.abandon()
    await store.leases.release("crash", "r1")
    hold.set()

    second = hub(store, "r2", ScriptedLlm([TextChunk("again")]))
    reopened, _ = await second.open("crash", "alice")
    replay_b, recovered_b = await reopened.stream.events_after(b_position)
    replay_a, recovered_a = await reopened.stream.events_after(deltas[-1])
    assert recovered_a
    assert recovered_b
    notice_a = [i for i in replay_a if isinstance(i.event, ErrorEvent)]
    notice_b = [i for i in replay_b if isinstance(i.event, ErrorEvent)]
    assert notice_a[0].event.code == "turn_interrupted"
    assert notice_a == notice_b, "both windows get the same notice with the same seq"
    assert notice_a[0].seq > deltas[-1], "a seq window A saw is not reused"
    assert notice_a[0].seq > SEQ_RESERVE_BLOCK, "numbered past the reservation"
    assert not {i.seq for i in replay_b} & set(deltas), "no seq names two events"
    assert isinstance(replay_a[-1].event, TurnDone)
    # A position ahead of the log is refused and does not renumber the session.
    last = reopened.session.last_seq
    assert await reopened.stream.events_after(last + 10) == ([], False)
    assert reopened.session.last_seq == last
    window = reopened.subscribe()
    await reopened.handle(UserMessage("retry"))
    retried = await asyncio.wait_for(window.queue.get(), 5)
    assert retried.seq == last + 1
    await reopened.wait_idle()
    await second.close()
    await first.close()


async def test_a_turn_taken_over_while_it_waits_meets_the_owners_deny_rules(
    store: Store,
) -> None:
    """The turn began on another replica, which loaded the rules; the one that
    takes the session over reads them too before the turn's next calls."""
    mkdir = call("create_directory", path="docs")
    first = hub(store, "r1", ScriptedLlm([mkdir]))
    conversation, _ = await first.open("waits", "alice")
    outbox = conversation.subscribe().queue
    await conversation.handle(UserMessage("make a folder"))
    offered = await asyncio.wait_for(outbox.get(), 5)
    while not isinstance(offered.event, ToolCallEvent):
        offered = await asyncio.wait_for(outbox.get(), 5)
    await first.close()
    await store.rules.set("alice", ApprovalRules.from_json({"deny": ["read(.env)"]}))
    second = hub(store, "r2", ScriptedLlm([call("read_file", path=".env")], [TextChunk("ok")]))
    reopened, _ = await second.open("waits", "alice")
    await reopened.handle(ApprovalDecision(offered.event.call_id, "reject"))
    await reopened.wait_idle()
    denied = [m.content for m in reopened.session.messages if m.role == "tool"][-1]
    assert "denied by your approval rules: read(.env) matches .env" in denied
    await second.close()


async def test_sessions_left_by_their_last_stream_leave_nothing_in_the_process(
    store: Store,
) -> None:
    """Sessions that took turns with a tool round trip and were then left by
    their last stream are dropped whole: no Conversation, Session, history
    message or task of theirs outlives them (the soak's turn, many times)."""
    turns, sessions = 3, 8
    script = [[call("read_file", path="a.txt")], [TextChunk("It says hi.")]] * turns * sessions
    llm = ScriptedLlm(*script)
    replica = hub(store, "r1", llm)
    gc.collect()
    before = _counts()
    tasks_before = len(asyncio.all_tasks())
    left: list[weakref.ref[Conversation]] = []
    for number in range(sessions):
        conversation, _ = await replica.open(f"left-{number}", "alice")
        subscriber = conversation.subscribe()
        for _ in range(turns):
            await conversation.handle(UserMessage("read a.txt"))
            (offered,) = [e for e in await until(subscriber.queue, ToolCallEvent)][-1:]
            assert isinstance(offered, ToolCallEvent)
            await conversation.handle(ToolResult(offered.call_id, result={"content": "hi"}))
            await until(subscriber.queue, TurnDone)
        await conversation.wait_idle()
        conversation.unsubscribe(subscriber)
        left.append(weakref.ref(conversation))
        del conversation, subscriber, offered
    assert all(replica.live(f"left-{number}") is None for number in range(sessions))
    await replica.close()  # (waits for the leases' releases, scheduled at eviction)
    llm.seen.clear()  # the fake's record of the prompts it was sent
    gc.collect()
    assert [ref for ref in left if ref() is not None] == []
    assert _counts() == before
    assert len(asyncio.all_tasks()) == tasks_before


def _counts() -> dict[str, int]:
    """Live objects of the types a session holds, by type name."""
    kinds = (Conversation, Session, ChatMessage, ToolCallRequest, PendingCall, ContextWindow)
    counts = dict.fromkeys((kind.__name__ for kind in kinds), 0)
    for found in gc.get_objects():
        if isinstance(found, kinds):
            counts[type(found).__name__] += 1
    return counts
