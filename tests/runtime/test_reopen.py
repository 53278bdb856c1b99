"""Every state of a tool call across a reopen of its session from the database.

A session is loaded again from the store in two ways: its last stream
detached while it waited, so the hub evicted it and the next stream loads it;
or its runtime was killed and a new runtime on the same database loads it.
Either way each call the turn still waits on is offered again exactly once,
with what it waits for and the arguments it will run with, and answering it
finishes the turn; every other call stays closed. In every state a late
result is refused as a duplicate, the history holds each tool call with
exactly one result, and the session takes a new message.

A change to the workspace (and an undo) waits as a RUNNING call the runtime
runs through calls of its own: a read_file, then the change. Those are
offered again (with the diff a human approves), never the RUNNING call, and
the change's checkpoint is written once, when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.database import create_engine
from runtime.commands import (
    ApprovalDecision,
    CancelTurn,
    ClientEvent,
    PlanApproval,
    ToolResult,
    Undo,
    UserMessage,
)
from runtime.conversation import Conversation
from runtime.events import (
    AssistantText,
    ErrorEvent,
    Event,
    PlanStep,
    PlanUpdate,
    Sequenced,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.hub import SessionHub
from runtime.llm import ChatMessage
from runtime.records import AWAITING_DECISION, PENDING_STATUSES, CallRecord, MessageRecord, Step
from runtime.settings import ConversationSettings
from runtime.state import CallState, message_from_record
from runtime.store import Store, migrate
from runtime.stream import Subscriber
from tests.conftest import migrated_postgres
from tests.runtime.test_conversation import ScriptedLlm, call, read_result
from tests.support import eventually

WRITE = {"path": "notes.md", "content": "draft"}
EDITED = {"path": "notes.md", "content": "final"}
BEFORE = "old notes\n"
"""What notes.md holds before a change that finds it (None in a walk: it is absent)."""
COMMAND = {"command": "make test"}
EDITED_COMMAND = {"command": "make test-fast"}
READ = {"path": "main.py"}
STEPS = [{"id": "1", "description": "read main.py", "status": "pending"}]
RESULT = {"ok": True}

WAITING = [
    "awaiting_approval",
    "approved",
    "edited",
    "awaiting_result",
    "awaiting_plan_approval",
    "switch_awaiting_approval",
    # A change to the workspace: the model's write_file runs (RUNNING, never
    # offered) as a read_file of notes.md, then the write itself.
    "change_reading",
    "change_awaiting_approval",
    "change_approved",
    "change_edited",
    # An undo of a turn's change: a read_file, then the restore.
    "undo_awaiting_approval",
]
CLOSED = [
    "completed",
    "failed",
    "rejected",
    "cancelled",
    "interrupted",
    "plan_approved",
    "change_completed",
    "change_rejected",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated runtime database of each kind: a SQLite file, a fresh PostgreSQL one."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
            await migrate(url)
        else:
            url = await stack.enter_async_context(migrated_postgres("test_reopen"))
        yield url


class Runtime:
    """One runtime process's share of the test: its engine, store, model and hub."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.store = Store(self.engine)
        self.llm = ScriptedLlm()
        settings = ConversationSettings(model="m", detach_grace=0)
        # The replica name is HOSTNAME:PORT, so a restarted runtime has the same.
        self.hub = SessionHub(
            self.store,
            self.llm,  # type: ignore[arg-type]
            settings,
            default_agent="coder",
            replica="host:50051",
        )


@dataclass
class Client:
    """One stream attached to a conversation: what it read, and the last seq it saw."""

    conversation: Conversation
    subscriber: Subscriber
    last_seq: int = 0
    seen: list[Event] = field(default_factory=list)

    async def until(self, kind: type) -> list[Event]:
        events = []
        while True:
            item = await asyncio.wait_for(self.subscriber.queue.get(), 5)
            assert isinstance(item, Sequenced)
            event = item.event
            self.last_seq = max(self.last_seq, item.seq)
            events.append(event)
            self.seen.append(event)
            if isinstance(event, kind):
                return events

    async def send(self, event: ClientEvent) -> None:
        await self.conversation.handle(event)


@dataclass(frozen=True)
class Walked:
    """A call brought to one state, and what a reopened session owes it."""

    call_id: str
    """The call offered to the IDE (for a change or an undo, the runtime's sub-call)."""
    reoffer: Event | None
    """What is offered again (with seq 0); None when the call is closed."""
    answers: list[ClientEvent] = field(default_factory=list)
    tool_message: dict[str, Any] | None = None
    """The model's call's result in history once answered."""
    parent: str = ""
    """The call a sub-call serves: the model's call (RUNNING while it waits), or an undo's."""
    checkpoints: list[tuple[str, str | None, str | None, bool]] = field(default_factory=list)
    """(path, before, after, undone) of each checkpoint row once the turn is over."""
    said: str = ""
    """What the turn's last assistant message says (an undo's summary)."""

    @property
    def model_call_id(self) -> str:
        """The model's call whose result history holds; none for an undo."""
        if self.parent.startswith("undo-"):
            return ""
        return self.parent or self.call_id


async def walk(state: str, client: Client, llm: ScriptedLlm) -> Walked:
    """Start a turn and bring its one tool call to ``state``."""
    if state.startswith(("change_", "undo_")) or state == "cancelled":
        return await walk_change(state, client, llm)
    if state in ("awaiting_plan_approval", "plan_approved"):
        llm.scripts = [[call("update_plan", plan_id="p1", steps=STEPS, requires_approval=True)]]
    elif state in ("awaiting_result", "completed", "failed", "interrupted"):
        llm.scripts = [[call("read_file", **READ)]]
    elif state == "switch_awaiting_approval":
        # Narrowing happens at once; widening back waits for a human.
        llm.scripts = [
            [call("switch_mode", agent="ask", reason="only questions")],
            [call("switch_mode", agent="coder", reason="now write")],
        ]
    else:
        llm.scripts = [[call("execute_command", **COMMAND)]]
    await client.send(UserMessage("go"))
    if state in ("awaiting_plan_approval", "plan_approved"):
        (plan,) = [e for e in await client.until(PlanUpdate) if isinstance(e, PlanUpdate)]
        assert plan.requires_approval
        (call_id,) = client.conversation.session.pending
        if state == "plan_approved":
            await client.send(PlanApproval("p1", "approve"))
            await client.until(TurnDone)
            return Walked(call_id, None)
        steps = tuple(PlanStep(s["id"], s["description"], s["status"]) for s in STEPS)
        return Walked(
            call_id,
            PlanUpdate("p1", steps, "", True),
            [PlanApproval("p1", "approve")],
            {"result": "the user approved the plan; execute it"},
        )
    offered = (await client.until(ToolCallEvent))[-1]
    assert isinstance(offered, ToolCallEvent)
    call_id = offered.call_id
    match state:
        case "switch_awaiting_approval":
            assert (offered.tool_name, offered.requires_approval) == ("switch_mode", True)
            return Walked(
                call_id,
                offered,
                [ApprovalDecision(call_id, "approve")],
                {"result": "switched to coder; continue the request as coder"},
            )
        case "awaiting_approval":
            assert offered.requires_approval
            return Walked(
                call_id,
                offered,
                [ApprovalDecision(call_id, "approve"), ToolResult(call_id, RESULT)],
                {"result": RESULT},
            )
        case "approved" | "edited":
            edit = state == "edited"
            await client.send(
                ApprovalDecision(call_id, "edit", EDITED_COMMAND)
                if edit
                else ApprovalDecision(call_id, "approve")
            )
            execute = (await client.until(ToolCallEvent))[-1]
            assert isinstance(execute, ToolCallEvent)
            assert not execute.requires_approval
            arguments = EDITED_COMMAND if edit else COMMAND
            assert execute.arguments == arguments
            message: dict[str, Any] = {"result": RESULT}
            if edit:
                message["edited_arguments"] = EDITED_COMMAND
            return Walked(
                call_id,
                ToolCallEvent(call_id, "execute_command", arguments, False, offered.reason),
                [ToolResult(call_id, RESULT)],
                message,
            )
        case "awaiting_result":
            assert not offered.requires_approval
            return Walked(call_id, offered, [ToolResult(call_id, RESULT)], {"result": RESULT})
        case "completed":
            await client.send(ToolResult(call_id, RESULT))
        case "failed":
            await client.send(ToolResult(call_id, error="no such file"))
        case "rejected":
            await client.send(ApprovalDecision(call_id, "reject"))
        case "interrupted":
            # The next model call never ends: the runtime goes while it streams.
            llm.hold = asyncio.Event()
            await client.send(ToolResult(call_id, RESULT))
            await client.until(AssistantText)
            return Walked(call_id, None)
    await client.until(TurnDone)
    return Walked(call_id, None)


async def walk_change(state: str, client: Client, llm: ScriptedLlm) -> Walked:
    """Start a turn whose model writes notes.md and bring that change to ``state``."""
    llm.scripts = [[call("write_file", **WRITE)]]
    await client.send(UserMessage("go"))
    read = (await client.until(ToolCallEvent))[-1]
    assert isinstance(read, ToolCallEvent)
    parent = read.metadata["parent_call_id"]
    assert read == ToolCallEvent(
        f"{parent}.1",
        "read_file",
        {"path": "notes.md"},
        False,
        "",
        {"parent_call_id": parent, "parent_tool": "write_file"},
    )
    assert client.conversation.session.pending[parent].state is CallState.RUNNING
    change_id = f"{parent}.2"
    if state == "change_reading":
        return Walked(
            read.call_id,
            read,
            [
                read_result(read.call_id, "notes.md", None),
                ApprovalDecision(change_id, "approve"),
                ToolResult(change_id, RESULT),
            ],
            {"result": RESULT},
            parent,
            [("notes.md", None, "draft", False)],
        )
    # An undo restores notes.md as the turn found it: absent.
    before = None if state.startswith("undo_") else BEFORE
    await client.send(read_result(read.call_id, "notes.md", before))
    offered = (await client.until(ToolCallEvent))[-1]
    assert isinstance(offered, ToolCallEvent)
    assert (offered.call_id, offered.arguments, offered.requires_approval) == (
        change_id,
        WRITE,
        True,
    )
    assert "+draft" in offered.metadata["diff"]
    written = [("notes.md", before, "draft", False)]
    match state:
        case "change_awaiting_approval":
            answers = [ApprovalDecision(change_id, "approve"), ToolResult(change_id, RESULT)]
            return Walked(change_id, offered, answers, {"result": RESULT}, parent, written)
        case "change_approved" | "change_edited":
            edit = state == "change_edited"
            await client.send(
                ApprovalDecision(change_id, "edit", EDITED)
                if edit
                else ApprovalDecision(change_id, "approve")
            )
            execute = (await client.until(ToolCallEvent))[-1]
            assert isinstance(execute, ToolCallEvent)
            arguments = EDITED if edit else WRITE
            assert (execute.arguments, execute.requires_approval) == (arguments, False)
            assert execute.metadata["parent_call_id"] == parent
            assert ("+final" if edit else "+draft") in execute.metadata["diff"]
            message: dict[str, Any] = {"result": RESULT}
            if edit:
                message["edited_arguments"] = EDITED
                written = [("notes.md", BEFORE, "final", False)]
            return Walked(
                change_id,
                ToolCallEvent(
                    change_id, "write_file", arguments, False, offered.reason, execute.metadata
                ),
                [ToolResult(change_id, RESULT)],
                message,
                parent,
                written,
            )
        case "change_completed":
            await client.send(ApprovalDecision(change_id, "approve"))
            await client.send(ToolResult(change_id, RESULT))
            await client.until(TurnDone)
            return Walked(change_id, None, parent=parent, checkpoints=written)
        case "change_rejected":
            await client.send(ApprovalDecision(change_id, "reject"))
            await client.until(TurnDone)
            return Walked(change_id, None, parent=parent)
        case "cancelled":
            await client.send(CancelTurn())
            await client.until(TurnDone)
            return Walked(change_id, None, parent=parent)
    assert state == "undo_awaiting_approval"
    await client.send(ApprovalDecision(change_id, "approve"))
    await client.send(ToolResult(change_id, RESULT))
    await client.until(TurnDone)
    await client.send(Undo())
    read = (await client.until(ToolCallEvent))[-1]
    assert isinstance(read, ToolCallEvent)
    undo = read.metadata["parent_call_id"]
    assert (read.call_id, read.tool_name, read.metadata["parent_tool"]) == (
        f"{undo}.1",
        "read_file",
        "undo",
    )
    await client.send(read_result(read.call_id, "notes.md", "draft"))
    restore = (await client.until(ToolCallEvent))[-1]
    assert isinstance(restore, ToolCallEvent)
    assert (restore.call_id, restore.tool_name, restore.arguments) == (
        f"{undo}.2",
        "delete_file",
        {"path": "notes.md"},
    )
    assert restore.requires_approval
    assert restore.metadata["diff"].startswith("--- a/notes.md\n+++ /dev/null\n")
    return Walked(
        restore.call_id,
        restore,
        [ApprovalDecision(restore.call_id, "approve"), ToolResult(restore.call_id, RESULT)],
        None,
        undo,
        [("notes.md", None, "draft", True)],
        "Undo: Restored: notes.md (deleted).",
    )


def offers(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, ToolCallEvent | PlanUpdate)]


def assert_one_result_per_call(messages: list[ChatMessage]) -> None:
    calls = [c.call_id for m in messages for c in m.tool_calls]
    answers = [m.tool_call_id for m in messages if m.role == "tool"]
    assert sorted(calls) == sorted(answers)
    assert len(set(answers)) == len(answers)


@pytest.mark.parametrize("how", ["evicted", "killed"])
@pytest.mark.parametrize("state", WAITING + CLOSED)
async def test_each_call_state_survives_a_reopen(database_url: str, state: str, how: str) -> None:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    first = Runtime(database_url)
    second = first if how == "evicted" else Runtime(database_url)
    try:
        conversation, _ = await first.hub.open(session_id, "alice")
        client = Client(conversation, conversation.subscribe())
        walked = await walk(state, client, first.llm)

        if how == "evicted":
            # The IDE's connection drops: the last stream detaches.
            conversation.unsubscribe(client.subscriber)
            await eventually(lambda: first.hub.live(session_id) is None)
            first.llm.hold = None
        else:
            # SIGKILL: the process stops where it is, writing nothing more.
            await conversation.abandon()

        reopened, created = await second.hub.open(session_id, "alice")
        assert not created
        assert reopened is not conversation, "loaded again from the database"
        resumed, replay, recovered = await reopened.attach(client.last_seq)
        assert recovered
        fresh, offered_fresh, _ = await reopened.attach(None)
        reopened.unsubscribe(fresh)
        again = Client(reopened, resumed)

        expected = [] if walked.reoffer is None else [walked.reoffer]
        assert offers([i.event for i in replay]) == expected, "resuming IDE: offered once"
        assert [i.event for i in offered_fresh] == expected, "new IDE window: offered once"
        assert all(i.seq == 0 for i in replay if i.event in expected)
        waiting = await second.store.pending_calls(session_id)
        waits_on = [walked.call_id, walked.parent] if walked.parent else [walked.call_id]
        assert sorted(c.call_id for c in waiting) == (sorted(waits_on) if walked.reoffer else [])
        if walked.parent and walked.reoffer:
            (parent,) = [c for c in waiting if c.call_id == walked.parent]
            assert parent.status == "running", "the runtime runs it: never offered"
        human = isinstance(walked.reoffer, ToolCallEvent | PlanUpdate) and (
            walked.reoffer.requires_approval
        )
        assert [c.call_id for c in waiting if c.status in AWAITING_DECISION] == (
            [walked.call_id] if human else []
        ), "what ListPendingApprovals lists: only calls a human must decide"
        if state == "interrupted" and how == "killed":
            (cut,) = [i.event for i in replay if isinstance(i.event, ErrorEvent)]
            assert cut.code == "turn_interrupted"

        if walked.reoffer is not None:
            # A new message waits until the call is answered.
            await again.send(UserMessage("meanwhile"))
            (busy,) = await again.until(ErrorEvent)
            assert isinstance(busy, ErrorEvent)
            assert busy.code == "tool_calls_pending"
            for answer in walked.answers:
                await again.send(answer)
            done = (await again.until(TurnDone))[-1]
            assert isinstance(done, TurnDone)
            assert done.status is TurnStatus.COMPLETED
            assert not any(isinstance(e, ErrorEvent) for e in again.seen[1:])
            if walked.model_call_id:
                model_call = walked.model_call_id
                results = [m for m in reopened.session.messages if m.tool_call_id == model_call]
                assert [json.loads(m.content) for m in results] == [walked.tool_message]
                assert second.llm.seen[-1][-1].tool_call_id == model_call, "the model saw it"
            else:
                assert reopened.session.messages[-1] == ChatMessage("assistant", walked.said)
        rows = await second.store.checkpoints.of_session(session_id)
        assert [(c.path, c.before, c.after, c.undone) for c in rows] == walked.checkpoints

        # Closed now in every state: a late result is a duplicate.
        for late_id in {walked.call_id, walked.parent} - {""}:
            await again.send(ToolResult(late_id, {"late": True}))
            (late,) = await again.until(ErrorEvent)
            assert isinstance(late, ErrorEvent)
            assert late.code == "duplicate_tool_result"
        assert_one_result_per_call(reopened.session.messages)
        stored = await second.store.history(session_id)
        assert_one_result_per_call([message_from_record(m) for m in stored])
        assert await second.store.pending_calls(session_id) == []

        await again.send(UserMessage("next"))
        done = (await again.until(TurnDone))[-1]
        assert isinstance(done, TurnDone)
        assert done.status is TurnStatus.COMPLETED
    finally:
        await second.hub.close()
        await second.engine.dispose()
        if second is not first:
            await first.engine.dispose()


def test_every_status_of_a_waiting_call_has_its_state() -> None:
    assert {CallState.of_status(status) for status in PENDING_STATUSES} == set(CallState)


async def test_a_call_the_old_runtime_lost_is_not_offered_in_a_turn_long_over(
    database_url: str,
) -> None:
    """A database written before the fix: a write was approved, the session was
    reloaded without it, and the user went on to a new turn that ended. The
    approved write belongs to a turn that is over: it is not offered again."""
    runtime = Runtime(database_url)
    store = runtime.store
    try:
        await store.create_session("legacy", "alice", "coder")
        step = Step(session_id="legacy", last_seq=3, agent="coder", state="idle", message_count=4)
        step.messages = [
            MessageRecord(0, "user", "write notes"),
            MessageRecord(
                1,
                "assistant",
                "",
                tool_calls=[{"call_id": "c1", "name": "write_file", "arguments_json": "{}"}],
            ),
            MessageRecord(2, "user", "never mind"),
            MessageRecord(3, "assistant", "done"),
        ]
        step.calls = [CallRecord("c1", "write_file", "coder", "approved", WRITE, offered_seq=2)]
        await store.commit(step)

        conversation, _ = await runtime.hub.open("legacy", "alice")
        subscriber, items, _ = await conversation.attach(None)
        assert items == [], "nothing offered"
        client = Client(conversation, subscriber)
        await client.send(ToolResult("c1", RESULT))
        (late,) = await client.until(ErrorEvent)
        assert isinstance(late, ErrorEvent)
        assert late.code == "duplicate_tool_result"
        await client.send(UserMessage("next"))
        done = (await client.until(TurnDone))[-1]
        assert isinstance(done, TurnDone)
        assert done.status is TurnStatus.COMPLETED
    finally:
        await runtime.hub.close()
        await runtime.engine.dispose()
