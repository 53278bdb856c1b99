"""The runtime's gRPC boundary on a real loopback server.

The LLM proxy here is a small scripted gRPC servicer, so these tests pin down
the runtime in isolation; tests/integration runs the real proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import MeshServer, internal_metadata
from runtime.__main__ import RuntimeConfig, serve
from runtime.v1 import runtime_pb2, runtime_pb2_grpc

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


@pytest.fixture
async def runtime_channel(
    proxy: tuple[ScriptedProxy, int],
) -> AsyncIterator[grpc.aio.Channel]:
    _, proxy_port = proxy
    config = RuntimeConfig(
        internal_api_key=KEY, port=0, llm_proxy_address=f"127.0.0.1:{proxy_port}"
    )
    loop = asyncio.get_running_loop()
    port: asyncio.Future[int] = loop.create_future()
    stop: asyncio.Future[object] = loop.create_future()
    task = asyncio.create_task(serve(config, started=port.set_result, stop=stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{await port}") as channel:
        yield channel
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
    await call.write(open_request("s-3"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == code


async def test_first_event_must_be_open(runtime_channel: grpc.aio.Channel) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    call = stub.Converse(metadata=internal_metadata(KEY, user="alice"))
    await call.write(user_message("too early"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in (refused.value.details() or "")


async def test_unary_reads_say_unimplemented(runtime_channel: grpc.aio.Channel) -> None:
    stub = runtime_pb2_grpc.AgentRuntimeServiceStub(runtime_channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListSessions(
            runtime_pb2.ListSessionsRequest(), metadata=internal_metadata(KEY, user="alice")
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


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

    from runtime.conversation import ApprovalDecision, ToolResult
    from runtime.errors import InvalidArgument
    from runtime.service import to_client_event

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
    with pytest.raises(InvalidArgument):
        to_client_event(
            runtime_pb2.ConverseRequest(approval_decision=runtime_pb2.ApprovalDecision(call_id="c"))
        )
