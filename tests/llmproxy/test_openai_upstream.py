"""The real LiteLLM openai/ provider against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from llmproxy.offline import expected_reply_text
from llmproxy.v1 import llmproxy_pb2
from tests.conftest import free_port
from tests.llmproxy.conftest import METADATA, StartProxy
from tests.llmproxy.openai_server import (
    TEXT_REPLY,
    TOOL_CALL_ID,
    TOOL_PREAMBLE,
    OpenAIServer,
)

# Every test here runs on the fast path and on LiteLLM's full path
# (tests/llmproxy/conftest.py's fast_path fixture).
pytestmark = pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])

UPSTREAM_YAML = """
model_list:
  - model_name: text
    litellm_params:
      model: openai/text-model
      api_base: {base}
      api_key: os.environ/TEST_OPENAI_KEY
  - model_name: tools
    litellm_params:
      model: openai/tool-model
      api_base: {base}
      api_key: os.environ/TEST_OPENAI_KEY
    model_info:
      max_input_tokens: 8192
      supports_function_calling: true
  - model_name: slow
    litellm_params:
      model: openai/slow-model
      api_base: {base}
      api_key: os.environ/TEST_OPENAI_KEY
  - model_name: wrong-key
    litellm_params:
      model: openai/text-model
      api_base: {base}
      api_key: sk-not-the-key
  - model_name: embeddings
    litellm_params:
      model: openai/embed-model
      api_base: {base}
      api_key: os.environ/TEST_OPENAI_KEY
router_settings:
  num_retries: 0
"""

READ_FILE = llmproxy_pb2.Tool(
    name="read_file",
    description="Read a workspace file.",
    parameters_json='{"type": "object", "properties": {"path": {"type": "string"}}, '
    '"required": ["path"]}',
)


def request(model: str, **kwargs: object) -> llmproxy_pb2.StreamChatRequest:
    return llmproxy_pb2.StreamChatRequest(
        model=model,
        messages=[llmproxy_pb2.ChatMessage(role="user", content="What is in main.py?")],
        **kwargs,  # type: ignore[arg-type]
    )


async def test_text_streams_through_litellm(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))

    responses = [r async for r in proxy.stub.StreamChat(request("text"), metadata=METADATA)]

    texts = [r.text.text for r in responses if r.WhichOneof("chunk") == "text"]
    # The test server sends the whole reply in one burst: the first delta
    # still goes out at once, alone; those that queue behind its write may
    # go out merged (adaptive coalescing), in order.
    assert "".join(texts) == TEXT_REPLY
    assert texts[0] == TEXT_REPLY.split(" ")[0] + " "
    assert [r.WhichOneof("chunk") for r in responses][-1] == "end"
    end = responses[-1].end
    assert end.finish_reason == "stop"
    assert end.usage.prompt_tokens == 11
    assert end.model == "openai/text-model"
    assert openai_server.requests[0]["stream"] is True


async def test_deltas_arriving_apart_go_out_one_by_one(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    """Coalescing never delays a delta when the stream keeps up: the slow
    model's deltas, 20 ms apart, each arrive as their own message."""
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    call = proxy.stub.StreamChat(request("slow"), metadata=METADATA)
    texts = []
    async for response in call:
        texts.append(response.text.text)
        if len(texts) == 5:
            break
    call.cancel()
    assert texts == ["word "] * 5
    # The upstream stream ends with the call (not at the test server's stop,
    # which would wait for it).
    assert await asyncio.to_thread(openai_server.stream_closed.wait, 10)


async def test_tool_call_streams_as_fragments(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    history = [
        llmproxy_pb2.ChatMessage(role="user", content="Open main.py"),
        llmproxy_pb2.ChatMessage(
            role="assistant",
            tool_calls=[llmproxy_pb2.ToolCall(id="call_0", name="list_files", arguments_json="{}")],
        ),
        llmproxy_pb2.ChatMessage(
            role="tool", tool_call_id="call_0", name="list_files", content="main.py"
        ),
    ]
    call = llmproxy_pb2.StreamChatRequest(
        model="tools", messages=history, tools=[READ_FILE], tool_choice="auto"
    )

    responses = [r async for r in proxy.stub.StreamChat(call, metadata=METADATA)]

    text = "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text")
    fragments = [r.tool_call for r in responses if r.WhichOneof("chunk") == "tool_call"]
    assert text == TOOL_PREAMBLE
    assert len(fragments) > 1
    assert {f.index for f in fragments} == {0}
    assert fragments[0].id == TOOL_CALL_ID
    assert fragments[0].name == "read_file"
    arguments = "".join(f.arguments_fragment for f in fragments)
    assert json.loads(arguments) == {"path": "src/main.py"}
    assert responses[-1].end.finish_reason == "tool_calls"
    # What reached the provider is the OpenAI shape of the proto request.
    sent = openai_server.requests[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a workspace file.",
                "parameters": json.loads(READ_FILE.parameters_json),
            },
        }
    ]
    assert sent["messages"][1]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}
    ]
    assert sent["messages"][2]["tool_call_id"] == "call_0"


async def test_upstream_401_is_failed_precondition(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in proxy.stub.StreamChat(request("wrong-key"), metadata=METADATA):
            pass

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "upstream authentication failed" in (refused.value.details() or "")
    assert "sk-not-the-key" not in (refused.value.details() or "")


async def test_embeddings_through_litellm(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))

    reply = await proxy.stub.Embed(
        llmproxy_pb2.EmbedRequest(model="embeddings", inputs=["ab", "abcd"]), metadata=METADATA
    )

    assert [list(e.values) for e in reply.embeddings] == [[2.0, 1.0, 0.5], [4.0, 1.0, 0.5]]


async def test_list_models_reports_provider_and_model_info(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))

    listed = await proxy.stub.ListModels(llmproxy_pb2.ListModelsRequest(), metadata=METADATA)

    by_name = {m.name: m for m in listed.models}
    assert by_name["tools"].provider == "openai"
    assert by_name["tools"].context_window == 8192
    assert by_name["tools"].supports_tools is True
    assert by_name["text"].context_window == 0  # not in LiteLLM's model map


async def test_cancelling_the_call_closes_the_upstream_stream(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    call = proxy.stub.StreamChat(request("slow"), metadata=METADATA)

    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    call.cancel()

    closed = await asyncio.to_thread(openai_server.stream_closed.wait, 10)
    assert closed
    assert openai_server.closed_streams == ["abandoned"]


async def test_deadline_closes_the_upstream_stream(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    # A first call loads what the path loads once: on a busy machine that
    # alone could outlast the deadline, before the upstream stream opens.
    [_ async for _ in proxy.stub.StreamChat(request("text"), metadata=METADATA)]
    assert await asyncio.to_thread(openai_server.stream_closed.wait, 10)
    assert openai_server.closed_streams == ["finished"]
    openai_server.closed_streams.clear()
    openai_server.stream_closed.clear()

    with pytest.raises(grpc.aio.AioRpcError) as expired:
        async for _ in proxy.stub.StreamChat(request("slow"), metadata=METADATA, timeout=1.5):
            pass

    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await asyncio.to_thread(openai_server.stream_closed.wait, 10)
    assert openai_server.closed_streams == ["abandoned"]


async def test_router_falls_back_to_offline_when_the_provider_is_down(
    start_proxy: StartProxy,
) -> None:
    closed_port = free_port()
    proxy = await start_proxy(
        f"""
model_list:
  - model_name: primary
    litellm_params:
      model: openai/text-model
      api_base: http://127.0.0.1:{closed_port}/v1
      api_key: sk-unused
  - model_name: offline
    litellm_params:
      model: offline/echo
      reply_tokens: 5
router_settings:
  num_retries: 0
  fallbacks: [{{primary: [offline]}}]
"""
    )

    responses = [r async for r in proxy.stub.StreamChat(request("primary"), metadata=METADATA)]

    text = "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text")
    assert text == expected_reply_text("What is in main.py?", 5)
    assert responses[-1].end.model == "offline/echo"


async def test_unreachable_provider_without_fallback_is_unavailable(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        f"""
model_list:
  - model_name: primary
    litellm_params:
      model: openai/text-model
      api_base: http://127.0.0.1:{free_port()}/v1
      api_key: sk-unused
router_settings:
  num_retries: 0
"""
    )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in proxy.stub.StreamChat(request("primary"), metadata=METADATA):
            pass

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
