"""Choosing a session's model group over the real mesh: the groups listed
through the front door, one chosen by PATCH and by a ``set_model`` frame,
and a group the operator does not offer refused on both paths."""

from __future__ import annotations

import uuid

import httpx

from ide.connection import IdeConnection
from tests.integration.conftest import Mesh


async def test_the_ide_lists_the_offered_models_and_picks_one_per_session(
    mesh: Mesh, dev_front: httpx.AsyncClient
) -> None:
    listing = await dev_front.get("/api/v1/models")
    assert listing.status_code == 200, listing.text
    # USER_MODELS unset: only the default group is offered.
    assert [m["name"] for m in listing.json()["models"]] == ["offline"]
    assert listing.json()["default_model"] == "offline"

    created = await dev_front.post("/api/v1/sessions")
    session_id = created.json()["id"]
    assert created.json()["model"] is None, "each agent's default until chosen"
    chosen = await dev_front.patch(f"/api/v1/sessions/{session_id}", json={"model": "offline"})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["model"] == "offline"
    refused = await dev_front.patch(f"/api/v1/sessions/{session_id}", json={"model": "gpt-9"})
    assert refused.status_code == 400
    assert "choose one of: offline" in refused.json()["error_description"]
    mine = await dev_front.get("/api/v1/models", params={"session_id": session_id})
    assert mine.json()["session_model"] == "offline"
    history = await dev_front.get(f"/api/v1/sessions/{session_id}/history")
    assert history.json()["model"] == "offline"

    framed = f"models-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(mesh.ws_url, framed, mesh.token) as connection:
        await connection.next_frame()
        await connection.send({"type": "set_model", "model": "gpt-9"})
        error = await connection.next_frame()
        assert (error["type"], error["code"]) == ("error", "unknown_model")
        await connection.send({"type": "set_model", "model": "offline"})
        await connection.send_message("hello")
        text, _ = await connection.answer()
        assert text
    session = await dev_front.get(f"/api/v1/sessions/{framed}")
    assert session.json()["model"] == "offline"
