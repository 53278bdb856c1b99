"""The CodeLab IDE's chat against the whole mesh, through the front door.

The client (tests/integration/dart_chat.py) behaves as ``codelab_ide`` at
its HEAD: every frame decoded through a replica of ``MessageModel.fromJson``
(``agent_chat/data/models/message_model.g.dart``), every decoded frame a
bubble, tool calls run at once, approvals asked locally and answered with
``tool_result``, pending approvals restored from REST on connect. It logs
in as ``codelab-flutter-app``, so the gateway serves it the ``codelab-ide``
profile (gateway/profiles.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.integration.conftest import Mesh, ide_login, launch
from tests.integration.dart_chat import Bubble, DartChat, MessageModel
from tests.support import eventually


async def login(mesh: Mesh) -> str:
    """The IDE's password grant at the front door; its access token."""
    return (await ide_login(mesh))["access_token"]


async def new_session(mesh: Mesh, token: str) -> str:
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as http:
        created = await http.post("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201, created.text
    session_id: str = created.json()["session_id"]
    return session_id


def texts(bubbles: list[Bubble]) -> list[str]:
    return [b.text for b in bubbles if b.kind == "text"]


def no_empty_bubbles(bubbles: list[Bubble]) -> None:
    assert all(b.text.strip() for b in bubbles), bubbles


async def test_the_ides_chat_reads_writes_is_refused_and_streams_one_bubble(
    mesh: Mesh, tmp_path: Path
) -> None:
    token = await login(mesh)
    session_id = await new_session(mesh, token)
    decisions: list[str] = ["approve", "reject"]

    def human(call: MessageModel) -> str | None:
        return decisions.pop(0)

    async with DartChat(mesh.front_url, token, session_id, tmp_path, human) as chat:
        # An approved write: the workspace listed for the agents' prompt (a
        # session's first turn), the file's previous state read (not found:
        # a new file), then the write asked once, run by the IDE, answered.
        shown = await chat.say("write hello.py: print('hi')")
        assert (tmp_path / "hello.py").read_text().strip() == "print('hi')"
        calls = [b for b in shown if b.kind == "tool_call"]
        assert [c.text for c in calls] == ["list_files", "read_file", "write_file"]  # once each
        assert [b.kind for b in shown if b.kind == "error"] == []
        assert texts(shown)[-1].startswith("write_file returned:")
        no_empty_bubbles(shown)

        # A read: no question, the result goes to the model.
        shown = await chat.say("read hello.py")
        assert [b.text for b in shown if b.kind == "tool_call"] == ["read_file"]
        assert "print('hi')" in texts(shown)[-1]
        no_empty_bubbles(shown)

        # A rejected write: the IDE's rejection is the user's rejection.
        shown = await chat.say("write evil.py: import os")
        assert not (tmp_path / "evil.py").exists()
        assert not decisions
        answer = texts(shown)[-1]
        assert answer.startswith("write_file failed:")
        assert "rejected" in answer
        assert [b.kind for b in shown if b.kind == "error"] == []

        # A streamed answer is one bubble with the whole text.
        shown = await chat.say("hello there")
        assert [b.kind for b in shown] == ["text"]
        (answer_bubble,) = shown
        assert answer_bubble.text.startswith("You said: hello there")
        assert len(answer_bubble.text.split()) > 10  # every delta in it
        assert answer_bubble.is_final

    # Nothing it was sent failed its decoder, and nothing it cannot render came.
    assert {f["type"] for f in chat.frames} <= {"assistant_message", "tool_call", "agent_switched"}

    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as http:
        pending = await http.get(
            f"/api/v1/sessions/{session_id}/pending-approvals",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert pending.json()["pending_approvals"] == []


async def test_a_pending_approval_is_restored_after_reconnect(mesh: Mesh, tmp_path: Path) -> None:
    token = await login(mesh)
    session_id = await new_session(mesh, token)
    walked_away: list[MessageModel] = []

    def away(call: MessageModel) -> str | None:
        walked_away.append(call)
        return None

    async with DartChat(mesh.front_url, token, session_id, tmp_path, away) as chat:
        await chat.say("write later.py: x = 1")
    (waiting,) = walked_away
    assert not (tmp_path / "later.py").exists()

    async with DartChat(mesh.front_url, token, session_id, tmp_path) as chat:
        # Restored from /pending-approvals, approved, run and answered on connect.
        await chat.until_final()
    assert (tmp_path / "later.py").read_text().strip() == "x = 1"
    # The call was not offered again on the socket: the IDE would ask twice.
    assert [b for b in chat.bubbles if b.kind == "tool_call"] == []
    assert texts(chat.bubbles)[-1].startswith("write_file returned:")
    assert waiting["call_id"]


@pytest.fixture(scope="module")
def short_lived_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with launch(
        tmp_path_factory.mktemp("short-tokens"),
        AUTH_SERVICE__ACCESS_TOKEN_TTL="2",
        GATEWAY__JWT_LEEWAY="0",
    ) as started:
        yield started


async def test_the_ides_socket_outlives_its_access_token(
    short_lived_mesh: Mesh, tmp_path: Path
) -> None:
    mesh = short_lived_mesh
    token = await login(mesh)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    session_id = await new_session(mesh, token)
    async with DartChat(mesh.front_url, token, session_id, tmp_path) as chat:
        await eventually(lambda: time.time() > expires + 1)
        shown = await chat.say("hello after expiry")
    assert texts(shown)[-1].startswith("You said: hello after expiry")
