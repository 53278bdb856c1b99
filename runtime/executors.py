"""The tools the runtime runs itself, with I/O: their executors, by tool name.

A tool of :attr:`~runtime.tools.Side.EXECUTOR` passes the same gate as an
IDE tool (:func:`runtime.policy.check`, the owner's approval rules, a
human's approval through the IDE), but once it may run, the runtime runs
it (:mod:`runtime.executions`) with the :class:`Executor` that claims its
name, and records its result as it records an IDE's. An executor may
declare tools of its own at run time (an MCP server's, :mod:`runtime.mcp`)
or run a tool declared in :data:`runtime.tools.TOOLS` (``codebase_search``,
:mod:`runtime.search`). One that is also a :class:`Watcher` is told what
each session sees (the answers to its calls, the IDE's ``file_changed``).

:class:`Executors` is the runtime's set of them, one per process, shared by
every session: the tool table a turn sees (:data:`~runtime.tools.TOOLS`
and what the executors declared so far), which agents are offered which of
those, and :meth:`Executors.run`, which never raises but a cancellation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from runtime.agents import Agent
from runtime.rules import OperatorLimits
from runtime.tools import TOOLS, Tool

if TYPE_CHECKING:
    from runtime.state import PendingCall

log = structlog.get_logger("runtime.executors")

MAX_RESULT_CHARS = 100_000
"""Characters of one result's JSON the model is given; a longer one is cut (with a note)."""


@dataclass(frozen=True, slots=True)
class Execution:
    """One approved call for an executor to run."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    """Checked against the tool's schema (and edited by a human, if they did)."""
    session_id: str
    owner: str
    agent: str


@dataclass(frozen=True, slots=True)
class Offer:
    """Tools an executor offers an agent: their declarations, and how they are approved."""

    tools: Sequence[Tool] = ()
    rule_approvable: frozenset[str] = frozenset()
    """Those a user's allow rule may auto-approve (the operator's floor, as
    :attr:`runtime.rules.OperatorLimits.user_auto_approve` is for the IDE's)."""


class Executor(Protocol):
    """Runs the calls of the tools whose names it claims."""

    def runs(self, tool_name: str) -> bool:
        """Whether this executor runs ``tool_name`` (known before any I/O)."""
        ...

    async def offer(self, agent: str) -> Offer:
        """The tools of its own it offers ``agent`` now; may connect (lazily,
        once) and must not raise: what it cannot reach it does not offer."""
        ...

    async def run(self, execution: Execution) -> dict[str, Any]:
        """Run one call: ``{"result": …}`` or ``{"error": "…"}``; bounds its own time.

        May raise (the call then fails with the error's type); safe to cancel.
        """
        ...

    async def close(self) -> None:
        """Release connections and processes; idempotent."""
        ...


@runtime_checkable
class Watcher(Protocol):
    """An executor that learns from what the sessions see (a search index); its
    methods that do not await must not raise either."""

    def saw(self, session_id: str, call: PendingCall, payload: dict[str, Any], status: str) -> None:
        """A call of the session was answered (any tool's, the IDE's too)."""
        ...

    def changed(self, session_id: str, path: str) -> None:
        """The IDE says ``path`` changed out of the session's sight (``file_changed``)."""
        ...

    async def release(self, session_id: str) -> None:
        """The session is no longer served here (deleted, or moved to another replica)."""
        ...


class Executors:
    """The runtime's executors and the tools they declared; one per process."""

    def __init__(self, executors: Iterable[Executor] = ()) -> None:
        self._executors = tuple(executors)
        self._watchers = tuple(e for e in self._executors if isinstance(e, Watcher))
        self._declared: dict[str, Tool] = {}
        self._offered: dict[str, frozenset[str]] = {}
        self._rule_approvable: set[str] = set()

    @property
    def tools(self) -> Mapping[str, Tool]:
        """Every tool a call may name: :data:`~runtime.tools.TOOLS` and those declared."""
        return {**TOOLS, **self._declared} if self._declared else TOOLS

    @property
    def approval_required(self) -> frozenset[str]:
        """The declared tools a human approves (the operator's setting per server)."""
        return frozenset(name for name, tool in self._declared.items() if tool.approval)

    @property
    def rule_approvable(self) -> frozenset[str]:
        return frozenset(self._rule_approvable)

    def widen(self, limits: OperatorLimits) -> OperatorLimits:
        """``limits`` letting users' rules also auto-approve :attr:`rule_approvable`."""
        extra = self._rule_approvable - limits.user_auto_approve
        if not extra:
            return limits
        return dataclasses.replace(limits, user_auto_approve=limits.user_auto_approve | extra)

    def offered(self, agent: str) -> frozenset[str]:
        """The declared tools ``agent`` was last offered (:meth:`prepare`)."""
        return self._offered.get(agent, frozenset())

    def equip(self, agent: Agent, *, unapproved_only: bool = False) -> Agent:
        """``agent`` with the declared tools it was last offered; with
        ``unapproved_only``, only those no human approves (for a client that
        approves by running the call itself, which it cannot do for these)."""
        offered = self.offered(agent.name)
        if unapproved_only:
            offered = frozenset(n for n in offered if not self._declared[n].approval)
        return dataclasses.replace(agent, tools=agent.tools | offered) if offered else agent

    def executor_for(self, tool_name: str) -> Executor | None:
        return next((e for e in self._executors if e.runs(tool_name)), None)

    async def prepare(self, agent: str) -> None:
        """Ask every executor what it offers ``agent`` now (before a model call)."""
        if not self._executors:
            return
        names: set[str] = set()
        for executor in self._executors:
            offer = await executor.offer(agent)
            for tool in offer.tools:
                self._declared[tool.name] = tool
                names.add(tool.name)
            self._rule_approvable |= offer.rule_approvable
        self._offered[agent] = frozenset(names)

    async def run(self, execution: Execution) -> tuple[dict[str, Any], str]:
        """Run one call with its executor: its payload for the model and the
        call's status (``completed`` or ``failed``). Never raises but
        :class:`asyncio.CancelledError`; a result is cut to
        :data:`MAX_RESULT_CHARS`."""
        executor = self.executor_for(execution.tool_name)
        if executor is None:
            return {"error": f"no executor runs {execution.tool_name}"}, "failed"
        try:
            payload = await executor.run(execution)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an executor's bug must not end the turn
            log.warning(
                "tool_execution_failed",
                tool=execution.tool_name,
                session_id=execution.session_id,
                error=type(exc).__name__,
            )
            payload = {"error": f"{execution.tool_name} failed: {type(exc).__name__}"}
        return bounded(payload), "failed" if "error" in payload else "completed"

    def saw(self, session_id: str, call: PendingCall, payload: dict[str, Any], status: str) -> None:
        """Tell the :class:`Watcher` executors that a call of the session was answered."""
        for watcher in self._watchers:
            watcher.saw(session_id, call, payload, status)

    def changed(self, session_id: str, path: str) -> None:
        """Tell the :class:`Watcher` executors that ``path`` changed in the IDE."""
        for watcher in self._watchers:
            watcher.changed(session_id, path)

    async def release(self, session_id: str) -> None:
        """Tell the :class:`Watcher` executors the session is no longer served here."""
        for watcher in self._watchers:
            await watcher.release(session_id)

    async def close(self) -> None:
        """Close every executor; idempotent."""
        for executor in self._executors:
            await executor.close()


def bounded(payload: dict[str, Any], limit: int = MAX_RESULT_CHARS) -> dict[str, Any]:
    """``payload``, or, when its JSON is longer than ``limit`` characters, its
    text cut to fit, saying how much was left out."""
    text = json.dumps(payload, ensure_ascii=False)
    if len(text) <= limit:
        return payload
    key = "error" if "error" in payload else "result"
    return {
        key: text[: max(limit - 200, 0)],
        "truncated": f"the result was cut to {limit - 200} of its {len(text)} characters",
    }
