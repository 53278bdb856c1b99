"""What a session tells its client, as plain data.

:mod:`runtime.service` turns these into ``runtime.v1`` messages; the turn
loop and the tests work with these dataclasses only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TurnStatus(enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    agent: str
    created: bool
    last_seq: int
    recovered: bool = True


@dataclass(frozen=True, slots=True)
class AssistantText:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ContextUsage:
    """How much of the model's context window a prompt fills (:mod:`runtime.context`)."""

    tokens: int
    window: int
    """The model's context window, 0 when unknown."""

    @property
    def percent(self) -> int:
        """``tokens`` as a whole percentage of ``window`` (0 when unknown)."""
        return min(100, round(100 * self.tokens / self.window)) if self.window > 0 else 0


@dataclass(frozen=True, slots=True)
class TurnDone:
    status: TurnStatus
    usage: Usage = Usage()
    context: ContextUsage | None = None
    """What the turn's last prompt filled; None when it made no model call."""


@dataclass(frozen=True, slots=True)
class ContextCondensed:
    """A summary replaced the session's first ``messages_replaced`` messages
    in what the model is sent (:mod:`runtime.condense`)."""

    summary: str
    messages_replaced: int
    tokens_before: int
    tokens_after: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """Asks the IDE to run a tool (or, with requires_approval, to ask first)."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    requires_approval: bool
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    """For a call the runtime issued itself: ``diff``, ``parent_call_id``,
    ``parent_tool`` (see :attr:`runtime.state.PendingCall.metadata`)."""


@dataclass(frozen=True, slots=True)
class AgentSwitched:
    from_agent: str
    to_agent: str
    reason: str
    confidence: float = 1.0
    content: str = ""


@dataclass(frozen=True, slots=True)
class PlanStep:
    id: str
    description: str
    status: str


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    plan_id: str
    steps: tuple[PlanStep, ...]
    current_step: str = ""
    requires_approval: bool = False


@dataclass(frozen=True, slots=True)
class PlanProgress:
    plan_id: str
    step_id: str
    status: str
    result: str = ""


@dataclass(frozen=True, slots=True)
class SessionChanged:
    """The history branched (``retry``, ``edit``: the replaced messages are
    ``branch`` from ``from_message``) or a fork was made (``session_id``)."""

    reason: str
    session_id: str
    branch: int = 0
    from_message: int = 0


Event = (
    SessionOpened
    | SessionChanged
    | AssistantText
    | TurnDone
    | ErrorEvent
    | ToolCallEvent
    | AgentSwitched
    | PlanUpdate
    | PlanProgress
    | ContextCondensed
)


@dataclass(frozen=True, slots=True)
class Sequenced:
    """An event with its per-session sequence number."""

    seq: int
    event: Event


def to_payload(event: Event) -> tuple[str, dict[str, Any]]:
    """The event as (kind, JSON-ready dict) for the event log."""
    match event:
        case TurnDone(status=status, usage=usage, context=context):
            payload: dict[str, Any] = {
                "status": status.value,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            if context is not None:
                payload["context"] = [context.tokens, context.window]
            return "turn_done", payload
        case PlanUpdate() as plan:
            return "plan_update", {
                "plan_id": plan.plan_id,
                "steps": [[s.id, s.description, s.status] for s in plan.steps],
                "current_step": plan.current_step,
                "requires_approval": plan.requires_approval,
            }
    kinds = {
        AssistantText: "assistant_text",
        ErrorEvent: "error",
        ToolCallEvent: "tool_call",
        AgentSwitched: "agent_switched",
        PlanProgress: "plan_progress",
        SessionChanged: "session_changed",
        ContextCondensed: "context_condensed",
    }
    kind = kinds.get(type(event))
    if kind is None:
        raise TypeError(f"{type(event).__name__} is not stored in the event log")
    return kind, {name: getattr(event, name) for name in event.__dataclass_fields__}


def from_payload(kind: str, payload: dict[str, Any]) -> Event:
    """The inverse of :func:`to_payload`."""
    if kind == "turn_done":
        usage = Usage(payload["prompt_tokens"], payload["completion_tokens"])
        context = payload.get("context")  # absent in rows from before it existed
        filled = None if context is None else ContextUsage(*context)
        return TurnDone(TurnStatus(payload["status"]), usage, filled)
    if kind == "plan_update":
        steps = tuple(PlanStep(*step) for step in payload["steps"])
        return PlanUpdate(
            payload["plan_id"], steps, payload["current_step"], payload["requires_approval"]
        )
    classes: dict[str, type[Any]] = {
        "assistant_text": AssistantText,
        "error": ErrorEvent,
        "tool_call": ToolCallEvent,
        "agent_switched": AgentSwitched,
        "plan_progress": PlanProgress,
        "session_changed": SessionChanged,
        "context_condensed": ContextCondensed,
    }
    event: Event = classes[kind](**payload)
    return event
