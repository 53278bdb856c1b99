"""The REST views' JSON bodies, built from the runtime's replies; pure.

Each function takes a response message of one unary read and returns the
JSON object the IDE receives. Times are ISO 8601 in UTC (``...Z``), or
``None`` when the runtime left them unset.

The bodies are our shape plus, additively, the names the CodeLab IDE's
decoders read (``SessionModel``, ``SessionListResponse``, ``SessionHistory``,
``PendingApprovalsResponse``, ``AgentInfo``, ``CurrentAgentInfo``,
replicated in tests/codelab_ide_rest.py and read through in
tests/integration/test_ide_rest.py): an agent also has ``type`` (=
``name``) and ``has_file_restrictions`` (whether ``writable_paths`` limits
its writes); the current agent also has ``agent_history`` and
``switch_count``; a session also has ``id`` (= ``session_id``),
``current_agent`` (= ``agent``), ``last_activity`` (= ``updated_at``),
``description`` (null: sessions have none) and ``is_active`` (true: a
deleted session is gone, not inactive); a list also has ``total``; a
history also has ``message_count``, ``current_agent``, ``last_activity``
and ``agent_history`` ``[{from, to, reason, timestamp}]``, each tool call
also in OpenAI's shape (``id``, ``type: "function"``, ``function: {name,
arguments}`` with the arguments as a JSON string) and each tool message its
tool's ``name``; pending approvals also have ``count``.

Where the IDE's shape clashes with ours rather than adding to it (it reads
``GET /api/v1/agents`` as a bare list), the client's profile says so
(:meth:`gateway.profiles.ClientProfile.rest_body`); these functions build
our shape only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from mesh.structs import struct_to_dict
from runtime.v1 import runtime_pb2

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Document:
    """A view's answer that is not JSON: text of a media type (which names
    its charset), such as an export as Markdown."""

    media_type: str
    text: str


def iso_time(stamp: timestamp_pb2.Timestamp) -> str | None:
    """``stamp`` as ISO 8601 UTC with a ``Z``, or None when unset (zero)."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToJsonString()


def agents(response: runtime_pb2.ListAgentsResponse) -> Body:
    return {
        "agents": [
            {
                "name": agent.name,
                "description": agent.description,
                "allowed_tools": list(agent.allowed_tools),
                "writable_paths": list(agent.writable_paths),
                "origin": agent.origin,
                "model": agent.model,
                "keywords": list(agent.keywords),
                # the CodeLab IDE's names (AgentInfo), additive
                "type": agent.name,
                "has_file_restrictions": bool(agent.writable_paths),
            }
            for agent in response.agents
        ]
    }


def models(response: runtime_pb2.ListModelsResponse) -> Body:
    """The model groups a user may choose; ``session_model`` None: the
    session asked about chose none (or none was asked about)."""
    return {
        "models": [
            {"name": model.name, "context_window": model.context_window or None}
            for model in response.models
        ],
        "default_model": response.default_model,
        "session_model": response.session_model or None,
    }


def agent_history(switches: Iterable[runtime_pb2.AgentSwitchRecord]) -> list[Body]:
    """Agent switches as ``{from, to, reason, timestamp}``, oldest first."""
    return [
        {
            "from": switch.from_agent,
            "to": switch.to_agent,
            "reason": switch.reason,
            "timestamp": iso_time(switch.created_at),
        }
        for switch in switches
    ]


def current_agent(response: runtime_pb2.GetCurrentAgentResponse) -> Body:
    return {
        "session_id": response.session_id,
        "current_agent": response.agent,
        # the CodeLab IDE's names (CurrentAgentInfo), additive
        "agent_history": agent_history(response.agent_switches),
        "switch_count": len(response.agent_switches),
    }


def session(message: runtime_pb2.Session) -> Body:
    updated_at = iso_time(message.updated_at)
    return {
        "session_id": message.session_id,
        "id": message.session_id,
        "title": message.title,
        "description": None,
        "agent": message.agent,
        "current_agent": message.agent,
        "message_count": message.message_count,
        "created_at": iso_time(message.created_at),
        "updated_at": updated_at,
        "last_activity": updated_at,
        "is_active": True,
        "model": message.model or None,
    }


def sessions(response: runtime_pb2.ListSessionsResponse) -> Body:
    return {
        "sessions": [session(item) for item in response.sessions],
        "total": response.total,
        "next_page_token": response.next_page_token or None,
    }


def created_session(response: runtime_pb2.CreateSessionResponse) -> Body:
    return session(response.session)


def one_session(response: runtime_pb2.GetSessionResponse) -> Body:
    return session(response.session)


def updated_session(response: runtime_pb2.UpdateSessionResponse) -> Body:
    return session(response.session)


def forked_session(response: runtime_pb2.ForkSessionResponse) -> Body:
    return session(response.session)


def deleted_session(response: runtime_pb2.DeleteSessionResponse) -> Body:
    return {"session_id": response.session_id, "id": response.session_id, "deleted": True}


def tool_call(call: runtime_pb2.HistoryToolCall) -> Body:
    """A stored tool call, in our shape and in OpenAI's."""
    arguments = struct_to_dict(call.arguments)
    return {
        "call_id": call.call_id,
        "tool_name": call.tool_name,
        "arguments": arguments,
        # OpenAI's shape, which the CodeLab IDE reads back from a history.
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.tool_name, "arguments": json.dumps(arguments)},
    }


def history(response: runtime_pb2.GetSessionHistoryResponse) -> Body:
    return {
        "session_id": response.session_id,
        "message_count": response.message_count,
        "current_agent": response.current_agent or None,
        "last_activity": iso_time(response.last_activity),
        "agent_history": agent_history(response.agent_switches),
        "model": response.model or None,
        "messages": [history_message(message) for message in response.messages],
    }


def history_message(message: runtime_pb2.HistoryMessage) -> Body:
    """One stored message: its tool calls with their arguments, a tool
    message's call id and tool, who wrote it and when, whether undone."""
    return {
        "role": message.role,
        "content": message.content,
        "tool_calls": [tool_call(call) for call in message.tool_calls],
        "tool_call_id": message.tool_call_id or None,
        "name": message.name or None,
        "agent": message.agent,
        "created_at": iso_time(message.created_at),
        "undone": message.undone,
    }


def pending_approvals(response: runtime_pb2.ListPendingApprovalsResponse) -> Body:
    return {
        "session_id": response.session_id,
        "count": len(response.approvals),
        "pending_approvals": [
            {
                "call_id": approval.call_id,
                "tool_name": approval.tool_name,
                "arguments": struct_to_dict(approval.arguments),
                "reason": approval.reason,
                "created_at": iso_time(approval.created_at),
                **_metadata(approval),
            }
            for approval in response.approvals
        ],
    }


def checkpoint_turn(turn: runtime_pb2.TurnCheckpoint) -> Body:
    """One turn that changed files: its files by path and change, no contents."""
    return {
        "turn_id": turn.turn_id,
        "message": turn.message,
        "files": [{"path": f.path, "change": f.change} for f in turn.files],
        "undone": turn.undone,
        "created_at": iso_time(turn.created_at),
    }


def checkpoints(response: runtime_pb2.ListCheckpointsResponse) -> Body:
    return {
        "session_id": response.session_id,
        "turns": [checkpoint_turn(turn) for turn in response.turns],
    }


def undo_started(response: runtime_pb2.UndoTurnResponse) -> Body:
    return {"session_id": response.session_id, "turn_id": response.turn_id, "started": True}


def session_change(change: runtime_pb2.SessionChanged) -> Body:
    """The branch a retry, an edit or a restore made (the ``session_changed`` frame's fields)."""
    return {
        "reason": change.reason,
        "session_id": change.session_id,
        "branch": change.branch,
        "from_message": change.from_message,
    }


def retry_started(response: runtime_pb2.RetryTurnResponse) -> Body:
    return {**session_change(response.change), "started": True}


def edit_started(response: runtime_pb2.EditUserMessageResponse) -> Body:
    return {**session_change(response.change), "started": True}


def branch_restored(response: runtime_pb2.RestoreBranchResponse) -> Body:
    return session_change(response.change)


def branches(response: runtime_pb2.ListBranchesResponse) -> Body:
    """The parts of the history retries and edits replaced, newest first."""
    return {
        "session_id": response.session_id,
        "branches": [
            {
                "branch": branch.branch,
                "reason": branch.reason,
                "from_message": branch.from_message,
                "created_at": iso_time(branch.created_at),
                "messages": [history_message(message) for message in branch.messages],
            }
            for branch in response.branches
        ],
    }


def _metadata(approval: runtime_pb2.PendingApproval) -> Body:
    if not approval.HasField("metadata"):
        return {}
    metadata = approval.metadata
    return {
        "metadata": {
            "diff": metadata.diff,
            "parent_call_id": metadata.parent_call_id,
            "parent_tool": metadata.parent_tool,
        }
    }


def instructions(
    response: runtime_pb2.GetInstructionsResponse | runtime_pb2.UpdateInstructionsResponse,
) -> Body:
    """The user's custom instructions ("": none) and the longest accepted."""
    return {"text": response.text, "max_chars": response.max_chars}


def approval_rules(
    response: runtime_pb2.GetApprovalRulesResponse | runtime_pb2.UpdateApprovalRulesResponse,
) -> Body:
    """The user's approval rules (a null cap: the operator's), the operator's
    floor under them, and what is always asked whatever they say."""
    rules = response.rules
    cap = rules.max_auto_approvals_per_turn
    return {
        "allow": list(rules.allow),
        "deny": list(rules.deny),
        "max_auto_approvals_per_turn": cap
        if rules.HasField("max_auto_approvals_per_turn")
        else None,
        "operator": {
            "user_auto_approve": list(response.operator.user_auto_approve),
            "max_auto_approvals_per_turn": response.operator.max_auto_approvals_per_turn,
        },
        "always_ask": list(response.always_ask),
    }
