"""The calls the runtime runs itself (:attr:`~runtime.tools.Side.EXECUTOR`), from
the model's call to its answer.

Such a call passes the gate of any call (:meth:`~runtime.dispatch.Dispatcher._dispatch`:
the policy, the owner's rules, the operator's floor). Then, like
:mod:`runtime.answers`, functions over a :class:`~runtime.dispatch.Dispatcher`
decide without I/O: :func:`start` offers it to a human (a ``tool_call``
with ``requires_approval``, answered by ``hitl_decision``) or lets it run;
:func:`approved` lets an approved one run; :func:`finished` answers it.
A call that may run is stored as ``executing`` and queued in
:attr:`Dispatcher.executions`; the IDE is never asked to run it.

:class:`Executions` is the shell: it starts the queued calls once their
step is written, each in a task of its own that runs it with the runtime's
:class:`~runtime.executors.Executors` and hands the answer back. A call
stored as ``executing`` that no task runs was cut off by a restart: it
fails (:func:`interrupted`) and is never run again behind anyone's back,
since it may have taken effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from runtime.executors import Execution
from runtime.llm import ToolCallRequest
from runtime.records import EXECUTING
from runtime.rules import Approval
from runtime.state import CallState, PendingCall
from runtime.tools import Side
from runtime.turn import Next

if TYPE_CHECKING:
    from runtime.dispatch import Dispatcher

log = structlog.get_logger("runtime.executions")

INTERRUPTED = (
    "interrupted: the runtime restarted while this call ran; it was not run again, and "
    "it may or may not have taken effect"
)


def runs_here(d: Dispatcher, tool_name: str) -> bool:
    """Whether the runtime runs calls of ``tool_name`` itself (also one an
    executor claims before it declared it again after a restart)."""
    tool = d.tools.get(tool_name)
    if tool is not None:
        return tool.side is Side.EXECUTOR
    return d.executors.executor_for(tool_name) is not None


def start(
    d: Dispatcher, call: ToolCallRequest, arguments: dict[str, Any], approval: Approval
) -> None:
    """A model's call of a runtime-run tool that passed the gate: offered for
    approval, or queued to run."""
    reason = approval.reason(f"{call.name} is run by the runtime, outside the workspace")
    state = CallState.AWAITING_APPROVAL if approval.ask else CallState.EXECUTING
    pending = PendingCall(
        call.call_id,
        call.name,
        arguments,
        state,
        reason,
        agent=d.session.agent,
        original_arguments=arguments,
    )
    if approval.ask:
        d.offer(pending)
    else:
        _execute(d, pending)


def _execute(d: Dispatcher, call: PendingCall) -> None:
    call.state = CallState.EXECUTING
    d.session.pending[call.call_id] = call
    d.record_call(call, EXECUTING, decided=call.decided)
    d.executions.append(call)


def approved(d: Dispatcher, call: PendingCall, arguments: dict[str, Any]) -> Next:
    """A human approved (or edited: ``arguments``) a waiting call: it runs now."""
    call.arguments = arguments
    call.decided = True
    _execute(d, call)
    return Next.WAIT


def finished(d: Dispatcher, call: PendingCall, payload: dict[str, Any], status: str) -> Next:
    """A run ended with ``payload``: the call is answered. NOTHING when it is no
    longer waited on (the turn was cancelled meanwhile)."""
    if d.session.pending.get(call.call_id) is not call:
        return Next.NOTHING
    if call.edited:
        payload = {**payload, "edited_arguments": call.arguments}
    return d.resolve(call, payload, status, decided=call.decided)


def interrupted(d: Dispatcher, running: set[str]) -> Next:
    """Fail the calls stored as executing that no task runs (``running``: the
    ids that one does): a restart cut them off."""
    next_ = Next.NOTHING
    for call in list(d.session.pending.values()):
        if call.state is CallState.EXECUTING and call.call_id not in running:
            log.warning("tool_execution_interrupted", call_id=call.call_id, tool=call.tool_name)
            next_ = d.resolve(call, {"error": INTERRUPTED}, "failed", decided=call.decided)
    return next_


class Executions:
    """The running calls of one live session; ``go_on`` writes a step and goes on
    (:meth:`runtime.conversation.Conversation._go_on`)."""

    def __init__(self, dispatcher: Dispatcher, go_on: Callable[[Next], Awaitable[None]]) -> None:
        self._d = dispatcher
        self._go_on = go_on
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Start the calls the last step let run; call it once the step is written."""
        d = self._d
        while d.executions:
            call = d.executions.pop(0)
            execution = Execution(
                call.call_id,
                call.tool_name,
                dict(call.arguments),
                d.session.session_id,
                d.session.owner,
                call.agent,
            )
            task = asyncio.create_task(self._run(call, execution))
            self._tasks[call.call_id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks = {key: t for key, t in self._tasks.items() if t is not task}

    async def _run(self, call: PendingCall, execution: Execution) -> None:
        payload, status = await self._d.executors.run(execution)
        log.info(
            "tool_executed",
            session_id=execution.session_id,
            call_id=call.call_id,
            tool=call.tool_name,
            status=status,
        )
        try:
            await self._go_on(finished(self._d, call, payload, status))
        except Exception:  # the store failed: the call stays executing, failed on reopen
            log.exception("tool_execution_unrecorded", call_id=call.call_id)

    async def resume(self) -> None:
        """Fail the calls a restart cut off (:func:`interrupted`); the turn goes on."""
        await self._go_on(interrupted(self._d, set(self._tasks)))

    async def cancel(self) -> None:
        """Stop every running call, recording nothing (the caller closes them)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
