"""The runtime's gRPC boundary on a real loopback server.

The LLM proxy here is a small scripted gRPC servicer, so these tests pin down
the runtime in isolation; tests/integration runs the real proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import MeshServer, internal_metadata
from runtime.__main__ import RuntimeConfig, serve
from runtime.store import migrate
from runtime.v1 import runtime_pb2, runtime_pb2_grpc
from tests.conftest import migrated_postgres
from tests.support import lease_released

KEY = "test-internal-key"


class ScriptedProxy(llmproxy_pb2_grpc.LlmProxyServiceServicer):
    def __init__(self) -> None:
        self.requests: list[llmproxy_pb2.StreamChatRequest] = []
        self.cancelled = asyncio.Event()
        self.hold = False

    async def StreamChat(
        self, request: llmproxy_pb2.StreamChatRequest, context: Any
    ) -> AsyncIterator[llmproxy_pb2.StreamChatResponse]:
        self.requests.append(request)
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
        try:
            for word in ("one ", "two ", "three"):
                yield llmproxy_pb2.StreamChatResponse(text=llmproxy_pb2.TextDelta(text=word))
            if self.hold:
                await asyncio.Event().wait()
            yield llmproxy_pb2.StreamChatResponse(
                end=llmproxy_pb2.StreamEnd(
                    finish_reason="stop",
                    usage=llmproxy_pb2.Usage(prompt_tokens=4, completion_tokens=3),
                )
            )
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ScriptedProxy, int]]:
    servicer = ScriptedProxy()
    server = MeshServer(address="127.0.0.1:0", internal_api_key=KEY, service_names=[])
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(servicer, server.server)
    port = await server.start()
    yield servicer, port
    await server.stop(0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated runtime database of each kind: a SQLite file, a fresh PostgreSQL one."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'runtime.db'}"
        await migrate(url)
        yield url
        return
    async with migrated_postgres("test_runtime") as url:
        yield url


@pytest.fixture
async def runtime_channel(
    proxy: tuple[ScriptedProxy, int], database_url: str
) -> AsyncIterator[grpc.aio.Channel]:
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
        yield channel


@contextlib.asynccontextmanager
async def running_runtime(config: RuntimeConfig) -> AsyncIterator[int]:
    """The real runtime in this process; yields its port."""
    loop = asyncio.get_running_loop()
    port: asyncio.Future[int] = loop.create_future()
    stop: asyncio.Future[object] = loop.create_future()
    task = asyncio.create_task(serve(config, started=port.set_result, stop=stop))
    await asyncio.wait([port, task], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises why it did not start
    try:
        yield port.result()
    finally:
        stop.set_result(None)
        await task


def open_request(session_id: str) -> runtime_pb2.ConverseRequest:
    return runtime_pb2.ConverseRequest(open=runtime_pb2.OpenSession(session_id=session_id))


def user_message(text: str) -> runtime_pb2.ConverseRequest:
    return runtime_pb2.ConverseRequest(user_message=runtime_pb2.UserMessage(content=text))


async def test_converse_streams_the_answer(
    runtime_channel: grpc.aio.Channel, proxy: tuple[ScriptedProxy, int]
) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await call.write(open_request("s-1"))
    opened = await call.read()
    assert opened.session_opened.session_id == "s-1"
    assert opened.session_opened.created
    await call.write(user_message("hello"))
    switched = await call.read()
    assert switched.agent_switched.from_agent == "orchestrator"
    assert switched.agent_switched.to_agent == "coder"
    texts, seqs = [], [switched.seq]
    while True:
        response = await call.read()
        seqs.append(response.seq)
        if response.HasField("turn_done"):
            assert response.turn_done.status == runtime_pb2.TURN_STATUS_COMPLETED
            assert response.turn_done.usage.prompt_tokens == 4
            break
        texts.append(response.assistant_delta.text)
    assert "".join(texts) == "one two three"
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert seqs[0] >= 1
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    servicer, _ = proxy
    routing, answer = servicer.requests
    assert routing.messages[-1].content == "hello"
    assert answer.messages[-1].content == "hello"
    assert answer.model == "offline"
    assert "write_file" in [tool.name for tool in answer.tools]


async def test_the_environment_the_ide_reports_reaches_the_models_prompt(
    runtime_channel: grpc.aio.Channel, proxy: tuple[ScriptedProxy, int]
) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await call.write(open_request("s-env"))
    await call.read()
    environment = runtime_pb2.Environment(os="Linux 6.8", workspace_root="/w")
    environment.shell = "/bin/bash"
    await call.write(runtime_pb2.ConverseRequest(environment=environment))
    await call.write(user_message("hello"))
    # An IDE that reports its environment is asked for the workspace's files too.
    listing = (await read_until(call, "tool_call"))[-1].tool_call
    assert listing.tool_name == "list_files"
    listed = runtime_pb2.ToolResult(call_id=listing.call_id)
    listed.result.update({"path": ".", "files": ["src/", "src/app.py"], "truncated": False})
    await call.write(runtime_pb2.ConverseRequest(tool_result=listed))
    await read_until(call, "turn_done")
    await call.done_writing()
    servicer, _ = proxy
    _, answer = servicer.requests
    system = answer.messages[0]
    assert system.role == "system"
    assert "Operating system: Linux 6.8\nShell: /bin/bash\nWorkspace root: /w\n" in system.content
    assert "  app.py" in system.content, "and its files, as listed"


async def test_cancelling_the_stream_cancels_the_llm_call(
    runtime_channel: grpc.aio.Channel, proxy: tuple[ScriptedProxy, int]
) -> None:
    servicer, _ = proxy
    servicer.hold = True
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await call.write(open_request("s-2"))
    await call.read()
    await call.write(user_message("hello"))
    assert (await call.read()).HasField("agent_switched")
    assert (await call.read()).assistant_delta.text == "one "
    call.cancel()
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


async def test_someone_elses_session_is_refused(runtime_channel: grpc.aio.Channel) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    owner = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await owner.write(open_request("private"))
    await owner.read()
    intruder = stub.Converse(metadata=internal_metadata(KEY, user="mallory"))
    await intruder.write(open_request("private"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await intruder.read()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    owner.cancel()


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-internal-auth", "wrong"), ("x-user-id", "alice")), grpc.StatusCode.UNAUTHENTICATED),
        (internal_metadata(KEY), grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=["no-credential", "wrong-credential", "no-user"],
)
async def test_calls_without_credential_or_user_are_refused(
    runtime_channel: grpc.aio.Channel, metadata: Any, code: grpc.StatusCode
) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=metadata)
    # The refusal comes before any message is read: the status says it all
    # (writing first would race the server's abort).
    assert await call.code() == code


async def test_first_event_must_be_open(runtime_channel: grpc.aio.Channel) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await call.write(user_message("too early"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in (refused.value.details() or "")


async def test_health_needs_no_credential_and_reflection_does(
    runtime_channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(runtime_channel)
    reply = await health.Check(
        health_pb2.HealthCheckRequest(service="runtime.v1.AgentRuntimeService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflect = reflection_pb2_grpc.ServerReflectionStub(runtime_channel)
    listing = reflection_pb2.ServerReflectionRequest(list_services="")

    async def ask(metadata: Any) -> list[str]:
        call = reflect.ServerReflectionInfo(metadata=metadata)
        await call.write(listing)
        response = await call.read()
        await call.done_writing()
        return [s.name for s in response.list_services_response.service]

    assert "runtime.v1.AgentRuntimeService" in await ask(internal_metadata(KEY))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ask(())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_client_events_keep_integers_and_reject_bad_decisions() -> None:
    from google.protobuf import struct_pb2

    from runtime.commands import ApprovalDecision, ToolResult
    from runtime.errors import InvalidArgument
    from runtime.wire import to_client_event

    result = struct_pb2.Struct()
    result.update({"bytes": 6, "ratio": 0.5, "nested": {"lines": [1, 2]}})
    event = to_client_event(
        runtime_pb2.ConverseRequest(tool_result=runtime_pb2.ToolResult(call_id="c", result=result))
    )
    assert event == ToolResult("c", {"bytes": 6, "ratio": 0.5, "nested": {"lines": [1, 2]}})
    assert isinstance(event.result["bytes"], int)
    decision = to_client_event(
        runtime_pb2.ConverseRequest(
            approval_decision=runtime_pb2.ApprovalDecision(
                call_id="c", decision=runtime_pb2.DECISION_REJECT, feedback="no"
            )
        )
    )
    assert decision == ApprovalDecision("c", "reject", None, "no")
    always = to_client_event(
        runtime_pb2.ConverseRequest(
            approval_decision=runtime_pb2.ApprovalDecision(
                call_id="c", decision=runtime_pb2.DECISION_APPROVE, always_allow=True
            )
        )
    )
    assert always == ApprovalDecision("c", "approve", always_allow=True)
    with pytest.raises(InvalidArgument):
        to_client_event(
            runtime_pb2.ConverseRequest(approval_decision=runtime_pb2.ApprovalDecision(call_id="c"))
        )


def stub_for(channel: grpc.aio.Channel) -> runtime_pb2_grpc.AgentRuntimeServiceStub:
    return runtime_pb2_grpc.AgentRuntimeServiceStub(channel)


async def open_stream(
    channel: grpc.aio.Channel, session_id: str, user: str = "alice", after: int | None = None
) -> tuple[Any, runtime_pb2.ConverseResponse]:
    call = stub_for(channel).Converse(metadata=internal_metadata(KEY, user=user))
    request = open_request(session_id)
    if after is not None:
        request.open.resume_after_seq = after
    await call.write(request)
    return call, await call.read()


async def read_until(call: Any, kind: str) -> list[runtime_pb2.ConverseResponse]:
    responses = []
    while True:
        response = await call.read()
        responses.append(response)
        if response.WhichOneof("event") == kind:
            return responses


async def read_first(call: Any, path: str) -> runtime_pb2.ToolCall:
    """Answer the ``read_file`` the runtime offers before a change of ``path``
    (the file is absent, as the CodeLab IDE says); returns the call offered next."""
    read = (await read_until(call, "tool_call"))[-1].tool_call
    assert read.tool_name == "read_file"
    assert json_format.MessageToDict(read.arguments) == {"path": path}
    assert not read.requires_approval
    assert read.metadata.parent_tool == "write_file"
    await call.write(
        runtime_pb2.ConverseRequest(
            tool_result=runtime_pb2.ToolResult(
                call_id=read.call_id, error=f"File not found: {path}"
            )
        )
    )
    change = (await read_until(call, "tool_call"))[-1].tool_call
    assert change.metadata.parent_call_id == read.metadata.parent_call_id
    return change


async def test_sessions_history_and_current_agent_are_owner_scoped(
    runtime_channel: grpc.aio.Channel,
) -> None:
    stub = stub_for(runtime_channel)
    alice, bob = internal_metadata(KEY, user="alice"), internal_metadata(KEY, user="bob")
    call, _ = await open_stream(runtime_channel, "alice-1")
    await call.write(user_message("hello"))
    await read_until(call, "turn_done")
    call.cancel()
    for index in range(3):
        await stub.CreateSession(
            runtime_pb2.CreateSessionRequest(title=f"t{index}"), metadata=alice
        )
    await stub.CreateSession(runtime_pb2.CreateSessionRequest(session_id="bob-1"), metadata=bob)

    first = await stub.ListSessions(runtime_pb2.ListSessionsRequest(page_size=2), metadata=alice)
    assert len(first.sessions) == 2
    assert first.next_page_token
    rest = await stub.ListSessions(
        runtime_pb2.ListSessionsRequest(page_size=2, page_token=first.next_page_token),
        metadata=alice,
    )
    ids = [s.session_id for s in (*first.sessions, *rest.sessions)]
    assert len(ids) == 4
    assert len(set(ids)) == 4
    assert "bob-1" not in ids
    assert not rest.next_page_token
    titled = next(s for s in (*first.sessions, *rest.sessions) if s.session_id == "alice-1")
    assert titled.title == "hello"
    assert titled.message_count == 2

    history = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id="alice-1"), metadata=alice
    )
    assert [(m.role, m.content) for m in history.messages] == [
        ("user", "hello"),
        ("assistant", "one two three"),
    ]
    assert history.messages[1].agent == "coder"
    current = await stub.GetCurrentAgent(
        runtime_pb2.GetCurrentAgentRequest(session_id="alice-1"), metadata=alice
    )
    assert current.agent == "coder"
    foreign = (
        stub.GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id="alice-1"), metadata=bob
        ),
        stub.GetCurrentAgent(
            runtime_pb2.GetCurrentAgentRequest(session_id="alice-1"), metadata=bob
        ),
        stub.ListPendingApprovals(
            runtime_pb2.ListPendingApprovalsRequest(session_id="alice-1"), metadata=bob
        ),
    )
    for read in foreign:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "hello" not in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id="nope"), metadata=alice
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    agents = await stub.ListAgents(runtime_pb2.ListAgentsRequest(), metadata=alice)
    assert {a.name for a in agents.agents} == {"orchestrator", "coder", "architect", "debug", "ask"}
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await stub.CreateSession(
            runtime_pb2.CreateSessionRequest(session_id="bob-1"), metadata=alice
        )
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "bob" not in (duplicate.value.details() or "").replace("bob-1", "")


def summary(responses: list[runtime_pb2.ConverseResponse]) -> tuple[str, list[Any]]:
    """The text of the deltas, and every other event: what a client must end up with."""
    text = "".join(r.assistant_delta.text for r in responses if r.HasField("assistant_delta"))
    others = [r for r in responses if not r.HasField("assistant_delta")]
    return text, others


async def read_turns(call: Any, count: int) -> list[runtime_pb2.ConverseResponse]:
    responses: list[runtime_pb2.ConverseResponse] = []
    for _ in range(count):
        responses += await read_until(call, "turn_done")
    return responses


async def test_resume_replays_exactly_the_missed_events(runtime_channel: grpc.aio.Channel) -> None:
    call, _ = await open_stream(runtime_channel, "resume-1")
    await call.write(user_message("hello"))
    everything = await read_until(call, "turn_done")
    await call.write(user_message("again"))
    everything += await read_until(call, "turn_done")
    call.cancel()
    seqs = [r.seq for r in everything]
    assert seqs == sorted(set(seqs)), "strictly increasing: no duplicate"
    first_delta = next(r for r in everything if r.HasField("assistant_delta"))
    cut = first_delta.seq  # in the middle of the first answer
    missed = [r for r in everything if r.seq > cut]
    again, opened = await open_stream(runtime_channel, "resume-1", after=cut)
    assert opened.session_opened.recovered
    assert opened.session_opened.last_seq == seqs[-1]
    replayed = await read_turns(again, 2)
    assert summary(replayed) == summary(missed), "exactly the missed text and events"
    assert min(r.seq for r in replayed) > cut
    # Mid-stream resume, from further back.
    await again.write(runtime_pb2.ConverseRequest(resume=runtime_pb2.Resume(after_seq=seqs[0])))
    notice = await again.read()
    assert notice.HasField("session_opened")
    assert notice.session_opened.recovered
    replayed_again = await read_turns(again, 2)
    assert summary(replayed_again) == summary(everything[1:])
    # A position ahead of the log is none this session gave out: the client
    # is told to reload, and the session's numbering is left as it is.
    ahead, ahead_opened = await open_stream(runtime_channel, "resume-1", after=seqs[-1] + 50)
    assert not ahead_opened.session_opened.recovered
    assert ahead_opened.session_opened.last_seq == seqs[-1]
    await ahead.write(runtime_pb2.ConverseRequest(resume=runtime_pb2.Resume(after_seq=2**64 - 1)))
    refused = await ahead.read()
    assert refused.HasField("session_opened")
    assert not refused.session_opened.recovered
    await ahead.write(user_message("third"))
    more = await read_until(ahead, "turn_done")
    assert more[0].seq == seqs[-1] + 1, "a healthy session is never renumbered"
    again.cancel()
    ahead.cancel()
    # A position past anything SQL can store is refused the same way.
    huge, huge_opened = await open_stream(runtime_channel, "resume-1", after=2**64 - 1)
    assert not huge_opened.session_opened.recovered
    await huge.write(user_message("fourth"))
    assert (await read_until(huge, "turn_done"))[-1].turn_done.status == (
        runtime_pb2.TURN_STATUS_COMPLETED
    )
    huge.cancel()


async def test_pending_approval_is_listed_and_reoffered_on_reconnect(
    runtime_channel: grpc.aio.Channel,
) -> None:
    stub = stub_for(runtime_channel)
    alice = internal_metadata(KEY, user="alice")
    call, _ = await open_stream(runtime_channel, "approve-1")
    await call.write(user_message("write notes.txt"))
    proposed = await read_first(call, "notes.txt")
    assert proposed.requires_approval
    assert proposed.metadata.diff == "--- /dev/null\n+++ b/notes.txt\n@@ -0,0 +1 @@\n+x\n" + (
        "\\ No newline at end of file\n"
    )
    call.cancel()
    pending = await stub.ListPendingApprovals(
        runtime_pb2.ListPendingApprovalsRequest(session_id="approve-1"), metadata=alice
    )
    assert [(a.call_id, a.tool_name) for a in pending.approvals] == [
        (proposed.call_id, "write_file")
    ]
    back, _ = await open_stream(runtime_channel, "approve-1")
    reoffer = await back.read()
    assert reoffer.seq == 0
    assert reoffer.tool_call == proposed, "the same call, its diff and parent included"
    await back.write(
        runtime_pb2.ConverseRequest(
            approval_decision=runtime_pb2.ApprovalDecision(
                call_id=proposed.call_id, decision=runtime_pb2.DECISION_APPROVE
            )
        )
    )
    execute = await back.read()
    assert execute.tool_call.call_id == proposed.call_id
    assert not execute.tool_call.requires_approval
    assert execute.tool_call.metadata == proposed.metadata
    await back.write(
        runtime_pb2.ConverseRequest(
            tool_result=runtime_pb2.ToolResult(call_id=proposed.call_id, error="disk full")
        )
    )
    await read_until(back, "turn_done")
    history = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id="approve-1"), metadata=alice
    )
    (answer,) = [m for m in history.messages if m.tool_call_id == proposed.metadata.parent_call_id]
    assert json.loads(answer.content) == {"error": "disk full"}
    await back.write(
        runtime_pb2.ConverseRequest(
            tool_result=runtime_pb2.ToolResult(call_id=proposed.call_id, error="again")
        )
    )
    late = await back.read()
    assert late.error.code == "duplicate_tool_result"
    back.cancel()
    pending = await stub.ListPendingApprovals(
        runtime_pb2.ListPendingApprovalsRequest(session_id="approve-1"), metadata=alice
    )
    assert list(pending.approvals) == []


@pytest.mark.parametrize("decision", ["approve", "edit"])
async def test_a_decided_call_is_offered_again_once_its_session_was_evicted(
    runtime_channel: grpc.aio.Channel, database_url: str, decision: str
) -> None:
    """The human approves (or edits) a write, the IDE drops before running it and
    the waiting session leaves memory: reconnected, the IDE is asked to run it,
    with the arguments it was approved with and no second approval."""
    stub = stub_for(runtime_channel)
    alice = internal_metadata(KEY, user="alice")
    session_id = f"decided-{decision}"
    call, _ = await open_stream(runtime_channel, session_id)
    await call.write(user_message("write notes.txt"))
    proposed = await read_first(call, "notes.txt")
    assert proposed.requires_approval
    arguments = {"path": "notes.txt", "content": "x" if decision == "approve" else "edited"}
    request = runtime_pb2.ApprovalDecision(
        call_id=proposed.call_id,
        decision=runtime_pb2.DECISION_APPROVE
        if decision == "approve"
        else runtime_pb2.DECISION_EDIT,
    )
    if decision == "edit":
        request.modified_arguments.update(arguments)
    await call.write(runtime_pb2.ConverseRequest(approval_decision=request))
    execute = (await read_until(call, "tool_call"))[-1]
    assert not execute.tool_call.requires_approval
    pending = await stub.ListPendingApprovals(
        runtime_pb2.ListPendingApprovalsRequest(session_id=session_id), metadata=alice
    )
    assert list(pending.approvals) == [], "decided: nothing waits for a human"
    call.cancel()
    await lease_released(database_url, session_id)

    back, opened = await open_stream(runtime_channel, session_id, after=execute.seq)
    assert opened.session_opened.recovered
    reoffer = await asyncio.wait_for(back.read(), 10)  # the call lost, nothing would come
    assert reoffer.seq == 0
    assert reoffer.tool_call.call_id == proposed.call_id
    assert not reoffer.tool_call.requires_approval
    assert json_format.MessageToDict(reoffer.tool_call.arguments) == arguments
    assert reoffer.tool_call.metadata.parent_call_id == proposed.metadata.parent_call_id
    assert f"+{arguments['content']}" in reoffer.tool_call.metadata.diff, "the diff run"
    await back.write(
        runtime_pb2.ConverseRequest(
            tool_result=runtime_pb2.ToolResult(call_id=proposed.call_id, error="disk full")
        )
    )
    finished = await read_until(back, "turn_done")
    assert finished[-1].turn_done.status == runtime_pb2.TURN_STATUS_COMPLETED
    assert not any(r.HasField("error") for r in finished), "the result was taken"
    history = await stub.GetSessionHistory(
        runtime_pb2.GetSessionHistoryRequest(session_id=session_id), metadata=alice
    )
    results = [m for m in history.messages if m.tool_call_id == proposed.metadata.parent_call_id]
    assert len(results) == 1
    assert json.loads(results[0].content)["error"] == "disk full"
    back.cancel()


class RecordingContext:
    """Stands in for the gRPC context of one stream: records what is written."""

    def __init__(self) -> None:
        self.written: list[runtime_pb2.ConverseResponse] = []

    async def write(self, message: runtime_pb2.ConverseResponse) -> None:
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


async def test_the_pump_merges_deltas_that_queued_up_and_nothing_else() -> None:
    from runtime.events import AssistantText, Sequenced, ToolCallEvent, TurnDone, TurnStatus
    from runtime.service import AgentRuntimeServicer
    from runtime.stream import END_OF_STREAM, Subscriber

    subscriber = Subscriber(asyncio.Queue())
    for item in (
        Sequenced(1, AssistantText("a ")),
        Sequenced(2, AssistantText("b ")),
        Sequenced(3, AssistantText("c")),
        Sequenced(4, ToolCallEvent("c1", "read_file", {"path": "x"}, False)),
        Sequenced(5, AssistantText("d")),
        Sequenced(6, TurnDone(TurnStatus.COMPLETED)),
        END_OF_STREAM,
    ):
        subscriber.queue.put_nowait(item)
    context = RecordingContext()
    await AgentRuntimeServicer._pump(None, subscriber, [], 0, context)  # type: ignore[arg-type]
    kinds = [(m.seq, m.WhichOneof("event")) for m in context.written]
    assert kinds == [
        (3, "assistant_delta"),
        (4, "tool_call"),
        (5, "assistant_delta"),
        (6, "turn_done"),
    ]
    assert context.written[0].assistant_delta.text == "a b c"
