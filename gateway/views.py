"""The REST views' JSON bodies, built from the runtime's replies; pure.

Each function takes a response message of one unary read and returns the
JSON object the IDE receives. Times are ISO 8601 in UTC (``...Z``), or
``None`` when the runtime left them unset.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from mesh.structs import struct_to_dict
from runtime.v1 import runtime_pb2

Body = dict[str, Any]


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
            }
            for agent in response.agents
        ]
    }


def current_agent(response: runtime_pb2.GetCurrentAgentResponse) -> Body:
    return {"session_id": response.session_id, "current_agent": response.agent}


def session(message: runtime_pb2.Session) -> Body:
    return {
        "session_id": message.session_id,
        "title": message.title,
        "agent": message.agent,
        "message_count": message.message_count,
        "created_at": iso_time(message.created_at),
        "updated_at": iso_time(message.updated_at),
    }


def sessions(response: runtime_pb2.ListSessionsResponse) -> Body:
    return {
        "sessions": [session(item) for item in response.sessions],
        "next_page_token": response.next_page_token or None,
    }


def created_session(response: runtime_pb2.CreateSessionResponse) -> Body:
    return session(response.session)


def history(response: runtime_pb2.GetSessionHistoryResponse) -> Body:
    return {
        "session_id": response.session_id,
        "messages": [
            {
                "role": message.role,
                "content": message.content,
                "tool_calls": [
                    {
                        "call_id": call.call_id,
                        "tool_name": call.tool_name,
                        "arguments": struct_to_dict(call.arguments),
                    }
                    for call in message.tool_calls
                ],
                "tool_call_id": message.tool_call_id or None,
                "agent": message.agent,
                "created_at": iso_time(message.created_at),
            }
            for message in response.messages
        ],
    }


def pending_approvals(response: runtime_pb2.ListPendingApprovalsResponse) -> Body:
    return {
        "session_id": response.session_id,
        "pending_approvals": [
            {
                "call_id": approval.call_id,
                "tool_name": approval.tool_name,
                "arguments": struct_to_dict(approval.arguments),
                "reason": approval.reason,
                "created_at": iso_time(approval.created_at),
            }
            for approval in response.approvals
        ],
    }
