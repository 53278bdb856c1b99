"""The runtime's events and a client's commands on the wire (``runtime.v1``).

Pure conversions between protobuf and the runtime's dataclasses, both ways;
:mod:`runtime.service` is the servicer that uses them, and nothing else in
the runtime sees protobuf.
"""

from __future__ import annotations

import contextlib
import json
import time

from mesh.structs import struct_to_dict
from runtime import undo
from runtime.agents import Agent
from runtime.commands import (
    ApprovalDecision,
    CancelTurn,
    ClientEvent,
    ClientOptions,
    Condense,
    EditMessage,
    Environment,
    FileChanged,
    Fork,
    PlanApproval,
    Retry,
    SetModel,
    SwitchAgent,
    ToolResult,
    Undo,
    UserMessage,
)
from runtime.errors import InvalidArgument
from runtime.events import (
    AgentSwitched,
    AssistantText,
    ContextCondensed,
    ErrorEvent,
    PlanProgress,
    PlanUpdate,
    Sequenced,
    SessionChanged,
    SessionOpened,
    ToolCallEvent,
    TurnDone,
    TurnStatus,
)
from runtime.records import Checkpoint, MessageRecord, SessionRow, SwitchRecord
from runtime.rules import ALWAYS_ASK, ApprovalRules, OperatorLimits
from runtime.v1 import runtime_pb2

_TURN_STATUS = {
    TurnStatus.COMPLETED: runtime_pb2.TURN_STATUS_COMPLETED,
    TurnStatus.CANCELLED: runtime_pb2.TURN_STATUS_CANCELLED,
    TurnStatus.FAILED: runtime_pb2.TURN_STATUS_FAILED,
}


def to_proto(item: Sequenced) -> runtime_pb2.ConverseResponse:
    """The wire form of one session event."""
    response = runtime_pb2.ConverseResponse(seq=item.seq)
    match item.event:
        case AssistantText(text=text):
            response.assistant_delta.text = text
        case TurnDone(status=status, usage=usage, context=context):
            response.turn_done.status = _TURN_STATUS[status]
            response.turn_done.usage.prompt_tokens = usage.prompt_tokens
            response.turn_done.usage.completion_tokens = usage.completion_tokens
            if context is not None:
                response.turn_done.context.CopyFrom(
                    runtime_pb2.ContextUsage(
                        tokens=context.tokens, window=context.window, percent=context.percent
                    )
                )
        case ContextCondensed() as condensed:
            response.context_condensed.CopyFrom(
                runtime_pb2.ContextCondensed(
                    summary=condensed.summary,
                    messages_replaced=condensed.messages_replaced,
                    tokens_before=condensed.tokens_before,
                    tokens_after=condensed.tokens_after,
                )
            )
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
            if call.metadata:
                response.tool_call.metadata.CopyFrom(runtime_pb2.ToolCallMetadata(**call.metadata))
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
        case SessionChanged() as changed:
            response.session_changed.CopyFrom(change_proto(changed))
    return response


def change_proto(change: SessionChanged) -> runtime_pb2.SessionChanged:
    """A branch or a fork as the wire reports it."""
    return runtime_pb2.SessionChanged(
        reason=change.reason,
        session_id=change.session_id,
        branch=change.branch,
        from_message=change.from_message,
    )


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
            decision.call_id,
            _DECISIONS[decision.decision],
            modified,
            decision.feedback,
            always_allow=decision.always_allow,
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
    if kind == "undo":
        return Undo(request.undo.turn_id)
    if kind == "set_model":
        return SetModel(request.set_model.model)
    if kind == "retry":
        return Retry(request.retry.keep_changes)
    if kind == "edit_message":
        edit = request.edit_message
        return EditMessage(edit.index, edit.content, edit.keep_changes)
    if kind == "fork":
        fork = request.fork
        return Fork(fork.through_message if fork.HasField("through_message") else None)
    if kind == "condense":
        return Condense()
    if kind == "environment":
        reported = request.environment
        return Environment(reported.os, reported.shell, reported.workspace_root)
    raise InvalidArgument("expected a client event after open")


def to_client_options(opening: runtime_pb2.OpenSession) -> ClientOptions:
    """The client behind a stream, as its ``open`` describes it."""
    return ClientOptions(
        approves_by_result=opening.approval == runtime_pb2.APPROVAL_MODE_TOOL_RESULT,
        tools=frozenset(opening.client_tools) if opening.client_tools else None,
        workspace_view=opening.workspace_view,
    )


def session_proto(row: SessionRow) -> runtime_pb2.Session:
    session = runtime_pb2.Session(
        session_id=row.id,
        title=row.title,
        agent=row.agent,
        message_count=row.message_count,
        model=row.model,
    )
    session.created_at.FromDatetime(row.created_at)
    session.updated_at.FromDatetime(row.updated_at)
    return session


def agent_proto(agent: Agent) -> runtime_pb2.Agent:
    return runtime_pb2.Agent(
        name=agent.name,
        description=agent.description,
        allowed_tools=sorted(agent.tools),
        writable_paths=agent.writable or (),
        origin=agent.origin,
        model=agent.model,
        keywords=agent.keywords,
    )


def switch_proto(switch: SwitchRecord) -> runtime_pb2.AgentSwitchRecord:
    """One stored agent switch as the reads report it."""
    record = runtime_pb2.AgentSwitchRecord(
        from_agent=switch.from_agent, to_agent=switch.to_agent, reason=switch.reason
    )
    if switch.created_at is not None:
        record.created_at.FromDatetime(switch.created_at)
    return record


def history_protos(
    history: list[MessageRecord], checkpoints: list[Checkpoint]
) -> list[runtime_pb2.HistoryMessage]:
    """A session's stored messages as the reads list them; a user message
    is ``undone`` when an undo restored every file its turn changed. A tool
    call's arguments that are not a JSON object are left out."""
    by_turn = undo.turns(checkpoints)
    undone = {turn for turn, rows in by_turn.items() if all(c.undone for c in rows)}
    messages = []
    for record in history:
        message = runtime_pb2.HistoryMessage(
            role=record.role,
            content=record.content,
            tool_call_id=record.tool_call_id,
            agent=record.agent,
            name=record.name,
            undone=record.position in undone,
        )
        if record.created_at is not None:
            message.created_at.FromDatetime(record.created_at)
        for call in record.tool_calls or ():
            stored = message.tool_calls.add(call_id=call["call_id"], tool_name=call["name"])
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                stored.arguments.update(json.loads(call["arguments_json"] or "{}"))
        messages.append(message)
    return messages


def turn_protos(
    history: list[MessageRecord], checkpoints: list[Checkpoint]
) -> list[runtime_pb2.TurnCheckpoint]:
    """The turns that changed files, oldest first: each named by its user
    message's first line, with its files (paths and how they changed, no contents)."""
    turns = []
    for turn, rows in undo.turns(checkpoints).items():
        text = history[turn].content if turn < len(history) else ""
        entry = runtime_pb2.TurnCheckpoint(
            turn_id=str(turn),
            message=(text.strip().splitlines() or [""])[0][:200],
            undone=all(c.undone for c in rows),
        )
        if rows[0].created_at is not None:
            entry.created_at.FromDatetime(rows[0].created_at)
        for path, change in undo.file_changes(rows):
            entry.files.add(path=path, change=change)
        turns.append(entry)
    return turns


def rules_from_proto(message: runtime_pb2.ApprovalRules) -> ApprovalRules:
    """A user's rules as sent; raises RulesInvalid (an InvalidArgument) naming a bad one."""
    cap = (
        message.max_auto_approvals_per_turn
        if message.HasField("max_auto_approvals_per_turn")
        else None
    )
    return ApprovalRules.from_json(
        {
            "allow": list(message.allow),
            "deny": list(message.deny),
            "max_auto_approvals_per_turn": cap,
        }
    )


RulesResponse = runtime_pb2.GetApprovalRulesResponse | runtime_pb2.UpdateApprovalRulesResponse


def fill_rules(response: RulesResponse, rules: ApprovalRules, limits: OperatorLimits) -> None:
    """Fill ``response``: a user's ``rules``, the operator's ``limits``, what is always asked."""
    response.rules.allow.extend(rule.text for rule in rules.allow)
    response.rules.deny.extend(rule.text for rule in rules.deny)
    if rules.max_auto_approvals_per_turn is not None:
        response.rules.max_auto_approvals_per_turn = rules.max_auto_approvals_per_turn
    response.operator.user_auto_approve.extend(sorted(limits.user_auto_approve))
    response.operator.max_auto_approvals_per_turn = limits.max_auto_approvals_per_turn
    response.always_ask.extend(ALWAYS_ASK)
