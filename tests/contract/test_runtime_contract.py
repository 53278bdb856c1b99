"""The runtime contract the gateway relies on, run against the gateway
tests' fake runtime (tests/gateway/conftest.py) and the real runtime
servicer in this process (on SQLite and PostgreSQL), so the fake cannot
drift from what it stands in for.

Each case names what the gateway does with the answer. The LLM proxy
behind the real runtime is a small scripted one: it routes to ``coder``,
answers text, and proposes ``write_file`` for a message ``write <path>``;
the fake scripts the same messages itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import MeshServer, internal_metadata
from runtime.__main__ import RuntimeConfig, serve
from runtime.store import migrate
from runtime.v1 import runtime_pb2 as pb
from runtime.v1 import runtime_pb2_grpc
from tests.conftest import migrated_postgres
from tests.gateway.conftest import INTERNAL_KEY, FakeRuntime

TIMEOUT = 20
S = grpc.StatusCode


class ScriptedProxy(llmproxy_pb2_grpc.LlmProxyServiceServicer):
    """Routes to coder; ``write <path>`` proposes write_file; else three words."""

    async def StreamChat(
        self, request: llmproxy_pb2.StreamChatRequest, context: Any
    ) -> AsyncIterator[llmproxy_pb2.StreamChatResponse]:
        if request.messages[0].content.startswith("You route requests"):
            route = '{"agent": "coder", "confidence": 0.9, "rationale": "code"}'
            yield llmproxy_pb2.StreamChatResponse(text=llmproxy_pb2.TextDelta(text=route))
            return
        last = request.messages[-1]
        if last.role == "user" and last.content.startswith("write "):
            arguments = json.dumps({"path": last.content.split()[1], "content": "x"})
            yield llmproxy_pb2.StreamChatResponse(
                tool_call=llmproxy_pb2.ToolCallDelta(
                    index=0, id="m1", name="write_file", arguments_fragment=arguments
                )
            )
            yield llmproxy_pb2.StreamChatResponse(
                end=llmproxy_pb2.StreamEnd(finish_reason="tool_calls")
            )
            return
        for word in ("one ", "two ", "three"):
            yield llmproxy_pb2.StreamChatResponse(text=llmproxy_pb2.TextDelta(text=word))
        yield llmproxy_pb2.StreamChatResponse(end=llmproxy_pb2.StreamEnd(finish_reason="stop"))


@contextlib.asynccontextmanager
async def real_runtime(database_url: str) -> AsyncIterator[int]:
    """The real runtime servicer (``runtime.__main__.serve``) in this
    process behind a scripted LLM proxy; yields its port."""
    await migrate(database_url)
    proxy = MeshServer(address="127.0.0.1:0", internal_api_key=INTERNAL_KEY, service_names=[])
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(ScriptedProxy(), proxy.server)
    proxy_port = await proxy.start()
    config = RuntimeConfig(
        internal_api_key=INTERNAL_KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy_port}",
        database_url=database_url,
        detach_grace=0,
    )
    loop = asyncio.get_running_loop()
    port: asyncio.Future[int] = loop.create_future()
    stop: asyncio.Future[object] = loop.create_future()
    task = asyncio.create_task(serve(config, started=port.set_result, stop=stop))
    try:
        await asyncio.wait([port, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it did not start
        yield port.result()
    finally:
        if not stop.done():
            stop.set_result(None)
        await task
        await proxy.stop(0)


@contextlib.asynccontextmanager
async def fake_runtime() -> AsyncIterator[int]:
    server = MeshServer(
        address="127.0.0.1:0",
        internal_api_key=INTERNAL_KEY,
        service_names=[pb.DESCRIPTOR.services_by_name["AgentRuntimeService"].full_name],
    )
    runtime_pb2_grpc.add_AgentRuntimeServiceServicer_to_server(FakeRuntime(), server.server)
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@dataclass
class Runtime:
    """A runtime on loopback, called as the gateway calls it."""

    stub: runtime_pb2_grpc.AgentRuntimeServiceStub

    def as_user(self, user: str) -> dict[str, Any]:
        return {"metadata": internal_metadata(INTERNAL_KEY, user=user), "timeout": TIMEOUT}

    async def status(self, call: Callable[..., Any], request: Any, user: str) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(request, **self.as_user(user))
        code: grpc.StatusCode = failed.value.code()
        return code

    @contextlib.asynccontextmanager
    async def converse(
        self, session_id: str, user: str, after: int | None = None
    ) -> AsyncIterator[Any]:
        call = self.stub.Converse(metadata=internal_metadata(INTERNAL_KEY, user=user))
        opening = pb.OpenSession(session_id=session_id)
        if after is not None:
            opening.resume_after_seq = after
        await call.write(pb.ConverseRequest(open=opening))
        try:
            yield call
        finally:
            call.cancel()

    async def turn(self, session_id: str, user: str, text: str) -> list[pb.ConverseResponse]:
        """Open, say ``text``, and return the numbered events up to the
        turn's end (a turn_done, or a tool call that waits for a human).
        A read (the runtime's, of a file it is about to change) is answered
        as an IDE without the file answers it."""
        async with self.converse(session_id, user) as call:
            assert (await read(call)).WhichOneof("event") == "session_opened"
            await call.write(pb.ConverseRequest(user_message=pb.UserMessage(content=text)))
            events = []
            while True:
                event = await read(call)
                if event.seq:
                    events.append(event)
                kind = event.WhichOneof("event")
                if kind == "turn_done" or (
                    kind == "tool_call" and event.tool_call.requires_approval
                ):
                    return events
                if kind == "tool_call" and event.tool_call.tool_name == "read_file":
                    path = event.tool_call.arguments["path"]
                    missing = pb.ToolResult(
                        call_id=event.tool_call.call_id, error=f"File not found: {path}"
                    )
                    await call.write(pb.ConverseRequest(tool_result=missing))


async def read(call: Any) -> pb.ConverseResponse:
    async with asyncio.timeout(TIMEOUT):
        event = await call.read()
    assert isinstance(event, pb.ConverseResponse), event
    return event


@pytest.fixture(
    params=[
        "fake",
        "real-sqlite",
        pytest.param("real-postgres", marks=pytest.mark.postgres),
    ]
)
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "fake":
            port = await stack.enter_async_context(fake_runtime())
        elif request.param == "real-sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
            port = await stack.enter_async_context(real_runtime(url))
        else:
            url = await stack.enter_async_context(migrated_postgres("test_contract"))
            port = await stack.enter_async_context(real_runtime(url))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        yield Runtime(runtime_pb2_grpc.AgentRuntimeServiceStub(channel))


# ---------------------------------------------------------------------------
# open, resume, replay


async def test_opening_a_new_session_creates_it_for_the_user(runtime: Runtime):
    # The gateway forwards session_opened as the IDE's session_info.
    async with runtime.converse("s-new", "alice") as call:
        opened = await read(call)
    assert opened.seq == 0
    info = opened.session_opened
    assert (info.session_id, info.created, info.recovered, info.last_seq) == (
        "s-new",
        True,
        True,
        0,
    )
    assert info.agent
    async with runtime.converse("s-new", "alice") as call:
        again = (await read(call)).session_opened
    assert (again.created, again.agent) == (False, info.agent)


async def test_a_turns_events_are_numbered_and_replayed_after_a_resume_point(runtime: Runtime):
    events = await runtime.turn("s-turn", "alice", "hello")
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events[-1].WhichOneof("event") == "turn_done"
    last = seqs[-1]
    # A resume from the middle replays exactly the events after it.
    async with runtime.converse("s-turn", "alice", after=1) as call:
        opened = (await read(call)).session_opened
        assert (opened.recovered, opened.last_seq) == (True, last)
        replayed = [await read(call) for _ in range(last - 1)]
    assert [event.seq for event in replayed] == seqs[1:]
    assert [event.WhichOneof("event") for event in replayed] == [
        event.WhichOneof("event") for event in events[1:]
    ]
    # Without a resume point nothing is replayed: the IDE asked for none.
    async with runtime.converse("s-turn", "alice") as call:
        opened = (await read(call)).session_opened
        assert (opened.recovered, opened.last_seq) == (True, last)
        await call.write(pb.ConverseRequest(user_message=pb.UserMessage(content="again")))
        assert (await read(call)).seq > last


async def test_a_resume_point_past_the_sessions_end_is_not_recovered(runtime: Runtime):
    await runtime.turn("s-ahead", "alice", "hello")
    async with runtime.converse("s-ahead", "alice", after=10_000) as call:
        opened = (await read(call)).session_opened
    assert opened.recovered is False


async def test_current_agent_reports_last_seq_and_idleness(runtime: Runtime):
    # The handshake attaches an idle session lazily from this answer.
    created = await runtime.stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-idle"), **runtime.as_user("alice")
    )
    current = await runtime.stub.GetCurrentAgent(
        pb.GetCurrentAgentRequest(session_id="s-idle"), **runtime.as_user("alice")
    )
    assert (current.session_id, current.agent, current.last_seq, current.idle) == (
        "s-idle",
        created.session.agent,
        0,
        True,
    )
    events = await runtime.turn("s-idle", "alice", "hello")
    current = await runtime.stub.GetCurrentAgent(
        pb.GetCurrentAgentRequest(session_id="s-idle"), **runtime.as_user("alice")
    )
    assert (current.last_seq, current.idle) == (events[-1].seq, True)


# ---------------------------------------------------------------------------
# ownership


async def test_someone_elses_session_is_permission_denied_a_missing_one_not_found(
    runtime: Runtime,
):
    # 403 at the handshake, 404 in the views, close 1008 on open.
    await runtime.stub.CreateSession(
        pb.CreateSessionRequest(session_id="bobs"), **runtime.as_user("bob")
    )
    stub = runtime.stub
    reads: list[tuple[Callable[..., Any], Callable[[str], Any]]] = [
        (stub.GetCurrentAgent, lambda sid: pb.GetCurrentAgentRequest(session_id=sid)),
        (stub.GetSessionHistory, lambda sid: pb.GetSessionHistoryRequest(session_id=sid)),
        (stub.ListPendingApprovals, lambda sid: pb.ListPendingApprovalsRequest(session_id=sid)),
        (stub.ListCheckpoints, lambda sid: pb.ListCheckpointsRequest(session_id=sid)),
        (stub.UndoTurn, lambda sid: pb.UndoTurnRequest(session_id=sid)),
        (stub.ExportSession, lambda sid: pb.ExportSessionRequest(session_id=sid)),
        (stub.ForkSession, lambda sid: pb.ForkSessionRequest(session_id=sid)),
    ]
    for call, request in reads:
        assert await runtime.status(call, request("bobs"), "alice") is S.PERMISSION_DENIED
        assert await runtime.status(call, request("nobody"), "alice") is S.NOT_FOUND
    async with runtime.converse("bobs", "alice") as converse:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(converse)
    assert refused.value.code() is S.PERMISSION_DENIED


async def test_a_session_opened_by_one_user_is_theirs(runtime: Runtime):
    async with runtime.converse("opened", "alice") as call:
        await read(call)
    request = pb.GetCurrentAgentRequest(session_id="opened")
    assert await runtime.status(runtime.stub.GetCurrentAgent, request, "bob") is (
        S.PERMISSION_DENIED
    )


# ---------------------------------------------------------------------------
# CreateSession and ListSessions


async def test_a_taken_id_is_already_exists_whoever_took_it(runtime: Runtime):
    # 409 from POST /api/v1/sessions; the quiet attach falls back to open.
    create = runtime.stub.CreateSession
    await create(pb.CreateSessionRequest(session_id="taken"), **runtime.as_user("bob"))
    for user in ("bob", "alice"):
        request = pb.CreateSessionRequest(session_id="taken")
        assert await runtime.status(create, request, user) is S.ALREADY_EXISTS


async def test_a_malformed_session_id_is_invalid_argument(runtime: Runtime):
    request = pb.CreateSessionRequest(session_id="bad id")
    assert await runtime.status(runtime.stub.CreateSession, request, "alice") is (
        S.INVALID_ARGUMENT
    )


async def test_created_sessions_get_an_id_and_the_title(runtime: Runtime):
    created = await runtime.stub.CreateSession(
        pb.CreateSessionRequest(title="my work"), **runtime.as_user("alice")
    )
    session = created.session
    assert session.session_id
    assert (session.title, session.message_count) == ("my work", 0)
    assert session.agent
    assert session.created_at.seconds > 0


async def test_session_pages_follow_opaque_tokens_and_are_owner_scoped(runtime: Runtime):
    create = runtime.stub.CreateSession
    mine = {f"a{index}" for index in range(5)}
    for sid in sorted(mine):
        await create(pb.CreateSessionRequest(session_id=sid), **runtime.as_user("alice"))
    await create(pb.CreateSessionRequest(session_id="b0"), **runtime.as_user("bob"))
    seen: list[str] = []
    token = ""
    while True:
        page = await runtime.stub.ListSessions(
            pb.ListSessionsRequest(page_size=2, page_token=token), **runtime.as_user("alice")
        )
        assert len(page.sessions) <= 2
        seen += [session.session_id for session in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(mine, reverse=True)  # newest first
    # A page size over the limit is capped, not refused.
    big = await runtime.stub.ListSessions(
        pb.ListSessionsRequest(page_size=500), **runtime.as_user("alice")
    )
    assert {session.session_id for session in big.sessions} == mine
    # A token the runtime did not issue is INVALID_ARGUMENT (400 in the view).
    bogus = pb.ListSessionsRequest(page_token="not-a-token")
    assert await runtime.status(runtime.stub.ListSessions, bogus, "alice") is (S.INVALID_ARGUMENT)


# ---------------------------------------------------------------------------
# pending approvals


async def test_a_write_waiting_for_a_human_is_a_pending_approval(runtime: Runtime):
    events = await runtime.turn("s-app", "alice", "write notes.txt")
    proposed = events[-1].tool_call
    assert (proposed.tool_name, proposed.requires_approval) == ("write_file", True)
    pending = await runtime.stub.ListPendingApprovals(
        pb.ListPendingApprovalsRequest(session_id="s-app"), **runtime.as_user("alice")
    )
    assert pending.session_id == "s-app"
    assert [(a.call_id, a.tool_name) for a in pending.approvals] == [
        (proposed.call_id, "write_file")
    ]
    assert dict(pending.approvals[0].arguments)["path"] == "notes.txt"


async def test_an_undo_needs_a_connected_ide_and_a_new_session_has_no_checkpoints(
    runtime: Runtime,
):
    # POST /undo answers 409 with the reason; /checkpoints lists no turn.
    await runtime.stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-undo"), **runtime.as_user("alice")
    )
    request = pb.UndoTurnRequest(session_id="s-undo")
    assert await runtime.status(runtime.stub.UndoTurn, request, "alice") is S.ABORTED
    listed = await runtime.stub.ListCheckpoints(
        pb.ListCheckpointsRequest(session_id="s-undo"), **runtime.as_user("alice")
    )
    assert (listed.session_id, list(listed.turns)) == ("s-undo", [])


async def test_a_new_session_has_no_pending_approvals(runtime: Runtime):
    await runtime.stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-none"), **runtime.as_user("alice")
    )
    pending = await runtime.stub.ListPendingApprovals(
        pb.ListPendingApprovalsRequest(session_id="s-none"), **runtime.as_user("alice")
    )
    assert list(pending.approvals) == []


# ---------------------------------------------------------------------------
# one session: get, rename, delete (GET, PATCH, DELETE /api/v1/sessions/{id})


async def test_a_session_is_read_and_renamed_by_its_owner_only(runtime: Runtime):
    stub = runtime.stub
    await stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-one", title="first"), **runtime.as_user("alice")
    )
    got = await stub.GetSession(
        pb.GetSessionRequest(session_id="s-one"), **runtime.as_user("alice")
    )
    assert (got.session.session_id, got.session.title) == ("s-one", "first")
    assert got.session.created_at.seconds > 0
    renamed = await stub.UpdateSession(
        pb.UpdateSessionRequest(session_id="s-one", title="second"), **runtime.as_user("alice")
    )
    assert (renamed.session.session_id, renamed.session.title) == ("s-one", "second")
    listed = await stub.ListSessions(pb.ListSessionsRequest(), **runtime.as_user("alice"))
    assert [(s.session_id, s.title) for s in listed.sessions] == [("s-one", "second")]
    assert listed.total == 1
    too_long = pb.UpdateSessionRequest(session_id="s-one", title="x" * 201)
    assert await runtime.status(stub.UpdateSession, too_long, "alice") is S.INVALID_ARGUMENT
    for call, request in [
        (stub.GetSession, pb.GetSessionRequest(session_id="s-one")),
        (stub.UpdateSession, pb.UpdateSessionRequest(session_id="s-one", title="mine")),
        (stub.DeleteSession, pb.DeleteSessionRequest(session_id="s-one")),
    ]:
        assert await runtime.status(call, request, "bob") is S.PERMISSION_DENIED
        request.session_id = "nobody"
        assert await runtime.status(call, request, "alice") is S.NOT_FOUND
    got = await stub.GetSession(
        pb.GetSessionRequest(session_id="s-one"), **runtime.as_user("alice")
    )
    assert got.session.title == "second", "bob changed nothing"


async def test_total_counts_every_page(runtime: Runtime):
    for index in range(3):
        await runtime.stub.CreateSession(
            pb.CreateSessionRequest(session_id=f"t{index}"), **runtime.as_user("alice")
        )
    page = await runtime.stub.ListSessions(
        pb.ListSessionsRequest(page_size=2), **runtime.as_user("alice")
    )
    assert (len(page.sessions), page.total) == (2, 3)
    empty = await runtime.stub.ListSessions(pb.ListSessionsRequest(), **runtime.as_user("carol"))
    assert (list(empty.sessions), empty.total) == ([], 0)


async def test_history_names_the_agent_its_switches_and_its_count(runtime: Runtime):
    # GET /history: message_count, current_agent, agent_history, tool names.
    await runtime.turn("s-hist", "alice", "hello")
    history = await runtime.stub.GetSessionHistory(
        pb.GetSessionHistoryRequest(session_id="s-hist"), **runtime.as_user("alice")
    )
    assert history.message_count == len(history.messages) > 0
    current = await runtime.stub.GetCurrentAgent(
        pb.GetCurrentAgentRequest(session_id="s-hist"), **runtime.as_user("alice")
    )
    assert history.current_agent == current.agent
    assert history.last_activity.seconds > 0
    switches = [(s.from_agent, s.to_agent) for s in history.agent_switches]
    for (_, before), (after, _) in itertools.pairwise(switches):
        assert before == after, "each switch starts where the last one ended"
    assert switches[-1:] in ([], [(switches[-1][0], current.agent)] if switches else [])
    assert all(s.created_at.seconds > 0 for s in history.agent_switches)


async def test_the_current_agent_names_its_switches_when_asked(runtime: Runtime):
    # GET /agents/{id}/current: agent_history and switch_count; the
    # handshake's read does not ask for them.
    await runtime.turn("s-cur", "alice", "hello")
    history = await runtime.stub.GetSessionHistory(
        pb.GetSessionHistoryRequest(session_id="s-cur"), **runtime.as_user("alice")
    )
    asked = await runtime.stub.GetCurrentAgent(
        pb.GetCurrentAgentRequest(session_id="s-cur", include_agent_switches=True),
        **runtime.as_user("alice"),
    )
    assert list(asked.agent_switches) == list(history.agent_switches)
    assert asked.agent == history.current_agent
    plain = await runtime.stub.GetCurrentAgent(
        pb.GetCurrentAgentRequest(session_id="s-cur"), **runtime.as_user("alice")
    )
    assert list(plain.agent_switches) == []
    assert (plain.agent, plain.last_seq) == (asked.agent, asked.last_seq)


async def test_agents_name_the_paths_they_may_write(runtime: Runtime):
    # GET /agents: has_file_restrictions (the IDE's AgentInfo).
    listed = await runtime.stub.ListAgents(pb.ListAgentsRequest(), **runtime.as_user("alice"))
    writable = {agent.name: list(agent.writable_paths) for agent in listed.agents}
    assert (writable["coder"], writable["architect"]) == ([], ["*.md"])
    for agent in listed.agents:
        if agent.writable_paths:
            assert "write_file" in agent.allowed_tools


async def test_a_deleted_session_is_gone_for_good_and_its_id_stays_taken(runtime: Runtime):
    stub = runtime.stub
    await runtime.turn("s-del", "alice", "write notes.txt")
    await stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-kept"), **runtime.as_user("alice")
    )
    deleted = await stub.DeleteSession(
        pb.DeleteSessionRequest(session_id="s-del"), **runtime.as_user("alice")
    )
    assert deleted.session_id == "s-del"
    reads: list[Any] = [
        (stub.GetSession, pb.GetSessionRequest(session_id="s-del")),
        (stub.GetCurrentAgent, pb.GetCurrentAgentRequest(session_id="s-del")),
        (stub.GetSessionHistory, pb.GetSessionHistoryRequest(session_id="s-del")),
        (stub.ListPendingApprovals, pb.ListPendingApprovalsRequest(session_id="s-del")),
        (stub.UpdateSession, pb.UpdateSessionRequest(session_id="s-del", title="back")),
        (stub.DeleteSession, pb.DeleteSessionRequest(session_id="s-del")),
    ]
    for user in ("alice", "bob"):
        for call, request in reads:
            assert await runtime.status(call, request, user) is S.FAILED_PRECONDITION, call
        # No one brings it back: not by opening it, not by creating it.
        async with runtime.converse("s-del", user) as converse:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await read(converse)
        assert refused.value.code() is S.FAILED_PRECONDITION
        create = pb.CreateSessionRequest(session_id="s-del")
        assert await runtime.status(stub.CreateSession, create, user) is S.ALREADY_EXISTS
    listed = await stub.ListSessions(pb.ListSessionsRequest(), **runtime.as_user("alice"))
    assert ([s.session_id for s in listed.sessions], listed.total) == (["s-kept"], 1)


async def test_a_stream_attached_to_a_deleted_session_ends_for_good(runtime: Runtime):
    # The gateway closes the IDE's socket on it (1008, not retryable).
    await runtime.stub.CreateSession(
        pb.CreateSessionRequest(session_id="s-live"), **runtime.as_user("alice")
    )
    async with runtime.converse("s-live", "alice") as call:
        assert (await read(call)).WhichOneof("event") == "session_opened"
        await runtime.stub.DeleteSession(
            pb.DeleteSessionRequest(session_id="s-live"), **runtime.as_user("alice")
        )
        ended = await _end_of(call)
    assert ended.code() is S.FAILED_PRECONDITION
    assert "deleted" in (ended.details() or "")


async def _end_of(call: Any) -> grpc.aio.AioRpcError:
    """The error a stream ends with, after reading whatever comes before it."""
    while True:
        try:
            await read(call)
        except grpc.aio.AioRpcError as exc:
            return exc


async def test_a_rename_holds_while_the_session_is_live(runtime: Runtime):
    # PATCH while a window has the session open: its next turn keeps the title.
    async with runtime.converse("s-named", "alice") as call:
        assert (await read(call)).WhichOneof("event") == "session_opened"
        await call.write(pb.ConverseRequest(user_message=pb.UserMessage(content="hello")))
        while (await read(call)).WhichOneof("event") != "turn_done":
            pass
        await runtime.stub.UpdateSession(
            pb.UpdateSessionRequest(session_id="s-named", title="renamed"),
            **runtime.as_user("alice"),
        )
        await call.write(pb.ConverseRequest(user_message=pb.UserMessage(content="again")))
        while (await read(call)).WhichOneof("event") != "turn_done":
            pass
    got = await runtime.stub.GetSession(
        pb.GetSessionRequest(session_id="s-named"), **runtime.as_user("alice")
    )
    assert got.session.title == "renamed"
