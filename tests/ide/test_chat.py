"""The chat REPL's commands (``ide.__main__.Chat``): each line becomes the
frame or REST read it names, against the scripted gateway (conftest) and an
in-process REST server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from ide.__main__ import HELP, Chat
from ide.connection import IdeConnection
from ide.rest import RestClient
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.ide.conftest import ScriptedGateway

RULES = {"allow": ["read_file"], "deny": ["execute_command"], "max_auto_approvals_per_turn": 5}


class RestViews:
    """The REST views the chat reads, served in process; records each path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/api/v1/approval-rules":
            return httpx.Response(200, json=RULES)
        if request.url.path == "/api/v1/sessions/s1/checkpoints":
            turn = {"turn_id": "turn-4", "message": "write a.py: x", "created_at": "now"}
            files = [{"path": "a.py", "change": "created"}]
            return httpx.Response(200, json={"turns": [turn | {"files": files, "undone": False}]})
        return httpx.Response(404, json={"error": "not_found", "error_description": "no view"})


@pytest.fixture
def views() -> RestViews:
    return RestViews()


@pytest.fixture
def chat(connection: IdeConnection, tmp_path: Path, views: RestViews) -> Chat:
    rest = RestClient("http://gw", "token-1", transport=httpx.MockTransport(views))
    return Chat(IdeSession(connection, Workspace(tmp_path)), rest)


async def answered(gateway: ScriptedGateway, chat: Chat, line: str) -> dict[str, Any]:
    """Run ``line``; return the frame it sent, after ending the turn it started."""
    peer = await gateway.accept()
    running = asyncio.create_task(chat.run_line(line))
    frame = await peer.receive()
    await peer.end_turn("done")
    assert await running is True
    return frame


@pytest.mark.parametrize(
    ("line", "frame"),
    [
        ("/undo", {"type": "undo"}),
        ("/undo turn-4", {"type": "undo", "turn_id": "turn-4"}),
        (
            "/switch debug why?",
            {
                "type": "switch_agent",
                "agent_type": "debug",
                "content": "why?",
                "reason": "switched from the terminal",
            },
        ),
        # A path is a message, not a command.
        ("/tmp/x.log: what is it?", {"type": "user_message", "content": "/tmp/x.log: what is it?"}),
    ],
)
async def test_a_line_sends_its_frame(
    gateway: ScriptedGateway, chat: Chat, line: str, frame: dict[str, Any]
) -> None:
    sent = await answered(gateway, chat, line)
    assert sent | frame == sent, sent


async def test_rest_commands_print_the_views(
    chat: Chat, views: RestViews, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await chat.run_line("/checkpoints") is True
    assert capsys.readouterr().out == "turn-4  now  write a.py: x\n    created  a.py\n"
    assert await chat.run_line("/rules") is True
    assert capsys.readouterr().out == (
        "allow:\n  read_file\ndeny:\n  execute_command\nmax_auto_approvals_per_turn: 5\n"
    )
    assert views.paths == ["/api/v1/sessions/s1/checkpoints", "/api/v1/approval-rules"]


async def test_a_server_without_the_view_is_a_line_and_the_chat_goes_on(
    connection: IdeConnection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "not_found", "error_description": "no view"})

    rest = RestClient("http://gw", "t", transport=httpx.MockTransport(missing))
    chat = Chat(IdeSession(connection, Workspace(tmp_path)), rest)
    assert await chat.run_line("/rules") is True
    assert capsys.readouterr().err == "[rest] /api/v1/approval-rules: 404 no view\n"


async def test_help_unknown_commands_and_quit_send_nothing(
    gateway: ScriptedGateway, chat: Chat, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await chat.run_line("/help") is True
    shown = capsys.readouterr().out
    assert shown == HELP + "\n"
    for command in ("/undo [TURN_ID]", "/checkpoints", "/rules", "[a]lways"):
        assert command in shown
    assert await chat.run_line("/frobnicate") is True
    assert await chat.run_line("/switch") is True
    assert "unknown command /frobnicate" in capsys.readouterr().err
    assert await chat.run_line("/quit") is False
    # Nothing went out for any of them: the next frame the gateway gets is this one.
    assert await answered(gateway, chat, "/undo") == {"type": "undo"}
