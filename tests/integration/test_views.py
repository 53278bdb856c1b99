"""The IDE's read views and ownership on every path, over the real mesh."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from ide.connection import IdeConnection
from tests.integration.conftest import Mesh, add_user


@pytest.fixture(scope="package")
def other_token(mesh: Mesh) -> str:
    """A token for a second user."""
    user = add_user(mesh)
    reply = httpx.post(
        f"{mesh.auth_url}/oauth/token",
        data={"grant_type": "password", "client_id": "codelab-ide", **user},
    )
    reply.raise_for_status()
    return str(reply.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def converse(mesh: Mesh, session_id: str, text: str) -> None:
    """Send one message; return at the end of the answer or at a call awaiting
    approval. A read the runtime makes before a change finds no file."""
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as ide:
        await ide.next_frame()
        await ide.send_message(text)
        while True:
            frame = await ide.next_frame()
            if frame.get("is_final") or frame.get("requires_approval"):
                return
            if frame.get("type") == "tool_call" and frame["tool_name"] == "read_file":
                error = f"File not found: {frame['arguments']['path']}"
                await ide.send({"type": "tool_result", "call_id": frame["call_id"], "error": error})


async def test_views_show_the_owners_sessions(mesh: Mesh) -> None:
    session_id = f"views-{uuid.uuid4().hex[:8]}"
    await converse(mesh, session_id, "write notes.txt: pending")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{mesh.gateway_port}", headers=bearer(mesh.token)
    ) as client:
        agents = (await client.get("/api/v1/agents")).json()
        listed = (await client.get("/api/v1/sessions", params={"page_size": 100})).json()
        history = (await client.get(f"/api/v1/sessions/{session_id}/history")).json()
        current = (await client.get(f"/api/v1/agents/{session_id}/current")).json()
        pending = (await client.get(f"/api/v1/sessions/{session_id}/pending-approvals")).json()
        created = await client.post("/api/v1/sessions", params={"title": "from the IDE"})
    assert {a["name"] for a in agents["agents"]} >= {"coder", "ask"}
    assert session_id in [s["session_id"] for s in listed["sessions"]]
    assert history["messages"][0] == history["messages"][0] | {
        "role": "user",
        "content": "write notes.txt: pending",
    }
    assert history["messages"][1]["tool_calls"][0]["tool_name"] == "write_file"
    assert current["current_agent"] == "coder"
    # Our shapes keep, with the CodeLab IDE's fields added.
    architect = next(a for a in agents["agents"] if a["name"] == "architect")
    assert (architect["writable_paths"], architect["has_file_restrictions"]) == (["*.md"], True)
    assert [(s["from"], s["to"]) for s in current["agent_history"]] == [("orchestrator", "coder")]
    assert current["switch_count"] == 1
    (waiting,) = pending["pending_approvals"]
    assert waiting["tool_name"] == "write_file"
    assert waiting["arguments"] == {"path": "notes.txt", "content": "pending\n"}
    assert created.status_code == 201
    new_id = created.json()["session_id"]
    async with IdeConnection(mesh.ws_url, new_id, mesh.token) as ide:
        info = await ide.next_frame()
        assert info["metadata"]["created"] is False, "POST created it before the connect"


async def test_nobody_sees_or_joins_another_users_session(mesh: Mesh, other_token: str) -> None:
    session_id = f"private-{uuid.uuid4().hex[:8]}"
    await converse(mesh, session_id, "secret plans")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{mesh.gateway_port}", headers=bearer(other_token)
    ) as client:
        for path in (
            f"/api/v1/sessions/{session_id}/history",
            f"/api/v1/sessions/{session_id}/pending-approvals",
            f"/api/v1/agents/{session_id}/current",
        ):
            reply = await client.get(path)
            assert reply.status_code == 404, path
            assert "secret" not in reply.text
        listed = (await client.get("/api/v1/sessions")).json()
        # Creating cannot probe for it: the server picks new sessions' ids.
        for name in ("session_id", "id"):
            taken = await client.post("/api/v1/sessions", params={name: session_id})
            assert taken.status_code == 400
            assert taken.json()["error"] == "invalid_request"
            assert "secret" not in taken.text
        fresh = await client.post("/api/v1/sessions")
        assert fresh.status_code == 201
        assert fresh.json()["session_id"] != session_id
    assert session_id not in [s["session_id"] for s in listed["sessions"]]
    with pytest.raises(InvalidStatus) as refused:
        async with IdeConnection(mesh.ws_url, session_id, other_token):
            pass
    assert refused.value.response.status_code == 403
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.gateway_port}") as client:
        anonymous = await client.get("/api/v1/sessions")
    assert anonymous.status_code == 401


async def test_views_refuse_malformed_requests(mesh: Mesh) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{mesh.gateway_port}", headers=bearer(mesh.token)
    ) as client:
        bad_page: Any = await client.get("/api/v1/sessions", params={"page_token": "nonsense"})
        unknown = await client.get("/api/v1/sessions/no-such-session/history")
    assert bad_page.status_code == 400
    assert unknown.status_code == 404
