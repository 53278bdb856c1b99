"""Issue 4's promises on real processes: nothing a user did is lost.

The package's mesh (started like ``./scripts/up``) provides auth and tokens;
for the restart tests this module runs its own runtime and gateway processes
(``stack``: on the package's llmproxy, against the mesh's auth), so it can
kill and restart them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ide.connection import IdeConnection
from llmproxy.offline import expected_reply_text
from mesh.grpc_server import internal_metadata
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.integration.conftest import Mesh, Stack
from tests.support import lease_released


@contextlib.asynccontextmanager
async def reconnected(
    url: str, session_id: str, token: str, last_seq: int | None = None
) -> AsyncIterator[IdeConnection]:
    """Connect as an IDE does after a restart: a 503 (not ready yet) is retried."""
    for _ in range(40):
        connection = IdeConnection(url, session_id, token, last_seq=last_seq)
        try:
            await connection.__aenter__()
        except InvalidStatus as refused:
            if refused.response.status_code != 503:  # only "try again" is retried
                raise
            await asyncio.sleep(0.1)
            continue
        try:
            yield connection
        finally:
            await connection.close()
        return
    raise AssertionError("the restarted service never took the connection")


async def frames_until_final(ide: IdeConnection) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ide.next_frame()
        frames.append(frame)
        if frame.get("is_final"):
            return frames


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(
        f["content"] for f in frames if f["type"] == "assistant_message" and not f["is_final"]
    )


@pytest.fixture
def session_id() -> str:
    return f"persist-{uuid.uuid4().hex[:10]}"


async def proposed_write(ide: IdeConnection) -> dict[str, Any]:
    """The write the runtime offers once the IDE has answered its read of the
    file's previous state (not found: a new file)."""
    while (read := await ide.next_frame())["type"] != "tool_call":
        pass
    assert (read["tool_name"], read["requires_approval"]) == ("read_file", False)
    error = f"File not found: {read['arguments']['path']}"
    await ide.send({"type": "tool_result", "call_id": read["call_id"], "error": error})
    write = await ide.next_frame()
    assert (write["type"], write["tool_name"]) == ("tool_call", "write_file")
    return write


async def drain_until_closed(ide: IdeConnection) -> None:
    while True:
        await ide.next_frame()


async def test_a_dropped_client_resumes_with_exactly_the_missed_events(
    mesh: Mesh, session_id: str
) -> None:
    async with IdeConnection(mesh.ws_url, session_id, mesh.token) as ide:
        await ide.next_frame()
        await ide.send_message("remember this")
        # One frame: deltas that queue behind a busy hop arrive merged, so a
        # few frames may already hold the whole answer.
        seen = [await ide.next_frame()]
    assert not seen[-1].get("is_final")
    # The connection dropped mid-answer; the turn goes on without it.
    cut = seen[-1]["seq"]
    async with IdeConnection(mesh.ws_url, session_id, mesh.token, last_seq=cut) as ide:
        info = await ide.next_frame()
        assert info["type"] == "session_info"
        assert info["metadata"]["recovered"] is True
        rest = await frames_until_final(ide)
    seqs = [f["seq"] for f in seen + rest]
    # Strictly increasing: no duplicate. Merged deltas skip numbers, so the
    # proof of "no gap" is the text: every token is there exactly once.
    assert seqs == sorted(set(seqs))
    assert text_of(seen + rest) == expected_reply_text("remember this")
    assert rest[-1]["metadata"]["status"] == "completed"


def numbered_text(frames: list[dict[str, Any]]) -> dict[int, str]:
    """The turn's text up to each seq a frame carried."""
    text, upto = "", {}
    for frame in frames:
        if frame["type"] == "assistant_message" and not frame["is_final"]:
            text += frame["content"]
        upto[frame["seq"]] = text
    return upto


def assert_same_turn(seen: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """``seen`` holds the events of ``sent`` under the same seqs. Each stream
    merges the text deltas that queue behind its own writes (the merged
    frame carries the last seq), so the two may split the text differently:
    at every seq both carry, the text so far must be the same."""
    assert text_of(seen) == text_of(sent)
    assert seen[-1]["seq"] == sent[-1]["seq"]
    assert seen[-1]["metadata"] == sent[-1]["metadata"]
    ours, theirs = numbered_text(seen), numbered_text(sent)
    shared = ours.keys() & theirs.keys()
    assert {seq: ours[seq] for seq in shared} == {seq: theirs[seq] for seq in shared}
    others = [(f["seq"], f["type"]) for f in seen if f["type"] != "assistant_message"]
    assert others == [(f["seq"], f["type"]) for f in sent if f["type"] != "assistant_message"]


async def test_idle_windows_see_each_others_turns_live(mesh: Mesh, session_id: str) -> None:
    """Windows on an idle session hold no runtime stream until they speak
    (attach on first frame); a turn one of them starts still reaches every
    other one live, whole and numbered alike, without any frame from it:
    both when the speaker was quiet too, and when it was attached already
    and the listener connected after its previous turn."""
    async with asyncio.timeout(45):
        async with (
            IdeConnection(mesh.ws_url, session_id, mesh.token) as first,
            IdeConnection(mesh.ws_url, session_id, mesh.token) as second,
        ):
            for ide in (first, second):
                announced = await ide.next_frame()
                assert announced["type"] == "session_info"
                assert announced["metadata"]["last_seq"] == 0
            await first.send_message("one")
            sent = await frames_until_final(first)
            assert text_of(sent) == expected_reply_text("one")
            seen = await frames_until_final(second)
            assert_same_turn(seen, sent)
            # The first window is attached now; a third connects quiet.
            async with IdeConnection(mesh.ws_url, session_id, mesh.token) as third:
                announced = await third.next_frame()
                assert announced["metadata"]["last_seq"] == sent[-1]["seq"]
                await first.send_message("two")
                sent = await frames_until_final(first)
                for ide in (second, third):
                    seen = await frames_until_final(ide)
                    assert_same_turn(seen, sent)
                    assert all(f["seq"] > announced["metadata"]["last_seq"] for f in seen)
                # And the woken one speaks on the stream it got.
                await third.send_message("three")
                own = await frames_until_final(third)
                assert_same_turn(await frames_until_final(first), own)
    assert "You said: three" in text_of(own)


async def test_the_gateway_restarts_and_clients_resume(stack: Stack, mesh: Mesh) -> None:
    session_id = f"gw-restart-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as ide:
        await ide.next_frame()
        await ide.send({"type": "switch_agent", "agent_type": "coder", "content": "before"})
        before = await frames_until_final(ide)
        assert stack.gateway.stop() == 0
        with pytest.raises(ConnectionClosed) as closed:
            await ide.next_frame()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012, "service restart: a retryable close"
    stack.gateway.start()
    last = before[-1]["seq"]
    async with reconnected(stack.ws_url, session_id, mesh.token, last_seq=last) as ide:
        info = await ide.next_frame()
        assert info["metadata"]["recovered"] is True
        await ide.send_message("after")
        after = await frames_until_final(ide)
    assert after[0]["seq"] == last + 1, "numbering continues, nothing replayed twice"
    assert text_of(after).startswith("You said: after")
    async with IdeConnection(stack.ws_url, session_id, mesh.token, last_seq=0) as ide:
        await ide.next_frame()
        replay = [await ide.next_frame() for _ in range(len(before) + len(after))]
    assert [f["seq"] for f in replay] == [f["seq"] for f in before + after]


async def test_a_runtime_killed_mid_turn_keeps_durable_history_and_pending_approvals(
    stack: Stack, mesh: Mesh
) -> None:
    approval_session = f"kill-a-{uuid.uuid4().hex[:8]}"
    streaming_session = f"kill-b-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(stack.ws_url, approval_session, mesh.token) as ide:
        await ide.next_frame()
        await ide.send_message("write kept.txt: survives")
        proposed = await proposed_write(ide)
        assert proposed["requires_approval"] is True
    async with IdeConnection(stack.ws_url, streaming_session, mesh.token) as ide:
        await ide.next_frame()
        await ide.send({"type": "switch_agent", "agent_type": "ask", "content": "a long answer"})
        seen = []
        while len([f for f in seen if f["type"] == "assistant_message"]) < 3:
            seen.append(await ide.next_frame())
        assert stack.runtime.stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(ConnectionClosed) as closed:
            await drain_until_closed(ide)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013, "runtime unavailable: try again later"
    stack.runtime.start()

    async with reconnected(stack.ws_url, approval_session, mesh.token) as ide:
        await ide.next_frame()
        reoffer = await ide.next_frame()
        assert reoffer["type"] == "tool_call"
        assert reoffer["call_id"] == proposed["call_id"]
        assert reoffer["requires_approval"] is True
        await ide.send(
            {"type": "hitl_decision", "call_id": reoffer["call_id"], "decision": "approve"}
        )
        execute = await ide.next_frame()
        assert execute["call_id"] == proposed["call_id"]
        assert execute["requires_approval"] is False
        await ide.send({"type": "tool_result", "call_id": execute["call_id"], "result": {"ok": 1}})
        finished = await frames_until_final(ide)
        assert finished[-1]["metadata"]["status"] == "completed"
        assert "write_file returned" in text_of(finished)

    deltas = [f["seq"] for f in seen if f["type"] == "assistant_message"]
    last, earlier = deltas[-1], deltas[-2]
    # A second window that saw one delta less reconnects first; neither
    # window's resume point may come to name another event.
    async with (
        IdeConnection(stack.ws_url, streaming_session, mesh.token, last_seq=earlier) as window,
        IdeConnection(stack.ws_url, streaming_session, mesh.token, last_seq=last) as ide,
    ):
        for client in (window, ide):
            info = await client.next_frame()
            assert info["metadata"]["recovered"] is True
        notice = await window.next_frame()
        interrupted = await ide.next_frame()
        assert interrupted["type"] == "error"
        assert interrupted["code"] == "turn_interrupted"
        assert interrupted["metadata"]["retryable"] is True
        assert interrupted["seq"] > last, "numbered after every seq the lost deltas had"
        assert (notice["code"], notice["seq"]) == ("turn_interrupted", interrupted["seq"])
        final = await ide.next_frame()
        assert final["is_final"] is True
        assert final["metadata"]["status"] == "failed"
        # The user retries; the session works.
        await ide.send({"type": "switch_agent", "agent_type": "coder", "content": "retry"})
        retried = await frames_until_final(ide)
        assert retried[-1]["metadata"]["status"] == "completed"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.runtime_port}") as channel:
        history = await runtime_pb2_grpc.AgentRuntimeServiceStub(channel).GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id=streaming_session),
            metadata=internal_metadata(mesh.internal_key, user=user_of(mesh.token)),
        )
    contents = [(m.role, m.content) for m in history.messages]
    assert contents[0] == ("user", "a long answer"), "durable history survived SIGKILL"
    assert ("user", "retry") in contents
    assert contents[-1][0] == "assistant"


async def test_an_approved_write_is_offered_again_after_a_drop_and_after_a_kill(
    stack: Stack, mesh: Mesh
) -> None:
    """The human approves a write and the IDE drops before running it: the
    session leaves the runtime's memory, then the runtime itself is killed.
    Each time the IDE comes back it is asked to run the approved call, once
    and without a second approval; its result finishes the turn."""
    session_id = f"approved-{uuid.uuid4().hex[:8]}"
    async with IdeConnection(stack.ws_url, session_id, mesh.token) as ide:
        await ide.next_frame()
        await ide.send_message("write kept.txt: survives")
        proposed = await proposed_write(ide)
        assert proposed["requires_approval"] is True
        await ide.send(
            {"type": "hitl_decision", "call_id": proposed["call_id"], "decision": "approve"}
        )
        execute = await ide.next_frame()
        assert execute["type"] == "tool_call"
        assert execute["requires_approval"] is False
    await lease_released(stack.database, session_id)

    async with IdeConnection(stack.ws_url, session_id, mesh.token, last_seq=execute["seq"]) as ide:
        info = await ide.next_frame()
        assert info["metadata"]["recovered"] is True
        # Before the fix the call was lost here: nothing came.
        reoffer = await asyncio.wait_for(ide.next_frame(), 30)
        assert reoffer["type"] == "tool_call"
        assert reoffer["call_id"] == proposed["call_id"]
        assert reoffer["requires_approval"] is False
        assert reoffer["arguments"] == execute["arguments"]
        assert stack.runtime.stop(signal.SIGKILL) == -signal.SIGKILL
        with pytest.raises(ConnectionClosed):
            await drain_until_closed(ide)
    stack.runtime.start()

    async with reconnected(stack.ws_url, session_id, mesh.token, execute["seq"]) as ide:
        await ide.next_frame()
        reoffer = await asyncio.wait_for(ide.next_frame(), 30)
        assert reoffer["type"] == "tool_call"
        assert reoffer["call_id"] == proposed["call_id"]
        assert reoffer["requires_approval"] is False
        assert reoffer["arguments"] == execute["arguments"]
        await ide.send({"type": "tool_result", "call_id": reoffer["call_id"], "result": {"ok": 1}})
        finished = await frames_until_final(ide)
        assert finished[-1]["metadata"]["status"] == "completed"
        assert "write_file returned" in text_of(finished)
        assert not [f for f in finished if f["type"] == "error"], "the result was taken"
        await ide.send({"type": "tool_result", "call_id": reoffer["call_id"], "result": {}})
        late = await ide.next_frame()
        assert late["type"] == "error"
        assert late["code"] == "duplicate_tool_result"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.runtime_port}") as channel:
        history = await runtime_pb2_grpc.AgentRuntimeServiceStub(channel).GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id=session_id),
            metadata=internal_metadata(mesh.internal_key, user=user_of(mesh.token)),
        )
    # History holds the model's call, answered once; the IDE's calls served it.
    (result,) = [m for m in history.messages if m.role == "tool"]
    assert proposed["call_id"] == f"{result.tool_call_id}.2"


def user_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])
