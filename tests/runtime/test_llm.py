"""The runtime's LLM proxy client against a scripted proxy on a loopback server."""

from __future__ import annotations

import json

import grpc

from llmproxy.v1 import llmproxy_pb2
from runtime.llm import ChatMessage, LlmClient, ToolSpec
from tests.runtime import test_service
from tests.runtime.test_service import KEY, ScriptedProxy

proxy = test_service.proxy

READ = ToolSpec("read_file", "Read a file.", {"type": "object", "properties": {"path": {}}})
LIST = ToolSpec("list_files", "List files.", {"type": "object", "properties": {"d": {}}})


def declared(request: llmproxy_pb2.StreamChatRequest) -> list[tuple[str, str, object]]:
    return [(t.name, t.description, json.loads(t.parameters_json)) for t in request.tools]


async def test_tools_reach_the_proxy_as_declared_on_every_call(
    proxy: tuple[ScriptedProxy, int],
) -> None:
    servicer, port = proxy
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = LlmClient(channel, internal_api_key=KEY, timeout=10)
        changed = ToolSpec("read_file", "Read a file, or lines of it.", {"type": "object"})
        for tools in ([READ, LIST], [LIST], [READ, LIST], [changed, LIST]):
            async for _ in client.stream_chat("m", [ChatMessage("user", "hi")], tools):
                pass
    assert [declared(request) for request in servicer.requests] == [
        [(t.name, t.description, t.parameters) for t in tools]
        for tools in ([READ, LIST], [LIST], [READ, LIST], [changed, LIST])
    ]
    assert [m.content for m in servicer.requests[-1].messages] == ["hi"]
