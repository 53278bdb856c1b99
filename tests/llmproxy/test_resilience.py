"""Retries, fallbacks, timeouts, breakers and typed failures, through the real
LiteLLM openai/ code path against the local test server."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2
from runtime.errors import UpstreamError
from runtime.llm import ChatMessage, LlmClient, TextChunk
from tests.llmproxy.conftest import INTERNAL_KEY, METADATA, Proxy, StartProxy
from tests.llmproxy.openai_server import CUT_AFTER_WORDS, TEXT_REPLY, TWO_TOOL_CALLS, OpenAIServer

# Every test here runs on the fast path and on LiteLLM's full path
# (tests/llmproxy/conftest.py's fast_path fixture).
pytestmark = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])


def deployment(name: str, model: str, base: str, key: str = "os.environ/TEST_OPENAI_KEY") -> str:
    return f"""
  - model_name: {name}
    litellm_params:
      model: openai/{model}
      api_base: {base}
      api_key: {key}"""


def config(*deployments: str, settings: str = "num_retries: 0") -> str:
    indented = "\n".join("  " + line for line in settings.splitlines())
    return "model_list:" + "".join(deployments) + "\nrouter_settings:\n" + indented + "\n"


def request(model: str) -> llmproxy_pb2.StreamChatRequest:
    return llmproxy_pb2.StreamChatRequest(
        model=model, messages=[llmproxy_pb2.ChatMessage(role="user", content="hi")]
    )


async def stream(proxy: Proxy, model: str) -> list[llmproxy_pb2.StreamChatResponse]:
    return [r async for r in proxy.stub.StreamChat(request(model), metadata=METADATA)]


async def failure(
    proxy: Proxy, model: str
) -> tuple[grpc.aio.AioRpcError, list[llmproxy_pb2.StreamChatResponse]]:
    received: list[llmproxy_pb2.StreamChatResponse] = []

    async def consume() -> None:
        async for response in proxy.stub.StreamChat(request(model), metadata=METADATA):
            received.append(response)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await consume()
    return failed.value, received


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    values = [v for k, v in error.trailing_metadata() or () if k == key]
    return str(values[0]) if values else None


def text_of(responses: Sequence[llmproxy_pb2.StreamChatResponse]) -> str:
    return "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text")


async def test_two_interleaved_tool_calls_stream_as_they_arrive(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(config(deployment("tools", "two-tools-model", base)))

    responses = await stream(proxy, "tools")

    fragments = [r.tool_call for r in responses if r.WhichOneof("chunk") == "tool_call"]
    # Forwarded one by one in the provider's order: the indexes alternate.
    assert [f.index for f in fragments] == [0, 1, 0, 1, 0, 1, 0, 1]
    for index, (call_id, name, _) in enumerate(TWO_TOOL_CALLS):
        mine = [f for f in fragments if f.index == index]
        assert (mine[0].id, mine[0].name) == (call_id, name)
        assert all(f.id == "" and f.name == "" for f in mine[1:])
    arguments = {
        index: json.loads("".join(f.arguments_fragment for f in fragments if f.index == index))
        for index in (0, 1)
    }
    assert arguments == {0: {"path": "a.py"}, 1: {"path": "src", "recursive": True}}
    end = responses[-1].end
    assert end.finish_reason == "tool_calls"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (11, 8)
    assert end.usage.total_tokens == 19


async def test_a_500_is_retried_and_the_answer_arrives(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(deployment("flaky", "flaky-model", base), settings="num_retries: 1")
    )
    openai_server.fail_next("flaky-model", 500)

    responses = await stream(proxy, "flaky")

    assert text_of(responses) == TEXT_REPLY
    assert openai_server.count("flaky-model") == 2


async def test_a_401_is_never_retried_even_with_another_deployment(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(
            deployment("guarded", "auth-a-model", base, key="sk-wrong-a"),
            deployment("guarded", "auth-b-model", base, key="sk-wrong-b"),
            settings="num_retries: 3",
        )
    )

    error, received = await failure(proxy, "guarded")

    assert received == []
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailer(error, "x-error-reason") == "upstream_auth_failed"
    assert "upstream authentication failed" in (error.details() or "")
    assert "sk-wrong" not in (error.details() or "")
    assert openai_server.count("auth-a-model") + openai_server.count("auth-b-model") == 1


async def test_a_429_is_retried_then_reported_with_retry_after(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(deployment("limited", "limited-model", base), settings="num_retries: 1")
    )
    for _ in range(2):
        openai_server.fail_next("limited-model", 429, {"Retry-After": "1"})

    error, _ = await failure(proxy, "limited")

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailer(error, "x-error-reason") == "rate_limited"
    assert trailer(error, "x-retry-after") == "1"
    assert openai_server.count("limited-model") == 2, "retried once, as configured"


async def test_no_first_delta_in_time_falls_back_before_anything_was_sent(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    late = deployment("late", "late-model", base) + "\n      stream_first_token_timeout: 0.3"
    proxy = await start_proxy(
        config(
            late,
            deployment("text", "text-model", base),
            settings="num_retries: 0\nfallbacks: [{late: [text]}]",
        )
    )

    responses = await stream(proxy, "late")

    assert text_of(responses) == TEXT_REPLY
    assert responses[-1].end.model == "openai/text-model"
    assert openai_server.count("late-model") == 1
    health = await proxy.stub.GetDeploymentHealth(
        llmproxy_pb2.GetDeploymentHealthRequest(), metadata=METADATA
    )
    late_health = next(d for d in health.deployments if d.model_name == "late")
    assert late_health.failures_this_minute == 1, "the breaker counted the timeout"


async def test_no_first_delta_and_no_fallback_is_timed_out(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(
        config(deployment("late", "late-model", openai_server.base_url)), first_token_timeout=0.3
    )

    error, received = await failure(proxy, "late")

    assert received == []
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert trailer(error, "x-error-reason") == "timed_out"


async def test_a_connection_cut_mid_stream_is_interrupted_not_an_answer(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(
            deployment("cut", "cut-model", base),
            deployment("text", "text-model", base),
            # A fallback exists, but deltas were sent: it must not be used.
            settings="num_retries: 1\nfallbacks: [{cut: [text]}]",
        )
    )

    error, received = await failure(proxy, "cut")

    # Every delta sent before the cut arrives (possibly merged), then the error.
    texts = "".join(r.text.text for r in received if r.WhichOneof("chunk") == "text")
    assert texts == "".join(TEXT_REPLY.split(" ")[i] + " " for i in range(CUT_AFTER_WORDS))
    assert all(r.WhichOneof("chunk") != "end" for r in received)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(error, "x-error-reason") == "interrupted"
    assert "partial" in (error.details() or "")
    assert openai_server.count("text-model") == 0

    # The runtime's client turns it into an error the turn loop does not save.
    client = LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=10)
    chunks: list[object] = []

    async def consume() -> None:
        async for chunk in client.stream_chat("cut", [ChatMessage("user", "hi")]):
            chunks.append(chunk)

    with pytest.raises(UpstreamError) as upstream:
        await consume()
    assert upstream.value.code == "llm_interrupted"
    assert upstream.value.retryable is True
    assert all(isinstance(c, TextChunk) for c in chunks)


async def test_repeated_failures_open_the_breaker_and_it_is_visible(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(
            deployment("broken", "broken-model", base),
            settings="num_retries: 0\nallowed_fails: 1\ncooldown_time: 30",
        )
    )
    for _ in range(2):
        openai_server.fail_next("broken-model", 500)

    for _ in range(2):
        error, _ = await failure(proxy, "broken")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    health = await proxy.stub.GetDeploymentHealth(
        llmproxy_pb2.GetDeploymentHealthRequest(), metadata=METADATA
    )
    error, _ = await failure(proxy, "broken")

    (broken,) = health.deployments
    assert broken.state == llmproxy_pb2.DEPLOYMENT_STATE_COOLING_DOWN
    assert 0 < broken.cooldown_remaining_seconds <= 30
    assert broken.last_error_status == 500
    assert broken.failures_this_minute == 2
    assert broken.model == "openai/broken-model"
    # While the breaker is open the provider is not called at all.
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(error, "x-error-reason") == "unavailable"
    assert openai_server.count("broken-model") == 2


async def test_unary_chat_returns_the_whole_answer(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(config(deployment("text", "text-model", openai_server.base_url)))

    reply = await proxy.stub.Chat(
        llmproxy_pb2.ChatRequest(
            model="text", messages=[llmproxy_pb2.ChatMessage(role="user", content="hi")]
        ),
        metadata=METADATA,
    )

    assert reply.message.role == "assistant"
    assert reply.message.content == TEXT_REPLY
    assert reply.finish_reason == "stop"
    assert reply.usage.prompt_tokens == 11
    assert reply.model == "openai/text-model"
    assert not openai_server.requests[0].get("stream")


async def test_unary_chat_failure_carries_the_reason(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(config(deployment("text", "text-model", openai_server.base_url)))

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await proxy.stub.Chat(
            llmproxy_pb2.ChatRequest(
                model="absent", messages=[llmproxy_pb2.ChatMessage(role="user", content="hi")]
            ),
            metadata=METADATA,
        )

    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer(failed.value, "x-error-reason") == "model_not_found"


async def test_a_context_too_long_falls_back_to_the_larger_window(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    proxy = await start_proxy(
        config(
            deployment("small", "small-context-model", base),
            deployment("large", "text-model", base),
            settings="num_retries: 0\ncontext_window_fallbacks: [{small: [large]}]",
        )
    )

    responses = await stream(proxy, "small")

    assert text_of(responses) == TEXT_REPLY
    assert responses[-1].end.model == "openai/text-model"
    assert openai_server.count("small-context-model") == 1, "no retry of a 400"


async def test_a_context_too_long_without_fallback_says_so(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(
        config(deployment("small", "small-context-model", openai_server.base_url))
    )

    error, received = await failure(proxy, "small")

    assert received == []
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer(error, "x-error-reason") == "context_too_long"
