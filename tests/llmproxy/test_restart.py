"""The runtime reaches a restarted llmproxy at once, and gives up on one
that stays down within its connect timeout.

Real proxies (the offline model) on one loopback port, stopped and started
again; the runtime's real channel (mesh_channel) and LlmClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from llmproxy.__main__ import Settings, running
from mesh.config import ConfigError, load
from mesh.grpc_server import mesh_channel
from runtime.__main__ import RuntimeConfig
from runtime.errors import UpstreamError
from runtime.llm import ChatMessage, LlmClient, StreamEnd, TextChunk
from tests.llmproxy.conftest import INTERNAL_KEY

OFFLINE_WINDOW = 32768


@contextlib.asynccontextmanager
async def proxy_on(port: int) -> AsyncIterator[int]:
    """An llmproxy with the packaged offline config on ``port`` (0: any)."""
    settings = Settings(internal_api_key=INTERNAL_KEY, port=port, shutdown_grace=0.5)
    async with running(settings) as server:
        yield server.port


async def state_reached(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity) -> None:
    state = channel.get_state(try_to_connect=True)
    while state is not wanted:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


async def answered(client: LlmClient) -> bool:
    """Whether a whole reply, text and end, came back."""
    chunks = [c async for c in client.stream_chat("offline", [ChatMessage("user", "hi")])]
    return any(isinstance(c, TextChunk) for c in chunks) and isinstance(chunks[-1], StreamEnd)


def client_of(channel: grpc.aio.Channel, **timeouts: float) -> LlmClient:
    return LlmClient(channel, internal_api_key=INTERNAL_KEY, **({"timeout": 60.0} | timeouts))


async def test_a_call_made_while_the_proxy_restarts_waits_for_it() -> None:
    async with contextlib.AsyncExitStack() as first:
        port = await first.enter_async_context(proxy_on(0))
        async with mesh_channel(f"127.0.0.1:{port}") as channel:
            client = client_of(channel, connect_timeout=50)
            assert await answered(client)
            await first.aclose()

            # Made while the proxy is down: they wait instead of failing.
            reply = asyncio.create_task(answered(client))
            window = asyncio.create_task(client_of(channel).context_window("offline"))
            await state_reached(channel, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
            async with proxy_on(port):
                assert await reply
                assert await window == OFFLINE_WINDOW

            # Made the moment the proxy is back, the channel still backing off.
            await state_reached(channel, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
            async with proxy_on(port):
                assert await client_of(channel).context_window("offline") == OFFLINE_WINDOW
                assert await answered(client)


async def test_a_proxy_that_stays_down_gives_llm_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    async with mesh_channel(f"127.0.0.1:{dead}") as channel:
        # Bounded by the connect timeout, not by the whole call's.
        client = client_of(channel, timeout=3600, connect_timeout=0.2)
        with pytest.raises(UpstreamError) as streamed:
            await answered(client)
        assert (streamed.value.code, streamed.value.retryable) == ("llm_unavailable", True)
        assert "unreachable" in str(streamed.value)
        with pytest.raises(UpstreamError) as asked:
            await client.context_window("offline")
        assert asked.value.code == "llm_unavailable"


def test_the_connect_timeout_is_read_and_must_be_positive() -> None:
    base = {"AGENT_RUNTIME__INTERNAL_API_KEY": "k"}
    assert load(RuntimeConfig, base).llm_connect_timeout == 10
    configured = load(RuntimeConfig, {**base, "AGENT_RUNTIME__LLM_CONNECT_TIMEOUT": "2.5"})
    assert configured.llm_connect_timeout == 2.5
    with pytest.raises(ConfigError, match="AGENT_RUNTIME__LLM_CONNECT_TIMEOUT"):
        load(RuntimeConfig, {**base, "AGENT_RUNTIME__LLM_CONNECT_TIMEOUT": "0"})
