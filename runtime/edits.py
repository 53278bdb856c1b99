"""Targeted edits of a text file, and the diffs a human approves: pure, no I/O.

The runtime runs ``apply_diff`` and ``insert_content`` as an IDE
``read_file``, a computation here, and an IDE ``write_file`` of the result
(:class:`runtime.tools.Side.COMPOSED`). So that a human approves only the
change the model asked for, an edit never touches a byte outside the span it
replaces: line endings, a missing final newline and every other line come
back exactly as they were read.

Line endings: a file whose line ends are mostly CRLF is a CRLF file. Models
write ``\\n``; a block's text is matched and written in the file's style, so
an LF ``search`` finds its place in a CRLF file and its ``replace`` is
written with CRLF.

A failed edit raises :class:`EditFailed`, whose message is written for the
model (which reads it as the tool's error and retries): what did not match,
the most similar passage of the file, and what to do. Fuzzy matches are
reported, never applied: a near miss edits nothing.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

MAX_DIFF_BYTES = 256 * 1024
"""A diff longer than this (UTF-8) is cut at a line with a marker saying what
was left out; it is only what the human reads, the write is exact."""

CANDIDATE_TEXT_LIMIT = 1_000_000
"""Characters of a file beyond which no similar passage is looked for: the
cheap pass over every window costs about 0.25 s of CPU per million."""
CANDIDATE_COMPARISONS = 24
"""Similarity ratios computed per failed block, at most: the windows most
promising by a cheap bound first, stopping early once no window left can beat
the best found."""
CANDIDATE_CHARACTER_LIMIT = 4_000
"""A ``search`` up to this many characters is compared character by
character; a longer one line by line (a character ratio costs about the
square of the length: 0.15 s of CPU at 4,000 characters)."""
CANDIDATE_CHARACTER_WORK = 24_000_000
"""Character comparisons are cut so that their squared lengths sum to at most
this: 24 of a 1,000-character block, one of a 4,000-character one."""
CANDIDATE_SHOWN_LINES = 40
"""Lines of the similar passage quoted in the error, at most."""

_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")
_SPACE = re.compile(r"\s+")
_HUNK = re.compile(r"^@@ -(\d+)((?:,\d+)?) \+(\d+)((?:,\d+)?) @@")
_TRUNCATED = re.compile(r"^\[diff truncated: \d+ more lines not shown \(\+(\d+) -(\d+)\)")


class EditFailed(ValueError):
    """The edit cannot be made as asked; nothing was changed.

    The message is meant for the model: it says which block or line failed,
    why, and what to do instead.
    """


def apply_blocks(text: str, blocks: Sequence[Mapping[str, str]]) -> str:
    """``text`` with each block's ``search`` replaced by its ``replace``.

    The blocks apply in order, each to the result of the one before; each
    ``search`` must occur exactly once in that result (written with ``\\n``
    or in the file's own line endings). Bytes outside the replaced spans are
    kept exactly.

    Raises :class:`EditFailed` when a ``search`` is empty, is not found (the
    message quotes the most similar passage, with its lines and similarity),
    occurs more than once (the message says where), or when the blocks
    change nothing. All or nothing: on failure no block is applied.
    """
    if not blocks:
        raise EditFailed("no blocks: give at least one {search, replace} block")
    newline = _newline(text)
    result = text
    for number, block in enumerate(blocks, start=1):
        result = _apply_block(result, block, number, len(blocks), newline)
    if result == text:
        raise EditFailed(
            "the blocks change nothing: applied in order, they leave the file exactly as "
            "it is. Send blocks whose `replace` differs from their `search`."
        )
    return result


def insert_lines(text: str, line: int, content: str) -> str:
    """``text`` with ``content`` inserted before line ``line`` (1-based).

    ``line`` 0, or one past the last line, appends at the end. Inserted
    before a line, ``content`` ends with a newline (one is added if it has
    none); appended to a file without a final newline, a newline goes
    between the old last line and ``content``, and the file stays without
    one; appended to a file with one (or to an empty file), ``content``
    gets one too. ``content`` is written in the file's line endings.

    Raises :class:`EditFailed` for a negative line, a line past the end plus
    one (naming the file's line count), or empty content.
    """
    if not content:
        raise EditFailed("`content` is empty: there is nothing to insert")
    count = line_count(text)
    if line < 0:
        raise EditFailed(f"line {line} is negative: give 1 to {count + 1}, or 0 to append")
    if line > count + 1:
        raise EditFailed(
            f"line {line} is past the end: the file has {count} line{'s' if count != 1 else ''}. "
            f"Give 1 to {count + 1} to insert before a line, or 0 to append at the end."
        )
    newline = _newline(text)
    body = _in_style(content, newline)
    if line == 0 or line == count + 1:
        if text and not text.endswith("\n"):
            return text + newline + body.removesuffix(newline)
        return text + (body if body.endswith("\n") else body + newline)
    if not body.endswith("\n"):
        body += newline
    start = _line_start(text, line)
    return text[:start] + body + text[start:]


def line_count(text: str) -> int:
    """Lines in ``text``: a last line without a newline counts; ``""`` has none."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def unified_diff(
    path: str,
    before: str | None,
    after: str | None,
    context: int = 3,
    limit: int = MAX_DIFF_BYTES,
) -> str:
    """A git-style unified diff of one file; ``""`` when nothing changed.

    ``None`` is a missing file (``/dev/null`` on that side). A last line
    without a newline is followed by ``\\ No newline at end of file``. A
    ``\\r`` stays part of its line, so a change of line endings shows. A diff
    longer than ``limit`` UTF-8 bytes is cut at a line and ends with one
    ``[diff truncated: N more lines not shown (+A -R) …]`` line, which
    :func:`diff_stats` reads.
    """
    if before == after:
        return ""
    headers = (
        f"--- {'/dev/null' if before is None else 'a/' + path}\n"
        f"+++ {'/dev/null' if after is None else 'b/' + path}\n"
    )
    out = [headers]
    size = len(headers.encode())
    hidden = added = removed = 0
    for line in _hunk_lines(_split_lines(before or ""), _split_lines(after or ""), context):
        shown = line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
        if hidden or size + len(shown.encode()) > limit:
            hidden += shown.count("\n")
            if line.startswith("+"):
                added += 1
            elif line.startswith("-"):
                removed += 1
            continue
        out.append(shown)
        size += len(shown.encode())
    if hidden:
        out.append(
            f"[diff truncated: {hidden} more lines not shown (+{added} -{removed}); "
            "the change is made in full]\n"
        )
    return "".join(out)


def _hunk_lines(old: list[str], new: list[str], context: int) -> Iterator[str]:
    """difflib's hunks (``@@`` headers and body lines), without file headers.

    The lines both sides share at the start and the end, beyond the context,
    are left out of the comparison (difflib takes seconds on a 100,000-line
    file even for a one-line change), and the hunk headers shifted back.
    """
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    skip = max(0, head - context)
    keep = max(0, tail - context)
    lines = difflib.unified_diff(
        old[skip : len(old) - keep], new[skip : len(new) - keep], n=context, lineterm="\n"
    )
    for number, line in enumerate(lines):
        if number < 2:  # difflib's own (empty) file headers
            continue
        if line.startswith("@@"):
            yield _HUNK.sub(
                lambda m: f"@@ -{int(m[1]) + skip}{m[2]} +{int(m[3]) + skip}{m[4]} @@", line
            )
        else:
            yield line


def diff_stats(diff: str) -> tuple[int, int]:
    """(lines added, lines removed) in a diff from :func:`unified_diff`,
    counting those a truncation marker says were cut."""
    added = removed = 0
    for number, line in enumerate(diff.splitlines()):
        if number < 2 or line.startswith("@@"):
            continue
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
        elif cut := _TRUNCATED.match(line):
            added += int(cut.group(1))
            removed += int(cut.group(2))
    return added, removed


def _apply_block(text: str, block: Mapping[str, str], number: int, total: int, newline: str) -> str:
    search, replace = block.get("search"), block.get("replace")
    name = f"block {number}" if total == 1 else f"block {number} of {total}"
    if not isinstance(search, str) or not isinstance(replace, str):
        raise EditFailed(f"{name}: `search` and `replace` must both be strings")
    if not search:
        raise EditFailed(
            f"{name}: `search` is empty. Give the exact text to replace; to add lines, "
            "use insert_content or search for the line next to where they go."
        )
    # The file's own line endings first, then the text as sent (a file that
    # mixes line endings may hold it verbatim).
    forms = [(_in_style(search, newline), _in_style(replace, newline))]
    if forms[0][0] != search:
        forms.append((search, replace))
    for form, written in forms:
        start = text.find(form)
        if start == -1:
            continue
        if text.find(form, start + 1) != -1:
            raise EditFailed(_ambiguous(name, text, form, number))
        return text[:start] + written + text[start + len(form) :]
    raise EditFailed(_not_found(name, text, search, number))


def _ambiguous(name: str, text: str, form: str, number: int) -> str:
    starts: list[int] = []
    at = text.find(form)
    while at != -1 and len(starts) < 10:
        starts.append(at)
        at = text.find(form, at + 1)
    count = max(text.count(form), len(starts))
    lines = ", ".join(str(text.count("\n", 0, start) + 1) for start in starts)
    more = ", …" if count > len(starts) else ""
    return (
        f"{name}: `search` occurs {count} times in the file (starting at lines {lines}{more}), "
        "so it is not clear which to change. Nothing was changed. Make `search` match exactly "
        "one place: include a few unchanged lines before or after it." + _order_note(number)
    )


def _not_found(name: str, text: str, search: str, number: int) -> str:
    message = [f"{name}: `search` was not found in the file. Nothing was changed."]
    candidate = _closest(text, search)
    if candidate is not None:
        first, last = candidate.first_line, candidate.first_line + candidate.line_total - 1
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        measure = "similar" if candidate.by_character else "of its lines alike"
        note = "; it differs only in whitespace" if candidate.whitespace_only else ""
        lead = (
            "The most similar text" if candidate.ratio >= 0.5 else "Nothing is close; the nearest"
        )
        message.append(f"{lead} is at {where} ({candidate.percent}% {measure}{note}):")
        message.append(candidate.quoted())
    elif not text:
        message.append("The file is empty.")
    elif len(text) > CANDIDATE_TEXT_LIMIT:
        message.append("(The file is too large to look for similar text in it.)")
    message.append(
        "Read the file again and copy `search` exactly from it, whitespace and "
        "indentation included."
    )
    return "\n".join(message) + _order_note(number)


def _order_note(number: int) -> str:
    if number == 1:
        return ""
    earlier = "block 1" if number == 2 else f"blocks 1-{number - 1}"
    return (
        f" Blocks apply in order: this one was matched against the file as {earlier} "
        "left it, and line numbers count in that text."
    )


@dataclass(frozen=True, slots=True)
class _Candidate:
    first_line: int
    lines: tuple[str, ...]
    ratio: float
    by_character: bool
    whitespace_only: bool

    @property
    def line_total(self) -> int:
        return len(self.lines)

    @property
    def percent(self) -> int:
        return int(self.ratio * 100)

    def quoted(self) -> str:
        shown = self.lines[:CANDIDATE_SHOWN_LINES]
        width = len(str(self.first_line + len(shown) - 1))
        quoted = [
            f"{number:>{width}} | {line}" for number, line in enumerate(shown, self.first_line)
        ]
        if len(self.lines) > len(shown):
            quoted.append(f"{'':>{width}} | … {len(self.lines) - len(shown)} more lines")
        return "\n".join(quoted)


def _closest(text: str, search: str) -> _Candidate | None:
    """The window of as many lines as ``search`` most similar to it.

    Similarity is difflib's ratio, of characters for a block up to
    :data:`CANDIDATE_CHARACTER_LIMIT` characters, of lines for a longer one.
    Computing it for every window would cost seconds on a large file, so each
    window first gets a cheap upper bound (the characters the two share as
    multisets, kept up to date as the window slides) and ratios are computed
    best bound first, for at most :data:`CANDIDATE_COMPARISONS` windows (or
    :data:`CANDIDATE_CHARACTER_WORK`), stopping when no bound left beats the
    best character ratio found.
    """
    target = search.replace("\r\n", "\n").removesuffix("\n")
    if not text or not target.strip() or len(text) > CANDIDATE_TEXT_LIMIT:
        return None
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]
    target_lines = target.split("\n")
    size = min(len(target_lines), len(lines))
    bounds = _window_bounds(lines, size, target)
    by_character = len(target) <= CANDIDATE_CHARACTER_LIMIT
    comparisons = CANDIDATE_COMPARISONS
    if by_character:
        comparisons = max(1, min(comparisons, CANDIDATE_CHARACTER_WORK // len(target) ** 2))
    # Best bound first; among equal bounds, the earlier window.
    order = heapq.nsmallest(comparisons, range(len(bounds)), key=lambda s: (-bounds[s], s))
    ratio, start = -1.0, 0
    for window_start in order:
        if by_character and bounds[window_start] <= ratio:
            break  # the bound holds for character ratios only
        window = lines[window_start : window_start + size]
        if by_character:
            matcher = difflib.SequenceMatcher(None, "\n".join(window), target, autojunk=False)
        else:
            matcher = difflib.SequenceMatcher(None, window, target_lines, autojunk=False)
        similarity = matcher.ratio()
        if similarity > ratio:
            ratio, start = similarity, window_start
    window_lines = tuple(lines[start : start + size])
    return _Candidate(
        first_line=start + 1,
        lines=window_lines,
        ratio=ratio,
        by_character=by_character,
        whitespace_only=_SPACE.sub("", "\n".join(window_lines)) == _SPACE.sub("", target),
    )


def _window_bounds(lines: Sequence[str], size: int, target: str) -> list[float]:
    """For each window of ``size`` lines, an upper bound of its ratio to ``target``.

    difflib's ratio is ``2*M/(len(a)+len(b))`` with ``M`` matched characters,
    and ``M`` is at most the size of the two texts' character multisets'
    intersection: the bound :meth:`difflib.SequenceMatcher.quick_ratio`
    computes, here updated in O(line length) as the window slides one line.
    """
    need = Counter(target.replace("\n", ""))
    have: Counter[str] = Counter()
    shared = 0
    chars = 0

    def add(line: str) -> None:
        nonlocal shared, chars
        chars += len(line)
        for char in line:
            count = have[char]
            if count < need[char]:
                shared += 1
            have[char] = count + 1

    def drop(line: str) -> None:
        nonlocal shared, chars
        chars -= len(line)
        for char in line:
            count = have[char] - 1
            have[char] = count
            if count < need[char]:
                shared -= 1

    breaks = size - 1  # both texts hold size-1 line breaks
    total_target = len(target)
    for line in lines[:size]:
        add(line)
    bounds = [2 * (shared + breaks) / (chars + breaks + total_target)]
    for start in range(1, len(lines) - size + 1):
        drop(lines[start - 1])
        add(lines[start + size - 1])
        bounds.append(2 * (shared + breaks) / (chars + breaks + total_target))
    return bounds


def _newline(text: str) -> str:
    """The file's line ending: CRLF when at least half its line ends are CRLF."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and 2 * crlf >= text.count("\n") else "\n"


def _in_style(text: str, newline: str) -> str:
    """``text`` with its line ends (``\\n`` or ``\\r\\n``) written as ``newline``."""
    plain = text.replace("\r\n", "\n")
    return plain if newline == "\n" else plain.replace("\n", newline)


def _line_start(text: str, line: int) -> int:
    """Offset of the first character of line ``line`` (1-based, at most the last)."""
    offset = 0
    for _ in range(line - 1):
        offset = text.index("\n", offset) + 1
    return offset


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` (a ``\\r`` stays in the line); the last may lack one."""
    return _LINE.findall(text)
