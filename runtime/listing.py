"""A ``list_files`` result turned into the workspace tree the model is shown.

:func:`summarize_listing` reads what an IDE answered to ``list_files``
(recursive, from the workspace root) and renders a bounded, indented tree
for the system prompt's environment section
(:func:`runtime.prompts.environment_details`): breadth first, so the top
levels are always complete before any deeper one, directories before files,
and a "… and N more" line wherever entries were left out (a directory none
of whose entries fit says only how many it has). Pure: no I/O.

Two answers are understood:

- the CodeLab IDE's: ``{"success": true, "path": ".", "items": [{"name",
  "path", "type": "file" | "directory", "size"?, "modified"?}],
  "total_count": N}`` (its recursive listing also descends into hidden and
  dependency folders, which are shown here but not opened);
- our terminal client's (:mod:`ide.workspace`): ``{"path": ".", "files":
  ["src/a.py", "docs/", …], "truncated": bool}``, where directories end in
  ``/`` (a recursive listing names only files; their folders are implied).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_ENTRIES = 200
"""Files and directories shown at most (Roo Code's ``maxWorkspaceFiles`` default)."""
MAX_CHARS = 8000
"""Characters of the rendered tree at most (about 2,000 tokens)."""
NOT_OPENED = frozenset(
    {
        "node_modules",
        "__pycache__",
        "venv",
        "build",
        "dist",
        "target",
        "vendor",
        "Pods",
    }
)
"""Directories shown but not opened: generated or third-party content that
would crowd out the project's own files. Names starting with a dot too."""
_INDENT = "  "
_CUT_SHORT = "(the IDE's listing was itself cut short)"
_MORE_RESERVE = len("… and 999999 more") + 1
"""Characters kept per shown directory for its "… and N more" line."""


@dataclass(slots=True)
class _Node:
    name: str
    depth: int
    is_dir: bool
    children: dict[str, _Node] = field(default_factory=dict)

    def child(self, name: str, is_dir: bool) -> _Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node(name, self.depth + 1, is_dir)
        node.is_dir = node.is_dir or is_dir
        return node

    def ordered(self) -> list[_Node]:
        """Directories first, then files; each by name, case-insensitively."""
        return sorted(self.children.values(), key=lambda n: (not n.is_dir, n.name.lower(), n.name))

    def opens(self) -> bool:
        return self.is_dir and not self.name.startswith(".") and self.name not in NOT_OPENED


def summarize_listing(
    result: Mapping[str, Any], *, max_entries: int = MAX_ENTRIES, max_chars: int = MAX_CHARS
) -> str:
    """The workspace tree in ``result`` (a ``list_files`` answer), at most
    ``max_entries`` entries and about ``max_chars`` characters.

    Entries that are not workspace-relative (absolute, or with ``..``) are
    skipped; an answer in neither shape, or an empty one, gives
    ``"(no files)"``. Never raises on malformed entries.
    """
    root = _Node("", 0, True)
    for path, is_dir in entries(result):
        node = root
        parts = path.split("/")
        for index, part in enumerate(parts):
            node = node.child(part, is_dir or index < len(parts) - 1)
    shown = _choose(root, max_entries, max_chars)
    lines: list[str] = []
    _render(root, shown, lines)
    if not lines:
        return "(no files)"
    if _truncated_by_ide(result):
        lines.append(_CUT_SHORT)
    return "\n".join(lines)


def entries(result: Mapping[str, Any]) -> Iterator[tuple[str, bool]]:
    """(workspace-relative path, is a directory) for each listed entry."""
    items = result.get("items")
    if isinstance(items, list):  # the CodeLab IDE
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("path"), str):
                path = _normal(item["path"])
                if path:
                    yield path, item.get("type") == "directory"
        return
    files = result.get("files")
    if isinstance(files, list):  # ide.workspace
        for name in files:
            if isinstance(name, str):
                path = _normal(name)
                if path:
                    yield path, name.endswith("/")


def _normal(path: str) -> str:
    """``path`` with "/" separators and no "." parts; "" if it is not workspace-relative."""
    path = path.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return ""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        return ""
    return "/".join(parts)


def _choose(root: _Node, max_entries: int, max_chars: int) -> set[int]:
    """The nodes shown (by id): breadth first until either budget is spent."""
    shown: set[int] = set()
    size = 2 * _MORE_RESERVE + len(_CUT_SHORT)  # the root's "… and N more", the IDE's cut
    queue = deque([root])
    while queue:
        for node in queue.popleft().ordered():
            cost = len(_INDENT) * (node.depth - 1) + len(node.name) + 2
            if node.children:  # its "… and N more" line or "(N entries, not listed)"
                cost += len(_INDENT) * node.depth + _MORE_RESERVE
            if len(shown) == max_entries or size + cost > max_chars:
                return shown
            shown.add(id(node))
            size += cost
            if node.opens():
                queue.append(node)
    return shown


def _render(directory: _Node, shown: set[int], lines: list[str]) -> None:
    indent = _INDENT * directory.depth
    hidden = 0
    for node in directory.ordered():
        if id(node) not in shown:
            hidden += 1
            continue
        if not node.is_dir:
            lines.append(f"{indent}{node.name}")
        elif not node.opens() and node.children:
            lines.append(f"{indent}{node.name}/ ({_count(len(node.children))}, not listed)")
        elif node.children and not any(id(child) in shown for child in node.children.values()):
            lines.append(f"{indent}{node.name}/ ({_count(len(node.children))})")
        else:
            lines.append(f"{indent}{node.name}/")
            _render(node, shown, lines)
    if hidden:
        lines.append(f"{indent}… and {hidden} more")


def _count(entries: int) -> str:
    return f"{entries} entr{'y' if entries == 1 else 'ies'}"


def _truncated_by_ide(result: Mapping[str, Any]) -> bool:
    if result.get("truncated") is True:
        return True
    total, items = result.get("total_count"), result.get("items")
    return isinstance(total, int) and isinstance(items, list) and total > len(items)
