"""A session open in an IDE lets its history go between turns and gets it back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.conftest import free_port
from tests.integration.conftest import Mesh, Stack
from tests.integration.test_observability import scrape, total
from tests.support import eventually


@pytest.fixture
def resting_stack(mesh: Mesh, shared_llmproxy: str, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    """A runtime that keeps no idle history (a budget of 0, at once), checked
    every second; with its metrics URL."""
    metrics_port = free_port()
    own = Stack(
        mesh,
        f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}",
        shared_llmproxy,
        {
            "AGENT_RUNTIME__RESTING_HISTORY_MB": "0",
            "AGENT_RUNTIME__RESTING_AFTER_S": "0",
            "AGENT_RUNTIME__METRICS_PORT": str(metrics_port),
            "AGENT_RUNTIME__LOG_LEVEL": "DEBUG",  # its sessions_rested lines
        },
    )
    try:
        own.start()
        yield own, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        own.stop()


async def test_an_open_sessions_history_rests_between_turns_and_comes_back(
    resting_stack: tuple[Stack, str], mesh: Mesh, tmp_path: Path
) -> None:
    stack, metrics = resting_stack
    session_id = f"rest-{uuid.uuid4().hex[:10]}"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(workspace))
        first = await ide.say("write notes.txt: first line")
        assert first.status == "completed"
        assert (workspace / "notes.txt").read_text().startswith("first line")
        # The connection stays open: the session is live, idle, and rests.
        await eventually(lambda: "sessions_rested" in stack.runtime.output)
        samples = await asyncio.to_thread(scrape, metrics)
        assert total(samples, "codelab_runtime_histories_rested_total") >= 1
        assert total(samples, "codelab_runtime_histories_recalled_total") == 0
        second = await ide.say("read notes.txt")
        assert second.status == "completed"
        # Read back when the message arrived, before its turn began.
        samples = await asyncio.to_thread(scrape, metrics)
        assert total(samples, "codelab_runtime_histories_recalled_total") >= 1
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(
            f"http://127.0.0.1:{stack.gateway_port}/api/v1/sessions/{session_id}/history",
            headers={"Authorization": f"Bearer {mesh.token}"},
        )
    assert reply.status_code == 200
    messages = reply.json()["messages"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[:1] == ["write notes.txt: first line"]
    assert "read notes.txt" in users
