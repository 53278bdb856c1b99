"""Client profiles (gateway/profiles.py): the table, the frames both ways,
the Converse options, the socket's lifetime, the REST views' shape; and one IDE connection end to
end through the gateway in front of the scripted runtime."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from google.protobuf import struct_pb2
from websockets.asyncio.client import connect

from gateway import rest, views
from gateway.__main__ import running_gateway
from gateway.config import GatewayConfig
from gateway.frames import parse_frame
from gateway.frames import response_to_frame as frame_for
from gateway.profiles import (
    BUILT_IN,
    CODELAB_IDE,
    CODELAB_IDE_TOOLS,
    STRICT,
    FrameShaper,
    Profiles,
)
from gateway.watchdog import Limits, Watch, decide
from mesh.config import ConfigError, load
from runtime.v1 import runtime_pb2 as pb
from tests.gateway.conftest import (
    FakeRuntime,
    JwksEndpoint,
    SigningKey,
    make_config,
    mint,
    receive,
)
from tests.support import eventually

IDE_CLIENT = "codelab-flutter-app"


def delta(seq: int, text: str) -> pb.ConverseResponse:
    return pb.ConverseResponse(seq=seq, assistant_delta=pb.AssistantDelta(text=text))


def done(seq: int) -> pb.ConverseResponse:
    return pb.ConverseResponse(
        seq=seq,
        turn_done=pb.TurnDone(
            status=pb.TURN_STATUS_COMPLETED, usage=pb.Usage(prompt_tokens=2, completion_tokens=3)
        ),
    )


def tool_call(seq: int, call_id: str, *, approval: bool) -> pb.ConverseResponse:
    arguments = struct_pb2.Struct()
    arguments.update({"path": "a.py", "content": "x"})
    return pb.ConverseResponse(
        seq=seq,
        tool_call=pb.ToolCall(
            call_id=call_id, tool_name="write_file", arguments=arguments, requires_approval=approval
        ),
    )


def opened(seq: int = 0) -> pb.ConverseResponse:
    return pb.ConverseResponse(
        seq=seq, session_opened=pb.SessionOpened(session_id="s", agent="coder", recovered=True)
    )


def refusal() -> pb.ConverseResponse:
    return pb.ConverseResponse(seq=0, error=pb.Error(code="turn_in_progress", message="busy"))


def plan(seq: int) -> pb.ConverseResponse:
    return pb.ConverseResponse(
        seq=seq,
        plan_update=pb.PlanUpdate(
            plan_id="p1",
            steps=[
                pb.PlanStep(id="1", description="read the code", status="done"),
                pb.PlanStep(id="2", description="write the fix", status="in_progress"),
                pb.PlanStep(id="3", description="run the tests", status="pending"),
            ],
            current_step="2",
        ),
    )


def shape(profile: Any, *responses: pb.ConverseResponse) -> list[dict[str, Any]]:
    shaper = FrameShaper(profile)
    frames = [frame for response in responses for frame in shaper.outgoing(response)]
    return frames + shaper.flush()


# -- the table -----------------------------------------------------------------


def test_the_ide_client_gets_its_profile_by_default_and_everyone_else_strict() -> None:
    profiles = Profiles(GatewayConfig(internal_api_key="k").client_profiles)
    assert profiles.for_client(IDE_CLIENT) is CODELAB_IDE
    assert profiles.for_client("codelab-ide") is STRICT
    assert profiles.for_client(None) is STRICT
    assert Profiles(("scripted=codelab-ide",)).for_client("scripted") is CODELAB_IDE
    assert Profiles(()).for_client(IDE_CLIENT) is STRICT


@pytest.mark.parametrize("value", ["codelab-flutter-app", "x=nosuch", "=strict", "x="])
def test_a_bad_profile_assignment_is_a_config_error(value: str) -> None:
    environ = {"GATEWAY__INTERNAL_API_KEY": "k", "GATEWAY__CLIENT_PROFILES": value}
    with pytest.raises(ConfigError, match="GATEWAY__CLIENT_PROFILES"):
        load(GatewayConfig, environ)


# -- runtime → client --------------------------------------------------------


def test_the_strict_profile_changes_no_frame() -> None:
    responses = [
        opened(),
        delta(1, "a"),
        refusal(),
        delta(2, "b"),
        tool_call(3, "c1", approval=True),
        tool_call(0, "c1", approval=True),
        plan(4),
        done(5),
    ]
    assert shape(STRICT, *responses) == [frame_for(r) for r in responses]


def test_the_ide_gets_one_bubble_per_answer_and_no_empty_final_one() -> None:
    frames = shape(
        CODELAB_IDE,
        opened(),
        delta(1, "I will "),
        delta(2, "write it."),
        tool_call(3, "c1", approval=True),
        delta(5, "Written"),
        delta(6, "."),
        done(7),
    )
    assert frames[0] == {
        "type": "assistant_message",
        "token": "I will write it.",
        "content": "I will write it.",
        "is_final": False,
        "seq": 2,
    }
    assert frames[1]["type"] == "tool_call"
    assert frames[2]["content"] == "Written."
    assert frames[2]["is_final"] is True
    assert frames[2]["seq"] == 7
    assert frames[2]["metadata"]["status"] == "completed"
    assert len(frames) == 3  # no session_info, no empty final frame

    # The context meter rides on the IDE's final bubble (its decoder ignores
    # keys it does not know); a summary's frame is not one of its bubbles.
    final = done(9)
    final.turn_done.context.CopyFrom(pb.ContextUsage(tokens=900, window=4000, percent=23))
    summary = pb.ContextCondensed(summary="s", messages_replaced=4)
    frames = shape(
        CODELAB_IDE, pb.ConverseResponse(seq=8, context_condensed=summary), delta(8, "ok"), final
    )
    assert [(f["type"], f.get("context")) for f in frames] == [
        ("assistant_message", {"tokens": 900, "window": 4000, "percent": 23})
    ]

    # A turn that ends right after its tool call sends no empty bubble.
    assert shape(CODELAB_IDE, tool_call(1, "c1", approval=False), done(2)) == [
        frame_for(tool_call(1, "c1", approval=False))
    ]


def test_a_refusal_does_not_split_the_answer_and_an_answer_cut_off_is_sent_whole() -> None:
    frames = shape(CODELAB_IDE, delta(1, "a"), refusal(), delta(2, "b"))
    assert [f["type"] for f in frames] == ["error", "assistant_message"]
    assert frames[1]["content"] == "ab"


def test_the_ide_sees_a_plan_as_markdown_and_no_progress_frames() -> None:
    progress = pb.ConverseResponse(
        seq=5, plan_progress=pb.PlanProgress(plan_id="p1", step_id="1", status="done")
    )
    (message,) = shape(CODELAB_IDE, progress, plan(6))
    assert message["type"] == "assistant_message"
    assert message["content"] == (
        "**Plan**\n\n- [x] read the code\n- [ ] write the fix (in progress)\n- [ ] run the tests"
    )


def test_calls_awaiting_approval_offered_again_are_left_to_the_ides_restore() -> None:
    frames = shape(
        CODELAB_IDE, tool_call(0, "w1", approval=True), tool_call(0, "r1", approval=False)
    )
    assert [f["call_id"] for f in frames] == ["r1"]


# -- client → runtime ----------------------------------------------------------


def incoming(profile: Any, frame: dict[str, Any]) -> pb.ConverseRequest:
    action = parse_frame(json.dumps(frame))
    assert isinstance(action, pb.ConverseRequest)
    return FrameShaper(profile).incoming(action)


# What the IDE sends: MessageModel.toJson() writes every field, null or not.
IDE_FRAME = dict.fromkeys(
    (
        "content",
        "role",
        "is_final",
        "call_id",
        "tool_name",
        "arguments",
        "requires_approval",
        "result",
        "error",
        "agent_type",
        "from_agent",
        "to_agent",
        "reason",
        "metadata",
    )
)


@pytest.mark.parametrize(
    "error",
    ["Операция отклонена: write_file", "User rejected: not now", "User rejected: User cancelled"],
)
def test_the_ides_rejection_reaches_the_runtime_as_a_rejection(error: str) -> None:
    frame = {**IDE_FRAME, "type": "tool_result", "call_id": "c1", "tool_name": "w", "error": error}
    action = incoming(CODELAB_IDE, frame)
    assert action.WhichOneof("event") == "approval_decision"
    decision = action.approval_decision
    assert (decision.call_id, decision.decision, decision.feedback) == (
        "c1",
        pb.DECISION_REJECT,
        error,
    )
    # Our own clients' errors are errors.
    assert incoming(STRICT, frame).WhichOneof("event") == "tool_result"


def test_other_ide_results_and_errors_go_on_as_they_are() -> None:
    failed = {**IDE_FRAME, "type": "tool_result", "call_id": "c1", "error": "Ошибка выполнения"}
    assert incoming(CODELAB_IDE, failed).tool_result.error == "Ошибка выполнения"
    ran = {**IDE_FRAME, "type": "tool_result", "call_id": "c1", "result": {"success": True}}
    assert incoming(CODELAB_IDE, ran).tool_result.HasField("result")


def test_the_ides_switch_label_runs_no_turn_and_its_agent_names_are_ours() -> None:
    frame = {
        **IDE_FRAME,
        "type": "switch_agent",
        "agent_type": "code",
        "content": "Switched to Coder",
    }
    switch = incoming(CODELAB_IDE, frame).switch_agent
    assert (switch.agent_type, switch.content) == ("coder", "")
    strict = incoming(STRICT, frame).switch_agent
    assert (strict.agent_type, strict.content) == ("code", "Switched to Coder")


def test_the_opening_carries_what_the_runtime_must_know() -> None:
    ide = CODELAB_IDE.opening("s", 4)
    assert ide.approval == pb.APPROVAL_MODE_TOOL_RESULT
    assert set(ide.client_tools) == CODELAB_IDE_TOOLS
    assert ide.resume_after_seq == 4
    strict = STRICT.opening("s")
    assert strict == pb.OpenSession(session_id="s", approval=pb.APPROVAL_MODE_DECISION)
    assert not strict.HasField("resume_after_seq")


# -- the socket's lifetime ------------------------------------------------------

LIMITS = Limits(idle_timeout=60, ping_interval=20, ping_timeout=20)


def verdict(profile: Any, *, revoked: bool = False) -> Any:
    """A token expired 100 s ago, no frame for 100 s, a pong 5 s ago."""
    now, wall = 1000.0, 50_000.0
    expires_at, last_activity = profile.lifetime(wall - 100, now - 100, now - 5)
    watch = Watch(
        revoked=revoked,
        expires_at=expires_at,
        last_activity=last_activity,
        next_ping=now + 15,
        ping_sent=now - 5,
        pong_pending=False,
    )
    return decide(watch, LIMITS, wall=wall, now=now)


def test_the_ide_reads_the_agents_as_a_bare_list_and_every_other_view_as_ours() -> None:
    agents = views.agents(
        pb.ListAgentsResponse(agents=[pb.Agent(name="coder"), pb.Agent(name="ask")])
    )
    assert CODELAB_IDE.rest_body("list_agents", agents) == agents["agents"]
    assert STRICT.rest_body("list_agents", agents) is agents
    current = views.current_agent(pb.GetCurrentAgentResponse(session_id="s", agent="coder"))
    for name in set(rest.VIEWS) - {"list_agents"}:
        assert CODELAB_IDE.rest_body(name, current) is current
    for profile in BUILT_IN.values():  # each names real views
        assert set(profile.rest_lists) <= set(rest.VIEWS)


def test_the_ides_socket_outlives_its_token_and_idles_not_while_it_pongs() -> None:
    assert verdict(STRICT).close is not None
    assert verdict(STRICT).close.code == 1008
    kept = verdict(CODELAB_IDE)
    assert kept.close is None
    assert 0 < kept.next_check <= 15
    assert verdict(CODELAB_IDE, revoked=True).close.code == 4001


# -- one IDE connection through the gateway -----------------------------------


async def test_an_ide_connection_is_served_by_its_profile(
    runtime: tuple[FakeRuntime, int], jwks_endpoint: JwksEndpoint, rsa_key: SigningKey
) -> None:
    fake, port = runtime
    config = make_config(jwks_endpoint, port, jwt_leeway=0)
    async with running_gateway(config) as gateway:
        # Two to three seconds left: the handshake must not meet the expiry
        # (``+ 1`` left as little as a few milliseconds past a whole second).
        expires = int(time.time()) + 3
        token = mint(rsa_key, client_id=IDE_CLIENT, exp=expires)
        url = f"ws://127.0.0.1:{gateway.port}/ws/ide-session"
        async with connect(url, subprotocols=["bearer", token]) as ws:  # type: ignore[list-item]
            opening = await fake.next_request()
            assert opening.open.approval == pb.APPROVAL_MODE_TOOL_RESULT
            assert set(opening.open.client_tools) == CODELAB_IDE_TOOLS
            # The token expires; the socket stays.
            await eventually(lambda: time.time() > expires + 0.5)
            await ws.send(json.dumps({**IDE_FRAME, "type": "user_message", "content": "hello"}))
            answer = await receive(ws)
            assert answer["type"] == "assistant_message"
            assert answer["content"] == "echo: hello!"
            assert answer["is_final"] is True


def test_the_ide_reads_the_diff_it_approves_in_the_reason() -> None:
    """ToolApprovalDialog shows `reason` and the raw arguments, not `metadata`."""
    diff = "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    offered = pb.ConverseResponse(
        seq=3,
        tool_call=pb.ToolCall(
            call_id="c1.2",
            tool_name="write_file",
            requires_approval=True,
            reason="apply_diff changes the workspace",
            metadata=pb.ToolCallMetadata(diff=diff, parent_call_id="c1", parent_tool="apply_diff"),
        ),
    )
    (ide,) = shape(CODELAB_IDE, offered)
    assert ide["reason"] == f"apply_diff changes the workspace\n\n{diff}"
    (strict,) = shape(STRICT, offered)
    assert strict["reason"] == "apply_diff changes the workspace"
    assert strict["metadata"]["diff"] == diff


def test_an_approval_the_ide_restores_from_rest_carries_its_diff_in_the_reason() -> None:
    diff = "--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    response = pb.ListPendingApprovalsResponse(session_id="s")
    response.approvals.add(
        call_id="c1.2",
        tool_name="write_file",
        reason="apply_diff changes the workspace",
        metadata=pb.ToolCallMetadata(diff=diff, parent_call_id="c1", parent_tool="apply_diff"),
    )
    response.approvals.add(call_id="c2", tool_name="execute_command", reason="runs a command")
    ours = views.pending_approvals(response)
    assert ours["pending_approvals"][0]["metadata"]["diff"] == diff
    assert "metadata" not in ours["pending_approvals"][1]
    ide = CODELAB_IDE.rest_body("approvals", views.pending_approvals(response))
    assert isinstance(ide, dict)
    first, second = ide["pending_approvals"]
    assert first["reason"] == f"apply_diff changes the workspace\n\n{diff}"
    assert second["reason"] == "runs a command"
    assert STRICT.rest_body("approvals", ours) == views.pending_approvals(response)


def test_the_ide_is_not_shown_a_branch_made_by_rest_and_we_are() -> None:
    change = pb.ConverseResponse(
        seq=7, session_changed=pb.SessionChanged(reason="retry", session_id="s", branch=1)
    )
    assert shape(CODELAB_IDE, change) == []
    (shown,) = shape(STRICT, change)
    assert (shown["type"], shown["branch"]) == ("session_changed", 1)
