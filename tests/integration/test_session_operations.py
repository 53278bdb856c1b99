"""Exporting and forking a session over the real mesh: a session with a tool
call run in a real workspace (the offline model plays the LLM), exported
as JSON and Markdown through the front door, forked, and the fork opened
over the WebSocket for a turn of its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh, add_user, ide_login

README = "# Demo\nA project to read.\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "README.md").write_text(README)
    return Workspace(tmp_path)


async def say(mesh: Mesh, session_id: str, workspace: Workspace, text: str) -> None:
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as connection:
        await connection.next_frame()
        turn = await IdeSession(connection, workspace).say(text)
    assert turn.status == "completed"
    assert [call["tool_name"] for call in turn.executed] == ["read_file"]


async def test_a_session_is_exported_and_forked_and_the_fork_goes_on(
    mesh: Mesh, workspace: Workspace, dev_front: httpx.AsyncClient
) -> None:
    session_id = f"ops-{uuid.uuid4().hex[:10]}"
    await say(mesh, session_id, workspace, "read README.md")

    as_json = await dev_front.get(f"/api/v1/sessions/{session_id}/export")
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"] == "application/json"
    export = as_json.json()
    assert export["session"]["id"] == session_id
    messages = export["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    (call,) = messages[1]["tool_calls"]
    assert (call["tool_name"], call["arguments"]) == ("read_file", {"path": "README.md"})
    assert messages[2]["tool_call_id"] == call["call_id"]
    assert "A project to read." in messages[2]["content"]
    assert [s["to"] for s in export["agent_switches"]] == [export["session"]["agent"]]

    markdown = await dev_front.get(
        f"/api/v1/sessions/{session_id}/export", params={"format": "markdown"}
    )
    assert markdown.status_code == 200
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    text = markdown.text
    assert text.startswith(f"# {export['session']['title']}\n")
    assert "## 0. User" in text
    assert f"Tool call `read_file` (`{call['call_id']}`):\n\n```json\n" in text
    assert "## 2. Tool result: read_file" in text
    assert "A project to read." in text

    inside = await dev_front.post(f"/api/v1/sessions/{session_id}/fork", params={"message": 1})
    assert inside.status_code == 400
    assert "fork through message 0 or 2" in inside.json()["error_description"]
    forked = await dev_front.post(f"/api/v1/sessions/{session_id}/fork", params={"message": 2})
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert fork["title"] == f"{export['session']['title']} (fork)"
    assert (fork["message_count"], fork["agent"]) == (3, export["session"]["agent"])
    fork_id = fork["session_id"]
    copied = (await dev_front.get(f"/api/v1/sessions/{fork_id}/history")).json()["messages"]
    source = (await dev_front.get(f"/api/v1/sessions/{session_id}/history")).json()["messages"]
    assert copied == source[:3]

    stranger = {
        "Authorization": f"Bearer {(await ide_login(mesh, add_user(mesh)))['access_token']}"
    }
    for request in (
        dev_front.build_request("GET", f"/api/v1/sessions/{session_id}/export", headers=stranger),
        dev_front.build_request("POST", f"/api/v1/sessions/{session_id}/fork", headers=stranger),
    ):
        refused = await dev_front.send(request)
        assert refused.status_code == 404
        assert "README" not in refused.text

    await say(mesh, fork_id, workspace, "read README.md")
    grown = (await dev_front.get(f"/api/v1/sessions/{fork_id}/history")).json()["messages"]
    assert grown[:3] == source[:3]
    assert [m["role"] for m in grown[3:]] == ["user", "assistant", "tool", "assistant"]
    again = (await dev_front.get(f"/api/v1/sessions/{session_id}/history")).json()["messages"]
    assert again == source, "the source is untouched by its fork's turn"
