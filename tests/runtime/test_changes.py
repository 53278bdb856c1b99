"""Agents' changes to the workspace, and their undo, as the runtime runs them.

A model's ``write_file``, ``delete_file``, ``move_file``, ``apply_diff`` or
``insert_content`` waits as a RUNNING call while the runtime issues IDE
calls of its own: a ``read_file`` of each path (the file's previous state),
then the call that makes the change, with the diff a human approves. Once
that is answered the model's call is, and a checkpoint records each file
before and after. Most of these drive a :class:`~runtime.dispatch.Dispatcher`
without a database (tests/runtime/test_dispatch.py); an undo reads the
checkpoints from the store, so the last ones drive a Conversation.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import answers, edits, subcalls
from runtime.commands import STRICT, ApprovalDecision, ClientOptions, ToolResult, Undo, UserMessage
from runtime.dispatch import Dispatcher, Next
from runtime.events import (
    AssistantText,
    ErrorEvent,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.llm import ChatMessage, TextChunk
from runtime.records import Checkpoint
from runtime.state import CallState
from runtime.store import Store
from tests.runtime.test_conversation import ScriptedLlm, call, until
from tests.runtime.test_conversation import make as conversation_of
from tests.runtime.test_conversation import read_first as answer_read
from tests.runtime.test_dispatch import (
    IDE,
    make,
    queued,
    read_first,
    reply,
    row_of,
    sent,
    tool_answers,
)

REASON = "{} changes the workspace or runs a command"
"""Why the gate asks a human about a change (runtime.policy)."""


def offered(dispatcher: Dispatcher) -> ToolCallEvent:
    """The last call the open step offers."""
    event = queued(dispatcher)[-1]
    assert isinstance(event, ToolCallEvent)
    return event


def offered_tools(dispatcher: Dispatcher) -> list[str]:
    return [e.tool_name for e in queued(dispatcher) if isinstance(e, ToolCallEvent)]


def run(dispatcher: Dispatcher, call_id: str, *, approve: bool = True) -> Next:
    """The human approves ``call_id`` (when asked) and the IDE runs it."""
    if approve:
        assert answers.on_approval(dispatcher, ApprovalDecision(call_id, "approve")) is Next.WAIT
    return answers.on_tool_result(dispatcher, ToolResult(call_id, result={"ok": True}))


def checkpoints(dispatcher: Dispatcher) -> list[tuple[int, str, str | None, str | None]]:
    """The checkpoints the open step writes: (turn, path, before, after)."""
    return [(c.turn, c.path, c.before, c.after) for c in dispatcher.stream.step().checkpoints]


def changing(tool: str, arguments: dict[str, Any], **options: Any) -> Dispatcher:
    """A dispatcher whose model just asked for ``tool``: the change is RUNNING."""
    dispatcher, session, _ = make(**options)
    dispatcher.begin(f"{tool} please", None)
    assert dispatcher.after_reply(reply((tool, arguments))) is Next.WAIT
    assert session.pending["call_0"].state is CallState.RUNNING
    assert "call_0" not in [e.call_id for e in queued(dispatcher) if isinstance(e, ToolCallEvent)]
    return dispatcher


# -- a change: read first, then the change, then its checkpoint ----------------


def test_a_write_of_a_new_file_records_it_absent_before() -> None:
    dispatcher, session, _ = make()
    dispatcher.begin("hi", None)
    dispatcher.after_reply(reply(text="hello"))
    dispatcher.begin("write a.py", None)  # the turn of the user message at position 2
    dispatcher.after_reply(reply(("write_file", {"path": "a.py", "content": "x = 1\n"})))
    assert read_first(dispatcher, "call_0.1", "a.py") is Next.WAIT
    assert offered(dispatcher) == ToolCallEvent(
        "call_0.2",
        "write_file",
        {"path": "a.py", "content": "x = 1\n"},
        True,
        REASON.format("write_file"),
        {
            "parent_call_id": "call_0",
            "parent_tool": "write_file",
            "diff": "--- /dev/null\n+++ b/a.py\n@@ -0,0 +1 @@\n+x = 1\n",
        },
    )
    assert checkpoints(dispatcher) == [], "nothing is recorded before the change is made"
    assert run(dispatcher, "call_0.2") is Next.MODEL
    assert checkpoints(dispatcher) == [(2, "a.py", None, "x = 1\n")]
    # The model's history holds its own call, answered once, and none of the runtime's.
    assert [c.call_id for m in session.messages for c in m.tool_calls] == ["call_0"]
    assert [m.tool_call_id for m in session.messages if m.role == "tool"] == ["call_0"]
    assert tool_answers(session) == [{"result": {"ok": True}}]
    read, change = row_of(dispatcher, "call_0.1"), row_of(dispatcher, "call_0.2")
    assert (read.parent_call_id, read.status) == ("call_0", "failed"), "not found: absent"
    assert (change.parent_call_id, change.status) == ("call_0", "completed")
    assert row_of(dispatcher, "call_0").status == "completed"


def test_a_write_over_a_file_records_its_old_content() -> None:
    dispatcher = changing("write_file", {"path": "a.py", "content": "new\n"})
    read_first(dispatcher, "call_0.1", "a.py", "old\n")
    write = offered(dispatcher)
    assert write.metadata["diff"] == "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-old\n+new\n"
    run(dispatcher, "call_0.2")
    assert checkpoints(dispatcher) == [(0, "a.py", "old\n", "new\n")]


@pytest.mark.parametrize(
    "absent",
    [
        "File not found: a.py",  # the CodeLab IDE
        "'a.py' is not a file",  # ide/workspace.py
        "ENOENT: no such file or directory, open 'a.py'",
        "a.py does not exist",
    ],
)
def test_each_way_an_ide_says_a_file_is_missing_is_an_absent_file(absent: str) -> None:
    dispatcher = changing("write_file", {"path": "a.py", "content": "x"})
    answers.on_tool_result(dispatcher, ToolResult("call_0.1", error=absent))
    run(dispatcher, "call_0.2")
    assert checkpoints(dispatcher) == [(0, "a.py", None, "x")]


ORIGINAL = "def f():\n    return 1\n\n\ndef g():\n    return 2\n"


def test_apply_diff_offers_a_write_of_the_edited_file_with_its_diff() -> None:
    blocks = [{"search": "    return 2\n", "replace": "    return 3\n"}]
    dispatcher = changing("apply_diff", {"path": "m.py", "blocks": blocks})
    session = dispatcher.session
    read_first(dispatcher, "call_0.1", "m.py", ORIGINAL)
    edited = ORIGINAL.replace("return 2", "return 3")
    write = offered(dispatcher)
    assert (write.call_id, write.tool_name, write.arguments, write.requires_approval) == (
        "call_0.2",
        "write_file",
        {"path": "m.py", "content": edited},
        True,
    )
    assert write.reason == session.pending["call_0"].reason == REASON.format("apply_diff")
    diff = edits.unified_diff("m.py", ORIGINAL, edited)
    assert "-    return 2\n+    return 3\n" in diff
    assert write.metadata == {"parent_call_id": "call_0", "parent_tool": "apply_diff", "diff": diff}
    assert run(dispatcher, "call_0.2") is Next.MODEL
    assert tool_answers(session) == [
        {"result": {"path": "m.py", "changed": "+1 -1 lines", "diff": diff}}
    ]
    assert checkpoints(dispatcher) == [(0, "m.py", ORIGINAL, edited)]


def test_insert_content_offers_a_write_with_the_lines_inserted() -> None:
    dispatcher = changing("insert_content", {"path": "m.py", "line": 2, "content": "    # one"})
    read_first(dispatcher, "call_0.1", "m.py", ORIGINAL)
    edited = "def f():\n    # one\n    return 1\n\n\ndef g():\n    return 2\n"
    assert offered(dispatcher).arguments == {"path": "m.py", "content": edited}
    run(dispatcher, "call_0.2")
    assert tool_answers(dispatcher.session)[0]["result"]["changed"] == "+1 -0 lines"
    assert checkpoints(dispatcher) == [(0, "m.py", ORIGINAL, edited)]


def assert_failed_without_a_write(dispatcher: Dispatcher, error: str) -> None:
    """The model's call failed with an error that begins ``error``, and nothing changed."""
    (answer,) = tool_answers(dispatcher.session)
    assert answer["error"].startswith(error), answer
    assert offered_tools(dispatcher) == ["read_file"], "no change was offered"
    assert row_of(dispatcher, "call_0").status == "failed"
    assert dispatcher.session.pending == {}
    assert checkpoints(dispatcher) == []


def test_apply_diff_on_a_missing_file_fails_without_a_write() -> None:
    blocks = [{"search": "a", "replace": "b"}]
    dispatcher = changing("apply_diff", {"path": "m.py", "blocks": blocks})
    assert read_first(dispatcher, "call_0.1", "m.py") is Next.MODEL
    assert_failed_without_a_write(dispatcher, "m.py does not exist; create it with write_file")


@pytest.mark.parametrize(
    ("search", "why"),
    [("return 9", "`search` was not found"), ("    return", "`search` occurs 2 times")],
)
def test_apply_diff_whose_search_is_not_found_once_fails_without_a_write(
    search: str, why: str
) -> None:
    blocks = [{"search": search, "replace": "x"}]
    dispatcher = changing("apply_diff", {"path": "m.py", "blocks": blocks})
    assert read_first(dispatcher, "call_0.1", "m.py", ORIGINAL) is Next.MODEL
    assert_failed_without_a_write(dispatcher, f"m.py was not changed: block 1: {why}")


def test_insert_content_past_the_end_fails_without_a_write() -> None:
    dispatcher = changing("insert_content", {"path": "m.py", "line": 99, "content": "x"})
    assert read_first(dispatcher, "call_0.1", "m.py", ORIGINAL) is Next.MODEL
    assert_failed_without_a_write(dispatcher, "m.py was not changed: line 99 is past the end")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (ToolResult("call_0.1", error="permission denied"), "permission denied"),
        (
            ToolResult("call_0.1", result={"size": 12}),
            "the IDE's read_file answer has no text content",
        ),
    ],
)
def test_a_read_that_fails_otherwise_fails_the_change_without_a_write(
    answer: ToolResult, why: str
) -> None:
    dispatcher = changing("write_file", {"path": "a.py", "content": "x"})
    assert answers.on_tool_result(dispatcher, answer) is Next.MODEL
    assert_failed_without_a_write(
        dispatcher,
        f"could not read a.py to record its previous state, so it was not changed: {why}",
    )


def test_a_delete_records_the_content_it_removes() -> None:
    dispatcher = changing("delete_file", {"path": "a.py"})
    read_first(dispatcher, "call_0.1", "a.py", "x\n")
    delete = offered(dispatcher)
    assert (delete.call_id, delete.tool_name, delete.arguments) == (
        "call_0.2",
        "delete_file",
        {"path": "a.py"},
    )
    assert delete.metadata["diff"] == "--- a/a.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    run(dispatcher, "call_0.2")
    assert checkpoints(dispatcher) == [(0, "a.py", "x\n", None)]


def test_a_move_reads_both_paths_and_records_both() -> None:
    dispatcher = changing("move_file", {"source": "a.py", "destination": "lib/a.py"})
    assert read_first(dispatcher, "call_0.1", "a.py", "x\n") is Next.WAIT
    assert read_first(dispatcher, "call_0.2", "lib/a.py") is Next.WAIT
    move = offered(dispatcher)
    assert (move.call_id, move.tool_name, move.arguments, move.requires_approval) == (
        "call_0.3",
        "move_file",
        {"source": "a.py", "destination": "lib/a.py"},
        True,
    )
    assert move.metadata["diff"] == "rename from a.py\nrename to lib/a.py\n"
    run(dispatcher, "call_0.3")
    assert checkpoints(dispatcher) == [(0, "a.py", "x\n", None), (0, "lib/a.py", None, "x\n")]


def test_a_rejected_change_writes_no_checkpoint() -> None:
    dispatcher = changing("write_file", {"path": "a.py", "content": "x"})
    read_first(dispatcher, "call_0.1", "a.py", "old")
    decision = ApprovalDecision("call_0.2", "reject", feedback="not now")
    assert answers.on_approval(dispatcher, decision) is Next.MODEL
    assert tool_answers(dispatcher.session) == [
        {"error": "the user rejected this tool call", "feedback": "not now"}
    ]
    assert row_of(dispatcher, "call_0").status == "rejected"
    assert checkpoints(dispatcher) == []


def test_an_ide_error_for_the_change_writes_no_checkpoint() -> None:
    dispatcher = changing(
        "write_file", {"path": "a.py", "content": "x"}, approval_required=frozenset()
    )
    read_first(dispatcher, "call_0.1", "a.py", "old")
    assert not offered(dispatcher).requires_approval, "no approval asked: none configured"
    answer = ToolResult("call_0.2", error="disk full")
    assert answers.on_tool_result(dispatcher, answer) is Next.MODEL
    assert tool_answers(dispatcher.session) == [{"error": "disk full"}]
    assert checkpoints(dispatcher) == []


def test_an_edited_content_is_what_is_written_and_recorded() -> None:
    dispatcher, session, subscriber = make()
    dispatcher.begin("write", None)
    dispatcher.after_reply(reply(("write_file", {"path": "a.py", "content": "draft\n"})))
    read_first(dispatcher, "call_0.1", "a.py", "old\n")
    for refused in (
        {"path": "b.py", "content": "final\n"},
        {"path": "a.py", "content": "final\n", "create_dirs": True},
    ):
        edit = ApprovalDecision("call_0.2", "edit", refused)
        assert answers.on_approval(dispatcher, edit) is Next.NOTHING
    refusals = [item.event for item in sent(subscriber)]
    assert [(e.code, e.message) for e in refusals if isinstance(e, ErrorEvent)] == [
        ("invalid_edit", "an edit may change only the content written, not the paths")
    ] * 2
    final = {"path": "a.py", "content": "final\n"}
    assert answers.on_approval(dispatcher, ApprovalDecision("call_0.2", "edit", final)) is (
        Next.WAIT
    )
    execute = offered(dispatcher)
    assert (execute.arguments, execute.requires_approval, execute.reason) == (
        final,
        False,
        "edited",
    )
    assert execute.metadata["diff"] == "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-old\n+final\n"
    assert row_of(dispatcher, "call_0.2").job["after"] == {"a.py": "final\n"}  # type: ignore[index]
    run(dispatcher, "call_0.2", approve=False)
    assert tool_answers(session) == [{"result": {"ok": True}, "edited_arguments": final}]
    assert checkpoints(dispatcher) == [(0, "a.py", "old\n", "final\n")]


def test_an_edited_apply_diff_tells_the_model_the_diff_written() -> None:
    blocks = [{"search": "return 2", "replace": "return 3"}]
    dispatcher = changing("apply_diff", {"path": "m.py", "blocks": blocks})
    read_first(dispatcher, "call_0.1", "m.py", ORIGINAL)
    mine = ORIGINAL.replace("return 2", "return 4")
    edit = ApprovalDecision("call_0.2", "edit", {"path": "m.py", "content": mine})
    answers.on_approval(dispatcher, edit)
    run(dispatcher, "call_0.2", approve=False)
    (answer,) = tool_answers(dispatcher.session)
    assert answer["result"]["diff"] == edits.unified_diff("m.py", ORIGINAL, mine)
    assert checkpoints(dispatcher) == [(0, "m.py", ORIGINAL, mine)]


def test_a_cancelled_change_closes_its_calls_and_records_nothing() -> None:
    dispatcher = changing("write_file", {"path": "a.py", "content": "x"})
    read_first(dispatcher, "call_0.1", "a.py", "old")
    assert dispatcher.cancel("cancelled by the user") is Next.DONE
    assert tool_answers(dispatcher.session) == [{"error": "cancelled by the user"}]
    assert [row_of(dispatcher, c).status for c in ("call_0", "call_0.2")] == ["cancelled"] * 2
    assert checkpoints(dispatcher) == []
    subscriber = dispatcher.stream.subscribe()
    assert answers.on_tool_result(dispatcher, ToolResult("call_0.2", result={})) is Next.NOTHING
    (late,) = sent(subscriber)
    assert isinstance(late.event, ErrorEvent)
    assert late.event.code == "duplicate_tool_result", "as it is once the session reloads"


# -- undo: the same two steps per file, backwards ------------------------------

CHANGED = [
    Checkpoint(0, "a.py", "old\n", "new\n", id=1),
    Checkpoint(0, "b.py", None, "b\n", id=2),
]
"""Turn 0 changed a.py and created b.py."""


def undoing(
    history: list[Checkpoint],
    client: ClientOptions = STRICT,
    approval_required: frozenset[str] = frozenset(),
) -> tuple[Dispatcher, str]:
    """A dispatcher running an undo of ``history``'s last turn; its call's id."""
    dispatcher, session, _ = make(approval_required=approval_required)
    assert subcalls.start_undo(dispatcher, history, "", None, client) == (Next.WAIT, 0)
    assert session.state == "waiting"
    assert session.messages == [ChatMessage("user", "/undo 0")]
    read = offered(dispatcher)
    undo_id = read.metadata["parent_call_id"]
    assert (read.call_id, read.tool_name, read.metadata["parent_tool"]) == (
        f"{undo_id}.1",
        "read_file",
        "undo",
    )
    assert session.pending[undo_id].state is CallState.RUNNING
    return dispatcher, undo_id


def summary_of(dispatcher: Dispatcher) -> str:
    """The undo's last word: its summary, and the turn is over."""
    *_, said, done = queued(dispatcher)
    assert done == TurnDone(TurnStatus.COMPLETED)
    assert isinstance(said, AssistantText)
    assert dispatcher.session.messages[-1] == ChatMessage("assistant", said.text)
    assert dispatcher.session.state == "idle"
    assert dispatcher.stream.step().checkpoints == [], "an undo is no change of its own"
    return said.text


def test_an_undo_writes_back_a_changed_file_and_deletes_a_created_one() -> None:
    dispatcher, undo_id = undoing(CHANGED)
    read_first(dispatcher, f"{undo_id}.1", "a.py", "new\n")
    restore = offered(dispatcher)
    assert restore == ToolCallEvent(
        f"{undo_id}.2",
        "write_file",
        {"path": "a.py", "content": "old\n", "create_dirs": True},
        False,
        "undo restores a.py",
        {
            "parent_call_id": undo_id,
            "parent_tool": "undo",
            "diff": "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-new\n+old\n",
        },
    )
    assert run(dispatcher, restore.call_id, approve=False) is Next.WAIT
    read_first(dispatcher, f"{undo_id}.3", "b.py", "b\n")
    delete = offered(dispatcher)
    assert (delete.call_id, delete.tool_name, delete.arguments) == (
        f"{undo_id}.4",
        "delete_file",
        {"path": "b.py"},
    )
    assert run(dispatcher, delete.call_id, approve=False) is Next.DONE
    assert summary_of(dispatcher) == "Undo: Restored: a.py, b.py (deleted)."
    assert dispatcher.stream.step().undone == [1, 2], "its checkpoints are marked undone"
    assert row_of(dispatcher, undo_id).status == "completed"
    assert dispatcher.session.pending == {}


def test_a_file_changed_since_is_restored_only_with_approval() -> None:
    dispatcher, undo_id = undoing(CHANGED[:1])
    read_first(dispatcher, f"{undo_id}.1", "a.py", "new\nmine\n")
    restore = offered(dispatcher)
    assert restore.requires_approval, "asked although no approval is configured"
    assert restore.reason == (
        "a.py changed since the agent wrote it: undoing discards those changes"
    )
    assert "-mine\n" in restore.metadata["diff"]
    assert run(dispatcher, restore.call_id) is Next.DONE
    assert summary_of(dispatcher) == "Undo: Restored: a.py."


def test_a_file_already_as_it_was_is_left_alone() -> None:
    dispatcher, undo_id = undoing(CHANGED)
    read_first(dispatcher, f"{undo_id}.1", "a.py", "old\n")
    assert read_first(dispatcher, f"{undo_id}.2", "b.py") is Next.DONE
    assert offered_tools(dispatcher) == ["read_file", "read_file"]
    assert summary_of(dispatcher) == (
        "Undo: Restored: a.py (already as it was), b.py (already as it was)."
    )
    assert dispatcher.stream.step().undone == [1, 2]


def test_a_client_that_cannot_delete_keeps_a_created_file_and_is_told() -> None:
    assert "delete_file" not in (IDE.tools or ())
    dispatcher, undo_id = undoing(CHANGED[1:], IDE)
    assert read_first(dispatcher, f"{undo_id}.1", "b.py", "b\n", IDE) is Next.DONE
    assert offered_tools(dispatcher) == ["read_file"]
    assert summary_of(dispatcher) == "Undo: Not restored: b.py (this IDE cannot delete files)."
    assert dispatcher.stream.step().undone == [], "still undoable"


def test_a_restore_is_approved_or_rejected_never_edited() -> None:
    dispatcher, undo_id = undoing(CHANGED[:1], approval_required=frozenset({"write_file"}))
    subscriber = dispatcher.stream.subscribe()
    read_first(dispatcher, f"{undo_id}.1", "a.py", "new\n")
    restore = offered(dispatcher)
    assert (restore.requires_approval, restore.reason) == (True, "undo restores a.py")
    edit = ApprovalDecision(
        restore.call_id, "edit", {"path": "a.py", "content": "other\n", "create_dirs": True}
    )
    assert answers.on_approval(dispatcher, edit) is Next.NOTHING
    (refused,) = [item.event for item in sent(subscriber)]
    assert isinstance(refused, ErrorEvent)
    assert (refused.code, refused.message) == (
        "invalid_edit",
        "only the content an agent's change writes can be edited; approve or reject",
    )
    reject = ApprovalDecision(restore.call_id, "reject")
    assert answers.on_approval(dispatcher, reject) is Next.DONE
    assert summary_of(dispatcher) == (
        "Undo: Not restored: a.py (the user rejected this tool call)."
    )
    assert dispatcher.stream.step().undone == []


# -- undo in a conversation: checkpoints from the store ------------------------


async def test_an_undo_after_a_turn_restores_its_file_and_marks_it_undone(store: Store) -> None:
    llm = ScriptedLlm([call("write_file", path="a.py", content="new\n")], [TextChunk("Written.")])
    conversation, outbox, session = await conversation_of(store, llm)
    await conversation.handle(UserMessage("write a.py"))
    write = await answer_read(conversation, outbox, "a.py", "old\n")
    await conversation.handle(ApprovalDecision(write.call_id, "approve"))
    await conversation.handle(ToolResult(write.call_id, result={"ok": True}))
    await until(outbox, TurnDone)
    (written,) = await store.checkpoints.of_session(session.session_id)
    assert (written.turn, written.path, written.before, written.after, written.undone) == (
        0,
        "a.py",
        "old\n",
        "new\n",
        False,
    )

    await conversation.handle(Undo())
    restore = await answer_read(conversation, outbox, "a.py", "new\n")
    assert (restore.tool_name, restore.arguments, restore.requires_approval) == (
        "write_file",
        {"path": "a.py", "content": "old\n", "create_dirs": True},
        True,  # write_file needs approval here, an undo's too
    )
    await conversation.handle(ApprovalDecision(restore.call_id, "approve"))
    await conversation.handle(ToolResult(restore.call_id, result={"ok": True}))
    events = await until(outbox, TurnDone)
    assert AssistantText("Undo: Restored: a.py.") in events
    assert events[-1] == TurnDone(TurnStatus.COMPLETED)
    assert len(llm.seen) == 2, "an undo calls no model"
    (undone,) = await store.checkpoints.of_session(session.session_id)
    assert undone.undone
    assert [m.content for m in session.messages[-2:]] == ["/undo 0", "Undo: Restored: a.py."]
    assert await store.pending_calls(session.session_id) == []

    await conversation.handle(Undo())
    (refused,) = await until(outbox, ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert (refused.code, refused.message) == (
        "nothing_to_undo",
        "no change of this session is left to undo",
    )


async def test_an_undo_is_refused_while_a_turn_runs(store: Store) -> None:
    llm = ScriptedLlm([call("write_file", path="a.py", content="x")])
    conversation, outbox, session = await conversation_of(store, llm)
    await conversation.handle(UserMessage("write a.py"))
    write = await answer_read(conversation, outbox, "a.py")
    await conversation.handle(Undo())
    (refused,) = await until(outbox, ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert (refused.code, refused.retryable) == ("turn_in_progress", True)
    assert session.pending[write.call_id].state is CallState.AWAITING_APPROVAL, "untouched"
    assert session.messages[-1].role == "assistant", "no undo turn began"


@pytest.mark.parametrize(
    ("turn_id", "why"),
    [("", "no change of this session is left to undo"), ("3", "turn '3' changed no file")],
)
async def test_an_undo_with_nothing_to_undo_is_refused(
    store: Store, turn_id: str, why: str
) -> None:
    conversation, outbox, session = await conversation_of(store, ScriptedLlm())
    await conversation.handle(Undo(turn_id))
    (refused,) = await until(outbox, ErrorEvent)
    assert isinstance(refused, ErrorEvent)
    assert (refused.code, refused.message) == ("nothing_to_undo", why)
    assert session.messages == []
    assert not conversation.turn_running
