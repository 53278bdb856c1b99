"""Agents defined in YAML (runtime.agent_files): validated, merged, a project's held down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.agent_files import AgentsInvalid, ProjectLimits, load_operator_file, merge
from runtime.agents import BUILT_IN
from runtime.policy import Allowed, Refused, check
from runtime.tools import DEFAULT_APPROVAL_REQUIRED

SQL = """
agents:
  - name: sql
    description: Writes SQL migrations and queries.
    prompt: You are the SQL engineer. Write portable SQL.
    tools: [read, edit]
    writable: ["*.sql"]
    keywords: [sql, migration]
"""


def test_an_operator_agent_is_added_with_its_groups_and_globs() -> None:
    roster = merge(BUILT_IN, SQL, "agents.yaml")
    sql = roster["sql"]
    assert list(roster)[:5] == list(BUILT_IN), "the built-ins stay, in order"
    assert sql.origin == "operator"
    assert {"read_file", "write_file", "apply_diff", "delete_file"} <= sql.tools
    assert "execute_command" not in sql.tools
    assert {"switch_mode", "attempt_completion"} <= sql.tools, "the runtime's tools always"
    assert sql.writable == ("*.sql",)
    assert sql.keywords == ("sql", "migration")
    assert "sql" in roster.routable


def test_a_yaml_agent_may_write_what_its_globs_allow_and_nothing_else() -> None:
    sql = merge(BUILT_IN, SQL, "agents.yaml")["sql"]
    allowed = check(sql, "write_file", {"path": "db/a.sql", "content": "select 1;"})
    assert isinstance(allowed, Allowed)
    refused = check(sql, "write_file", {"path": "a.py", "content": "x"})
    assert isinstance(refused, Refused)
    assert refused.to_model() == "refused by policy: the sql agent may only write *.sql, not 'a.py'"
    assert isinstance(check(sql, "execute_command", {"command": "ls"}), Refused)


def test_a_glob_with_a_folder_matches_the_whole_path() -> None:
    text = SQL.replace('["*.sql"]', '["db/*.sql"]')
    sql = merge(BUILT_IN, text, "agents.yaml")["sql"]
    assert isinstance(check(sql, "write_file", {"path": "db/a.sql", "content": ""}), Allowed)
    assert isinstance(check(sql, "write_file", {"path": "a.sql", "content": ""}), Refused)


def test_an_override_keeps_what_it_leaves_out() -> None:
    text = "agents:\n  - name: ask\n    description: Answers in French.\n    model: mistral\n"
    roster = merge(BUILT_IN, text, "agents.yaml")
    ask = roster["ask"]
    assert ask.description == "Answers in French."
    assert ask.model == "mistral"
    assert ask.role == BUILT_IN["ask"].role
    assert ask.tools == BUILT_IN["ask"].tools
    assert len(roster) == len(BUILT_IN)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agents: [{name: sql}]", "agents.yaml: agent 'sql': a new agent needs a description"),
        (
            "agents:\n  - name: sql\n    description: d\n    prompt: p\n    tools: [read, fly]\n",
            "agents.yaml: agents[0] (sql).tools[1]: Input should be 'read', 'edit' or 'command'",
        ),
        ("agents:\n  - name: Bad Name\n", "agents.yaml: agents[0] (Bad Name).name: String should"),
        ("agents:\n  - name: x\n    colour: red\n", "agents.yaml: agents[0] (x).colour: Extra"),
        ("agents: {name: x}", "agents.yaml: agents: Input should be a valid list"),
        ("agents: [", "agents.yaml: not valid YAML (line 1)"),
        (
            "agents:\n  - {name: a, description: d, prompt: p}\n"
            "  - {name: a, description: d, prompt: p}\n",
            "agents.yaml: agent 'a' is defined twice",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_agent_and_field(text: str, message: str) -> None:
    with pytest.raises(AgentsInvalid) as refused:
        merge(BUILT_IN, text, "agents.yaml")
    assert str(refused.value).startswith(message)


def test_a_bad_operator_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  - name: sql\n    tools: [read]\n")
    with pytest.raises(AgentsInvalid, match=f"^{path}: agent 'sql': a new agent needs"):
        load_operator_file(str(path), BUILT_IN)
    with pytest.raises(AgentsInvalid, match="cannot be read"):
        load_operator_file(str(tmp_path / "missing.yaml"), BUILT_IN)


LIMITS = ProjectLimits(frozenset({"read", "edit", "command"}), frozenset({"offline"}))


def test_a_projects_agents_always_ask_before_they_change_or_run_anything() -> None:
    text = SQL.replace("[read, edit]", "[read, edit, command]")
    sql = merge(BUILT_IN, text, ".codelab/agents.yaml", project=LIMITS)["sql"]
    assert sql.origin == "project"
    assert sql.always_ask == sql.tools & DEFAULT_APPROVAL_REQUIRED
    # Even where the operator asks for no approval at all:
    run = check(sql, "execute_command", {"command": "ls"}, approval_required=frozenset())
    assert isinstance(run, Allowed)
    assert run.requires_approval
    read = check(sql, "read_file", {"path": "a.sql"}, approval_required=frozenset())
    assert isinstance(read, Allowed)
    assert not read.requires_approval


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "agents:\n  - name: ask\n    tools: [read, command]\n",
            "agent 'ask': a project may only narrow an existing agent, but the ask agent "
            "may also use execute_command",
        ),
        (
            "agents:\n  - name: architect\n    writable: ['*']\n",
            "agent 'architect': a project may only narrow an existing agent, but the "
            "architect agent may also write *",
        ),
        (
            "agents:\n  - {name: ops, description: d, prompt: p, tools: [read, command]}\n",
            "agent 'ops'.tools: the operator lets a project's agents have only edit, read, "
            "not command",
        ),
        (
            "agents:\n  - {name: big, description: d, prompt: p, model: gpt-5}\n",
            "agent 'big'.model: 'gpt-5' is not offered (offered: offline)",
        ),
    ],
)
def test_a_project_cannot_grant_more_than_the_operator_allows(text: str, message: str) -> None:
    limits = ProjectLimits(frozenset({"read", "edit"}), frozenset({"offline"}))
    with pytest.raises(AgentsInvalid) as refused:
        merge(BUILT_IN, text, ".codelab/agents.yaml", project=limits)
    assert message in str(refused.value)


def test_a_project_cannot_widen_an_operator_agent() -> None:
    operator = merge(BUILT_IN, SQL, "ops.yaml")
    text = "agents:\n  - name: sql\n    writable: ['*.sql', '*.py']\n"
    with pytest.raises(AgentsInvalid, match=r"may also write \*\.py"):
        merge(operator, text, ".codelab/agents.yaml", project=LIMITS)
    text = "agents:\n  - {name: sql, tools: [read]}\n"
    narrowed = merge(operator, text, ".codelab/agents.yaml", project=LIMITS)
    assert not narrowed["sql"].writes


def test_an_unknown_agent_resolves_to_a_read_only_stand_in() -> None:
    ghost = BUILT_IN.resolve("ghost")
    assert not ghost.writes
    assert isinstance(check(ghost, "write_file", {"path": "a", "content": ""}), Refused)
    assert BUILT_IN.resolve("coder") is BUILT_IN["coder"]


def start_runtime(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``codelab-runtime`` as an operator starts it, with ``env`` added."""
    environment = {
        **os.environ,
        "AGENT_RUNTIME__INTERNAL_API_KEY": "k",
        "AGENT_RUNTIME__DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}",
        "AGENT_RUNTIME__PORT": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "runtime"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.timeout(240)
def test_a_bad_operator_file_stops_the_runtimes_start_naming_file_and_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents:\n  - {name: sql, description: d, prompt: p, tools: [fly]}\n")
    started = start_runtime(tmp_path, AGENT_RUNTIME__AGENTS_FILE=str(path))
    assert started.returncode != 0
    assert started.stderr.strip().splitlines()[-1] == (
        f"codelab-runtime: AGENT_RUNTIME__AGENTS_FILE: {path}: agents[0] (sql).tools[0]: "
        "Input should be 'read', 'edit' or 'command'"
    )
