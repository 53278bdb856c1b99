"""A session's context: its history as the model is sent it, kept incrementally.

A model call sends the system prompt and as much recent history as fits
the model's window (minus what is kept for the answer,
:func:`mesh.context.output_reserve`). Rebuilding and measuring that from
the whole history on every call costs time proportional to the session;
:class:`ContextWindow` instead keeps, per session and as the history
grows:

- each message's wire form, encoded once (:func:`runtime.llm.encode_message`);
- each message's token count, made once by the LLM proxy with the model's
  tokenizer: a message is sent with count 0 the first time, the proxy
  counts it and reports the count in the stream's end, and from then on the
  count is sent with the message and trusted (:mod:`llmproxy.budget`);
- where the kept history starts, and the tokens it adds up to.

So a call costs the same at turn 5 and turn 1000: the new messages are
encoded and counted, the oldest whole units (an assistant message that
called tools with the tool messages answering it, or any other message
alone; :func:`mesh.context.units`) are dropped from the front until the rest
fits, and the request is the joined wire forms. Until a message's count is
known, it is estimated low (:data:`CHARS_PER_TOKEN_ESTIMATE`), so the
runtime never sends too little; the proxy fits the exact counts and never
exceeds the window.

The history may change other than by growing (a fork, an edit, a summary
replacing older turns): the first call after that starts over, and the
proxy counts the kept messages once more. Counts are per model group: a
session that changes model starts over too. A session that rests
(:mod:`runtime.resting`) lets the messages and their wire forms go and
keeps the counts (:meth:`ContextWindow.rest`): the next call encodes the
history read back and keeps the counts if it is the same, byte for byte.
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from mesh.context import output_reserve
from runtime.events import ContextUsage
from runtime.llm import ChatMessage, encode_counts, encode_message

CHARS_PER_TOKEN_ESTIMATE = 8
"""Characters per token assumed for a message not counted yet: more than any
tokenizer packs, so an estimate is low and the exact cut is the proxy's."""
REPLY_PRIMING_TOKENS = 3
"""What a chat template adds once per prompt (as :mod:`llmproxy.budget` counts)."""
_SYSTEM_PROMPTS_KEPT = 8
_MAX_COUNT = (1 << 28) - 1
"""The largest count a four-byte varint holds (a count is at most the window)."""


Lent = tuple[bytearray, "array[int]"]
"""A history's wire forms one after another (:func:`~runtime.llm.encode_message`)
and where each starts: what :meth:`ContextWindow.lend` hands a dozing history."""


def count_varint(count: int) -> bytes:
    """``count`` as a protobuf varint padded to four bytes (parsers read an
    overlong varint as its value), so one message's count is replaced in
    place in the packed counts a prompt sends."""
    count = min(count, _MAX_COUNT)
    return bytes(
        (count & 0x7F | 0x80, count >> 7 & 0x7F | 0x80, count >> 14 & 0x7F | 0x80, count >> 21)
    )


_UNCOUNTED = count_varint(0)


def system_with_summary(system: str, summary: str) -> str:
    """The system prompt with the summary of the turns it replaces
    (:mod:`runtime.condense`); just ``system`` without one."""
    if not summary:
        return system
    return f"{system}\n\n# Summary of the earlier conversation\n{summary}"


@dataclass(slots=True)
class Prompt(Sequence[ChatMessage]):
    """What one model call sends: the system prompt and the kept history.

    A sequence of its messages, so any :class:`~runtime.llm.ChatModel`
    can take it; :class:`~runtime.llm.LlmClient` sends ``encoded`` instead
    of encoding the messages again.
    """

    messages: list[ChatMessage]
    token_counts: list[int]
    """One per message: its tokens, 0 while not counted."""
    encoded: bytes
    """The messages and their counts as fields of a ``StreamChatRequest``."""
    usage: ContextUsage
    """The tokens of the prompt (estimated for messages not counted yet)."""
    dropped: int = 0
    """History messages before the kept ones (not sent)."""
    _uncounted: list[int] = field(default_factory=list)
    """History positions of the messages sent with count 0 (-1: the system prompt)."""
    _generation: int = 0

    @overload
    def __getitem__(self, index: int) -> ChatMessage: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ChatMessage]: ...
    def __getitem__(self, index: int | slice) -> ChatMessage | Sequence[ChatMessage]:
        return self.messages[index]

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[ChatMessage]:
        return iter(self.messages)


class ContextWindow:
    """The model's view of one session's history, kept as it grows.

    One per live session, used by its turn only (not safe for two model
    calls at once). :meth:`prompt` makes a call's prompt, :meth:`learn`
    takes the counts the proxy made of it.
    """

    def __init__(self) -> None:
        self._model = ""
        self._generation = 0
        # Per message, kept compact (a long history is mostly these): its
        # wire form in one buffer with where each starts, its count as a
        # four-byte varint in another, its count and estimate in arrays.
        self._history: list[ChatMessage] = []
        self._wire = bytearray()
        self._starts = array("Q")
        self._counts = bytearray()
        self._tokens = array("I")
        self._sizes = array("I")
        self._start = 0
        self._kept = 0
        self._uncounted: list[int] = []
        self._system: dict[str, tuple[bytes, int]] = {}
        self._resting: tuple[int, int, int] | None = None
        """While resting: how many messages the encoded history held, its length and CRC-32."""
        self.usage = ContextUsage(0, 0)
        """What the last prompt filled (exact once its counts are learnt)."""

    def prompt(
        self, system: str, history: Sequence[ChatMessage], model: str, window: int
    ) -> Prompt:
        """The ``system`` prompt and as much recent ``history`` as fits
        ``window`` tokens of ``model`` (0: no limit); tool calls never split
        from their results, and the newest unit kept even if it alone is
        too large. Costs what the history grew by since the last call."""
        if model != self._model:
            self._model = model
            self._system.clear()
            self._reset()
        self._sync(history)
        system_wire, system_tokens = self._system_prompt(system)
        system_size = system_tokens or self._estimate_text(system)
        if window > 0:
            self._trim(window - output_reserve(window) - REPLY_PRIMING_TOKENS - system_size)
        start = self._start
        counts = [system_tokens, *self._tokens[start:]]
        if self._uncounted and self._uncounted[0] < start:
            # Dropped before they were counted: they will not be sent again.
            self._uncounted = [i for i in self._uncounted if i >= start]
        uncounted = ([] if system_tokens else [-1]) + self._uncounted
        total = REPLY_PRIMING_TOKENS + system_size + self._kept
        offset = self._starts[start] if start < len(self._starts) else len(self._wire)
        encoded = b"".join(
            (
                system_wire,
                self._wire[offset:],
                encode_counts([count_varint(system_tokens), self._counts[4 * start :]]),
            )
        )
        self.usage = ContextUsage(total, window)
        return Prompt(
            [ChatMessage("system", system), *self._history[start:]],
            counts,
            encoded,
            self.usage,
            start,
            uncounted,
            self._generation,
        )

    @property
    def meter(self) -> ContextUsage | None:
        """:attr:`usage` for a context meter; None while the window is unknown."""
        return self.usage if self.usage.window > 0 else None

    def learn(self, prompt: Prompt, counts: Sequence[int]) -> None:
        """Take the proxy's ``counts`` of ``prompt``'s uncounted messages; a
        stale prompt (the history started over since) or a mismatch is ignored."""
        if prompt._generation != self._generation or len(counts) != len(prompt._uncounted):
            return
        for position, count in zip(prompt._uncounted, counts, strict=True):
            if count <= 0:
                continue
            if position < 0:
                system = prompt.messages[0].content
                wire = self._system.get(system, (b"", 0))[0] or encode_message(prompt.messages[0])
                self._system[system] = (wire, count)
                continue
            if position >= len(self._tokens):
                continue
            if position >= self._start:
                self._kept += count - self._sizes[position]
            self._tokens[position] = self._sizes[position] = count
            self._counts[4 * position : 4 * position + 4] = count_varint(count)
        self._uncounted = [i for i in self._uncounted if not self._tokens[i]]
        if prompt.dropped == self._start:
            system_tokens = self._system.get(prompt.messages[0].content, (b"", 0))[1]
            self.usage = ContextUsage(
                REPLY_PRIMING_TOKENS + system_tokens + self._kept, prompt.usage.window
            )

    def rest(self) -> None:
        """Let the messages and their wire forms go, keeping their counts
        (a few bytes a message; :mod:`runtime.resting`). The next prompt
        encodes the history it is given once more and, if that is what was
        let go byte for byte, sends the counts as before: a session read
        back from the database is not counted again."""
        if self._resting is None:
            self._resting = (len(self._history), len(self._wire), zlib.crc32(self._wire))
        self._history = []
        self._wire = bytearray()
        self._starts = array("Q")
        self._system = {text: (b"", count) for text, (_, count) in self._system.items()}

    def lend(self, history: Sequence[ChatMessage]) -> Lent | None:
        """:meth:`rest`, handing over the wire forms (and where each starts)
        when they are those of ``history``'s first messages (the last prompt
        held the whole history, no summary; a reply may have come since): a
        dozing history keeps them (:mod:`runtime.resting`) and gives them back
        at :meth:`woke`, so neither the doze nor the next prompt encodes them
        again. None when they are not (the next prompt encodes the history)."""
        kept = self._history
        prefix = self._resting is None and len(kept) <= len(history)
        prefix = prefix and (not kept or history[len(kept) - 1] is kept[-1])
        wire, starts = self._wire, self._starts
        self.rest()
        return (wire, starts) if prefix else None

    def woke(self, history: Sequence[ChatMessage], wire: bytearray, starts: array[int]) -> None:
        """Take back what :meth:`lend` handed over: ``history`` was decoded
        from ``wire`` (which may have grown by the messages since), and
        nothing changed it since. Otherwise the next prompt encodes it."""
        if self._resting is None:
            return
        count, size, crc = self._resting
        if len(history) < count or len(wire) < size or zlib.crc32(memoryview(wire)[:size]) != crc:
            return
        del wire[size:], starts[count:]
        self._resting = None
        self._history, self._wire, self._starts = list(history[:count]), wire, starts

    # -- the kept history ------------------------------------------------------

    def _reset(self) -> None:
        self._generation += 1
        self._resting = None
        self._history.clear()
        self._wire.clear()
        del self._starts[:]
        self._counts.clear()
        del self._tokens[:]
        del self._sizes[:]
        self._start = self._kept = 0
        self._uncounted.clear()

    def _wake(self, history: Sequence[ChatMessage]) -> None:
        """Encode the first messages of ``history`` again after :meth:`rest`;
        start over unless they encode to what was let go."""
        assert self._resting is not None
        count, size, crc = self._resting
        self._resting = None
        if len(history) >= count:
            wire, starts = bytearray(), array("Q")
            for message in history[:count]:
                starts.append(len(wire))
                wire += encode_message(message)
            if len(wire) == size and zlib.crc32(wire) == crc:
                self._history, self._wire, self._starts = list(history[:count]), wire, starts
                return
        self._reset()

    def _sync(self, history: Sequence[ChatMessage]) -> None:
        if self._resting is not None:
            self._wake(history)
        known = len(self._history)
        if len(history) < known or (known and history[known - 1] is not self._history[-1]):
            self._reset()  # not grown but changed: start over
            known = 0
        for message in history[known:]:
            size = self._estimate(message)
            self._history.append(message)
            self._starts.append(len(self._wire))
            self._wire += encode_message(message)
            self._tokens.append(0)
            self._counts += _UNCOUNTED
            self._sizes.append(size)
            self._uncounted.append(len(self._history) - 1)
            self._kept += size

    def _trim(self, budget: int) -> None:
        """Drop the oldest units from the front while the rest exceeds ``budget``."""
        history, sizes = self._history, self._sizes
        while self._kept > budget:
            start = self._start
            end = start + 1
            if history[start].role == "assistant" and history[start].tool_calls:
                while end < len(history) and history[end].role == "tool":
                    end += 1
            if end >= len(history):
                return  # the newest unit stays, even alone too large
            self._kept -= sum(sizes[start:end])
            self._start = end

    def _system_prompt(self, system: str) -> tuple[bytes, int]:
        found = self._system.get(system)
        if found is None and len(self._system) >= _SYSTEM_PROMPTS_KEPT:
            self._system.pop(next(iter(self._system)))
        if found is None or not found[0]:  # new, or its wire form let go at rest
            wire = encode_message(ChatMessage("system", system))
            found = self._system[system] = (wire, found[1] if found else 0)
        return found

    @staticmethod
    def _estimate(message: ChatMessage) -> int:
        chars = len(message.content) + sum(
            len(call.name) + len(call.arguments_json) for call in message.tool_calls
        )
        return chars // CHARS_PER_TOKEN_ESTIMATE + 1

    @staticmethod
    def _estimate_text(text: str) -> int:
        return len(text) // CHARS_PER_TOKEN_ESTIMATE + 1
