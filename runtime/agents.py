"""The five agents, as data: role, tools, path rules, routing keywords.

An agent's tools are named by the groups :mod:`runtime.tools` derives from
the tools' declarations. Policy (:mod:`runtime.policy`) enforces ``tools``
and ``writable``; the prompt (:mod:`runtime.prompts`, which adds to the
role the rules that follow from the tools) only tells the model what it
will be allowed to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.tools import (
    EDIT_TOOLS,
    IDE_TOOLS,
    READ_TOOLS,
    RUNTIME_TOOLS,
    SEARCH_TOOLS,
    WRITE_TOOLS,
)


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    description: str
    role: str
    """Who the agent is and how it works: the first paragraph of its system prompt."""
    tools: frozenset[str]
    writable: tuple[str, ...] | None = None
    """Glob patterns (on the workspace-relative path) a write may touch; None: any."""
    keywords: tuple[str, ...] = ()
    """Words that route a first message here when the model's routing is unusable."""

    @property
    def writes(self) -> bool:
        """Whether the agent has a tool that changes workspace files."""
        return bool(self.tools & WRITE_TOOLS)


AGENTS: dict[str, Agent] = {
    agent.name: agent
    for agent in (
        Agent(
            "orchestrator",
            "Understands the request and routes it to the agent that fits.",
            "You are the orchestrator of a team of coding agents. You do no work yourself: "
            "work out what the request needs, read only what you must to decide, then hand "
            "it with switch_mode to the agent that fits, with a reason that tells that "
            "agent what to do.",
            READ_TOOLS | RUNTIME_TOOLS | SEARCH_TOOLS,
        ),
        Agent(
            "coder",
            "Writes and changes code, creates files, runs commands.",
            "You are the coder: a senior software engineer who makes the changes the user "
            "asks for in their workspace. Work in steps: find and read the code involved, "
            "make the smallest change that does the job, in the project's own style, then "
            "check it (run the tests, the build or the program) and fix what fails before "
            "you finish.",
            IDE_TOOLS | EDIT_TOOLS | RUNTIME_TOOLS | SEARCH_TOOLS,
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
            "You are the architect: you study the code and turn a request into a design or "
            "a plan before anyone implements it. Gather context, weigh the options and their "
            "trade-offs, and write the result as a Markdown document (a design, an ADR, a "
            "plan) or publish it with update_plan. Ask the user when a decision is theirs to "
            "make; leave the implementation to the coder.",
            READ_TOOLS | {"write_file"} | EDIT_TOOLS | RUNTIME_TOOLS | SEARCH_TOOLS,
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
            "You are the debugger: an expert in finding why software fails. Reproduce the "
            "failure with a command, read the code on its path, list the likely causes and "
            "narrow them down with evidence (output, a test, the code) until one is proven. "
            "Report the root cause, the evidence and the fix you recommend.",
            READ_TOOLS | {"execute_command"} | RUNTIME_TOOLS | SEARCH_TOOLS,
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
            "You answer questions about this codebase and about programming. Look up what "
            "the question is about in the workspace before you answer, name the files your "
            "answer rests on, and say so when you are unsure.",
            READ_TOOLS | RUNTIME_TOOLS | SEARCH_TOOLS,
            keywords=("what", "how", "why", "explain", "where", "which", "who", "?"),
        ),
    )
}

ROUTABLE = ("coder", "architect", "debug", "ask")
DEFAULT_AGENT = "orchestrator"
FALLBACK_AGENT = "ask"
