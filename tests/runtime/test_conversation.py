"""The turn loop without a network: a scripted LLM client drives Conversation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from runtime.commands import (
    ApprovalDecision,
    CancelTurn,
    ClientOptions,
    Environment,
    FileChanged,
    PlanApproval,
    SwitchAgent,
    ToolResult,
    UserMessage,
)
from runtime.conversation import Conversation
from runtime.errors import InvalidArgument, UpstreamError
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ErrorEvent,
    Event,
    PlanProgress,
    PlanUpdate,
    Sequenced,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
    Usage,
)
from runtime.hub import check_session_id
from runtime.llm import ChatMessage, Chunk, StreamEnd, TextChunk, ToolCallChunk, ToolSpec
from runtime.prompts import NOTICE_MARK
from runtime.rules import ApprovalRules
from runtime.settings import ConversationSettings
from runtime.state import Session
from runtime.store import Store
from runtime.turn import MAX_SWITCHES_PER_TURN
from tests.runtime.conftest import LIVE


def call(name: str, index: int = 0, **arguments: Any) -> ToolCallChunk:
    return ToolCallChunk(index, f"model-id-{index}", name, json.dumps(arguments))


class ScriptedLlm:
    """Answers each model call with the next script; blocks or fails on request."""

    def __init__(
        self,
        *scripts: Sequence[Chunk],
        hold: asyncio.Event | None = None,
        fail: UpstreamError | None = None,
    ) -> None:
        self.scripts = list(scripts)
        self.hold = hold
        self.fail = fail
        self.seen: list[list[ChatMessage]] = []
        self.tools_seen: list[list[str]] = []
        self.models_seen: list[str] = []
        self.closed = asyncio.Event()
        self.window = 0

    async def context_window(self, model: str) -> int:
        return self.window

    async def stream_chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        **kwargs: Any,
    ) -> AsyncIterator[Chunk]:
        self.seen.append(list(messages))
        self.models_seen.append(model)
        self.tools_seen.append([t.name for t in tools])
        script = self.scripts.pop(0) if self.scripts else [TextChunk("done")]
        try:
            for chunk in script:
                yield chunk
            if self.hold is not None:
                await self.hold.wait()
            if self.fail is not None:
                raise self.fail
            yield StreamEnd("stop", Usage(1, 1), "scripted")
        finally:
            self.closed.set()


async def until(outbox: asyncio.Queue[Sequenced], kind: type) -> list[Event]:
    """Events up to and including the first of ``kind``."""
    events = []
    while True:
        event = (await asyncio.wait_for(outbox.get(), 5)).event
        events.append(event)
        if isinstance(event, kind):
            return events


Made = tuple[Conversation, "asyncio.Queue[Any]", Session]


async def make(store: Store, llm: ScriptedLlm, agent: str = "coder", **settings: Any) -> Made:
    session_id = f"s-{uuid.uuid4().hex[:8]}"
    await store.create_session(session_id, "alice", agent)
    session = Session.from_store(await store.load(session_id))
    conversation = Conversation(
        session,
        llm,  # type: ignore[arg-type]
        store,
        ConversationSettings(model="m", **settings),
    )
    LIVE.append(conversation)
    return conversation, conversation.subscribe().queue, session


def read_result(call_id: str, path: str, content: str | None) -> ToolResult:
    """The CodeLab IDE's answer to a ``read_file`` of ``path``: its text, or not found."""
    if content is None:
        return ToolResult(call_id, error=f"File not found: {path}")
    return ToolResult(call_id, result={"content": content, "lines_read": content.count("\n")})


async def read_first(
    conversation: Conversation,
    outbox: asyncio.Queue[Any],
    path: str,
    content: str | None = None,
) -> ToolCallEvent:
    """Answer the ``read_file`` the runtime offers before a change of ``path`` with
    ``content`` (None: the file is absent); returns the call offered next."""
    read = (await until(outbox, ToolCallEvent))[-1]
    assert isinstance(read, ToolCallEvent)
    assert (read.tool_name, read.arguments, read.requires_approval) == (
        "read_file",
        {"path": path},
        False,
    )
    assert read.metadata["parent_call_id"] == read.call_id.rsplit(".", 1)[0]
    await conversation.handle(read_result(read.call_id, path, content))
    change = (await until(outbox, ToolCallEvent))[-1]
    assert isinstance(change, ToolCallEvent)
    return change


def tool_messages(session: Session) -> list[dict[str, Any]]:
    return [json.loads(m.content) for m in session.messages if m.role == "tool"]


def assert_history_complete(session: Session) -> None:
    """Every tool call in history has exactly one tool message."""
    calls = [c.call_id for m in session.messages for c in m.tool_calls]
    answers = [m.tool_call_id for m in session.messages if m.role == "tool"]
    assert sorted(calls) == sorted(answers)


async def test_streams_text_then_done_and_stores_the_answer(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("Hello "), TextChunk("world")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("hi"))
    events = await until(outbox, TurnDone)
    assert events == [
        AssistantText("Hello "),
        AssistantText("world"),
        TurnDone(TurnStatus.COMPLETED, Usage(1, 1)),
    ]
    assert session.messages == [ChatMessage("user", "hi"), ChatMessage("assistant", "Hello world")]
    assert session.last_seq == 3
    await conversation.handle(UserMessage("again"))
    await until(outbox, TurnDone)
    assert [m.content for m in llm.seen[1][1:]] == ["hi", "Hello world", "again"]
    assert llm.seen[1][0].role == "system"


async def test_the_model_sees_only_the_agents_tools(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("ok")])
    conversation, outbox, _ = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("what is this?"))
    await until(outbox, TurnDone)
    assert "write_file" not in llm.tools_seen[0]
    assert "read_file" in llm.tools_seen[0]


async def test_read_result_summary_loop(store: Store) -> None:
    llm = ScriptedLlm([call("read_file", path="src/./a.py")], [TextChunk("It defines main.")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("read src/a.py"))
    (tool_call,) = await until(outbox, ToolCallEvent)
    assert isinstance(tool_call, ToolCallEvent)
    assert tool_call.tool_name == "read_file"
    assert tool_call.arguments == {"path": "src/a.py"}, "paths are normalised"
    assert not tool_call.requires_approval
    assert tool_call.call_id.startswith("call_")
    await conversation.handle(ToolResult(tool_call.call_id, result={"content": "def main(): ..."}))
    events = await until(outbox, TurnDone)
    assert events[0] == AssistantText("It defines main.")
    assert tool_messages(session) == [{"result": {"content": "def main(): ..."}}]
    assert llm.seen[1][-1].role == "tool"
    assert_history_complete(session)


async def test_write_waits_for_approval_and_runs_after_approve(store: Store) -> None:
    llm = ScriptedLlm([call("write_file", path="a.py", content="x = 1\n")], [TextChunk("Written.")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("write a.py"))
    proposed = await read_first(conversation, outbox, "a.py", "x = 0\n")
    assert proposed.requires_approval
    parent = proposed.metadata["parent_call_id"]
    assert proposed.call_id == f"{parent}.2"
    assert proposed.metadata == {
        "parent_call_id": parent,
        "parent_tool": "write_file",
        "diff": "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 0\n+x = 1\n",
    }
    # Executing before approval is refused by the server.
    await conversation.handle(ToolResult(proposed.call_id, result={"ok": True}))
    (refused,) = await until(outbox, ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert refused.code == "approval_required"
    await conversation.handle(ApprovalDecision(proposed.call_id, "approve"))
    (execute,) = await until(outbox, ToolCallEvent)
    assert execute == ToolCallEvent(
        proposed.call_id,
        "write_file",
        {"path": "a.py", "content": "x = 1\n"},
        False,
        "approved",
        proposed.metadata,
    )
    await conversation.handle(ToolResult(proposed.call_id, result={"ok": True}))
    await until(outbox, TurnDone)
    assert tool_messages(session) == [{"result": {"ok": True}}]
    assert_history_complete(session)
    (checkpoint,) = await store.checkpoints.of_session(session.session_id)
    assert (checkpoint.path, checkpoint.before, checkpoint.after) == ("a.py", "x = 0\n", "x = 1\n")


async def test_edit_is_validated_again_then_executed_with_new_arguments(store: Store) -> None:
    llm = ScriptedLlm([call("write_file", path="a.py", content="old")], [TextChunk("ok")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("write"))
    proposed = await read_first(conversation, outbox, "a.py")
    await conversation.handle(
        ApprovalDecision(proposed.call_id, "edit", {"path": "../escape.py", "content": "x"})
    )
    (bad_edit,) = await until(outbox, ErrorEvent)
    assert isinstance(bad_edit, ErrorEvent)
    assert bad_edit.code == "invalid_edit"
    await conversation.handle(ApprovalDecision(proposed.call_id, "edit", {"path": "a.py"}))
    (bad_schema,) = await until(outbox, ErrorEvent)
    assert isinstance(bad_schema, ErrorEvent)
    assert "content" in bad_schema.message
    # The previous state read is a.py's: an edit may not write elsewhere.
    await conversation.handle(
        ApprovalDecision(proposed.call_id, "edit", {"path": "b.py", "content": "new"})
    )
    (other_path,) = await until(outbox, ErrorEvent)
    assert isinstance(other_path, ErrorEvent)
    assert other_path.code == "invalid_edit"
    assert "only the content" in other_path.message
    await conversation.handle(
        ApprovalDecision(proposed.call_id, "edit", {"path": "a.py", "content": "new"})
    )
    (execute,) = await until(outbox, ToolCallEvent)
    assert isinstance(execute, ToolCallEvent)
    assert execute.arguments == {"path": "a.py", "content": "new"}
    assert not execute.requires_approval
    assert "+new" in execute.metadata["diff"], "the diff shows the edited content"
    await conversation.handle(ToolResult(execute.call_id, result={"ok": True}))
    await until(outbox, TurnDone)
    assert tool_messages(session) == [
        {"result": {"ok": True}, "edited_arguments": {"path": "a.py", "content": "new"}}
    ]
    (checkpoint,) = await store.checkpoints.of_session(session.session_id)
    assert (checkpoint.before, checkpoint.after) == (None, "new")


async def test_reject_returns_feedback_to_the_model_and_nothing_runs(store: Store) -> None:
    llm = ScriptedLlm([call("delete_file", path="a.py")], [TextChunk("Understood.")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("delete a.py"))
    proposed = await read_first(conversation, outbox, "a.py", "x = 1\n")
    assert (proposed.tool_name, proposed.requires_approval) == ("delete_file", True)
    await conversation.handle(ApprovalDecision(proposed.call_id, "reject", feedback="keep it"))
    events = await until(outbox, TurnDone)
    assert not any(isinstance(e, ToolCallEvent) for e in events)
    assert tool_messages(session) == [
        {"error": "the user rejected this tool call", "feedback": "keep it"}
    ]
    for late_id in (proposed.call_id, proposed.metadata["parent_call_id"]):
        await conversation.handle(ToolResult(late_id, result={"deleted": True}))
        (late,) = await until(outbox, ErrorEvent)
        assert isinstance(late, ErrorEvent)
        assert late.code == "duplicate_tool_result"
    assert await store.checkpoints.of_session(session.session_id) == [], "nothing changed"


@pytest.mark.parametrize(
    ("agent", "tool", "arguments", "reason"),
    [
        ("architect", "write_file", {"path": "main.py", "content": "x"}, "may only write *.md"),
        ("debug", "write_file", {"path": "notes.md", "content": "x"}, "may not use write_file"),
        ("debug", "delete_file", {"path": "a.txt"}, "may not use delete_file"),
        ("ask", "execute_command", {"command": "ls"}, "may not use execute_command"),
        ("coder", "read_file", {"path": "../secrets"}, "escapes the workspace"),
        ("coder", "read_file", {"path": "/etc/passwd"}, "absolute paths"),
        ("coder", "read_file", {"path": "C:\\x"}, "absolute paths"),
        ("coder", "read_file", {"path": 7}, "invalid arguments"),
        ("coder", "launch_rockets", {}, "unknown tool"),
    ],
)
async def test_refused_calls_go_back_to_the_model_and_never_reach_the_ide(
    store: Store, agent: str, tool: str, arguments: dict[str, Any], reason: str
) -> None:
    llm = ScriptedLlm([ToolCallChunk(0, "x", tool, json.dumps(arguments))], [TextChunk("sorry")])
    conversation, outbox, session = await make(store, llm, agent=agent)
    await conversation.handle(UserMessage("do it"))
    events = await until(outbox, TurnDone)
    assert not any(isinstance(e, ToolCallEvent) for e in events)
    (answer,) = tool_messages(session)
    assert reason in answer["error"]
    assert llm.seen[1][-1].role == "tool", "the model saw the refusal"
    assert_history_complete(session)


async def test_architect_may_write_markdown(store: Store) -> None:
    llm = ScriptedLlm([call("write_file", path="docs/DESIGN.md", content="# x")])
    conversation, outbox, _ = await make(store, llm, agent="architect")
    await conversation.handle(UserMessage("document"))
    proposed = await read_first(conversation, outbox, "docs/DESIGN.md")
    assert proposed.tool_name == "write_file"
    assert proposed.arguments == {"path": "docs/DESIGN.md", "content": "# x"}


async def test_parallel_calls_all_dispatched_and_the_turn_waits_for_every_result(
    store: Store,
) -> None:
    llm = ScriptedLlm(
        [call("read_file", 0, path="a.txt"), call("read_file", 1, path="b.txt")],
        [TextChunk("both read")],
    )
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("read a.txt and read b.txt"))
    first = (await outbox.get()).event
    second = (await outbox.get()).event
    assert isinstance(first, ToolCallEvent)
    assert isinstance(second, ToolCallEvent)
    assert {first.arguments["path"], second.arguments["path"]} == {"a.txt", "b.txt"}
    assert first.call_id != second.call_id
    await conversation.handle(ToolResult(second.call_id, result={"content": "B"}))
    await conversation.handle(UserMessage("impatient"))
    (busy,) = await until(outbox, ErrorEvent)
    assert isinstance(busy, ErrorEvent)
    assert busy.code == "tool_calls_pending"
    assert len(llm.seen) == 1, "the model is not called before every result is in"
    await conversation.handle(ToolResult(first.call_id, error="permission denied"))
    await until(outbox, TurnDone)
    assert len(llm.seen) == 2
    assert_history_complete(session)
    assert {"error": "permission denied"} in tool_messages(session)


async def test_unknown_call_id_is_refused_and_changes_nothing(store: Store) -> None:
    conversation, outbox, session = await make(store, ScriptedLlm())
    await conversation.handle(ToolResult("call_made_up", result={}))
    (error,) = await until(outbox, ErrorEvent)
    assert isinstance(error, ErrorEvent)
    assert error.code == "unknown_call_id"
    assert session.messages == []


async def test_second_message_during_a_turn_is_refused(store: Store) -> None:
    hold = asyncio.Event()
    conversation, outbox, session = await make(store, ScriptedLlm([TextChunk("x")], hold=hold))
    await conversation.handle(UserMessage("first"))
    assert (await outbox.get()).event == AssistantText("x")
    await conversation.handle(UserMessage("second"))
    refused = (await outbox.get()).event
    assert isinstance(refused, ErrorEvent)
    assert refused.code == "turn_in_progress"
    hold.set()
    await until(outbox, TurnDone)
    assert [m.content for m in session.messages] == ["first", "x"]


async def test_cancel_stops_the_llm_stream_and_stores_no_partial_answer(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("partial")], hold=asyncio.Event())
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("go"))
    assert (await outbox.get()).event == AssistantText("partial")
    await conversation.handle(CancelTurn())
    assert (await outbox.get()).event == TurnDone(TurnStatus.CANCELLED)
    assert llm.closed.is_set()
    assert session.messages == [ChatMessage("user", "go")]
    assert not conversation.turn_running


async def test_cancel_while_tools_are_pending_closes_them_in_history(store: Store) -> None:
    llm = ScriptedLlm([call("execute_command", command="sleep 100")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("run sleep 100"))
    (proposed,) = await until(outbox, ToolCallEvent)
    assert isinstance(proposed, ToolCallEvent)
    await conversation.handle(CancelTurn())
    done = await until(outbox, TurnDone)
    assert done[-1] == TurnDone(TurnStatus.CANCELLED, Usage(1, 1))
    assert_history_complete(session)
    assert session.pending == {}
    await conversation.handle(UserMessage("next"))
    await until(outbox, TurnDone)


async def test_cancel_without_a_turn_is_an_error(store: Store) -> None:
    conversation, outbox, _ = await make(store, ScriptedLlm())
    await conversation.handle(CancelTurn())
    (event,) = await until(outbox, ErrorEvent)
    assert isinstance(event, ErrorEvent)
    assert event.code == "no_turn_running"


async def test_upstream_failure_is_an_error_event_not_an_answer(store: Store) -> None:
    failure = UpstreamError("LLM proxy: down", code="llm_unavailable", retryable=True)
    conversation, outbox, session = await make(
        store, ScriptedLlm([TextChunk("half")], fail=failure)
    )
    await conversation.handle(UserMessage("go"))
    events = await until(outbox, TurnDone)
    assert events == [
        AssistantText("half"),
        ErrorEvent("llm_unavailable", "LLM proxy: down", True),
        TurnDone(TurnStatus.FAILED),
    ]
    assert session.messages == [ChatMessage("user", "go")]


async def test_close_cancels_the_running_turn(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], hold=asyncio.Event())
    conversation, outbox, _ = await make(store, llm)
    await conversation.handle(UserMessage("go"))
    await outbox.get()
    await conversation.close()
    assert llm.closed.is_set()
    assert not conversation.turn_running
    await conversation.close()  # idempotent


async def test_a_new_session_is_routed_by_the_model(store: Store) -> None:
    llm = ScriptedLlm(
        [TextChunk('{"agent": "debug", "confidence": 0.8, "rationale": "a failure"}')],
        [TextChunk("Let me look.")],
    )
    conversation, outbox, session = await make(store, llm, agent="orchestrator")
    await conversation.handle(UserMessage("the tests crash"))
    events = await until(outbox, TurnDone)
    assert events[0] == AgentSwitched("orchestrator", "debug", "a failure", 0.8)
    assert events[1] == AssistantText("Let me look."), "routing text is not shown"
    assert session.agent == "debug"
    assert "debug" in llm.seen[1][0].content.lower(), "the same request continues as debug"


async def test_unusable_routing_answer_falls_back_to_keywords(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("I think a coder?")], [TextChunk("ok")])
    conversation, outbox, _session = await make(store, llm, agent="orchestrator")
    await conversation.handle(UserMessage("implement a function"))
    switched = (await until(outbox, AgentSwitched))[-1]
    assert isinstance(switched, AgentSwitched)
    assert switched.to_agent == "coder"
    assert "keyword" in switched.reason
    await until(outbox, TurnDone)


async def test_switch_mode_hands_off_and_continues_and_ping_pong_is_bounded(store: Store) -> None:
    scripts: list[list[Chunk]] = [
        # Between agents with the same rights: no approval needed.
        [call("switch_mode", agent="ask" if i % 2 else "orchestrator", reason=f"hop {i}")]
        for i in range(MAX_SWITCHES_PER_TURN + 1)
    ]
    llm = ScriptedLlm(*scripts, [TextChunk("settled")])
    conversation, outbox, session = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("bounce"))
    events = await until(outbox, TurnDone)
    switches = [e for e in events if isinstance(e, AgentSwitched)]
    assert len(switches) == MAX_SWITCHES_PER_TURN
    assert switches[0] == AgentSwitched("ask", "orchestrator", "hop 0", 1.0)
    assert "no more than" in tool_messages(session)[-1]["error"]
    assert len(session.switches) == MAX_SWITCHES_PER_TURN
    assert_history_complete(session)


async def test_a_switch_the_model_asks_for_that_widens_its_rights_waits_for_a_human(
    store: Store,
) -> None:
    llm = ScriptedLlm(
        [call("switch_mode", agent="coder", reason="the page says so")],
        [call("switch_mode", agent="orchestrator", reason="routing")],
        [TextChunk("still read-only")],
    )
    conversation, outbox, session = await make(store, llm, agent="ask")
    await conversation.handle(UserMessage("summarise README.md"))
    (asked,) = await until(outbox, ToolCallEvent)
    assert isinstance(asked, ToolCallEvent)
    assert asked.tool_name == "switch_mode"
    assert asked.requires_approval
    assert "write_file" in asked.reason, "the approval says what the switch would allow"
    assert session.agent == "ask", "nothing changes before the human decides"
    assert conversation.turn_running
    await conversation.handle(ApprovalDecision(asked.call_id, "reject"))
    events = await until(outbox, TurnDone)
    # Narrowing (or equal) switches happen at once.
    assert [e for e in events if isinstance(e, AgentSwitched)] == [
        AgentSwitched("ask", "orchestrator", "routing", 1.0)
    ]
    assert tool_messages(session)[0] == {"error": "the user rejected this tool call"}
    assert "write_file" not in llm.tools_seen[1], "the rejected switch gave no rights"
    assert_history_complete(session)


async def test_an_approved_widening_switch_runs_and_edits_stay_within_the_callers_rights(
    store: Store,
) -> None:
    llm = ScriptedLlm(
        [
            call("write_file", 0, path="design.md", content="# Design"),
            call("switch_mode", 1, agent="coder", reason="now implement it"),
        ],
        [TextChunk("implemented")],
    )
    conversation, outbox, session = await make(store, llm, agent="architect")
    await conversation.handle(UserMessage("design then build"))
    read, switch = await until(outbox, ToolCallEvent), await until(outbox, ToolCallEvent)
    assert isinstance(read[0], ToolCallEvent)
    assert read[0].tool_name == "read_file", "the write reads design.md first"
    assert isinstance(switch[0], ToolCallEvent)
    assert switch[0].requires_approval
    await conversation.handle(ApprovalDecision(switch[0].call_id, "approve"))
    (switched,) = await until(outbox, AgentSwitched)
    assert switched == AgentSwitched("architect", "coder", "now implement it", 1.0)
    await conversation.handle(read_result(read[0].call_id, "design.md", None))
    (write,) = await until(outbox, ToolCallEvent)
    assert isinstance(write, ToolCallEvent)
    assert (write.tool_name, write.requires_approval) == ("write_file", True)
    # The write was proposed by the architect: an edit is checked against
    # the architect's rights, not the coder's the session has now.
    await conversation.handle(
        ApprovalDecision(write.call_id, "edit", {"path": "main.py", "content": "x"})
    )
    (refused,) = await until(outbox, ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert refused.code == "invalid_edit"
    assert "*.md" in refused.message
    await conversation.handle(
        ApprovalDecision(write.call_id, "edit", {"path": "design.md", "content": "#"})
    )
    (execute,) = await until(outbox, ToolCallEvent)
    assert isinstance(execute, ToolCallEvent)
    assert execute.arguments == {"path": "design.md", "content": "#"}
    await conversation.handle(ToolResult(write.call_id, result={"ok": True}))
    await until(outbox, TurnDone)
    assert session.agent == "coder"
    assert "write_file" in llm.tools_seen[1]
    assert_history_complete(session)


async def test_switch_agent_from_the_ide_runs_the_message_with_the_new_agent(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("architecting")])
    conversation, outbox, session = await make(store, llm, agent="coder")
    await conversation.handle(SwitchAgent("architect", "design it", "user wants a design"))
    events = await until(outbox, TurnDone)
    assert events[0] == AgentSwitched("coder", "architect", "user wants a design", 1.0)
    assert session.agent == "architect"
    assert "architect" in llm.seen[0][0].content.lower()
    await conversation.handle(SwitchAgent("wizard"))
    (error,) = await until(outbox, ErrorEvent)
    assert isinstance(error, ErrorEvent)
    assert error.code == "unknown_agent"


async def test_plan_with_approval_and_progress(store: Store) -> None:
    steps = [{"id": "1", "description": "read", "status": "pending"}]
    done = [{"id": "1", "description": "read", "status": "done"}]
    llm = ScriptedLlm(
        [call("update_plan", plan_id="p1", steps=steps, requires_approval=True)],
        [call("update_plan", plan_id="p1", steps=done)],
        [TextChunk("finished")],
    )
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("plan it"))
    (update,) = await until(outbox, PlanUpdate)
    assert isinstance(update, PlanUpdate)
    assert update.requires_approval
    await conversation.handle(PlanApproval("nope", "approve"))
    (unknown,) = await until(outbox, ErrorEvent)
    assert isinstance(unknown, ErrorEvent)
    assert unknown.code == "unknown_plan"
    await conversation.handle(PlanApproval("p1", "approve"))
    events = await until(outbox, TurnDone)
    assert isinstance(events[0], PlanProgress)
    assert (events[0].step_id, events[0].status) == ("1", "done")
    assert isinstance(events[1], PlanUpdate)
    assert not events[1].requires_approval
    assert_history_complete(session)


def notices_in(messages: list[ChatMessage]) -> list[str]:
    """The IDE's notices among the messages a model was sent."""
    return [m.content for m in messages if m.role == "user" and m.content.startswith(NOTICE_MARK)]


async def test_file_changes_reach_the_model_once_coalesced(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, _ = await make(store, llm)
    await conversation.handle(FileChanged("src/a.py", 1.0))
    await conversation.handle(FileChanged("./src/a.py", 2.0))
    await conversation.handle(FileChanged("../outside", 3.0))
    (bad,) = await until(outbox, ErrorEvent)
    assert isinstance(bad, ErrorEvent)
    assert bad.code == "invalid_path"
    await conversation.handle(UserMessage("go"))
    await until(outbox, TurnDone)
    notices = notices_in(llm.seen[0])
    assert len(notices) == 1
    assert "src/a.py" in notices[0]
    await conversation.handle(UserMessage("again"))
    await until(outbox, TurnDone)
    assert len(notices_in(llm.seen[1])) == 1, "not repeated"


async def test_file_changes_are_bounded_in_memory_and_in_what_the_model_reads(
    store: Store,
) -> None:
    from runtime.notices import MAX_FILE_CHANGES, NOTICE_MAX_CHARS, NOTICE_MAX_PATHS

    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(FileChanged("x" * 100_000, 1.0))
    (too_long,) = await until(outbox, ErrorEvent)
    assert isinstance(too_long, ErrorEvent)
    assert too_long.code == "invalid_path"
    assert session.file_changes == {}
    for n in range(MAX_FILE_CHANGES * 4):
        await conversation.handle(FileChanged(f"src/{n:05d}.py", float(n)))
    assert len(session.file_changes) == MAX_FILE_CHANGES, "kept paths are bounded"
    await conversation.handle(FileChanged("src/00000.py", 9.0))
    assert len(session.file_changes) == MAX_FILE_CHANGES, "a known path is coalesced"
    await conversation.handle(UserMessage("go"))
    await until(outbox, TurnDone)
    (notice,) = notices_in(llm.seen[0])
    assert notice.count("src/") == NOTICE_MAX_PATHS
    assert f"and {MAX_FILE_CHANGES * 4 - NOTICE_MAX_PATHS} more changes" in notice
    # Long paths: the notice stays within its character budget.
    for n in range(10):
        await conversation.handle(FileChanged(f"long/{n}/" + "d" * 3000, float(n)))
    await conversation.handle(UserMessage("again"))
    await until(outbox, TurnDone)
    notice = notices_in(llm.seen[1])[-1]
    assert len(notice) < NOTICE_MAX_CHARS + 300
    assert notice.count("long/") == 1
    assert "and 9 more changes" in notice
    assert session.file_changes == {}
    assert session.file_changes_dropped == 0


async def test_the_model_is_told_the_environment_the_ide_reported(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, session = await make(store, llm, agent="debug")
    await conversation.handle(UserMessage("before"))
    await until(outbox, TurnDone)
    assert "Operating system: not reported" in llm.seen[0][0].content
    await conversation.handle(Environment("Windows 11", "powershell", "C:\\work\\shop"))
    session.workspace_view = "src/\n  shop.ps1"
    await conversation.handle(UserMessage("after"))
    await until(outbox, TurnDone)
    system = llm.seen[1][0]
    assert system.role == "system"
    assert "Operating system: Windows 11" in system.content
    assert "Shell: powershell" in system.content
    assert "Workspace root: C:\\work\\shop" in system.content
    assert system.content.endswith("src/\n  shop.ps1")
    assert outbox.empty(), "reporting the environment sends nothing"
    assert [m.content for m in session.messages if m.role == "user"] == ["before", "after"]


async def test_three_failing_calls_end_the_turn_with_a_question(store: Store) -> None:
    failing = [call("read_file", path="missing.py")]
    llm = ScriptedLlm(failing, failing, failing, [TextChunk("never")])
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("read missing.py"))
    for _ in range(3):
        (offered,) = await until(outbox, ToolCallEvent)
        assert isinstance(offered, ToolCallEvent)
        await conversation.handle(ToolResult(offered.call_id, error="missing.py: no such file"))
    *_, asked, done = await until(outbox, TurnDone)
    assert isinstance(asked, AssistantText)
    assert "3 failed tool calls in a row" in asked.text
    assert "read_file, failed with: missing.py: no such file" in asked.text
    assert done == TurnDone(TurnStatus.COMPLETED, Usage(3, 3))
    assert len(llm.seen) == 3, "the model is not called a fourth time"
    assert session.messages[-1] == ChatMessage("assistant", asked.text)
    assert_history_complete(session)


async def test_the_mistakes_limit_is_a_setting(store: Store) -> None:
    failing = [call("search_in_code", query="")]  # refused: an empty query
    llm = ScriptedLlm(failing, failing, failing, [TextChunk("gave up")])
    conversation, outbox, _ = await make(store, llm, max_consecutive_mistakes=0)
    await conversation.handle(UserMessage("search"))
    events = await until(outbox, TurnDone)
    assert events[0] == AssistantText("gave up"), "no limit: the model decides"
    assert len(llm.seen) == 4


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 129, "white space", "../etc"])
def test_malformed_session_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_session_id(bad)


async def test_history_sent_to_the_model_is_bounded_by_its_window(store: Store) -> None:
    llm = ScriptedLlm(*[[TextChunk("x" * 400)] for _ in range(6)])
    llm.window = 100  # tokens; uncounted, 8 characters make one (runtime.context)
    # Cutting only: condensing is tests/runtime/test_condense.py's.
    conversation, outbox, session = await make(store, llm, condense_threshold=0)
    for index in range(6):
        await conversation.handle(UserMessage(f"question {index} " + "q" * 300))
        await until(outbox, TurnDone)
    last = llm.seen[-1]
    assert last[0].role == "system", "the system prompt always stays"
    assert last[-1].content.startswith("question 5"), "the newest message always stays"
    assert sum(len(m.content) for m in last[1:]) <= 800
    assert len(session.messages) == 12, "history itself keeps everything"


class GatedStore(Store):
    """A real store whose commits wait for a gate: a write in flight, held open."""

    def __init__(self, store: Store) -> None:
        super().__init__(store._engine)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def commit(self, step: Any) -> None:
        if any(event.kind == "text" for event in step.events):
            self.waiting.set()
            await self.gate.wait()
        await super().commit(step)


async def test_a_replay_during_the_write_of_the_text_still_has_the_text(store: Store) -> None:
    gated = GatedStore(store)
    llm = ScriptedLlm([TextChunk("a "), TextChunk("b")])
    await gated.create_session("gated", "alice", "coder")
    session = Session.from_store(await gated.load("gated"))
    conversation = Conversation(session, llm, gated, ConversationSettings(model="m"))  # type: ignore[arg-type]
    LIVE.append(conversation)
    await conversation.handle(UserMessage("go"))
    await asyncio.wait_for(gated.waiting.wait(), 5)  # the text's commit is in flight
    replay, recovered = await conversation.stream.events_after(0)
    assert recovered
    texts = [item.event.text for item in replay if isinstance(item.event, AssistantText)]
    assert "".join(texts) == "a b", "the text is read from memory until it is in the log"
    gated.gate.set()
    await conversation.wait_idle()
    replay, _ = await conversation.stream.events_after(0)
    texts = [item.event.text for item in replay if isinstance(item.event, AssistantText)]
    assert "".join(texts) == "a b", "and from the log once it is there, once"


class SlowClient:
    """A stream's gRPC context whose client reads only when let: records writes."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.reading = asyncio.Event()

    async def write(self, message: Any) -> None:
        await self.reading.wait()
        self.written.append(message)

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def test_a_stream_that_falls_a_whole_queue_behind_catches_up_from_the_log(
    store: Store,
) -> None:
    from runtime.service import AgentRuntimeServicer
    from runtime.stream import END_OF_STREAM

    words = [f"w{n} " for n in range(40)]
    llm = ScriptedLlm([TextChunk(w) for w in words])
    conversation, _, session = await make(store, llm, subscriber_queue=4)
    subscriber = conversation.subscribe()
    client = SlowClient()
    pump = asyncio.create_task(
        AgentRuntimeServicer._pump(conversation.stream, subscriber, [], 0, client)  # type: ignore[arg-type]
    )
    await conversation.handle(UserMessage("go"))
    await conversation.wait_idle()
    assert subscriber.overflowed, "the client fell more than the queue behind"
    subscriber.offer(END_OF_STREAM)
    client.reading.set()
    await asyncio.wait_for(pump, 5)
    seqs = [m.seq for m in client.written]
    assert seqs == sorted(set(seqs)), "in order, nothing twice"
    text = "".join(m.assistant_delta.text for m in client.written if m.HasField("assistant_delta"))
    assert text == "".join(words), "every delta arrived, caught up from the log"
    assert client.written[-1].HasField("turn_done")
    assert client.written[-1].seq == session.last_seq


async def test_every_delta_is_sent_within_a_durable_reservation(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.stream as module

    monkeypatch.setattr(module, "SEQ_RESERVE_BLOCK", 8)
    monkeypatch.setattr(module, "SEQ_RESERVE_LOW", 2)

    class Recording(Store):
        """Knows how far the reservation is committed, and how often it was written alone."""

        committed = 0
        writes = 0

        async def reserve_seqs(self, session_id: str, upto: int) -> None:
            await super().reserve_seqs(session_id, upto)
            self.committed, self.writes = max(self.committed, upto), self.writes + 1

        async def commit(self, step: Any) -> None:
            await super().commit(step)
            if step.seq_reserved is not None:
                self.committed = max(self.committed, step.seq_reserved)

    recording = Recording(store._engine)
    llm = ScriptedLlm([TextChunk(f"t{n} ") for n in range(30)])
    await recording.create_session("reserving", "alice", "coder")
    session = Session.from_store(await recording.load("reserving"))
    conversation = Conversation(session, llm, recording, ConversationSettings(model="m"))  # type: ignore[arg-type]
    LIVE.append(conversation)
    sent: list[tuple[int, int]] = []
    publish = conversation.stream.publish

    def checking(item: Sequenced) -> None:
        if isinstance(item.event, AssistantText):
            sent.append((item.seq, recording.committed))
        publish(item)

    conversation.stream.publish = checking  # type: ignore[method-assign]
    outbox = conversation.subscribe().queue
    await conversation.handle(UserMessage("go"))
    await until(outbox, TurnDone)
    assert len(sent) == 30
    assert all(seq <= committed for seq, committed in sent), "reserved before it is sent"
    assert recording.writes >= 3, "a long answer renews its reservation while streaming"
    row = await recording.get_session("reserving")
    assert row is not None
    assert row.seq_reserved >= sent[-1][0]


async def test_the_workspace_is_listed_once_for_the_prompt_of_a_client_that_asks(
    store: Store,
) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, session = await make(store, llm, agent="debug")
    viewing = ClientOptions(workspace_view=True)
    await conversation.handle(UserMessage("first"), client=viewing)
    (listing,) = await until(outbox, ToolCallEvent)
    assert isinstance(listing, ToolCallEvent)
    assert (listing.tool_name, listing.arguments) == (
        "list_files",
        {"path": ".", "recursive": True, "include_hidden": True},
    )
    assert not listing.requires_approval
    assert llm.seen == [], "the model waits for the listing"
    result = {"path": ".", "files": ["src/", "src/shop.py", "README.md"], "truncated": False}
    await conversation.handle(ToolResult(listing.call_id, result=result), client=viewing)
    await until(outbox, TurnDone)
    system = llm.seen[0][0].content
    assert "src/" in system
    assert "shop.py" in system
    assert "README.md" in system
    assert all(m.role != "tool" for m in session.messages), "the listing is not in the history"
    await conversation.handle(UserMessage("second"), client=viewing)
    events = await until(outbox, TurnDone)
    assert not any(isinstance(e, ToolCallEvent) for e in events), "listed once"
    assert "shop.py" in llm.seen[1][0].content


async def test_a_client_that_cannot_list_or_did_not_ask_is_not_asked_to(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")], [TextChunk("b")])
    conversation, outbox, _ = await make(store, llm, agent="debug")
    await conversation.handle(UserMessage("plain"))
    assert not any(isinstance(e, ToolCallEvent) for e in await until(outbox, TurnDone))
    no_list = ClientOptions(workspace_view=True, tools=frozenset({"read_file"}))
    await conversation.handle(UserMessage("cannot list"), client=no_list)
    assert not any(isinstance(e, ToolCallEvent) for e in await until(outbox, TurnDone))


# -- the user's approval rules ---------------------------------------------------


async def test_the_owners_rules_are_read_when_a_turn_begins(store: Store) -> None:
    pytest_call = [call("execute_command", command="pytest -q")]
    llm = ScriptedLlm(pytest_call, [TextChunk("ran")], pytest_call)
    conversation, outbox, session = await make(store, llm)
    await store.rules.set(
        "alice", ApprovalRules.from_json({"allow": ["execute_command(pytest:*)"]})
    )
    await store.rules.set("bob", ApprovalRules.from_json({"deny": ["execute_command"]}))
    await conversation.handle(UserMessage("run the tests"))
    (offered,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert not offered.requires_approval, "alice's rule, not bob's, applies to her session"
    (row,) = await store.pending_calls(session.session_id)
    assert row.reason == "auto-approved by your rule execute_command(pytest:*)"
    await conversation.handle(ToolResult(offered.call_id, result={"exit_code": 0}))
    await until(outbox, TurnDone)
    await store.rules.set("alice", ApprovalRules())  # changed between turns
    await conversation.handle(UserMessage("again"))
    (again,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert again.requires_approval, "the next turn reads the rules again"


async def test_always_allow_stores_the_rule_and_it_holds_at_once(store: Store) -> None:
    run = [call("execute_command", command="pytest -q")]
    llm = ScriptedLlm(run, run, [TextChunk("done")], run)
    conversation, outbox, session = await make(store, llm)
    await conversation.handle(UserMessage("test"))
    (asked,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert asked.requires_approval
    await conversation.handle(ApprovalDecision(asked.call_id, "approve", always_allow=True))
    (approved,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert (approved.call_id, approved.requires_approval) == (asked.call_id, False)
    stored = await store.rules.get("alice")
    assert [rule.text for rule in stored.allow] == ["execute_command(pytest:*)"]
    await conversation.handle(ToolResult(approved.call_id, result={"exit_code": 0}))
    (same_turn,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert not same_turn.requires_approval, "the rule holds for the rest of the turn"
    await conversation.handle(ToolResult(same_turn.call_id, result={"exit_code": 0}))
    await until(outbox, TurnDone)
    await conversation.handle(UserMessage("again"))
    (next_turn,) = [e for e in await until(outbox, ToolCallEvent) if isinstance(e, ToolCallEvent)]
    assert not next_turn.requires_approval, "and for the next turns"
    await conversation.handle(ToolResult(next_turn.call_id, result={"exit_code": 0}))
    await until(outbox, TurnDone)
    assert_history_complete(session)
