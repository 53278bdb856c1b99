"""The context-window policy shared by runtime and proxy."""

from __future__ import annotations

from collections.abc import Sequence

from mesh.context import fit, units

Msg = tuple[str, bool, int]  # role, calls tools, size


def shape(m: Msg) -> tuple[str, bool]:
    return m[0], m[1]


def size(run: Sequence[Msg]) -> int:
    return sum(m[2] for m in run)


HISTORY: list[Msg] = [
    ("system", False, 10),
    ("user", False, 5),  # 1
    ("assistant", True, 5),  # 2 calls two tools
    ("tool", False, 50),  # 3
    ("tool", False, 50),  # 4
    ("assistant", False, 5),  # 5
    ("user", False, 5),  # 6
    ("assistant", False, 5),  # 7
]


def test_units_keep_tool_calls_with_their_results() -> None:
    assert units([shape(m) for m in HISTORY]) == [(1, 2), (2, 5), (5, 6), (6, 7), (7, 8)]


def test_no_budget_keeps_everything() -> None:
    assert fit(HISTORY, 0, size, shape) == HISTORY


def test_oldest_turns_drop_first_and_calls_stay_whole() -> None:
    kept = fit(HISTORY, 10 + 5 + 5 + 5 + 100, size, shape)
    assert kept == [HISTORY[0], *HISTORY[5:]], "the 105-sized call unit does not fit"
    everything = fit(HISTORY, size(HISTORY), size, shape)
    assert everything == HISTORY


def test_the_newest_unit_stays_even_when_too_large() -> None:
    assert fit([("system", False, 10), ("user", False, 999)], 20, size, shape) == [
        ("system", False, 10),
        ("user", False, 999),
    ]


def test_a_tool_message_never_leads_what_is_kept() -> None:
    for budget in range(1, size(HISTORY) + 1):
        kept = fit(HISTORY, budget, size, shape)
        rest = [m for m in kept if m[0] != "system"]
        assert rest[0][0] != "tool"
