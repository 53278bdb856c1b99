"""The terminal client's approval prompt (``ide.console``): what a person sees
of a call that needs approval, and which decision each answer sends."""

from __future__ import annotations

from typing import Any

import pytest

from ide.console import UNANSWERED, Console, describe_call, reason_without_diff
from ide.diffs import GREEN, RED, RESET
from ide.turns import Decision

DIFF = (
    "--- a/app.py\n"
    "+++ b/app.py\n"
    "@@ -1,2 +1,2 @@\n"
    " import os\n"
    "-print('old')\n"
    "+print('new')\n"
    "\\ No newline at end of file\n"
)
NEW_CONTENT = "import os\nprint('new')"


def write_call(**fields: Any) -> dict[str, Any]:
    return {
        "type": "tool_call",
        "seq": 4,
        "call_id": "call_1",
        "tool_name": "write_file",
        "arguments": {"path": "app.py", "content": NEW_CONTENT},
        "requires_approval": True,
        "reason": "write_file changes the workspace\n" + DIFF,
        "metadata": {"diff": DIFF, "parent_tool": "apply_diff", "parent_call_id": "call_0"},
    } | fields


def test_a_call_with_a_diff_shows_the_diff_once_and_not_the_content() -> None:
    shown = describe_call(write_call(), color=False, max_lines=None)
    assert shown == (
        '[tool needs approval] write_file {"path": "app.py"} (+1 -1)\n'
        "  for: apply_diff call_0\n"
        "  why: write_file changes the workspace\n" + DIFF.rstrip("\n")
    )
    assert shown.count("+print('new')") == 1
    assert "content" not in shown


def test_the_diff_is_coloured_when_colour_is_on() -> None:
    shown = describe_call(write_call(), color=True, max_lines=None)
    assert f"{RED}-print('old'){RESET}" in shown
    assert f"{GREEN}+print('new'){RESET}" in shown
    assert "\\ No newline at end of file" in shown


def test_a_long_diff_is_cut_to_the_terminal() -> None:
    diff = "--- a/big\n+++ b/big\n@@ -0,0 +1,50 @@\n" + "".join(f"+{n}\n" for n in range(50))
    shown = describe_call(write_call(metadata={"diff": diff}), color=False, max_lines=20)
    assert shown.endswith("+16\n… 33 more lines")


def test_a_call_without_a_diff_shows_its_arguments_and_reason() -> None:
    frame = write_call(metadata={}, reason="write_file changes the workspace")
    assert describe_call(frame, color=False, max_lines=20) == (
        '[tool needs approval] write_file {"path": "app.py", "content": '
        "\"import os\\nprint('new')\"}\n"
        "  why: write_file changes the workspace"
    )


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (
            "app.py changed since the agent wrote it\n" + DIFF,
            "app.py changed since the agent wrote it",
        ),
        # The same diff in other words (no trailing note): cut at its first header.
        ("restore app.py:\n--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x\n+y", "restore app.py:"),
        ("plain reason", "plain reason"),
    ],
)
def test_the_reason_loses_its_copy_of_the_diff(reason: str, words: str) -> None:
    assert reason_without_diff(reason, DIFF) == words


def scripted(*answers: str) -> Any:
    pending = list(answers)

    async def ask(prompt: str) -> str:
        return pending.pop(0)

    return ask


@pytest.mark.parametrize(
    ("answers", "decision"),
    [
        (["y"], Decision("approve")),
        (["a"], Decision("approve", always_allow=True)),
        (["always"], Decision("approve", always_allow=True)),
        (["n", "too risky"], Decision("reject", feedback="too risky")),
        (["maybe", "y"], Decision("approve")),
        (
            ["e", "{oops", "e", '{"path": "b.py", "content": ""}'],
            Decision("edit", modified_arguments={"path": "b.py", "content": ""}),
        ),
    ],
)
async def test_each_answer_is_its_decision(answers: list[str], decision: Decision) -> None:
    console = Console(color=False, max_lines=20, ask=scripted(*answers))
    assert await console.approve_call(write_call()) == decision


def ending(*answers: str) -> Any:
    """Answers, then the end of the input (Ctrl-D, a closed pipe)."""
    pending = list(answers)

    async def ask(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return ask


@pytest.mark.parametrize("answers", [[], ["maybe"], ["e"], ["n"]])
async def test_input_that_ends_before_an_answer_rejects_the_call(
    answers: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    console = Console(color=False, max_lines=20, ask=ending(*answers))
    assert await console.approve_call(write_call()) == Decision("reject", feedback=UNANSWERED)
    assert "the input ended; rejected" in capsys.readouterr().err


@pytest.mark.parametrize("answers", [[], ["n"]])
async def test_input_that_ends_before_an_answer_rejects_the_plan(answers: list[str]) -> None:
    console = Console(color=False, max_lines=20, ask=ending(*answers))
    assert await console.approve_plan({"type": "plan"}) == Decision("reject", feedback=UNANSWERED)


async def test_a_cut_diff_can_be_seen_in_full_before_deciding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    diff = "@@ -0,0 +1,30 @@\n" + "".join(f"+{n}\n" for n in range(30))
    console = Console(color=False, max_lines=5, ask=scripted("d", "y"))
    frame = write_call(metadata={"diff": diff})
    console.show(frame)
    assert "… 26 more lines" in capsys.readouterr().out
    assert await console.approve_call(frame) == Decision("approve")
    assert capsys.readouterr().out.strip().endswith("+29")


def test_a_running_call_with_a_diff_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Console(color=False, max_lines=20).show(write_call(requires_approval=False))
    assert capsys.readouterr().out == ('\n[tool running] write_file {"path": "app.py"} (+1 -1)\n')


def test_the_context_meter_follows_each_answer_and_a_summary_is_announced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = Console(color=False, max_lines=None)
    console.show(
        {
            "type": "context_condensed",
            "content": "The user asked, first: hi",
            "messages_replaced": 40,
            "tokens_before": 2500,
            "tokens_after": 900,
        }
    )
    console.show(
        {
            "type": "assistant_message",
            "content": "",
            "is_final": True,
            "metadata": {"status": "completed"},
            "context": {"tokens": 1843, "window": 32768, "percent": 6},
        }
    )
    out = capsys.readouterr().out
    assert "[context condensed] 40 messages summarized (2,500 -> 900 tokens)" in out
    assert "[context #......... 1,843 / 32,768 tokens, 6%]" in out
