"""Condensing: older turns replaced by a summary the model writes.

When a turn begins and the session's last prompt filled more than the
operator's threshold of the window (or when the user sends ``condense``),
the older part of what the model is sent is summarized by a model call and
the summary is sent instead. The newest turns stay verbatim (about a third
of it), and the cut falls between units (:func:`mesh.context.units`),
so a tool call never loses its result.

The summary is durable and history is never rewritten: it is a message
appended to the session's history, role ``system``, named
``context_summary:<N>`` where N is how many messages from the session's
start it stands for, written in the same step as a
:class:`~runtime.events.ContextCondensed` event. What the model is sent is
then (:meth:`Condenser.view`) the system prompt with the summary, the
messages from N up to the summary, and everything after it; a runtime that
loads the session finds the latest summary in its messages. History views
list the summary where it was made.

A failed summarizing call loses nothing: the turn goes on, and the oldest
turns are cut as before (:class:`~runtime.context.ContextWindow`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import structlog

from mesh.context import output_reserve, units
from runtime.context import ContextWindow, Lent
from runtime.dispatch import Dispatcher
from runtime.errors import UpstreamError
from runtime.events import ContextCondensed
from runtime.llm import ChatMessage, ChatModel, TextChunk
from runtime.stream import EventStream

log = structlog.get_logger("runtime.condense")

SUMMARY_NAME = "context_summary:"
"""How a summary message's name begins; the number of messages it replaces follows."""
DEFAULT_THRESHOLD = 80
"""Percent of the window (less the answer's reserve) a prompt fills before condensing."""
KEEP_FRACTION = 3
"""The newest turns kept verbatim are about 1/KEEP_FRACTION of what was sent."""
CHARS_PER_TOKEN = 4
"""A typical tokenizer's characters per token, for estimates only."""
MAX_QUOTED_CHARS = 2000
"""Characters of one message quoted to the summarizing call."""
INSTRUCTIONS = (
    "You condense conversations between a user and an AI coding agent. Write a "
    "summary the agent can continue from: the user's requests and what is still "
    "open, decisions made, files read or changed and what was learnt from them, "
    "commands run and their outcome. Keep names, paths and numbers exact. Start "
    "from the earlier summary if there is one. Answer with the summary only."
)


class NothingToCondense(Exception):
    """Too little history before the newest turns to summarize."""


class Condenser:
    """One session's summaries and its :class:`ContextWindow`.

    ``threshold``: percent of the usable window at which a turn condenses
    first (0: never by itself, only on request).
    """

    def __init__(self, llm: ChatModel, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.window = ContextWindow()
        self._llm = llm
        self._threshold = threshold
        self._summary: tuple[int, int, str] | None = None
        """(messages replaced, position of the summary message, its text)."""
        self._searched = 0
        """Messages of the history already searched for a summary."""

    def view(self, history: Sequence[ChatMessage]) -> tuple[list[ChatMessage], str]:
        """What the model is sent of ``history`` (the summarized part left
        out) and the summary to add to the system prompt ("" for none)."""
        self._find(history)
        if self._summary is None:
            return list(history), ""
        through, position, text = self._summary
        return [*history[through:position], *history[position + 1 :]], text

    def forget(self, dozing: Sequence[ChatMessage] | None = None) -> Lent | None:
        """Let the prompt kept for the history go but its counts (the session
        rests or dozes, :mod:`runtime.resting`); the next call encodes it
        again, unless ``dozing`` is the history and the last prompt held its
        first messages (no summary): then their wire forms are handed over
        (:meth:`ContextWindow.lend`) and come back at :meth:`ContextWindow.woke`."""
        if dozing is None:
            self.window.rest()
            return None
        return self.window.lend(dozing)

    def due(self) -> bool:
        """Whether the last prompt filled more than the threshold of the window."""
        usage = self.window.usage
        if self._threshold <= 0 or usage.window <= 0:
            return False
        usable = usage.window - output_reserve(usage.window)
        return usage.tokens * 100 >= usable * self._threshold

    async def condense(
        self,
        dispatcher: Dispatcher,
        stream: EventStream,
        model: str,
        request_id: str | None = None,
    ) -> ContextCondensed:
        """Summarize all but the newest turns and queue the summary (a
        message) and its event on ``dispatcher``'s step; the caller flushes.

        Raises :class:`NothingToCondense`, and UpstreamError when the model
        call fails (then nothing is queued). Safe to cancel.
        """
        history = dispatcher.session.messages
        view, earlier = self.view(history)
        window = await self._llm.context_window(model)
        cut = _cut(view)
        if cut < 2:
            raise NothingToCondense("too little history to condense")
        text = await _summarize(self._llm, model, earlier, view[:cut], window, request_id)
        replaced = self._position(history, cut)
        # After: as a share of before, by the estimates of what goes and comes.
        estimated = _estimate(view) + _estimate_text(earlier) or 1
        before = self.window.usage.tokens or estimated
        after = before * (_estimate(view[cut:]) + _estimate_text(text)) // estimated
        dispatcher.append_message(ChatMessage("system", text, name=f"{SUMMARY_NAME}{replaced}"))
        self._summary = (replaced, len(history) - 1, text)
        self._searched = len(history)
        event = ContextCondensed(text, replaced, before, min(after, before))
        stream.durable(event)
        log.info("context_condensed", replaced=replaced, tokens_before=before, summary=len(text))
        return event

    async def condense_if_due(
        self, dispatcher: Dispatcher, stream: EventStream, model: str, request_id: str | None
    ) -> None:
        """:meth:`condense` when :meth:`due`; a failure is logged and the
        turn goes on (the oldest turns are then cut instead)."""
        if not self.due():
            return
        try:
            await self.condense(dispatcher, stream, model, request_id)
        except (NothingToCondense, UpstreamError) as exc:
            log.warning("context_not_condensed", error=str(exc))

    async def on_request(
        self, dispatcher: Dispatcher, stream: EventStream, model: str, request_id: str | None
    ) -> None:
        """The user's ``condense``: :meth:`condense` now and write it; a
        refusal (``nothing_to_condense``, or the model call's error code)
        otherwise. Call it only while no turn runs."""
        try:
            await self.condense(dispatcher, stream, model, request_id)
        except NothingToCondense as exc:
            dispatcher.refuse("nothing_to_condense", str(exc))
        except UpstreamError as exc:
            dispatcher.refuse(exc.code, f"not condensed: {exc}", exc.retryable)
        else:
            await stream.flush()

    def _position(self, history: Sequence[ChatMessage], cut: int) -> int:
        """The history position of the view's message ``cut``: the summary
        replaces the messages before it (and an earlier summary with them)."""
        if self._summary is None:
            return cut
        through, position, _ = self._summary
        if through + cut < position:
            # Cutting before the last summary would send it again: the new one
            # stands for everything up to it.
            return position + 1
        return position + 1 + (cut - (position - through))

    def _find(self, history: Sequence[ChatMessage]) -> None:
        """Look for a newer summary in what was added since the last look."""
        if len(history) < self._searched:
            self._summary, self._searched = None, 0  # the history changed: look again
        for position in range(len(history) - 1, self._searched - 1, -1):
            message = history[position]
            if message.role == "system" and message.name.startswith(SUMMARY_NAME):
                with contextlib.suppress(ValueError):
                    through = int(message.name[len(SUMMARY_NAME) :])
                    self._summary = (min(through, position), position, message.content)
                    break
        self._searched = len(history)


def _cut(view: Sequence[ChatMessage]) -> int:
    """Where the newest turns kept verbatim begin: the first unit of those
    that fit 1/KEEP_FRACTION of the view (at least the newest unit). When
    condensing is due, the view fills most of the window."""
    found = units([(m.role, bool(m.tool_calls)) for m in view])
    if not found:
        return 0
    keep = _estimate(view) // KEEP_FRACTION
    kept, cut = 0, found[-1][0]
    for start, end in reversed(found[:-1]):
        kept += _estimate(view[start:end])
        if kept > keep:
            break
        cut = start
    # Whole turns: a question goes with its answer.
    starts = [start for start, _ in found if start >= cut and view[start].role == "user"]
    return starts[0] if starts else cut


async def _summarize(
    llm: ChatModel,
    model: str,
    earlier: str,
    messages: Sequence[ChatMessage],
    window: int,
    request_id: str | None,
) -> str:
    """The model's summary of ``messages`` after the ``earlier`` summary."""
    lines = []
    for message in messages:
        text = message.content
        for call in message.tool_calls:
            text += f" [called {call.name} {call.arguments_json}]"
        role = f"tool {message.name}" if message.role == "tool" else message.role
        lines.append(f"{role}: {' '.join(text.split())[:MAX_QUOTED_CHARS]}")
    transcript = "\n".join(lines)
    if window > 0:
        # The newest part, within half the window.
        transcript = transcript[-(window // 2) * CHARS_PER_TOKEN :]
    if earlier:
        transcript = f"summary: {earlier}\n{transcript}"
    prompt = [ChatMessage("system", INSTRUCTIONS), ChatMessage("user", transcript)]
    parts = []
    async with contextlib.aclosing(llm.stream_chat(model, prompt, request_id=request_id)) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, TextChunk):
                parts.append(chunk.text)
    summary = "".join(parts).strip()
    if not summary:
        raise UpstreamError("the model wrote an empty summary", code="llm_error", retryable=True)
    return summary


def _estimate(messages: Sequence[ChatMessage]) -> int:
    return sum(
        _estimate_text(m.content) + sum(_estimate_text(c.arguments_json) for c in m.tool_calls) + 4
        for m in messages
    )


def _estimate_text(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN
