"""The offline model's replies and embeddings, without a network or server."""

from __future__ import annotations

import json
import math

import pytest
from litellm.router import Router

from llmproxy import offline
from llmproxy.config import parse_config
from llmproxy.offline import OfflineSettings, compose_reply, embed_text, token_due
from llmproxy.router import build_router


def test_reply_echoes_the_last_user_message_then_fills() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]

    reply = compose_reply(messages, OfflineSettings(reply_tokens=6))

    assert reply.text == "You said: second question this is"
    assert reply.tokens == ("You ", "said: ", "second ", "question ", "this ", "is")
    assert reply.finish_reason == "stop"
    assert reply.prompt_tokens == 8


def test_long_messages_are_cut_to_the_reply_length() -> None:
    reply = compose_reply(
        [{"role": "user", "content": "one two three four five"}], OfflineSettings(reply_tokens=4)
    )

    assert reply.text == "You said: one two"


def test_max_tokens_truncates_with_length() -> None:
    reply = compose_reply(
        [{"role": "user", "content": "hi"}], OfflineSettings(reply_tokens=10, max_tokens=2)
    )

    assert reply.text == "You said:"
    assert reply.finish_reason == "length"


def test_settings_come_from_litellm_params() -> None:
    settings = OfflineSettings.from_params(
        {"reply_tokens": "7", "token_delay": 0.01, "embedding_dimensions": 8, "stream": True}
    )

    assert settings == OfflineSettings(reply_tokens=7, token_delay=0.01, embedding_dimensions=8)


@pytest.mark.parametrize("params", [{"reply_tokens": "many"}, {"token_delay": -1}])
def test_bad_settings_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="offline model"):
        OfflineSettings.from_params(params)


def test_embeddings_are_deterministic_unit_vectors() -> None:
    first = embed_text("hello", 32)

    assert first == embed_text("hello", 32)
    assert first != embed_text("goodbye", 32)
    assert len(first) == 32
    assert math.isclose(sum(v * v for v in first), 1.0)
    assert math.isclose(sum(v * v for v in embed_text("?!", 32)), 1.0)  # no words at all


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_bring_related_texts_together() -> None:
    files = {
        "auth.py": "def hash_password(password, salt):\n    return pbkdf2_hmac(password, salt)\n",
        "db.py": "class Database:\n    def connect(self, url):\n        self.engine = make(url)\n",
        "ui.py": "def render_button(label, color):\n    return Button(label, color=color)\n",
    }
    queries = {
        "where are passwords hashed": "auth.py",
        "open a database connection": "db.py",
        "how is a button rendered": "ui.py",
    }

    for query, expected in queries.items():
        vector = embed_text(query)
        best = max(files, key=lambda name: cosine(vector, embed_text(files[name])))
        assert best == expected, query


def offline_router(reply_tokens: int) -> Router:
    return build_router(
        parse_config(
            {
                "model_list": [
                    {
                        "model_name": "offline",
                        "litellm_params": {"model": "offline/echo", "reply_tokens": reply_tokens},
                    }
                ]
            }
        )
    )


async def test_router_answers_without_streaming() -> None:
    router = offline_router(5)

    response = await router.acompletion(
        model="offline", messages=[{"role": "user", "content": "hello there"}]
    )

    assert response.choices[0].message.content == "You said: hello there this"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.completion_tokens == 5


def test_router_streams_synchronously_too() -> None:
    router = offline_router(4)

    stream = router.completion(
        model="offline", messages=[{"role": "user", "content": "yo"}], stream=True
    )

    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "You said: yo this"


def test_a_rule_answer_streams_with_its_line_breaks() -> None:
    # A failed edit's error quotes lines of the file: the user sees them as lines.
    error = "block 1: `search` was not found.\n2 |     return 1\nRead the file again."
    messages = [
        {"role": "user", "content": "edit a.py: return  1 => return 2"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "apply_diff", "arguments": "{}"},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "c1",
            "name": "apply_diff",
            "content": json.dumps({"error": error}),
        },
    ]

    stream = offline_router(4).completion(model="offline", messages=messages, stream=True)

    pieces = [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == f"apply_diff failed: {error}"
    assert "|     " in pieces  # one streamed token per word, with the spaces after it


class _VirtualClock:
    """Stands in for ``asyncio`` in :mod:`llmproxy.offline`: ``sleep`` moves a
    virtual clock, every wake-up ``lateness`` seconds late (a busy loop)."""

    def __init__(self, lateness: float) -> None:
        self.now = 100.0
        self.lateness = lateness

    def get_running_loop(self) -> _VirtualClock:
        return self

    def time(self) -> float:
        return self.now

    async def sleep(self, pause: float) -> None:
        if pause > 0:
            self.now += pause + self.lateness


@pytest.mark.parametrize("lateness", [0.0, 0.004, 0.025])
async def test_paced_tokens_keep_to_their_schedule_when_wake_ups_are_late(
    monkeypatch: pytest.MonkeyPatch, lateness: float
) -> None:
    clock = _VirtualClock(lateness)
    monkeypatch.setattr(offline, "asyncio", clock)
    settings = OfflineSettings(reply_tokens=50, token_delay=0.01)
    start = clock.now

    emitted = [
        clock.now
        async for chunk in offline.stream_reply([{"role": "user", "content": "hi"}], settings)
        if chunk["text"]
    ]

    assert len(emitted) == 50
    lags = [at - token_due(start, i, 0.01) for i, at in enumerate(emitted)]
    # Each token is at most one wake-up late; lateness does not add up.
    assert min(lags) >= 0
    assert max(lags) <= lateness + 1e-9
    assert emitted[-1] - start <= 50 * 0.01 + lateness + 1e-9


def test_token_due_is_an_absolute_schedule() -> None:
    assert [token_due(10.0, i, 0.5) for i in range(3)] == [10.5, 11.0, 11.5]
