"""The offline model: a deterministic LiteLLM custom provider.

It answers without a network, so the embedded default and the tests run the
same Router code path (retries, fallbacks, streaming wrapper) as real
providers. Configure it like any other deployment::

    model_list:
      - model_name: offline
        litellm_params:
          model: offline/echo
          reply_tokens: 24      # words in each reply
          token_delay: 0.0      # seconds to wait before each streamed token
          embedding_dimensions: 256
          stamp_tokens: false   # benchmarks: each streamed word ends in @<CLOCK_MONOTONIC ns>

LiteLLM hands unknown ``litellm_params`` of a custom provider to the handler
as ``optional_params``; that is how these settings arrive. A request's
``max_tokens`` below ``reply_tokens`` truncates the reply with finish reason
``length``, as a real model would.

Unless a rule of :mod:`llmproxy.playbook` answers (with text or tool calls),
the reply is ``"You said: <last user message>"`` followed by filler words,
cut or padded to ``reply_tokens`` words. A streamed token is one word plus
the space after it; in a rule's text, plus the spaces or line breaks after
it, so a quoted file or error keeps its lines.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from litellm.llms.custom_llm import CustomLLM
from litellm.types.llms.openai import ChatCompletionToolCallChunk
from litellm.types.utils import EmbeddingResponse, GenericStreamingChunk, ModelResponse, Usage

from llmproxy import playbook

_WORD = re.compile(r"\S+\s*")

PROVIDER = "offline"
DEFAULT_REPLY_TOKENS = 24
DEFAULT_TOKEN_DELAY = 0.0
DEFAULT_EMBEDDING_DIMENSIONS = 256

FILLER_WORDS = (
    "this",
    "is",
    "a",
    "deterministic",
    "reply",
    "from",
    "the",
    "offline",
    "model",
    "so",
    "tests",
    "and",
    "demos",
    "see",
    "the",
    "same",
    "words",
    "every",
    "time",
    "they",
    "ask",
    "the",
    "same",
    "question",
)


@dataclass(frozen=True)
class OfflineSettings:
    """Per-deployment settings read from ``litellm_params``."""

    reply_tokens: int = DEFAULT_REPLY_TOKENS
    token_delay: float = DEFAULT_TOKEN_DELAY
    embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS
    max_tokens: int | None = None
    stamp_tokens: bool = False
    """Benchmarks: each streamed text token is ``word@<ns>``, ``ns`` being
    ``time.monotonic_ns()`` when the model emitted it (the system-wide
    CLOCK_MONOTONIC on Linux), so a client can measure the mesh's added
    latency per token."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> OfflineSettings:
        """Read the settings; raises ValueError naming a bad one."""
        reply_tokens = _number(params, "reply_tokens", DEFAULT_REPLY_TOKENS, int)
        token_delay = _number(params, "token_delay", DEFAULT_TOKEN_DELAY, float)
        dimensions = _number(params, "embedding_dimensions", DEFAULT_EMBEDDING_DIMENSIONS, int)
        max_tokens = params.get("max_tokens")
        stamp_tokens = params.get("stamp_tokens", False)
        if not isinstance(stamp_tokens, bool):
            raise ValueError(f"offline model: stamp_tokens={stamp_tokens!r} must be true or false")
        if reply_tokens < 1 or token_delay < 0 or dimensions < 1:
            raise ValueError(
                "offline model: reply_tokens and embedding_dimensions must be positive "
                "and token_delay must not be negative"
            )
        return cls(
            reply_tokens=reply_tokens,
            token_delay=token_delay,
            embedding_dimensions=dimensions,
            max_tokens=None if max_tokens is None else int(max_tokens),
            stamp_tokens=stamp_tokens,
        )


@dataclass(frozen=True)
class Reply:
    """What the offline model answers: text tokens, then tool calls."""

    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    tool_calls: tuple[ChatCompletionToolCallChunk, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + len(self.tool_calls)


def compose_reply(messages: Sequence[Mapping[str, Any]], settings: OfflineSettings) -> Reply:
    """The deterministic reply to ``messages``: a playbook rule's, else an echo."""
    prompt_tokens = sum(_word_count(_content_text(m.get("content"))) for m in messages)
    answer = playbook.respond(messages)
    if answer is not None and answer.tool_calls:
        calls = tuple(
            ChatCompletionToolCallChunk(
                id=f"offline_call_{index}",
                type="function",
                function={"name": call.name, "arguments": json.dumps(call.arguments)},
                index=index,
            )
            for index, call in enumerate(answer.tool_calls)
        )
        return Reply(_text_tokens(answer.text), "tool_calls", prompt_tokens, calls)
    if answer is not None:
        tokens = _text_tokens(answer.text)
    else:
        said = _content_text(_last_user_content(messages))
        words = [*playbook.opening(messages).split(), "You", "said:", *said.split()]
        fill = itertools.cycle(FILLER_WORDS)
        while len(words) < settings.reply_tokens:
            words.append(next(fill))
        tokens = _tokens(words[: settings.reply_tokens])
    finish_reason = "stop"
    if settings.max_tokens is not None and settings.max_tokens < len(tokens):
        tokens = _tokens([token.strip() for token in tokens[: max(settings.max_tokens, 0)]])
        finish_reason = "length"
    return Reply(tokens=tokens, finish_reason=finish_reason, prompt_tokens=prompt_tokens)


@functools.lru_cache(maxsize=16384)
def _word_count(text: str) -> int:
    # Cached: a session's prompt repeats its history on every call.
    return len(text.split())


def _tokens(words: Sequence[str]) -> tuple[str, ...]:
    """One streamed token per word, each but the last with its following space."""
    return tuple(word if i == len(words) - 1 else word + " " for i, word in enumerate(words))


def _text_tokens(text: str) -> tuple[str, ...]:
    """One streamed token per word of a rule's answer, each with the spaces or
    line breaks after it: a quoted error or file keeps its lines."""
    return tuple(_WORD.findall(text.strip()))


def expected_reply_text(user_message: str, reply_tokens: int = DEFAULT_REPLY_TOKENS) -> str:
    """The text the offline model answers to a single user message."""
    reply = compose_reply(
        [{"role": "user", "content": user_message}], OfflineSettings(reply_tokens=reply_tokens)
    )
    return reply.text


def embed_text(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector in which similar texts are near.

    Hashed features (the "hashing trick"): each word of ``text``, split at
    camelCase and snake_case and lower-cased, with common English words left
    out, adds its stem and (more weakly) its character trigrams, each at an
    index and sign taken from a hash; counts are damped (1 + log). So texts
    sharing identifiers or words have a high cosine, whatever their order,
    and ``hashing``/``hashes``/``hash`` meet. A text with no words at all
    gets a vector seeded by its hash: same text, same vector.
    """
    counts: dict[str, float] = {}
    for word in _words(text):
        counts[word] = counts.get(word, 0.0) + 1.0
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            gram = "3:" + padded[i : i + 3]
            counts[gram] = counts.get(gram, 0.0) + _TRIGRAM_WEIGHT
    if not counts:
        digest = hashlib.shake_256(text.encode("utf-8")).digest(4 * dimensions)
        raw = [value / 2**31 - 1.0 for value in struct.unpack(f">{dimensions}I", digest)]
    else:
        raw = [0.0] * dimensions
        for feature, count in counts.items():
            index, sign = _slot(feature, dimensions)
            weight = 1.0 + math.log(count) if count >= 1 else count
            raw[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


_TRIGRAM_WEIGHT = 0.25
_IDENTIFIER = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_STOP_WORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "you",
    )
)
_SUFFIXES = ("ing", "ed", "es", "s")


def _words(text: str) -> Iterator[str]:
    """The stems of ``text``'s words: identifiers split, lower-cased, stop words out."""
    for match in _IDENTIFIER.finditer(text):
        word = match.group().lower()
        if word in _STOP_WORDS:
            continue
        for suffix in _SUFFIXES:
            if len(word) > len(suffix) + 2 and word.endswith(suffix):
                word = word[: -len(suffix)]
                break
        yield word


def _slot(feature: str, dimensions: int) -> tuple[int, float]:
    """The index and sign of a hashed feature."""
    value = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest())
    return (value >> 1) % dimensions, 1.0 if value & 1 else -1.0


class OfflineLLM(CustomLLM):
    """The LiteLLM handler registered for provider ``offline``.

    Streaming honours ``token_delay`` (:func:`token_due`; with no delay
    it still yields to the event loop before each token, as a network read
    would) and is safe to cancel between tokens. The blocking variants exist
    because LiteLLM routes ``completion``/``embedding`` there; they sleep
    with ``time.sleep``.
    """

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        reply = self._reply(kwargs)
        return _model_response(kwargs["model_response"], kwargs["model"], reply)

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        reply = self._reply(kwargs)
        return _model_response(kwargs["model_response"], kwargs["model"], reply)

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        settings = OfflineSettings.from_params(kwargs["optional_params"])
        reply = compose_reply(kwargs["messages"], settings)
        for chunk in _chunks(reply):
            if settings.token_delay and not chunk["is_finished"]:
                time.sleep(settings.token_delay)
            yield chunk

    # LiteLLM declares this `async def` returning an iterator, but calls it and
    # iterates the result: an async generator is what actually works.
    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        settings = OfflineSettings.from_params(kwargs["optional_params"])
        async for chunk in stream_reply(kwargs["messages"], settings):
            yield chunk

    def embedding(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        return _embedding_response(kwargs)

    async def aembedding(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        return _embedding_response(kwargs)

    @staticmethod
    def _reply(kwargs: Mapping[str, Any]) -> Reply:
        settings = OfflineSettings.from_params(kwargs["optional_params"])
        return compose_reply(kwargs["messages"], settings)


async def stream_reply(
    messages: Sequence[Mapping[str, Any]], settings: OfflineSettings
) -> AsyncIterator[GenericStreamingChunk]:
    """The reply to ``messages`` as LiteLLM's generic chunks, paced by
    ``token_delay`` on an absolute schedule (:func:`token_due`) and stamped
    when asked; safe to cancel between tokens.

    Both ways to the offline model stream this: LiteLLM's custom-provider
    path (:meth:`OfflineLLM.astreaming`) and the proxy's fast path.
    """
    reply = compose_reply(messages, settings)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, chunk in enumerate(_chunks(reply)):
        # With no delay, still let the loop run between tokens, as a
        # network read would: other calls and this call's writer go on.
        pause = 0.0
        if settings.token_delay and not chunk["is_finished"]:
            pause = max(0.0, token_due(start, i, settings.token_delay) - loop.time())
        await asyncio.sleep(pause)
        if settings.stamp_tokens and chunk["text"]:
            chunk = {**chunk, "text": _stamped(chunk["text"])}
        yield chunk


def token_due(start: float, index: int, delay: float) -> float:
    """When token ``index`` (from 0) of a stream started at ``start`` is due.

    A provider emits on its own clock: a late wake-up makes one token late,
    not every token after it (sleeping ``delay`` per token would add each
    wake-up's lateness to all the rest and slow the stream under load).
    """
    return start + (index + 1) * delay


def _chunks(reply: Reply) -> Iterator[GenericStreamingChunk]:
    for token in reply.tokens:
        yield GenericStreamingChunk(
            text=token, tool_use=None, is_finished=False, finish_reason="", usage=None, index=0
        )
    for call in reply.tool_calls:
        yield GenericStreamingChunk(
            text="", tool_use=call, is_finished=False, finish_reason="", usage=None, index=0
        )
    yield GenericStreamingChunk(
        text="",
        tool_use=None,
        is_finished=True,
        finish_reason="tool_calls" if reply.tool_calls else reply.finish_reason,
        usage={
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
        index=0,
    )


def _stamped(token: str) -> str:
    """``word `` → ``word@<monotonic ns> `` (the trailing space kept)."""
    word = token.rstrip(" ")
    return f"{word}@{time.monotonic_ns()}{token[len(word) :]}"


def _model_response(response: ModelResponse, model: str, reply: Reply) -> ModelResponse:
    response.model = model
    response.choices[0].message.content = reply.text
    response.choices[0].finish_reason = reply.finish_reason  # type: ignore[assignment]
    # ModelResponse declares no usage field; LiteLLM itself sets it this way.
    setattr(  # noqa: B010
        response,
        "usage",
        Usage(
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            total_tokens=reply.prompt_tokens + reply.completion_tokens,
        ),
    )
    return response


def _embedding_response(kwargs: Mapping[str, Any]) -> EmbeddingResponse:
    settings = OfflineSettings.from_params(kwargs["optional_params"])
    texts = [str(item) for item in kwargs["input"]]
    response: EmbeddingResponse = kwargs["model_response"]
    response.model = kwargs["model"]
    response.data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": embed_text(text, settings.embedding_dimensions),
        }
        for i, text in enumerate(texts)
    ]
    prompt_tokens = sum(len(text.split()) for text in texts)
    response.usage = {  # type: ignore[assignment]
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 0,
        "total_tokens": prompt_tokens,
    }
    return response


def _last_user_content(messages: Sequence[Mapping[str, Any]]) -> Any:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content")
    return ""


def _content_text(content: Any) -> str:
    """Text of an OpenAI content field: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _number(params: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = params.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"offline model: {key}={value!r} is not a number") from None
