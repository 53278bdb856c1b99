"""Issue 17 (items 1 and 2) over the real mesh: a project's AGENTS.md and
.codelab/agents.yaml, read by the runtime through the terminal client's
workspace, change what the offline model answers and what an agent may write.

The offline model honours one instruction it sees in its system prompt
(``Begin every answer with "…".``, llmproxy/playbook.py), as a real model
would any: that is how a line of AGENTS.md shows in its answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ide.connection import IdeConnection
from ide.turns import Decision, IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh

SQL_AGENT = """\
agents:
  - name: sql
    description: Writes SQL migrations and queries.
    prompt: You are the SQL engineer of this project.
    tools: [read, edit]
    writable: ["*.sql"]
    keywords: [sql, migration]
"""


class Approvals:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def __call__(self, frame: dict[str, Any]) -> Decision:
        self.asked.append(frame)
        return Decision("approve")


@pytest.fixture
async def connection(mesh: Mesh) -> AsyncIterator[IdeConnection]:
    session_id = f"project-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as conn:
        await conn.next_frame()  # session_info
        yield conn


async def opened(connection: IdeConnection, root: Path, approvals: Approvals) -> IdeSession:
    await connection.report_environment(root)
    return IdeSession(connection, Workspace(root), approve=approvals)


async def test_a_line_of_agents_md_changes_the_answer(
    connection: IdeConnection, tmp_path: Path
) -> None:
    (tmp_path / "AGENTS.md").write_text(
        '# Conventions\n\n- Begin every answer with "Ahoy, from AGENTS.md!".\n'
    )
    ide = await opened(connection, tmp_path, Approvals())
    turn = await ide.say("hello there")
    assert turn.text.startswith("Ahoy, from AGENTS.md! You said: hello there")
    reads = [f for f in turn.of_type("tool_call") if f["tool_name"] == "read_file"]
    assert [f["arguments"]["path"] for f in reads] == ["AGENTS.md"]
    assert not any(f["requires_approval"] for f in turn.of_type("tool_call"))


async def test_without_agents_md_the_answer_is_the_plain_echo(
    connection: IdeConnection, tmp_path: Path
) -> None:
    ide = await opened(connection, tmp_path, Approvals())
    turn = await ide.say("hello there")
    assert turn.text.startswith("You said: hello there")


async def test_a_yaml_agent_writes_a_sql_and_is_refused_a_py(
    connection: IdeConnection, tmp_path: Path, mesh: Mesh
) -> None:
    (tmp_path / ".codelab").mkdir()
    (tmp_path / ".codelab" / "agents.yaml").write_text(SQL_AGENT)
    approvals = Approvals()
    ide = await opened(connection, tmp_path, approvals)
    await ide.say("hello")  # the first turn reads the project's files
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.gateway_port}") as rest:
        listed = await rest.get(
            "/api/v1/agents",
            params={"session_id": connection.session_id},
            headers={"Authorization": f"Bearer {mesh.token}"},
        )
    assert listed.status_code == 200
    sql = next(agent for agent in listed.json()["agents"] if agent["name"] == "sql")
    assert (sql["origin"], sql["writable_paths"], sql["keywords"]) == (
        "project",
        ["*.sql"],
        ["sql", "migration"],
    )

    written = await ide.switch("sql", "write a.sql: select 1;")
    assert (tmp_path / "a.sql").read_text() == "select 1;\n"
    assert [frame["tool_name"] for frame in approvals.asked] == ["write_file"]
    assert written.status == "completed"

    refused = await ide.say("write a.py: x = 1")
    assert not (tmp_path / "a.py").exists()
    assert "refused by policy: the sql agent may only write *.sql, not 'a.py'" in refused.text
    assert len(approvals.asked) == 1, "nothing was asked: the policy refused it first"


async def test_the_users_instructions_are_set_through_the_front_door_and_heeded(
    connection: IdeConnection, tmp_path: Path, dev_front: httpx.AsyncClient
) -> None:
    put = await dev_front.put(
        "/api/v1/instructions", json={"text": 'Begin every answer with "Dear user,".'}
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"text": 'Begin every answer with "Dear user,".', "max_chars": 8000}
    try:
        ide = await opened(connection, tmp_path, Approvals())
        turn = await ide.say("hello there")
        assert turn.text.startswith("Dear user, You said: hello there")
        bad = await dev_front.put("/api/v1/instructions", json={"txt": "x"})
        assert bad.status_code == 400
    finally:
        cleared = await dev_front.put("/api/v1/instructions", json={"text": ""})
        assert cleared.json()["text"] == ""
    assert (await dev_front.get("/api/v1/instructions")).json()["text"] == ""
