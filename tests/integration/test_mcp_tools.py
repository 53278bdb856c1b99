"""Issue 17's MCP promise on real processes: an MCP tool from a test server is
called, approved and recorded.

A runtime and gateway of the test's own, on the package's llmproxy (as ``stack``), on SQLite and
PostgreSQL, with the operator's servers file naming the test MCP server
(tests/mcp_server.py) twice: over stdio (a human approves each call) and over
streamable HTTP on loopback (no approval). The offline model's ``call`` verb
calls them; the IDE is our terminal client's session driver, which approves.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from mesh.database import create_engine
from runtime.schema import sessions, tool_calls
from tests.conftest import free_port, fresh_postgres_sync
from tests.integration.conftest import ROOT, Mesh, Stack
from tests.integration.test_undo import Approvals
from tests.support import Service

# The whole mesh starts first, then two MCP server processes (busy CI machines).
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def mcp_stack(
    request: pytest.FixtureRequest, mesh: Mesh, shared_llmproxy: str, tmp_path: Path
) -> Iterator[tuple[Stack, Path]]:
    """``stack`` with two MCP servers configured; yields it and the stdio server's call log."""
    calls = tmp_path / "calls.log"
    port = free_port()
    web = Service(
        [sys.executable, "-m", "tests.mcp_server", "http", str(port)],
        cwd=ROOT,
        ready="Uvicorn running on",
    )
    servers = {
        "servers": {
            "demo": {
                "command": sys.executable,
                "args": ["-m", "tests.mcp_server"],
                "env": {"MCP_TEST_CALLS": str(calls), "PYTHONPATH": str(ROOT)},
                "agents": ["coder"],
                "connect_timeout": 240,  # a busy machine starts Python slowly
            },
            "web": {
                "url": f"http://127.0.0.1:{port}/mcp",
                "approval": False,
                "connect_timeout": 240,
            },
        }
    }
    (tmp_path / "mcp.json").write_text(json.dumps(servers))
    with contextlib.ExitStack() as cleanup:
        web.start()
        cleanup.callback(web.stop)
        if request.param == "sqlite":
            database = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
        else:
            database = cleanup.enter_context(fresh_postgres_sync("test_mcp"))
        own = Stack(
            mesh,
            database,
            shared_llmproxy,
            {"AGENT_RUNTIME__MCP_SERVERS": str(tmp_path / "mcp.json")},
        )
        cleanup.callback(own.stop)
        own.start()
        yield own, calls


async def rows(database: str, session_id: str) -> tuple[str, list[Any]]:
    """The session's owner and its tool call rows (the audit), oldest first."""
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            owner = (
                await conn.execute(sa.select(sessions.c.owner).where(sessions.c.id == session_id))
            ).scalar_one()
            found = await conn.execute(
                sa.select(tool_calls)
                .where(tool_calls.c.session_id == session_id)
                .order_by(tool_calls.c.created_at, tool_calls.c.call_id)
            )
            return owner, list(found)
    finally:
        await engine.dispose()


async def test_an_mcp_tool_is_called_approved_and_recorded(
    mcp_stack: tuple[Stack, Path], mesh: Mesh, tmp_path: Path
) -> None:
    stack, calls = mcp_stack
    approvals = Approvals()
    session_id = f"mcp-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        assert (await connection.next_frame())["type"] == "session_info"
        ide = IdeSession(connection, Workspace(tmp_path), approve=approvals)

        turn = await ide.say('call mcp__demo__add {"a": 2, "b": 3}')
        assert turn.status == "completed"
        # On a failure, what the runtime said about its MCP servers and what
        # the stdio server wrote to its stderr (the lines that are not the
        # runtime's JSON), printed whole: the assertion's message is cut.
        said = [
            line
            for line in stack.runtime.output.splitlines()
            if '"mcp_' in line or not line.startswith("{")
        ]
        if len(approvals.asked) != 1:
            print("runtime's MCP lines and other output:", *said[-60:], sep="\n")
        assert len(approvals.asked) == 1, (turn.text, said)
        (asked,) = approvals.asked
        assert (asked["tool_name"], asked["arguments"]) == ("mcp__demo__add", {"a": 2, "b": 3})
        assert asked["requires_approval"]
        assert turn.executed == [], "the runtime ran it, not the IDE"
        assert "mcp__demo__add returned: 5" in turn.text
        assert calls.read_text() == "2+3\n", "the server ran it once"

        # Over streamable HTTP, a server the operator lets run unasked.
        turn = await ide.say('call mcp__web__add {"a": 20, "b": 22}')
        assert turn.status == "completed"
        assert len(approvals.asked) == 1, "nobody was asked"
        assert "mcp__web__add returned: 42" in turn.text

        # The schema the server declared is checked before any call.
        turn = await ide.say('call mcp__demo__add {"a": "two", "b": 3}')
        assert "mcp__demo__add failed: invalid arguments: a: 'two' is not of type" in turn.text
        assert len(approvals.asked) == 1
        assert calls.read_text() == "2+3\n"

    owner, recorded = await rows(stack.database, session_id)
    demo, web = [r for r in recorded if r.tool_name.startswith("mcp__")]
    assert (demo.tool_name, demo.status, demo.decided_by) == ("mcp__demo__add", "completed", owner)
    assert json.loads(demo.arguments) == {"a": 2, "b": 3}
    assert demo.decided_at is not None
    assert (web.tool_name, web.status, web.decided_by) == ("mcp__web__add", "completed", None)
