"""The runtime's model calls on StreamChats streams (runtime.llm_streams),
against real proxies: what goes over how many streams, and that a call
there answers, fails, times out and cancels as one StreamChat call does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import CollectorRegistry

from llmproxy.__main__ import Settings, running
from llmproxy.v1 import llmproxy_pb2
from mesh.grpc_server import internal_metadata, mesh_channel
from runtime.errors import UpstreamError
from runtime.llm import ChatMessage, LlmClient, StreamEnd, TextChunk
from runtime.llm_streams import (
    CALLS_IN_PROGRESS,
    CALLS_PER_STREAM,
    ChatStreams,
    encode_cancel,
    encode_start,
)
from tests.llmproxy.conftest import INTERNAL_KEY, StartProxy
from tests.llmproxy.openai_server import OpenAIServer
from tests.llmproxy.test_openai_upstream import UPSTREAM_YAML
from tests.runtime.test_service import KEY, ScriptedProxy
from tests.runtime.test_service import proxy as scripted_proxy  # noqa: F401  (a fixture)
from tests.support import eventually

SLOW_YAML = """
model_list:
  - model_name: offline
    litellm_params: {model: offline/echo, reply_tokens: 4}
  - model_name: slow
    litellm_params: {model: offline/echo, reply_tokens: 200, token_delay: 0.01}
"""

StreamChats = "/llmproxy.v1.LlmProxyService/StreamChats"
StreamChat = "/llmproxy.v1.LlmProxyService/StreamChat"


@dataclass
class Proxy:
    port: int
    registry: CollectorRegistry

    def finished(self, method: str, code: str | None = None) -> float:
        """Calls of ``method`` the proxy finished (with ``code``, or any)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name != "grpc_server_handled_total":
                    continue
                if sample.labels["method"] == method and code in (None, sample.labels["code"]):
                    total += sample.value
        return total


@contextlib.asynccontextmanager
async def proxy_with(config: str, tmp_path: object) -> AsyncIterator[Proxy]:
    path = tmp_path / "config.yaml"  # type: ignore[operator]
    path.write_text(config)
    registry = CollectorRegistry()
    settings = Settings(internal_api_key=INTERNAL_KEY, port=0, config_path=path, shutdown_grace=0.5)
    async with running(settings, registry) as server:
        yield Proxy(server.port, registry)


@contextlib.asynccontextmanager
async def proxy_and_channel(
    config: str, tmp_path: object
) -> AsyncIterator[tuple[Proxy, grpc.aio.Channel]]:
    async with (
        proxy_with(config, tmp_path) as proxy,
        mesh_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        yield proxy, channel


async def text_of(client: LlmClient, model: str = "offline", prompt: str = "hi") -> str:
    chunks = [c async for c in client.stream_chat(model, [ChatMessage("user", prompt)])]
    assert isinstance(chunks[-1], StreamEnd)
    return "".join(c.text for c in chunks if isinstance(c, TextChunk))


def test_a_start_request_is_the_stream_chats_request_it_names() -> None:
    chat = llmproxy_pb2.StreamChatRequest(
        model="m", messages=[llmproxy_pb2.ChatMessage(role="user", content="héllo")]
    )
    wire = encode_start(
        2**40,
        chat.SerializeToString(),
        request_id="r-1",
        user="alice",
        traceparent="00-abc-def-01",
        timeout_ms=300_000,
    )

    parsed = llmproxy_pb2.StreamChatsRequest.FromString(wire)
    assert parsed.id == 2**40
    assert parsed.start == chat
    assert (parsed.request_id, parsed.user, parsed.traceparent) == ("r-1", "alice", "00-abc-def-01")
    assert parsed.timeout_ms == 300_000
    bare = llmproxy_pb2.StreamChatsRequest.FromString(encode_start(1, b""))
    assert (bare.WhichOneof("kind"), bare.request_id, bare.timeout_ms) == ("start", "", 0)
    cancelled = llmproxy_pb2.StreamChatsRequest.FromString(encode_cancel(9))
    assert (cancelled.id, cancelled.WhichOneof("kind")) == (9, "cancel")


async def test_model_calls_one_after_another_share_one_stream(tmp_path: object) -> None:
    async with proxy_and_channel(SLOW_YAML, tmp_path) as (proxy, channel):
        client = LlmClient(channel, internal_api_key=INTERNAL_KEY, timeout=10, multiplex=True)
        alone = LlmClient(channel, internal_api_key=INTERNAL_KEY, timeout=10)
        texts = [await text_of(client, prompt=f"n{i}") for i in range(10)]
        assert texts == [await text_of(alone, prompt=f"n{i}") for i in range(10)]
        await client.aclose()
        await eventually(lambda: proxy.finished(StreamChats) == 1)
    # The ten calls on one stream; the ten of the client without streams, one call each.
    assert proxy.finished(StreamChat, "OK") == 10


async def test_a_stream_is_retired_after_its_calls_and_ends_cleanly(tmp_path: object) -> None:
    async with proxy_and_channel(SLOW_YAML, tmp_path) as (proxy, channel):
        client = LlmClient(channel, internal_api_key=INTERNAL_KEY, timeout=10, multiplex=True)
        for _ in range(CALLS_PER_STREAM + 1):
            assert await text_of(client)
        # The first stream half-closed after its last call and ended OK.
        await eventually(lambda: proxy.finished(StreamChats, "OK") == 1)
        await client.aclose()
        await eventually(lambda: proxy.finished(StreamChats) == 2)
    assert proxy.finished(StreamChat) == 0


async def test_calls_beyond_a_streams_share_open_another(tmp_path: object) -> None:
    async with proxy_and_channel(SLOW_YAML, tmp_path) as (proxy, channel):
        streams = ChatStreams(channel, internal_metadata(INTERNAL_KEY))
        request = llmproxy_pb2.StreamChatRequest(
            model="slow", messages=[llmproxy_pb2.ChatMessage(role="user", content="hi")]
        ).SerializeToString()

        async def first_chunk() -> None:
            calling = streams.call(request, limit=30)
            async for chunk in calling:
                assert chunk.WhichOneof("chunk") == "text"
                break
            await calling.aclose()

        calls = [asyncio.create_task(first_chunk()) for _ in range(CALLS_IN_PROGRESS + 1)]
        await eventually(lambda: streams.streams == 2)
        await asyncio.gather(*calls)
        await streams.aclose()
        await eventually(lambda: proxy.finished(StreamChats) == 2)


async def test_failures_are_the_errors_of_a_stream_chat_call(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    outcomes = []
    for multiplex in (True, False):
        # A proxy each: a 401 cools its deployment down for the next call.
        proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
        client = LlmClient(
            proxy.channel, internal_api_key=INTERNAL_KEY, timeout=10, multiplex=multiplex
        )
        openai_server.fail_next("text-model", 429, {"retry-after": "7"})
        errors = []
        for model in ("gpt-9", "wrong-key", "text"):
            with pytest.raises(UpstreamError) as failed:
                await text_of(client, model)
            errors.append((failed.value.code, failed.value.retryable, str(failed.value)))
        outcomes.append(errors)
        await client.aclose()

    assert outcomes[0] == outcomes[1]
    assert [code for code, _, _ in outcomes[0]] == [
        "llm_model_not_found",
        "llm_auth_failed",
        "llm_rate_limited",
    ]


async def test_a_call_stopped_early_closes_its_provider_stream_and_the_stream_goes_on(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    client = LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=10, multiplex=True)

    calling = client.stream_chat("slow", [ChatMessage("user", "hi")])
    received = 0
    async for _ in calling:
        received += 1
        if received == 3:
            break
    await calling.aclose()

    await eventually(lambda: openai_server.closed_streams == ["abandoned"])
    assert await text_of(client, "text")
    await client.aclose()


async def test_a_call_past_its_timeout_fails_and_closes_its_provider_stream(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    assert await text_of(
        LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=10), "text"
    )
    client = LlmClient(proxy.channel, internal_api_key=INTERNAL_KEY, timeout=0.5, multiplex=True)

    with pytest.raises(UpstreamError) as failed:
        await text_of(client, "slow")

    assert (failed.value.code, failed.value.retryable) == ("llm_timeout", True)
    await eventually(lambda: openai_server.closed_streams == ["finished", "abandoned"])
    await client.aclose()


async def test_a_proxy_that_stops_fails_the_calls_on_its_stream_as_unavailable(
    tmp_path: object,
) -> None:
    running_proxy = proxy_with(SLOW_YAML, tmp_path)
    proxy = await running_proxy.__aenter__()
    async with mesh_channel(f"127.0.0.1:{proxy.port}") as channel:
        client = LlmClient(
            channel, internal_api_key=INTERNAL_KEY, timeout=30, connect_timeout=0.5, multiplex=True
        )
        calling = client.stream_chat("slow", [ChatMessage("user", "hi")])
        assert isinstance(await anext(calling), TextChunk)
        await running_proxy.__aexit__(None, None, None)  # the proxy stops mid-answer

        with pytest.raises(UpstreamError) as failed:
            async for _ in calling:
                pass

        assert (failed.value.code, failed.value.retryable) == ("llm_unavailable", True)
        with pytest.raises(UpstreamError) as next_call:
            await text_of(client)
        assert next_call.value.code == "llm_unavailable"
        await client.aclose()


async def test_a_proxy_without_stream_chats_gets_a_stream_chat_per_call(
    scripted_proxy: tuple[ScriptedProxy, int],  # noqa: F811
) -> None:
    servicer, port = scripted_proxy
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = LlmClient(channel, internal_api_key=KEY, timeout=10, multiplex=True)
        streams = client._streams
        assert streams is not None
        assert streams.supported
        texts = [await text_of(client, "m") for _ in range(3)]
        await client.aclose()

    assert texts == ["one two three"] * 3
    assert len(servicer.requests) == 3
    # The first call tried a stream, met UNIMPLEMENTED, and none was tried again.
    assert not streams.supported
    assert streams.streams == 0
