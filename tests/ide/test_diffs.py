"""The terminal client's diff rendering (``ide.diffs``): what a person sees of
a call's ``metadata.diff`` before approving it."""

from __future__ import annotations

import io

from ide.diffs import (
    BOLD,
    CYAN,
    DIM,
    GREEN,
    RED,
    RESET,
    Line,
    classify,
    diff_stat,
    render_diff,
    wants_color,
)

DIFF = """\
--- a/app.py
+++ b/app.py
@@ -1,3 +1,3 @@
 import os
--- a decrement that looks like a header
+print("hi")
 x = 1
\\ No newline at end of file
"""


def test_without_colour_the_diff_is_printed_as_is() -> None:
    assert render_diff(DIFF, color=False) == DIFF.rstrip("\n")


def test_with_colour_each_kind_of_line_has_its_colour() -> None:
    lines = render_diff(DIFF, color=True).split("\n")
    assert lines == [
        f"{BOLD}--- a/app.py{RESET}",
        f"{BOLD}+++ b/app.py{RESET}",
        f"{CYAN}@@ -1,3 +1,3 @@{RESET}",
        " import os",
        f"{RED}--- a decrement that looks like a header{RESET}",
        f'{GREEN}+print("hi"){RESET}',
        " x = 1",
        f"{DIM}\\ No newline at end of file{RESET}",
    ]


def test_no_newline_notes_between_removed_and_added_lines_are_notes() -> None:
    diff = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-old\n\\ No newline at end of file\n+new\n"
    assert [kind for kind, _ in classify(diff)] == [
        Line.HEADER,
        Line.HEADER,
        Line.HUNK,
        Line.REMOVED,
        Line.NOTE,
        Line.ADDED,
    ]
    assert diff_stat(diff) == (1, 1)


def test_a_second_file_after_a_hunk_gets_headers_again() -> None:
    diff = (
        "--- a/x\n+++ b/x\n@@ -1,0 +1,1 @@\n+one\n"
        "diff --git a/y b/y\n--- a/y\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-two\n-three\n"
    )
    kinds = [kind for kind, _ in classify(diff)]
    assert kinds[4:8] == [Line.HEADER, Line.HEADER, Line.HEADER, Line.HUNK]
    assert diff_stat(diff) == (1, 2)


def test_a_hunk_header_without_counts_still_colours_its_lines() -> None:
    kinds = [kind for kind, _ in classify("@@ changed @@\n-a\n+b\n c\n")]
    assert kinds == [Line.HUNK, Line.REMOVED, Line.ADDED, Line.CONTEXT]


def test_a_long_diff_is_cut_with_the_count_of_what_is_left() -> None:
    diff = "--- a/big\n+++ b/big\n@@ -0,0 +1,100 @@\n" + "".join(f"+{n}\n" for n in range(100))
    shown = render_diff(diff, color=False, max_lines=10).split("\n")
    assert shown[:10] == diff.split("\n")[:10]
    assert shown[10:] == ["… 93 more lines"]
    assert render_diff(diff, color=True, max_lines=10).endswith(f"{DIM}… 93 more lines{RESET}")
    assert render_diff(diff, color=False, max_lines=102).endswith("… 1 more line")
    assert "more line" not in render_diff(diff, color=False, max_lines=103)


def test_control_characters_from_a_file_never_reach_the_terminal() -> None:
    diff = "@@ -1 +1 @@\n-\x1b[2Jclear\r\n+tab\tkept \x9b31m\n"
    shown = render_diff(diff, color=False)
    assert shown == "@@ -1 +1 @@\n-\\x1b[2Jclear\\r\n+tab\tkept \\x9b31m"
    assert "\x1b" not in shown
    assert "\r" not in shown


def test_colour_only_on_a_terminal_without_no_color() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_color(Terminal(), {}) is True
    assert wants_color(Terminal(), {"NO_COLOR": "1"}) is False
    assert wants_color(Terminal(), {"NO_COLOR": ""}) is True  # set but empty: no-color.org
    assert wants_color(io.StringIO(), {}) is False
