"""The context budget: which model groups exist, and how much prompt each takes.

A chat request's messages are fitted to its group's context window (the
first deployment's, see :func:`llmproxy.router.context_window_of`) minus
the tokens kept for the answer: the oldest turns go first, and a tool call
never loses its result (:func:`mesh.context.fit`). Counting tokens costs a
tokenizer pass, so a prompt that fits by a byte count (an upper bound on its
tokens) is not counted at all.
"""

from __future__ import annotations

import json
from typing import Any

import litellm
import structlog
from litellm.router import Router

from llmproxy import errors
from llmproxy.router import context_window_of, knows_model
from mesh.context import fit

DEFAULT_OUTPUT_RESERVE = 4096
"""Tokens left for the answer when a request names no max_tokens."""

_MESSAGE_OVERHEAD_TOKENS = 8
"""More than any chat template adds per message (OpenAI's adds 3-4)."""

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

    def fitted(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``arguments`` (Router ``acompletion`` keywords) for a known model,
        with its ``messages`` fitted to the window; the same dict when they
        fit already. Raises as :meth:`require_model`.
        """
        model = arguments["model"]
        self.require_model(model)
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = context_window_of(self._router, model)
        budget, tokenizer = window
        if budget > 0:
            reserve = arguments.get("max_tokens") or min(DEFAULT_OUTPUT_RESERVE, budget // 4)
            messages = arguments["messages"]
            if token_bound(messages) <= budget - reserve:
                return arguments  # fits whatever the tokenizer: no need to count
            fitted = fit(
                messages,
                budget - reserve,
                lambda run: litellm.token_counter(model=tokenizer, messages=list(run)),
                lambda m: (m["role"], bool(m.get("tool_calls"))),
            )
            if len(fitted) < len(messages):
                log.info("context_trimmed", dropped=len(messages) - len(fitted), budget=budget)
                arguments = {**arguments, "messages": fitted}
        return arguments


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
