"""Semantic search over the workspace (issue 17, item 7) on real processes.

A session reads files through the IDE (our terminal client's workspace),
then the offline model's ``find QUERY`` calls ``codebase_search``, which the
runtime runs itself: the query and the chunks are embedded by llmproxy's
``Embed`` on the offline model, and the best chunk's file is named first.
On SQLite and PostgreSQL, across a restart of the runtime; another session
and another user see nothing of it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh, Stack, add_user
from tests.integration.test_persistence import reconnected

FILES = {
    "src/auth.py": (
        "import hashlib\nimport os\n\n\n"
        "def hash_password(password: str) -> str:\n"
        '    """Hash a password with a random salt."""\n'
        "    salt = os.urandom(16)\n"
        '    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000).hex()\n'
    ),
    "src/db.py": (
        "from sqlalchemy import create_engine\n\n\n"
        "class Database:\n"
        "    def connect(self, url: str) -> None:\n"
        '        """Open the database connection."""\n'
        "        self.engine = create_engine(url)\n"
    ),
    "ui/button.py": (
        "def render_button(label: str, color: str) -> str:\n"
        '    return f"<button style=\\"color: {color}\\">{label}</button>"\n'
    ),
}
SEARCHED = "codebase_search found: "


def workspace(root: Path) -> Workspace:
    for path, content in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return Workspace(root)


def found(text: str) -> list[str]:
    """The files a search named, best first (the offline model's summary)."""
    assert text.startswith(SEARCHED), text
    return [hit.rsplit(":", 1)[0] for hit in text.removeprefix(SEARCHED).split(", ")]


async def token_of_another_user(mesh: Mesh) -> str:
    """A new user's token for our own client's protocol."""
    async with httpx.AsyncClient(base_url=mesh.front_url, timeout=10) as http:
        reply = await http.post(
            "/oauth/token",
            data={"grant_type": "password", "client_id": "codelab-ide", **add_user(mesh)},
        )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


async def nothing_found(url: str, token: str, root: Path) -> None:
    async with IdeConnection(url, f"search-{uuid.uuid4().hex[:8]}", token) as connection:
        await connection.next_frame()
        turn = await IdeSession(connection, workspace(root)).switch(
            "coder", "find where passwords are hashed"
        )
    assert turn.status == "completed"
    assert turn.executed == []
    assert turn.text.startswith(SEARCHED + "nothing searchable yet"), turn.text


async def test_a_session_finds_what_it_read_across_a_restart_and_nobody_else_does(
    stack: Stack, mesh: Mesh, tmp_path: Path
) -> None:
    session_id = f"search-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as connection:
        await connection.next_frame()
        session = IdeSession(connection, workspace(tmp_path))
        turn = await session.switch(
            "coder", "read ui/button.py and read src/db.py and read src/auth.py"
        )
        assert [f["tool_name"] for f in turn.executed] == ["read_file"] * 3

        turn = await session.say("find where passwords are hashed")

        assert turn.status == "completed"
        assert turn.executed == [], "the runtime ran the search, not the IDE"
        assert found(turn.text)[0] == "src/auth.py"
        assert set(found(turn.text)) == set(FILES)

    await nothing_found(stack.ws_url, mesh.token, tmp_path)
    await nothing_found(stack.ws_url, await token_of_another_user(mesh), tmp_path)

    assert stack.runtime.stop() == 0
    stack.runtime.start()
    async with reconnected(stack.ws_url, session_id, mesh.token) as connection:
        await connection.next_frame()
        session = IdeSession(connection, Workspace(tmp_path))
        turn = await session.say("find the database connection")
    assert turn.executed == []
    assert found(turn.text)[0] == "src/db.py", "the index outlived the runtime"
