"""Issue 15's promises on real processes: an edit is approved as a diff and
changes only what it says; undo puts the workspace back byte for byte.

Runs on a runtime and gateway of its own, with the package's llmproxy
(``stack``), on SQLite and PostgreSQL, with the offline model's verbs and
the terminal client's workspace as the IDE.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh, Stack


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


class Approvals:
    """Approves every call and keeps the frames it was asked about."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, frame: dict[str, Any]) -> Decision:
        self.asked.append(frame)
        return Decision("approve")


async def view(stack: Stack, mesh: Mesh, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.gateway_port}") as client:
        response = await client.get(
            f"/api/v1/sessions/{path}", headers={"Authorization": f"Bearer {mesh.token}"}
        )
    assert response.status_code == 200, response.text
    return response.json()


def changed_lines(diff: str) -> list[str]:
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


async def test_an_edit_is_a_diff_and_undo_restores_the_workspace_byte_for_byte(
    stack: Stack, mesh: Mesh, tmp_path: Path
) -> None:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "big.py").write_text("".join(f"value_{i} = {i}\n" for i in range(1, 2001)))
    (root / "notes.txt").write_bytes(b"first\r\nsecond\r\nno final newline")
    (root / "old.txt").write_bytes(b"to be deleted\n")
    (root / "m.txt").write_bytes("moving \u00e9\n".encode())
    before = snapshot(root)
    approvals = Approvals()
    session_id = f"undo-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(root), approve=approvals)

        edit = await ide.say("edit big.py: value_1000 = 1000 => value_1000 = 'changed'")
        assert edit.status == "completed"
        (asked,) = approvals.asked
        assert asked["tool_name"] == "write_file"
        assert asked["metadata"]["parent_tool"] == "apply_diff"
        diff = asked["metadata"]["diff"]
        assert changed_lines(diff) == ["-value_1000 = 1000", "+value_1000 = 'changed'"]
        after_edit = snapshot(root)
        old_lines = before["big.py"].splitlines(keepends=True)
        new_lines = after_edit["big.py"].splitlines(keepends=True)
        assert len(new_lines) == len(old_lines) == 2000
        assert [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b] == [
            999
        ]

        changes = await ide.say("delete old.txt and move m.txt to n.txt")
        assert changes.status == "completed"
        write_notes = await ide.say("write notes.txt: rewritten")
        assert write_notes.status == "completed"
        assert snapshot(root) != before
        assert not (root / "old.txt").exists()
        assert (root / "n.txt").read_bytes() == before["m.txt"]

        checkpoints = await view(stack, mesh, f"{session_id}/checkpoints")
        turns = checkpoints["turns"]
        assert [sorted((f["path"], f["change"]) for f in turn["files"]) for turn in turns] == [
            [("big.py", "modified")],
            [("m.txt", "deleted"), ("n.txt", "created"), ("old.txt", "deleted")],
            [("notes.txt", "modified")],
        ]

        approvals.asked.clear()
        undone = await ide.undo(turns[0]["turn_id"])
        assert undone.status == "completed"
        assert snapshot(root) == before
        assert "Restored:" in undone.text
        for path in ("big.py", "notes.txt", "old.txt", "m.txt", "n.txt (deleted)"):
            assert path in undone.text
        # Each restore was offered with its diff, as an ordinary write or delete.
        assert {frame["tool_name"] for frame in approvals.asked} == {"write_file", "delete_file"}
        assert all(frame["metadata"]["parent_tool"] == "undo" for frame in approvals.asked)

        again = await ide.undo()
        assert again.status == "refused"
        assert again.frames[0]["code"] == "nothing_to_undo"

    history = await view(stack, mesh, f"{session_id}/history")
    undone_messages = [m["content"] for m in history["messages"] if m["undone"]]
    assert len(undone_messages) == 3


async def test_an_undo_asked_over_rest_runs_through_the_connected_ide(
    stack: Stack, mesh: Mesh, tmp_path: Path
) -> None:
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "a.txt").write_bytes(b"one\ntwo\n")
    before = snapshot(root)
    session_id = f"rest-undo-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {mesh.token}"}
    base = f"http://127.0.0.1:{stack.gateway_port}/api/v1/sessions/{session_id}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(root), approve=Approvals())
        assert (await ide.say("edit a.txt: two => TWO")).status == "completed"
        assert (root / "a.txt").read_bytes() == b"one\nTWO\n"
        following = asyncio.create_task(ide.follow())
        async with httpx.AsyncClient(headers=headers) as client:
            started = await client.post(f"{base}/undo")
        assert started.status_code == 202, started.text
        assert started.json()["turn_id"] == "0"
        undone = await following
    assert undone.status == "completed"
    assert snapshot(root) == before
    async with httpx.AsyncClient(headers=headers) as client:
        # No IDE is connected now: the restores would have nowhere to run.
        refused = await client.post(f"{base}/undo")
    assert refused.status_code == 409
    assert "no IDE is connected" in refused.json()["error_description"]
