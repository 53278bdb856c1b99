"""Retry, edit and fork over the real mesh: frames from the terminal client's
IDE session, REST through the gateway and the front door, on both databases.

A re-run over a turn whose file changes are not undone is refused, naming
them; after an undo (or with keep_changes) it runs; the replaced messages
stay listed as branches, also after the runtime restarts.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh, Stack, add_user, ide_login


async def test_retry_edit_and_fork_through_the_gateway(
    stack: Stack, mesh: Mesh, tmp_path: Path
) -> None:
    root = tmp_path / "workspace"
    root.mkdir()
    session_id = f"branches-{uuid.uuid4().hex[:10]}"
    headers = {"Authorization": f"Bearer {mesh.token}"}
    base = f"http://127.0.0.1:{stack.gateway_port}/api/v1/sessions"

    async def get(path: str, token_headers: dict[str, str] = headers) -> httpx.Response:
        async with httpx.AsyncClient(headers=token_headers, timeout=20) as client:
            return await client.get(f"{base}/{path}")

    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(root))
        assert (await ide.say("write notes.txt: first")).status == "completed"
        assert (root / "notes.txt").read_text() == "first\n"
        assert (await ide.say("hello")).status == "completed"
        hello_at = [m["content"] for m in (await get(f"{session_id}/history")).json()["messages"]]
        position = hello_at.index("hello")

        retried = await ide.retry()
        assert retried.status == "completed"
        (changed,) = retried.of_type("session_changed")
        assert (changed["reason"], changed["branch"], changed["from_message"]) == (
            "retry",
            1,
            position,
        )
        assert changed["seq"] > 0

        refused = await ide.edit(0, "write notes.txt: second")
        assert refused.status == "refused"
        assert refused.frames[0]["code"] == "changes_not_undone"
        assert "notes.txt (created)" in refused.frames[0]["content"]
        assert "turn_id 0" in refused.frames[0]["content"]
        assert (await ide.undo("0")).status == "completed"
        assert not (root / "notes.txt").exists()
        edited = await ide.edit(0, "write notes.txt: second")
        assert edited.status == "completed"
        assert edited.of_type("session_changed")[0]["branch"] == 2
        assert (root / "notes.txt").read_text() == "second\n"

        inside = await ide.fork(1)
        assert (inside["type"], inside["code"]) == ("error", "invalid_message")
        assert "inside a tool exchange" in inside["content"]
        fork = await ide.fork()
        assert fork["type"] == "session_changed", fork
        active = (await get(f"{session_id}/history")).json()["messages"]
        assert (fork["reason"], fork["from_message"]) == ("fork", len(active))
        copied = (await get(f"{fork['session_id']}/history")).json()["messages"]
        assert copied == active

        # Over REST, with the IDE connected: the turn runs through it.
        following = asyncio.create_task(ide.follow())
        async with httpx.AsyncClient(headers=headers, timeout=20) as client:
            conflict = await client.post(f"{base}/{session_id}/retry")
            assert conflict.status_code == 409
            assert "notes.txt" in conflict.json()["error_description"]
            started = await client.post(f"{base}/{session_id}/retry?keep_changes=true")
        assert started.status_code == 202, started.text
        assert (started.json()["reason"], started.json()["branch"]) == ("retry", 3)
        assert (await following).status == "completed"

    history = (await get(f"{session_id}/history")).json()["messages"]
    assert history[0]["content"] == "write notes.txt: second"
    assert "first" not in str(history), "the replaced turns are not in the active history"
    async with httpx.AsyncClient(headers=headers, timeout=20) as client:
        # No IDE is connected now: the turn would have nowhere to run its tools.
        idle = await client.post(f"{base}/{session_id}/retry?keep_changes=true")
    assert idle.status_code == 409
    assert "no IDE is connected" in idle.json()["error_description"]

    stack.runtime.stop()
    stack.runtime.start()
    listed = (await get(f"{session_id}/branches")).json()["branches"]
    assert [(b["branch"], b["reason"], b["from_message"]) for b in listed] == [
        (3, "retry", 0),
        (2, "edit", 0),
        (1, "retry", position),
    ]
    first_try: list[Any] = listed[1]["messages"]
    assert first_try[0]["content"] == "write notes.txt: first"
    assert listed[2]["messages"][0]["content"] == "hello"

    other = await ide_login(mesh, add_user(mesh))
    others = {"Authorization": f"Bearer {other['access_token']}"}
    foreign = await get(f"{session_id}/branches", others)
    assert foreign.status_code == 404, "someone else's session is not found, as every view"
    assert "hello" not in foreign.text


async def test_an_edit_by_rest_through_the_front_door(
    mesh: Mesh, dev_front: httpx.AsyncClient, tmp_path: Path
) -> None:
    session_id = f"edit-rest-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(tmp_path))
        assert (await ide.say("hello")).status == "completed"
        assert (await ide.say("and again")).status == "completed"
        following = asyncio.create_task(ide.follow())
        not_mine = await dev_front.post(
            f"/api/v1/sessions/{session_id}/edit?message=1", json={"content": "x"}
        )
        assert not_mine.status_code == 400
        assert "yours are at 0, 2" in not_mine.json()["error_description"]
        no_body = await dev_front.post(f"/api/v1/sessions/{session_id}/edit?message=0")
        assert no_body.status_code == 400
        started = await dev_front.post(
            f"/api/v1/sessions/{session_id}/edit?message=2", json={"content": "something else"}
        )
        assert started.status_code == 202, started.text
        assert (started.json()["reason"], started.json()["from_message"]) == ("edit", 2)
        assert (await following).status == "completed"
    history = (await dev_front.get(f"/api/v1/sessions/{session_id}/history")).json()
    assert [m["content"] for m in history["messages"] if m["role"] == "user"] == [
        "hello",
        "something else",
    ]
    (branch,) = (await dev_front.get(f"/api/v1/sessions/{session_id}/branches")).json()["branches"]
    assert branch["messages"][0]["content"] == "and again"
    export = await dev_front.get(f"/api/v1/sessions/{session_id}/export?format=markdown")
    assert "something else" in export.text
    assert "and again" not in export.text, "an export is the active history"
