"""The front door (Caddy with the repository's Caddyfile, started by
``scripts/up``): one base URL for the CodeLab IDE — login, REST and the
WebSocket — exactly as that IDE addresses them."""

from __future__ import annotations

import httpx
import pytest

from ide.connection import IdeConnection
from tests.integration.conftest import IDE_CLIENT, Mesh, ide_login


@pytest.fixture
async def front(mesh: Mesh) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as client:
        yield client  # type: ignore[misc]


async def test_the_ide_logs_in_and_works_through_one_base_url(
    mesh: Mesh, front: httpx.AsyncClient
) -> None:
    tokens = await ide_login(mesh)
    refreshed = await front.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": IDE_CLIENT,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}

    assert (await front.get("/health")).json() == {"status": "ok"}
    keys = (await front.get("/.well-known/jwks.json")).json()
    assert keys["keys"], "the JWKS is served at the same base URL"
    created = await front.post("/api/v1/sessions", headers=bearer)
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    listed = (await front.get("/api/v1/sessions", headers=bearer)).json()
    assert session_id in [s["session_id"] for s in listed["sessions"]]

    ws_url = mesh.front_url.replace("http://", "ws://") + "/api/v1"
    async with IdeConnection(ws_url, session_id, token) as ide:
        # Its profile (gateway/profiles.py): no session_info, which it would
        # show as an empty bubble, and the whole answer in one frame.
        await ide.send({"type": "user_message", "content": "hello"})
        frames = []
        while not (frame := await ide.next_frame()).get("is_final"):
            frames.append(frame)
            if frame["type"] == "tool_call":  # the workspace, for the agents' prompt
                listing = {"success": True, "path": ".", "items": [], "total_count": 0}
                await ide.send(
                    {"type": "tool_result", "call_id": frame["call_id"], "result": listing}
                )
    assert [(f["type"], f.get("tool_name")) for f in frames] == [
        ("tool_call", "list_files"),
        ("agent_switched", None),
    ]
    assert frame["type"] == "assistant_message"
    assert frame["content"].startswith("You said: hello")


async def test_the_front_door_serves_nothing_else(front: httpx.AsyncClient) -> None:
    for path in ("/metrics", "/internal/revocations", "/admin", "/"):
        reply = await front.get(path)
        assert reply.status_code == 404, path
    unknown = await front.post(
        "/oauth/token", data={"grant_type": "password", "client_id": "not-registered"}
    )
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_client"
