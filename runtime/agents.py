"""The agents, as data: role, tools, path rules, routing keywords, model.

An agent's tools are named by the groups :mod:`runtime.tools` derives from
the tools' declarations. Policy (:mod:`runtime.policy`) enforces ``tools``,
``writable`` and ``always_ask``; the prompt (:mod:`runtime.prompts`, which
adds to the role the rules that follow from the tools) only tells the model
what it will be allowed to do.

The five built-in agents are :data:`BUILT_IN`; an operator's file and a
project's ``.codelab/agents.yaml`` add or override agents
(:mod:`runtime.agent_files`). A :class:`Roster` is one such set: the
operator's for the whole runtime, a session's once its project's file is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from runtime.tools import (
    EDIT_TOOLS,
    IDE_TOOLS,
    READ_TOOLS,
    RUNTIME_TOOLS,
    SEARCH_TOOLS,
    WRITE_TOOLS,
)

NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""What an agent's name may look like (``switch_mode`` and the frames carry it)."""


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
    model: str = ""
    """The model group it calls ("": the operator's ``AGENT_MODELS`` or ``LLM_MODEL``)."""
    origin: str = "built-in"
    """Where it is defined: ``built-in``, ``operator`` (the operator's file) or ``project``."""
    always_ask: frozenset[str] = frozenset()
    """Tools whose every call waits for a human, whatever the operator's
    ``APPROVAL_REQUIRED`` and the user's rules say (a project's agents)."""

    @property
    def writes(self) -> bool:
        """Whether the agent has a tool that changes workspace files."""
        return bool(self.tools & WRITE_TOOLS)


TOOL_GROUPS: Mapping[str, frozenset[str]] = {
    "read": READ_TOOLS | SEARCH_TOOLS,
    "edit": WRITE_TOOLS,
    "command": frozenset({"execute_command"}),
}
"""What an agents file may grant, by group (as Roo Code's custom modes do):
``read`` the reads, ``edit`` every tool that changes files, ``command``
``execute_command``. Every agent has the runtime's own tools besides."""

DEFAULT_AGENT = "orchestrator"
FALLBACK_AGENT = "ask"


@dataclass(frozen=True, slots=True)
class Roster:
    """A set of agents by name, in order; hashable (prompts are cached by it)."""

    agents: tuple[Agent, ...]

    def get(self, name: str) -> Agent | None:
        return next((agent for agent in self.agents if agent.name == name), None)

    def __getitem__(self, name: str) -> Agent:
        agent = self.get(name)
        if agent is None:
            raise KeyError(name)
        return agent

    def __contains__(self, name: object) -> bool:
        return any(agent.name == name for agent in self.agents)

    def __iter__(self) -> Iterator[str]:
        return (agent.name for agent in self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    @property
    def routable(self) -> tuple[str, ...]:
        """The agents a new request may be routed to: all but the orchestrator."""
        return tuple(agent.name for agent in self.agents if agent.name != DEFAULT_AGENT)

    def resolve(self, name: str) -> Agent:
        """``name``'s agent; one this roster does not know (a project's agent
        whose file is not read yet, or is gone) is a read-only stand-in, so
        nothing is allowed that the agent may not have had."""
        agent = self.get(name)
        if agent is not None:
            return agent
        return Agent(
            name,
            "An agent that is not defined now.",
            f"You are the {name} agent, which is not defined now: you may only read.",
            READ_TOOLS | SEARCH_TOOLS | RUNTIME_TOOLS,
            origin="unknown",
        )

    def with_agents(self, agents: tuple[Agent, ...]) -> Roster:
        """This roster with ``agents`` added, each replacing one of the same name."""
        replaced = {agent.name: agent for agent in agents}
        ordered = [replaced.pop(agent.name, agent) for agent in self.agents]
        return Roster((*ordered, *replaced.values()))


BUILT_IN = Roster(
    (
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
)
"""The five agents every runtime has (an operator's file may override them)."""
