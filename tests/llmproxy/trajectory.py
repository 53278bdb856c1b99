"""A scripted model for the OpenAI-compatible test server: a trajectory.

A :class:`Trajectory` is the list of assistant turns a model would take in
an agent loop, each text or tool calls (or both), answered one per chat
request in order. :meth:`tests.llmproxy.openai_server.OpenAIServer.script`
serves one under a model name, streamed as real OpenAI SSE chunks: text one
word per chunk, each tool call opened by a chunk carrying its id and name,
its arguments' JSON then split over several chunks, as OpenAI sends them.

Before answering a turn the trajectory checks the request: the previous
turn's tool calls must be the history's last assistant calls (by name and
position: an agent may rename calls, ours does), each with its ``tool``
message (by ``tool_call_id``),
and the turn's own expectations must hold (:attr:`Turn.tool_result_contains`,
:attr:`Turn.check`). A request that fails a check, or comes after the last
turn, is answered with an OpenAI-style 400 (not retried) and recorded in
:attr:`Trajectory.failures`; :meth:`Trajectory.assert_complete` raises with
them, so a test sees *why* the agent went wrong rather than a bare error.

Example::

    trajectory = server.script("coder-model", [
        Turn(calls=(Call("read_file", {"path": "calc.py"}),)),
        Turn(text="Done.", tool_result_contains="def add"),
    ])
    ...  # drive the agent
    trajectory.assert_complete()
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ARGUMENT_FRAGMENTS = 3
"""Chunks a tool call's arguments are split into (fewer for a short JSON)."""


@dataclass(frozen=True)
class Call:
    """One tool call of a scripted turn; ``id`` defaults to ``call_<turn>_<index>``."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Turn:
    """One assistant reply: ``text`` (streamed first), then ``calls``."""

    text: str = ""
    calls: tuple[Call, ...] = ()
    tool_result_contains: str | None = None
    """The request's last message must be a tool result holding this text."""
    check: Callable[[dict[str, Any]], object] | None = None
    """Called with the request's JSON body; an exception (an ``assert``) fails the turn."""


class ScriptFailure(Exception):
    """A request the trajectory did not expect; the message says why."""


@dataclass
class Trajectory:
    """The turns still to answer and what the server saw; thread-safe."""

    turns: Sequence[Turn]
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every chat request body this trajectory received, in order."""
    failures: list[str] = field(default_factory=list)
    answered: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return self.answered == len(self.turns)

    def assert_complete(self) -> None:
        """Raise AssertionError unless every turn was answered and no check failed."""
        assert not self.failures, "trajectory checks failed: " + "; ".join(self.failures)
        assert self.done, f"trajectory answered {self.answered} of {len(self.turns)} turns"

    def answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        """The next turn's deltas and finish reason, once ``body`` passed its checks.

        Raises :class:`ScriptFailure` (recorded in :attr:`failures`) for a
        request past the last turn or one that fails a check; the turn is
        then not consumed.
        """
        with self._lock:
            self.requests.append(body)
            number = self.answered + 1
            try:
                if self.done:
                    raise ScriptFailure(
                        f"turn {number}: none left, the script has {len(self.turns)} turns"
                    )
                turn = self.turns[self.answered]
                self._check(turn, body, number)
            except ScriptFailure as failure:
                self.failures.append(str(failure))
                raise
            self.answered += 1
        return turn_deltas(turn, number), "tool_calls" if turn.calls else "stop"

    def _check(self, turn: Turn, body: dict[str, Any], number: int) -> None:
        messages: list[dict[str, Any]] = body.get("messages") or []
        answered_ids = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
        if self.answered:
            # The agent may name the calls itself (our runtime does): the
            # previous turn's calls are the last assistant message's, by
            # position, and each needs its tool message.
            previous = self.turns[self.answered - 1]
            sent = next(
                (
                    m.get("tool_calls") or []
                    for m in reversed(messages)
                    if m.get("role") == "assistant"
                ),
                [],
            )
            names = [c.get("function", {}).get("name") for c in sent]
            if previous.calls and names != [call.name for call in previous.calls]:
                raise ScriptFailure(
                    f"turn {number}: the history's last assistant calls are {names}, not turn "
                    f"{self.answered}'s {[call.name for call in previous.calls]}"
                )
            for call, echoed in zip(previous.calls, sent, strict=False):
                if echoed.get("id") not in answered_ids:
                    raise ScriptFailure(
                        f"turn {number}: no tool result for {call.name} ({echoed.get('id')}) "
                        f"of turn {self.answered}"
                    )
        if turn.tool_result_contains is not None:
            last = messages[-1] if messages else {}
            content = _text(last.get("content"))
            if last.get("role") != "tool" or turn.tool_result_contains not in content:
                raise ScriptFailure(
                    f"turn {number}: the last message should be a tool result containing "
                    f"{turn.tool_result_contains!r}; it is {last.get('role')!r}: {content[:500]!r}"
                )
        if turn.check is not None:
            try:
                turn.check(body)
            except Exception as failed:  # an assert, or a KeyError in a careless check
                raise ScriptFailure(f"turn {number}: check failed: {failed!r}") from None


def call_id_of(call: Call, turn_number: int, index: int) -> str:
    return call.id or f"call_{turn_number}_{index}"


def turn_deltas(turn: Turn, number: int) -> list[dict[str, Any]]:
    """The OpenAI streaming deltas of a turn (without the role, added to the first)."""
    deltas: list[dict[str, Any]] = [{"content": word} for word in words(turn.text)]
    for index, call in enumerate(turn.calls):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id_of(call, number, index),
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        deltas.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            for fragment in _fragments(json.dumps(call.arguments), ARGUMENT_FRAGMENTS)
        )
    return deltas


def words(text: str) -> list[str]:
    """``text`` as streamed: one word per chunk, each but the last with its space."""
    if not text:
        return []
    parts = text.split(" ")
    return [part + " " for part in parts[:-1]] + [parts[-1]]


def _fragments(text: str, count: int) -> list[str]:
    size = max(1, -(-len(text) // count))
    return [text[start : start + size] for start in range(0, len(text), size)]


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
