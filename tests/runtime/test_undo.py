"""Undo's plan without I/O: which checkpoints an undo restores, and what it says."""

from __future__ import annotations

import pytest

from runtime import undo
from runtime.records import Checkpoint


def rows(*changes: tuple[int, str, str | None, str | None, bool]) -> list[Checkpoint]:
    """Checkpoints with ids 1, 2, … from (turn, path, before, after, undone)."""
    return [
        Checkpoint(turn, path, before, after, id=number, undone=undone)
        for number, (turn, path, before, after, undone) in enumerate(changes, start=1)
    ]


HISTORY = rows(
    (0, "a.py", "a0", "a1", False),
    (0, "b.py", None, "b1", False),
    (2, "a.py", "a1", "a2", False),
    (4, "c.py", "c0", None, False),
)


def test_the_last_turn_with_a_change_is_undone_by_default() -> None:
    first, files = undo.plan(HISTORY, "")
    assert first == 4
    assert files == [{"path": "c.py", "target": "c0", "expected": None, "ids": [4]}]


def test_a_named_turn_is_undone_with_every_later_turn() -> None:
    first, files = undo.plan(HISTORY, "0")
    assert first == 0
    assert files == [
        # a.py goes back to before its first change, and is expected as its last left it.
        {"path": "a.py", "target": "a0", "expected": "a2", "ids": [1, 3]},
        {"path": "b.py", "target": None, "expected": "b1", "ids": [2]},
        {"path": "c.py", "target": "c0", "expected": None, "ids": [4]},
    ]
    assert undo.plan(HISTORY, "2")[1] == [
        {"path": "a.py", "target": "a1", "expected": "a2", "ids": [3]},
        {"path": "c.py", "target": "c0", "expected": None, "ids": [4]},
    ]


def test_changes_already_undone_are_left_out() -> None:
    history = rows(
        (0, "a.py", "a0", "a1", False),
        (2, "a.py", "a1", "a2", True),
        (2, "b.py", None, "b1", True),
    )
    first, files = undo.plan(history, "")
    assert first == 0, "the last turn not undone yet"
    assert files == [{"path": "a.py", "target": "a0", "expected": "a1", "ids": [1]}]
    with pytest.raises(undo.NothingToUndo, match="turn 2 and later are already undone"):
        undo.plan(history, "2")


@pytest.mark.parametrize(
    ("history", "turn_id", "why"),
    [
        ([], "", "no change of this session is left to undo"),
        (rows((0, "a.py", None, "x", True)), "", "no change of this session is left to undo"),
        (HISTORY, "1", "turn '1' changed no file"),
        (HISTORY, "last", "unknown turn 'last'"),
    ],
)
def test_nothing_to_undo_says_why(history: list[Checkpoint], turn_id: str, why: str) -> None:
    with pytest.raises(undo.NothingToUndo) as refused:
        undo.plan(history, turn_id)
    assert str(refused.value) == why


def test_an_undo_too_large_to_carry_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(undo, "MAX_UNDO_BYTES", 5)
    with pytest.raises(undo.NothingToUndo, match="undo later turns first"):
        undo.plan(HISTORY, "0")
    assert undo.plan(HISTORY, "")[0] == 4, "a later turn alone fits"


def test_the_summary_names_what_was_restored_and_what_was_not() -> None:
    outcome = {
        "restored": ["a.py", "b.py (deleted)"],
        "failed": [["c.py", "this IDE cannot delete files"]],
        "undone_ids": [1, 2],
    }
    assert undo.summary(outcome) == (
        "Undo: Restored: a.py, b.py (deleted). Not restored: c.py (this IDE cannot delete files)."
    )
    assert undo.summary({"restored": [], "failed": [], "undone_ids": []}) == (
        "Undo: Nothing was restored."
    )
