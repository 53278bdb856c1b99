"""StreamChats: many StreamChat calls on one stream, over real gRPC.

Each call must answer exactly what StreamChat answers, fail on its own with
the status StreamChat would end with, and be cancellable alone; the offline
model for the answers, the test OpenAI server where a provider stream must
be seen closing.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llmproxy.offline import expected_reply_text
from llmproxy.v1 import llmproxy_pb2
from tests.llmproxy.conftest import METADATA, Proxy, StartProxy
from tests.llmproxy.openai_server import OpenAIServer
from tests.llmproxy.test_openai_upstream import UPSTREAM_YAML, request
from tests.llmproxy.test_service import chat, collect, text_of
from tests.support import eventually

OFFLINE_YAML = """
model_list:
  - model_name: offline
    litellm_params:
      model: offline/echo
      reply_tokens: 20
      token_delay: 0.005
"""

Call = Any  # grpc.aio.StreamStreamCall[StreamChatsRequest, StreamChatsResponse]


def start(
    call_id: int, chat_request: llmproxy_pb2.StreamChatRequest, **kwargs: Any
) -> llmproxy_pb2.StreamChatsRequest:
    return llmproxy_pb2.StreamChatsRequest(id=call_id, start=chat_request, **kwargs)


def cancel(call_id: int) -> llmproxy_pb2.StreamChatsRequest:
    return llmproxy_pb2.StreamChatsRequest(id=call_id, cancel=llmproxy_pb2.CancelChat())


def ended(response: llmproxy_pb2.StreamChatsResponse) -> bool:
    return response.WhichOneof("kind") == "status" or response.chunk.WhichOneof("chunk") == "end"


async def read_until_ended(
    stream: Call, calls: set[int]
) -> tuple[dict[int, list[llmproxy_pb2.StreamChatsResponse]], list[int]]:
    """Every response until each of ``calls`` has ended, by call, and the
    order in which the calls' responses arrived."""
    by_call: dict[int, list[llmproxy_pb2.StreamChatsResponse]] = {}
    order: list[int] = []
    waiting = set(calls)
    while waiting:
        response = await stream.read()
        assert response is not grpc.aio.EOF, f"the stream ended with {waiting} still open"
        by_call.setdefault(response.id, []).append(response)
        order.append(response.id)
        if ended(response):
            waiting.discard(response.id)
    return by_call, order


def chunks(responses: list[llmproxy_pb2.StreamChatsResponse]) -> list[Any]:
    return [r.chunk for r in responses if r.WhichOneof("kind") == "chunk"]


def status_of(responses: list[llmproxy_pb2.StreamChatsResponse]) -> llmproxy_pb2.ChatStatus:
    assert responses[-1].WhichOneof("kind") == "status", responses[-1]
    assert all(r.WhichOneof("kind") == "chunk" for r in responses[:-1])
    return responses[-1].status


def open_stream(proxy: Proxy) -> Call:
    return proxy.stub.StreamChats(metadata=METADATA)


async def test_calls_on_one_stream_answer_what_stream_chat_answers(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = open_stream(proxy)

    await stream.write(start(1, chat("offline", "explain the build")))
    await stream.write(start(2, chat("offline", "fix the test")))
    by_call, order = await read_until_ended(stream, {1, 2})

    for call_id, prompt in ((1, "explain the build"), (2, "fix the test")):
        alone = await collect(proxy, chat("offline", prompt))
        answered = chunks(by_call[call_id])
        assert text_of(answered) == text_of(alone) == expected_reply_text(prompt, 20)
        assert [c.WhichOneof("chunk") for c in answered].count("end") == 1
        assert answered[-1].end == alone[-1].end
    # The two answers streamed side by side, not one after the other.
    assert order.index(2) < len(order) - 1 - order[::-1].index(1)
    await stream.done_writing()
    assert await stream.read() is grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("failing", "code", "reason", "message"),
    [
        (
            chat("gpt-9", "hi"),
            grpc.StatusCode.NOT_FOUND,
            "model_not_found",
            "model 'gpt-9' is not configured",
        ),
        (
            llmproxy_pb2.StreamChatRequest(model="offline"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad_request",
            "messages",
        ),
    ],
    ids=["unknown-model", "no-messages"],
)
async def test_a_failed_call_ends_with_stream_chats_status_and_the_others_go_on(
    start_proxy: StartProxy,
    failing: llmproxy_pb2.StreamChatRequest,
    code: grpc.StatusCode,
    reason: str,
    message: str,
) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    with pytest.raises(grpc.aio.AioRpcError) as alone:
        await collect(proxy, failing)
    stream = open_stream(proxy)

    await stream.write(start(7, chat("offline", "hello")))
    await stream.write(start(8, failing))
    by_call, _ = await read_until_ended(stream, {7, 8})

    status = status_of(by_call[8])
    assert (status.code, status.reason) == (code.value[0], reason)
    assert message in status.message
    assert status.message == alone.value.details()
    assert alone.value.code() == code
    assert text_of(chunks(by_call[7])) == expected_reply_text("hello", 20)


async def test_a_bug_ends_a_call_with_internal_and_a_fixed_message(
    start_proxy: StartProxy,
) -> None:
    """As StreamChat: an unexpected exception (a model_info value the proxy
    cannot read) is INTERNAL, never the Python exception's text."""
    proxy = await start_proxy(
        """
model_list:
  - model_name: odd
    litellm_params: {model: offline/odd}
    model_info: {max_input_tokens: lots}
"""
    )
    # (Its own model string: LiteLLM keeps a model's info process-wide, so
    # offline/echo would carry the bad value into every later test.)
    stream = open_stream(proxy)

    await stream.write(start(1, chat("odd", "hi")))
    by_call, _ = await read_until_ended(stream, {1})

    status = status_of(by_call[1])
    assert (status.code, status.reason) == (grpc.StatusCode.INTERNAL.value[0], "")
    assert status.message == "internal error in llmproxy"


async def test_a_cancelled_call_closes_its_provider_stream_and_leaves_the_others(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    stream = open_stream(proxy)

    await stream.write(start(1, request("slow")))
    received = 0
    while received < 3:
        response = await stream.read()
        assert response.id == 1
        assert response.WhichOneof("kind") == "chunk"
        received += 1
    await stream.write(cancel(1))
    await stream.write(start(2, request("text")))
    by_call, _ = await read_until_ended(stream, {2})

    assert text_of(chunks(by_call[2]))
    assert chunks(by_call[2])[-1].WhichOneof("chunk") == "end"
    await eventually(lambda: sorted(openai_server.closed_streams) == ["abandoned", "finished"])
    # Nothing more for the cancelled call: the stream ends with call 2's answer.
    await stream.done_writing()
    assert await stream.read() is grpc.aio.EOF


async def test_timeout_ms_ends_a_call_as_a_deadline_would(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    stream = open_stream(proxy)

    await stream.write(start(3, request("slow"), timeout_ms=300))
    by_call, _ = await read_until_ended(stream, {3})

    status = status_of(by_call[3])
    assert (status.code, status.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "timed_out")
    assert "300 ms" in status.message
    await eventually(lambda: openai_server.closed_streams == ["abandoned"])


async def test_an_id_in_progress_is_refused_and_its_call_goes_on(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = open_stream(proxy)

    await stream.write(start(5, chat("offline", "first")))
    await stream.write(start(5, chat("offline", "second")))
    responses = []
    while not responses or not chunks(responses) or not ended(responses[-1]):
        responses.append(await stream.read())
        if responses[-1].WhichOneof("kind") == "status":
            refusal = responses.pop()
            assert refusal.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert refusal.status.message == "call 5 is in progress"

    assert text_of(chunks(responses)) == expected_reply_text("first", 20)
    # The id is free again once its call ended.
    await stream.write(start(5, chat("offline", "third")))
    by_call, _ = await read_until_ended(stream, {5})
    assert text_of(chunks(by_call[5])) == expected_reply_text("third", 20)


async def test_a_request_that_neither_starts_nor_cancels_is_refused(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = open_stream(proxy)

    await stream.write(llmproxy_pb2.StreamChatsRequest(id=4))
    refusal = await stream.read()

    assert refusal.id == 4
    assert refusal.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refusal.status.message == "a request must either start or cancel a call"
    # The stream goes on.
    await stream.write(start(4, chat("offline", "still here")))
    by_call, _ = await read_until_ended(stream, {4})
    assert text_of(chunks(by_call[4])) == expected_reply_text("still here", 20)


async def test_calls_beyond_the_streams_limit_are_refused(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(
        UPSTREAM_YAML.format(base=openai_server.base_url), max_concurrent_rpcs=2
    )
    stream = open_stream(proxy)

    await stream.write(start(1, request("slow")))
    await stream.write(start(2, request("slow")))
    await stream.write(start(3, request("text")))
    refused = None
    while refused is None:
        response = await stream.read()
        if response.WhichOneof("kind") == "status":
            refused = response

    assert refused.id == 3
    assert refused.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "at most 2" in refused.status.message
    streaming: set[int] = set()
    while streaming != {1, 2}:  # both provider streams open
        streaming.add((await stream.read()).id)
    stream.cancel()
    await eventually(lambda: openai_server.closed_streams == ["abandoned", "abandoned"])


async def test_half_closing_lets_the_calls_in_progress_finish(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = open_stream(proxy)

    await stream.write(start(1, chat("offline", "one")))
    await stream.write(start(2, chat("offline", "two")))
    await stream.done_writing()
    responses = [response async for response in stream]

    for call_id, prompt in ((1, "one"), (2, "two")):
        mine = [r for r in responses if r.id == call_id]
        assert text_of(chunks(mine)) == expected_reply_text(prompt, 20)
        assert chunks(mine)[-1].WhichOneof("chunk") == "end"
    assert await stream.code() == grpc.StatusCode.OK


async def test_cancelling_the_stream_closes_every_provider_stream(
    start_proxy: StartProxy, openai_server: OpenAIServer
) -> None:
    proxy = await start_proxy(UPSTREAM_YAML.format(base=openai_server.base_url))
    stream = open_stream(proxy)

    await stream.write(start(1, request("slow")))
    await stream.write(start(2, request("slow")))
    seen: set[int] = set()
    while seen != {1, 2}:
        seen.add((await stream.read()).id)
    stream.cancel()

    await eventually(lambda: openai_server.closed_streams == ["abandoned", "abandoned"])


async def test_stream_chats_needs_the_credential(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = proxy.stub.StreamChats()

    await stream.write(start(1, chat("offline", "hi")))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.read()

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_calls_made_at_once_all_answer(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(OFFLINE_YAML)
    stream = open_stream(proxy)

    for i in range(1, 31):
        await stream.write(start(i, chat("offline", f"n{i}")))
    by_call, _ = await read_until_ended(stream, set(range(1, 31)))

    for i in range(1, 31):
        assert text_of(chunks(by_call[i])) == expected_reply_text(f"n{i}", 20)
