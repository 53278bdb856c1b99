"""A list_files answer as the bounded tree the model is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ide.workspace import Workspace
from runtime.listing import MAX_CHARS, MAX_ENTRIES, summarize_listing


def codelab(*entries: tuple[str, str], total: int | None = None) -> dict[str, Any]:
    """A CodeLab IDE list_files answer (its FileItem JSON)."""
    items = [
        {"name": path.rsplit("/", 1)[-1], "path": path, "type": kind, "size": 1}
        for path, kind in entries
    ]
    return {"success": True, "path": ".", "items": items, "total_count": total or len(items)}


def test_the_codelab_ides_answer_becomes_a_tree_directories_first() -> None:
    answer = codelab(
        ("pubspec.yaml", "file"),
        ("lib", "directory"),
        ("lib/main.dart", "file"),
        ("lib/src", "directory"),
        ("lib/src/app.dart", "file"),
        ("README.md", "file"),
    )
    assert summarize_listing(answer) == (
        "lib/\n  src/\n    app.dart\n  main.dart\npubspec.yaml\nREADME.md"
    )


def test_hidden_and_dependency_folders_are_shown_but_not_opened() -> None:
    """The CodeLab IDE's recursive listing descends into .git and the like."""
    answer = codelab(
        (".git", "directory"),
        (".git/objects", "directory"),
        (".git/HEAD", "file"),
        ("node_modules", "directory"),
        ("node_modules/left-pad", "directory"),
        (".gitignore", "file"),
        ("src", "directory"),
        ("src/index.js", "file"),
    )
    assert summarize_listing(answer) == (
        ".git/ (2 entries, not listed)\n"
        "node_modules/ (1 entry, not listed)\n"
        "src/\n  index.js\n"
        ".gitignore"
    )


async def test_our_clients_answer_implies_folders_from_file_paths(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "core.py").write_text("x")
    (tmp_path / "src" / "main.py").write_text("x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.pyc").write_text("x")
    answer = await Workspace(tmp_path).run("list_files", {"path": ".", "recursive": True})
    assert summarize_listing(answer) == "src/\n  pkg/\n    core.py\n  main.py\nREADME.md"
    flat = {"path": ".", "files": ["docs/", "a.py"], "truncated": False}
    assert summarize_listing(flat) == "docs/\na.py"


def test_a_big_workspace_is_cut_breadth_first_within_both_bounds() -> None:
    files = [
        f"pkg{i:02}/mod{j:02}/file{k:02}.py" for i in range(40) for j in range(7) for k in range(10)
    ]
    summary = summarize_listing({"path": ".", "files": files, "truncated": False})
    lines = summary.splitlines()
    entries = [line for line in lines if not line.strip().startswith("…")]
    assert len(entries) <= MAX_ENTRIES
    assert len(summary) <= MAX_CHARS
    top = [line.split("/")[0] for line in lines if not line.startswith(" ")]
    assert top == [f"pkg{i:02}" for i in range(40)], "the top level is complete"
    assert "pkg39/ (7 entries)" in lines, "a folder none of whose entries fit says how many"
    assert "  … and 1 more" in lines, "a folder only some of whose entries fit, too"
    many = summarize_listing({"path": ".", "files": [f"f{i:04}.txt" for i in range(5000)]})
    assert many.splitlines()[-1] == f"… and {5000 - MAX_ENTRIES} more"
    small = summarize_listing({"path": ".", "files": files}, max_entries=10_000, max_chars=2000)
    assert len(small) <= 2000


def test_what_the_ide_cut_short_or_could_not_be_read_is_said() -> None:
    assert summarize_listing(codelab(("a.py", "file"), total=900)).endswith(
        "(the IDE's listing was itself cut short)"
    )
    assert summarize_listing({"path": ".", "files": ["a.py"], "truncated": True}).endswith(
        "cut short)"
    )
    assert summarize_listing({"error": "denied"}) == "(no files)"
    assert summarize_listing({"items": "nope"}) == "(no files)"


def test_paths_outside_the_workspace_and_odd_entries_are_skipped() -> None:
    answer = {
        "items": [
            {"path": "/etc/passwd", "type": "file"},
            {"path": "../up.txt", "type": "file"},
            {"path": r"C:\Windows\x", "type": "file"},
            {"path": r"src\win.py", "type": "file"},
            {"path": "./ok.py", "type": "file"},
            {"name": "no-path"},
            "not an object",
        ]
    }
    assert summarize_listing(answer) == "src/\n  win.py\nok.py"
