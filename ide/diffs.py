"""A unified diff for a person at a terminal: coloured, bounded, safe to print.

The runtime says what a tool call will change as a git-style unified diff
(``metadata.diff`` of a ``tool_call``). :func:`render_diff` turns it into
terminal text: added lines green, removed lines red, hunk headers cyan, file
headers bold when colour is on; at most ``max_lines`` lines, then
"… N more lines". A file can hold escape sequences, so control characters
are shown escaped (``\\x1b``, ``\\r``) and never reach the terminal as such.
Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import TextIO

GREEN, RED, CYAN, BOLD, DIM, RESET = (
    "\x1b[32m",
    "\x1b[31m",
    "\x1b[36m",
    "\x1b[1m",
    "\x1b[2m",
    "\x1b[0m",
)

_HUNK = re.compile(r"@@ -\d+(?:,(?P<old>\d+))? \+\d+(?:,(?P<new>\d+))? @@")
# Every control character but tab (C0, DEL, C1: 0x9b starts an escape sequence
# on some terminals): shown as an escape, never interpreted.
_VISIBLE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09} | {
    0x0D: "\\r",
}


class Line(Enum):
    """What one line of a unified diff is."""

    HEADER = "header"  # diff --git, index, ---, +++, mode lines
    HUNK = "hunk"  # @@ -a,b +c,d @@
    ADDED = "added"
    REMOVED = "removed"
    CONTEXT = "context"
    NOTE = "note"  # \ No newline at end of file


_STYLE = {Line.HEADER: BOLD, Line.HUNK: CYAN, Line.ADDED: GREEN, Line.REMOVED: RED, Line.NOTE: DIM}


def wants_color(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return not environ.get("NO_COLOR") and stream.isatty()


def printable(text: str) -> str:
    """``text`` with every control character but tab and newline escaped."""
    return "\n".join(line.translate(_VISIBLE) for line in text.split("\n"))


def classify(diff: str) -> Iterator[tuple[Line, str]]:
    """Each line of ``diff`` with its kind.

    Inside a hunk the header's line counts decide, so a removed line that
    reads ``-- x`` is not taken for a ``--- `` file header; a hunk header
    without counts falls back to the first character of each line.
    """
    old = new = 0
    loose = False
    for line in diff.split("\n")[: -1 if diff.endswith("\n") else None]:
        if line.startswith("\\"):
            yield Line.NOTE, line
        elif old > 0 or new > 0:
            if line.startswith("+"):
                new -= 1
                yield Line.ADDED, line
            elif line.startswith("-"):
                old -= 1
                yield Line.REMOVED, line
            else:
                old, new = old - 1, new - 1
                yield Line.CONTEXT, line
        elif line.startswith("@@"):
            match = _HUNK.match(line)
            loose = match is None
            if match is not None:
                old = int(match["old"] or 1)
                new = int(match["new"] or 1)
            yield Line.HUNK, line
        elif loose and line[:1] in ("+", "-", " ") and not line.startswith(("+++ ", "--- ")):
            yield {"+": Line.ADDED, "-": Line.REMOVED}.get(line[:1], Line.CONTEXT), line
        else:
            loose = False
            yield Line.HEADER, line


def render_diff(diff: str, *, color: bool, max_lines: int | None = None) -> str:
    """``diff`` as terminal text (no trailing newline), at most ``max_lines`` lines
    of it followed by "… N more lines"."""
    lines = list(classify(diff))
    shown = lines if max_lines is None else lines[: max(max_lines, 1)]
    out = []
    for kind, text in shown:
        visible = text.translate(_VISIBLE)
        style = _STYLE.get(kind)
        out.append(f"{style}{visible}{RESET}" if color and style else visible)
    hidden = len(lines) - len(shown)
    if hidden:
        more = f"… {hidden} more line{'s' if hidden != 1 else ''}"
        out.append(f"{DIM}{more}{RESET}" if color else more)
    return "\n".join(out)


def diff_stat(diff: str) -> tuple[int, int]:
    """How many lines ``diff`` adds and removes."""
    kinds = [kind for kind, _ in classify(diff)]
    return kinds.count(Line.ADDED), kinds.count(Line.REMOVED)
