"""A live session's state, as plain data: what a turn works on.

:class:`Session` holds the conversation (messages and who said them), the
numbering of its events, the tool calls its turn waits on
(:class:`PendingCall`), its plans, the files the IDE saw change and what
its agents are told of the IDE's machine (its environment, the workspace's
file tree). It is
loaded from the store (:meth:`Session.from_store`) and changed only by the
session's :class:`~runtime.conversation.Conversation` and its
:class:`~runtime.dispatch.Dispatcher`.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from runtime.commands import Environment
from runtime.events import PlanStep
from runtime.llm import ChatMessage, ToolCallRequest
from runtime.project import ProjectFiles
from runtime.records import DECIDED_STATUSES, Loaded, MessageRecord, call_metadata

log = structlog.get_logger("runtime.state")


class CallState(enum.Enum):
    """What a waiting call waits for; its value is the status it is stored with when offered."""

    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_RESULT = "awaiting_result"
    AWAITING_PLAN_APPROVAL = "awaiting_plan_approval"
    RUNNING = "running"
    """A model's call the runtime runs through calls of its own (:mod:`runtime.changes`)."""
    EXECUTING = "executing"
    """A call the runtime runs itself, with an executor (:mod:`runtime.executions`)."""

    @classmethod
    def of_status(cls, status: str) -> CallState:
        """The state of a call stored with ``status``, one of the store's PENDING_STATUSES.

        An approved or edited call waits for the IDE's result: the human's
        decision is kept in its status, the edit in its final arguments.
        Raises KeyError for a status no waiting call has.
        """
        return _STATE_OF_STATUS[status]


_STATE_OF_STATUS = {
    **{state.value: state for state in CallState},
    **dict.fromkeys(DECIDED_STATUSES, CallState.AWAITING_RESULT),
}


@dataclass(slots=True)
class PendingCall:
    """A tool call the turn waits on."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    state: CallState
    reason: str = ""
    agent: str = ""
    original_arguments: dict[str, Any] | None = None
    edited: bool = False
    plan_id: str = ""
    offered_seq: int = 0
    created_at: float = field(default_factory=time.time)
    parent: str = ""
    """For a call the runtime issued on a model's call's behalf, that call's id."""
    job: dict[str, Any] | None = None
    """For such a call, the state of the work it is part of (:mod:`runtime.changes`)."""
    decided: bool = False
    """A human approved it (its row keeps who) and the runtime runs it."""

    @property
    def metadata(self) -> dict[str, str]:
        """What a client is told besides the call (:func:`runtime.records.call_metadata`)."""
        return call_metadata(self.parent, self.job)


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    from_agent: str
    to_agent: str
    reason: str
    confidence: float
    at: float


@dataclass(slots=True)
class Session:
    session_id: str
    owner: str
    agent: str
    title: str = ""
    state: str = "idle"
    messages: list[ChatMessage] = field(default_factory=list)
    message_agents: list[str] = field(default_factory=list)
    last_seq: int = 0
    seq_reserved: int = 0
    """Text deltas may be numbered up to here (durably recorded before they are)."""
    pending: dict[str, PendingCall] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    switches: list[SwitchRecord] = field(default_factory=list)
    plans: dict[str, tuple[PlanStep, ...]] = field(default_factory=dict)
    file_changes: dict[str, float] = field(default_factory=dict)
    """Files the IDE saw change since the last turn (bounded, see Conversation)."""
    file_changes_dropped: int = 0
    """Changes not kept because ``file_changes`` was full."""
    environment: Environment | None = None
    """Where the IDE runs, as it last reported it (None: not reported). In
    memory only: every connection reports it again."""
    workspace_view: str | None = None
    """The workspace's file tree as the model is shown it in the system prompt
    (:func:`runtime.listing.summarize_listing` of a ``list_files`` result),
    fetched at the session's first turn; None until then. In memory only."""
    project: ProjectFiles = field(default_factory=ProjectFiles)
    """The project's rules and agents as read through the IDE, the user's
    instructions, and the agents the session may use. In memory only."""

    model: str = ""
    """The model group the user chose for every model call of the session
    (:mod:`runtime.models`); "": each agent's default."""

    resting: int | None = None
    """While the session rests (:mod:`runtime.resting`): how many messages
    its history holds, which are then not in memory (``messages`` and
    ``message_agents`` are empty); None while they are."""

    @property
    def message_count(self) -> int:
        """How many messages the history holds, in memory or resting."""
        return len(self.messages) if self.resting is None else self.resting

    def next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def pending_plan(self, plan_id: str) -> PendingCall | None:
        for call in self.pending.values():
            if call.state is CallState.AWAITING_PLAN_APPROVAL and call.plan_id == plan_id:
                return call
        return None

    @classmethod
    def from_store(cls, loaded: Loaded) -> Session:
        row = loaded.session
        session = cls(
            session_id=row.id,
            owner=row.owner,
            agent=row.agent,
            title=row.title,
            state=row.state,
            last_seq=row.last_seq,
            seq_reserved=row.seq_reserved,
            model=row.model,
            answered=set(loaded.answered),
        )
        for record in loaded.messages:
            session.messages.append(message_from_record(record))
            session.message_agents.append(record.agent)
        pending = loaded.pending
        if row.state == "idle" and pending:
            # An idle session waits on nothing: these calls were left open by a
            # runtime that lost approved calls on a reload, and their turn went
            # on without them. Offering them now would run a write approved in a
            # turn long over, so they stay closed.
            stale = [call.call_id for call in pending]
            log.warning("stale_tool_calls_closed", session_id=row.id, call_ids=stale)
            session.answered.update(stale)
            pending = []
        for call in pending:
            session.pending[call.call_id] = PendingCall(
                call_id=call.call_id,
                tool_name=call.tool_name,
                arguments=call.arguments if call.final_arguments is None else call.final_arguments,
                state=CallState.of_status(call.status),
                reason=call.reason,
                agent=call.agent,
                original_arguments=call.arguments,
                edited=call.final_arguments is not None,
                plan_id=call.plan_id,
                offered_seq=call.offered_seq,
                parent=call.parent_call_id,
                job=call.job,
                decided=call.decided_by is not None,
            )
        session.plans = {
            plan_id: tuple(PlanStep(*step) for step in steps)
            for plan_id, steps in loaded.plans.items()
        }
        return session


def _tool_calls(calls: list[dict[str, str]] | None) -> tuple[ToolCallRequest, ...]:
    return tuple(ToolCallRequest(c["call_id"], c["name"], c["arguments_json"]) for c in calls or ())


def message_from_record(record: MessageRecord) -> ChatMessage:
    calls = _tool_calls(record.tool_calls)
    return ChatMessage(record.role, record.content, calls, record.tool_call_id, record.name)


def message_from_columns(
    role: str, content: str, tool_calls: str | None, tool_call_id: str, name: str
) -> ChatMessage:
    """The message a row of ``messages`` holds (``tool_calls`` as stored: JSON or None)."""
    calls = _tool_calls(json.loads(tool_calls) if tool_calls else None)
    return ChatMessage(role, content, calls, tool_call_id, name)


def message_to_record(position: int, message: ChatMessage, agent: str) -> MessageRecord:
    calls = [
        {"call_id": c.call_id, "name": c.name, "arguments_json": c.arguments_json}
        for c in message.tool_calls
    ]
    return MessageRecord(
        position=position,
        role=message.role,
        content=message.content,
        tool_calls=calls or None,
        tool_call_id=message.tool_call_id,
        name=message.name,
        agent=agent,
    )
