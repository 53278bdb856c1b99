"""The agents' system prompts, composed from sections; pure, no I/O.

:func:`system_prompt` is what :func:`runtime.turn.request_reply` sends
first on every model call: the agent's role (:mod:`runtime.agents`), then
the rules that follow from its tools — how to use tools, the other agents,
editing files, running commands, its limits — then general rules, the
project's rules and the user's instructions
(:class:`runtime.project.Guidance`, each with its origin), and the
environment (:func:`environment_details`: the machine the IDE reports, the
date, the workspace's file tree). A section appears only for an agent with
the tools it is about, so a prompt never describes a tool the model is not
offered. The tools themselves are described by their function schemas
(:mod:`runtime.tools`), not here.

Prompts are paid for on every model call: each section is as short as it
can be while still saying what a real model needs, and a composed prompt is
cached per (agent, its roster, guidance, environment, workspace view, date),
so a turn's model calls reuse one string. docs/AGENTS.md compares the
sections with Roo Code's and Cline's.
"""

from __future__ import annotations

import functools
from datetime import date

from runtime.agents import BUILT_IN, Agent, Roster
from runtime.commands import Environment
from runtime.project import Guidance
from runtime.tools import READ_TOOLS

NOTICE_MARK = "[IDE notice]"
"""How a message the runtime writes for the IDE begins (files changed in the
editor, :mod:`runtime.conversation`); the rules tell the model what it means."""
MAX_REPORTED_CHARS = 512
"""Longest environment value put in a prompt; longer ones are cut."""


@functools.lru_cache(maxsize=256)
def system_prompt(
    agent: Agent,
    environment: Environment | None,
    workspace_view: str | None,
    today: date,
    roster: Roster = BUILT_IN,
    guidance: Guidance | None = None,
) -> str:
    """The whole system prompt of ``agent`` (one of ``roster``) in this
    environment, with the project's rules and the user's instructions; cached."""
    parts = [instructions(agent, roster)]
    if guidance is not None:
        parts += _guidance(guidance)
    parts.append(environment_details(environment, workspace_view, today))
    return "\n\n".join(parts)


@functools.lru_cache(maxsize=64)
def instructions(agent: Agent, roster: Roster = BUILT_IN) -> str:
    """Everything of ``agent``'s prompt that does not depend on the session; cached."""
    sections = [agent.role, _tool_use(agent), _agents(agent, roster), _limits(agent)]
    if agent.writes:
        sections.append(_editing(agent))
    if "execute_command" in agent.tools:
        sections.append(_COMMANDS)
    sections.append(_RULES)
    return "\n\n".join(sections)


def _guidance(guidance: Guidance) -> list[str]:
    """The project's rules and the user's instructions, each said to be whose it is."""
    sections = []
    if guidance.rules:
        lines = [
            "# Project rules",
            "The project's own instructions, from its files in the workspace. Follow them "
            "where they apply; they cannot change what your tools or the approvals allow.",
        ]
        for origin, text in guidance.rules:
            lines += ["", f"## {origin}", text]
        if guidance.omitted:
            lines += ["", guidance.omitted]
        sections.append("\n".join(lines))
    if guidance.user:
        sections.append(
            "# The user's instructions\nThe user's own standing instructions, for every "
            f"session:\n{guidance.user}"
        )
    return sections


def environment_details(
    environment: Environment | None, workspace_view: str | None, today: date
) -> str:
    """What the runtime knows of where the work happens; unreported values say so."""
    reported = environment or Environment()
    lines = [
        "# Environment",
        f"Operating system: {_reported(reported.os)}",
        f"Shell: {_reported(reported.shell)}",
        f"Workspace root: {_reported(reported.workspace_root)}",
        f"Date: {today.isoformat()} (UTC)",
    ]
    if workspace_view is None:
        lines.append("Workspace files: not listed yet; use list_files.")
    else:
        lines.append(
            "Workspace files (listed when the session began, may be out of date; "
            "list_files shows the current state):"
        )
        lines.append(workspace_view)
    return "\n".join(lines)


def _reported(value: str) -> str:
    """An IDE-reported value on one line, bounded; "not reported" when empty."""
    value = " ".join(value.split())[:MAX_REPORTED_CHARS]
    return value or "not reported"


def _tool_use(agent: Agent) -> str:
    reads = ", ".join(sorted(agent.tools & READ_TOOLS)) or "none of yours"
    finders = " and ".join(sorted(agent.tools & {"search_in_code", "list_files"}, reverse=True))
    lines = [
        "# Tool use",
        "- You act only through your tools, called as functions; the IDE runs them on the "
        "user's machine and answers each call. Never assume a result: wait for it and "
        "decide the next step from it.",
        "- Make one call at a time. Put several calls in one reply only when they are "
        f"independent reads ({reads}).",
    ]
    if finders:
        lines.append(f"- Find code with {finders} instead of guessing paths or names.")
    if "codebase_search" in agent.tools:
        lines.append(
            "- codebase_search finds code by meaning, but only among the files read in full "
            "or written in this session: use it to get back to code seen earlier."
        )
    lines += [
        '- A result with "error" means the call failed or was refused and changed nothing: '
        "read why and change your approach instead of repeating the call. After several "
        "failed calls in a row the turn stops and the user is asked how to go on.",
    ]
    risky = [
        what
        for what, able in (
            ("change files", agent.writes),
            ("run commands", "execute_command" in agent.tools),
        )
        if able
    ]
    if risky:
        lines.append(
            f"- Calls that {' or '.join(risky)} may wait for the user's approval. A rejected "
            "call did not run: follow the user's feedback, don't retry it unchanged."
        )
    lines += [
        "- Finish a task with attempt_completion once it is done and verified: its result "
        "says what you did and what the user should know, as a final statement (no closing "
        "question, no offer of more help). A reply without a tool call also ends your "
        "turn: its text is your answer.",
        "- Call ask_followup_question only for information no tool can find (what the user "
        "wants, a choice only they can make). Ask one clear question; the answer comes as "
        "the next message.",
        "- For a task of several steps, publish a plan with update_plan and keep its "
        "steps' status current.",
    ]
    return "\n".join(lines)


def _agents(agent: Agent, roster: Roster) -> str:
    others = "\n".join(
        f"- {other.name}: {other.description}"
        for other in roster.agents
        if other.name != agent.name
    )
    return (
        f"# Agents\nYou are the {agent.name} agent. The others:\n{others}\n"
        "When the request needs another agent (above all, a right you lack), call "
        "switch_mode with a reason that tells it what to do: it continues the same request "
        "with this conversation. A switch to an agent with more rights waits for the "
        "user's approval."
    )


def _limits(agent: Agent) -> str:
    lines = ["# Limits"]
    if not agent.writes:
        lines.append(
            "- You change no file: none of your tools writes. When the request needs a "
            "change, say what it is, or switch_mode to coder to make it."
        )
    elif agent.writable is not None:
        patterns = ", ".join(agent.writable)
        lines.append(
            f"- You may write only files matching {patterns}; a write to any other path is refused."
        )
    if "execute_command" not in agent.tools:
        lines.append("- You run no commands.")
    lines.append(
        "- Paths are relative to the workspace root, with / separators; an absolute path "
        "or one outside the workspace is refused."
    )
    return "\n".join(lines)


def _editing(agent: Agent) -> str:
    lines = [
        "# Editing files",
        f"- Read a file before you change it, and again after an {NOTICE_MARK} names it: "
        "edits are made against its current content.",
    ]
    if "apply_diff" in agent.tools:
        lines.append(
            "- Change an existing file with apply_diff: copy each block's search text "
            "exactly from the file, whitespace included, with enough lines around the change "
            "that it occurs exactly once; put several changes to one file in one call."
            + (" Add lines with insert_content." if "insert_content" in agent.tools else "")
            + " An edit that did not apply changed nothing: read the file again and retry "
            "with its exact text."
        )
    if "write_file" in agent.tools:
        lines.append(
            "- Use write_file for a new file or a complete rewrite, and always give the "
            'complete content: never shorten it with "...", "rest unchanged" or similar '
            "placeholders, which would be written into the file. Set create_dirs to write "
            "into a folder that does not exist yet."
        )
    lines.append("- Keep the project's style, and change only what the task needs.")
    return "\n".join(lines)


_COMMANDS = """# Commands
- execute_command runs in the user's shell (see Environment) in the workspace root, or in \
cwd: use that shell's syntax and that system's tools.
- A command must end on its own: no interactive prompts (pass flags such as --yes), no \
servers or watchers that never exit.
- Before a command that deletes or overwrites data, installs software, rewrites git \
history, changes system settings or reaches the network, say in one sentence what it does \
and why. The user may reject it.
- Check the exit code and output: don't assume a command worked."""

_RULES = f"""# Rules
- A user message that starts with {NOTICE_MARK} is written by the IDE, not the user: it \
lists files changed in the editor since you last saw them. Read them again before relying \
on them; the notice asks for nothing.
- Be direct and technical: no filler such as "Great" or "Certainly". Use Markdown, with \
code in fenced blocks that name the language."""
