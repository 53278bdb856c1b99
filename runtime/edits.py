"""Targeted edits of a file's text, and the unified diff a human approves.

(Minimal version; the full engine with candidate reporting replaces it.)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence


class EditFailed(ValueError):
    """An edit does not apply; the message tells the model how to retry."""


def apply_blocks(text: str, blocks: Sequence[Mapping[str, str]]) -> str:
    for number, block in enumerate(blocks, start=1):
        count = text.count(block["search"])
        if count != 1:
            raise EditFailed(f"block {number}: the search text occurs {count} times, not once")
        text = text.replace(block["search"], block["replace"], 1)
    return text


def insert_lines(text: str, line: int, content: str) -> str:
    lines = text.splitlines(keepends=True)
    if line > len(lines) + 1:
        raise EditFailed(f"line {line} is past the end ({len(lines)} lines)")
    if not content.endswith("\n"):
        content += "\n"
    at = len(lines) if line == 0 else line - 1
    return "".join(lines[:at]) + content + "".join(lines[at:])


def unified_diff(path: str, before: str | None, after: str | None, context: int = 3) -> str:
    if before == after:
        return ""
    old = (before or "").splitlines(keepends=True)
    new = (after or "").splitlines(keepends=True)
    lines = difflib.unified_diff(
        old,
        new,
        "/dev/null" if before is None else f"a/{path}",
        "/dev/null" if after is None else f"b/{path}",
        n=context,
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def diff_stats(diff: str) -> tuple[int, int]:
    added = removed = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed
