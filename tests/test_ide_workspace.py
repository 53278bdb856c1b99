"""The terminal client's tools (``ide.workspace``) honour the parameters the
runtime sends, as the CodeLab IDE does."""

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


async def test_the_reported_environment_names_the_shell_commands_run_in(tmp_path: Path) -> None:
    frame = environment_frame(tmp_path)
    reported = parse_frame(json.dumps(frame)).environment
    assert reported.os.startswith(platform.system())
    assert reported.workspace_root == str(tmp_path)
    ran = await Workspace(tmp_path).run("execute_command", {"command": "echo $0"})
    assert ran["stdout"].strip() == reported.shell
