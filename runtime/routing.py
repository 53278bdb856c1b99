"""Choosing the agent for a new request: the model classifies, keywords back it up.

:func:`parse_classification` and :func:`keyword_route` are pure;
:func:`classify` asks the model (a :class:`runtime.llm.ChatModel`) and
falls back to keywords when the answer is unusable or the call fails. The
agents to choose from are a session's :class:`~runtime.agents.Roster`: the
built-ins, the operator's and the project's agents, each with its
description (for the model) and keywords (for the fallback).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

import structlog

from runtime.agents import BUILT_IN, FALLBACK_AGENT, Roster
from runtime.errors import UpstreamError
from runtime.llm import ChatMessage, ChatModel, TextChunk

log = structlog.get_logger("runtime.routing")


def routing_prompt(roster: Roster = BUILT_IN) -> str:
    """The system prompt of the routing call: the agents to choose from."""
    return (
        "You route requests to agents. Choose the one agent that should handle the "
        "user's request:\n"
        + "\n".join(f"- {name}: {roster[name].description}" for name in roster.routable)
        + '\nReply with one JSON object and nothing else: {"agent": "<name>", '
        '"confidence": <0..1>, "rationale": "<one short sentence>"}'
    )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True, slots=True)
class Route:
    agent: str
    confidence: float
    rationale: str
    by_model: bool


def parse_classification(text: str, roster: Roster = BUILT_IN) -> Route | None:
    """The model's routing answer, or None if it is unusable."""
    match = _JSON_OBJECT.search(text)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("agent") not in roster.routable:
        return None
    try:
        confidence = min(1.0, max(0.0, float(data.get("confidence", 0.5))))
    except (TypeError, ValueError):
        confidence = 0.5
    rationale = str(data.get("rationale", ""))[:500] or "chosen by the model"
    return Route(str(data["agent"]), confidence, rationale, by_model=True)


def keyword_route(text: str, roster: Roster = BUILT_IN) -> Route:
    """Route by keywords; ties go to the agent listed first in the roster."""
    lowered = text.lower()
    words = set(_WORD.findall(lowered))
    best, best_score = FALLBACK_AGENT, 0
    for name in roster.routable:
        score = sum(
            1
            for keyword in roster[name].keywords
            # Single words match whole words; phrases and "?" match anywhere.
            if (keyword.lower() in words if keyword.isalpha() else keyword.lower() in lowered)
        )
        if score > best_score:
            best, best_score = name, score
    confidence = 0.3 if best_score == 0 else round(min(0.9, 0.4 + 0.1 * best_score), 2)
    return Route(best, confidence, f"keyword match ({best_score})", by_model=False)


async def classify(
    llm: ChatModel,
    model: str,
    request: str,
    *,
    roster: Roster = BUILT_IN,
    request_id: str | None = None,
) -> Route:
    """Ask ``model`` which agent fits ``request``; keywords if its answer is unusable.

    Never raises for a model failure (that is what the fallback is for);
    safe to cancel.
    """
    messages = [
        ChatMessage(role="system", content=routing_prompt(roster)),
        ChatMessage(role="user", content=request),
    ]
    parts: list[str] = []
    try:
        async with contextlib.aclosing(
            llm.stream_chat(model, messages, request_id=request_id)
        ) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TextChunk):
                    parts.append(chunk.text)
    except UpstreamError as exc:
        log.warning("routing_model_failed", code=exc.code)
        return keyword_route(request, roster)
    route = parse_classification("".join(parts), roster)
    if route is None:
        log.info("routing_answer_unusable")
        return keyword_route(request, roster)
    return route
