"""Runtime replies → the REST views' JSON bodies."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2, timestamp_pb2

from gateway import views
from runtime.v1 import runtime_pb2 as pb

STAMP = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=500_000_000)


def test_times_are_iso_8601_utc_and_unset_is_null():
    assert views.iso_time(STAMP) == "2023-11-14T22:13:20.500Z"
    assert views.iso_time(timestamp_pb2.Timestamp()) is None


def test_agents():
    response = pb.ListAgentsResponse(
        agents=[
            pb.Agent(name="coder", description="writes", allowed_tools=["a", "b"]),
            pb.Agent(name="architect", description="designs", writable_paths=["*.md"]),
        ]
    )
    assert views.agents(response) == {
        "agents": [
            {
                "name": "coder",
                "description": "writes",
                "allowed_tools": ["a", "b"],
                "writable_paths": [],
                "origin": "",
                "model": "",
                "keywords": [],
                # the CodeLab IDE's names (AgentInfo), additive
                "type": "coder",
                "has_file_restrictions": False,
            },
            {
                "name": "architect",
                "description": "designs",
                "allowed_tools": [],
                "writable_paths": ["*.md"],
                "origin": "",
                "model": "",
                "keywords": [],
                "type": "architect",
                "has_file_restrictions": True,
            },
        ]
    }
    assert views.agents(pb.ListAgentsResponse()) == {"agents": []}


def test_current_agent_with_its_switches():
    response = pb.GetCurrentAgentResponse(
        session_id="s",
        agent="debug",
        agent_switches=[
            pb.AgentSwitchRecord(
                from_agent="orchestrator", to_agent="coder", reason="code", created_at=STAMP
            ),
            pb.AgentSwitchRecord(from_agent="coder", to_agent="debug", reason="user"),
        ],
    )
    assert views.current_agent(response) == {
        "session_id": "s",
        "current_agent": "debug",
        # the CodeLab IDE's names (CurrentAgentInfo), additive
        "agent_history": [
            {
                "from": "orchestrator",
                "to": "coder",
                "reason": "code",
                "timestamp": "2023-11-14T22:13:20.500Z",
            },
            {"from": "coder", "to": "debug", "reason": "user", "timestamp": None},
        ],
        "switch_count": 2,
    }
    fresh = views.current_agent(pb.GetCurrentAgentResponse(session_id="s", agent="orchestrator"))
    assert (fresh["agent_history"], fresh["switch_count"]) == ([], 0)


def test_sessions_page_and_last_page():
    session = pb.Session(session_id="s1", title="t", agent="ask", message_count=4, created_at=STAMP)
    body = views.sessions(
        pb.ListSessionsResponse(sessions=[session], next_page_token="p2", total=7)
    )
    assert body == {
        "sessions": [
            {
                "session_id": "s1",
                "title": "t",
                "agent": "ask",
                "message_count": 4,
                "created_at": "2023-11-14T22:13:20.500Z",
                "updated_at": None,
                # the CodeLab IDE's names, additive
                "id": "s1",
                "current_agent": "ask",
                "last_activity": None,
                "description": None,
                "is_active": True,
                "model": None,
            }
        ],
        "total": 7,
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
        "id",
        "current_agent",
        "last_activity",
        "description",
        "is_active",
        "model",
    }
    renamed = views.updated_session(pb.UpdateSessionResponse(session=response.session))
    assert renamed == body == views.one_session(pb.GetSessionResponse(session=response.session))


def test_the_model_choice_is_in_the_session_and_history_views():
    chosen = pb.Session(session_id="s", agent="coder", model="big")
    assert views.one_session(pb.GetSessionResponse(session=chosen))["model"] == "big"
    assert (
        views.history(pb.GetSessionHistoryResponse(session_id="s", model="big"))["model"] == "big"
    )
    assert views.history(pb.GetSessionHistoryResponse(session_id="s"))["model"] is None


def test_models_lists_the_groups_with_windows_and_the_sessions_choice():
    response = pb.ListModelsResponse(
        models=[pb.ModelGroup(name="offline", context_window=8000), pb.ModelGroup(name="big")],
        default_model="offline",
        session_model="big",
    )
    assert views.models(response) == {
        "models": [
            {"name": "offline", "context_window": 8000},
            {"name": "big", "context_window": None},
        ],
        "default_model": "offline",
        "session_model": "big",
    }
    assert views.models(pb.ListModelsResponse(default_model="m"))["session_model"] is None


def test_deleted_session_names_it():
    body = views.deleted_session(pb.DeleteSessionResponse(session_id="gone"))
    assert body == {"session_id": "gone", "id": "gone", "deleted": True}


def test_history_keeps_tool_calls_with_integer_arguments():
    arguments = struct_pb2.Struct()
    arguments.update({"path": "a.py", "start_line": 3, "nested": {"n": [1, 2.5]}})
    response = pb.GetSessionHistoryResponse(
        session_id="s",
        message_count=2,
        current_agent="coder",
        last_activity=STAMP,
        agent_switches=[
            pb.AgentSwitchRecord(
                from_agent="orchestrator", to_agent="coder", reason="code", created_at=STAMP
            )
        ],
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
            pb.HistoryMessage(
                role="tool", content="x", tool_call_id="c1", agent="coder", name="read_file"
            ),
        ],
    )
    body = views.history(response)
    assert body["session_id"] == "s"
    assert (body["message_count"], body["current_agent"], body["last_activity"]) == (
        2,
        "coder",
        "2023-11-14T22:13:20.500Z",
    )
    assert body["agent_history"] == [
        {
            "from": "orchestrator",
            "to": "coder",
            "reason": "code",
            "timestamp": "2023-11-14T22:13:20.500Z",
        }
    ]
    first, second = body["messages"]
    arguments_back = {"path": "a.py", "start_line": 3, "nested": {"n": [1, 2.5]}}
    (call,) = first["tool_calls"]
    assert call == {
        "call_id": "c1",
        "tool_name": "read_file",
        "arguments": arguments_back,
        # also in OpenAI's shape, arguments as a JSON string
        "id": "c1",
        "type": "function",
        "function": {"name": "read_file", "arguments": call["function"]["arguments"]},
    }
    assert json.loads(call["function"]["arguments"]) == arguments_back
    assert (first["tool_call_id"], first["name"]) == (None, None)
    assert first["created_at"] == "2023-11-14T22:13:20.500Z"
    assert (second["role"], second["tool_call_id"], second["tool_calls"], second["name"]) == (
        "tool",
        "c1",
        [],
        "read_file",
    )


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
        "count": 1,
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
