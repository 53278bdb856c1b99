"""A tool result too large for the runtime, over the real mesh: that call
fails with an error the offline model reads, the turn completes, the
connection lives on (docs/GATEWAY.md, "Frames").

The CodeLab IDE answers ``read_file`` with the whole file whatever its size;
a 1.5 MB file is more than the runtime takes (``GATEWAY__MAX_TOOL_RESULT_BYTES``,
1 MiB) and less than the socket does (``GATEWAY__MAX_FRAME_BYTES``, 4 MiB).
Both profiles: our protocol through :class:`ide.turns.IdeSession` on the
gateway's port, the IDE's through its replica at the front door.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ide.connection import IdeConnection
from ide.turns import IdeSession
from ide.workspace import Workspace
from tests.integration.conftest import Mesh
from tests.integration.dart_chat import DartChat
from tests.integration.test_codelab_chat import login, new_session, texts

BIG = 1_500_000
LIMIT = 1024 * 1024


def big_file(root: Path) -> Path:
    path = root / "big.log"
    path.write_text("".join(f"line {n:07d} {'x' * 40}\n" for n in range(BIG // 53 + 1)))
    assert path.stat().st_size > BIG
    return path


class WholeFiles(Workspace):
    """Our workspace, but reading whole files of any size, as the CodeLab IDE does."""

    async def _tool_read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> dict[str, Any]:
        lines = self.path(path).read_text().splitlines(keepends=True)
        first, last = (start_line or 1) - 1, end_line or len(lines)
        return {"path": path, "content": "".join(lines[first:last]), "total_lines": len(lines)}


def heard_the_limit(answer: str) -> None:
    assert answer.startswith("read_file failed: the tool result was "), answer
    assert f"more than the limit of {LIMIT} bytes" in answer
    assert "a line range of a file (start_line, end_line)" in answer


async def test_our_client_reads_too_much_and_then_a_line_range(mesh: Mesh, tmp_path: Path) -> None:
    big_file(tmp_path)
    session_id = f"big-{uuid.uuid4().hex[:10]}"
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as connection:
        await connection.next_frame()  # session_info
        session = IdeSession(connection, WholeFiles(tmp_path))
        turn = await session.say("read big.log")
        assert [f["tool_name"] for f in turn.executed] == ["read_file"]
        assert turn.status == "completed"
        heard_the_limit(turn.text)
        # The same connection: the model asks for less, and gets it.
        turn = await session.say("read big.log lines 2-3")
        assert turn.status == "completed"
        assert "line 0000001" in turn.text
        assert "line 0000002" in turn.text
        assert connection.ws.close_code is None


async def test_the_ides_chat_hears_the_error_in_one_bubble(mesh: Mesh, tmp_path: Path) -> None:
    big_file(tmp_path)
    token = await login(mesh)
    session_id = await new_session(mesh, token)
    async with DartChat(mesh.front_url, token, session_id, tmp_path) as chat:
        shown = await chat.say("read big.log")
        # The workspace is listed first, for the agents' prompt (a session's first turn).
        assert [b.text for b in shown if b.kind == "tool_call"] == ["list_files", "read_file"]
        assert [b.kind for b in shown if b.kind == "error"] == []
        heard_the_limit(texts(shown)[-1])
        # The socket is still open and the session goes on.
        shown = await chat.say("hello after the big file")
        assert texts(shown)[-1].startswith("You said: hello after the big file")
        assert chat.socket is not None
        assert chat.socket.close_code is None
