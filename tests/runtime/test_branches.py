"""Retry, edit and fork on the real runtime, on each database: the history
branches and nothing is destroyed; a re-run over file changes not undone is
refused; the branches outlive a restart; everything is owner-scoped.

The rules without I/O (where a re-run starts, which changes refuse it) first.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mesh.grpc_server import internal_metadata
from runtime import branches
from runtime.__main__ import RuntimeConfig
from runtime.errors import InvalidArgument
from runtime.llm import ChatMessage
from runtime.prompts import NOTICE_MARK
from runtime.records import Checkpoint
from runtime.v1 import runtime_pb2
from tests.runtime.test_service import (  # noqa: F401 - fixtures
    KEY,
    ScriptedProxy,
    database_url,
    open_stream,
    proxy,
    read_first,
    read_until,
    running_runtime,
    runtime_channel,
    stub_for,
    user_message,
)

ALICE = internal_metadata(KEY, user="alice")
BOB = internal_metadata(KEY, user="bob")


def chat(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=role, content=content) for role, content in pairs]


HISTORY = chat(
    ("user", "hello"),
    ("assistant", "hi"),
    ("user", f"{NOTICE_MARK} These files changed in the editor: a.py."),
    ("user", "fix a.py"),
    ("assistant", "done"),
    ("user", "/undo 3"),
    ("assistant", "Undo: Restored: a.py."),
)


def test_a_retry_runs_the_last_message_the_user_typed() -> None:
    assert branches.retry_position(HISTORY) == 3, "not the notice, not the undo"
    with pytest.raises(branches.NothingToRerun):
        branches.retry_position(chat(("user", "/undo 0"), ("assistant", "Undo: …")))


def test_only_a_message_the_user_typed_can_be_edited() -> None:
    assert branches.edit_position(HISTORY, 0) == 0
    for index in (1, 2, 5, 7, 99):
        with pytest.raises(InvalidArgument) as refused:
            branches.edit_position(HISTORY, index)
        assert str(refused.value).endswith("yours are at 0, 3")


def test_a_rerun_over_changes_not_undone_names_what_to_undo() -> None:
    rows = [
        Checkpoint(0, "a.py", "a0", "a1", id=1),
        Checkpoint(3, "b.py", None, "b1", id=2),
        Checkpoint(5, "a.py", "a1", "a0", id=3, undone=True),
    ]
    branches.check_changes(rows, 4)  # only an undone change from there on
    with pytest.raises(branches.ChangesNotUndone) as refused:
        branches.check_changes(rows, 1)
    assert "b.py (created)" in str(refused.value)
    assert "a.py" not in str(refused.value)
    assert "undo with turn_id 3" in str(refused.value)


def retry(keep_changes: bool = False) -> runtime_pb2.ConverseRequest:
    return runtime_pb2.ConverseRequest(retry=runtime_pb2.Retry(keep_changes=keep_changes))


def edit(index: int, content: str, keep_changes: bool = False) -> runtime_pb2.ConverseRequest:
    return runtime_pb2.ConverseRequest(
        edit_message=runtime_pb2.EditMessage(
            index=index, content=content, keep_changes=keep_changes
        )
    )


async def history(stub: Any, session_id: str) -> list[tuple[str, str]]:
    response = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id=session_id), metadata=ALICE
    )
    return [(m.role, m.content) for m in response.messages]


async def listed(stub: Any, session_id: str) -> list[tuple[int, str, int, list[str]]]:
    response = await stub.ListBranches(
        runtime_pb2.ListBranchesRequest(session_id=session_id), metadata=ALICE
    )
    return [
        (b.branch, b.reason, b.from_message, [m.content for m in b.messages])
        for b in response.branches
    ]


async def write_notes(call: Any) -> None:
    """A turn that creates notes.txt: its change is approved and done."""
    await call.write(user_message("write notes.txt"))
    change = await read_first(call, "notes.txt")
    await call.write(
        runtime_pb2.ConverseRequest(
            approval_decision=runtime_pb2.ApprovalDecision(
                call_id=change.call_id, decision=runtime_pb2.DECISION_APPROVE
            )
        )
    )
    approved = (await read_until(call, "tool_call"))[-1].tool_call
    assert approved.call_id == change.call_id
    assert not approved.requires_approval
    result = runtime_pb2.ConverseRequest(tool_result=runtime_pb2.ToolResult(call_id=change.call_id))
    result.tool_result.result.update({"success": True})
    await call.write(result)
    await read_until(call, "turn_done")


async def test_retry_and_edit_keep_what_they_replace_across_a_restart(
    proxy: tuple[ScriptedProxy, int],  # noqa: F811
    database_url: str,  # noqa: F811
) -> None:
    scripted, proxy_port = proxy
    config = RuntimeConfig(
        internal_api_key=KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy_port}",
        database_url=database_url,
        detach_grace=0,
    )
    async with (
        running_runtime(config) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = stub_for(channel)
        call, _ = await open_stream(channel, "br-1")
        for text in ("hello", "second"):
            await call.write(user_message(text))
            await read_until(call, "turn_done")
        asked = len(scripted.requests)

        await call.write(retry())
        turn = await read_until(call, "turn_done")
        changed = turn[0]
        assert changed.WhichOneof("event") == "session_changed"
        assert changed.seq > 0
        assert (changed.session_changed.reason, changed.session_changed.branch) == ("retry", 1)
        assert changed.session_changed.from_message == 2
        assert changed.session_changed.session_id == "br-1"
        assert len(scripted.requests) == asked + 1, "the model was asked again"
        assert scripted.requests[-1].messages[-1].content == "second"
        assert await history(stub, "br-1") == [
            ("user", "hello"),
            ("assistant", "one two three"),
            ("user", "second"),
            ("assistant", "one two three"),
        ]

        await call.write(edit(0, "hi there"))
        turn = await read_until(call, "turn_done")
        assert turn[0].session_changed.reason == "edit"
        assert (turn[0].session_changed.branch, turn[0].session_changed.from_message) == (2, 0)
        assert [m.content for m in scripted.requests[-1].messages[1:]] == ["hi there"]
        assert await history(stub, "br-1") == [("user", "hi there"), ("assistant", "one two three")]

        await call.write(edit(1, "not mine"))
        refused = await read_until(call, "error")
        assert (refused[-1].seq, refused[-1].error.code) == (0, "invalid_message")
        assert "yours are at 0" in refused[-1].error.message

        for request in (
            runtime_pb2.RetryTurnRequest(session_id="br-1"),
            runtime_pb2.ListBranchesRequest(session_id="br-1"),
        ):
            rpc = (
                stub.RetryTurn
                if isinstance(request, runtime_pb2.RetryTurnRequest)
                else (stub.ListBranches)
            )
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await rpc(request, metadata=BOB)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "hello" not in (denied.value.details() or "")

        started = await stub.EditUserMessage(
            runtime_pb2.EditUserMessageRequest(session_id="br-1", index=0, content="by rpc"),
            metadata=ALICE,
        )
        assert (started.change.reason, started.change.branch) == ("edit", 3)
        turn = await read_until(call, "turn_done")
        assert turn[0].session_changed.branch == 3, "the IDE connected sees it"
        call.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as no_ide:
            await stub.RetryTurn(runtime_pb2.RetryTurnRequest(session_id="br-1"), metadata=ALICE)
        assert no_ide.value.code() == grpc.StatusCode.ABORTED
        assert "no IDE is connected" in (no_ide.value.details() or "")

    async with (
        running_runtime(config) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = stub_for(channel)
        assert await history(stub, "br-1") == [("user", "by rpc"), ("assistant", "one two three")]
        assert await listed(stub, "br-1") == [
            (3, "edit", 0, ["hi there", "one two three"]),
            (2, "edit", 0, ["hello", "one two three", "second", "one two three"]),
            (1, "retry", 2, ["second", "one two three"]),
        ]
        call, opened = await open_stream(channel, "br-1")
        replayed, _ = await open_stream(channel, "br-1", after=0)
        events = [await replayed.read() for _ in range(opened.session_opened.last_seq)]
        assert [e.seq for e in events] == list(range(1, opened.session_opened.last_seq + 1))
        changes = [e.session_changed for e in events if e.WhichOneof("event") == "session_changed"]
        assert [(c.reason, c.branch) for c in changes] == [("retry", 1), ("edit", 2), ("edit", 3)]
        await call.write(retry())
        turn = await read_until(call, "turn_done")
        assert (turn[0].session_changed.branch, turn[0].session_changed.from_message) == (4, 0)
        assert await history(stub, "br-1") == [("user", "by rpc"), ("assistant", "one two three")]
        call.cancel()
        replayed.cancel()


async def test_a_rerun_over_a_change_not_undone_is_refused_unless_kept(
    proxy: tuple[ScriptedProxy, int],  # noqa: F811
    database_url: str,  # noqa: F811
) -> None:
    _, proxy_port = proxy
    config = RuntimeConfig(
        internal_api_key=KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy_port}",
        database_url=database_url,
        detach_grace=0,
    )
    async with (
        running_runtime(config) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = stub_for(channel)
        call, _ = await open_stream(channel, "br-2")
        await call.write(user_message("hello"))
        await read_until(call, "turn_done")
        await write_notes(call)
        checkpoints = await stub.ListCheckpoints(
            runtime_pb2.ListCheckpointsRequest(session_id="br-2"), metadata=ALICE
        )
        assert [t.turn_id for t in checkpoints.turns] == ["2"]

        for request in (retry(), edit(2, "write other.txt")):
            await call.write(request)
            refused = (await read_until(call, "error"))[-1]
            assert (refused.seq, refused.error.code) == (0, "changes_not_undone")
            assert "notes.txt (created)" in refused.error.message
            assert "undo with turn_id 2" in refused.error.message
        with pytest.raises(grpc.aio.AioRpcError) as by_rpc:
            await stub.RetryTurn(runtime_pb2.RetryTurnRequest(session_id="br-2"), metadata=ALICE)
        assert by_rpc.value.code() == grpc.StatusCode.ABORTED
        assert "notes.txt (created)" in (by_rpc.value.details() or "")
        assert len(await history(stub, "br-2")) == 6, "nothing was changed"

        await call.write(edit(2, "something else", keep_changes=True))
        turn = await read_until(call, "turn_done")
        assert turn[0].session_changed.from_message == 2
        checkpoints = await stub.ListCheckpoints(
            runtime_pb2.ListCheckpointsRequest(session_id="br-2"), metadata=ALICE
        )
        assert list(checkpoints.turns) == [], "the kept change went with its branch"
        (branch,) = await listed(stub, "br-2")
        assert branch[3][0] == "write notes.txt"
        call.cancel()


async def test_a_fork_by_event_names_the_new_session(
    proxy: tuple[ScriptedProxy, int],  # noqa: F811
    database_url: str,  # noqa: F811
) -> None:
    _, proxy_port = proxy
    config = RuntimeConfig(
        internal_api_key=KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy_port}",
        database_url=database_url,
        detach_grace=0,
    )
    async with (
        running_runtime(config) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = stub_for(channel)
        call, _ = await open_stream(channel, "br-3")
        await call.write(user_message("hello"))
        await read_until(call, "turn_done")
        await call.write(runtime_pb2.ConverseRequest(fork=runtime_pb2.Fork(through_message=0)))
        answer = (await read_until(call, "session_changed"))[-1]
        assert answer.seq == 0, "not an event of this session"
        fork = answer.session_changed
        assert (fork.reason, fork.from_message) == ("fork", 1)
        assert fork.session_id.startswith("s-")
        assert await history(stub, fork.session_id) == [("user", "hello")]
        await call.write(runtime_pb2.ConverseRequest(fork=runtime_pb2.Fork(through_message=7)))
        refused = (await read_until(call, "error"))[-1]
        assert refused.error.code == "invalid_message"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetSessionHistory(
                runtime_pb2.GetSessionHistoryRequest(session_id=fork.session_id), metadata=BOB
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        call.cancel()


async def test_a_branch_can_be_made_the_active_history_again(
    runtime_channel: grpc.aio.Channel,  # noqa: F811
) -> None:
    stub = stub_for(runtime_channel)
    call, _ = await open_stream(runtime_channel, "br-4")
    for text in ("hello", "second"):
        await call.write(user_message(text))
        await read_until(call, "turn_done")
    await call.write(edit(2, "third"))
    await read_until(call, "turn_done")
    assert [m for _, m in await history(stub, "br-4")][2] == "third"

    restored = await stub.RestoreBranch(
        runtime_pb2.RestoreBranchRequest(session_id="br-4", branch=1), metadata=ALICE
    )
    assert (restored.change.reason, restored.change.branch) == ("switch", 2)
    assert restored.change.from_message == 2
    told = (await read_until(call, "session_changed"))[-1]
    assert told.seq > 0
    assert told.session_changed.branch == 2
    assert [m for _, m in await history(stub, "br-4")] == [
        "hello",
        "one two three",
        "second",
        "one two three",
    ]
    assert await listed(stub, "br-4") == [(2, "switch", 2, ["third", "one two three"])]
    await call.write(user_message("more"))
    await read_until(call, "turn_done")
    assert len(await history(stub, "br-4")) == 6, "the restored history takes new turns"

    for who, branch, code in (
        (ALICE, 9, grpc.StatusCode.INVALID_ARGUMENT),
        (BOB, 2, grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RestoreBranch(
                runtime_pb2.RestoreBranchRequest(session_id="br-4", branch=branch), metadata=who
            )
        assert refused.value.code() == code
    call.cancel()
    back = await stub.RestoreBranch(
        runtime_pb2.RestoreBranchRequest(session_id="br-4", branch=2), metadata=ALICE
    )
    assert (back.change.branch, back.change.from_message) == (3, 2)
    assert [m for _, m in await history(stub, "br-4")][2:] == ["third", "one two three"]
    assert [b[0] for b in await listed(stub, "br-4")] == [3]
