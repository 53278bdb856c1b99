"""The terminal client's turn driver (``ide.turns.IdeSession``) against the
scripted gateway (conftest): the undo frame and the restoring turn,
``always_allow``, a refused request. The real mesh drives the same class in
tests/integration/test_agents.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.ide.conftest import ScriptedGateway

Frame = dict[str, Any]

DIFF = (
    "--- a/app.py\n+++ b/app.py\n@@ -1,2 +1 @@\n-agent line\n-more\n+old\r\n"
    "\\ No newline at end of file\n"
)


class Approvals:
    """A scripted human: answers approval prompts in order, records them."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[Frame] = []

    async def __call__(self, frame: Frame) -> Decision:
        self.asked.append(frame)
        return self.decisions.pop(0)


def call(call_id: str, tool: str, arguments: Frame, **fields: Any) -> Frame:
    return {
        "type": "tool_call",
        "seq": 10,
        "call_id": call_id,
        "tool_name": tool,
        "arguments": arguments,
        "requires_approval": False,
        "reason": "",
    } | fields


async def test_undo_restores_files_through_the_workspace(
    gateway: ScriptedGateway, connection: IdeConnection, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text("agent line\nmore\n")
    (tmp_path / "new.py").write_text("made by the agent\n")
    approvals = Approvals(Decision("approve"))
    session = IdeSession(connection, Workspace(tmp_path), approve=approvals)
    peer = await gateway.accept()
    assert peer.ws.request is not None
    assert peer.ws.request.path == "/ws/s1"

    undoing = asyncio.create_task(session.undo())
    assert await peer.receive() == {"type": "undo"}
    # A file the user changed after the agent: its restore needs approval.
    restore = {"path": "app.py", "content": "old\r\n"}
    asked = call(
        "call_1",
        "write_file",
        restore,
        requires_approval=True,
        reason="app.py changed since the agent wrote it\n" + DIFF,
        metadata={"diff": DIFF},
    )
    await peer.send(asked)
    decision = await peer.receive()
    assert decision == {
        "type": "hitl_decision",
        "call_id": "call_1",
        "decision": "approve",
        "feedback": "",
    }
    assert (tmp_path / "app.py").read_text() == "agent line\nmore\n", "not before approval"
    await peer.send(call("call_1", "write_file", restore, metadata={"diff": DIFF}))
    assert await peer.receive() == {
        "type": "tool_result",
        "call_id": "call_1",
        "result": {"path": "app.py", "bytes": 5, "created": False},
    }
    await peer.send(call("call_2", "delete_file", {"path": "new.py"}))
    assert await peer.receive() == {
        "type": "tool_result",
        "call_id": "call_2",
        "result": {"path": "new.py", "deleted": True},
    }
    await peer.end_turn("Restored app.py; deleted new.py.")
    turn = await undoing

    assert (tmp_path / "app.py").read_bytes() == b"old\r\n"
    assert not (tmp_path / "new.py").exists()
    assert [frame["call_id"] for frame in approvals.asked] == ["call_1"]
    assert approvals.asked[0]["metadata"]["diff"] == DIFF
    assert [frame["call_id"] for frame in turn.executed] == ["call_1", "call_2"]
    assert turn.text == "Restored app.py; deleted new.py."
    assert turn.status == "completed"


async def test_undo_can_name_the_turn(
    gateway: ScriptedGateway, connection: IdeConnection, tmp_path: Path
) -> None:
    session = IdeSession(connection, Workspace(tmp_path))
    peer = await gateway.accept()
    undoing = asyncio.create_task(session.undo("turn-7"))
    assert await peer.receive() == {"type": "undo", "turn_id": "turn-7"}
    await peer.end_turn("Nothing to restore.")
    assert (await undoing).text == "Nothing to restore."


@pytest.mark.parametrize(
    ("decision", "always_allow"),
    [
        (Decision("approve", always_allow=True), True),
        (Decision("approve"), None),
        # A rule can only allow: always_allow means nothing with a rejection.
        (Decision("reject", feedback="no", always_allow=True), None),
    ],
)
async def test_always_allow_goes_with_an_approval_only(
    gateway: ScriptedGateway,
    connection: IdeConnection,
    tmp_path: Path,
    decision: Decision,
    always_allow: bool | None,
) -> None:
    session = IdeSession(connection, Workspace(tmp_path), approve=Approvals(decision))
    peer = await gateway.accept()
    saying = asyncio.create_task(session.say("run ls"))
    assert (await peer.receive())["type"] == "user_message"
    await peer.send(call("call_9", "execute_command", {"command": "ls"}, requires_approval=True))
    answer = await peer.receive()
    assert answer["decision"] == decision.decision
    assert answer.get("always_allow") is always_allow
    await peer.end_turn()
    await saying


async def test_a_refused_request_ends_the_wait_and_the_session_goes_on(
    gateway: ScriptedGateway, connection: IdeConnection, tmp_path: Path
) -> None:
    session = IdeSession(connection, Workspace(tmp_path))
    peer = await gateway.accept()
    undoing = asyncio.create_task(session.undo())
    await peer.receive()
    # What a gateway that does not know the frame answers.
    refusal = {"type": "error", "seq": None, "code": "unknown_type", "content": "unknown type"}
    await peer.send(refusal)
    turn = await undoing
    assert turn.status == "refused"
    assert turn.of_type("error") == [refusal]

    # Once a turn runs, a refusal (of a tool result, say) does not end it.
    saying = asyncio.create_task(session.say("hello"))
    await peer.receive()
    await peer.send({"type": "assistant_message", "seq": 20, "content": "Hi"})
    await peer.send({"type": "error", "seq": 0, "code": "unknown_call_id", "content": "?"})
    await peer.end_turn(" there", seq=21)
    turn = await saying
    assert turn.text == "Hi there"
    assert turn.status == "completed"
