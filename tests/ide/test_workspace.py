"""The terminal client's tools (``ide.workspace``) honour the parameters the
runtime sends, as the CodeLab IDE does, and keep files byte for byte (what an
undo restores is what was there)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from gateway.frames import parse_frame
from ide.connection import environment_frame
from ide.workspace import ToolFailed, Workspace


async def test_a_write_creates_folders_only_when_asked(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    with pytest.raises(ToolFailed, match="create_dirs"):
        await workspace.run(
            "write_file", {"path": "new/a.txt", "content": "x", "create_dirs": False}
        )
    assert not (tmp_path / "new").exists()
    await workspace.run("write_file", {"path": "new/a.txt", "content": "x", "create_dirs": True})
    assert (tmp_path / "new" / "a.txt").read_text() == "x"


async def test_hidden_files_are_listed_only_when_asked(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("")
    (tmp_path / "main.py").write_text("")
    workspace = Workspace(tmp_path)
    plain = await workspace.run("list_files", {"path": ".", "recursive": True})
    assert plain["files"] == ["main.py"]
    everything = await workspace.run(
        "list_files", {"path": ".", "recursive": True, "include_hidden": True}
    )
    assert ".env" in everything["files"]


async def test_a_search_can_be_limited_to_file_names(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("TODO here\n")
    (tmp_path / "b.md").write_text("TODO there\n")
    workspace = Workspace(tmp_path)
    found = await workspace.run("search_in_code", {"query": "TODO", "file_pattern": "*.md"})
    assert [m["path"] for m in found["matches"]] == ["b.md"]


async def test_a_line_range_of_a_big_file_can_be_read(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_text("".join(f"line {n}\n" for n in range(300_000)))
    workspace = Workspace(tmp_path)
    with pytest.raises(ToolFailed, match="line range"):
        await workspace.run("read_file", {"path": "big.log"})
    part = await workspace.run("read_file", {"path": "big.log", "start_line": 2, "end_line": 3})
    assert part == {"path": "big.log", "content": "line 1\nline 2\n", "total_lines": 300_000}
    small = await workspace.run("read_file", {"path": "big.log", "end_line": 1})
    assert small["content"] == "line 0\n"


# What undo needs: a file read and written back is the same bytes.
EXACT_TEXTS = {
    "crlf.txt": "first\r\nsecond\r\n",
    "no-final-newline.py": "x = 1\ny = 2",
    "mixed.txt": "unix\nwindows\r\nold mac\rend",
    "unicode.md": "naïve — ünïcödé ✓\n",
    "empty.txt": "",
}


@pytest.mark.parametrize(("name", "text"), EXACT_TEXTS.items())
async def test_read_file_returns_the_exact_text(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_bytes(text.encode())
    result = await Workspace(tmp_path).run("read_file", {"path": name})
    assert result["content"] == text


@pytest.mark.parametrize(("name", "text"), EXACT_TEXTS.items())
async def test_write_file_writes_the_exact_bytes(tmp_path: Path, name: str, text: str) -> None:
    result = await Workspace(tmp_path).run("write_file", {"path": name, "content": text})
    assert (tmp_path / name).read_bytes() == text.encode()
    assert result["bytes"] == len(text.encode())


async def test_a_line_range_keeps_its_line_endings(tmp_path: Path) -> None:
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\r\nthree")
    workspace = Workspace(tmp_path)
    part = await workspace.run("read_file", {"path": "crlf.txt", "start_line": 2})
    assert part == {"path": "crlf.txt", "content": "two\r\nthree", "total_lines": 3}


async def test_delete_file_removes_a_file_and_refuses_a_folder(tmp_path: Path) -> None:
    (tmp_path / "gone.txt").write_text("bye")
    (tmp_path / "folder").mkdir()
    workspace = Workspace(tmp_path)
    assert await workspace.run("delete_file", {"path": "gone.txt"}) == {
        "path": "gone.txt",
        "deleted": True,
    }
    assert not (tmp_path / "gone.txt").exists()
    with pytest.raises(ToolFailed, match="not a file"):
        await workspace.run("delete_file", {"path": "folder"})
    with pytest.raises(ToolFailed, match="not a file"):
        await workspace.run("delete_file", {"path": "gone.txt"})


async def test_move_file_keeps_the_bytes_and_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"kept\r\nas is")
    (tmp_path / "taken.txt").write_text("mine")
    workspace = Workspace(tmp_path)
    moved = await workspace.run("move_file", {"source": "a.txt", "destination": "sub/b.txt"})
    assert moved == {"source": "a.txt", "destination": "sub/b.txt"}
    assert (tmp_path / "sub" / "b.txt").read_bytes() == b"kept\r\nas is"
    assert not (tmp_path / "a.txt").exists()
    with pytest.raises(ToolFailed, match="already exists"):
        await workspace.run("move_file", {"source": "sub/b.txt", "destination": "taken.txt"})
    assert (tmp_path / "taken.txt").read_text() == "mine"
    with pytest.raises(ToolFailed, match="outside the workspace"):
        await workspace.run("move_file", {"source": "sub/b.txt", "destination": "../out.txt"})


async def test_the_reported_environment_names_the_shell_commands_run_in(tmp_path: Path) -> None:
    frame = environment_frame(tmp_path)
    reported = parse_frame(json.dumps(frame)).environment
    assert reported.os.startswith(platform.system())
    assert reported.workspace_root == str(tmp_path)
    ran = await Workspace(tmp_path).run("execute_command", {"command": "echo $0"})
    assert ran["stdout"].strip() == reported.shell
