"""The REST views the terminal client reads (``ide.rest``): where it finds
them, what it sends, and how it prints checkpoints and approval rules.
The server is httpx's in-process transport: these test the client only."""

from __future__ import annotations

import httpx
import pytest

from ide.rest import RestClient, RestError, format_checkpoints, format_rules, rest_base

CHECKPOINTS = {
    "turns": [
        {
            "turn_id": "turn-1",
            "message": "write app.py:\nprint('hi')",
            "files": [{"path": "app.py", "change": "created"}],
            "undone": True,
            "created_at": "2026-11-30T10:00:00Z",
        },
        {
            "turn_id": "turn-2",
            "message": "fix the \x1b[31mbug",
            "files": [
                {"path": "app.py", "change": "modified"},
                {"path": "old.py", "change": "deleted"},
            ],
            "undone": False,
            "created_at": "2026-11-30T10:05:00Z",
        },
    ]
}


@pytest.mark.parametrize(
    ("ws_url", "base"),
    [
        ("ws://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("ws://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("wss://ide.example.com/api/v1", "https://ide.example.com"),
        ("wss://example.com/codelab/api/v1/", "https://example.com/codelab"),
    ],
)
def test_the_rest_base_is_the_websocket_base_over_http(ws_url: str, base: str) -> None:
    assert rest_base(ws_url) == base


async def test_a_view_is_read_with_the_token_at_its_path() -> None:
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CHECKPOINTS)

    rest = RestClient("http://gw:8000", "token-1", transport=httpx.MockTransport(server))
    assert await rest.checkpoints("chat 1/x") == CHECKPOINTS
    assert seen[0].method == "GET"
    assert seen[0].url.raw_path == b"/api/v1/sessions/chat%201%2Fx/checkpoints"
    assert seen[0].headers["Authorization"] == "Bearer token-1"


async def test_an_error_answer_says_what_the_server_said() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        body = {"error": "not_found", "error_description": "no session 's9'"}
        return httpx.Response(404, json=body)

    rest = RestClient("http://gw:8000", "t", transport=httpx.MockTransport(server))
    with pytest.raises(RestError, match=r"checkpoints: 404 no session 's9'"):
        await rest.checkpoints("s9")


async def test_an_unreachable_server_is_a_rest_error() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rest = RestClient("http://gw:8000", "t", transport=httpx.MockTransport(server))
    with pytest.raises(RestError, match="cannot reach http://gw:8000: connection refused"):
        await rest.approval_rules()


def test_checkpoints_list_each_turn_with_its_files() -> None:
    assert format_checkpoints(CHECKPOINTS) == (
        "turn-1  2026-11-30T10:00:00Z (undone)  write app.py: print('hi')\n"
        "    created  app.py\n"
        "turn-2  2026-11-30T10:05:00Z  fix the \\x1b[31mbug\n"
        "    modified app.py\n"
        "    deleted  old.py"
    )
    assert format_checkpoints({"turns": []}) == "no turn has changed files yet"


def test_rules_show_allow_deny_then_the_settings() -> None:
    body = {
        "allow": ["read_file", {"tool": "write_file", "path": "docs/**"}],
        "deny": [],
        "max_auto_approvals_per_turn": 20,
    }
    assert format_rules(body) == (
        "allow:\n"
        "  read_file\n"
        '  {"tool": "write_file", "path": "docs/**"}\n'
        "deny: (none)\n"
        "max_auto_approvals_per_turn: 20"
    )
