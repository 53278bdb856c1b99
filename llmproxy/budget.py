"""The context budget: which model groups exist, and how much prompt each takes.

A chat request's messages are fitted to its group's context window (the
first deployment's, see :func:`llmproxy.router.context_window_of`) minus
the tokens kept for the answer: the oldest turns go first, and a tool call
never loses its result (:func:`mesh.context.fit`).

Counting tokens costs a tokenizer pass, so the proxy counts as little as it
can. A caller that keeps each message's count (the runtime does,
:mod:`runtime.context`) declares them; only the messages it does not know
yet are counted, one by one, and their counts go back to it in the
stream's end (``token_counts``). Without declared counts, a prompt that
fits by a byte count (an upper bound on its tokens) is not counted at all,
and a larger one is counted whole. A system prompt, which every session
of an agent starts with, is counted once per process. Declared counts are
trusted (the caller is an internal service holding counts this proxy
made), and the window is never exceeded by what they add up to.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import litellm
import structlog
from litellm.router import Router
from litellm.utils import select_tokenizer

from llmproxy import errors
from llmproxy.router import context_window_of, knows_model
from mesh.context import fit, output_reserve

_MESSAGE_OVERHEAD_TOKENS = 8
"""More than any chat template adds per message (OpenAI's adds 3-4)."""
_REPLY_PRIMING_TOKENS = 3
"""What a chat template adds once, to start the answer."""
_SYSTEM_PROMPTS_KEPT = 32
"""System prompts whose counts are kept (see :func:`message_tokens`)."""

log = structlog.get_logger("llmproxy")


class ContextBudget:
    """The Router's model groups and their context windows (looked up once
    per group, then cached for the life of the process)."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._windows: dict[str, tuple[int, str]] = {}

    def require_model(self, model: str) -> None:
        """Raise unless ``model`` names a group the Router serves.

        Raises :class:`errors.InvalidRequest` for an empty name and
        :class:`errors.NotFound` (listing the configured groups) otherwise.
        """
        if not model:
            raise errors.InvalidRequest("model must be set")
        if not knows_model(self._router, model):
            names = ", ".join(self._router.get_model_names())
            raise errors.NotFound(f"model {model!r} is not configured (configured: {names})")

    def fitted(
        self, arguments: dict[str, Any], declared: Sequence[int] = ()
    ) -> tuple[dict[str, Any], list[int]]:
        """``arguments`` (Router ``acompletion`` keywords) for a known model,
        with its ``messages`` fitted to the window (the same dict when they
        fit already), and the counts of the messages ``declared`` gave 0.

        ``declared`` has one count per message (0: unknown) or is empty (no
        counts: see the module doc). Raises as :meth:`require_model`, and
        :class:`errors.InvalidRequest` when ``declared`` does not match the
        messages.
        """
        model = arguments["model"]
        self.require_model(model)
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = context_window_of(self._router, model)
        budget, tokenizer = window
        messages = arguments["messages"]
        if declared and len(declared) != len(messages):
            raise errors.InvalidRequest(
                f"token_counts has {len(declared)} entries for {len(messages)} messages"
            )
        counted: list[int] = []
        sizes: list[int] = []
        if declared:
            sizes = list(declared)
            for index, count in enumerate(declared):
                if count == 0:
                    sizes[index] = message_tokens(tokenizer, messages[index])
                    counted.append(sizes[index])
        if budget <= 0:
            return arguments, counted
        limit = budget - output_reserve(budget, arguments.get("max_tokens"))
        if declared:
            if sum(sizes) + _REPLY_PRIMING_TOKENS <= limit:
                return arguments, counted
            kept = fit(
                range(len(messages)),
                limit - _REPLY_PRIMING_TOKENS,
                lambda run: sum(sizes[i] for i in run),
                lambda i: (messages[i]["role"], bool(messages[i].get("tool_calls"))),
            )
            fitted = [messages[i] for i in kept]
        elif token_bound(messages) <= limit:
            return arguments, counted  # fits whatever the tokenizer: no need to count
        else:
            fitted = fit(
                messages,
                limit,
                lambda run: litellm.token_counter(model=tokenizer, messages=list(run)),
                lambda m: (m["role"], bool(m.get("tool_calls"))),
            )
        if len(fitted) < len(messages):
            log.info("context_trimmed", dropped=len(messages) - len(fitted), budget=budget)
            arguments = {**arguments, "messages": fitted}
        return arguments, counted


def message_tokens(tokenizer: str, message: dict[str, Any]) -> int:
    """The tokens ``message`` adds to a prompt, with ``tokenizer`` (a model
    name for LiteLLM's tokenizer choice): its texts' tokens plus a template's
    per-message overhead; never less than LiteLLM's ``token_counter`` counts
    for it alone, less the reply priming it adds once per prompt."""
    parts = [message.get("content") or "", message.get("name") or ""]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts += [call.get("id") or "", function.get("name") or "", function.get("arguments") or ""]
    text = " ".join(part if isinstance(part, str) else json.dumps(part) for part in parts)
    if message.get("role") == "system":
        return _system_tokens(tokenizer, text)
    return _text_tokens(tokenizer, text)


def _text_tokens(tokenizer: str, text: str) -> int:
    encoded = litellm.encode(model=tokenizer, text=text, custom_tokenizer=_tokenizer_of(tokenizer))
    return len(encoded) + _MESSAGE_OVERHEAD_TOKENS


_system_tokens = functools.lru_cache(maxsize=_SYSTEM_PROMPTS_KEPT)(_text_tokens)
"""A system prompt's count, kept: every session of an agent starts with the
same one (kilobytes, about half a millisecond to encode), uncounted on the
session's first call."""


@functools.lru_cache(maxsize=64)
def _tokenizer_of(tokenizer: str) -> dict[str, Any]:
    # LiteLLM's choice for a model name, made once: choosing costs about as
    # much as encoding a short message, and a call encodes one or two.
    return dict(select_tokenizer(model=tokenizer))


def token_bound(messages: list[dict[str, Any]]) -> int:
    """An upper bound on the tokens of ``messages`` that costs no tokenizing.

    A byte-level BPE token covers at least one UTF-8 byte, so a text has at
    most as many tokens as bytes; role, names, tool call ids and arguments
    are counted as text too, and every message adds a template's overhead.
    """
    total = 3
    for message in messages:
        total += _MESSAGE_OVERHEAD_TOKENS
        for value in message.values():
            if isinstance(value, str):
                total += len(value.encode())
            elif value is not None:
                total += len(json.dumps(value).encode())
    return total
