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


@pytest.mark.parametrize("text", ["hello there", "write something nice", "switch to wizard", ""])
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
