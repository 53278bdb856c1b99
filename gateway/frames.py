"""IDE JSON frames ⇄ runtime protobuf messages; pure, no I/O.

:func:`parse_frame` turns one text frame from the IDE into either a
``ConverseRequest`` for the runtime or a :class:`Reauthenticate` action the
gateway handles itself, raising :class:`~gateway.errors.FrameError` for
anything unusable; :class:`PayloadLimits` bounds what it forwards (a
``tool_result`` over its bound becomes that call's error, so the model
hears it and the connection lives on). :func:`response_to_frame` turns one ``ConverseResponse``
into the JSON object the IDE receives, and :func:`encode` serialises it.
:func:`last_seq_from_query` reads the handshake's ``?last_seq=`` within the
same bound as a ``resume`` frame (:data:`MAX_SEQ`).

Every frame sent to the IDE carries ``seq``: the session's event number for
runtime events, ``None`` for frames the gateway makes itself (those are not
session events, are never replayed, and must not move a client's resume point).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from gateway.errors import FrameError
from mesh.structs import struct_to_dict
from runtime.v1 import runtime_pb2

Frame = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reauthenticate:
    """An ``auth`` frame: a fresh access token for the open connection."""

    token: str


IdeAction = runtime_pb2.ConverseRequest | Reauthenticate

MAX_NESTING = 32
"""Deepest nesting of an object forwarded as a ``Struct``: protobuf refuses
to parse messages nested deeper than 100 levels, and each JSON level costs
two (``Value`` and ``Struct``/``ListValue``)."""
MAX_PATH_BYTES = 4096
"""Longest ``file_changed`` path, in UTF-8 bytes: Linux's ``PATH_MAX``. The
runtime keeps each changed path of a session until the next turn."""
MAX_ID_BYTES = 128
"""Longest ``call_id`` and ``plan_id``: the runtime names calls ``call_`` and
24 hex digits, and stores plan ids in 128 characters."""
MAX_NAME_BYTES = 64
"""Longest ``agent_type`` and ``role``: names such as ``orchestrator``."""
MAX_NOTE_BYTES = 8192
"""Longest ``reason`` (``switch_agent``) and ``feedback`` (``hitl_decision``,
``plan_approval``): a person's remark, stored with the decision and shown to
the model. Message ``content``, edited arguments and ``tool_result``
payloads carry whole messages and files: :class:`PayloadLimits` bounds them."""
RUNTIME_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default limit on a message the runtime receives; a payload bound
must leave room below it for the request around the payload."""
MAX_PAYLOAD_BYTES = RUNTIME_MESSAGE_BYTES - 64 * 1024
"""The largest a :class:`PayloadLimits` bound may be set."""
DEFAULT_PAYLOAD_BYTES = 1024 * 1024
"""1 MiB: a source file of 300 KB is ordinary; a megabyte is a third of a
large model's context window already."""
MAX_SEQ = 2**63 - 1
"""The largest ``last_seq`` a client may send (in a ``resume`` frame or the
WebSocket URL): the runtime stores sequence numbers as signed 64-bit
integers (SQL ``BIGINT``), so anything larger could never be a real one and
would fail in the database instead of here."""


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """How much of a frame reaches the runtime, in bytes.

    ``tool_result``: the encoded ``ToolResult`` (its ``result`` object or
    its ``error`` text); a larger one is not forwarded, the runtime gets the
    same call failed with an error that says why (:func:`oversized_result`),
    so the model can ask for less. ``message``: a ``user_message`` or
    ``switch_agent`` ``content`` (UTF-8) and a ``hitl_decision``'s encoded
    ``modified_arguments``; larger → :class:`FrameError` ``invalid_field``.
    Both must stay below the runtime's gRPC message limit
    (:data:`MAX_PAYLOAD_BYTES`); the frame itself is bounded by the socket
    (``GATEWAY__MAX_FRAME_BYTES``).
    """

    message: int = DEFAULT_PAYLOAD_BYTES
    tool_result: int = DEFAULT_PAYLOAD_BYTES


def oversized_result(size: int, limit: int) -> str:
    """The error the model gets for a tool result of ``size`` bytes."""
    return (
        f"the tool result was {size} bytes, more than the limit of {limit} bytes, "
        "so it was not delivered; ask for a smaller part: a line range of a file "
        "(start_line, end_line), a narrower search or listing, a command with less output"
    )


_DECISIONS = {
    "approve": runtime_pb2.DECISION_APPROVE,
    "edit": runtime_pb2.DECISION_EDIT,
    "reject": runtime_pb2.DECISION_REJECT,
}
_PLAN_DECISIONS = {key: _DECISIONS[key] for key in ("approve", "reject")}
_TURN_STATUS = {
    runtime_pb2.TURN_STATUS_COMPLETED: "completed",
    runtime_pb2.TURN_STATUS_CANCELLED: "cancelled",
    runtime_pb2.TURN_STATUS_FAILED: "failed",
    runtime_pb2.TURN_STATUS_AWAITING_TOOLS: "awaiting_tools",
}

# ---------------------------------------------------------------------------
# IDE → runtime


def parse_frame(text: str, limits: PayloadLimits = PayloadLimits()) -> IdeAction:
    """Validate one IDE text frame and translate it.

    Unknown extra fields are ignored, ``null`` counts as absent for optional
    fields; objects passed on to the runtime (``result``,
    ``modified_arguments``) may nest at most :data:`MAX_NESTING` levels;
    a path, id, name or note may be at most :data:`MAX_PATH_BYTES`,
    :data:`MAX_ID_BYTES`, :data:`MAX_NAME_BYTES` or :data:`MAX_NOTE_BYTES`
    long, a payload at most what ``limits`` says (a ``tool_result`` over
    its limit is translated into that call's error, not refused). Raises
    :class:`FrameError` with code ``invalid_json``, ``not_an_object``,
    ``unknown_type``, ``missing_field`` or ``invalid_field``.
    """
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError:
        raise FrameError("invalid_json", "the frame is not valid JSON") from None
    except RecursionError:
        # json's C scanner refuses deep nesting this way, not with ValueError.
        raise FrameError("invalid_json", "the frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise FrameError("not_an_object", "the frame must be a JSON object")
    kind = data.get("type")
    if kind is None:
        raise FrameError("missing_field", "the frame has no 'type'")
    if not isinstance(kind, str):
        raise FrameError("invalid_field", "'type' must be a string")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise FrameError("unknown_type", f"unknown frame type {kind[:64]!r}")
    try:
        return parser(data, limits)
    except UnicodeEncodeError:
        # JSON may escape lone surrogates ("\ud800"); protobuf strings refuse them.
        raise FrameError("invalid_field", "strings must not contain lone surrogates") from None


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's json module accepts them.
    raise ValueError(name)


def _finite_float(text: str) -> float:
    # 1e999 would become inf, which the runtime cannot turn back into JSON.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _user_message(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    content = _required_str(data, "content", limits.message)
    if not content.strip():
        raise FrameError("invalid_field", "'content' must not be empty")
    role = _optional_str(data, "role", MAX_NAME_BYTES) or "user"
    return runtime_pb2.ConverseRequest(
        user_message=runtime_pb2.UserMessage(content=content, role=role)
    )


def _tool_result(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    call_id = _required_str(data, "call_id", MAX_ID_BYTES)
    result = _optional_object(data, "result")
    error = _optional_str(data, "error")
    if (result is None) == (error is None):
        raise FrameError("invalid_field", "exactly one of 'result' and 'error' is required")
    message = runtime_pb2.ToolResult(call_id=call_id)
    if result is not None:
        message.result.CopyFrom(_struct(result))
    else:
        message.error = error or ""
    # Measured encoded: a JSON number of one byte costs eleven in a Struct,
    # so the frame's size says little about what the runtime would receive.
    size = message.ByteSize()
    if size > limits.tool_result:
        message = runtime_pb2.ToolResult(
            call_id=call_id, error=oversized_result(size, limits.tool_result)
        )
    return runtime_pb2.ConverseRequest(tool_result=message)


def _hitl_decision(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    call_id = _required_str(data, "call_id", MAX_ID_BYTES)
    decision = _required_choice(data, "decision", _DECISIONS)
    arguments = _optional_object(data, "modified_arguments")
    always = data.get("always_allow")
    if always is not None and not isinstance(always, bool):
        raise FrameError("invalid_field", "'always_allow' must be a boolean")
    message = runtime_pb2.ApprovalDecision(
        call_id=call_id,
        decision=decision,
        feedback=_optional_str(data, "feedback", MAX_NOTE_BYTES) or "",
        always_allow=bool(always),
    )
    if decision == runtime_pb2.DECISION_EDIT:
        if arguments is None:
            raise FrameError("missing_field", "'modified_arguments' is required to edit")
        message.modified_arguments.CopyFrom(_struct(arguments))
        if message.modified_arguments.ByteSize() > limits.message:
            raise FrameError(
                "invalid_field", f"'modified_arguments' is larger than {limits.message} bytes"
            )
    return runtime_pb2.ConverseRequest(approval_decision=message)


def _switch_agent(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(
        switch_agent=runtime_pb2.SwitchAgent(
            agent_type=_required_str(data, "agent_type", MAX_NAME_BYTES),
            content=_optional_str(data, "content", limits.message) or "",
            reason=_optional_str(data, "reason", MAX_NOTE_BYTES) or "",
        )
    )


def _plan_approval(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(
        plan_approval=runtime_pb2.PlanApproval(
            plan_id=_required_str(data, "plan_id", MAX_ID_BYTES),
            decision=_required_choice(data, "decision", _PLAN_DECISIONS),
            feedback=_optional_str(data, "feedback", MAX_NOTE_BYTES) or "",
        )
    )


def _cancel(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(cancel=runtime_pb2.Cancel())


def _file_changed(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    path = _required_str(data, "path", MAX_PATH_BYTES)
    if "timestamp" not in data or data["timestamp"] is None:
        raise FrameError("missing_field", "'timestamp' is required")
    return runtime_pb2.ConverseRequest(
        file_changed=runtime_pb2.FileChanged(path=path, timestamp=_timestamp(data["timestamp"]))
    )


def _auth(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return Reauthenticate(token=_required_str(data, "token"))


def _resume(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    value = data.get("last_seq")
    if value is None:
        raise FrameError("missing_field", "'last_seq' is required")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise FrameError("invalid_field", f"'last_seq' must be an integer from 0 to {MAX_SEQ}")
    return runtime_pb2.ConverseRequest(resume=runtime_pb2.Resume(after_seq=value))


def last_seq_from_query(text: str) -> int | None:
    """The ``last_seq`` of a WebSocket URL's query: ASCII decimal digits
    naming 0 to :data:`MAX_SEQ`; None for anything else."""
    # isdigit() alone would pass "²", which int() refuses; the length check
    # keeps int() away from huge digit strings.
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_SEQ)):
        return None
    value = int(text)
    return value if value <= MAX_SEQ else None


_PARSERS: Mapping[str, Callable[[Mapping[str, Any], PayloadLimits], IdeAction]] = {
    "user_message": _user_message,
    "tool_result": _tool_result,
    "hitl_decision": _hitl_decision,
    "switch_agent": _switch_agent,
    "plan_approval": _plan_approval,
    "cancel": _cancel,
    "file_changed": _file_changed,
    "auth": _auth,
    "resume": _resume,
}


def _required_str(data: Mapping[str, Any], name: str, max_bytes: int | None = None) -> str:
    if data.get(name) is None:
        raise FrameError("missing_field", f"{name!r} is required")
    value = _optional_str(data, name, max_bytes)
    assert value is not None
    return value


def _optional_str(data: Mapping[str, Any], name: str, max_bytes: int | None = None) -> str | None:
    """The string field ``name``; with ``max_bytes``, at most that many bytes
    of UTF-8 (a lone surrogate raises UnicodeEncodeError, which
    :func:`parse_frame` refuses)."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise FrameError("invalid_field", f"{name!r} must be a string")
    if value is not None and max_bytes is not None and _longer_than(value, max_bytes):
        raise FrameError("invalid_field", f"{name!r} is longer than {max_bytes} bytes")
    return value


def _longer_than(value: str, max_bytes: int) -> bool:
    """Whether ``value`` takes more than ``max_bytes`` bytes of UTF-8; a
    character takes one to four, so most strings need no encoding."""
    if len(value) > max_bytes:
        return True
    if 4 * len(value) <= max_bytes:
        return False
    return len(value.encode("utf-8")) > max_bytes


def _optional_object(data: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise FrameError("invalid_field", f"{name!r} must be an object")
    if value is not None and _depth(value, MAX_NESTING) > MAX_NESTING:
        raise FrameError(
            "invalid_field", f"{name!r} is nested too deeply (at most {MAX_NESTING} levels)"
        )
    return value


def _depth(value: object, limit: int) -> int:
    """Nesting depth of JSON data, counting stops once past ``limit``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(item, limit - 1) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item, limit - 1) for item in value), default=0)
    return 0


def _required_choice(
    data: Mapping[str, Any], name: str, choices: Mapping[str, runtime_pb2.Decision.ValueType]
) -> runtime_pb2.Decision.ValueType:
    value = _required_str(data, name)
    if value not in choices:
        raise FrameError("invalid_field", f"{name!r} must be one of {', '.join(choices)}")
    return choices[value]


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (ValueError, TypeError, OverflowError):
        # Lone surrogates in keys, integers beyond a double's range.
        raise FrameError("invalid_field", "the object cannot be represented") from None
    return struct


def _timestamp(value: object) -> timestamp_pb2.Timestamp:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise FrameError("invalid_field", "'timestamp' is out of range") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise FrameError("invalid_field", "'timestamp' is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        raise FrameError("invalid_field", "'timestamp' must be a number or an ISO-8601 string")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# ---------------------------------------------------------------------------
# runtime → IDE


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
    return {
        "type": "assistant_message",
        "token": "",
        "content": "",
        "is_final": True,
        "metadata": {"status": _TURN_STATUS.get(event.status, "unspecified"), "usage": usage},
    }


def _tool_call(event: runtime_pb2.ToolCall) -> Frame:
    return {
        "type": "tool_call",
        "call_id": event.call_id,
        "tool_name": event.tool_name,
        "arguments": struct_to_dict(event.arguments),
        "requires_approval": event.requires_approval,
        "reason": event.reason,
    }


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
