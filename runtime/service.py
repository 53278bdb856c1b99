"""The gRPC face of the runtime: ``runtime.v1.AgentRuntimeService``.

This module converts between protobuf and the runtime's dataclasses and maps
:mod:`runtime.errors` to gRPC status codes; nothing else in the runtime knows
about gRPC. Callers are authenticated by the internal credential
(:class:`mesh.grpc_server.InternalAuthInterceptor`) before they get here, so
the user named in ``x-user-id`` is the one the gateway vouches for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, NoReturn

import grpc
import structlog

from mesh.grpc_server import REQUEST_ID_HEADER, USER_HEADER, metadata_value
from mesh.structs import struct_to_dict
from runtime.conversation import (
    ApprovalDecision,
    CancelTurn,
    ClientEvent,
    Conversation,
    FileChanged,
    PlanApproval,
    SwitchAgent,
    ToolResult,
    UserMessage,
)
from runtime.errors import InvalidArgument, RuntimeServiceError, Unauthenticated
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ErrorEvent,
    PlanProgress,
    PlanUpdate,
    Sequenced,
    SessionOpened,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.llm import LlmClient
from runtime.policy import DEFAULT_APPROVAL_REQUIRED
from runtime.session import SessionRegistry
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

log = structlog.get_logger("runtime.service")

Context = grpc.aio.ServicerContext[Any, Any]

_STATUS: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "conflict": grpc.StatusCode.ABORTED,
}

_TURN_STATUS = {
    TurnStatus.COMPLETED: runtime_pb2.TURN_STATUS_COMPLETED,
    TurnStatus.CANCELLED: runtime_pb2.TURN_STATUS_CANCELLED,
    TurnStatus.FAILED: runtime_pb2.TURN_STATUS_FAILED,
}


async def _abort(context: Context, exc: RuntimeServiceError) -> NoReturn:
    await context.abort(_STATUS.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


def to_proto(item: Sequenced) -> runtime_pb2.ConverseResponse:
    """The wire form of one session event."""
    response = runtime_pb2.ConverseResponse(seq=item.seq)
    match item.event:
        case AssistantText(text=text):
            response.assistant_delta.text = text
        case TurnDone(status=status, usage=usage):
            response.turn_done.status = _TURN_STATUS[status]
            response.turn_done.usage.prompt_tokens = usage.prompt_tokens
            response.turn_done.usage.completion_tokens = usage.completion_tokens
        case ErrorEvent(code=code, message=message, retryable=retryable):
            response.error.code = code
            response.error.message = message
            response.error.retryable = retryable
        case ToolCallEvent() as call:
            response.tool_call.call_id = call.call_id
            response.tool_call.tool_name = call.tool_name
            response.tool_call.arguments.update(call.arguments)
            response.tool_call.requires_approval = call.requires_approval
            response.tool_call.reason = call.reason
        case AgentSwitched() as switched:
            response.agent_switched.from_agent = switched.from_agent
            response.agent_switched.to_agent = switched.to_agent
            response.agent_switched.reason = switched.reason
            response.agent_switched.confidence = switched.confidence
            response.agent_switched.content = switched.content
        case PlanUpdate() as plan:
            response.plan_update.plan_id = plan.plan_id
            response.plan_update.current_step = plan.current_step
            response.plan_update.requires_approval = plan.requires_approval
            for step in plan.steps:
                response.plan_update.steps.add(
                    id=step.id, description=step.description, status=step.status
                )
        case PlanProgress() as progress:
            response.plan_progress.plan_id = progress.plan_id
            response.plan_progress.step_id = progress.step_id
            response.plan_progress.status = progress.status
            response.plan_progress.result = progress.result
        case SessionOpened() as opened:
            response.session_opened.session_id = opened.session_id
            response.session_opened.agent = opened.agent
            response.session_opened.created = opened.created
            response.session_opened.recovered = opened.recovered
            response.session_opened.last_seq = opened.last_seq
    return response


_DECISIONS = {
    runtime_pb2.DECISION_APPROVE: "approve",
    runtime_pb2.DECISION_EDIT: "edit",
    runtime_pb2.DECISION_REJECT: "reject",
}


def to_client_event(request: runtime_pb2.ConverseRequest) -> ClientEvent:
    """The runtime's view of one client event; InvalidArgument if malformed."""
    kind = request.WhichOneof("event")
    if kind == "user_message":
        message = request.user_message
        return UserMessage(content=message.content, role=message.role or "user")
    if kind == "cancel":
        return CancelTurn()
    if kind == "tool_result":
        result = request.tool_result
        outcome = result.WhichOneof("outcome")
        if outcome == "error":
            return ToolResult(result.call_id, error=result.error)
        payload = struct_to_dict(result.result) if outcome == "result" else {}
        return ToolResult(result.call_id, result=payload)
    if kind == "approval_decision":
        decision = request.approval_decision
        if decision.decision not in _DECISIONS:
            raise InvalidArgument("approval decision must be approve, edit or reject")
        modified = (
            struct_to_dict(decision.modified_arguments)
            if decision.HasField("modified_arguments")
            else None
        )
        return ApprovalDecision(
            decision.call_id, _DECISIONS[decision.decision], modified, decision.feedback
        )
    if kind == "switch_agent":
        switch = request.switch_agent
        return SwitchAgent(switch.agent_type, switch.content, switch.reason)
    if kind == "plan_approval":
        plan = request.plan_approval
        if plan.decision not in (runtime_pb2.DECISION_APPROVE, runtime_pb2.DECISION_REJECT):
            raise InvalidArgument("plan decision must be approve or reject")
        return PlanApproval(plan.plan_id, _DECISIONS[plan.decision], plan.feedback)
    if kind == "file_changed":
        changed = request.file_changed
        timestamp = (
            changed.timestamp.ToMicroseconds() / 1e6
            if changed.HasField("timestamp")
            else time.time()
        )
        return FileChanged(changed.path, timestamp)
    raise InvalidArgument("expected a client event after open")


class AgentRuntimeServicer(runtime_pb2_grpc.AgentRuntimeServiceServicer):
    """Serves Converse streams against an in-memory session registry."""

    def __init__(
        self,
        registry: SessionRegistry,
        llm: LlmClient,
        *,
        model: str,
        outbox_size: int,
        open_timeout: float,
        routing_model: str | None = None,
        agent_models: Mapping[str, str] | None = None,
        approval_required: Collection[str] = DEFAULT_APPROVAL_REQUIRED,
    ) -> None:
        self._registry = registry
        self._llm = llm
        self._model = model
        self._routing_model = routing_model or model
        self._agent_models = dict(agent_models or {})
        self._approval_required = frozenset(approval_required)
        self._outbox_size = outbox_size
        self._open_timeout = open_timeout

    async def Converse(
        self,
        request_iterator: AsyncIterator[runtime_pb2.ConverseRequest],
        context: Context,
    ) -> None:
        started = time.monotonic()
        user = metadata_value(context, USER_HEADER)
        if not user:
            await _abort(context, Unauthenticated("x-user-id metadata is required"))
        request_id = metadata_value(context, REQUEST_ID_HEADER)
        try:
            async with asyncio.timeout(self._open_timeout):
                first = await anext(aiter(request_iterator), None)
        except TimeoutError:
            await _abort(context, InvalidArgument("no open event within the open timeout"))
        if first is None or first.WhichOneof("event") != "open":
            await _abort(context, InvalidArgument("the first event must be open"))
        try:
            session, created = self._registry.open(first.open.session_id, user)
        except RuntimeServiceError as exc:
            await _abort(context, exc)
        bound = log.bind(session_id=session.session_id, user=user, request_id=request_id)
        await context.write(
            to_proto(
                Sequenced(
                    0, SessionOpened(session.session_id, session.agent, created, session.last_seq)
                )
            )
        )
        outbox: asyncio.Queue[Sequenced] = asyncio.Queue(maxsize=self._outbox_size)
        conversation = Conversation(
            session,
            self._llm,
            model=self._model,
            outbox=outbox,
            routing_model=self._routing_model,
            agent_models=self._agent_models,
            approval_required=self._approval_required,
            request_id=request_id,
        )
        events_in = 0
        try:
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(self._pump(outbox, context))
                async for request in request_iterator:
                    events_in += 1
                    try:
                        event = to_client_event(request)
                    except InvalidArgument as exc:
                        await conversation.emit(ErrorEvent("invalid_frame", str(exc)))
                        continue
                    await conversation.handle(event)
                # The client half-closed: finish the turn, flush, end the call.
                await conversation.wait_idle()
                await outbox.join()
                pump.cancel()
        finally:
            await conversation.close()
            bound.info(
                "converse_finished",
                events_in=events_in,
                last_seq=session.last_seq,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
                cancelled=context.cancelled(),
            )

    @staticmethod
    async def _pump(outbox: asyncio.Queue[Sequenced], context: Context) -> None:
        while True:
            item = await outbox.get()
            await context.write(to_proto(item))
            outbox.task_done()

    async def _unimplemented(self, context: Context, what: str) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{what} arrives with session persistence"
        )
        raise AssertionError("unreachable")  # pragma: no cover

    async def ListAgents(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "ListAgents")

    async def GetCurrentAgent(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "GetCurrentAgent")

    async def CreateSession(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "CreateSession")

    async def ListSessions(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "ListSessions")

    async def GetSessionHistory(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "GetSessionHistory")

    async def ListPendingApprovals(self, request: Any, context: Context) -> Any:
        await self._unimplemented(context, "ListPendingApprovals")
