"""ExportSession and ForkSession on the real runtime, on each database."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from mesh.grpc_server import internal_metadata
from runtime.v1 import runtime_pb2
from tests.runtime.test_service import (  # noqa: F401 - fixtures
    KEY,
    database_url,
    open_stream,
    proxy,
    read_first,
    read_until,
    runtime_channel,
    stub_for,
    user_message,
)

ALICE = internal_metadata(KEY, user="alice")
BOB = internal_metadata(KEY, user="bob")


async def a_session_waiting_on_a_call(channel: grpc.aio.Channel) -> object:
    """``ops-1``: a finished turn, then a turn whose ``write_file`` waits for
    approval; the stream stays open, so the session is live here."""
    call, _ = await open_stream(channel, "ops-1")
    await call.write(user_message("hello"))
    await read_until(call, "turn_done")
    await call.write(user_message("write notes.txt"))
    proposed = await read_first(call, "notes.txt")
    assert proposed.requires_approval
    return call


async def test_an_export_is_the_whole_session_and_owner_scoped(
    runtime_channel: grpc.aio.Channel,  # noqa: F811
) -> None:
    stub = stub_for(runtime_channel)
    call = await a_session_waiting_on_a_call(runtime_channel)
    export = await stub.ExportSession(
        runtime_pb2.ExportSessionRequest(session_id="ops-1"), metadata=ALICE
    )
    assert (export.session.session_id, export.session.title) == ("ops-1", "hello")
    assert (export.session.agent, export.session.message_count) == ("coder", 4)
    assert [(m.role, m.content) for m in export.messages] == [
        ("user", "hello"),
        ("assistant", "one two three"),
        ("user", "write notes.txt"),
        ("assistant", ""),
    ]
    (write,) = export.messages[3].tool_calls
    assert write.tool_name == "write_file"
    assert json_format.MessageToDict(write.arguments) == {"path": "notes.txt", "content": "x"}
    history = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id="ops-1"), metadata=ALICE
    )
    assert list(export.messages) == list(history.messages)
    assert list(export.agent_switches) == list(history.agent_switches)
    assert [s.to_agent for s in export.agent_switches] == ["coder"]
    assert list(export.turns) == [], "no file was changed"
    for who, code in ((BOB, grpc.StatusCode.PERMISSION_DENIED), (ALICE, None)):
        request = runtime_pb2.ExportSessionRequest(session_id="ops-1" if code else "nope")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExportSession(request, metadata=who)
        assert refused.value.code() == (code or grpc.StatusCode.NOT_FOUND)
        assert "hello" not in (refused.value.details() or "")
    call.cancel()


async def test_a_fork_copies_a_prefix_never_cuts_a_call_and_takes_new_turns(
    runtime_channel: grpc.aio.Channel,  # noqa: F811
) -> None:
    stub = stub_for(runtime_channel)
    source_call = await a_session_waiting_on_a_call(runtime_channel)
    source = list(
        (
            await stub.GetSessionHistory(
                runtime_pb2.GetSessionHistoryRequest(session_id="ops-1"), metadata=ALICE
            )
        ).messages
    )

    with pytest.raises(grpc.aio.AioRpcError) as open_call:
        await stub.ForkSession(
            runtime_pb2.ForkSessionRequest(session_id="ops-1", through_message=3), metadata=ALICE
        )
    assert open_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without its result; fork through message 2" in (open_call.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as past:
        await stub.ForkSession(
            runtime_pb2.ForkSessionRequest(session_id="ops-1", through_message=9), metadata=ALICE
        )
    assert past.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for who, session_id, code in (
        (BOB, "ops-1", grpc.StatusCode.PERMISSION_DENIED),
        (ALICE, "nope", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ForkSession(
                runtime_pb2.ForkSessionRequest(session_id=session_id), metadata=who
            )
        assert refused.value.code() == code
    bobs = await stub.ListSessions(runtime_pb2.ListSessionsRequest(), metadata=BOB)
    assert list(bobs.sessions) == []

    first = (
        await stub.ForkSession(
            runtime_pb2.ForkSessionRequest(session_id="ops-1", through_message=1), metadata=ALICE
        )
    ).session
    assert (first.title, first.agent, first.message_count) == ("hello (fork)", "coder", 2)
    assert first.session_id.startswith("s-")
    assert len(first.session_id) == 2 + 32, "128 random bits, as CreateSession"
    whole = (
        await stub.ForkSession(runtime_pb2.ForkSessionRequest(session_id="ops-1"), metadata=ALICE)
    ).session
    assert whole.message_count == 3, "the waiting call's message is left out"
    for fork, length in ((first, 2), (whole, 3)):
        copied = await stub.GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id=fork.session_id), metadata=ALICE
        )
        assert list(copied.messages) == source[:length]
        assert list(copied.agent_switches) == []
        pending = await stub.ListPendingApprovals(
            runtime_pb2.ListPendingApprovalsRequest(session_id=fork.session_id), metadata=ALICE
        )
        assert list(pending.approvals) == []

    call, opened = await open_stream(runtime_channel, first.session_id)
    assert (opened.session_opened.created, opened.session_opened.last_seq) == (False, 0)
    assert opened.session_opened.agent == "coder"
    await call.write(user_message("and now?"))
    turn = await read_until(call, "turn_done")
    assert [r.seq for r in turn] == list(range(1, len(turn) + 1)), "its log starts at seq 1"
    call.cancel()
    after = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id=first.session_id), metadata=ALICE
    )
    assert list(after.messages)[:2] == source[:2]
    assert [(m.role, m.content) for m in after.messages[2:]] == [
        ("user", "and now?"),
        ("assistant", "one two three"),
    ]
    unchanged = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id="ops-1"), metadata=ALICE
    )
    assert list(unchanged.messages) == source
    source_call.cancel()
