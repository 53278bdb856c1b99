"""One client stream attached to one session: client events in, events out.

:class:`Conversation` is the turn loop without any transport: the gRPC
servicer feeds it client events and drains its outbox. A turn runs as a task
owned by the conversation: it routes a new session's first request, streams
the model's answer, checks every tool call against schema and policy, sends
IDE tools to the IDE (asking for approval where policy says so), runs the
runtime's own tools, waits for every result and calls the model again, until
the model answers without tools or a tool ends the turn.

History is append-only and never holds a tool call without its result: a
refused, rejected or cancelled call gets a tool message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from runtime import policy, routing
from runtime.agents import AGENTS
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
    Usage,
)
from runtime.llm import (
    ChatMessage,
    LlmClient,
    StreamEnd,
    TextChunk,
    ToolCallChunk,
    ToolCallRequest,
)
from runtime.session import CallState, PendingCall, Session, SwitchRecord
from runtime.tools import TOOLS, ArgumentsInvalid, Side, validate_arguments

log = structlog.get_logger("runtime.conversation")

MAX_SWITCHES_PER_TURN = 3
MAX_MODEL_CALLS_PER_TURN = 25


@dataclass(frozen=True, slots=True)
class UserMessage:
    content: str
    role: str = "user"


@dataclass(frozen=True, slots=True)
class CancelTurn:
    pass


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalDecision:
    call_id: str
    decision: str  # approve | edit | reject
    modified_arguments: dict[str, Any] | None = None
    feedback: str = ""


@dataclass(frozen=True, slots=True)
class SwitchAgent:
    agent_type: str
    content: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PlanApproval:
    plan_id: str
    decision: str  # approve | reject
    feedback: str = ""


@dataclass(frozen=True, slots=True)
class FileChanged:
    path: str
    timestamp: float


ClientEvent = (
    UserMessage
    | CancelTurn
    | ToolResult
    | ApprovalDecision
    | SwitchAgent
    | PlanApproval
    | FileChanged
)


@dataclass(slots=True)
class _ModelReply:
    text: str = ""
    calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class _CallDraft:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _tool_message(call_id: str, name: str, payload: dict[str, Any]) -> ChatMessage:
    return ChatMessage(
        role="tool",
        content=json.dumps(payload, ensure_ascii=False),
        tool_call_id=call_id,
        name=name,
    )


class Conversation:
    """Serves one client stream on one session.

    Events are put on ``outbox`` (bounded: a slow client slows the turn, it
    does not grow memory). Not safe to share between streams.
    """

    def __init__(
        self,
        session: Session,
        llm: LlmClient,
        *,
        model: str,
        outbox: asyncio.Queue[Sequenced],
        routing_model: str | None = None,
        agent_models: Mapping[str, str] | None = None,
        approval_required: Collection[str] = policy.DEFAULT_APPROVAL_REQUIRED,
        request_id: str | None = None,
    ) -> None:
        self._session = session
        self._llm = llm
        self._model = model
        self._routing_model = routing_model or model
        self._agent_models = dict(agent_models or {})
        self._outbox = outbox
        self._approval_required = frozenset(approval_required)
        self._request_id = request_id
        self._turn: asyncio.Task[None] | None = None
        self._resolved = asyncio.Event()
        self._switches = 0
        self._usage = Usage()

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and not self._turn.done()

    async def emit(self, event: Event) -> None:
        await self._outbox.put(Sequenced(self._session.next_seq(), event))

    async def _error(self, code: str, message: str, retryable: bool = False) -> None:
        await self.emit(ErrorEvent(code, message, retryable))

    # -- client events -------------------------------------------------------

    async def handle(self, event: ClientEvent) -> None:
        """React to one client event; returns without waiting for a turn."""
        match event:
            case UserMessage():
                await self._on_user_message(event)
            case CancelTurn():
                await self._on_cancel()
            case ToolResult():
                await self._on_tool_result(event)
            case ApprovalDecision():
                await self._on_approval(event)
            case SwitchAgent():
                await self._on_switch_agent(event)
            case PlanApproval():
                await self._on_plan_approval(event)
            case FileChanged(path=path, timestamp=timestamp):
                try:
                    normal = policy.workspace_path(path)
                except policy.PathRefused as exc:
                    await self._error("invalid_path", str(exc))
                    return
                self._session.file_changes[normal] = timestamp

    async def _on_user_message(self, event: UserMessage) -> None:
        if self.turn_running:
            if self._session.pending:
                await self._error(
                    "tool_calls_pending",
                    "tool calls are waiting for results or approval; answer them or cancel",
                    retryable=True,
                )
            else:
                await self._error(
                    "turn_in_progress",
                    "a turn is already running; cancel it or wait for is_final",
                    retryable=True,
                )
            return
        if event.role != "user":
            await self._error("invalid_frame", f"role must be user, not {event.role!r}")
            return
        if not event.content.strip():
            await self._error("invalid_frame", "content must not be empty")
            return
        self._start_turn(event.content)

    def _start_turn(self, content: str) -> None:
        self._flush_file_changes()
        self._session.messages.append(ChatMessage(role="user", content=content))
        self._switches = 0
        self._usage = Usage()
        self._turn = asyncio.create_task(self._run_turn(content))

    def _flush_file_changes(self) -> None:
        changes = self._session.file_changes
        if not changes:
            return
        listing = ", ".join(sorted(changes))
        self._session.messages.append(
            ChatMessage(
                role="user",
                content=(
                    f"[IDE notice] These files changed in the editor since you last saw "
                    f"them: {listing}. Read them again before relying on their contents."
                ),
            )
        )
        changes.clear()

    async def _on_cancel(self) -> None:
        if not self.turn_running:
            await self._error("no_turn_running", "there is no turn to cancel")
            return
        await self.close()
        await self.emit(TurnDone(TurnStatus.CANCELLED, self._usage))

    async def _on_tool_result(self, event: ToolResult) -> None:
        call = self._session.pending.get(event.call_id)
        if call is None or call.state is CallState.AWAITING_PLAN_APPROVAL:
            if event.call_id in self._session.answered:
                await self._error(
                    "duplicate_tool_result", f"tool call {event.call_id!r} was already answered"
                )
            else:
                await self._error(
                    "unknown_call_id", f"this session issued no tool call {event.call_id!r}"
                )
            return
        if call.state is CallState.AWAITING_APPROVAL:
            await self._error(
                "approval_required",
                f"tool call {event.call_id!r} has not been approved; send hitl_decision first",
            )
            return
        if event.error is not None:
            payload: dict[str, Any] = {"error": event.error}
        else:
            payload = {"result": event.result if event.result is not None else {}}
        if call.edited:
            payload["edited_arguments"] = call.arguments
        self._resolve(call, payload)

    async def _on_approval(self, event: ApprovalDecision) -> None:
        call = self._session.pending.get(event.call_id)
        if call is None or call.state is not CallState.AWAITING_APPROVAL:
            await self._error(
                "unknown_call_id", f"no tool call {event.call_id!r} is waiting for approval"
            )
            return
        if event.decision == "reject":
            payload: dict[str, Any] = {"error": "the user rejected this tool call"}
            if event.feedback:
                payload["feedback"] = event.feedback
            self._resolve(call, payload)
            return
        arguments = call.arguments
        if event.decision == "edit":
            if event.modified_arguments is None:
                await self._error("invalid_edit", "edit needs modified_arguments")
                return
            try:
                checked = validate_arguments(call.tool_name, event.modified_arguments)
            except ArgumentsInvalid as exc:
                await self._error("invalid_edit", f"edited arguments are invalid: {exc}")
                return
            verdict = policy.check(
                AGENTS[self._session.agent],
                call.tool_name,
                checked,
                approval_required=self._approval_required,
            )
            if isinstance(verdict, policy.Refused):
                await self._error("invalid_edit", f"edited call refused: {verdict.reason}")
                return
            arguments = verdict.arguments
            call.edited = True
        elif event.decision != "approve":
            await self._error("invalid_frame", "decision must be approve, edit or reject")
            return
        call.arguments = arguments
        call.state = CallState.AWAITING_RESULT
        await self.emit(
            ToolCallEvent(call.call_id, call.tool_name, arguments, False, f"{event.decision}d")
        )

    async def _on_switch_agent(self, event: SwitchAgent) -> None:
        if self.turn_running:
            await self._error(
                "turn_in_progress", "cannot switch agents during a turn; cancel it first", True
            )
            return
        if event.agent_type not in AGENTS:
            known = ", ".join(AGENTS)
            await self._error(
                "unknown_agent", f"unknown agent {event.agent_type!r}; one of {known}"
            )
            return
        await self._switch(event.agent_type, event.reason or "requested by the user", 1.0)
        if event.content.strip():
            self._start_turn(event.content)

    async def _on_plan_approval(self, event: PlanApproval) -> None:
        call = self._session.pending_plan(event.plan_id)
        if call is None:
            await self._error("unknown_plan", f"no plan {event.plan_id!r} is waiting for approval")
            return
        if event.decision == "approve":
            self._resolve(call, {"result": "the user approved the plan; execute it"})
        elif event.decision == "reject":
            payload: dict[str, Any] = {"error": "the user rejected the plan"}
            if event.feedback:
                payload["feedback"] = event.feedback
            self._resolve(call, payload)
        else:
            await self._error("invalid_frame", "decision must be approve or reject")

    def _resolve(self, call: PendingCall, payload: dict[str, Any]) -> None:
        session = self._session
        del session.pending[call.call_id]
        session.answered.add(call.call_id)
        session.messages.append(_tool_message(call.call_id, call.tool_name, payload))
        if not session.pending:
            self._resolved.set()

    # -- lifecycle ------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait for the running turn, if any, to finish."""
        if self._turn is not None:
            await asyncio.wait([self._turn])

    async def close(self) -> None:
        """Cancel the running turn and wait for it; idempotent.

        Calls left open get a "cancelled" tool message so the history stays
        valid. ``asyncio.wait`` rather than ``await turn``: the turn's own
        CancelledError stays inside it, while a cancellation of the caller
        still propagates.
        """
        turn, self._turn = self._turn, None
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])
        self._close_open_calls("cancelled by the user before it finished")

    def _close_open_calls(self, reason: str) -> None:
        session = self._session
        session.pending.clear()
        answered = {m.tool_call_id for m in session.messages if m.role == "tool"}
        for message in reversed(session.messages):
            if message.role == "assistant" and message.tool_calls:
                for call in message.tool_calls:
                    if call.call_id not in answered:
                        session.answered.add(call.call_id)
                        session.messages.append(
                            _tool_message(call.call_id, call.name, {"error": reason})
                        )
                break
            if message.role == "user":
                break

    # -- the turn ---------------------------------------------------------------

    async def _run_turn(self, request: str) -> None:
        try:
            if self._session.agent == "orchestrator":
                await self._route(request)
            for _ in range(MAX_MODEL_CALLS_PER_TURN):
                reply = await self._call_model()
                if not reply.calls:
                    self._session.messages.append(ChatMessage("assistant", reply.text))
                    await self.emit(TurnDone(TurnStatus.COMPLETED, self._usage))
                    return
                self._session.messages.append(
                    ChatMessage("assistant", reply.text, tool_calls=tuple(reply.calls))
                )
                self._resolved.clear()
                ends_turn = False
                for call in reply.calls:
                    ends_turn |= await self._dispatch(call)
                if self._session.pending:
                    await self._resolved.wait()
                if ends_turn:
                    await self.emit(TurnDone(TurnStatus.COMPLETED, self._usage))
                    return
            await self._error(
                "turn_limit", f"the turn stopped after {MAX_MODEL_CALLS_PER_TURN} model calls"
            )
            await self.emit(TurnDone(TurnStatus.FAILED, self._usage))
        except UpstreamError as exc:
            log.warning("turn_failed", code=exc.code, error=str(exc))
            self._close_open_calls("the turn failed")
            await self._error(exc.code, str(exc), exc.retryable)
            await self.emit(TurnDone(TurnStatus.FAILED, self._usage))

    async def _route(self, request: str) -> None:
        route = await routing.classify(
            self._llm, self._routing_model, request, request_id=self._request_id
        )
        await self._switch(route.agent, route.rationale, route.confidence)

    async def _switch(self, to_agent: str, reason: str, confidence: float) -> None:
        session = self._session
        from_agent = session.agent
        session.agent = to_agent
        session.switches.append(SwitchRecord(from_agent, to_agent, reason, confidence, time.time()))
        await self.emit(AgentSwitched(from_agent, to_agent, reason, confidence))

    async def _call_model(self) -> _ModelReply:
        agent = AGENTS[self._session.agent]
        messages = [ChatMessage("system", agent.system_prompt), *self._session.messages]
        tools = [TOOLS[name].spec() for name in sorted(agent.tools)]
        reply = _ModelReply()
        parts: list[str] = []
        drafts: dict[int, _CallDraft] = {}
        async with contextlib.aclosing(
            self._llm.stream_chat(
                self._agent_models.get(agent.name, self._model),
                messages,
                tools,
                request_id=self._request_id,
            )
        ) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TextChunk):
                    if chunk.text:
                        parts.append(chunk.text)
                        await self.emit(AssistantText(chunk.text))
                elif isinstance(chunk, ToolCallChunk):
                    draft = drafts.setdefault(chunk.index, _CallDraft())
                    draft.name = draft.name or chunk.name
                    draft.arguments.append(chunk.arguments_fragment)
                elif isinstance(chunk, StreamEnd):
                    reply.usage = chunk.usage
        self._usage = Usage(
            self._usage.prompt_tokens + reply.usage.prompt_tokens,
            self._usage.completion_tokens + reply.usage.completion_tokens,
        )
        reply.text = "".join(parts)
        for index in sorted(drafts):
            draft = drafts[index]
            # The runtime names every call itself: ids are then unique across
            # sessions and turns whatever the provider sends (some send none,
            # a deterministic model repeats them), and the IDE cannot guess them.
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            reply.calls.append(ToolCallRequest(call_id, draft.name, "".join(draft.arguments)))
        return reply

    async def _dispatch(self, call: ToolCallRequest) -> bool:
        """Check and start one tool call; True if it ends the turn."""
        refusal = self._refusal(call)
        if isinstance(refusal, str):
            self._answer(call, {"error": refusal})
            return False
        tool, verdict = refusal
        if tool.side is Side.RUNTIME:
            return await self._run_runtime_tool(call, verdict.arguments)
        state = (
            CallState.AWAITING_APPROVAL if verdict.requires_approval else CallState.AWAITING_RESULT
        )
        self._session.pending[call.call_id] = PendingCall(
            call.call_id, call.name, verdict.arguments, state, verdict.reason
        )
        await self.emit(
            ToolCallEvent(
                call.call_id,
                call.name,
                verdict.arguments,
                verdict.requires_approval,
                verdict.reason,
            )
        )
        return False

    def _refusal(self, call: ToolCallRequest) -> str | tuple[Any, policy.Allowed]:
        """Why ``call`` may not run, or its tool and the policy's verdict."""
        tool = TOOLS.get(call.name)
        if tool is None:
            return f"unknown tool {call.name!r}"
        try:
            arguments = json.loads(call.arguments_json or "{}")
        except json.JSONDecodeError:
            return "the arguments are not valid JSON"
        try:
            checked = validate_arguments(call.name, arguments)
        except ArgumentsInvalid as exc:
            return f"invalid arguments: {exc}"
        verdict = policy.check(
            AGENTS[self._session.agent],
            call.name,
            checked,
            approval_required=self._approval_required,
        )
        if isinstance(verdict, policy.Refused):
            log.info("tool_call_refused", tool=call.name, agent=self._session.agent)
            return f"refused by policy: {verdict.reason}"
        return tool, verdict

    def _answer(self, call: ToolCallRequest, payload: dict[str, Any]) -> None:
        self._session.answered.add(call.call_id)
        self._session.messages.append(_tool_message(call.call_id, call.name, payload))

    async def _run_runtime_tool(self, call: ToolCallRequest, arguments: dict[str, Any]) -> bool:
        match call.name:
            case "switch_mode":
                target = arguments["agent"]
                if target == self._session.agent:
                    self._answer(call, {"result": f"{target} is already the current agent"})
                elif self._switches >= MAX_SWITCHES_PER_TURN:
                    self._answer(
                        call,
                        {"error": f"no more than {MAX_SWITCHES_PER_TURN} switches per turn"},
                    )
                else:
                    self._switches += 1
                    await self._switch(target, arguments["reason"], 1.0)
                    self._answer(
                        call, {"result": f"switched to {target}; continue the request as {target}"}
                    )
                return False
            case "attempt_completion":
                await self.emit(AssistantText(arguments["result"]))
                self._answer(call, {"result": "the result was shown to the user"})
                return True
            case "ask_followup_question":
                await self.emit(AssistantText(arguments["question"]))
                self._answer(call, {"result": "asked; the answer is the next user message"})
                return True
            case "update_plan":
                return await self._update_plan(call, arguments)
        self._answer(call, {"error": f"{call.name} is not a runtime tool"})
        return False

    async def _update_plan(self, call: ToolCallRequest, arguments: dict[str, Any]) -> bool:
        plan_id = arguments["plan_id"]
        steps = tuple(
            PlanStep(s["id"], s.get("description", ""), s["status"]) for s in arguments["steps"]
        )
        before = {step.id: step for step in self._session.plans.get(plan_id, ())}
        if before:
            # Updating an existing plan: each changed step is progress.
            for step in steps:
                old = before.get(step.id)
                if old is None or old.status != step.status:
                    await self.emit(PlanProgress(plan_id, step.id, step.status, step.description))
        self._session.plans[plan_id] = steps
        current = next((s.id for s in steps if s.status == "in_progress"), "")
        needs_approval = bool(arguments.get("requires_approval")) and not before
        await self.emit(PlanUpdate(plan_id, steps, current, needs_approval))
        if needs_approval:
            self._session.pending[call.call_id] = PendingCall(
                call.call_id,
                call.name,
                arguments,
                CallState.AWAITING_PLAN_APPROVAL,
                "the plan needs approval",
                plan_id=plan_id,
            )
        else:
            self._answer(call, {"result": "plan published"})
        return False
