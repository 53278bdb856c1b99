"""The runtime spreads model calls over llmproxy replicas (a comma list)."""

from __future__ import annotations

import socket

import pytest

from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc
from mesh.grpc_server import grpc_target, mesh_channel
from runtime.llm import ChatMessage, LlmClient, TextChunk
from runtime.llm_streams import CALLS_PER_STREAM
from tests.llmproxy.conftest import INTERNAL_KEY, METADATA, StartProxy

REPLICA = """
model_list:
  - model_name: offline
    litellm_params: {{model: offline/echo, reply_tokens: {tokens}}}
"""


async def replicas_answering(start_proxy: StartProxy, *, multiplex: bool, calls: int) -> set[int]:
    """The replicas (by their reply's length) that answered one model call
    after another, up to ``calls`` of them, until both did."""
    # Two replicas that answer with different lengths, so a reply tells
    # which one served it.
    first = await start_proxy(REPLICA.format(tokens=3))
    second = await start_proxy(REPLICA.format(tokens=4))
    address = f"127.0.0.1:{first.port}, 127.0.0.1:{second.port}"
    lengths: set[int] = set()
    async with mesh_channel(address) as channel:
        client = LlmClient(channel, internal_api_key=INTERNAL_KEY, timeout=10, multiplex=multiplex)
        for _ in range(calls):
            text = "".join(
                [
                    chunk.text
                    async for chunk in client.stream_chat("offline", [ChatMessage("user", "hi")])
                    if isinstance(chunk, TextChunk)
                ]
            )
            lengths.add(len(text.split()))
            if lengths == {3, 4}:
                break
        await client.aclose()
    return lengths


async def test_calls_are_balanced_over_every_replica(start_proxy: StartProxy) -> None:
    """Each model call is its own StreamChat call (the default), and gRPC's
    round robin alternates them."""
    assert await replicas_answering(start_proxy, multiplex=False, calls=20) == {3, 4}


async def test_calls_on_stream_chats_streams_are_balanced_over_every_replica(
    start_proxy: StartProxy,
) -> None:
    """A StreamChats stream carries CALLS_PER_STREAM calls to one replica;
    each next stream goes to the next replica."""
    calls = 3 * CALLS_PER_STREAM
    assert await replicas_answering(start_proxy, multiplex=True, calls=calls) == {3, 4}


async def test_a_replica_that_is_down_is_skipped(start_proxy: StartProxy) -> None:
    alive = await start_proxy(REPLICA.format(tokens=3))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    async with mesh_channel(f"127.0.0.1:{dead},127.0.0.1:{alive.port}") as channel:
        stub = llmproxy_pb2_grpc.LlmProxyServiceStub(channel)
        for _ in range(4):
            reply = await stub.ListModels(
                llmproxy_pb2.ListModelsRequest(), metadata=METADATA, timeout=5, wait_for_ready=True
            )
            assert [m.name for m in reply.models] == ["offline"]


def test_a_list_of_names_is_refused_with_a_reason() -> None:
    assert grpc_target("127.0.0.1:1") == "127.0.0.1:1"
    assert grpc_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValueError, match="dns:///"):
        grpc_target("llmproxy-a:1,llmproxy-b:2")


def test_the_runtime_refuses_an_address_list_it_cannot_use() -> None:
    from mesh.config import ConfigError, load
    from runtime.__main__ import RuntimeConfig

    base = {"AGENT_RUNTIME__INTERNAL_API_KEY": "k"}
    config = load(
        RuntimeConfig, {**base, "AGENT_RUNTIME__LLM_PROXY_ADDRESS": "127.0.0.1:1,127.0.0.1:2"}
    )
    assert config.llm_proxy_address == "127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ConfigError, match="AGENT_RUNTIME__LLM_PROXY_ADDRESS"):
        load(RuntimeConfig, {**base, "AGENT_RUNTIME__LLM_PROXY_ADDRESS": "a:1,b:2"})
