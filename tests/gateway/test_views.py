"""Runtime replies → the REST views' JSON bodies."""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from gateway import views
from runtime.v1 import runtime_pb2 as pb

STAMP = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=500_000_000)


def test_times_are_iso_8601_utc_and_unset_is_null():
    assert views.iso_time(STAMP) == "2023-11-14T22:13:20.500Z"
    assert views.iso_time(timestamp_pb2.Timestamp()) is None


def test_agents():
    response = pb.ListAgentsResponse(
        agents=[pb.Agent(name="coder", description="writes", allowed_tools=["a", "b"])]
    )
    assert views.agents(response) == {
        "agents": [{"name": "coder", "description": "writes", "allowed_tools": ["a", "b"]}]
    }
    assert views.agents(pb.ListAgentsResponse()) == {"agents": []}


def test_current_agent():
    response = pb.GetCurrentAgentResponse(session_id="s", agent="debug")
    assert views.current_agent(response) == {"session_id": "s", "current_agent": "debug"}


def test_sessions_page_and_last_page():
    session = pb.Session(session_id="s1", title="t", agent="ask", message_count=4, created_at=STAMP)
    body = views.sessions(pb.ListSessionsResponse(sessions=[session], next_page_token="p2"))
    assert body == {
        "sessions": [
            {
                "session_id": "s1",
                "title": "t",
                "agent": "ask",
                "message_count": 4,
                "created_at": "2023-11-14T22:13:20.500Z",
                "updated_at": None,
            }
        ],
        "next_page_token": "p2",
    }
    assert views.sessions(pb.ListSessionsResponse())["next_page_token"] is None


def test_created_session_is_the_session_fields():
    response = pb.CreateSessionResponse(session=pb.Session(session_id="n", agent="orchestrator"))
    body = views.created_session(response)
    assert body["session_id"] == "n"
    assert set(body) == {
        "session_id",
        "title",
        "agent",
        "message_count",
        "created_at",
        "updated_at",
    }


def test_history_keeps_tool_calls_with_integer_arguments():
    arguments = struct_pb2.Struct()
    arguments.update({"path": "a.py", "start_line": 3, "nested": {"n": [1, 2.5]}})
    response = pb.GetSessionHistoryResponse(
        session_id="s",
        messages=[
            pb.HistoryMessage(
                role="assistant",
                content="",
                agent="coder",
                tool_calls=[
                    pb.HistoryToolCall(call_id="c1", tool_name="read_file", arguments=arguments)
                ],
                created_at=STAMP,
            ),
            pb.HistoryMessage(role="tool", content="x", tool_call_id="c1", agent="coder"),
        ],
    )
    body = views.history(response)
    assert body["session_id"] == "s"
    first, second = body["messages"]
    assert first["tool_calls"] == [
        {
            "call_id": "c1",
            "tool_name": "read_file",
            "arguments": {"path": "a.py", "start_line": 3, "nested": {"n": [1, 2.5]}},
        }
    ]
    assert first["tool_call_id"] is None
    assert first["created_at"] == "2023-11-14T22:13:20.500Z"
    assert (second["role"], second["tool_call_id"], second["tool_calls"]) == ("tool", "c1", [])


def test_pending_approvals():
    arguments = struct_pb2.Struct()
    arguments.update({"command": "ls", "timeout": 30})
    response = pb.ListPendingApprovalsResponse(
        session_id="s",
        approvals=[
            pb.PendingApproval(
                call_id="c",
                tool_name="execute_command",
                arguments=arguments,
                reason="runs a command",
                created_at=STAMP,
            )
        ],
    )
    assert views.pending_approvals(response) == {
        "session_id": "s",
        "pending_approvals": [
            {
                "call_id": "c",
                "tool_name": "execute_command",
                "arguments": {"command": "ls", "timeout": 30},
                "reason": "runs a command",
                "created_at": "2023-11-14T22:13:20.500Z",
            }
        ],
    }
