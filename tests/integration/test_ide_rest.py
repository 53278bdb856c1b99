"""The CodeLab IDE's sessions REST, as that IDE calls it, through the front
door of a mesh started like ``./scripts/up``: login with its client id,
create, list, read, rename and delete sessions, its history and its pending
approvals, the agents and a session's current agent. Every answer is read
through exact replicas of the IDE's decoders (:mod:`tests.codelab_ide_rest`,
each naming its ``.g.dart`` file).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests import codelab_ide_rest as ide
from tests.integration.conftest import Mesh, add_user, ide_login

"""The OAuth client id the CodeLab IDE logs in with (its auth datasource)."""
TIMEOUT = 20


@pytest.fixture
async def front(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=TIMEOUT) as client:
        yield client


async def login(mesh: Mesh, user: dict[str, str]) -> dict[str, str]:
    """The IDE's password login at the front door; its bearer header."""
    return {"Authorization": f"Bearer {(await ide_login(mesh, user))['access_token']}"}


def socket(mesh: Mesh, session_id: str, headers: dict[str, str]) -> Any:
    """The IDE's WebSocket at the front door, its token as the subprotocol."""
    token = headers["Authorization"].removeprefix("Bearer ")
    url = mesh.front_url.replace("http://", "ws://") + f"/api/v1/ws/{session_id}"
    return connect(url, subprotocols=["bearer", token])  # type: ignore[list-item]


async def frame_of_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == kind:
                return dict(frame)


EMPTY_LISTING = {"success": True, "path": ".", "items": [], "total_count": 0}
"""The CodeLab IDE's list_files answer for an empty workspace."""


async def list_workspace(ws: ClientConnection) -> None:
    """Answer the listing of the workspace the runtime asks the IDE for before a
    session's first model call (its profile asks for the agents' prompt)."""
    listing = await frame_of_type(ws, "tool_call")
    assert (listing["tool_name"], listing["requires_approval"]) == ("list_files", False)
    result = {"type": "tool_result", "call_id": listing["call_id"], "result": EMPTY_LISTING}
    await ws.send(json.dumps(result))


async def test_the_ide_manages_its_sessions_through_the_front_door(
    mesh: Mesh, front: httpx.AsyncClient
) -> None:
    alice = await login(mesh, add_user(mesh))  # a list of her own, whatever ran before
    api = "/api/v1"

    # SessionRemoteDataSource.createSession: POST with no body.
    created = await front.post(f"{api}/sessions", headers=alice)
    assert created.status_code == 201, created.text
    session = ide.session_model(created.json())
    sid = session["id"]
    assert created.json()["session_id"] == sid, "our own shape stays"
    assert (session["messageCount"], session["isActive"]) == (0, True)
    assert session["createdAt"] is not None

    # GET /sessions/{id}, then PATCH {title} (a body: the gateway's REST port).
    got = ide.session_model((await front.get(f"{api}/sessions/{sid}", headers=alice)).json())
    assert got["id"] == sid
    renamed = await front.patch(
        f"{api}/sessions/{sid}", json={"title": "Рефакторинг"}, headers=alice
    )
    assert renamed.status_code == 200, renamed.text
    assert ide.session_model(renamed.json())["title"] == "Рефакторинг"

    # A write that waits for approval, over the IDE's socket.
    async with socket(mesh, sid, alice) as ws:
        # The IDE's profile sends no session_info (it would be an empty bubble).
        await ws.send(json.dumps({"type": "user_message", "content": "write notes.txt: hi"}))
        await list_workspace(ws)
        # The runtime reads the file's previous state first; the IDE runs it.
        read = await frame_of_type(ws, "tool_call")
        assert (read["tool_name"], read["requires_approval"]) == ("read_file", False)
        await ws.send(
            json.dumps(
                {
                    "type": "tool_result",
                    "call_id": read["call_id"],
                    "error": "File not found: notes.txt",
                }
            )
        )
        call = await frame_of_type(ws, "tool_call")
    assert (call["tool_name"], call["requires_approval"]) == ("write_file", True)

    # Both list decoders: SessionRemoteDataSource and GatewayApi.listSessions.
    listed = (await front.get(f"{api}/sessions", headers=alice)).json()
    (mine,) = [s for s in ide.list_sessions_remote(listed) if s["id"] == sid]
    assert mine["title"] == "Рефакторинг"
    assert mine["messageCount"] >= 2
    assert mine["currentAgent"] == "coder"
    page = ide.session_list_response(listed)
    assert page["total"] == len(page["sessions"])
    assert sid in [s["sessionId"] for s in page["sessions"]]

    # ApprovalSyncService.fetchPendingApprovals (restores the dialog).
    pending = ide.pending_approvals_response(
        (await front.get(f"{api}/sessions/{sid}/pending-approvals", headers=alice)).json()
    )
    assert pending["count"] == 1
    (approval,) = pending["pendingApprovals"]
    assert (approval["callId"], approval["toolName"]) == (call["call_id"], "write_file")
    assert approval["arguments"]["path"] == "notes.txt"

    # GatewayApi.getSessionHistory, rendered by AgentRepositoryImpl.
    history = ide.session_history(
        (await front.get(f"{api}/sessions/{sid}/history", headers=alice)).json()
    )
    assert history["messageCount"] == len(history["messages"])
    assert history["currentAgent"] == "coder"
    assert [(s["from"], s["to"]) for s in history["agentHistory"]] == [("orchestrator", "coder")]
    ide.dart_datetime_parse(history["agentHistory"][0]["timestamp"])
    rendered = [ide.history_message_to_ws(m) for m in history["messages"]]
    assert rendered[0] == {"type": "user_message", "content": "write notes.txt: hi"}
    # History holds the model's call, which the IDE's calls served (and not those).
    (model_call,) = [m for m in rendered if m["type"] == "tool_call"]
    assert model_call == {
        "type": "tool_call",
        "call_id": model_call["call_id"],
        "tool_name": "write_file",
        "arguments": call["arguments"],
    }
    assert call["call_id"] == model_call["call_id"] + ".2"

    # Someone else sees none of it and deletes nothing.
    bob = await login(mesh, add_user(mesh))
    for method in ("GET", "DELETE"):
        foreign = await front.request(method, f"{api}/sessions/{sid}", headers=bob)
        assert foreign.status_code == 404, method
    bobs = ide.session_list_response((await front.get(f"{api}/sessions", headers=bob)).json())
    assert (bobs["sessions"], bobs["total"]) == ([], 0)

    # DELETE with a window open on it: the socket closes for good (1008).
    async with socket(mesh, sid, alice) as ws:
        # Attached: the runtime itself answers that a call still waits.
        await ws.send(json.dumps({"type": "user_message", "content": "again"}))
        assert (await frame_of_type(ws, "error"))["code"] == "tool_calls_pending"
        deleted = await front.delete(f"{api}/sessions/{sid}", headers=alice)
        assert deleted.status_code == 200, deleted.text
        with pytest.raises(ConnectionClosed):
            await frame_of_type(ws, "never")
    assert (ws.close_code, ws.close_reason) == (1008, "the session was deleted")

    # Gone for its owner: every view 404s (the IDE shows an empty history,
    # no approvals), the list forgets it, and no handshake brings it back.
    for path in ("", "/history", "/pending-approvals"):
        assert (await front.get(f"{api}/sessions/{sid}{path}", headers=alice)).status_code == 404
    after = ide.session_list_response((await front.get(f"{api}/sessions", headers=alice)).json())
    assert sid not in [s["sessionId"] for s in after["sessions"]]
    for user in (alice, bob):
        with pytest.raises(InvalidStatus) as refused:
            async with socket(mesh, sid, user):
                pass
        assert refused.value.response.status_code == 404


async def test_the_ide_reads_the_agents_and_the_current_agent_through_the_front_door(
    mesh: Mesh, front: httpx.AsyncClient
) -> None:
    alice = await login(mesh, add_user(mesh))  # a list of her own, whatever ran before
    api = "/api/v1"

    # GatewayApi.listAgents: the body is the list itself.
    listed = await front.get(f"{api}/agents", headers=alice)
    assert listed.status_code == 200, listed.text
    agents = {agent["type"]: agent for agent in ide.list_agents(listed.json())}
    assert set(agents) == {"orchestrator", "coder", "architect", "debug", "ask"}
    assert agents["architect"]["hasFileRestrictions"] is True
    assert agents["coder"]["hasFileRestrictions"] is False
    assert "write_file" in agents["coder"]["allowedTools"]

    # GatewayApi.getCurrentAgent: a new session, then one routed to coder.
    sid = ide.session_model((await front.post(f"{api}/sessions", headers=alice)).json())["id"]
    fresh = ide.current_agent_info(
        (await front.get(f"{api}/agents/{sid}/current", headers=alice)).json()
    )
    assert (fresh["currentAgent"], fresh["agentHistory"], fresh["switchCount"]) == (
        "orchestrator",
        [],
        0,
    )
    async with socket(mesh, sid, alice) as ws:  # its profile sends no session_info
        await ws.send(json.dumps({"type": "user_message", "content": "write notes.txt: hi"}))
        await list_workspace(ws)
        await frame_of_type(ws, "agent_switched")
    current = ide.current_agent_info(
        (await front.get(f"{api}/agents/{sid}/current", headers=alice)).json()
    )
    assert (current["sessionId"], current["currentAgent"], current["switchCount"]) == (
        sid,
        "coder",
        1,
    )
    (switch,) = current["agentHistory"]
    assert (switch["from"], switch["to"]) == ("orchestrator", "coder")
    ide.dart_datetime_parse(switch["timestamp"])

    # Someone else's session is 404 here too.
    bob = await login(mesh, add_user(mesh))
    assert (await front.get(f"{api}/agents/{sid}/current", headers=bob)).status_code == 404
