"""Issue 3's agent flows over the real mesh, driven the way the terminal client drives them.

Each test opens a fresh session through the gateway, with a real workspace
folder in which :class:`ide.turns.IdeSession` executes the tool calls; the
offline model's playbook (``llmproxy/playbook.py``) plays the LLM.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import ROOT, Mesh


class Approvals:
    """A scripted human: answers approval prompts in order, records them."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, frame: dict[str, Any]) -> Decision:
        self.asked.append(frame)
        return self.decisions.pop(0)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "a.txt").write_text("alpha file\n")
    (tmp_path / "b.txt").write_text("bravo file\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    root = tmp_path / "project"
    root.mkdir()
    (root / "a.txt").write_text("hello from a\n")
    (root / "b.txt").write_text("hello from b\n")
    return Workspace(root)


@pytest.fixture
async def connection(mesh: Mesh) -> AsyncIterator[IdeConnection]:
    async with IdeConnection(mesh.ws_url, f"agents-{uuid.uuid4().hex[:10]}", mesh.token) as conn:
        info = await conn.next_frame()
        assert info["metadata"]["agent"] == "orchestrator"
        yield conn


def session(
    connection: IdeConnection, workspace: Workspace, approvals: Approvals | None = None
) -> IdeSession:
    approve = approvals or Approvals()
    return IdeSession(connection, workspace, approve=approve, approve_plan=approve)


@pytest.mark.parametrize(
    ("message", "agent"),
    [
        ("write notes.txt: hi", "coder"),
        ("design the storage layer", "architect"),
        ("run echo hi", "debug"),
        ("read a.txt", "ask"),
    ],
)
async def test_the_first_message_is_routed_to_the_right_agent(
    connection: IdeConnection, workspace: Workspace, message: str, agent: str
) -> None:
    approvals = Approvals(Decision("reject"))
    turn = await session(connection, workspace, approvals).say(message)
    (switched, *_) = turn.of_type("agent_switched")
    assert switched["from_agent"] == "orchestrator"
    assert switched["to_agent"] == agent
    assert 0 < switched["confidence"] <= 1
    assert switched["reason"]
    assert turn.status == "completed"


async def test_read_then_result_then_summary(
    connection: IdeConnection, workspace: Workspace
) -> None:
    turn = await session(connection, workspace).say("read a.txt")
    (call,) = turn.executed
    assert call["tool_name"] == "read_file"
    assert call["requires_approval"] is False
    assert turn.text == "read_file returned: hello from a"


async def test_a_write_runs_only_after_approval(
    connection: IdeConnection, workspace: Workspace
) -> None:
    approvals = Approvals(Decision("approve"))
    target = workspace.root / "new.txt"

    async def approve_after_checking(frame: dict[str, Any]) -> Decision:
        assert not target.exists(), "nothing is written before the human approves"
        return await approvals(frame)

    ide = IdeSession(connection, workspace, approve=approve_after_checking)
    turn = await ide.say("write new.txt: fresh content")
    assert approvals.asked[0]["tool_name"] == "write_file"
    assert approvals.asked[0]["requires_approval"] is True
    assert approvals.asked[0]["reason"]
    assert target.read_text() == "fresh content\n"
    (executed,) = turn.executed
    assert executed["call_id"] == approvals.asked[0]["call_id"]
    assert executed["requires_approval"] is False
    assert "write_file returned" in turn.text


async def test_an_edited_write_runs_with_the_edited_arguments(
    connection: IdeConnection, workspace: Workspace
) -> None:
    edit = Decision("edit", {"path": "edited.txt", "content": "edited\n"})
    turn = await session(connection, workspace, Approvals(edit)).say("write first.txt: original")
    assert not (workspace.root / "first.txt").exists()
    assert (workspace.root / "edited.txt").read_text() == "edited\n"
    (executed,) = turn.executed
    assert executed["arguments"] == {"path": "edited.txt", "content": "edited\n"}


async def test_a_rejected_write_never_runs_and_the_model_hears_why(
    connection: IdeConnection, workspace: Workspace
) -> None:
    reject = Decision("reject", feedback="not that file")
    turn = await session(connection, workspace, Approvals(reject)).say("write x.txt: no")
    assert not (workspace.root / "x.txt").exists()
    assert turn.executed == []
    assert "rejected" in turn.text
    assert "not that file" in turn.text


async def test_architect_is_refused_a_python_write(
    connection: IdeConnection, workspace: Workspace
) -> None:
    turn = await session(connection, workspace).switch("architect", "write main.py: print(1)")
    assert turn.of_type("agent_switched")[0]["to_agent"] == "architect"
    assert turn.of_type("tool_call") == [], "a refused call never reaches the IDE"
    assert not (workspace.root / "main.py").exists()
    assert "may only write *.md" in turn.text


async def test_a_read_only_agent_widens_its_rights_only_with_a_human(
    connection: IdeConnection, workspace: Workspace
) -> None:
    rejecting = Approvals(Decision("reject", feedback="stay read-only"))
    turn = await session(connection, workspace, rejecting).switch("ask", "switch to coder")
    (asked,) = rejecting.asked
    assert (asked["tool_name"], asked["requires_approval"]) == ("switch_mode", True)
    assert "write_file" in asked["reason"]
    assert [s["to_agent"] for s in turn.of_type("agent_switched")] == ["ask"]
    assert "rejected" in turn.text
    approving = Approvals(Decision("approve"))
    turn = await session(connection, workspace, approving).say("switch to coder")
    assert approving.asked[0]["tool_name"] == "switch_mode"
    switched = turn.of_type("agent_switched")
    assert [(s["from_agent"], s["to_agent"]) for s in switched] == [("ask", "coder")]
    assert turn.executed == [], "the runtime ran the switch; the IDE ran nothing"
    # Narrowing needs nobody.
    narrowing = Approvals()
    turn = await session(connection, workspace, narrowing).say("switch to ask")
    assert narrowing.asked == []
    assert turn.of_type("agent_switched")[0]["to_agent"] == "ask"


async def test_debug_is_refused_any_write(connection: IdeConnection, workspace: Workspace) -> None:
    turn = await session(connection, workspace).switch("debug", "write notes.md: x")
    assert turn.of_type("tool_call") == []
    assert not (workspace.root / "notes.md").exists()
    assert "may not use write_file" in turn.text


async def test_a_path_outside_the_workspace_is_refused(
    connection: IdeConnection, workspace: Workspace
) -> None:
    turn = await session(connection, workspace).say("read ../secret.txt")
    assert turn.of_type("tool_call") == []
    assert "escapes the workspace" in turn.text


async def test_two_tool_calls_in_one_turn(connection: IdeConnection, workspace: Workspace) -> None:
    turn = await session(connection, workspace).say("read a.txt and read b.txt")
    assert [c["arguments"]["path"] for c in turn.executed] == ["a.txt", "b.txt"]
    assert len({c["call_id"] for c in turn.executed}) == 2
    assert "hello from a" in turn.text
    assert "hello from b" in turn.text


async def test_an_unknown_call_id_is_refused(connection: IdeConnection) -> None:
    await connection.send({"type": "tool_result", "call_id": "call_made_up", "result": {}})
    error = await connection.next_frame()
    assert error["type"] == "error"
    assert error["code"] == "unknown_call_id"


async def test_a_plan_waits_for_approval_then_progresses(
    connection: IdeConnection, workspace: Workspace
) -> None:
    approvals = Approvals(Decision("approve"))
    turn = await session(connection, workspace, approvals).say(
        "plan with approval: read the code; write the docs"
    )
    first, *updates = turn.of_type("plan_update")
    assert first["metadata"]["requires_approval"] is True
    assert [s["desc"] for s in first["steps"]] == ["read the code", "write the docs"]
    assert approvals.asked == [first]
    progress = [(p["step_id"], p["status"]) for p in turn.of_type("plan_progress")]
    assert progress == [("1", "done"), ("2", "in_progress"), ("2", "done")]
    assert all(s["status"] == "done" for s in updates[-1]["steps"])
    assert turn.status == "completed"


async def test_a_rejected_plan_is_not_executed(
    connection: IdeConnection, workspace: Workspace
) -> None:
    approvals = Approvals(Decision("reject", feedback="too big"))
    turn = await session(connection, workspace, approvals).say("plan with approval: a; b")
    assert turn.of_type("plan_progress") == []
    assert "too big" in turn.text


async def test_cancel_while_waiting_for_approval(connection: IdeConnection) -> None:
    await connection.send_message("write later.txt: maybe")
    while (frame := await connection.next_frame())["type"] != "tool_call":
        pass
    call_id = frame["call_id"]
    await connection.send({"type": "cancel"})
    while not (frame := await connection.next_frame()).get("is_final"):
        pass
    assert frame["metadata"]["status"] == "cancelled"
    # The call is closed: approving it now is refused.
    await connection.send({"type": "hitl_decision", "call_id": call_id, "decision": "approve"})
    assert (await connection.next_frame())["code"] == "unknown_call_id"


async def test_switch_agent_from_the_ide(connection: IdeConnection, workspace: Workspace) -> None:
    approvals = Approvals(Decision("approve"))
    turn = await session(connection, workspace, approvals).switch(
        "architect", "write docs/DESIGN.md: # Design", "the user asked for a design"
    )
    switched = turn.of_type("agent_switched")[0]
    assert (switched["from_agent"], switched["to_agent"]) == ("orchestrator", "architect")
    assert switched["reason"] == "the user asked for a design"
    assert switched["confidence"] == 1
    assert (workspace.root / "docs" / "DESIGN.md").read_text() == "# Design\n"


async def test_file_changes_reach_the_model(
    connection: IdeConnection, workspace: Workspace
) -> None:
    await connection.send({"type": "file_changed", "path": "a.txt", "timestamp": 1767225600})
    turn = await session(connection, workspace).say("hello")
    # The echo model repeats the last user message, so the notice is not
    # visible in its text; what it must not do is break the turn.
    assert turn.status == "completed"
    await connection.send({"type": "file_changed", "path": "/etc/passwd", "timestamp": 1})
    error = await connection.next_frame()
    assert error["code"] == "invalid_path"


async def test_three_failing_calls_stop_the_turn_and_the_user_is_asked(
    connection: IdeConnection, workspace: Workspace
) -> None:
    await connection.report_environment(workspace.root)
    turn = await session(connection, workspace).say(
        "read gone-1.txt and read gone-2.txt and read gone-3.txt"
    )
    assert turn.status == "completed"
    assert len(turn.executed) == 3
    assert turn.text.startswith("I stopped after 3 failed tool calls in a row.")
    assert "read_file, failed with: 'gone-3.txt' is not a file" in turn.text
    assert turn.text.endswith("How would you like me to proceed?")


async def test_the_terminal_client_runs_a_tool_flow(mesh: Mesh, workspace: Workspace) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "ide",
            "--url",
            mesh.ws_url,
            "--token",
            mesh.token,
            "--workspace",
            str(workspace.root),
            "--yes",
            "write made-by-cli.txt: from the terminal",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (workspace.root / "made-by-cli.txt").read_text() == "from the terminal\n"
    assert "[agent] orchestrator -> coder" in result.stdout
    assert "[tool needs approval] write_file" in result.stdout
    assert "write_file returned" in result.stdout
