"""Exact replicas of the CodeLab IDE's REST decoders (``pese-git/codelab_ide``,
``packages/codelab_ai_assistant/lib/features/``), so tests can read our
real responses the way that IDE does.

Each function copies one generated ``fromJson`` (json_serializable) line by
line: the same keys, the same required-ness and the same casts. Dart's
``x as String`` fails on null and on any other type; ``x as String?`` lets
null through; ``(x as num).toInt()`` takes an int or a double (never a
bool); ``DateTime.parse`` takes only ISO 8601 (:func:`dart_datetime_parse`).
A failure raises :class:`DartDecodeError`, as the IDE would throw.

The files replicated (``.g.dart`` is what runs):

- ``session_management/data/models/session_model.g.dart``: :func:`session_model`
  (``SessionRemoteDataSource``: POST/GET/PATCH ``/sessions[/{id}]``, and each
  item of GET ``/sessions``' ``sessions``);
- ``session_management/data/models/session_models.g.dart``:
  :func:`session_list_response` (``GatewayApi.listSessions``),
  :func:`session_history` (``GatewayApi.getSessionHistory``),
  :func:`list_agents` (``GatewayApi.listAgents``: the body cast to a
  ``List``, each item an ``AgentInfo``) and :func:`current_agent_info`
  (``GatewayApi.getCurrentAgent``), with ``ChatMessage``, ``AgentSwitch``
  and ``SessionInfo``;
- ``tool_execution/data/models/pending_approvals_response.g.dart``:
  :func:`pending_approvals_response` (``GatewayApi.getPendingApprovals``,
  whose ``created_at`` ``ApprovalSyncService`` then hands to
  ``DateTime.parse``).

Also :func:`history_message_to_ws` replicates how
``agent_chat/data/repositories/agent_repository_impl.dart``
(``_chatMessageToWSMessage``) turns a history message into what it renders.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

Json = dict[str, Any]


class DartDecodeError(Exception):
    """What the IDE's decoder would throw (a TypeError or FormatException)."""


# -- Dart's casts --------------------------------------------------------------


def _string(json_: Json, key: str) -> str:
    value = json_.get(key)
    if not isinstance(value, str):
        raise DartDecodeError(f"json[{key!r}] as String: got {value!r}")
    return value


def _string_or_null(json_: Json, key: str) -> str | None:
    value = json_.get(key)
    if value is not None and not isinstance(value, str):
        raise DartDecodeError(f"json[{key!r}] as String?: got {value!r}")
    return value


def _num_to_int(json_: Json, key: str) -> int:
    value = json_.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DartDecodeError(f"(json[{key!r}] as num).toInt(): got {value!r}")
    return int(value)


def _bool_or_null(json_: Json, key: str) -> bool | None:
    value = json_.get(key)
    if value is not None and not isinstance(value, bool):
        raise DartDecodeError(f"json[{key!r}] as bool?: got {value!r}")
    return value


def _list(json_: Json, key: str) -> list[Any]:
    value = json_.get(key)
    if not isinstance(value, list):
        raise DartDecodeError(f"json[{key!r}] as List<dynamic>: got {value!r}")
    return value


def _map(value: Any, what: str) -> Json:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise DartDecodeError(f"{what} as Map<String, dynamic>: got {value!r}")
    return value


def _datetime_or_null(json_: Json, key: str) -> datetime | None:
    # json['k'] == null ? null : DateTime.parse(json['k'] as String)
    if json_.get(key) is None:
        return None
    return dart_datetime_parse(_string(json_, key))


_DART_DATETIME = re.compile(
    # dart:core DateTime.parse's grammar (sdk/lib/core/date_time.dart).
    r"^([+-]?\d{4,6})-?(\d\d)-?(\d\d)"
    r"(?:[ T](\d\d)(?::?(\d\d)(?::?(\d\d)(?:[.,](\d+))?)?)?"
    r"( ?[zZ]| ?([-+])(\d\d)(?::?(\d\d))?)?)?$"
)


def dart_datetime_parse(text: str) -> datetime:
    """``DateTime.parse``: FormatException (here DartDecodeError) unless ISO 8601."""
    match = _DART_DATETIME.match(text)
    if match is None:
        raise DartDecodeError(f"DateTime.parse: invalid date format {text!r}")
    year, month, day, hour, minute, second, fraction, zone, sign, zh, zm = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    value = datetime(
        int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro
    )
    if zone is None:
        return value  # local time in Dart; naive here
    offset = timedelta(0)
    if sign is not None:
        offset = timedelta(hours=int(zh), minutes=int(zm or 0)) * (1 if sign == "+" else -1)
    return (value - offset).replace(tzinfo=UTC)


# -- session_model.g.dart ----------------------------------------------------------


def session_model(json_: Json) -> Json:
    """``_$SessionModelFromJson`` (session_management/data/models/session_model.g.dart)."""
    return {
        "id": _string(json_, "id"),
        "createdAt": _datetime_or_null(json_, "created_at"),
        "updatedAt": _datetime_or_null(json_, "updated_at"),
        "lastActivity": _datetime_or_null(json_, "last_activity"),
        "currentAgent": _string_or_null(json_, "current_agent"),
        "messageCount": _num_to_int(json_, "message_count"),
        "title": _string_or_null(json_, "title"),
        "description": _string_or_null(json_, "description"),
        "isActive": _bool_or_null(json_, "is_active"),
    }


def list_sessions_remote(data: Any) -> list[Json]:
    """``SessionRemoteDataSourceImpl.listSessions``
    (session_management/data/datasources/session_remote_datasource.dart)."""
    body = _map(data, "response.data")
    return [session_model(_map(item, "json")) for item in _list(body, "sessions")]


# -- session_models.g.dart ---------------------------------------------------------


def chat_message(json_: Json) -> Json:
    """``_$ChatMessageFromJson`` (session_management/data/models/session_models.g.dart)."""
    tool_calls = json_.get("tool_calls")
    if tool_calls is not None:
        if not isinstance(tool_calls, list):
            raise DartDecodeError(f"json['tool_calls'] as List<dynamic>?: got {tool_calls!r}")
        tool_calls = [_map(call, "e") for call in tool_calls]
    return {
        "role": _string(json_, "role"),
        "content": _string_or_null(json_, "content"),
        "name": _string_or_null(json_, "name"),
        "toolCallId": _string_or_null(json_, "tool_call_id"),
        "toolCalls": tool_calls,
    }


def agent_switch(json_: Json) -> Json:
    """``_$AgentSwitchFromJson`` (session_management/data/models/session_models.g.dart)."""
    return {
        "from": _string_or_null(json_, "from"),
        "to": _string_or_null(json_, "to"),
        "reason": _string_or_null(json_, "reason"),
        "timestamp": _string_or_null(json_, "timestamp"),
    }


def session_history(data: Any) -> Json:
    """``_$SessionHistoryFromJson`` (session_management/data/models/session_models.g.dart)."""
    json_ = _map(data, "response.data")
    history = json_.get("agent_history")
    if history is not None and not isinstance(history, list):
        raise DartDecodeError(f"json['agent_history'] as List<dynamic>?: got {history!r}")
    return {
        "sessionId": _string(json_, "session_id"),
        "messages": [chat_message(_map(m, "e")) for m in _list(json_, "messages")],
        "messageCount": _num_to_int(json_, "message_count"),
        "lastActivity": _string_or_null(json_, "last_activity"),
        "currentAgent": _string_or_null(json_, "current_agent"),
        "agentHistory": [agent_switch(_map(s, "e")) for s in history or []],
    }


def session_info(json_: Json) -> Json:
    """``_$SessionInfoFromJson`` (session_management/data/models/session_models.g.dart)."""
    return {
        "sessionId": _string(json_, "session_id"),
        "messageCount": _num_to_int(json_, "message_count"),
        "lastActivity": _string(json_, "last_activity"),
        "currentAgent": _string_or_null(json_, "current_agent"),
    }


def session_list_response(data: Any) -> Json:
    """``_$SessionListResponseFromJson`` (session_management/data/models/session_models.g.dart)."""
    json_ = _map(data, "response.data")
    return {
        "sessions": [session_info(_map(s, "e")) for s in _list(json_, "sessions")],
        "total": _num_to_int(json_, "total"),
    }


def _string_list(json_: Json, key: str) -> list[str]:
    # (json['k'] as List<dynamic>).map((e) => e as String).toList()
    values = _list(json_, key)
    for value in values:
        if not isinstance(value, str):
            raise DartDecodeError(f"json[{key!r}] item as String: got {value!r}")
    return values


def _bool(json_: Json, key: str) -> bool:
    value = json_.get(key)
    if not isinstance(value, bool):
        raise DartDecodeError(f"json[{key!r}] as bool: got {value!r}")
    return value


def agent_info(json_: Json) -> Json:
    """``_$AgentInfoFromJson`` (session_management/data/models/session_models.g.dart)."""
    return {
        "type": _string(json_, "type"),
        "name": _string(json_, "name"),
        "description": _string(json_, "description"),
        "allowedTools": _string_list(json_, "allowed_tools"),
        "hasFileRestrictions": _bool(json_, "has_file_restrictions"),
    }


def list_agents(data: Any) -> list[Json]:
    """``GatewayApi.listAgents`` (agent_chat/data/datasources/gateway_api.dart):
    ``(response.data as List).map((e) => AgentInfo.fromJson(e as Map<String,
    dynamic>))``."""
    if not isinstance(data, list):
        raise DartDecodeError(f"response.data as List: got {type(data).__name__}")
    return [agent_info(_map(item, "e")) for item in data]


def current_agent_info(data: Any) -> Json:
    """``_$CurrentAgentInfoFromJson`` (session_management/data/models/session_models.g.dart),
    as ``GatewayApi.getCurrentAgent`` calls it on ``response.data``."""
    json_ = _map(data, "response.data")
    return {
        "sessionId": _string(json_, "session_id"),
        "currentAgent": _string(json_, "current_agent"),
        "agentHistory": [agent_switch(_map(s, "e")) for s in _list(json_, "agent_history")],
        "switchCount": _num_to_int(json_, "switch_count"),
    }


# -- pending_approvals_response.g.dart ------------------------------------------------


def pending_approval_data(json_: Json) -> Json:
    """``_$PendingApprovalDataFromJson``
    (tool_execution/data/models/pending_approvals_response.g.dart)."""
    return {
        "callId": _string(json_, "call_id"),
        "toolName": _string(json_, "tool_name"),
        "arguments": _map(json_.get("arguments"), "json['arguments']"),
        "reason": _string_or_null(json_, "reason"),
        "createdAt": _string(json_, "created_at"),
    }


def pending_approvals_response(data: Any) -> Json:
    """``_$PendingApprovalsResponseFromJson``
    (tool_execution/data/models/pending_approvals_response.g.dart), then what
    ``ApprovalSyncService.fetchPendingApprovals`` does with each one
    (``DateTime.parse(approvalData.createdAt)``)."""
    json_ = _map(data, "response.data")
    decoded = {
        "sessionId": _string(json_, "session_id"),
        "pendingApprovals": [
            pending_approval_data(_map(a, "e")) for a in _list(json_, "pending_approvals")
        ],
        "count": _num_to_int(json_, "count"),
    }
    for approval in decoded["pendingApprovals"]:
        dart_datetime_parse(approval["createdAt"])
    return decoded


# -- agent_repository_impl.dart: a history message as the chat renders it ----------


def history_message_to_ws(message: Json) -> Json:
    """``AgentRepositoryImpl._chatMessageToWSMessage`` on a decoded
    :func:`chat_message`: the first tool call in OpenAI's shape (``id``,
    ``function.name``, ``function.arguments`` as a JSON string or a map), a
    tool result by ``tool_call_id``, a user message, or else an assistant
    message (its special cases for ``system`` messages are left out: we send
    none in a history)."""
    calls = message["toolCalls"]
    if calls:
        call = calls[0]
        function = call.get("function")
        raw = function.get("arguments") if isinstance(function, dict) else None
        arguments: Json = {}
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except ValueError as exc:
                arguments = {"_raw": raw, "_parse_error": str(exc)}
            else:
                arguments = parsed if isinstance(parsed, dict) else {"_raw": raw}
        elif isinstance(raw, dict):
            arguments = raw
        elif raw is not None:
            arguments = {"_raw": str(raw), "_parse_error": "Unexpected type"}
        return {
            "type": "tool_call",
            "call_id": call.get("id") if isinstance(call.get("id"), str) else "",
            "tool_name": function.get("name") if isinstance(function, dict) else "",
            "arguments": arguments,
        }
    if message["toolCallId"] is not None:
        return {"type": "tool_result", "call_id": message["toolCallId"], "name": message["name"]}
    if message["role"] == "user":
        return {"type": "user_message", "content": message["content"] or ""}
    return {"type": "assistant_message", "content": message["content"]}
