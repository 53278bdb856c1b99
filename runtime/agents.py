"""The five agents, as data: prompt, tools, path rules, routing keywords.

An agent's tools are named by the groups :mod:`runtime.tools` derives from
the tools' declarations. Policy (:mod:`runtime.policy`) enforces ``tools``
and ``writable``; the prompt only tells the model what it will be allowed
to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.tools import EDIT_TOOLS, IDE_TOOLS, READ_TOOLS, RUNTIME_TOOLS, WRITE_TOOLS


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    description: str
    system_prompt: str
    tools: frozenset[str]
    writable: tuple[str, ...] | None = None
    """Glob patterns (on the workspace-relative path) a write may touch; None: any."""
    keywords: tuple[str, ...] = ()
    """Words that route a first message here when the model's routing is unusable."""

    @property
    def writes(self) -> bool:
        """Whether the agent has a tool that changes workspace files."""
        return bool(self.tools & WRITE_TOOLS)


_COMMON = (
    "Paths are relative to the workspace root; never absolute, never outside it. "
    "Call tools through function calls only. When the request is done, call "
    "attempt_completion with the result; when it is ambiguous, ask_followup_question. "
    "If another agent fits the request better, call switch_mode."
)

AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (
        Agent(
            "orchestrator",
            "Understands the request and routes it to the agent that fits.",
            "You are the orchestrator of a team of coding agents. Look at the request, "
            "read what you need, and hand the work to the right agent with switch_mode: "
            "coder writes code, architect designs and documents, debug finds and fixes "
            "failures by running things, ask answers questions. " + _COMMON,
            READ_TOOLS | RUNTIME_TOOLS,
        ),
        Agent(
            "coder",
            "Writes and changes code, creates files, runs commands.",
            "You are a senior software engineer. Make the change the user asks for: read "
            "the relevant files first, then write complete files, and run commands to "
            "check your work. " + _COMMON,
            IDE_TOOLS | EDIT_TOOLS | RUNTIME_TOOLS,
            keywords=(
                "write",
                "create",
                "implement",
                "add",
                "refactor",
                "code",
                "function",
                "class",
                "edit",
                "change",
                "build",
                "make",
                "rename",
                "move",
                "delete",
            ),
        ),
        Agent(
            "architect",
            "Designs systems and writes design documents (Markdown only).",
            "You are a software architect. Study the code, then propose designs and plans. "
            "You may write Markdown files (*.md) only and never run commands. " + _COMMON,
            READ_TOOLS | {"write_file"} | EDIT_TOOLS | RUNTIME_TOOLS,
            writable=("*.md",),
            keywords=(
                "design",
                "architecture",
                "architect",
                "plan",
                "structure",
                "diagram",
                "document",
                "spec",
                "rfc",
                "adr",
            ),
        ),
        Agent(
            "debug",
            "Finds the cause of failures by reading code and running commands; never writes.",
            "You are a debugging expert. Reproduce the problem by running commands, read "
            "the code, find the root cause and explain it. You never modify files. " + _COMMON,
            READ_TOOLS | {"execute_command"} | RUNTIME_TOOLS,
            keywords=(
                "debug",
                "bug",
                "error",
                "fail",
                "failing",
                "crash",
                "exception",
                "traceback",
                "broken",
                "fix",
                "why does",
                "test fails",
                "stack",
            ),
        ),
        Agent(
            "ask",
            "Answers questions about the code and concepts; read-only.",
            "You answer questions about the codebase and programming. Read what you need; "
            "you never change anything. " + _COMMON,
            READ_TOOLS | RUNTIME_TOOLS,
            keywords=("what", "how", "why", "explain", "where", "which", "who", "?"),
        ),
    )
}

ROUTABLE = ("coder", "architect", "debug", "ask")
DEFAULT_AGENT = "orchestrator"
FALLBACK_AGENT = "ask"
