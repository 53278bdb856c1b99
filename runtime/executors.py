"""The runtime's tools that need I/O: a registry of tool name → async executor.

The runtime's own quick tools (``switch_mode``, ``attempt_completion``, …)
are decided by :class:`~runtime.dispatch.Dispatcher` without I/O. Any other
:attr:`~runtime.tools.Side.RUNTIME` tool the policy let through is started
there as a :attr:`~runtime.state.CallState.RUNNING` call (:func:`start`),
never offered to the IDE; once that step is written, the session's shell
runs it with the executor registered for its name (:func:`run_started`),
and its answer resolves the call as an IDE's result would: the same tool
message, the same tool-call record. Such a tool is read-only over what the
runtime holds, so it needs no approval (``codebase_search``:
:meth:`runtime.codeindex.SessionIndex.search`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from runtime.errors import UpstreamError
from runtime.llm import ToolCallRequest
from runtime.state import CallState, PendingCall
from runtime.tools import TOOLS, Side
from runtime.turn import Next

if TYPE_CHECKING:
    from runtime.dispatch import Dispatcher
    from runtime.stream import EventStream

log = structlog.get_logger("runtime.executors")

Executor = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Runs a call on its (validated) arguments; returns its tool message's payload
(``{"result": …}`` or ``{"error": …}``). May raise UpstreamError."""


def start(d: Dispatcher, call: ToolCallRequest, arguments: dict[str, Any]) -> None:
    """Make ``call`` a running call of the runtime's: the turn waits for it."""
    pending = PendingCall(
        call.call_id,
        call.name,
        arguments,
        CallState.RUNNING,
        agent=d.session.agent,
        original_arguments=arguments,
    )
    d.session.pending[call.call_id] = pending
    d.record_call(pending, pending.state.value)


def _runs_here(call: PendingCall) -> bool:
    tool = TOOLS.get(call.tool_name)
    return call.state is CallState.RUNNING and tool is not None and tool.side is Side.RUNTIME


async def run_started(
    d: Dispatcher, executors: Mapping[str, Executor], stream: EventStream
) -> Next:
    """Run the calls :func:`start` made, in order, and resolve them; returns what
    comes next (:attr:`Next.WAIT` while the IDE's calls of the same reply wait).

    The session is stored as running meanwhile, so a restart in between fails
    the turn (it is retried) instead of leaving it waiting for nobody. Safe
    to cancel: a cancelled turn answers the open calls.
    """
    calls = [call for call in d.session.pending.values() if _runs_here(call)]
    if not calls:
        return Next.WAIT
    d.session.state = "running"
    await stream.flush()
    next_ = Next.WAIT
    for call in calls:
        executor = executors.get(call.tool_name)
        payload: dict[str, Any]
        if executor is None:
            payload = {"error": f"{call.tool_name} is not available in this runtime"}
        else:
            try:
                payload = await executor(call.arguments)
            except UpstreamError as exc:
                log.warning("runtime_tool_failed", tool=call.tool_name, code=exc.code)
                payload = {"error": f"{call.tool_name} failed: {exc}"}
        next_ = d.resolve(call, payload, "failed" if "error" in payload else "completed")
    if next_ is Next.WAIT:
        d.session.state = "waiting"
    return next_
