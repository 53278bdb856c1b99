"""The turn's decisions without a database: a Dispatcher's steps, read from the open step.

The stream here has a log that fails any write: a step only queues, and what
it queued is read back from the stream's open step.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime import answers
from runtime.commands import STRICT, ApprovalDecision, ClientOptions, PlanApproval, ToolResult
from runtime.dispatch import Dispatcher, Next
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ErrorEvent,
    Event,
    PlanUpdate,
    Sequenced,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
    Usage,
    from_payload,
)
from runtime.llm import ChatMessage, ToolCallRequest
from runtime.metrics import RuntimeMetrics
from runtime.records import CallRecord, EventRecord, Step
from runtime.rules import DEFAULT_LIMITS, ApprovalRules, OperatorLimits
from runtime.state import CallState, Session
from runtime.stream import EventStream, Subscriber
from runtime.tools import DEFAULT_APPROVAL_REQUIRED
from runtime.turn import MAX_MODEL_CALLS_PER_TURN, ModelReply
from tests.runtime.test_conversation import read_result


class NoLog:
    """An event log that is never to be written: the dispatcher does no I/O."""

    async def commit(self, step: Step) -> None:
        raise AssertionError("the dispatcher wrote a step")

    async def reserve_seqs(self, session_id: str, upto: int) -> None:
        raise AssertionError("the dispatcher reserved seqs")

    async def events_after(self, session_id: str, after_seq: int) -> list[EventRecord]:
        raise AssertionError("the dispatcher read the log")


def make(
    agent: str = "coder",
    limits: OperatorLimits = DEFAULT_LIMITS,
    approval_required: frozenset[str] = DEFAULT_APPROVAL_REQUIRED,
) -> tuple[Dispatcher, Session, Subscriber]:
    session = Session("s-1", "alice", agent)
    metrics = RuntimeMetrics()
    stream = EventStream(session, NoLog(), subscriber_queue=100, max_replay=1000, metrics=metrics)
    dispatcher = Dispatcher(
        session,
        stream,
        approval_required=approval_required,
        metrics=metrics,
        limits=limits,
    )
    return dispatcher, session, stream.subscribe()


def reply(*calls: tuple[str, dict[str, Any]], text: str = "") -> ModelReply:
    requests = [
        ToolCallRequest(f"call_{i}", name, json.dumps(arguments))
        for i, (name, arguments) in enumerate(calls)
    ]
    return ModelReply(text, requests, Usage(3, 2))


def queued(dispatcher: Dispatcher) -> list[Event]:
    """The durable events the open step will write (and then send)."""
    return [from_payload(row.kind, row.payload) for row in dispatcher.stream.step().events]


def sent(subscriber: Subscriber) -> list[Sequenced]:
    items = []
    while not subscriber.queue.empty():
        item = subscriber.queue.get_nowait()
        assert isinstance(item, Sequenced)
        items.append(item)
    return items


def tool_answers(session: Session) -> list[dict[str, Any]]:
    return [json.loads(m.content) for m in session.messages if m.role == "tool"]


def read_first(
    dispatcher: Dispatcher,
    read_id: str,
    path: str,
    content: str | None = None,
    client: ClientOptions = STRICT,
) -> Next:
    """Answer the ``read_file`` the runtime offered (as ``read_id``) before a change
    of ``path``, with ``content`` (None: the file is absent)."""
    (read,) = [e for e in queued(dispatcher) if getattr(e, "call_id", None) == read_id]
    assert isinstance(read, ToolCallEvent)
    assert (read.tool_name, read.arguments, read.requires_approval) == (
        "read_file",
        {"path": path},
        False,
    )
    return answers.on_tool_result(dispatcher, read_result(read_id, path, content), client)


def row_of(dispatcher: Dispatcher, call_id: str) -> CallRecord:
    """The last row the open step holds for ``call_id``."""
    return [c for c in dispatcher.stream.step().calls if c.call_id == call_id][-1]


def test_a_reply_without_tool_calls_ends_the_turn() -> None:
    dispatcher, session, _ = make()
    assert dispatcher.begin("hi", "req-1") is Next.MODEL
    assert session.state == "running"
    assert session.title == "hi"
    assert dispatcher.after_reply(reply(text="hello")) is Next.DONE
    assert session.state == "idle"
    assert [m.content for m in session.messages] == ["hi", "hello"]
    assert queued(dispatcher) == [TurnDone(TurnStatus.COMPLETED, Usage(3, 2))]
    assert [m.position for m in dispatcher.stream.step().messages] == [0, 1]


def test_an_ide_call_waits_and_its_result_calls_the_model_again() -> None:
    dispatcher, session, subscriber = make()
    dispatcher.begin("read a", None)
    assert dispatcher.after_reply(reply(("read_file", {"path": "./a.py"}))) is Next.WAIT
    assert session.state == "waiting"
    assert queued(dispatcher) == [ToolCallEvent("call_0", "read_file", {"path": "a.py"}, False)]
    assert session.pending["call_0"].state is CallState.AWAITING_RESULT
    assert sent(subscriber) == [], "durable events go out only once written"
    assert (
        answers.on_tool_result(dispatcher, ToolResult("call_0", result={"content": "x"}))
        is Next.MODEL
    )
    assert session.state == "running"
    assert session.pending == {}
    assert tool_answers(session) == [{"result": {"content": "x"}}]
    assert [c.status for c in dispatcher.stream.step().calls] == ["awaiting_result", "completed"]


def test_a_refused_call_goes_back_to_the_model_and_the_model_is_called_again() -> None:
    dispatcher, session, _ = make("architect")
    dispatcher.begin("write", None)
    step = reply(("write_file", {"path": "main.py", "content": "x"}))
    assert dispatcher.after_reply(step) is Next.MODEL
    assert queued(dispatcher) == [], "the IDE never sees it"
    (answer,) = tool_answers(session)
    assert "may only write *.md" in answer["error"]
    assert session.pending == {}


def test_a_call_needing_approval_refuses_an_early_result_then_runs_once_approved() -> None:
    dispatcher, session, subscriber = make()
    dispatcher.begin("write", None)
    arguments = {"path": "a.py", "content": "x"}
    assert dispatcher.after_reply(reply(("write_file", arguments))) is Next.WAIT
    (read,) = queued(dispatcher)
    assert read == ToolCallEvent(
        "call_0.1",
        "read_file",
        {"path": "a.py"},
        False,
        "",
        {"parent_call_id": "call_0", "parent_tool": "write_file"},
    ), "the file's previous state is read first, without approval"
    assert session.pending["call_0"].state is CallState.RUNNING
    assert read_first(dispatcher, "call_0.1", "a.py") is Next.WAIT
    offered = queued(dispatcher)[-1]
    assert isinstance(offered, ToolCallEvent)
    assert (offered.call_id, offered.arguments) == ("call_0.2", arguments)
    assert offered.requires_approval
    assert offered.metadata["diff"] == "--- /dev/null\n+++ b/a.py\n@@ -0,0 +1 @@\n+x\n" + (
        "\\ No newline at end of file\n"
    )
    for early in ("call_0.2", "call_0"):
        assert answers.on_tool_result(dispatcher, ToolResult(early, result={})) is Next.NOTHING
    refusal, never_sent = sent(subscriber)
    assert refusal.seq == 0
    assert isinstance(refusal.event, ErrorEvent)
    assert refusal.event.code == "approval_required"
    assert isinstance(never_sent.event, ErrorEvent)
    assert never_sent.event.code == "unknown_call_id", "the model's own call is not the IDE's"
    assert answers.on_approval(dispatcher, ApprovalDecision("call_0", "approve")) is Next.NOTHING
    assert answers.on_approval(dispatcher, ApprovalDecision("call_0.2", "approve")) is Next.WAIT
    assert queued(dispatcher)[-1] == ToolCallEvent(
        "call_0.2", "write_file", arguments, False, "approved", offered.metadata
    )
    decided = dispatcher.stream.step().calls[-1]
    assert (decided.call_id, decided.status, decided.decided_by) == (
        "call_0.2",
        "approved",
        "alice",
    )
    assert tool_answers(session) == [], "the model's call waits for the write"
    assert (
        answers.on_tool_result(dispatcher, ToolResult("call_0.2", result={"ok": True}))
        is Next.MODEL
    )
    assert tool_answers(session) == [{"result": {"ok": True}}]
    assert session.messages[-1].tool_call_id == "call_0"
    assert row_of(dispatcher, "call_0").status == "completed"
    (checkpoint,) = dispatcher.stream.step().checkpoints
    assert (checkpoint.path, checkpoint.before, checkpoint.after) == ("a.py", None, "x")


def test_an_edit_is_checked_by_the_gate_again() -> None:
    dispatcher, session, subscriber = make()
    dispatcher.begin("write", None)
    dispatcher.after_reply(reply(("write_file", {"path": "a.py", "content": "x"})))
    read_first(dispatcher, "call_0.1", "a.py")
    edit = ApprovalDecision("call_0.2", "edit", {"path": "../b.py", "content": "y"})
    assert answers.on_approval(dispatcher, edit) is Next.NOTHING
    (refusal,) = sent(subscriber)
    assert isinstance(refusal.event, ErrorEvent)
    assert refusal.event.code == "invalid_edit"
    assert "escapes the workspace" in refusal.event.message
    assert session.pending["call_0.2"].state is CallState.AWAITING_APPROVAL


def test_an_edit_of_a_tool_the_runtime_does_not_checkpoint_is_checked_by_the_gate_again() -> None:
    dispatcher, session, subscriber = make("debug")
    dispatcher.begin("run", None)
    dispatcher.after_reply(reply(("execute_command", {"command": "pytest"})))
    (offered,) = queued(dispatcher)
    assert isinstance(offered, ToolCallEvent)
    assert (offered.call_id, offered.requires_approval, offered.metadata) == ("call_0", True, {})
    edit = ApprovalDecision("call_0", "edit", {"command": 7})
    assert answers.on_approval(dispatcher, edit) is Next.NOTHING
    (refusal,) = sent(subscriber)
    assert isinstance(refusal.event, ErrorEvent)
    assert refusal.event.code == "invalid_edit"
    assert session.pending["call_0"].state is CallState.AWAITING_APPROVAL
    edit = ApprovalDecision("call_0", "edit", {"command": "pytest -x"})
    assert answers.on_approval(dispatcher, edit) is Next.WAIT
    assert queued(dispatcher)[-1] == ToolCallEvent(
        "call_0", "execute_command", {"command": "pytest -x"}, False, "edited"
    )


def test_a_tool_that_ends_the_turn_waits_for_the_other_calls_first() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("read and finish", None)
    step = reply(("read_file", {"path": "a"}), ("attempt_completion", {"result": "all done"}))
    assert dispatcher.after_reply(step) is Next.WAIT
    assert AssistantText("all done") in queued(dispatcher)
    assert answers.on_tool_result(dispatcher, ToolResult("call_0", error="gone")) is Next.DONE
    assert session.state == "idle"
    assert queued(dispatcher)[-1] == TurnDone(TurnStatus.COMPLETED, Usage(3, 2))


@pytest.mark.parametrize(
    ("tool", "arguments", "shown"),
    [
        ("attempt_completion", {"result": "done"}, "done"),
        ("ask_followup_question", {"question": "which file?"}, "which file?"),
    ],
)
def test_completion_and_a_question_end_the_turn(
    tool: str, arguments: dict[str, Any], shown: str
) -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("go", None)
    assert dispatcher.after_reply(reply((tool, arguments))) is Next.DONE
    assert queued(dispatcher) == [
        AssistantText(shown),
        TurnDone(TurnStatus.COMPLETED, Usage(3, 2)),
    ]
    assert len(tool_answers(session)) == 1


def test_a_switch_that_widens_rights_waits_for_a_human_then_runs_here() -> None:
    dispatcher, session, _ = make("ask")
    dispatcher.begin("fix it", None)
    switch = ("switch_mode", {"agent": "coder", "reason": "needs edits"})
    assert dispatcher.after_reply(reply(switch)) is Next.WAIT
    (offered,) = queued(dispatcher)
    assert isinstance(offered, ToolCallEvent)
    assert offered.requires_approval
    assert "write_file" in offered.reason
    assert session.agent == "ask"
    assert answers.on_approval(dispatcher, ApprovalDecision("call_0", "approve")) is Next.MODEL
    assert session.agent == "coder"
    assert queued(dispatcher)[-1] == AgentSwitched("ask", "coder", "needs edits", 1.0)
    assert tool_answers(session) == [{"result": "switched to coder; continue the request as coder"}]


def test_a_switch_that_narrows_rights_happens_at_once() -> None:
    dispatcher, session, _ = make("coder")
    dispatcher.begin("explain", None)
    switch = ("switch_mode", {"agent": "ask", "reason": "a question"})
    assert dispatcher.after_reply(reply(switch)) is Next.MODEL
    assert session.agent == "ask"
    assert queued(dispatcher) == [AgentSwitched("coder", "ask", "a question", 1.0)]


def test_a_plan_waits_for_approval_and_a_rejection_goes_back_to_the_model() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("plan", None)
    steps = [{"id": "1", "description": "read", "status": "pending"}]
    plan = ("update_plan", {"plan_id": "p", "steps": steps, "requires_approval": True})
    assert dispatcher.after_reply(reply(plan)) is Next.WAIT
    (update,) = queued(dispatcher)
    assert isinstance(update, PlanUpdate)
    assert update.requires_approval
    rejection = PlanApproval("p", "reject", feedback="smaller")
    assert answers.on_plan_approval(dispatcher, rejection) is Next.MODEL
    assert tool_answers(session) == [{"error": "the user rejected the plan", "feedback": "smaller"}]


def test_the_model_call_limit_fails_the_turn() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("loop", None)
    taken = [dispatcher.take_model_call() for _ in range(MAX_MODEL_CALLS_PER_TURN + 1)]
    assert taken.count(True) == MAX_MODEL_CALLS_PER_TURN
    assert taken[-1] is False
    assert session.state == "idle"
    limit, done = queued(dispatcher)
    assert isinstance(limit, ErrorEvent)
    assert limit.code == "turn_limit"
    assert done == TurnDone(TurnStatus.FAILED)


def test_cancel_answers_every_open_call_in_history() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("read two", None)
    step = reply(("read_file", {"path": "a"}), ("write_file", {"path": "b", "content": ""}))
    dispatcher.after_reply(step)
    assert dispatcher.cancel("cancelled by the user") is Next.DONE
    assert session.pending == {}
    assert tool_answers(session) == [{"error": "cancelled by the user"}] * 2
    assert queued(dispatcher)[-1] == TurnDone(TurnStatus.CANCELLED, Usage(3, 2))


def test_a_failure_closes_open_calls_and_carries_its_error() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("read", None)
    dispatcher.after_reply(reply(("read_file", {"path": "a"})))
    error = ErrorEvent("turn_interrupted", "restarted", True)
    assert dispatcher.fail(error, "the runtime restarted") is Next.DONE
    assert tool_answers(session) == [{"error": "the runtime restarted"}]
    assert queued(dispatcher)[-2:] == [error, TurnDone(TurnStatus.FAILED, Usage(3, 2))]


def test_answers_that_do_not_fit_are_refused_and_change_nothing() -> None:
    dispatcher, session, subscriber = make()
    assert answers.on_tool_result(dispatcher, ToolResult("call_x", result={})) is Next.NOTHING
    assert answers.on_approval(dispatcher, ApprovalDecision("call_x", "approve")) is Next.NOTHING
    assert answers.on_plan_approval(dispatcher, PlanApproval("p", "approve")) is Next.NOTHING
    codes = [item.event.code for item in sent(subscriber) if isinstance(item.event, ErrorEvent)]
    assert codes == ["unknown_call_id", "unknown_call_id", "unknown_plan"]
    assert session.messages == []
    assert queued(dispatcher) == []


# -- a client that approves by running the call (the CodeLab IDE's profile) ----

IDE = ClientOptions(
    approves_by_result=True,
    tools=frozenset(
        {
            "read_file",
            "write_file",
            "list_files",
            "search_in_code",
            "create_directory",
            "execute_command",
        }
    ),
)


def test_a_result_from_a_client_that_approves_by_running_is_its_approval() -> None:
    dispatcher, session, subscriber = make()
    dispatcher.begin("write", None, IDE)
    arguments = {"path": "a.py", "content": "x = 1\n"}
    dispatcher.after_reply(reply(("write_file", arguments)))
    assert read_first(dispatcher, "call_0.1", "a.py", "x = 0\n", IDE) is Next.WAIT
    offered = queued(dispatcher)[-1]
    assert isinstance(offered, ToolCallEvent)
    assert offered.call_id == "call_0.2"
    assert offered.requires_approval
    events_before = len(queued(dispatcher))

    answer = ToolResult("call_0.2", result={"success": True})
    assert answers.on_tool_result(dispatcher, answer, IDE) is Next.MODEL
    assert sent(subscriber) == []  # no refusal
    assert len(queued(dispatcher)) == events_before  # not offered again to run
    decided = row_of(dispatcher, "call_0.2")
    assert (decided.status, decided.decided_by) == ("completed", "alice")
    assert decided.decided_at is not None
    assert decided.final_arguments == arguments  # what the IDE ran
    assert session.messages[-1].tool_call_id == "call_0"
    assert json.loads(session.messages[-1].content) == {"result": {"success": True}}
    assert not session.pending
    (checkpoint,) = dispatcher.stream.step().checkpoints
    assert (checkpoint.before, checkpoint.after) == ("x = 0\n", "x = 1\n")


def test_an_error_from_a_client_that_approves_by_running_fails_the_call() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("write", None, IDE)
    dispatcher.after_reply(reply(("write_file", {"path": "a.py", "content": "x"})))
    read_first(dispatcher, "call_0.1", "a.py", None, IDE)
    assert (
        answers.on_tool_result(dispatcher, ToolResult("call_0.2", error="disk full"), IDE)
        is Next.MODEL
    )
    failed = row_of(dispatcher, "call_0.2")
    assert (failed.status, failed.decided_by) == ("failed", None)
    assert row_of(dispatcher, "call_0").status == "failed"
    assert json.loads(session.messages[-1].content) == {"error": "disk full"}
    assert dispatcher.stream.step().checkpoints == [], "nothing changed: nothing to undo"


def test_the_model_is_offered_only_the_tools_the_client_implements() -> None:
    dispatcher, session, _ = make()
    assert {"delete_file", "move_file"} <= dispatcher.agent.tools  # strict: every tool
    dispatcher.begin("delete", None, IDE)
    assert "delete_file" not in dispatcher.agent.tools
    assert "move_file" not in dispatcher.agent.tools
    assert {"write_file", "switch_mode", "attempt_completion"} <= dispatcher.agent.tools
    # A call of a tool the client lacks is refused to the model, never offered.
    assert dispatcher.after_reply(reply(("delete_file", {"path": "a.py"}))) is Next.MODEL
    assert not any(isinstance(event, ToolCallEvent) for event in queued(dispatcher))
    assert "error" in json.loads(session.messages[-1].content)


def test_a_plan_is_shown_not_waited_on_for_a_client_that_approves_by_running() -> None:
    dispatcher, session, _ = make("architect")
    dispatcher.begin("plan", None, IDE)
    plan = {
        "plan_id": "p1",
        "steps": [{"id": "1", "description": "read", "status": "pending"}],
        "requires_approval": True,
    }
    assert dispatcher.after_reply(reply(("update_plan", plan))) is Next.MODEL
    (published,) = [e for e in queued(dispatcher) if isinstance(e, PlanUpdate)]
    assert not published.requires_approval
    assert not session.pending


# -- the mistakes limit --------------------------------------------------------


def test_three_failed_calls_in_a_row_stop_the_turn_and_ask_the_user() -> None:
    dispatcher, session, _ = make("architect")
    dispatcher.begin("write main.py", None)
    refused = ("write_file", {"path": "main.py", "content": "x"})
    for _ in range(3):
        assert dispatcher.take_model_call()
        assert dispatcher.after_reply(reply(refused)) is Next.MODEL
    assert not dispatcher.take_model_call(), "no fourth model call"
    assert dispatcher.turn.model_calls == 3
    *_, asked, done = queued(dispatcher)
    assert isinstance(asked, AssistantText)
    assert "after 3 failed tool calls in a row" in asked.text
    assert "write_file" in asked.text
    assert "may only write *.md" in asked.text, "the last error, quoted"
    assert asked.text.endswith("How would you like me to proceed?")
    assert done == TurnDone(TurnStatus.COMPLETED, Usage(9, 6))
    assert session.messages[-1] == ChatMessage("assistant", asked.text)
    assert session.state == "idle"


def test_two_failures_and_a_success_do_not_stop_the_turn() -> None:
    """IDE errors count (Dispatcher.resolve); a result resets the count."""
    dispatcher, _, _ = make()
    dispatcher.begin("read", None)

    def read(**answer: Any) -> Next:
        assert dispatcher.take_model_call()
        assert dispatcher.after_reply(reply(("read_file", {"path": "a.py"}))) is Next.WAIT
        return answers.on_tool_result(dispatcher, ToolResult("call_0", **answer))

    assert read(error="no such file") is Next.MODEL
    assert read(error="no such file") is Next.MODEL
    assert read(result={"content": "x"}) is Next.MODEL
    assert read(error="no such file") is Next.MODEL
    assert read(error="no such file") is Next.MODEL
    assert dispatcher.take_model_call(), "two failures in a row since the success"
    assert dispatcher.turn.mistakes == 2


def test_rejections_are_not_mistakes_and_zero_turns_the_limit_off() -> None:
    dispatcher, _, _ = make()
    dispatcher.begin("write", None)
    for _ in range(3):
        assert dispatcher.take_model_call()
        dispatcher.after_reply(reply(("write_file", {"path": "a.py", "content": "x"})))
        answers.on_approval(dispatcher, ApprovalDecision("call_0", "reject"))
    assert dispatcher.take_model_call(), "the user said no: the model adapts, it did not fail"
    dispatcher.max_mistakes = 0
    for _ in range(5):
        dispatcher.after_reply(reply(("switch_mode", {"agent": "nobody", "reason": "r"})))
    assert dispatcher.turn.mistakes == 5
    assert dispatcher.take_model_call()


# -- the user's approval rules ---------------------------------------------------


def ruled(allow: list[str], deny: list[str] = [], **limits: Any) -> Dispatcher:  # noqa: B006
    dispatcher, _, _ = make(limits=OperatorLimits(**limits) if limits else DEFAULT_LIMITS)
    dispatcher.rules = ApprovalRules.from_json({"allow": allow, "deny": deny})
    dispatcher.begin("go", None)
    return dispatcher


def offered(dispatcher: Dispatcher) -> list[ToolCallEvent]:
    return [event for event in queued(dispatcher) if isinstance(event, ToolCallEvent)]


def test_an_allowed_command_runs_unasked_and_its_row_says_which_rule() -> None:
    dispatcher = ruled(["execute_command(pytest:*)"])
    assert dispatcher.after_reply(reply(("execute_command", {"command": "pytest -q"}))) is Next.WAIT
    reason = "auto-approved by your rule execute_command(pytest:*)"
    assert offered(dispatcher) == [
        ToolCallEvent("call_0", "execute_command", {"command": "pytest -q"}, False, reason)
    ]
    assert dispatcher.session.pending["call_0"].state is CallState.AWAITING_RESULT
    (row,) = dispatcher.stream.step().calls
    assert (row.status, row.reason, row.decided_by) == ("awaiting_result", reason, None)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("pytest; rm -rf x", "always asked: rm -r (recursive delete)"),
        ("pytest $(whoami)", "command substitution"),
        ("pytestx", "no rule allows pytestx"),
    ],
)
def test_a_command_the_rules_do_not_cover_is_asked_saying_why(line: str, why: str) -> None:
    dispatcher = ruled(["execute_command(pytest:*)"])
    dispatcher.after_reply(reply(("execute_command", {"command": line})))
    (call,) = offered(dispatcher)
    assert call.requires_approval
    assert call.reason.startswith("execute_command changes the workspace or runs a command (")
    assert why in call.reason


def test_without_rules_for_the_tool_the_reason_is_the_policys() -> None:
    dispatcher = ruled(["edit(src/**)"])
    dispatcher.after_reply(reply(("execute_command", {"command": "ls"})))
    (call,) = offered(dispatcher)
    assert (call.requires_approval, call.reason) == (
        True,
        "execute_command changes the workspace or runs a command",
    )


def test_a_deny_rule_refuses_the_call_even_a_read_and_the_model_is_told() -> None:
    dispatcher = ruled(["read"], ["read(.env)"])
    step = reply(("read_file", {"path": "config/.env"}), ("read_file", {"path": "a.py"}))
    assert dispatcher.after_reply(step) is Next.WAIT
    assert [call.call_id for call in offered(dispatcher)] == ["call_1"]
    (denied,) = tool_answers(dispatcher.session)
    assert denied == {"error": "denied by your approval rules: read(.env) matches config/.env"}


def test_the_turn_cap_asks_for_the_call_after_the_last_auto_approved_one() -> None:
    dispatcher = ruled(["create_directory"], max_auto_approvals_per_turn=2)
    dispatcher.after_reply(reply(*(("create_directory", {"path": f"d{i}"}) for i in range(3))))
    assert [call.requires_approval for call in offered(dispatcher)] == [False, False, True]
    assert "this turn's 2 auto-approved calls are used up" in offered(dispatcher)[2].reason
    dispatcher.begin("again", None)  # a new turn, a new count
    dispatcher.after_reply(reply(("create_directory", {"path": "d3"})))
    assert offered(dispatcher)[-1].requires_approval is False


def test_the_users_own_cap_is_lower_than_the_operators() -> None:
    dispatcher = ruled(["create_directory"], max_auto_approvals_per_turn=5)
    dispatcher.rules = ApprovalRules.from_json(
        {"allow": ["create_directory"], "max_auto_approvals_per_turn": 1}
    )
    dispatcher.after_reply(reply(*(("create_directory", {"path": f"d{i}"}) for i in range(2))))
    assert [call.requires_approval for call in offered(dispatcher)] == [False, True]


def test_the_operator_decides_which_tools_rules_may_auto_approve() -> None:
    dispatcher = ruled(
        ["execute_command", "edit"], user_auto_approve=frozenset({"create_directory"})
    )
    step = reply(("execute_command", {"command": "ls"}), ("create_directory", {"path": "d"}))
    dispatcher.after_reply(step)
    command, mkdir = offered(dispatcher)
    assert command.requires_approval
    assert "the operator lets no rule auto-approve execute_command" in command.reason
    assert (mkdir.tool_name, mkdir.requires_approval) == ("create_directory", False)


def test_a_change_is_read_first_then_written_as_the_rules_say() -> None:
    """A change runs as a read then the write (runtime.subcalls): the rules
    decide the write's approval, and a deny rule stops it before the read."""
    dispatcher = ruled(["edit(src/**)"], ["edit(*.lock)"])
    step = reply(
        ("write_file", {"path": "src/a.py", "content": "x"}),
        ("write_file", {"path": "lib/b.py", "content": "y"}),
        ("delete_file", {"path": "src/poetry.lock"}),
    )
    dispatcher.after_reply(step)
    assert [call.call_id for call in offered(dispatcher)] == ["call_0.1", "call_1.1"]
    (denied,) = tool_answers(dispatcher.session)
    assert denied["error"].startswith("denied by your approval rules: edit(*.lock) matches")
    for read in ("call_0.1", "call_1.1"):
        answers.on_tool_result(dispatcher, ToolResult(read, result={"content": "old"}))
    writes = {call.call_id: call for call in offered(dispatcher) if call.tool_name == "write_file"}
    assert not writes["call_0.2"].requires_approval
    assert writes["call_0.2"].reason == "auto-approved by your rule edit(src/**)"
    assert writes["call_1.2"].requires_approval
    assert "no rule allows write_file of lib/b.py" in writes["call_1.2"].reason


def test_always_allow_names_the_rule_and_the_call_is_approved() -> None:
    dispatcher = ruled([])
    dispatcher.after_reply(reply(("execute_command", {"command": "npm test -- -q"})))
    decision = ApprovalDecision("call_0", "approve", always_allow=True)
    rule = answers.always_allow(dispatcher, decision)
    assert rule is not None
    assert rule.text == "execute_command(npm test:*)"
    assert answers.on_approval(dispatcher, decision) is Next.WAIT
    assert offered(dispatcher)[-1].reason == "approved"


@pytest.mark.parametrize(
    ("line", "decision", "why", "status"),
    [
        ("pytest; rm -rf x", "approve", "always asked: rm -r (recursive delete)", "approved"),
        ("pytest && ls", "approve", "a line of several commands", "approved"),
        ("pytest", "reject", "always_allow goes with approve", "rejected"),
    ],
)
def test_always_allow_of_an_unsuitable_call_adds_nothing_but_the_decision_stands(
    line: str, decision: str, why: str, status: str
) -> None:
    dispatcher = ruled([])
    dispatcher.after_reply(reply(("execute_command", {"command": line})))
    subscriber = dispatcher.stream.subscribe()
    event = ApprovalDecision("call_0", decision, always_allow=True)
    assert answers.always_allow(dispatcher, event) is None
    (error,) = sent(subscriber)
    assert isinstance(error.event, ErrorEvent)
    assert (error.seq, error.event.code) == (0, "rule_not_added")
    assert why in error.event.message
    answers.on_approval(dispatcher, event)
    assert dispatcher.stream.step().calls[-1].status == status


def test_always_allow_respects_the_operators_floor() -> None:
    dispatcher = ruled([], user_auto_approve=frozenset({"write_file"}))
    dispatcher.after_reply(reply(("execute_command", {"command": "pytest"})))
    subscriber = dispatcher.stream.subscribe()
    event = ApprovalDecision("call_0", "approve", always_allow=True)
    assert answers.always_allow(dispatcher, event) is None
    (error,) = sent(subscriber)
    assert "operator lets no rule auto-approve execute_command" in error.event.message  # type: ignore[union-attr]


def test_always_allow_for_an_unknown_call_is_left_to_the_decision() -> None:
    dispatcher = ruled([])
    event = ApprovalDecision("call_x", "approve", always_allow=True)
    assert answers.always_allow(dispatcher, event) is None
    assert answers.on_approval(dispatcher, event) is Next.NOTHING
