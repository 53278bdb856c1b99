"""Choosing a session's model group over the real mesh: the groups listed
through the front door, one chosen by PATCH and by a ``set_model`` frame,
and a group the operator does not offer refused on both paths."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from ide.connection import IdeConnection
from tests.integration.conftest import Mesh


@pytest.fixture
async def front(mesh: Mesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=mesh.front_url, headers={"Authorization": f"Bearer {mesh.token}"}, timeout=20
    ) as client:
        yield client


async def test_the_ide_lists_the_offered_models_and_picks_one_per_session(
    mesh: Mesh, front: httpx.AsyncClient
) -> None:
    listing = await front.get("/api/v1/models")
    assert listing.status_code == 200, listing.text
    # USER_MODELS unset: only the default group is offered.
    assert [m["name"] for m in listing.json()["models"]] == ["offline"]
    assert listing.json()["default_model"] == "offline"

    created = await front.post("/api/v1/sessions")
    session_id = created.json()["id"]
    assert created.json()["model"] is None, "each agent's default until chosen"
    chosen = await front.patch(f"/api/v1/sessions/{session_id}", json={"model": "offline"})
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["model"] == "offline"
    refused = await front.patch(f"/api/v1/sessions/{session_id}", json={"model": "gpt-9"})
    assert refused.status_code == 400
    assert "choose one of: offline" in refused.json()["error_description"]
    mine = await front.get("/api/v1/models", params={"session_id": session_id})
    assert mine.json()["session_model"] == "offline"
    history = await front.get(f"/api/v1/sessions/{session_id}/history")
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
    session = await front.get(f"/api/v1/sessions/{framed}")
    assert session.json()["model"] == "offline"
