"""The turn loop of one live session: client events in, session events out.

:class:`Conversation` has no transport: the gRPC servicer feeds it client
events and drains the queues of its subscribers (one per attached stream).
A turn routes a new session's first request, streams the model's answer,
checks every tool call against schema and policy, sends IDE tools to the IDE
(asking for approval where policy says so), runs the runtime's own tools,
and calls the model again once every result is in, until the model answers
without tools or a tool ends the turn.

The turn is event-driven: while tool calls wait for the IDE or a human,
nothing runs; the result that completes the set starts the next model call.
So a turn that waits survives a runtime restart: its calls are in the
database and are offered again when the IDE reconnects.

Durability: every durable event is written (with the rest of its step)
before it is sent, in one transaction per step; text deltas are sent at once
and written as one row when the model call ends (both by the session's
:class:`~runtime.stream.EventStream`). History is append-only and never
holds a tool call without its result.

What is here is the reaction to each client command
(:mod:`runtime.commands`), tool dispatch through the one gate
(:func:`runtime.policy.check`), the runtime's own tools and plans, and the
session's lifecycle (detach grace, cancel, interruption, a lost lease); a
model request and the turn's limits are the turn core's
(:mod:`runtime.turn`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from mesh import tracing
from runtime import policy, routing
from runtime.agents import AGENTS
from runtime.commands import (
    ApprovalDecision,
    CancelTurn,
    ClientEvent,
    FileChanged,
    PlanApproval,
    SwitchAgent,
    ToolResult,
    UserMessage,
)
from runtime.errors import UpstreamError
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ErrorEvent,
    Event,
    PlanProgress,
    PlanStep,
    PlanUpdate,
    Sequenced,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.llm import ChatMessage, ChatModel, ToolCallRequest
from runtime.metrics import RuntimeMetrics
from runtime.state import (
    CallState,
    PendingCall,
    Session,
    SwitchRecord,
    message_to_record,
)
from runtime.store import CallRecord, Store, now
from runtime.store import SwitchRecord as StoredSwitch
from runtime.stream import EventStream, Subscriber
from runtime.tools import DEFAULT_APPROVAL_REQUIRED, TOOLS, Side
from runtime.turn import (
    MAX_MODEL_CALLS_PER_TURN,
    MAX_SWITCHES_PER_TURN,
    ModelReply,
    Turn,
    request_reply,
)

log = structlog.get_logger("runtime.conversation")
_tracer = tracing.tracer("runtime.conversation")
_TERMINAL_CALL_STATUSES = frozenset({"completed", "failed", "rejected", "cancelled"})

MAX_FILE_CHANGES = 256
"""Changed paths a session remembers until its next turn; more are only counted."""
NOTICE_MAX_PATHS = 50
NOTICE_MAX_CHARS = 4000
"""What the model is told of changed files: at most this many paths and
characters of paths; the rest as a count."""


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    model: str
    routing_model: str | None = None
    agent_models: Mapping[str, str] = field(default_factory=dict)
    approval_required: frozenset[str] = DEFAULT_APPROVAL_REQUIRED
    detach_grace: float = 10.0
    """Seconds a streaming turn goes on with no client attached before it is cancelled."""
    subscriber_queue: int = 1024
    """Events buffered per attached stream; a stream that falls further behind
    catches up from the log (see :class:`Subscriber`)."""
    max_replay: int = 100_000
    """A client further behind than this many events is told to reload instead."""


def _switched(agent: str) -> dict[str, Any]:
    return {"result": f"switched to {agent}; continue the request as {agent}"}


def _tool_message(call_id: str, name: str, payload: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        role="tool",
        content=json.dumps(payload, ensure_ascii=False),
        tool_call_id=call_id,
        name=name,
    )


class Conversation:
    """The live side of one session: its turn, its subscribers, its writes.

    One per live session (see :class:`runtime.hub.SessionHub`), shared
    by every stream attached to it. ``close`` cancels the turn; idempotent.
    """

    def __init__(
        self,
        session: Session,
        llm: ChatModel,
        store: Store,
        settings: ConversationSettings,
        *,
        on_idle: Callable[[Conversation], None] | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.session = session
        self._llm = llm
        self._store = store
        self._settings = settings
        self._on_idle = on_idle
        self._metrics = metrics if metrics is not None else RuntimeMetrics()
        self.stream = EventStream(
            session,
            store,
            subscriber_queue=settings.subscriber_queue,
            max_replay=settings.max_replay,
            metrics=self._metrics,
        )
        self._task: asyncio.Task[None] | None = None
        self._detach_timer: asyncio.TimerHandle | None = None
        self._detach_task: asyncio.Task[None] | None = None
        self._turn = Turn()

    # -- subscribers -----------------------------------------------------------

    @property
    def turn_running(self) -> bool:
        """A model call runs, or tool calls wait: a new message must wait."""
        return (self._task is not None and not self._task.done()) or bool(self.session.pending)

    @property
    def _task_running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self) -> Subscriber:
        """Attach a stream to the session's events (a detached turn goes on)."""
        subscriber = self.stream.subscribe()
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Detach a stream; with nobody left, a streaming turn gets ``detach_grace``."""
        self.stream.unsubscribe(subscriber)
        if self.stream.attached:
            return
        if self._task_running:
            loop = asyncio.get_running_loop()
            self._detach_timer = loop.call_later(
                self._settings.detach_grace, self._start_unattended_cancel
            )
        elif self._on_idle is not None:
            self._on_idle(self)

    def _start_unattended_cancel(self) -> None:
        self._detach_timer = None
        self._detach_task = asyncio.create_task(self._cancel_unattended())

    async def _cancel_unattended(self) -> None:
        if self.stream.attached or not self._task_running:
            return
        log.info("turn_cancelled_unattended", session_id=self.session.session_id)
        await self._cancel_turn("cancelled: the IDE went away")
        if not self.stream.attached and self._on_idle is not None:
            self._on_idle(self)

    async def attach(self, after_seq: int | None) -> tuple[Subscriber, list[Sequenced], bool]:
        """Subscribe a stream; returns it, what it must be sent first, and ``recovered``.

        With ``after_seq``, the first items are exactly the events after it
        (``recovered`` is False when that is impossible: too far behind, or
        ahead of the log after a restart). Tool calls and plans still waiting
        for this client are offered again (with seq 0).
        """
        subscriber = self.subscribe()
        items, recovered = await self.stream.events_after(after_seq)
        items.extend(self._reoffers(after_seq if recovered else None))
        return subscriber, items, recovered

    def _reoffers(self, after_seq: int | None) -> list[Sequenced]:
        items = []
        for call in self.session.pending.values():
            if after_seq is not None and call.offered_seq > after_seq:
                continue  # the replay holds it
            if call.state is CallState.AWAITING_PLAN_APPROVAL:
                steps = self.session.plans.get(call.plan_id, ())
                items.append(Sequenced(0, PlanUpdate(call.plan_id, steps, "", True)))
            else:
                approval = call.state is CallState.AWAITING_APPROVAL
                event = ToolCallEvent(
                    call.call_id, call.tool_name, call.arguments, approval, call.reason
                )
                items.append(Sequenced(0, event))
        return items

    # -- writing ---------------------------------------------------------------

    def _durable(self, event: Event) -> int:
        """Queue a durable event for the next flush; returns its seq."""
        seq = self.stream.durable(event)
        if isinstance(event, TurnDone):
            self._count_turn(event)
        return seq

    def _count_turn(self, done: TurnDone) -> None:
        """Metrics and the summary line of a turn, where its TurnDone is made."""
        status = done.status.value
        metrics = self._metrics
        metrics.turns.labels(status).inc()
        metrics.usage_tokens.labels("prompt").inc(done.usage.prompt_tokens)
        metrics.usage_tokens.labels("completion").inc(done.usage.completion_tokens)
        duration = None
        if self._turn.started is not None:
            duration = time.monotonic() - self._turn.started
            metrics.turn_duration.labels(status).observe(duration)
            self._turn.started = None
        log.info(
            "turn_finished",
            session_id=self.session.session_id,
            agent=self.session.agent,
            status=status,
            model_calls=self._turn.model_calls,
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens,
            duration_ms=None if duration is None else round(duration * 1000, 1),
        )

    def _ephemeral(self, code: str, message: str, retryable: bool = False) -> None:
        """An answer to one client's bad request: sent now, not logged (seq 0)."""
        self.stream.publish(Sequenced(0, ErrorEvent(code, message, retryable)))

    def _append_message(self, message: ChatMessage) -> None:
        session = self.session
        step = self.stream.step()
        step.messages.append(message_to_record(len(session.messages), message, session.agent))
        session.messages.append(message)
        session.message_agents.append(session.agent)

    def _record_call(self, call: PendingCall, status: str, decided: bool = False) -> None:
        if status in _TERMINAL_CALL_STATUSES:
            self._metrics.tool_calls.labels(call.tool_name, status).inc()
        self.stream.step().calls.append(
            CallRecord(
                call_id=call.call_id,
                tool_name=call.tool_name,
                agent=call.agent or self.session.agent,
                status=status,
                arguments=call.original_arguments or call.arguments,
                final_arguments=call.arguments if call.edited else None,
                reason=call.reason,
                plan_id=call.plan_id,
                offered_seq=call.offered_seq,
                decided_by=self.session.owner if decided else None,
                decided_at=now() if decided else None,
            )
        )

    async def _flush(self, state: str | None = None) -> None:
        """Write the open step (and unwritten text) then send its events."""
        if state is not None:
            self.session.state = state
        await self.stream.flush()

    # -- client events -------------------------------------------------------

    async def handle(self, event: ClientEvent, *, request_id: str | None = None) -> None:
        """React to one client event; returns without waiting for a model call."""
        match event:
            case UserMessage():
                await self._on_user_message(event, request_id)
            case CancelTurn():
                await self._on_cancel()
            case ToolResult():
                await self._on_tool_result(event)
            case ApprovalDecision():
                await self._on_approval(event)
            case SwitchAgent():
                await self._on_switch_agent(event, request_id)
            case PlanApproval():
                await self._on_plan_approval(event)
            case FileChanged():
                self._on_file_changed(event)

    async def _on_user_message(self, event: UserMessage, request_id: str | None) -> None:
        if self.turn_running:
            if self.session.pending:
                self._ephemeral(
                    "tool_calls_pending",
                    "tool calls are waiting for results or approval; answer them or cancel",
                    retryable=True,
                )
            else:
                self._ephemeral(
                    "turn_in_progress",
                    "a turn is already running; cancel it or wait for is_final",
                    retryable=True,
                )
            return
        if event.role != "user":
            self._ephemeral("invalid_frame", f"role must be user, not {event.role!r}")
            return
        if not event.content.strip():
            self._ephemeral("invalid_frame", "content must not be empty")
            return
        await self._begin_turn(event.content, request_id)

    async def _begin_turn(self, content: str, request_id: str | None) -> None:
        self._notice_file_changes()
        self._append_message(ChatMessage(role="user", content=content))
        if not self.session.title:
            self.session.title = content.strip().splitlines()[0][:80]
        self._turn = Turn(request_id=request_id, started=time.monotonic())
        await self._flush(state="running")
        self._task = asyncio.create_task(self._advance())

    def _on_file_changed(self, event: FileChanged) -> None:
        """Remember a changed file for the next turn: coalesced per path, at
        most ``MAX_FILE_CHANGES`` paths (more are only counted)."""
        try:
            normal = policy.workspace_path(event.path)
        except policy.PathRefused as exc:
            self._ephemeral("invalid_path", str(exc))
            return
        session = self.session
        if normal in session.file_changes or len(session.file_changes) < MAX_FILE_CHANGES:
            session.file_changes[normal] = event.timestamp
        else:
            session.file_changes_dropped += 1

    def _notice_file_changes(self) -> None:
        """Tell the model which files changed, in one bounded message."""
        session = self.session
        changes = session.file_changes
        if not changes:
            return
        listed: list[str] = []
        size = 0
        for path in sorted(changes):
            if len(listed) == NOTICE_MAX_PATHS or size + len(path) > NOTICE_MAX_CHARS:
                break
            listed.append(path)
            size += len(path) + 2
        more = len(changes) - len(listed) + session.file_changes_dropped
        listing = ", ".join(listed)
        if more:
            listing += f" and {more} more change{'s' if more != 1 else ''}"
        self._append_message(
            ChatMessage(
                role="user",
                content=(
                    f"[IDE notice] These files changed in the editor since you last saw "
                    f"them: {listing}. Read them again before relying on their contents."
                ),
            )
        )
        changes.clear()
        session.file_changes_dropped = 0

    async def _on_cancel(self) -> None:
        if not self.turn_running:
            self._ephemeral("no_turn_running", "there is no turn to cancel")
            return
        await self._cancel_turn("cancelled by the user before it finished")

    async def _cancel_turn(self, reason: str) -> None:
        turn, self._task = self._task, None
        if turn is not None and not turn.done():
            turn.cancel()
            # asyncio.wait, not await: the turn's CancelledError stays inside
            # it, while a cancellation of the caller still propagates.
            await asyncio.wait([turn])
        self._close_open_calls(reason)
        self._durable(TurnDone(TurnStatus.CANCELLED, self._turn.usage))
        await self._flush(state="idle")

    async def _on_tool_result(self, event: ToolResult) -> None:
        call = self.session.pending.get(event.call_id)
        if call is None or call.state is CallState.AWAITING_PLAN_APPROVAL:
            if event.call_id in self.session.answered:
                self._ephemeral(
                    "duplicate_tool_result", f"tool call {event.call_id!r} was already answered"
                )
            else:
                self._ephemeral(
                    "unknown_call_id", f"this session issued no tool call {event.call_id!r}"
                )
            return
        if call.state is CallState.AWAITING_APPROVAL:
            self._ephemeral(
                "approval_required",
                f"tool call {event.call_id!r} has not been approved; send hitl_decision first",
            )
            return
        if event.error is not None:
            payload: dict[str, Any] = {"error": event.error}
            status = "failed"
        else:
            payload = {"result": event.result if event.result is not None else {}}
            status = "completed"
        if call.edited:
            payload["edited_arguments"] = call.arguments
        await self._resolve(call, payload, status)

    async def _on_approval(self, event: ApprovalDecision) -> None:
        call = self.session.pending.get(event.call_id)
        if call is None or call.state is not CallState.AWAITING_APPROVAL:
            self._ephemeral(
                "unknown_call_id", f"no tool call {event.call_id!r} is waiting for approval"
            )
            return
        if event.decision in ("approve", "edit", "reject"):
            self._metrics.approvals.labels(call.tool_name, event.decision).inc()
        if event.decision == "reject":
            payload: dict[str, Any] = {"error": "the user rejected this tool call"}
            if event.feedback:
                payload["feedback"] = event.feedback
            await self._resolve(call, payload, "rejected", decided=True)
            return
        arguments = call.arguments
        if event.decision == "edit":
            if event.modified_arguments is None:
                self._ephemeral("invalid_edit", "edit needs modified_arguments")
                return
            # Checked against the agent that made the call: the session may
            # have switched since, to one with other rights.
            verdict = policy.check(
                AGENTS[call.agent or self.session.agent],
                call.tool_name,
                event.modified_arguments,
                approval_required=self._settings.approval_required,
            )
            if isinstance(verdict, policy.Refused):
                self._ephemeral("invalid_edit", verdict.to_editor())
                return
            arguments = verdict.arguments
            call.edited = True
        elif event.decision != "approve":
            self._ephemeral("invalid_frame", "decision must be approve, edit or reject")
            return
        if TOOLS[call.tool_name].side is Side.RUNTIME:
            await self._run_approved(call, arguments)
            return
        call.arguments = arguments
        call.state = CallState.AWAITING_RESULT
        call.offered_seq = self._durable(
            ToolCallEvent(call.call_id, call.tool_name, arguments, False, f"{event.decision}d")
        )
        self._record_call(call, "edited" if call.edited else "approved", decided=True)
        await self._flush()

    async def _run_approved(self, call: PendingCall, arguments: dict[str, Any]) -> None:
        """Run an approved runtime tool call (a widening ``switch_mode``) and answer it."""
        call.arguments = arguments
        payload: dict[str, Any]
        target = arguments["agent"]
        if target == self.session.agent:
            payload = {"result": f"{target} is already the current agent"}
        else:
            self._switch(target, arguments["reason"], 1.0)
            payload = _switched(target)
        if call.edited:
            payload["edited_arguments"] = arguments
        await self._resolve(call, payload, "completed", decided=True)

    async def _on_switch_agent(self, event: SwitchAgent, request_id: str | None) -> None:
        if self.turn_running:
            self._ephemeral(
                "turn_in_progress", "cannot switch agents during a turn; cancel it first", True
            )
            return
        if event.agent_type not in AGENTS:
            known = ", ".join(AGENTS)
            self._ephemeral("unknown_agent", f"unknown agent {event.agent_type!r}; one of {known}")
            return
        self._switch(event.agent_type, event.reason or "requested by the user", 1.0)
        if event.content.strip():
            await self._begin_turn(event.content, request_id)
        else:
            await self._flush()

    async def _on_plan_approval(self, event: PlanApproval) -> None:
        call = self.session.pending_plan(event.plan_id)
        if call is None:
            self._ephemeral("unknown_plan", f"no plan {event.plan_id!r} is waiting for approval")
            return
        if event.decision in ("approve", "reject"):
            self._metrics.approvals.labels(call.tool_name, event.decision).inc()
        if event.decision == "approve":
            await self._resolve(
                call, {"result": "the user approved the plan; execute it"}, "approved", True
            )
        elif event.decision == "reject":
            payload: dict[str, Any] = {"error": "the user rejected the plan"}
            if event.feedback:
                payload["feedback"] = event.feedback
            await self._resolve(call, payload, "rejected", decided=True)
        else:
            self._ephemeral("invalid_frame", "decision must be approve or reject")

    async def _resolve(
        self, call: PendingCall, payload: dict[str, Any], status: str, decided: bool = False
    ) -> None:
        """Answer a waiting call; the last answer of a set continues the turn."""
        session = self.session
        del session.pending[call.call_id]
        session.answered.add(call.call_id)
        self._append_message(_tool_message(call.call_id, call.tool_name, payload))
        self._record_call(call, status, decided)
        if session.pending:
            await self._flush()
            return
        if self._turn.ends_after_results:
            self._durable(TurnDone(TurnStatus.COMPLETED, self._turn.usage))
            await self._flush(state="idle")
            return
        await self._flush(state="running")
        self._task = asyncio.create_task(self._advance())

    # -- lifecycle ------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait for the running model call, if any, to finish."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def mark_interrupted(self) -> None:
        """The turn in the log was cut off by a restart: close it so the user can retry."""
        self._close_open_calls("the runtime restarted before this call finished")
        self._durable(
            ErrorEvent(
                "turn_interrupted",
                "the runtime restarted during this turn; send the message again to retry",
                retryable=True,
            )
        )
        self._durable(TurnDone(TurnStatus.FAILED))
        await self._flush(state="idle")

    async def abandon(self) -> None:
        """Another replica took the session: stop without writing anything more.

        The running model call is cancelled, nothing is flushed (the other
        replica owns the log now), and every attached stream ends retryably
        so its client reconnects to the session's new home.
        """
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        turn, self._task = self._task, None
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])
        self.stream.moved()

    async def close(self) -> None:
        """Cancel the running model call (the turn is marked cancelled); idempotent.

        Returns once nothing of this conversation touches the database.
        """
        if self._detach_timer is not None:
            self._detach_timer.cancel()
            self._detach_timer = None
        if self._detach_task is not None:
            await asyncio.wait([self._detach_task])
        if self._task_running:
            await self._cancel_turn("cancelled: the runtime is shutting down")
        await self.stream.drain()  # a shielded commit still in flight finishes first

    def _close_open_calls(self, reason: str) -> None:
        session = self.session
        for pending in list(session.pending.values()):
            self._record_call(pending, "cancelled")
        session.pending.clear()
        answered = {m.tool_call_id for m in session.messages if m.role == "tool"}
        for message in reversed(session.messages):
            if message.role == "assistant" and message.tool_calls:
                for call in message.tool_calls:
                    if call.call_id not in answered:
                        session.answered.add(call.call_id)
                        self._append_message(
                            _tool_message(call.call_id, call.name, {"error": reason})
                        )
                break
            if message.role == "user":
                break

    # -- the turn ---------------------------------------------------------------

    async def _advance(self) -> None:
        """Model calls until the turn ends or waits for tool results."""
        attributes = {"session.id": self.session.session_id, "agent": self.session.agent}
        with _tracer.start_as_current_span("turn", attributes=attributes):
            await self._advance_traced()

    async def _advance_traced(self) -> None:
        try:
            if self.session.agent == "orchestrator":
                await self._route()
            while self._turn.take_model_call():
                reply = await self._call_model()
                if not reply.calls:
                    self._append_message(ChatMessage("assistant", reply.text))
                    self._durable(TurnDone(TurnStatus.COMPLETED, self._turn.usage))
                    await self._flush(state="idle")
                    return
                self._append_message(
                    ChatMessage("assistant", reply.text, tool_calls=tuple(reply.calls))
                )
                ends_turn = False
                for call in reply.calls:
                    ends_turn |= self._dispatch(call)
                if self.session.pending:
                    self._turn.ends_after_results = ends_turn
                    await self._flush(state="waiting")
                    return
                if ends_turn:
                    self._durable(TurnDone(TurnStatus.COMPLETED, self._turn.usage))
                    await self._flush(state="idle")
                    return
                await self._flush()
            self._durable(
                ErrorEvent(
                    "turn_limit", f"the turn stopped after {MAX_MODEL_CALLS_PER_TURN} model calls"
                )
            )
            self._durable(TurnDone(TurnStatus.FAILED, self._turn.usage))
            await self._flush(state="idle")
        except UpstreamError as exc:
            log.warning("turn_failed", code=exc.code, error=str(exc))
            self._close_open_calls("the turn failed")
            self._durable(ErrorEvent(exc.code, str(exc), exc.retryable))
            self._durable(TurnDone(TurnStatus.FAILED, self._turn.usage))
            await self._flush(state="idle")

    async def _route(self) -> None:
        request = next((m.content for m in reversed(self.session.messages) if m.role == "user"), "")
        route = await routing.classify(
            self._llm,
            self._settings.routing_model or self._settings.model,
            request,
            request_id=self._turn.request_id,
        )
        self._switch(route.agent, route.rationale, route.confidence)

    def _switch(self, to_agent: str, reason: str, confidence: float) -> None:
        session = self.session
        from_agent = session.agent
        session.agent = to_agent
        session.switches.append(SwitchRecord(from_agent, to_agent, reason, confidence, time.time()))
        self.stream.step().switches.append(StoredSwitch(from_agent, to_agent, reason, confidence))
        self._durable(AgentSwitched(from_agent, to_agent, reason, confidence))

    async def _call_model(self) -> ModelReply:
        agent = AGENTS[self.session.agent]
        # Durable events queued before this call (a routing switch) go out first.
        if self.stream.pending_output:
            await self._flush()
        reply = await request_reply(
            self._llm,
            self._settings.agent_models.get(agent.name, self._settings.model),
            agent,
            self.session.messages,
            on_text=self.stream.text,
            request_id=self._turn.request_id,
        )
        self._turn.add_usage(reply.usage)
        return reply

    def _dispatch(self, call: ToolCallRequest) -> bool:
        """Check and start one tool call; True if it ends the turn."""
        verdict = policy.check(
            AGENTS[self.session.agent],
            call.name,
            call.arguments_json,
            approval_required=self._settings.approval_required,
        )
        if isinstance(verdict, policy.Refused):
            if verdict.grounds is policy.Grounds.DENIED:
                log.info("tool_call_refused", tool=call.name, agent=self.session.agent)
            self._metrics.tool_calls.labels(
                call.name if call.name in TOOLS else "unknown", "refused"
            ).inc()
            self._answer(call, {"error": verdict.to_model()})
            return False
        if TOOLS[call.name].side is Side.RUNTIME:
            self._metrics.tool_calls.labels(call.name, "runtime").inc()
            return self._run_runtime_tool(call, verdict.arguments)
        approval = verdict.requires_approval
        pending = PendingCall(
            call.call_id,
            call.name,
            verdict.arguments,
            CallState.AWAITING_APPROVAL if approval else CallState.AWAITING_RESULT,
            verdict.reason,
            agent=self.session.agent,
            original_arguments=verdict.arguments,
        )
        pending.offered_seq = self._durable(
            ToolCallEvent(call.call_id, call.name, verdict.arguments, approval, verdict.reason)
        )
        self.session.pending[call.call_id] = pending
        self._record_call(pending, pending.state.value)
        return False

    def _answer(self, call: ToolCallRequest, payload: dict[str, Any]) -> None:
        self.session.answered.add(call.call_id)
        self._append_message(_tool_message(call.call_id, call.name, payload))

    def _run_runtime_tool(self, call: ToolCallRequest, arguments: dict[str, Any]) -> bool:
        match call.name:
            case "switch_mode":
                target = arguments["agent"]
                if target == self.session.agent:
                    self._answer(call, {"result": f"{target} is already the current agent"})
                elif not self._turn.take_switch():
                    self._answer(
                        call,
                        {"error": f"no more than {MAX_SWITCHES_PER_TURN} switches per turn"},
                    )
                else:
                    gain = policy.widening(AGENTS[self.session.agent], AGENTS[target])
                    if gain is None:
                        self._switch(target, arguments["reason"], 1.0)
                        self._answer(call, _switched(target))
                    else:
                        # A model could be talked into widening its own
                        # rights (prompt injection): a human decides.
                        self._ask_approval(call, arguments, f"{gain}: {arguments['reason']}")
                return False
            case "attempt_completion":
                self._durable(AssistantText(arguments["result"]))
                self._answer(call, {"result": "the result was shown to the user"})
                return True
            case "ask_followup_question":
                self._durable(AssistantText(arguments["question"]))
                self._answer(call, {"result": "asked; the answer is the next user message"})
                return True
            case "update_plan":
                return self._update_plan(call, arguments)
        self._answer(call, {"error": f"{call.name} is not a runtime tool"})
        return False

    def _ask_approval(self, call: ToolCallRequest, arguments: dict[str, Any], reason: str) -> None:
        """Offer a runtime tool call for approval; it runs here once approved."""
        pending = PendingCall(
            call.call_id,
            call.name,
            arguments,
            CallState.AWAITING_APPROVAL,
            reason,
            agent=self.session.agent,
            original_arguments=arguments,
        )
        pending.offered_seq = self._durable(
            ToolCallEvent(call.call_id, call.name, arguments, True, reason)
        )
        self.session.pending[call.call_id] = pending
        self._record_call(pending, pending.state.value)

    def _update_plan(self, call: ToolCallRequest, arguments: dict[str, Any]) -> bool:
        plan_id = arguments["plan_id"]
        steps = tuple(
            PlanStep(s["id"], s.get("description", ""), s["status"]) for s in arguments["steps"]
        )
        before = {step.id: step for step in self.session.plans.get(plan_id, ())}
        if before:
            # Updating an existing plan: each changed step is progress.
            for step in steps:
                old = before.get(step.id)
                if old is None or old.status != step.status:
                    self._durable(PlanProgress(plan_id, step.id, step.status, step.description))
        self.session.plans[plan_id] = steps
        self.stream.step().plans[plan_id] = [[s.id, s.description, s.status] for s in steps]
        current = next((s.id for s in steps if s.status == "in_progress"), "")
        needs_approval = bool(arguments.get("requires_approval")) and not before
        offered = self._durable(PlanUpdate(plan_id, steps, current, needs_approval))
        if needs_approval:
            pending = PendingCall(
                call.call_id,
                call.name,
                arguments,
                CallState.AWAITING_PLAN_APPROVAL,
                "the plan needs approval",
                agent=self.session.agent,
                plan_id=plan_id,
                offered_seq=offered,
            )
            self.session.pending[call.call_id] = pending
            self._record_call(pending, pending.state.value)
        else:
            self._answer(call, {"result": "plan published"})
        return False
