"""IDE JSON frames ⇄ runtime protobuf messages; pure, no I/O.

:func:`parse_frame` turns one text frame from the IDE into either a
``ConverseRequest`` for the runtime or a :class:`Reauthenticate` action the
gateway handles itself, raising :class:`~gateway.errors.FrameError` for
anything unusable; :class:`PayloadLimits` bounds what it forwards (a
``tool_result`` over its bound becomes that call's error, so the model
hears it and the connection lives on). :func:`last_seq_from_query` reads
the handshake's ``?last_seq=`` within the same bound as a ``resume`` frame
(:data:`MAX_SEQ`). What the IDE is sent back is :mod:`gateway.outbound`
(re-exported here: :func:`response_to_frame`, :func:`error_frame`, :func:`encode`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import FrameError
from gateway.fields import (
    flag,
    optional_object,
    optional_str,
    required_choice,
    required_str,
    struct,
    timestamp,
)
from gateway.outbound import Frame, encode, error_frame, response_to_frame
from runtime.v1 import runtime_pb2

__all__ = ["Frame", "encode", "error_frame", "parse_frame", "response_to_frame"]


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
MAX_MODEL_BYTES = 128
"""Longest ``model`` of a ``set_model`` frame (the runtime stores 128 characters)."""
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
MAX_ENVIRONMENT_BYTES = 256
"""Longest ``os`` and ``shell`` of an ``environment`` frame (its
``workspace_root`` is a path: :data:`MAX_PATH_BYTES`); they go into every
model call's system prompt."""


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

# ---------------------------------------------------------------------------
# IDE → runtime


def parse_frame(text: str, limits: PayloadLimits = PayloadLimits()) -> IdeAction:
    """Validate one IDE text frame and translate it.

    Unknown extra fields are ignored, ``null`` counts as absent for optional
    fields; objects passed on to the runtime (``result``,
    ``modified_arguments``) may nest at most :data:`MAX_NESTING` levels;
    a path, id, name, environment value or note may be at most
    :data:`MAX_PATH_BYTES`, :data:`MAX_ID_BYTES`, :data:`MAX_NAME_BYTES`,
    :data:`MAX_ENVIRONMENT_BYTES` or :data:`MAX_NOTE_BYTES` long, a
    payload at most what ``limits`` says (a ``tool_result`` over its limit
    is translated into that call's error, not refused). Raises
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
    content = required_str(data, "content", limits.message)
    if not content.strip():
        raise FrameError("invalid_field", "'content' must not be empty")
    role = optional_str(data, "role", MAX_NAME_BYTES) or "user"
    return runtime_pb2.ConverseRequest(
        user_message=runtime_pb2.UserMessage(content=content, role=role)
    )


def _tool_result(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    call_id = required_str(data, "call_id", MAX_ID_BYTES)
    result = optional_object(data, "result", MAX_NESTING)
    error = optional_str(data, "error")
    if (result is None) == (error is None):
        raise FrameError("invalid_field", "exactly one of 'result' and 'error' is required")
    message = runtime_pb2.ToolResult(call_id=call_id)
    if result is not None:
        message.result.CopyFrom(struct(result))
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
    call_id = required_str(data, "call_id", MAX_ID_BYTES)
    decision = required_choice(data, "decision", _DECISIONS)
    arguments = optional_object(data, "modified_arguments", MAX_NESTING)
    message = runtime_pb2.ApprovalDecision(
        call_id=call_id,
        decision=decision,
        feedback=optional_str(data, "feedback", MAX_NOTE_BYTES) or "",
        always_allow=flag(data, "always_allow"),
    )
    if decision == runtime_pb2.DECISION_EDIT:
        if arguments is None:
            raise FrameError("missing_field", "'modified_arguments' is required to edit")
        message.modified_arguments.CopyFrom(struct(arguments))
        if message.modified_arguments.ByteSize() > limits.message:
            raise FrameError(
                "invalid_field", f"'modified_arguments' is larger than {limits.message} bytes"
            )
    return runtime_pb2.ConverseRequest(approval_decision=message)


def _switch_agent(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(
        switch_agent=runtime_pb2.SwitchAgent(
            agent_type=required_str(data, "agent_type", MAX_NAME_BYTES),
            content=optional_str(data, "content", limits.message) or "",
            reason=optional_str(data, "reason", MAX_NOTE_BYTES) or "",
        )
    )


def _plan_approval(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(
        plan_approval=runtime_pb2.PlanApproval(
            plan_id=required_str(data, "plan_id", MAX_ID_BYTES),
            decision=required_choice(data, "decision", _PLAN_DECISIONS),
            feedback=optional_str(data, "feedback", MAX_NOTE_BYTES) or "",
        )
    )


def _cancel(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(cancel=runtime_pb2.Cancel())


def _file_changed(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    path = required_str(data, "path", MAX_PATH_BYTES)
    if "timestamp" not in data or data["timestamp"] is None:
        raise FrameError("missing_field", "'timestamp' is required")
    return runtime_pb2.ConverseRequest(
        file_changed=runtime_pb2.FileChanged(path=path, timestamp=timestamp(data["timestamp"]))
    )


def _environment(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(
        environment=runtime_pb2.Environment(
            os=optional_str(data, "os", MAX_ENVIRONMENT_BYTES) or "",
            shell=optional_str(data, "shell", MAX_ENVIRONMENT_BYTES) or "",
            workspace_root=optional_str(data, "workspace_root", MAX_PATH_BYTES) or "",
        )
    )


def _auth(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return Reauthenticate(token=required_str(data, "token"))


def _undo(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    turn_id = optional_str(data, "turn_id", MAX_ID_BYTES) or ""
    return runtime_pb2.ConverseRequest(undo=runtime_pb2.Undo(turn_id=turn_id))


def _set_model(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    # Which groups are offered is the runtime's to say (an ``unknown_model`` error).
    model = required_str(data, "model", MAX_MODEL_BYTES)
    return runtime_pb2.ConverseRequest(set_model=runtime_pb2.SetModel(model=model))


MAX_POSITION = 2**31 - 1
"""The largest message position a frame may name (the runtime stores positions
as SQL ``INTEGER``)."""


def _position(data: Mapping[str, Any], name: str) -> int | None:
    """A message's position (from 0, as the history lists them), or None when absent."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITION:
        raise FrameError(
            "invalid_field", f"'{name}' must be a message's position, from 0 to {MAX_POSITION}"
        )
    return value


def _retry(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    retry = runtime_pb2.Retry(keep_changes=flag(data, "keep_changes"))
    return runtime_pb2.ConverseRequest(retry=retry)


def _edit_message(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    index = _position(data, "index")
    if index is None:
        raise FrameError("missing_field", "'index' is required: the position of your message")
    content = required_str(data, "content", limits.message)
    if not content.strip():
        raise FrameError("invalid_field", "'content' must not be empty")
    edit = runtime_pb2.EditMessage(
        index=index, content=content, keep_changes=flag(data, "keep_changes")
    )
    return runtime_pb2.ConverseRequest(edit_message=edit)


def _fork(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    fork = runtime_pb2.Fork()
    index = _position(data, "index")
    if index is not None:
        fork.through_message = index
    return runtime_pb2.ConverseRequest(fork=fork)


def _condense(data: Mapping[str, Any], limits: PayloadLimits) -> IdeAction:
    return runtime_pb2.ConverseRequest(condense=runtime_pb2.Condense())


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
    "environment": _environment,
    "auth": _auth,
    "resume": _resume,
    "undo": _undo,
    "set_model": _set_model,
    "retry": _retry,
    "edit_message": _edit_message,
    "fork": _fork,
    "condense": _condense,
}
