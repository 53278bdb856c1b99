"""IDE JSON frames ⇄ runtime protobuf, driven directly with no network."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest
from google.protobuf import struct_pb2

from gateway.errors import FrameError
from gateway.frames import (
    MAX_ENVIRONMENT_BYTES,
    MAX_ID_BYTES,
    MAX_MODEL_BYTES,
    MAX_NAME_BYTES,
    MAX_NESTING,
    MAX_NOTE_BYTES,
    MAX_PATH_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    PayloadLimits,
    Reauthenticate,
    encode,
    error_frame,
    last_seq_from_query,
    parse_frame,
    response_to_frame,
)
from runtime.v1 import runtime_pb2 as pb


def parse(frame: dict[str, Any]) -> Any:
    return parse_frame(json.dumps(frame))


def refused(text: str) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse_frame(text)
    return caught.value


# -- IDE → runtime -------------------------------------------------------


def test_user_message():
    request = parse({"type": "user_message", "content": "hello"})
    assert request == pb.ConverseRequest(user_message=pb.UserMessage(content="hello", role="user"))
    request = parse({"type": "user_message", "content": "x", "role": "system", "extra": 1})
    assert request.user_message.role == "system"


def test_tool_result_with_result_object():
    request = parse(
        {"type": "tool_result", "call_id": "c1", "result": {"content": "é", "lines": 3}}
    )
    assert request.tool_result.call_id == "c1"
    assert request.tool_result.WhichOneof("outcome") == "result"
    assert request.tool_result.result["content"] == "é"
    assert request.tool_result.result["lines"] == 3


def test_tool_result_with_error():
    request = parse({"type": "tool_result", "call_id": "c1", "error": "ENOENT", "result": None})
    assert request.tool_result.WhichOneof("outcome") == "error"
    assert request.tool_result.error == "ENOENT"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "tool_result", "call_id": "c1"},
        {"type": "tool_result", "call_id": "c1", "result": {}, "error": "x"},
    ],
)
def test_tool_result_needs_exactly_one_outcome(frame: dict[str, Any]):
    assert refused(json.dumps(frame)).code == "invalid_field"


def test_hitl_decisions():
    approve = parse({"type": "hitl_decision", "call_id": "c1", "decision": "approve"})
    assert approve.approval_decision.decision == pb.DECISION_APPROVE
    assert not approve.approval_decision.HasField("modified_arguments")
    edit = parse(
        {
            "type": "hitl_decision",
            "call_id": "c1",
            "decision": "edit",
            "modified_arguments": {"path": "a.md", "nested": {"k": [1, "two"]}},
            "feedback": "use a.md",
        }
    )
    assert edit.approval_decision.decision == pb.DECISION_EDIT
    assert edit.approval_decision.modified_arguments["nested"]["k"][1] == "two"
    assert edit.approval_decision.feedback == "use a.md"
    reject = parse({"type": "hitl_decision", "call_id": "c1", "decision": "reject"})
    assert reject.approval_decision.decision == pb.DECISION_REJECT
    assert not approve.approval_decision.always_allow
    always = parse(
        {"type": "hitl_decision", "call_id": "c1", "decision": "approve", "always_allow": True}
    )
    assert always.approval_decision.always_allow
    unset = {"type": "hitl_decision", "call_id": "c1", "decision": "approve", "always_allow": None}
    assert not parse(unset).approval_decision.always_allow


def test_edit_needs_modified_arguments():
    error = refused(json.dumps({"type": "hitl_decision", "call_id": "c", "decision": "edit"}))
    assert error.code == "missing_field"


def test_switch_agent():
    request = parse({"type": "switch_agent", "agent_type": "coder", "content": "go"})
    assert request.switch_agent == pb.SwitchAgent(agent_type="coder", content="go")


def test_plan_approval():
    request = parse(
        {"type": "plan_approval", "plan_id": "p", "decision": "reject", "feedback": "no"}
    )
    assert request.plan_approval == pb.PlanApproval(
        plan_id="p", decision=pb.DECISION_REJECT, feedback="no"
    )
    error = refused(json.dumps({"type": "plan_approval", "plan_id": "p", "decision": "edit"}))
    assert error.code == "invalid_field"


def test_cancel():
    assert parse({"type": "cancel"}) == pb.ConverseRequest(cancel=pb.Cancel())


def test_condense():
    assert parse({"type": "condense"}) == pb.ConverseRequest(condense=pb.Condense())


def test_the_final_frame_carries_the_context_meter_and_a_summary_its_own_frame():
    context = pb.ContextUsage(tokens=1843, window=32768, percent=6)
    final = frame(turn_done=pb.TurnDone(status=pb.TURN_STATUS_COMPLETED, context=context))
    assert final["is_final"] is True
    assert final["context"] == {"tokens": 1843, "window": 32768, "percent": 6}
    condensed = pb.ContextCondensed(
        summary="The user asked …", messages_replaced=240, tokens_before=1410, tokens_after=520
    )
    assert frame(context_condensed=condensed) == {
        "type": "context_condensed",
        "content": "The user asked …",
        "messages_replaced": 240,
        "tokens_before": 1410,
        "tokens_after": 520,
        "seq": 7,
    }


@pytest.mark.parametrize(
    "timestamp", [1_700_000_000, 1_700_000_000.5, "2023-11-14T22:13:20Z", "2023-11-14T22:13:20"]
)
def test_file_changed(timestamp: object):
    request = parse({"type": "file_changed", "path": "src/a.py", "timestamp": timestamp})
    assert request.file_changed.path == "src/a.py"
    moment = request.file_changed.timestamp.ToDatetime(tzinfo=UTC)
    assert int(moment.timestamp()) == 1_700_000_000


@pytest.mark.parametrize("timestamp", ["yesterday", True, [1], 1e300])
def test_file_changed_bad_timestamp(timestamp: object):
    frame = {"type": "file_changed", "path": "a", "timestamp": timestamp}
    assert refused(json.dumps(frame)).code == "invalid_field"


def test_environment():
    frame = {"type": "environment", "os": "Linux 6.8", "shell": "/bin/sh", "workspace_root": "/w"}
    reported = parse(frame).environment
    assert (reported.os, reported.shell, reported.workspace_root) == ("Linux 6.8", "/bin/sh", "/w")
    partial = parse({"type": "environment", "os": "Windows 11", "shell": None}).environment
    assert (partial.os, partial.shell, partial.workspace_root) == ("Windows 11", "", "")
    assert refused(json.dumps({"type": "environment", "os": 11})).code == "invalid_field"


def test_auth_frame_is_a_gateway_action():
    assert parse({"type": "auth", "token": "abc"}) == Reauthenticate(token="abc")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type": "cancel", "x": NaN}', "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('"user_message"', "not_an_object"),
        ("{}", "missing_field"),
        ('{"type": 3}', "invalid_field"),
        ('{"type": "shell"}', "unknown_type"),
        ('{"type": "user_message"}', "missing_field"),
        ('{"type": "user_message", "content": null}', "missing_field"),
        ('{"type": "user_message", "content": 5}', "invalid_field"),
        ('{"type": "user_message", "content": "  "}', "invalid_field"),
        ('{"type": "user_message", "content": "x", "role": 1}', "invalid_field"),
        ('{"type": "tool_result", "result": {}}', "missing_field"),
        ('{"type": "tool_result", "call_id": "c", "result": "text"}', "invalid_field"),
        ('{"type": "hitl_decision", "call_id": "c", "decision": "maybe"}', "invalid_field"),
        ('{"type": "hitl_decision", "call_id": "c"}', "missing_field"),
        (
            '{"type": "hitl_decision", "call_id": "c", "decision": "approve", '
            '"always_allow": "yes"}',
            "invalid_field",
        ),
        (
            '{"type": "hitl_decision", "call_id": "c", "decision": "edit", '
            '"modified_arguments": []}',
            "invalid_field",
        ),
        ('{"type": "switch_agent"}', "missing_field"),
        ('{"type": "plan_approval", "decision": "approve"}', "missing_field"),
        ('{"type": "file_changed", "path": "a"}', "missing_field"),
        ('{"type": "auth"}', "missing_field"),
    ],
)
def test_invalid_frames(text: str, code: str):
    error = refused(text)
    assert error.code == code
    assert error.message


# -- runtime → IDE -------------------------------------------------------


def frame(**event: Any) -> dict[str, Any]:
    result = response_to_frame(pb.ConverseResponse(seq=7, **event))
    assert result is not None
    assert result["seq"] == 7
    return result


def test_session_opened():
    assert frame(
        session_opened=pb.SessionOpened(
            session_id="s1", agent="coder", created=True, recovered=True, last_seq=41
        )
    ) == {
        "type": "session_info",
        "content": "",
        "metadata": {
            "session_id": "s1",
            "agent": "coder",
            "created": True,
            "recovered": True,
            "last_seq": 41,
        },
        "seq": 7,
    }


def test_assistant_delta():
    assert frame(assistant_delta=pb.AssistantDelta(text="Hel")) == {
        "type": "assistant_message",
        "token": "Hel",
        "content": "Hel",
        "is_final": False,
        "seq": 7,
    }


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (pb.TURN_STATUS_COMPLETED, "completed"),
        (pb.TURN_STATUS_CANCELLED, "cancelled"),
        (pb.TURN_STATUS_FAILED, "failed"),
        (pb.TURN_STATUS_AWAITING_TOOLS, "awaiting_tools"),
        (pb.TURN_STATUS_UNSPECIFIED, "unspecified"),
    ],
)
def test_turn_done(status: pb.TurnStatus.ValueType, name: str):
    usage = pb.Usage(prompt_tokens=10, completion_tokens=5)
    assert frame(turn_done=pb.TurnDone(status=status, usage=usage)) == {
        "type": "assistant_message",
        "token": "",
        "content": "",
        "is_final": True,
        "metadata": {
            "status": name,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        },
        "seq": 7,
    }


def test_tool_call_arguments_keep_integers():
    arguments = struct_pb2.Struct()
    arguments.update({"path": "a.py", "start": 3, "ratio": 0.5, "nested": {"lines": [1, 2.5]}})
    assert frame(
        tool_call=pb.ToolCall(
            call_id="c1",
            tool_name="read_file",
            arguments=arguments,
            requires_approval=True,
            reason="writes",
        )
    ) == {
        "type": "tool_call",
        "call_id": "c1",
        "tool_name": "read_file",
        "arguments": {"path": "a.py", "start": 3, "ratio": 0.5, "nested": {"lines": [1, 2.5]}},
        "requires_approval": True,
        "reason": "writes",
        "seq": 7,
    }


def test_agent_switched():
    assert frame(
        agent_switched=pb.AgentSwitched(
            from_agent="orchestrator", to_agent="coder", reason="code", confidence=0.8, content="hi"
        )
    ) == {
        "type": "agent_switched",
        "from_agent": "orchestrator",
        "to_agent": "coder",
        "reason": "code",
        "confidence": 0.8,
        "content": "hi",
        "seq": 7,
    }


def test_plan_update_and_progress():
    update = pb.PlanUpdate(
        plan_id="p",
        steps=[pb.PlanStep(id="1", description="read", status="done")],
        current_step="1",
        requires_approval=True,
    )
    assert frame(plan_update=update) == {
        "type": "plan_update",
        "plan_id": "p",
        "steps": [{"id": "1", "desc": "read", "status": "done"}],
        "current_step": "1",
        "metadata": {"requires_approval": True},
        "seq": 7,
    }
    progress = pb.PlanProgress(plan_id="p", step_id="1", result="ok", status="done")
    assert frame(plan_progress=progress) == {
        "type": "plan_progress",
        "plan_id": "p",
        "step_id": "1",
        "result": {"text": "ok"},
        "status": "done",
        "seq": 7,
    }


def test_error():
    error = pb.Error(code="llm_unavailable", message="try later", retryable=True)
    assert frame(error=error) == {
        "type": "error",
        "content": "try later",
        "error": "try later",
        "code": "llm_unavailable",
        "metadata": {"retryable": True},
        "seq": 7,
    }


def test_gateway_error_frame_has_no_seq():
    assert error_frame("invalid_json", "bad")["seq"] is None


def test_empty_event_is_skipped():
    assert response_to_frame(pb.ConverseResponse(seq=1)) is None


def test_encode_is_compact_utf8():
    assert encode({"type": "x", "content": "привет"}) == '{"type":"x","content":"привет"}'


def test_round_trip_of_file_content_is_exact():
    content = "line 1\n\tline 2 — ünïcode ✓\n"
    request = parse({"type": "tool_result", "call_id": "c", "result": {"content": content}})
    assert request.tool_result.result["content"] == content


@pytest.mark.parametrize("last_seq", [0, 7, 2**63 - 1])
def test_resume_frame(last_seq: int):
    request = parse_frame(json.dumps({"type": "resume", "last_seq": last_seq}))
    assert isinstance(request, pb.ConverseRequest)
    assert request.WhichOneof("event") == "resume"
    assert request.resume.after_seq == last_seq


@pytest.mark.parametrize(
    ("last_seq", "code"),
    [
        (None, "missing_field"),
        (-1, "invalid_field"),
        # The database keeps sequence numbers as signed 64-bit integers.
        (2**63, "invalid_field"),
        (2**64 - 1, "invalid_field"),
        (2**64, "invalid_field"),
        (10**30, "invalid_field"),
        (1.0, "invalid_field"),
        (1e300, "invalid_field"),
        ("3", "invalid_field"),
        (True, "invalid_field"),
        (False, "invalid_field"),
        ([1], "invalid_field"),
    ],
)
def test_resume_needs_an_integer_from_0_to_max_seq(last_seq: object, code: str):
    with pytest.raises(FrameError) as caught:
        parse_frame(json.dumps({"type": "resume", "last_seq": last_seq}))
    assert caught.value.code == code


def test_max_seq_is_what_a_signed_64_bit_column_holds():
    assert MAX_SEQ == 2**63 - 1


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), (str(2**63 - 1), 2**63 - 1)])
def test_last_seq_from_query(text: str, value: int):
    assert last_seq_from_query(text) == value


@pytest.mark.parametrize(
    "text",
    [str(2**63), str(2**64 - 1), "9" * 5000, "-1", "+1", "1.5", "1e3", "abc", "²", "٣", " 1", ""],
)
def test_last_seq_from_query_refuses_what_no_seq_can_be(text: str):
    assert last_seq_from_query(text) is None


# Every free-text field the runtime keeps or stores, with its bound; message
# content and tool_result payloads have PayloadLimits (below).
BOUNDED_FIELDS = [
    pytest.param(
        {"type": "file_changed", "timestamp": 1_700_000_000}, "path", MAX_PATH_BYTES, id="path"
    ),
    pytest.param({"type": "tool_result", "result": {}}, "call_id", MAX_ID_BYTES, id="result-call"),
    pytest.param(
        {"type": "hitl_decision", "decision": "approve"}, "call_id", MAX_ID_BYTES, id="hitl-call"
    ),
    pytest.param(
        {"type": "plan_approval", "decision": "approve"}, "plan_id", MAX_ID_BYTES, id="plan"
    ),
    pytest.param({"type": "switch_agent"}, "agent_type", MAX_NAME_BYTES, id="agent"),
    pytest.param({"type": "user_message", "content": "hi"}, "role", MAX_NAME_BYTES, id="role"),
    pytest.param(
        {"type": "switch_agent", "agent_type": "coder"}, "reason", MAX_NOTE_BYTES, id="reason"
    ),
    pytest.param(
        {"type": "hitl_decision", "call_id": "c", "decision": "reject"},
        "feedback",
        MAX_NOTE_BYTES,
        id="hitl-feedback",
    ),
    pytest.param(
        {"type": "plan_approval", "plan_id": "p", "decision": "reject"},
        "feedback",
        MAX_NOTE_BYTES,
        id="plan-feedback",
    ),
    pytest.param({"type": "environment"}, "os", MAX_ENVIRONMENT_BYTES, id="os"),
    pytest.param({"type": "environment"}, "shell", MAX_ENVIRONMENT_BYTES, id="shell"),
    pytest.param({"type": "environment"}, "workspace_root", MAX_PATH_BYTES, id="root"),
]


def _fill(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` with the other required fields its type needs."""
    needed = {"tool_result": "call_id", "hitl_decision": "call_id", "plan_approval": "plan_id"}
    required = needed.get(frame["type"])
    return {required: "x", **frame} if required else frame


@pytest.mark.parametrize(("frame", "field", "limit"), BOUNDED_FIELDS)
def test_free_text_fields_are_accepted_up_to_their_bound(
    frame: dict[str, Any], field: str, limit: int
):
    assert isinstance(parse(_fill({**frame, field: "a" * limit})), pb.ConverseRequest)
    # Counted in UTF-8 bytes: two-byte characters fill the bound at half the count.
    assert isinstance(parse(_fill({**frame, field: "é" * (limit // 2)})), pb.ConverseRequest)


@pytest.mark.parametrize(("frame", "field", "limit"), BOUNDED_FIELDS)
@pytest.mark.parametrize("excess", ["ascii", "utf-8", "huge"])
def test_free_text_fields_over_their_bound_are_refused(
    frame: dict[str, Any], field: str, limit: int, excess: str
):
    value = {"ascii": "a" * (limit + 1), "utf-8": "é" * (limit // 2 + 1), "huge": "a" * 100_000}[
        excess
    ]
    error = refused(json.dumps(_fill({**frame, field: value})))
    assert error.code == "invalid_field"
    assert error.message == f"{field!r} is longer than {limit} bytes"


def test_the_bounds_are_what_the_docs_say():
    assert (MAX_PATH_BYTES, MAX_ID_BYTES, MAX_NAME_BYTES, MAX_NOTE_BYTES) == (4096, 128, 64, 8192)
    assert MAX_ENVIRONMENT_BYTES == 256


def test_payloads_up_to_their_limits_pass_whole():
    big = "x" * 500_000
    assert parse({"type": "user_message", "content": big}).user_message.content == big
    request = parse({"type": "tool_result", "call_id": "c", "error": big})
    assert request.tool_result.error == big
    switch = parse({"type": "switch_agent", "agent_type": "coder", "content": big})
    assert switch.switch_agent.content == big
    limits = PayloadLimits(message=1000, tool_result=1000)
    exact = parse_frame(
        json.dumps({"type": "user_message", "content": "é" * 500}), limits
    )  # 1000 bytes of UTF-8
    assert exact.user_message.content == "é" * 500


def test_the_payload_limits_default_to_1_mib_below_the_runtimes_message_limit():
    assert PayloadLimits() == PayloadLimits(message=1024 * 1024, tool_result=1024 * 1024)
    assert MAX_PAYLOAD_BYTES < 4 * 1024 * 1024


def _tool_result(frame: dict[str, Any], limits: PayloadLimits) -> pb.ToolResult:
    request = parse_frame(json.dumps({"type": "tool_result", "call_id": "call_7", **frame}), limits)
    assert isinstance(request, pb.ConverseRequest)
    return request.tool_result


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"result": {"content": "x" * 5000}}, id="result"),
        pytest.param({"error": "x" * 5000}, id="error"),
        # 2 bytes a number in JSON, 11 in a Struct: small as a frame, large encoded.
        pytest.param({"result": {"n": [0] * 1000}}, id="numbers"),
    ],
)
def test_a_tool_result_over_its_limit_becomes_that_calls_error(frame: dict[str, Any]):
    result = _tool_result(frame, PayloadLimits(tool_result=4096))
    assert result.call_id == "call_7"
    assert not result.HasField("result")
    size = int(result.error.split()[4])
    assert size > 4096
    assert result.error.startswith(
        f"the tool result was {size} bytes, more than the limit of 4096 bytes"
    )
    assert "a line range of a file (start_line, end_line)" in result.error


def test_a_tool_result_at_its_limit_passes():
    content = "x" * 4000
    result = _tool_result({"result": {"content": content}}, PayloadLimits(tool_result=4096))
    assert result.ByteSize() <= 4096
    assert result.result["content"] == content


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        pytest.param({"type": "user_message", "content": "é" * 501}, "content", id="message"),
        pytest.param(
            {"type": "switch_agent", "agent_type": "coder", "content": "x" * 1001},
            "content",
            id="switch",
        ),
    ],
)
def test_message_content_over_its_limit_is_refused(frame: dict[str, Any], field: str):
    with pytest.raises(FrameError) as caught:
        parse_frame(json.dumps(frame), PayloadLimits(message=1000))
    assert caught.value.code == "invalid_field"
    assert caught.value.message == f"{field!r} is longer than 1000 bytes"


def test_edited_arguments_over_the_message_limit_are_refused():
    frame = {
        "type": "hitl_decision",
        "call_id": "c",
        "decision": "edit",
        "modified_arguments": {"path": "a.py", "content": "x" * 2000},
    }
    with pytest.raises(FrameError) as caught:
        parse_frame(json.dumps(frame), PayloadLimits(message=1000))
    assert (caught.value.code, caught.value.message) == (
        "invalid_field",
        "'modified_arguments' is larger than 1000 bytes",
    )
    assert parse_frame(json.dumps(frame), PayloadLimits(message=4000)).HasField("approval_decision")


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value} if depth else value


def test_forwarded_objects_nest_at_most_max_nesting_levels():
    ok = parse_frame(
        json.dumps({"type": "tool_result", "call_id": "c", "result": _nested(MAX_NESTING)})
    )
    assert isinstance(ok, pb.ConverseRequest)
    # What the gateway accepts, the runtime can parse.
    assert pb.ConverseRequest.FromString(ok.SerializeToString()) == ok
    with pytest.raises(FrameError, match="nested too deeply"):
        parse_frame(
            json.dumps({"type": "tool_result", "call_id": "c", "result": _nested(MAX_NESTING + 1)})
        )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"type": "cancel", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_deep_nesting_is_invalid_json_not_a_crash(text: str):
    with pytest.raises(FrameError) as caught:
        parse_frame(text)
    assert caught.value.code == "invalid_json"


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "user_message", "content": "\\ud800"}',
        '{"type": "tool_result", "call_id": "c", "result": {"\\udfff": 1}}',
        '{"type": "tool_result", "call_id": "c", "result": {"n": 1e999}}',
        '{"type": "tool_result", "call_id": "c", "result": {"n": 1' + "0" * 400 + "}}",
    ],
)
def test_values_protobuf_cannot_carry_are_refused(text: str):
    with pytest.raises(FrameError):
        parse_frame(text)


def test_set_model_names_a_group():
    assert parse({"type": "set_model", "model": "big"}) == pb.ConverseRequest(
        set_model=pb.SetModel(model="big")
    )
    assert refused(json.dumps({"type": "set_model"})).code == "missing_field"
    assert refused(json.dumps({"type": "set_model", "model": 4})).code == "invalid_field"
    too_long = json.dumps({"type": "set_model", "model": "m" * (MAX_MODEL_BYTES + 1)})
    assert refused(too_long).code == "invalid_field"


def test_undo_names_a_turn_or_none():
    assert parse({"type": "undo"}) == pb.ConverseRequest(undo=pb.Undo())
    assert parse({"type": "undo", "turn_id": "4"}) == pb.ConverseRequest(undo=pb.Undo(turn_id="4"))
    assert refused(json.dumps({"type": "undo", "turn_id": 4})).code == "invalid_field"
    assert refused(json.dumps({"type": "undo", "turn_id": "4" * 200})).code == "invalid_field"


def test_a_call_the_runtime_issued_carries_its_diff_and_parent():
    diff = "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    sent = frame(
        tool_call=pb.ToolCall(
            call_id="c1.2",
            tool_name="write_file",
            requires_approval=True,
            reason="apply_diff changes the workspace",
            metadata=pb.ToolCallMetadata(diff=diff, parent_call_id="c1", parent_tool="apply_diff"),
        )
    )
    assert sent["metadata"] == {"diff": diff, "parent_call_id": "c1", "parent_tool": "apply_diff"}
    assert sent["reason"] == "apply_diff changes the workspace"
    plain = frame(tool_call=pb.ToolCall(call_id="c2", tool_name="read_file"))
    assert "metadata" not in plain


def test_retry_may_keep_the_changes():
    assert parse({"type": "retry"}) == pb.ConverseRequest(retry=pb.Retry())
    assert parse({"type": "retry", "keep_changes": True}) == pb.ConverseRequest(
        retry=pb.Retry(keep_changes=True)
    )
    assert refused(json.dumps({"type": "retry", "keep_changes": "yes"})).code == "invalid_field"


def test_edit_message_names_a_position_and_new_content():
    assert parse({"type": "edit_message", "index": 2, "content": "again"}) == pb.ConverseRequest(
        edit_message=pb.EditMessage(index=2, content="again")
    )
    for bad, code in (
        ({"content": "x"}, "missing_field"),
        ({"index": 2}, "missing_field"),
        ({"index": 2, "content": "  "}, "invalid_field"),
        ({"index": -1, "content": "x"}, "invalid_field"),
        ({"index": True, "content": "x"}, "invalid_field"),
        ({"index": "2", "content": "x"}, "invalid_field"),
        ({"index": 2**31, "content": "x"}, "invalid_field"),
    ):
        assert refused(json.dumps({"type": "edit_message", **bad})).code == code
    limits = PayloadLimits(message=4)
    with pytest.raises(FrameError):
        parse_frame(json.dumps({"type": "edit_message", "index": 0, "content": "12345"}), limits)


def test_fork_names_the_last_message_or_none():
    assert parse({"type": "fork"}) == pb.ConverseRequest(fork=pb.Fork())
    assert parse({"type": "fork", "index": 0}) == pb.ConverseRequest(
        fork=pb.Fork(through_message=0)
    )
    assert refused(json.dumps({"type": "fork", "index": 1.5})).code == "invalid_field"
    assert refused(json.dumps({"type": "export"})).code == "unknown_type", "exports are REST"


def test_session_changed_names_the_branch_or_the_fork():
    change = pb.SessionChanged(reason="edit", session_id="s1", branch=2, from_message=4)
    assert response_to_frame(pb.ConverseResponse(seq=9, session_changed=change)) == {
        "type": "session_changed",
        "reason": "edit",
        "session_id": "s1",
        "branch": 2,
        "from_message": 4,
        "seq": 9,
    }
