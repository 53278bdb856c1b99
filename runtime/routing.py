"""Choosing the agent for a new request: the model classifies, keywords back it up.

:func:`parse_classification` and :func:`keyword_route` are pure;
:func:`classify` asks the model (a :class:`runtime.llm.ChatModel`) and
falls back to keywords when the answer is unusable or the call fails.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

import structlog

from runtime.agents import AGENTS, FALLBACK_AGENT, ROUTABLE
from runtime.errors import UpstreamError
from runtime.llm import ChatMessage, ChatModel, TextChunk

log = structlog.get_logger("runtime.routing")

ROUTING_PROMPT = (
    "You route requests to agents. Choose the one agent that should handle the "
    "user's request:\n"
    + "\n".join(f"- {name}: {AGENTS[name].description}" for name in ROUTABLE)
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


def parse_classification(text: str) -> Route | None:
    """The model's routing answer, or None if it is unusable."""
    match = _JSON_OBJECT.search(text)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("agent") not in ROUTABLE:
        return None
    try:
        confidence = min(1.0, max(0.0, float(data.get("confidence", 0.5))))
    except (TypeError, ValueError):
        confidence = 0.5
    rationale = str(data.get("rationale", ""))[:500] or "chosen by the model"
    return Route(str(data["agent"]), confidence, rationale, by_model=True)


def keyword_route(text: str) -> Route:
    """Route by keywords; ties go to the agent listed first in ROUTABLE."""
    lowered = text.lower()
    words = set(_WORD.findall(lowered))
    best, best_score = FALLBACK_AGENT, 0
    for name in ROUTABLE:
        score = sum(
            1
            for keyword in AGENTS[name].keywords
            # Single words match whole words; phrases and "?" match anywhere.
            if (keyword in words if keyword.isalpha() else keyword in lowered)
        )
        if score > best_score:
            best, best_score = name, score
    confidence = 0.3 if best_score == 0 else round(min(0.9, 0.4 + 0.1 * best_score), 2)
    return Route(best, confidence, f"keyword match ({best_score})", by_model=False)


async def classify(
    llm: ChatModel, model: str, request: str, *, request_id: str | None = None
) -> Route:
    """Ask ``model`` which agent fits ``request``; keywords if its answer is unusable.

    Never raises for a model failure (that is what the fallback is for);
    safe to cancel.
    """
    messages = [
        ChatMessage(role="system", content=ROUTING_PROMPT),
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
        return keyword_route(request)
    route = parse_classification("".join(parts))
    if route is None:
        log.info("routing_answer_unusable")
        return keyword_route(request)
    return route
