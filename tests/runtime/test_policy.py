"""The one gate a tool call passes, and the tool vocabulary it reads."""

from __future__ import annotations

from runtime import policy
from runtime.agents import BUILT_IN
from runtime.tools import (
    DEFAULT_APPROVAL_REQUIRED,
    EDIT_TOOLS,
    IDE_TOOLS,
    READ_TOOLS,
    RUNTIME_TOOLS,
    TOOLS,
    Effect,
    Side,
)


def test_the_groups_and_default_approvals_follow_the_declarations() -> None:
    assert {"read_file", "list_files", "search_in_code"} == READ_TOOLS
    assert {name for name, tool in TOOLS.items() if tool.side is Side.IDE} == IDE_TOOLS
    assert {
        "switch_mode",
        "attempt_completion",
        "ask_followup_question",
        "update_plan",
    } == RUNTIME_TOOLS
    assert {
        name
        for name, tool in TOOLS.items()
        if tool.side is not Side.RUNTIME and tool.effect in (Effect.WRITE, Effect.EXECUTE)
    } == DEFAULT_APPROVAL_REQUIRED
    assert {"apply_diff", "insert_content"} == EDIT_TOOLS
    assert all(TOOLS[name].made_of == ("read_file", "write_file") for name in EDIT_TOOLS)
    assert [agent.name for agent in BUILT_IN.agents if agent.writes] == ["coder", "architect"]


def test_the_model_is_told_why_a_call_is_refused() -> None:
    coder, ask = BUILT_IN["coder"], BUILT_IN["ask"]
    cases = [
        (coder, "format_disk", "{}", policy.Grounds.UNKNOWN_TOOL, "unknown tool 'format_disk'"),
        (coder, "read_file", "{", policy.Grounds.NOT_JSON, "the arguments are not valid JSON"),
        (
            coder,
            "read_file",
            "{}",
            policy.Grounds.INVALID,
            "invalid arguments: arguments: 'path' is a required property",
        ),
        (
            ask,
            "write_file",
            '{"path": "a.py", "content": ""}',
            policy.Grounds.DENIED,
            "refused by policy: the ask agent may not use write_file",
        ),
        (
            coder,
            "read_file",
            '{"path": "../etc/passwd"}',
            policy.Grounds.DENIED,
            "refused by policy: path escapes the workspace: '../etc/passwd'",
        ),
    ]
    for agent, tool, arguments, grounds, told in cases:
        verdict = policy.check(agent, tool, arguments)
        assert isinstance(verdict, policy.Refused), tool
        assert verdict.grounds is grounds
        assert verdict.to_model() == told


def test_an_edit_passes_the_same_gate_with_the_editors_wording() -> None:
    architect = BUILT_IN["architect"]
    invalid = policy.check(architect, "write_file", {"path": "a.md"})
    assert isinstance(invalid, policy.Refused)
    assert invalid.to_editor() == (
        "edited arguments are invalid: arguments: 'content' is a required property"
    )
    denied = policy.check(architect, "write_file", {"path": "a.py", "content": ""})
    assert isinstance(denied, policy.Refused)
    assert (
        denied.to_editor()
        == "edited call refused: the architect agent may only write *.md, not 'a.py'"
    )
    allowed = policy.check(architect, "write_file", {"path": "./docs/a.md", "content": ""})
    assert allowed == policy.Allowed(
        {"path": "docs/a.md", "content": ""},
        True,
        "write_file changes the workspace or runs a command",
    )
    assert policy.check(architect, "read_file", '{"path": "a.py"}') == policy.Allowed(
        {"path": "a.py"}, False
    )
