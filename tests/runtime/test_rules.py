"""A user's approval rules: parsing, deciding a call, suggesting the rule "always allow" adds."""

from __future__ import annotations

import re
from typing import Any

import pytest

from runtime.rules import (
    ALWAYS_ASK,
    MAX_RULES,
    ApprovalRules,
    Decision,
    OperatorLimits,
    Outcome,
    Rule,
    RulesInvalid,
    decide,
    suggest_rule,
    why_no_rule,
)

ALLOW, DENY, ASK = Outcome.ALLOW, Outcome.DENY, Outcome.ASK


def rules(allow: list[str] = [], deny: list[str] = [], cap: int | None = None) -> ApprovalRules:  # noqa: B006 - never mutated
    return ApprovalRules.from_json(
        {"allow": allow, "deny": deny, "max_auto_approvals_per_turn": cap}
    )


def command(rules: ApprovalRules, line: str) -> Decision:
    return decide(rules, "execute_command", {"command": line})


PYTEST = rules(["execute_command(pytest:*)"])


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        ("pytest -q", ALLOW),
        ("pytest", ALLOW),
        ("pytest tests/x.py -k 'a and b'", ALLOW),
        ("pytest -q 2>&1", ALLOW),
        ("pytest > /dev/null", ALLOW),
        ("pytestx", ASK),
        ("py.test", ASK),
        ("pytest; rm -rf x", ASK),
        ("pytest && curl x | sh", ASK),
        ("pytest $(rm -rf /)", ASK),
        ("pytest $(whoami)", ASK),
        ("pytest `whoami`", ASK),
        ("pytest > report.txt", ASK),
        ("pytest && ls", ASK),
        ("pytest | tee log", ASK),
        ("FOO=1 pytest", ASK),
        ("(pytest)", ASK),
        ("pytest 'unclosed", ASK),
    ],
)
def test_a_prefix_rule_allows_the_command_and_nothing_around_it(
    line: str, outcome: Outcome
) -> None:
    assert command(PYTEST, line).outcome is outcome


def test_a_line_of_commands_is_allowed_when_each_one_is() -> None:
    both = rules(["execute_command(pytest:*)", "execute_command(ls:*)"])
    decision = command(both, "ls && pytest -q | ls")
    assert decision == Decision(ALLOW, "execute_command(ls:*), execute_command(pytest:*)")
    assert command(both, "ls; cat x").reason == "no rule allows cat x"


def test_the_always_asked_list_beats_an_allow_rule() -> None:
    anything = rules(["execute_command"])
    assert command(anything, "make test").outcome is ALLOW
    for line in ("rm -rf build", "sudo make", "git push --force", "curl x | bash", "dd if=a of=b"):
        decision = command(anything, line)
        assert decision.outcome is ASK
        assert decision.reason.startswith("always asked: ")
    assert len(ALWAYS_ASK) > 10


def test_an_exact_rule_is_word_for_word() -> None:
    exact = rules(["execute_command(npm test)"])
    assert command(exact, "npm test").outcome is ALLOW
    assert command(exact, "npm  'test'").outcome is ALLOW  # the same words
    assert command(exact, "npm test -- --watch").outcome is ASK
    assert command(exact, "npm testx").outcome is ASK


def test_deny_wins_over_allow_and_reaches_inside_a_line() -> None:
    both = rules(["execute_command", "execute_command(git:*)"], ["execute_command(git push:*)"])
    assert command(both, "git status").outcome is ALLOW
    for line in ("git push", "git push origin main", "cd x && git push", "echo $(git push)"):
        decision = command(both, line)
        assert decision.outcome is DENY
        assert decision.rule == "execute_command(git push:*)"
    assert command(both, "/usr/bin/git push").outcome is DENY
    assert command(both, "git pushx").outcome is ALLOW


def test_deny_applies_to_tools_that_need_no_approval() -> None:
    secret = rules(["read"], ["read(.env)", "read(secrets/**)"])
    assert decide(secret, "read_file", {"path": "src/.env"}) == Decision(
        DENY, "read(.env)", "read(.env) matches src/.env"
    )
    assert decide(secret, "list_files", {"path": "secrets/keys"}).outcome is DENY
    assert decide(secret, "read_file", {"path": "src/main.py"}).outcome is ALLOW
    assert (
        decide(rules(deny=["execute_command"]), "execute_command", {"command": "ls"}).outcome
        is DENY
    )


@pytest.mark.parametrize(
    ("tool", "arguments", "outcome"),
    [
        ("write_file", {"path": "src/a.py"}, ALLOW),
        ("write_file", {"path": "src/deep/er/a.py"}, ALLOW),
        ("apply_diff", {"path": "src/a.py"}, ALLOW),
        ("insert_content", {"path": "src/a.py"}, ALLOW),
        ("create_directory", {"path": "src"}, ALLOW),
        ("delete_file", {"path": "src/old.py"}, ALLOW),
        ("write_file", {"path": "srcx/a.py"}, ASK),
        ("write_file", {"path": "lib/src/a.py"}, ASK),
        ("move_file", {"source": "src/a.py", "destination": "src/b.py"}, ALLOW),
        ("move_file", {"source": "src/a.py", "destination": "lib/b.py"}, ASK),
        ("move_file", {"source": "lib/a.py", "destination": "src/b.py"}, ASK),
        ("read_file", {"path": "src/a.py"}, ASK),  # edit does not cover reads
        ("execute_command", {"command": "ls src"}, ASK),
    ],
)
def test_edit_globs_cover_every_tool_that_changes_the_workspace(
    tool: str, arguments: dict[str, Any], outcome: Outcome
) -> None:
    assert decide(rules(["edit(src/**)"]), tool, arguments).outcome is outcome


def test_a_move_is_denied_when_either_path_matches() -> None:
    guarded = rules(["edit"], ["edit(*.lock)"])
    assert decide(guarded, "move_file", {"source": "a.lock", "destination": "b"}).outcome is DENY
    assert decide(guarded, "move_file", {"source": "a", "destination": "x/b.lock"}).outcome is DENY
    assert decide(guarded, "move_file", {"source": "a", "destination": "b"}).outcome is ALLOW


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.md", "README.md", True),
        ("*.md", "docs/deep/a.md", True),  # no slash: the name, in any folder
        ("/*.md", "README.md", True),
        ("/*.md", "docs/a.md", False),  # a leading / is the workspace root
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/x/a.md", False),
        ("docs/**/*.md", "docs/a.md", True),
        ("docs/**/*.md", "docs/x/y/a.md", True),
        ("**/test_*.py", "tests/unit/test_a.py", True),
        ("src/a?.py", "src/ab.py", True),
        ("src/[ab].py", "src/b.py", True),
        ("src/[!ab].py", "src/b.py", False),
        ("src/a[[]1].py", "src/a[1].py", True),
        ("./src/**", "src/x", True),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    assert Rule.parse(f"edit({pattern})").matches_path(path) is matches


def test_writes_under_git_are_always_asked() -> None:
    decision = decide(rules(["edit"]), "write_file", {"path": ".git/hooks/pre-commit"})
    assert (decision.outcome, decision.reason) == (
        ASK,
        "always asked: writes under .git/ (hooks run code)",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nope", "'nope' is not a tool rules apply to"),
        ("switch_mode", "is not a tool rules apply to"),
        ("Bash(ls)", "'Bash' is not a tool"),
        ("execute_command(", "is not TOOL or TOOL(SPECIFIER)"),
        ("execute_command()", "is not TOOL or TOOL(SPECIFIER)"),
        ("execute_command(npm * test)", "* may only end a command rule"),
        ("execute_command(a; b)", "names one simple command"),
        ("execute_command(ls $(x))", "command substitution"),
        ("edit(../outside)", "workspace-relative"),
        ("edit(~/x)", "workspace-relative"),
        ("", "1 to 1000 characters"),
        ("x" * 1001, "1 to 1000 characters"),
    ],
)
def test_a_bad_rule_is_named_in_the_error(text: str, problem: str) -> None:
    with pytest.raises(RulesInvalid, match=r"^allow\[1\]: ") as raised:
        ApprovalRules.from_json({"allow": ["read", text]})
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "a JSON object"),
        ({"allow": "read"}, "allow is a list"),
        ({"deny": [1]}, "deny[0]: a rule must be a string"),
        ({"ask": []}, "unknown keys ask"),
        ({"max_auto_approvals_per_turn": -1}, "whole number"),
        ({"max_auto_approvals_per_turn": True}, "whole number"),
        ({"allow": ["read"] * (MAX_RULES + 1)}, f"more than {MAX_RULES}"),
    ],
)
def test_bad_rules_json_says_what_is_wrong(data: Any, problem: str) -> None:
    with pytest.raises(RulesInvalid, match=re.escape(problem)):
        ApprovalRules.from_json(data)


def test_rules_round_trip_through_json_in_canonical_form() -> None:
    parsed = rules(
        ["execute_command(npm run *)", " edit(src/**) ", "execute_command(npm run:*)"],
        ["read(.env)"],
        5,
    )
    assert parsed.to_json() == {
        "allow": ["execute_command(npm run:*)", "edit(src/**)"],
        "deny": ["read(.env)"],
        "max_auto_approvals_per_turn": 5,
    }
    assert ApprovalRules.from_json(parsed.to_json()) == parsed
    assert ApprovalRules.from_json({}) == ApprovalRules()


def test_allowing_a_rule_adds_it_once() -> None:
    rule = Rule.parse("execute_command(pytest:*)")
    once = ApprovalRules().allowing(rule)
    assert once.allowing(rule) is once
    assert [r.text for r in once.allow] == ["execute_command(pytest:*)"]
    full = ApprovalRules.from_json({"allow": [f"edit(f{i})" for i in range(MAX_RULES)]})
    with pytest.raises(RulesInvalid, match="the most there can be"):
        full.allowing(rule)


def test_the_operator_cap_bounds_the_users() -> None:
    limits = OperatorLimits(max_auto_approvals_per_turn=10)
    assert limits.cap(ApprovalRules()) == 10
    assert limits.cap(rules(cap=3)) == 3
    assert limits.cap(rules(cap=50)) == 10  # stored before the operator lowered it
    limits.check(rules(cap=10))
    with pytest.raises(RulesInvalid, match="at most 10"):
        limits.check(rules(cap=11))


@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        ("execute_command", {"command": "pytest -q"}, "execute_command(pytest:*)"),
        ("execute_command", {"command": "npm test"}, "execute_command(npm test:*)"),
        (
            "execute_command",
            {"command": "npm run build --prod"},
            "execute_command(npm run build:*)",
        ),
        ("execute_command", {"command": "uv run pytest -x"}, "execute_command(uv run pytest:*)"),
        ("execute_command", {"command": "git status -s"}, "execute_command(git status:*)"),
        ("execute_command", {"command": "cargo test"}, "execute_command(cargo test:*)"),
        ("execute_command", {"command": "go test ./..."}, "execute_command(go test:*)"),
        ("execute_command", {"command": "make lint"}, "execute_command(make lint:*)"),
        ("execute_command", {"command": "poetry install"}, "execute_command(poetry install:*)"),
        (
            "execute_command",
            {"command": "python -m pytest -q"},
            "execute_command(python -m pytest:*)",
        ),
        ("execute_command", {"command": "python setup.py"}, "execute_command(python setup.py)"),
        ("execute_command", {"command": "bash ci.sh"}, "execute_command(bash ci.sh)"),
        ("execute_command", {"command": "git -C sub log"}, "execute_command(git -C sub log)"),
        ("execute_command", {"command": "./gradlew build"}, "execute_command(./gradlew:*)"),
        ("write_file", {"path": "src/a.py", "content": ""}, "edit(src/a.py)"),
        ("delete_file", {"path": "a.py"}, "edit(/a.py)"),
        ("apply_diff", {"path": "src/x*.py", "blocks": []}, "edit(src/x[*].py)"),
        ("read_file", {"path": "notes.txt"}, "read(/notes.txt)"),
    ],
)
def test_the_suggested_rule_allows_the_call_it_came_from(
    tool: str, arguments: dict[str, Any], rule: str
) -> None:
    assert suggest_rule(tool, arguments) == rule
    assert why_no_rule(tool, arguments) == ""
    assert decide(rules([rule]), tool, arguments).outcome is ALLOW


@pytest.mark.parametrize(
    ("tool", "arguments", "why"),
    [
        ("execute_command", {"command": "rm -rf build"}, "always asked: rm -r"),
        ("execute_command", {"command": "pytest && ls"}, "several commands"),
        ("execute_command", {"command": "pytest > out"}, "output redirection"),
        ("execute_command", {"command": "FOO=1 make"}, "not a command name"),
        ("move_file", {"source": "a", "destination": "b"}, "two paths"),
        ("write_file", {"path": ".git/config"}, "writes under .git/"),
        ("switch_mode", {"agent": "coder"}, "decided by a human each time"),
    ],
)
def test_no_rule_is_suggested_for_an_unsuitable_call(
    tool: str, arguments: dict[str, Any], why: str
) -> None:
    assert suggest_rule(tool, arguments) is None
    assert why in why_no_rule(tool, arguments)
