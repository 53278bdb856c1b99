"""Session events as the JSON frames the IDE is sent; pure, no I/O.

:func:`response_to_frame` turns one ``ConverseResponse`` into the JSON
object the IDE receives, and :func:`encode` serialises it. Every frame sent
to the IDE carries ``seq``: the session's event number for runtime events,
``None`` for frames the gateway makes itself (those are not session events,
are never replayed, and must not move a client's resume point).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from mesh.structs import struct_to_dict
from runtime.v1 import runtime_pb2

Frame = dict[str, Any]

_TURN_STATUS = {
    runtime_pb2.TURN_STATUS_COMPLETED: "completed",
    runtime_pb2.TURN_STATUS_CANCELLED: "cancelled",
    runtime_pb2.TURN_STATUS_FAILED: "failed",
    runtime_pb2.TURN_STATUS_AWAITING_TOOLS: "awaiting_tools",
}


def response_to_frame(response: runtime_pb2.ConverseResponse) -> Frame | None:
    """The IDE frame for one runtime event, or None for an event this
    gateway does not know (a newer runtime); callers skip those."""
    kind = response.WhichOneof("event")
    if kind is None:
        return None
    build = _BUILDERS.get(kind)
    if build is None:  # pragma: no cover - every v1 event has a builder
        return None
    frame = build(getattr(response, kind))
    frame["seq"] = response.seq
    return frame


def _session_info(event: runtime_pb2.SessionOpened) -> Frame:
    return {
        "type": "session_info",
        "content": "",
        "metadata": {
            "session_id": event.session_id,
            "agent": event.agent,
            "created": event.created,
            "recovered": event.recovered,
            "last_seq": event.last_seq,
        },
    }


def _assistant_delta(event: runtime_pb2.AssistantDelta) -> Frame:
    return {
        "type": "assistant_message",
        "token": event.text,
        "content": event.text,
        "is_final": False,
    }


def _turn_done(event: runtime_pb2.TurnDone) -> Frame:
    usage = {
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
        "total_tokens": event.usage.prompt_tokens + event.usage.completion_tokens,
    }
    frame: Frame = {
        "type": "assistant_message",
        "token": "",
        "content": "",
        "is_final": True,
        "metadata": {"status": _TURN_STATUS.get(event.status, "unspecified"), "usage": usage},
    }
    if event.HasField("context"):
        # The context meter: how much of the model's window the last prompt filled.
        context = event.context
        frame["context"] = {
            "tokens": context.tokens,
            "window": context.window,
            "percent": context.percent,
        }
    return frame


def _context_condensed(event: runtime_pb2.ContextCondensed) -> Frame:
    return {
        "type": "context_condensed",
        "content": event.summary,
        "messages_replaced": event.messages_replaced,
        "tokens_before": event.tokens_before,
        "tokens_after": event.tokens_after,
    }


def _tool_call(event: runtime_pb2.ToolCall) -> Frame:
    frame: Frame = {
        "type": "tool_call",
        "call_id": event.call_id,
        "tool_name": event.tool_name,
        "arguments": struct_to_dict(event.arguments),
        "requires_approval": event.requires_approval,
        "reason": event.reason,
    }
    if event.HasField("metadata"):
        # A call the runtime issued on the model's call's behalf: the diff a
        # human approves, and the call it serves.
        metadata = event.metadata
        frame["metadata"] = {
            "diff": metadata.diff,
            "parent_call_id": metadata.parent_call_id,
            "parent_tool": metadata.parent_tool,
        }
    return frame


def _agent_switched(event: runtime_pb2.AgentSwitched) -> Frame:
    return {
        "type": "agent_switched",
        "from_agent": event.from_agent,
        "to_agent": event.to_agent,
        "reason": event.reason,
        # float32 on the wire: 0.8 arrives as 0.800000011920929.
        "confidence": round(event.confidence, 6),
        "content": event.content,
    }


def _plan_update(event: runtime_pb2.PlanUpdate) -> Frame:
    return {
        "type": "plan_update",
        "plan_id": event.plan_id,
        "steps": [
            {"id": step.id, "desc": step.description, "status": step.status} for step in event.steps
        ],
        "current_step": event.current_step,
        "metadata": {"requires_approval": event.requires_approval},
    }


def _plan_progress(event: runtime_pb2.PlanProgress) -> Frame:
    return {
        "type": "plan_progress",
        "plan_id": event.plan_id,
        "step_id": event.step_id,
        # The IDE's flat frame model reads `result` as an object.
        "result": {"text": event.result},
        "status": event.status,
    }


def _session_changed(event: runtime_pb2.SessionChanged) -> Frame:
    return {
        "type": "session_changed",
        "reason": event.reason,
        "session_id": event.session_id,
        "branch": event.branch,
        "from_message": event.from_message,
    }


def _error(event: runtime_pb2.Error) -> Frame:
    return error_frame(event.code, event.message, retryable=event.retryable)


_BUILDERS: Mapping[str, Callable[[Any], Frame]] = {
    "session_opened": _session_info,
    "assistant_delta": _assistant_delta,
    "turn_done": _turn_done,
    "tool_call": _tool_call,
    "agent_switched": _agent_switched,
    "plan_update": _plan_update,
    "plan_progress": _plan_progress,
    "error": _error,
    "session_changed": _session_changed,
    "context_condensed": _context_condensed,
}


def error_frame(code: str, message: str, *, retryable: bool = False) -> Frame:
    """An ``error`` frame; ``seq`` is None until a runtime event sets it."""
    return {
        "type": "error",
        "content": message,
        "error": message,
        "code": code,
        "metadata": {"retryable": retryable},
        "seq": None,
    }


def encode(frame: Frame) -> str:
    """The frame as compact JSON text, non-ASCII characters kept as is."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
