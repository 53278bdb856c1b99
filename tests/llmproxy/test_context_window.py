"""Requests are fitted to the model's context window, oldest turns first."""

from __future__ import annotations

import json

import grpc
import pytest

from llmproxy.v1 import llmproxy_pb2
from tests.llmproxy.conftest import METADATA, StartProxy

SMALL_WINDOW = """
model_list:
  - model_name: small
    litellm_params: {model: offline/echo, reply_tokens: 5}
    model_info: {max_input_tokens: 400}
"""


def message(role: str, content: str, **extra: object) -> llmproxy_pb2.ChatMessage:
    return llmproxy_pb2.ChatMessage(role=role, content=content, **extra)  # type: ignore[arg-type]


async def prompt_tokens(proxy: object, messages: list[llmproxy_pb2.ChatMessage]) -> int:
    request = llmproxy_pb2.StreamChatRequest(model="small", messages=messages, max_tokens=50)
    ends = [
        r.end
        async for r in proxy.stub.StreamChat(request, metadata=METADATA)  # type: ignore[attr-defined]
        if r.HasField("end")
    ]
    return ends[0].usage.prompt_tokens


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts LiteLLM's tokenizer is asked to encode, in order (it still encodes them)."""
    import litellm

    texts: list[str] = []
    real = litellm.encode

    def encoding(*args: object, **kwargs: object) -> object:
        texts.append(str(kwargs.get("text", "")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(litellm, "encode", encoding)
    return texts


async def test_old_turns_are_dropped_to_fit_and_calls_stay_with_results(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(SMALL_WINDOW)
    call = llmproxy_pb2.ToolCall(
        id="c1", name="read_file", arguments_json=json.dumps({"path": "a"})
    )

    def history(tool_words: int) -> list[llmproxy_pb2.ChatMessage]:
        return [
            message("user", "old question " + "word " * 300),
            message("assistant", "", tool_calls=[call]),
            message("tool", "file " * tool_words, tool_call_id="c1", name="read_file"),
            message("assistant", "old answer"),
        ]

    latest = [message("user", "what now?")]
    system = [message("system", "You are terse.")]
    short = await prompt_tokens(proxy, system + latest)
    # The offline model reports how many words it received. The window (400
    # tokens, 50 reserved for the answer) holds the newest turns only:
    # the 302-word question goes first; a call whose result is too big goes
    # with its result, never one without the other.
    assert await prompt_tokens(proxy, system + history(200) + latest) == short + 200 + 2
    assert await prompt_tokens(proxy, system + history(400) + latest) == short + 2


async def test_a_request_that_surely_fits_is_not_tokenized(
    start_proxy: StartProxy, monkeypatch: object
) -> None:
    """Counting tokens costs a tokenizer pass over the whole history on every
    call; a request whose byte count (an upper bound on its tokens) fits the
    window skips it, and one that may not fit is still counted exactly."""
    import litellm

    counted: list[int] = []
    real = litellm.token_counter

    def counting(*args: object, **kwargs: object) -> int:
        counted.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(litellm, "token_counter", counting)  # type: ignore[attr-defined]
    proxy = await start_proxy(SMALL_WINDOW)
    counted.clear()  # the start-up warm-up counts once

    assert await prompt_tokens(proxy, [message("user", "short question")]) == 2
    assert counted == []
    long = [message("user", "word " * 100), message("user", "word " * 100)]
    assert await prompt_tokens(proxy, long) == 200  # 1000 bytes: may not fit, so counted
    assert counted


async def test_declared_counts_are_trusted_and_only_new_messages_are_counted(
    start_proxy: StartProxy, encoded: list[str]
) -> None:
    """A caller that keeps each message's count (the runtime) sends it; the
    proxy tokenizes only the messages sent with 0, reports their counts, and
    fits the window by the counts: the history's length costs it nothing."""
    proxy = await start_proxy(SMALL_WINDOW)
    history = [message("user", f"old question {i}") for i in range(30)]
    latest = message("user", "what now?")

    async def end(counts: list[int]) -> llmproxy_pb2.StreamEnd:
        request = llmproxy_pb2.StreamChatRequest(
            model="small", messages=[*history, latest], max_tokens=50, token_counts=counts
        )
        responses = proxy.stub.StreamChat(request, metadata=METADATA)  # type: ignore[attr-defined]
        ends = [r.end async for r in responses if r.HasField("end")]
        return ends[0]

    encoded.clear()
    first = await end([10] * 30 + [0])
    assert encoded == ["what now? "], "only the new message is tokenized"
    assert len(first.token_counts) == 1
    assert first.token_counts[0] > 0
    assert first.usage.prompt_tokens == 3 * 30 + 2, "30 x 10 tokens fit 350: nothing cut"

    # Declared large, the oldest go first (the window is 400, 50 kept back).
    trimmed = await end([20] * 30 + [first.token_counts[0]])
    kept = (350 - 3 - first.token_counts[0]) // 20
    assert trimmed.usage.prompt_tokens == 3 * kept + 2
    assert list(trimmed.token_counts) == [], "nothing new to count"

    bad = llmproxy_pb2.StreamChatRequest(model="small", messages=[latest], token_counts=[1, 2])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in proxy.stub.StreamChat(bad, metadata=METADATA):  # type: ignore[attr-defined]
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_system_prompt_is_counted_once_for_every_session(
    start_proxy: StartProxy, encoded: list[str]
) -> None:
    """Every session of an agent sends the same system prompt uncounted on
    its first call; the proxy tokenizes it once and reports the same count
    to every session."""
    proxy = await start_proxy(SMALL_WINDOW)
    system = message("system", "You are the agent of session-independent test 7.")

    async def counts(question: str) -> list[int]:
        request = llmproxy_pb2.StreamChatRequest(
            model="small",
            messages=[system, message("user", question)],
            max_tokens=50,
            token_counts=[0, 0],
        )
        responses = proxy.stub.StreamChat(request, metadata=METADATA)  # type: ignore[attr-defined]
        ends = [list(r.end.token_counts) async for r in responses if r.HasField("end")]
        return ends[0]

    encoded.clear()
    first = await counts("first session")
    second = await counts("second session")
    assert first[0] == second[0] > 0
    assert [text for text in encoded if "session-independent" in text] == [
        "You are the agent of session-independent test 7. "
    ], "the system prompt is tokenized once"
    assert len(encoded) == 3, "each session's own message is still counted"
