"""The fast path against LiteLLM's full path, over real HTTP to the test server.

Typed errors, retries, fallbacks, first-delta timeouts, a cut stream and
cancellation run on both paths in test_resilience.py and
test_openai_upstream.py; here: that the fast path really leaves LiteLLM's
completion call out, that both paths send the same request and stream the
same answer, that the Router still cools a failing deployment down, and
which deployments take the fast path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import litellm
import pytest

from llmproxy.config import parse_config
from llmproxy.fastpath import FastPathUpstream
from llmproxy.offline import expected_reply_text
from llmproxy.router import build_router
from llmproxy.v1 import llmproxy_pb2
from tests.llmproxy.conftest import METADATA, Proxy, StartProxy
from tests.llmproxy.openai_server import TEXT_REPLY, OpenAIServer

READ_FILE = llmproxy_pb2.Tool(
    name="read_file",
    description="Read a workspace file.",
    parameters_json='{"type": "object", "properties": {"path": {"type": "string"}}}',
)


def config(base: str, settings: str = "num_retries: 0") -> str:
    groups = {
        "text": "text-model",
        "tools": "tool-model",
        "two-tools": "two-tools-model",
        "primary": "broken-model",
    }
    text = "model_list:\n"
    for name, model in groups.items():
        text += (
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/{model}\n"
            f"      api_base: {base}\n      api_key: os.environ/TEST_OPENAI_KEY\n"
        )
    text += (
        "  - model_name: offline\n    litellm_params:\n      model: offline/echo\n"
        "      reply_tokens: 12\n"
    )
    indented = "\n".join("  " + line for line in settings.splitlines())
    return text + "router_settings:\n" + indented + "\n"


def request(model: str, **fields: Any) -> llmproxy_pb2.StreamChatRequest:
    return llmproxy_pb2.StreamChatRequest(
        model=model,
        messages=[llmproxy_pb2.ChatMessage(role="user", content="Open main.py please")],
        **fields,
    )


def answer(responses: Sequence[llmproxy_pb2.StreamChatResponse]) -> dict[str, Any]:
    """What a caller reads from a stream, whatever merging its text got."""
    return {
        "text": "".join(r.text.text for r in responses if r.WhichOneof("chunk") == "text"),
        "tool_calls": [
            (f.index, f.id, f.name, f.arguments_fragment)
            for f in (r.tool_call for r in responses if r.WhichOneof("chunk") == "tool_call")
        ],
        "end": responses[-1].end,
        "kinds": [r.WhichOneof("chunk") for r in responses][-1:],
    }


async def streamed(proxy: Proxy, call: llmproxy_pb2.StreamChatRequest) -> dict[str, Any]:
    return answer([r async for r in proxy.stub.StreamChat(call, metadata=METADATA)])


async def test_the_fast_path_streams_without_litellm_completion(
    start_proxy: StartProxy, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(*args: object, **kwargs: object) -> None:
        raise RuntimeError("litellm.acompletion was called")

    yaml = config(openai_server.base_url)
    fast = await start_proxy(yaml, fast_path=True)
    full = await start_proxy(yaml, fast_path=False)
    monkeypatch.setattr(litellm, "acompletion", refused)

    text = await streamed(fast, request("text"))
    tools = await streamed(fast, request("two-tools", tools=[READ_FILE]))
    offline = await streamed(fast, request("offline"))

    assert text["text"] == TEXT_REPLY
    assert text["end"].usage.prompt_tokens == 11
    assert [call[0] for call in tools["tool_calls"]] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert tools["end"].finish_reason == "tool_calls"
    assert offline["text"] == expected_reply_text("Open main.py please", 12)
    with pytest.raises(grpc.aio.AioRpcError):
        await streamed(full, request("text"))  # the full path does call it


@pytest.mark.parametrize(
    "call",
    [
        request("text"),
        request("tools", tools=[READ_FILE], tool_choice="auto", temperature=0.5, max_tokens=64),
        request("two-tools", tools=[READ_FILE]),
        request("offline"),
        request("offline", max_tokens=3),
    ],
    ids=["text", "tool-call", "two-tool-calls", "offline", "offline-cut-by-max-tokens"],
)
async def test_both_paths_send_the_same_request_and_stream_the_same_answer(
    start_proxy: StartProxy, openai_server: OpenAIServer, call: llmproxy_pb2.StreamChatRequest
) -> None:
    yaml = config(openai_server.base_url)
    fast = await start_proxy(yaml, fast_path=True)
    full = await start_proxy(yaml, fast_path=False)

    from_fast = await streamed(fast, call)
    sent_by_fast = list(openai_server.requests)
    openai_server.requests.clear()
    from_full = await streamed(full, call)

    assert from_fast == from_full
    assert from_fast["kinds"] == ["end"]
    assert sent_by_fast == openai_server.requests
    if call.model != "offline":
        assert json.dumps(sent_by_fast)  # something was sent, and it is JSON
        assert len(sent_by_fast) == 1


WRITE_FILE = llmproxy_pb2.Tool(
    name="write_file",
    description="Write a workspace file.",
    parameters_json='{"type": "object", "properties": {"path": {"type": "string"}}}',
)


async def test_one_route_sends_each_request_its_own_tools_and_parameters(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    """The fast path keeps LiteLLM's mapping of a request's parameters per
    route; a run of calls on one route, tools and parameters changing and
    coming back, sends what the full path sends for each."""
    yaml = config(openai_server.base_url).replace(
        "model_list:\n",
        "model_list:\n  - model_name: reasoning\n    litellm_params:\n"
        f"      model: openai/o3-mini\n      api_base: {openai_server.base_url}\n"
        "      api_key: os.environ/TEST_OPENAI_KEY\n",
    )
    calls = [
        request("tools", tools=[READ_FILE], tool_choice="auto", temperature=0.5, max_tokens=64),
        request("tools", tools=[WRITE_FILE], tool_choice="auto", temperature=0.5, max_tokens=64),
        request("tools"),
        request("tools", tools=[READ_FILE, WRITE_FILE], max_tokens=32),
        request("tools", tools=[READ_FILE], tool_choice="none", temperature=0.5, max_tokens=64),
        request("tools", tools=[WRITE_FILE], tool_choice="auto", temperature=0.5, max_tokens=64),
        request("reasoning", tools=[READ_FILE], max_tokens=64),  # sent as max_completion_tokens
        request("reasoning", max_tokens=64),
    ]
    sent: dict[bool, list[dict[str, Any]]] = {}
    for fast_path in (True, False):
        proxy = await start_proxy(yaml, fast_path=fast_path)
        openai_server.requests.clear()
        for call in calls:
            await streamed(proxy, call)
        sent[fast_path] = list(openai_server.requests)

    assert sent[True] == sent[False]
    assert [[t["function"]["name"] for t in body.get("tools", ())] for body in sent[True]] == [
        ["read_file"],
        ["write_file"],
        [],
        ["read_file", "write_file"],
        ["read_file"],
        ["write_file"],
        ["read_file"],
        [],
    ]
    assert sent[True][6]["max_completion_tokens"] == 64
    assert "max_tokens" not in sent[True][6]
    assert sent[True][4]["tool_choice"] == "none"


async def test_a_stream_cut_before_its_first_chunk_falls_back(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    """As LiteLLM's Router does inside its own stream wrapper on the full
    path (whose fallback stream, under this suite's warnings-as-errors,
    trips over a pydantic deprecation warning in LiteLLM's usage merging)."""
    base = openai_server.base_url
    groups = {"early": "early-cut-model", "text": "text-model", "alone": "early-cut-model"}
    proxy = await start_proxy(
        "model_list:\n"
        + "".join(
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/{model}\n"
            f"      api_base: {base}\n      api_key: os.environ/TEST_OPENAI_KEY\n"
            for name, model in groups.items()
        )
        + "router_settings:\n  num_retries: 0\n  fallbacks: [{early: [text]}]\n"
    )

    fell_back = await streamed(proxy, request("early"))
    with pytest.raises(grpc.aio.AioRpcError) as alone:
        await streamed(proxy, request("alone"))

    assert fell_back["text"] == TEXT_REPLY
    assert fell_back["end"].model == "openai/text-model"
    assert alone.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(alone.value.trailing_metadata() or ())["x-error-reason"] == "unavailable"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_deployment_that_keeps_failing_cools_down_and_is_skipped(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    base = openai_server.base_url
    pair = "".join(
        f"  - model_name: pair\n    litellm_params:\n      model: openai/{model}\n"
        f"      api_base: {base}\n      api_key: os.environ/TEST_OPENAI_KEY\n"
        for model in ("broken-model", "text-model")
    )
    proxy = await start_proxy(
        "model_list:\n" + pair + "router_settings:\n  num_retries: 3\n  allowed_fails: 1\n"
        "  cooldown_time: 60\n  retry_after: 0\n"
    )
    for _ in range(50):
        openai_server.fail_next("broken-model", 500)

    # The Router picks at random: call until the broken deployment was tried
    # twice (its breaker then opens); every call still gets its answer.
    for _ in range(40):
        assert (await streamed(proxy, request("pair")))["text"] == TEXT_REPLY
        if openai_server.count("broken-model") >= 2:
            break
    tried = openai_server.count("broken-model")
    health = await proxy.stub.GetDeploymentHealth(
        llmproxy_pb2.GetDeploymentHealthRequest(), metadata=METADATA
    )
    for _ in range(10):
        assert (await streamed(proxy, request("pair")))["text"] == TEXT_REPLY

    broken = next(d for d in health.deployments if d.model == "openai/broken-model")
    assert broken.state == llmproxy_pb2.DEPLOYMENT_STATE_COOLING_DOWN
    assert broken.last_error_status == 500
    assert openai_server.count("broken-model") == tried, "skipped while cooling down"


def upstream_for(document: dict[str, Any]) -> FastPathUpstream:
    return FastPathUpstream(build_router(parse_config(document, environ={})))


def deployment(name: str, model: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_key": "sk-x", **params}}


async def test_only_openai_shaped_and_offline_deployments_take_the_fast_path() -> None:
    upstream = upstream_for(
        {
            "model_list": [
                deployment("openai", "openai/gpt-4o-mini"),
                deployment("vllm", "openai/qwen", api_base="http://127.0.0.1:1/v1", rpm=10),
                deployment("offline", "offline/echo"),
                deployment("anthropic", "anthropic/claude-3-5-haiku-latest"),
                deployment("tuned", "openai/gpt-4o-mini", temperature=0.1),
                deployment("mixed", "openai/gpt-4o-mini"),
                deployment("mixed", "anthropic/claude-3-5-haiku-latest"),
                deployment("to-anthropic", "openai/gpt-4o-mini"),
                deployment("to-offline", "openai/gpt-4o-mini"),
            ],
            "router_settings": {
                "fallbacks": [{"to-anthropic": ["anthropic"]}, {"to-offline": ["offline"]}]
            },
        }
    )
    try:
        fast = {
            group: upstream.takes_fast_path(group)
            for group in (
                "openai",
                "vllm",
                "offline",
                "anthropic",
                "tuned",
                "mixed",
                "to-anthropic",
                "to-offline",
                "absent",
            )
        }
    finally:
        await upstream.aclose()

    assert fast == {
        "openai": True,
        "vllm": True,
        "offline": True,
        "anthropic": False,  # not OpenAI-shaped
        "tuned": False,  # a parameter only LiteLLM applies
        "mixed": False,  # one of its deployments is not
        "to-anthropic": False,  # its fallback is not
        "to-offline": True,
        "absent": False,
    }


@pytest.mark.parametrize("aiohttp", [True, False], ids=["litellm-default", "aiohttp-disabled"])
async def test_the_fast_path_reaches_a_provider_over_litellms_own_http_transport(
    aiohttp: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths go out the same way: LiteLLM's OpenAI handler uses its
    aiohttp transport under httpx (half httpx's own CPU per call and per
    chunk, scripts/bench-llmproxy) unless ``disable_aiohttp_transport``."""
    from litellm.llms.custom_httpx.aiohttp_transport import LiteLLMAiohttpTransport

    monkeypatch.setattr(litellm, "disable_aiohttp_transport", not aiohttp)
    upstream = upstream_for({"model_list": [deployment("openai", "openai/gpt-4o-mini")]})
    try:
        (route,) = upstream._routes.values()
        transport = route.client._client._transport  # type: ignore[attr-defined]
    finally:
        await upstream.aclose()

    assert isinstance(transport, LiteLLMAiohttpTransport) is aiohttp
