"""Targeted edits change only what they replace, fail with messages a model can
act on, and show a human the exact change as a unified diff (``git apply``
takes it back to the edited file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime.edits import (
    CANDIDATE_TEXT_LIMIT,
    EditFailed,
    apply_blocks,
    diff_stats,
    insert_lines,
    line_count,
    unified_diff,
)


def numbered_file(lines: int = 2000) -> str:
    """A Python-looking file whose every line is distinct."""
    return "".join(
        f"def function_{n}(value):\n" if n % 4 == 0 else f"    total_{n} = value * {n}\n"
        for n in range(lines)
    )


def block(search: str, replace: str) -> dict[str, str]:
    return {"search": search, "replace": replace}


def changed_span(before: str, after: str) -> tuple[int, int, int]:
    """(common prefix length, common suffix length, ...) of two texts."""
    head = 0
    while head < min(len(before), len(after)) and before[head] == after[head]:
        head += 1
    tail = 0
    while tail < min(len(before), len(after)) - head and before[-1 - tail] == after[-1 - tail]:
        tail += 1
    return head, tail, len(before) - head - tail


def body_lines(diff: str, sign: str) -> list[str]:
    """The diff's added ('+') or removed ('-') lines, file headers left out."""
    return [line for line in diff.split("\n")[2:] if line.startswith(sign)]


def git_apply(tmp_path: Path, path: str, before: str | None, diff: str) -> bytes | None:
    """Apply ``diff`` with git to ``before`` on disk; the file's bytes after (None: gone)."""
    target = tmp_path / path
    if before is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(before.encode())
    patch = tmp_path / "change.diff"
    patch.write_bytes(diff.encode())
    subprocess.run(
        ["git", "apply", "--whitespace=nowarn", str(patch)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    return target.read_bytes() if target.exists() else None


# apply_blocks


def test_a_one_line_edit_in_a_large_file_changes_that_line_only(tmp_path: Path) -> None:
    before = numbered_file(2000)
    after = apply_blocks(before, [block("    total_1001 = value * 1001\n", "    total_1001 = 0\n")])

    head, tail, _ = changed_span(before, after)
    start = before.index("    total_1001")
    assert after[:start] == before[:start]
    assert head >= start
    assert before.encode()[-tail:] == after.encode()[-tail:]
    assert after.count("\n") == before.count("\n")
    assert after.splitlines()[1001] == "    total_1001 = 0"
    diff = unified_diff("src/big.py", before, after)
    assert body_lines(diff, "-") == ["-    total_1001 = value * 1001"]
    assert body_lines(diff, "+") == ["+    total_1001 = 0"]
    assert diff.startswith("--- a/src/big.py\n+++ b/src/big.py\n@@ -999,7 +999,7 @@\n")
    assert diff_stats(diff) == (1, 1)
    assert git_apply(tmp_path, "src/big.py", before, diff) == after.encode()


def test_blocks_apply_in_order_each_to_the_result_of_the_last() -> None:
    before = "alpha\nbeta\ngamma\n"
    after = apply_blocks(
        before,
        [block("alpha\n", "one\n"), block("one\nbeta", "one\ntwo"), block("gamma", "three")],
    )
    assert after == "one\ntwo\nthree\n"


def test_a_failing_later_block_names_itself_and_says_blocks_apply_in_order() -> None:
    with pytest.raises(EditFailed) as failed:
        apply_blocks("alpha\nbeta\n", [block("alpha", "one"), block("alpha", "two")])
    message = str(failed.value)
    assert message.startswith("block 2 of 2: `search` was not found in the file.")
    assert "Nothing was changed" in message
    assert "as block 1 left it" in message


def test_a_block_that_is_not_found_reports_the_most_similar_lines() -> None:
    before = numbered_file(2000)
    wanted = "".join(before.splitlines(keepends=True)[1200:1220])
    garbled = wanted.replace("value * 1203", "valeu * 1203").replace(
        "    total_1210", "  total_1210"
    )

    with pytest.raises(EditFailed) as failed:
        apply_blocks(before, [block(garbled, "replaced\n")])

    message = str(failed.value)
    assert message.startswith("block 1: `search` was not found in the file. Nothing was changed.")
    assert "The most similar text is at lines 1201-1220 (" in message
    percent = int(message.split("lines 1201-1220 (")[1].split("%")[0])
    assert 90 <= percent < 100
    assert "1204 |     total_1203 = value * 1203" in message
    assert "1220 |     total_1219 = value * 1219" in message
    assert "differs only in whitespace" not in message
    assert "Read the file again and copy `search` exactly" in message


def test_a_search_that_differs_only_in_whitespace_is_said_to() -> None:
    before = "def f():\n    return 1\n\n\ndef g():\n    return 2\n"
    with pytest.raises(EditFailed) as failed:
        apply_blocks(before, [block("def g():\n  return 2\n", "def g():\n    return 3\n")])
    assert "lines 5-6 (" in str(failed.value)
    assert "it differs only in whitespace" in str(failed.value)
    assert "5 | def g():\n6 |     return 2" in str(failed.value)


def test_a_long_block_is_compared_line_by_line() -> None:
    before = numbered_file(2000)
    wanted = "".join(before.splitlines(keepends=True)[500:700])  # about 5,000 characters
    garbled = wanted.replace("total_601 ", "total_six_hundred_one ")
    with pytest.raises(EditFailed) as failed:
        apply_blocks(before, [block(garbled, "x\n")])
    assert "lines 501-700 (99% of its lines alike)" in str(failed.value)
    assert "… 160 more lines" in str(failed.value)


def test_no_similar_text_is_looked_for_in_a_very_large_file() -> None:
    before = "x = 1\n" * (CANDIDATE_TEXT_LIMIT // 6 + 1)
    with pytest.raises(EditFailed, match="too large to look for similar text"):
        apply_blocks(before, [block("y = 2", "y = 3")])


def test_a_search_like_nothing_in_the_file_says_so() -> None:
    with pytest.raises(EditFailed, match=r"Nothing is close; the nearest is at line 1 \("):
        apply_blocks("def f():\n    return 1\n", [block("import os", "import sys")])


def test_a_search_in_an_empty_file_says_it_is_empty() -> None:
    with pytest.raises(EditFailed, match="The file is empty"):
        apply_blocks("", [block("anything", "else")])


def test_a_block_occurring_twice_is_refused_with_its_lines() -> None:
    before = "a = 1\nb = 2\na = 1\nc = 3\na = 1\n"
    with pytest.raises(EditFailed) as failed:
        apply_blocks(before, [block("a = 1\n", "a = 2\n")])
    message = str(failed.value)
    assert "occurs 3 times in the file (starting at lines 1, 3, 5)" in message
    assert "include a few unchanged lines before or after it" in message
    # Overlapping occurrences count too: "aa" is twice in "aaa".
    with pytest.raises(EditFailed, match="occurs 2 times"):
        apply_blocks("aaa", [block("aa", "b")])


def test_an_edit_that_changes_nothing_is_refused() -> None:
    with pytest.raises(EditFailed, match="change nothing"):
        apply_blocks("a\nb\n", [block("a", "a"), block("b\n", "b\n")])


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        ([], "no blocks"),
        ([block("", "x")], "`search` is empty"),
        ([{"search": "a"}], "must both be strings"),
    ],
)
def test_malformed_blocks_are_refused(blocks: list[dict[str, str]], expected: str) -> None:
    with pytest.raises(EditFailed, match=expected):
        apply_blocks("a\n", blocks)


def test_a_crlf_file_is_matched_with_lf_and_written_with_crlf(tmp_path: Path) -> None:
    before = "first\r\nsecond\r\nthird\r\nfourth\r\n"
    after = apply_blocks(before, [block("second\nthird\n", "2nd\n3rd\nextra\n")])
    assert after == "first\r\n2nd\r\n3rd\r\nextra\r\nfourth\r\n"
    # A search sent with CRLF matches as well.
    assert apply_blocks(before, [block("first\r\n", "1st\n")]) == (
        "1st\r\nsecond\r\nthird\r\nfourth\r\n"
    )
    diff = unified_diff("win.txt", before, after)
    assert body_lines(diff, "+") == ["+2nd\r", "+3rd\r", "+extra\r"]
    assert git_apply(tmp_path, "win.txt", before, diff) == after.encode()


def test_a_file_mixing_line_endings_keeps_each_line_as_it_was() -> None:
    before = "a\nb\r\nc\nd\n"  # mostly LF, one CRLF line
    assert apply_blocks(before, [block("c\n", "C\n")]) == "a\nb\r\nC\nd\n"
    # The CRLF pair itself can be the search, as sent.
    assert apply_blocks(before, [block("b\r\n", "B\r\n")]) == "a\nB\r\nc\nd\n"


def test_a_missing_final_newline_stays_missing(tmp_path: Path) -> None:
    before = "one\ntwo\nthree"
    after = apply_blocks(before, [block("three", "3")])
    assert after == "one\ntwo\n3"
    diff = unified_diff("n.txt", before, after)
    assert diff.endswith("-three\n\\ No newline at end of file\n+3\n\\ No newline at end of file\n")
    assert git_apply(tmp_path, "n.txt", before, diff) == after.encode()
    # A search that expects a final newline is told where the text is.
    with pytest.raises(EditFailed, match=r"line 3 \(100% similar; it differs only in whitespace"):
        apply_blocks(before, [block("three\n", "3\n")])


def test_unicode_text_is_edited_and_diffed(tmp_path: Path) -> None:
    before = "# café ☕\nname = 'naïve'\nemoji = '🙂'\n"
    after = apply_blocks(before, [block("emoji = '🙂'", "emoji = '🚀'  # ünïcode")])
    assert after == "# café ☕\nname = 'naïve'\nemoji = '🚀'  # ünïcode\n"
    diff = unified_diff("u.py", before, after)
    assert body_lines(diff, "+") == ["+emoji = '🚀'  # ünïcode"]
    assert git_apply(tmp_path, "u.py", before, diff) == after.encode()
    with pytest.raises(EditFailed) as failed:
        apply_blocks(before, [block("name = 'naive'", "x")])
    assert "2 | name = 'naïve'" in str(failed.value)


# insert_lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (1, "new\na\nb\nc\n"),
        (2, "a\nnew\nb\nc\n"),
        (3, "a\nb\nnew\nc\n"),
        (4, "a\nb\nc\nnew\n"),
        (0, "a\nb\nc\nnew\n"),
    ],
)
def test_insert_goes_before_the_line_or_at_the_end(line: int, expected: str) -> None:
    assert insert_lines("a\nb\nc\n", line, "new") == expected
    assert insert_lines("a\nb\nc\n", line, "new\n") == expected


def test_insert_past_the_end_names_the_line_count() -> None:
    with pytest.raises(EditFailed) as failed:
        insert_lines("a\nb\nc\n", 5, "x")
    assert str(failed.value).startswith("line 5 is past the end: the file has 3 lines.")
    assert "Give 1 to 4" in str(failed.value)
    with pytest.raises(EditFailed, match="negative"):
        insert_lines("a\n", -1, "x")
    with pytest.raises(EditFailed, match="nothing to insert"):
        insert_lines("a\n", 1, "")


def test_insert_into_an_empty_file() -> None:
    assert insert_lines("", 0, "first") == "first\n"
    assert insert_lines("", 1, "first\nsecond") == "first\nsecond\n"
    with pytest.raises(EditFailed, match="the file has 0 lines"):
        insert_lines("", 2, "x")


def test_appending_to_a_file_without_final_newline_puts_one_between() -> None:
    assert insert_lines("a\nb", 0, "c") == "a\nb\nc"
    assert insert_lines("a\nb", 3, "c\n") == "a\nb\nc"
    # Before its last line, the content is a whole line.
    assert insert_lines("a\nb", 2, "x") == "a\nx\nb"


def test_insert_into_a_crlf_file_writes_crlf() -> None:
    before = "a\r\nb\r\n"
    assert insert_lines(before, 2, "x\ny") == "a\r\nx\r\ny\r\nb\r\n"
    assert insert_lines(before, 0, "z") == "a\r\nb\r\nz\r\n"
    assert insert_lines("a\r\nb", 0, "z") == "a\r\nb\r\nz"


def test_an_insert_changes_no_other_byte() -> None:
    before = numbered_file(2000)
    after = insert_lines(before, 1000, "    inserted = True")
    start = before.index("    total_999 ")
    assert after == before[:start] + "    inserted = True\n" + before[start:]
    assert line_count(after) == 2001


@pytest.mark.parametrize(("text", "count"), [("", 0), ("a", 1), ("a\n", 1), ("a\nb", 2)])
def test_line_count(text: str, count: int) -> None:
    assert line_count(text) == count


# unified_diff


def test_equal_texts_have_no_diff() -> None:
    assert unified_diff("a.txt", "same\n", "same\n") == ""
    assert unified_diff("a.txt", None, None) == ""
    assert diff_stats("") == (0, 0)


def test_a_new_file_and_a_deleted_file_use_dev_null(tmp_path: Path) -> None:
    created = unified_diff("pkg/new.py", None, "x = 1\ny = 2\n")
    assert created == "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+x = 1\n+y = 2\n"
    assert git_apply(tmp_path, "pkg/new.py", None, created) == b"x = 1\ny = 2\n"
    deleted = unified_diff("pkg/new.py", "x = 1\ny = 2\n", None)
    assert deleted == "--- a/pkg/new.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-x = 1\n-y = 2\n"
    assert git_apply(tmp_path, "pkg/new.py", "x = 1\ny = 2\n", deleted) is None
    assert diff_stats(created) == (2, 0)
    assert diff_stats(deleted) == (0, 2)
    assert unified_diff("empty", None, "") == "--- /dev/null\n+++ b/empty\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("a\nb\n", "a\nb"),  # the final newline removed
        ("a\nb", "a\nb\n"),  # and added
        ("a\nb", "a\nc"),
        ("a\nb\nc\n", "a\r\nb\r\nc\r\n"),  # line endings changed
        ("".join(f"{n}\n" for n in range(50)), "".join(f"{n}\n" for n in range(50) if n != 25)),
        ("x\n" * 40, "x\n" * 20 + "y\n" + "x\n" * 20),  # repeated lines
    ],
)
def test_diffs_apply_back_to_the_exact_bytes(tmp_path: Path, before: str, after: str) -> None:
    diff = unified_diff("f.txt", before, after)
    assert diff
    assert git_apply(tmp_path, "f.txt", before, diff) == after.encode()


def test_context_lines_are_a_parameter() -> None:
    before = "".join(f"{n}\n" for n in range(20))
    after = before.replace("10\n", "ten\n")
    assert unified_diff("f", before, after, context=1).splitlines()[2:] == [
        "@@ -10,3 +10,3 @@",
        " 9",
        "-10",
        "+ten",
        " 11",
    ]


def test_a_huge_diff_is_cut_with_a_marker_and_counted_in_full() -> None:
    before = "".join(f"old line {n}\n" for n in range(20_000))
    after = "".join(f"new line {n}\n" for n in range(20_000))
    diff = unified_diff("big.txt", before, after, limit=4096)
    assert len(diff.encode()) < 4096 + 200
    last = diff.splitlines()[-1]
    assert last.startswith("[diff truncated: ")
    assert last.endswith("the change is made in full]")
    assert diff_stats(diff) == (20_000, 20_000)
    untruncated = unified_diff("big.txt", before, after)
    assert len(untruncated.encode()) <= 256 * 1024 + 200
    assert diff_stats(untruncated) == (20_000, 20_000)


def test_blocks_that_undo_each_other_change_nothing() -> None:
    with pytest.raises(EditFailed, match="leave the file exactly as it is"):
        apply_blocks("a = 1\n", [block("a = 1", "a = 2"), block("a = 2", "a = 1")])
