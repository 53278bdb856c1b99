"""ExportSession replies → a session's export as JSON and as Markdown."""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from gateway import exports
from runtime.v1 import runtime_pb2 as pb

STAMP = timestamp_pb2.Timestamp(seconds=1_700_000_000)
WHEN = "2023-11-14T22:13:20Z"


def export(result: str = "print('hi')") -> pb.ExportSessionResponse:
    arguments = struct_pb2.Struct()
    arguments.update({"path": "a.py", "start_line": 3})
    return pb.ExportSessionResponse(
        session=pb.Session(
            session_id="s-1", title="Fix\nthe bug", agent="coder", message_count=4, created_at=STAMP
        ),
        messages=[
            pb.HistoryMessage(
                role="user", content="read a.py", agent="coder", created_at=STAMP, undone=True
            ),
            pb.HistoryMessage(
                role="assistant",
                content="Reading it.",
                agent="coder",
                created_at=STAMP,
                tool_calls=[
                    pb.HistoryToolCall(call_id="c1", tool_name="read_file", arguments=arguments)
                ],
            ),
            pb.HistoryMessage(
                role="tool", content=result, tool_call_id="c1", name="read_file", agent="coder"
            ),
            pb.HistoryMessage(role="assistant", content="It prints.", agent="coder"),
        ],
        agent_switches=[
            pb.AgentSwitchRecord(
                from_agent="orchestrator", to_agent="coder", reason="code", created_at=STAMP
            )
        ],
        turns=[
            pb.TurnCheckpoint(
                turn_id="0",
                message="read a.py",
                files=[pb.FileCheckpoint(path="a.py", change="modified")],
                undone=True,
                created_at=STAMP,
            )
        ],
    )


def test_the_json_export_has_the_session_messages_switches_and_turns():
    body = exports.as_json(export())
    assert body["session"] == {
        "id": "s-1",
        "title": "Fix\nthe bug",
        "agent": "coder",
        "message_count": 4,
        "created_at": WHEN,
        "updated_at": None,
    }
    assert [(m["position"], m["role"], m["content"]) for m in body["messages"]] == [
        (0, "user", "read a.py"),
        (1, "assistant", "Reading it."),
        (2, "tool", "print('hi')"),
        (3, "assistant", "It prints."),
    ]
    assert body["messages"][0]["undone"] is True
    (call,) = body["messages"][1]["tool_calls"]
    assert (call["call_id"], call["tool_name"], call["arguments"]) == (
        "c1",
        "read_file",
        {"path": "a.py", "start_line": 3},
    )
    assert (body["messages"][2]["tool_call_id"], body["messages"][2]["name"]) == ("c1", "read_file")
    assert body["agent_switches"] == [
        {"from": "orchestrator", "to": "coder", "reason": "code", "timestamp": WHEN}
    ]
    assert body["checkpoints"] == [
        {
            "turn_id": "0",
            "message": "read a.py",
            "files": [{"path": "a.py", "change": "modified"}],
            "undone": True,
            "created_at": WHEN,
        }
    ]


def test_the_markdown_export_is_a_transcript():
    document = exports.as_markdown(export())
    assert document.media_type == "text/markdown; charset=utf-8"
    text = document.text
    assert text.startswith("# Fix the bug\n\n- Session: `s-1`\n")
    assert f"## 0. User (coder) · {WHEN} · undone\n\nread a.py\n" in text
    assert (
        f"## 1. Assistant (coder) · {WHEN}\n\nReading it.\n\n"
        "Tool call `read_file` (`c1`):\n\n"
        '```json\n{\n  "path": "a.py",\n  "start_line": 3\n}\n```\n'
    ) in text
    assert "## 2. Tool result: read_file\n\n```text\nprint('hi')\n```\n" in text
    assert "## 3. Assistant (coder)\n\nIt prints.\n" in text
    assert f"- {WHEN} orchestrator → coder: code" in text
    assert "- turn 0 (undone): `a.py` (modified)" in text


def test_a_long_tool_result_is_cut_with_a_note_and_fences_outlast_backticks():
    long = "````\n" + "x" * 5000
    text = exports.as_markdown(export(result=long)).text
    shown = long[: exports.MAX_RESULT_CHARS]
    assert f"`````text\n{shown}\n`````\n" in text
    assert "x" * (exports.MAX_RESULT_CHARS + 1) not in text
    assert "_(result cut: the first 2,000 of 5,005 characters;" in text


def test_an_untitled_empty_session_still_exports():
    empty = pb.ExportSessionResponse(session=pb.Session(session_id="s-2", agent="orchestrator"))
    assert exports.as_markdown(empty).text == (
        "# Untitled session\n\n- Session: `s-2`\n- Created: unknown\n"
        "- Agent: orchestrator\n- Messages: 0\n"
    )
    assert exports.as_json(empty)["messages"] == []
