"""A session's model choice (runtime.models): offered by ListModels, chosen
by a ``set_model`` event or UpdateSession, durable, used by every model call."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import MeshServer, internal_metadata
from runtime.__main__ import RuntimeConfig
from runtime.commands import SetModel, UserMessage
from runtime.events import ErrorEvent, TurnDone
from runtime.llm import TextChunk
from runtime.state import Session
from runtime.store import Store
from runtime.v1 import runtime_pb2
from tests.runtime.test_conversation import ScriptedLlm, make, until
from tests.runtime.test_service import (
    KEY,
    ScriptedProxy,
    database_url,  # noqa: F401  (a fixture)
    open_stream,
    read_until,
    running_runtime,
    stub_for,
    user_message,
)

ROUTE = '{"agent": "debug", "confidence": 0.8, "rationale": "a failure"}'


async def test_a_chosen_model_serves_every_call_but_routing(store: Store) -> None:
    llm = ScriptedLlm([TextChunk(ROUTE)], [TextChunk("a")], [TextChunk("b")])
    conversation, outbox, session = await make(
        store,
        llm,
        agent="orchestrator",
        routing_model="router",
        agent_models={"debug": "debugger"},
        user_models=("m", "big"),
    )
    await conversation.handle(UserMessage("the tests crash"))
    await until(outbox, TurnDone)
    await conversation.handle(SetModel("big"))
    await conversation.handle(UserMessage("again"))
    await until(outbox, TurnDone)
    assert llm.models_seen == ["router", "debugger", "big"], "the per-agent default until chosen"
    row = await store.get_session(session.session_id)
    assert row is not None
    assert row.model == "big"
    reloaded = Session.from_store(await store.load(session.session_id))
    assert reloaded.model == "big", "the choice outlives the process"


async def test_a_model_not_offered_is_refused_and_changes_nothing(store: Store) -> None:
    llm = ScriptedLlm([TextChunk("a")])
    conversation, outbox, session = await make(store, llm, user_models=("m", "big"))
    await conversation.handle(SetModel("gpt-9"))
    refusal = (await until(outbox, ErrorEvent))[-1]
    assert isinstance(refusal, ErrorEvent)
    assert refusal.code == "unknown_model"
    assert "'gpt-9' is not offered here; choose one of: m, big" in refusal.message
    await conversation.handle(UserMessage("hello"))
    await until(outbox, TurnDone)
    assert llm.models_seen == ["m"]
    row = await store.get_session(session.session_id)
    assert row is not None
    assert (row.model, session.model) == ("", "")


async def test_without_user_models_only_the_default_is_offered(store: Store) -> None:
    conversation, outbox, _ = await make(store, ScriptedLlm())
    await conversation.handle(SetModel("big"))
    refusal = (await until(outbox, ErrorEvent))[-1]
    assert isinstance(refusal, ErrorEvent)
    assert refusal.code == "unknown_model"
    assert refusal.message.endswith("choose one of: m")


class WindowedProxy(ScriptedProxy):
    """The scripted proxy, with the context windows ListModels reports."""

    async def ListModels(
        self, request: llmproxy_pb2.ListModelsRequest, context: Any
    ) -> llmproxy_pb2.ListModelsResponse:
        return llmproxy_pb2.ListModelsResponse(
            models=[
                llmproxy_pb2.Model(name="offline", context_window=8000),
                llmproxy_pb2.Model(name="big", context_window=128000),
            ]
        )


@pytest.fixture
async def models_runtime(database_url: str) -> AsyncIterator[tuple[WindowedProxy, Any]]:  # noqa: F811
    """The real runtime offering ``offline`` (its default), ``big`` and ``small``."""
    servicer = WindowedProxy()
    server = MeshServer(address="127.0.0.1:0", internal_api_key=KEY, service_names=[])
    llmproxy_pb2_grpc.add_LlmProxyServiceServicer_to_server(servicer, server.server)
    proxy_port = await server.start()
    config = RuntimeConfig(
        internal_api_key=KEY,
        port=0,
        llm_proxy_address=f"127.0.0.1:{proxy_port}",
        database_url=database_url,
        detach_grace=0,
        user_models=("offline", "big", "small"),
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            port = await stack.enter_async_context(running_runtime(config))
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            )
            yield servicer, channel
    finally:
        await server.stop(0)


async def test_list_models_answers_the_offered_groups_and_the_sessions_choice(
    models_runtime: tuple[WindowedProxy, Any],
) -> None:
    _, channel = models_runtime
    stub, alice = stub_for(channel), internal_metadata(KEY, user="alice")
    listing = await stub.ListModels(runtime_pb2.ListModelsRequest(), metadata=alice)
    assert [(m.name, m.context_window) for m in listing.models] == [
        ("offline", 8000),
        ("big", 128000),
        ("small", 0),
    ]
    assert (listing.default_model, listing.session_model) == ("offline", "")
    await stub.CreateSession(runtime_pb2.CreateSessionRequest(session_id="s-l"), metadata=alice)
    await stub.UpdateSession(
        runtime_pb2.UpdateSessionRequest(session_id="s-l", model="small"), metadata=alice
    )
    listing = await stub.ListModels(runtime_pb2.ListModelsRequest(session_id="s-l"), metadata=alice)
    assert listing.session_model == "small"


async def test_the_proxy_is_asked_for_the_model_chosen_by_frame_or_update(
    models_runtime: tuple[WindowedProxy, Any],
) -> None:
    proxy, channel = models_runtime
    stub, alice = stub_for(channel), internal_metadata(KEY, user="alice")
    call, _ = await open_stream(channel, "s-frame")
    await call.write(runtime_pb2.ConverseRequest(set_model=runtime_pb2.SetModel(model="big")))
    await call.write(user_message("hello"))
    await read_until(call, "turn_done")
    call.cancel()
    routing, answer = proxy.requests
    assert (routing.model, answer.model) == ("offline", "big"), "routing keeps its model"

    await stub.CreateSession(runtime_pb2.CreateSessionRequest(session_id="s-patch"), metadata=alice)
    updated = await stub.UpdateSession(
        runtime_pb2.UpdateSessionRequest(session_id="s-patch", model="small", title="t"),
        metadata=alice,
    )
    assert (updated.session.model, updated.session.title) == ("small", "t")
    call, _ = await open_stream(channel, "s-patch")
    await call.write(user_message("hello"))
    await read_until(call, "turn_done")
    call.cancel()
    assert proxy.requests[-1].model == "small"

    for session_id, model in (("s-frame", "big"), ("s-patch", "small")):
        request = runtime_pb2.GetSessionRequest(session_id=session_id)
        session = (await stub.GetSession(request, metadata=alice)).session
        history = await stub.GetSessionHistory(
            runtime_pb2.GetSessionHistoryRequest(session_id=session_id), metadata=alice
        )
        assert (session.model, history.model) == (model, model), "the choice is in history"


async def test_a_model_not_offered_or_someone_elses_session_is_refused(
    models_runtime: tuple[WindowedProxy, Any],
) -> None:
    _, channel = models_runtime
    stub = stub_for(channel)
    alice, bob = internal_metadata(KEY, user="alice"), internal_metadata(KEY, user="bob")
    await stub.CreateSession(runtime_pb2.CreateSessionRequest(session_id="s-a"), metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UpdateSession(
            runtime_pb2.UpdateSessionRequest(session_id="s-a", model="gpt-9"), metadata=alice
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'gpt-9' is not offered here; choose one of: offline, big, small" in str(
        refused.value.details()
    )
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.UpdateSession(
            runtime_pb2.UpdateSessionRequest(session_id="s-a", model="big"), metadata=bob
        )
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.ListModels(runtime_pb2.ListModelsRequest(session_id="s-a"), metadata=bob)
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    session = (
        await stub.GetSession(runtime_pb2.GetSessionRequest(session_id="s-a"), metadata=alice)
    ).session
    assert session.model == "", "nothing was chosen"
