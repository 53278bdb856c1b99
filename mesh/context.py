"""Fitting a conversation into a model's context window.

The policy, shared by the runtime (a cheap pre-cut by characters, so what it
sends does not grow with the session) and the LLM proxy (the exact cut, with
the model's tokenizer):

- leading system messages always stay;
- the rest is split into units that must stay together: an assistant message
  that called tools plus the tool messages answering it; any other message
  alone. A tool call is never separated from its result;
- units are kept newest first while they fit the budget; older turns drop
  first; the newest unit is kept even if it alone is too large (the provider
  then answers "context too long", which may fall back to a larger model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

M = TypeVar("M")

DEFAULT_OUTPUT_RESERVE = 4096
"""Tokens of the window left for the answer when a request names no max_tokens."""


def output_reserve(window: int, max_tokens: int | None = None) -> int:
    """Tokens of a ``window`` kept for the answer: ``max_tokens`` when the
    request bounds it, else 4,096 or a quarter of the window if that is less.
    The runtime and the proxy fit a prompt to ``window`` minus this."""
    return max_tokens or min(DEFAULT_OUTPUT_RESERVE, window // 4)


def units(roles: Sequence[tuple[str, bool]]) -> list[tuple[int, int]]:
    """Split messages, given as (role, has_tool_calls), into [start, end) units.

    Leading system messages are not part of any unit.
    """
    start = 0
    while start < len(roles) and roles[start][0] == "system":
        start += 1
    found: list[tuple[int, int]] = []
    index = start
    while index < len(roles):
        end = index + 1
        if roles[index][0] == "assistant" and roles[index][1]:
            while end < len(roles) and roles[end][0] == "tool":
                end += 1
        found.append((index, end))
        index = end
    return found


def fit(
    messages: Sequence[M],
    budget: int,
    size: Callable[[Sequence[M]], int],
    shape: Callable[[M], tuple[str, bool]],
) -> list[M]:
    """The newest whole units of ``messages`` that fit ``budget`` (see module doc).

    ``size`` measures a run of messages (tokens or characters); ``shape``
    gives a message's role and whether it calls tools. A budget of 0 or less
    means no limit. Cost is proportional to what is kept, not to the history.
    """
    if budget <= 0:
        return list(messages)
    groups = units([shape(m) for m in messages])
    pinned_end = groups[0][0] if groups else len(messages)
    pinned = list(messages[:pinned_end])
    remaining = budget - size(pinned)
    kept_from = len(messages)
    for position, (start, end) in enumerate(reversed(groups)):
        cost = size(messages[start:end])
        if cost > remaining and position > 0:
            break
        remaining -= cost
        kept_from = start
    return pinned + list(messages[kept_from:])
