"""The offline model's rules, as the runtime's agent flows rely on them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmproxy.playbook import ROUTING_MARKER, Answer, ToolCall, respond


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def tool_round(
    name: str, arguments: dict[str, Any], payload: dict[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": name, "content": json.dumps(payload)},
    ]


@pytest.mark.parametrize(
    ("request_text", "agent"),
    [
        ("write hello.py: print(1)", "coder"),
        ("design the storage layer", "architect"),
        ("run pytest", "debug"),
        ("read README.md", "ask"),
        ("good morning", "ask"),
    ],
)
def test_routing_answers_json(request_text: str, agent: str) -> None:
    answer = respond([{"role": "system", "content": ROUTING_MARKER + "."}, user(request_text)])
    assert answer is not None
    assert json.loads(answer.text)["agent"] == agent


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ("read a.txt", [ToolCall("read_file", {"path": "a.txt"})]),
        (
            "read a.txt lines 2-5",
            [ToolCall("read_file", {"path": "a.txt", "start_line": 2, "end_line": 5})],
        ),
        (
            "read a.txt and read b.txt",
            [ToolCall("read_file", {"path": "a.txt"}), ToolCall("read_file", {"path": "b.txt"})],
        ),
        (
            "write notes.md: one and two",
            [ToolCall("write_file", {"path": "notes.md", "content": "one and two\n"})],
        ),
        ("run echo hi && ls", [ToolCall("execute_command", {"command": "echo hi && ls"})]),
        (
            "move a.txt to b.txt",
            [ToolCall("move_file", {"source": "a.txt", "destination": "b.txt"})],
        ),
        (
            "switch to architect",
            [ToolCall("switch_mode", {"agent": "architect", "reason": "asked to switch"})],
        ),
        ("done all good", [ToolCall("attempt_completion", {"result": "all good"})]),
        (
            "list src and search TODO",
            [
                ToolCall("list_files", {"path": "src", "recursive": True}),
                ToolCall("search_in_code", {"query": "TODO", "path": "."}),
            ],
        ),
    ],
)
def test_commands_become_tool_calls(text: str, calls: list[ToolCall]) -> None:
    assert respond([user(text)]) == Answer(tool_calls=tuple(calls))


@pytest.mark.parametrize(
    "text", ["hello there", "write something nice", "switch to the wizard", ""]
)
def test_other_messages_have_no_rule(text: str) -> None:
    assert respond([user(text)]) is None


def test_plan_with_approval_then_executed_step_by_step() -> None:
    answer = respond([user("plan with approval: read; write")])
    assert answer is not None
    (plan,) = answer.tool_calls
    assert plan.arguments["requires_approval"] is True
    assert [s["status"] for s in plan.arguments["steps"]] == ["pending", "pending"]
    after = respond([user("x"), *tool_round("update_plan", plan.arguments, {"result": "approved"})])
    assert after is not None
    (step,) = after.tool_calls
    assert [s["status"] for s in step.arguments["steps"]] == ["done", "in_progress"]
    rejected = respond([user("x"), *tool_round("update_plan", plan.arguments, {"error": "no"})])
    assert rejected is not None
    assert not rejected.tool_calls
    assert "failed" in rejected.text


def test_tool_results_are_summarised() -> None:
    answer = respond(
        [user("read a"), *tool_round("read_file", {"path": "a"}, {"result": {"content": "hello"}})]
    )
    assert answer == Answer(text="read_file returned: hello")
    refused = respond(
        [
            user("x"),
            *tool_round("write_file", {}, {"error": "refused by policy: nope", "feedback": "why"}),
        ]
    )
    assert refused is not None
    assert refused.text == "write_file failed: refused by policy: nope. Feedback: why."


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        (
            "edit src/app.py: return 1 => return 2",
            {"path": "src/app.py", "blocks": [{"search": "return 1", "replace": "return 2"}]},
        ),
        # Verbatim: indentation, "and", an arrow in NEW, line breaks.
        (
            "edit a.js:     x = 1 and y => f = (a) => a\nnext",
            {
                "path": "a.js",
                "blocks": [{"search": "    x = 1 and y", "replace": "f = (a) => a\nnext"}],
            },
        ),
        (
            "edit a.py:\ndef f():\n    pass\n => def f():\n    return None\n",
            {
                "path": "a.py",
                "blocks": [
                    {"search": "def f():\n    pass\n", "replace": "def f():\n    return None"}
                ],
            },
        ),
        # Nothing after the arrow deletes OLD.
        (
            "edit a.py: print(x) => ",
            {"path": "a.py", "blocks": [{"search": "print(x)", "replace": ""}]},
        ),
    ],
)
def test_edit_becomes_one_apply_diff_block(text: str, arguments: dict[str, Any]) -> None:
    assert respond([user(text)]) == Answer(tool_calls=(ToolCall("apply_diff", arguments),))


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("insert a.py at 3: import os", {"path": "a.py", "line": 3, "content": "import os"}),
        ("insert a.py at 0: tail", {"path": "a.py", "line": 0, "content": "tail"}),
        ("insert a.py at end: x and y", {"path": "a.py", "line": 0, "content": "x and y"}),
        ("insert a.py at 1:\n  a\n  b", {"path": "a.py", "line": 1, "content": "  a\n  b"}),
    ],
)
def test_insert_becomes_insert_content(text: str, arguments: dict[str, Any]) -> None:
    assert respond([user(text)]) == Answer(tool_calls=(ToolCall("insert_content", arguments),))


@pytest.mark.parametrize(
    "text",
    [
        "edit a.py",  # no colon
        "edit a.py: nothing to replace",  # no arrow
        "edit a.py: => new",  # no OLD
        "edit : a => b",  # no path
        "insert a.py: x",  # no line
        "insert a.py at two: x",
        "insert a.py at 2:",  # no text
    ],
)
def test_malformed_edits_and_inserts_have_no_rule(text: str) -> None:
    assert respond([user(text)]) is None


def test_a_read_then_an_edit_in_one_message() -> None:
    answer = respond([user("read a.py and edit a.py: x => y")])
    assert answer == Answer(
        tool_calls=(
            ToolCall("read_file", {"path": "a.py"}),
            ToolCall("apply_diff", {"path": "a.py", "blocks": [{"search": "x", "replace": "y"}]}),
        )
    )


@pytest.mark.parametrize(("request_text"), ["edit a.py: x => y", "insert a.py at 1: x"])
def test_edits_are_routed_to_the_coder(request_text: str) -> None:
    answer = respond([{"role": "system", "content": ROUTING_MARKER + "."}, user(request_text)])
    assert answer is not None
    assert json.loads(answer.text)["agent"] == "coder"


def test_a_failed_edit_is_reported_to_the_user_in_full() -> None:
    error = (
        "block 1: `search` was not found in the file. Nothing was changed.\n"
        "The most similar text is at line 2 (90% similar):\n"
        "2 |     return 1\n"
        "Read the file again and copy `search` exactly from it, whitespace and "
        "indentation included."
    )
    arguments = {"path": "a.py", "blocks": [{"search": "return  1", "replace": "return 2"}]}
    answer = respond(
        [
            user("edit a.py: return  1 => return 2"),
            *tool_round("apply_diff", arguments, {"error": error}),
        ]
    )
    assert answer == Answer(text=f"apply_diff failed: {error}")
