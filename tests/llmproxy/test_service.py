"""StreamChat, ListModels and Embed on the offline model, over real gRPC."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmproxy.offline import embed_text, expected_reply_text
from llmproxy.v1 import llmproxy_pb2
from tests.llmproxy.conftest import METADATA, Proxy, StartProxy

OFFLINE_YAML = """
model_list:
  - model_name: offline
    litellm_params:
      model: offline/echo
      reply_tokens: {reply_tokens}
  - model_name: embedder
    litellm_params:
      model: offline/embed
      embedding_dimensions: 16
"""


def chat(model: str, text: str, **kwargs: object) -> llmproxy_pb2.StreamChatRequest:
    return llmproxy_pb2.StreamChatRequest(
        model=model,
        messages=[
            llmproxy_pb2.ChatMessage(role="system", content="You are terse."),
            llmproxy_pb2.ChatMessage(role="user", content=text),
        ],
        **kwargs,  # type: ignore[arg-type]
    )


async def collect(
    proxy: Proxy, request: llmproxy_pb2.StreamChatRequest
) -> list[llmproxy_pb2.StreamChatResponse]:
    return [response async for response in proxy.stub.StreamChat(request, metadata=METADATA)]


def text_of(responses: list[llmproxy_pb2.StreamChatResponse]) -> str:
    return "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text")


async def test_offline_stream_is_deterministic_text_then_one_end(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()  # the packaged default.yaml

    responses = await collect(proxy, chat("offline", "explain the build"))

    kinds = [r.WhichOneof("chunk") for r in responses]
    # 24 tokens as fast as the model makes them: text deltas (merged while a
    # write was in flight), then exactly one end.
    assert set(kinds[:-1]) == {"text"}
    assert kinds[-1] == "end"
    assert text_of(responses) == expected_reply_text("explain the build", 24)
    assert text_of(responses).startswith("You said: explain the build ")
    end = responses[-1].end
    assert end.finish_reason == "stop"
    assert end.model == "offline/echo"
    assert end.usage.completion_tokens == 24
    assert end.usage.total_tokens == end.usage.prompt_tokens + 24
    # A second call answers the same words.
    assert text_of(await collect(proxy, chat("offline", "explain the build"))) == text_of(responses)


async def test_reply_length_comes_from_the_yaml(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML.format(reply_tokens=150))

    responses = await collect(proxy, chat("offline", "hi"))

    assert len(text_of(responses).split(" ")) == 150
    assert text_of(responses) == expected_reply_text("hi", 150)
    assert responses[-1].end.usage.completion_tokens == 150


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(OFFLINE_YAML.format(reply_tokens=50))

    responses = await collect(proxy, chat("offline", "hi", max_tokens=5, temperature=0.2))

    assert text_of(responses) == "You said: hi this is"
    assert responses[-1].end.finish_reason == "length"


async def test_list_models(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML.format(reply_tokens=3))

    listed = await proxy.stub.ListModels(llmproxy_pb2.ListModelsRequest(), metadata=METADATA)

    assert [(m.name, m.provider, m.supports_tools) for m in listed.models] == [
        ("offline", "offline", True),
        ("embedder", "offline", True),
    ]


async def test_default_config_lists_the_offline_model_with_its_window(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy()

    listed = await proxy.stub.ListModels(llmproxy_pb2.ListModelsRequest(), metadata=METADATA)

    assert [(m.name, m.context_window) for m in listed.models] == [("offline", 32768)]


async def test_embed_is_deterministic_with_the_configured_dimension(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(OFFLINE_YAML.format(reply_tokens=3))
    request = llmproxy_pb2.EmbedRequest(model="embedder", inputs=["alpha", "beta", "alpha"])

    first = await proxy.stub.Embed(request, metadata=METADATA)
    second = await proxy.stub.Embed(request, metadata=METADATA)

    vectors = [list(e.values) for e in first.embeddings]
    assert len(vectors) == 3
    assert all(len(v) == 16 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert vectors == [list(e.values) for e in second.embeddings]
    assert vectors[0] == pytest.approx(embed_text("alpha", 16), abs=1e-6)
    assert sum(x * x for x in vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert first.model == "offline/embed"


async def test_embed_on_a_model_with_a_known_context_window(start_proxy: StartProxy) -> None:
    """An embedding group whose window is known (every real embedding model
    has one) embeds; the window only budgets chat messages."""
    proxy = await start_proxy(
        """
model_list:
  - model_name: embedder
    litellm_params: {model: offline/embed, embedding_dimensions: 4}
    model_info: {max_input_tokens: 8191}
"""
    )

    answer = await proxy.stub.Embed(
        llmproxy_pb2.EmbedRequest(model="embedder", inputs=["alpha"]), metadata=METADATA
    )

    assert [len(e.values) for e in answer.embeddings] == [4]


async def test_calls_without_the_credential_are_unauthenticated(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()

    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await proxy.stub.ListModels(llmproxy_pb2.ListModelsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await collect_without_credential(proxy)

    assert listed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def collect_without_credential(proxy: Proxy) -> None:
    async for _ in proxy.stub.StreamChat(chat("offline", "hi")):
        pass


async def test_health_is_serving_without_credential(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    health = health_pb2_grpc.HealthStub(proxy.channel)

    for service in ("", "llmproxy.v1.LlmProxyService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            llmproxy_pb2.StreamChatRequest(model="offline"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages must not be empty",
        ),
        (
            chat("offline", "hi", tools=[llmproxy_pb2.Tool(name="f", parameters_json="{oops")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tools[0] (f): parameters_json is not valid JSON",
        ),
        (
            chat("offline", "hi", tool_choice="sometimes"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tool_choice='sometimes'",
        ),
        (
            chat("gpt-9", "hi"),
            grpc.StatusCode.NOT_FOUND,
            "model 'gpt-9' is not configured (configured: offline)",
        ),
    ],
)
async def test_bad_requests_are_refused_with_a_clear_status(
    start_proxy: StartProxy,
    request_: llmproxy_pb2.StreamChatRequest,
    code: grpc.StatusCode,
    message: str,
) -> None:
    proxy = await start_proxy()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(proxy, request_)

    assert refused.value.code() == code
    assert message in (refused.value.details() or "")


async def test_embed_unknown_model_is_not_found(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await proxy.stub.Embed(
            llmproxy_pb2.EmbedRequest(model="nope", inputs=["x"]), metadata=METADATA
        )

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_bug_in_the_proxy_is_internal_on_every_rpc(start_proxy: StartProxy) -> None:
    """Every RPC ends an unexpected exception (here: a model_info value the
    proxy cannot read) with INTERNAL and a fixed message, never with the
    Python exception's text."""
    proxy = await start_proxy(
        """
model_list:
  - model_name: odd
    litellm_params: {model: offline/echo}
    model_info: {max_input_tokens: lots}
"""
    )

    with pytest.raises(grpc.aio.AioRpcError) as listed:
        await proxy.stub.ListModels(llmproxy_pb2.ListModelsRequest(), metadata=METADATA)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await collect(proxy, chat("odd", "hi"))

    for refused in (listed.value, streamed.value):
        assert refused.code() == grpc.StatusCode.INTERNAL
        assert refused.details() == "internal error in llmproxy"


async def test_litellm_blocking_work_runs_one_thread_at_a_time(start_proxy: StartProxy) -> None:
    """LLM_PROXY__WORKER_THREADS (default 1) bounds both thread pools LiteLLM
    uses: the loop's default executor and anyio's worker threads. While one
    job holds the only thread, a second one does not start."""
    import threading

    import anyio.to_thread

    await start_proxy()
    loop = asyncio.get_running_loop()

    async def second_waits_for_first(run: Any) -> None:
        gate = threading.Event()
        first_in: asyncio.Future[None] = loop.create_future()
        second_in: asyncio.Future[None] = loop.create_future()

        def first() -> None:
            loop.call_soon_threadsafe(first_in.set_result, None)
            gate.wait(10)

        def second() -> None:
            loop.call_soon_threadsafe(second_in.set_result, None)

        jobs = asyncio.gather(run(first), run(second))
        try:
            await first_in
            done, _ = await asyncio.wait({second_in}, timeout=0.2)
            assert not done, "a second thread ran beside the first"
        finally:
            gate.set()
        await jobs
        assert second_in.done()

    await second_waits_for_first(lambda job: loop.run_in_executor(None, job))
    await second_waits_for_first(anyio.to_thread.run_sync)


def test_worker_threads_must_be_positive() -> None:
    from llmproxy.__main__ import Settings
    from mesh.config import ConfigError, load

    base = {"LLM_PROXY__INTERNAL_API_KEY": "k"}
    assert load(Settings, {**base, "LLM_PROXY__WORKER_THREADS": "3"}).worker_threads == 3
    with pytest.raises(ConfigError, match="LLM_PROXY__WORKER_THREADS"):
        load(Settings, {**base, "LLM_PROXY__WORKER_THREADS": "0"})
