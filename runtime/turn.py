"""The turn's core: its limits, and one model request turned into a reply.

Nothing here touches the database or gRPC. A model is anything that is a
:class:`~runtime.llm.ChatModel` (the LLM proxy's client, or a test's
scripted model); text is handed on through a callback as it streams, so
the caller decides where it goes (:meth:`runtime.stream.EventStream.text`).
:class:`~runtime.conversation.Conversation` drives turns with these: it
routes a new session's first request (:func:`runtime.routing.classify`),
asks for a reply, hands it to :class:`~runtime.dispatch.Dispatcher` (which
dispatches its tool calls and decides how the turn goes on) and writes each
step.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mesh.context import fit
from runtime.agents import Agent
from runtime.commands import STRICT, ClientOptions
from runtime.events import Usage
from runtime.llm import (
    ChatMessage,
    ChatModel,
    StreamEnd,
    TextChunk,
    ToolCallChunk,
    ToolCallRequest,
)
from runtime.tools import TOOLS

MAX_SWITCHES_PER_TURN = 3
"""Agent switches the model may make in one turn (more are refused to it)."""
MAX_MODEL_CALLS_PER_TURN = 25
"""Model calls in one turn; the turn fails with ``turn_limit`` after them."""
CHARS_PER_TOKEN_BOUND = 8
"""The runtime pre-cuts history to 8 characters per token of the window: more than any
tokenizer packs into the window, so the exact cut (with the model's tokenizer,
in the LLM proxy) decides; the pre-cut only keeps what is sent bounded."""


@dataclass(slots=True)
class Turn:
    """One turn's counters: what it has used of its limits, and its usage."""

    request_id: str | None = None
    started: float | None = None
    """``time.monotonic()`` when it began (None once it is counted as finished)."""
    switches: int = 0
    model_calls: int = 0
    auto_approvals: int = 0
    """Calls the user's approval rules let run unasked (:meth:`take_auto_approval`)."""
    ends_after_results: bool = False
    """A tool that ends the turn was called: it ends once the waiting calls are answered."""
    usage: Usage = field(default_factory=Usage)
    client: ClientOptions = STRICT
    """The client the turn runs for: the one that started it, then the one
    whose answer let it go on (its tools are what the model is offered)."""

    def take_model_call(self) -> bool:
        """Count one more model call; False (counting nothing) when the limit is reached."""
        if self.model_calls >= MAX_MODEL_CALLS_PER_TURN:
            return False
        self.model_calls += 1
        return True

    def take_switch(self) -> bool:
        """Count one more switch by the model; False when the limit is reached."""
        if self.switches >= MAX_SWITCHES_PER_TURN:
            return False
        self.switches += 1
        return True

    def take_auto_approval(self, limit: int) -> bool:
        """Count one more auto-approved call; False (counting nothing) at ``limit``."""
        if self.auto_approvals >= limit:
            return False
        self.auto_approvals += 1
        return True

    def add_usage(self, usage: Usage) -> None:
        self.usage = Usage(
            self.usage.prompt_tokens + usage.prompt_tokens,
            self.usage.completion_tokens + usage.completion_tokens,
        )


@dataclass(slots=True)
class ModelReply:
    """What one model call answered: its text, its complete tool calls, its usage."""

    text: str = ""
    calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class _CallDraft:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def prompt(agent: Agent, history: Sequence[ChatMessage], window: int) -> list[ChatMessage]:
    """The agent's system prompt and as much recent ``history`` as fits ``window``
    tokens (0: no limit), tool calls never split from their results."""
    return fit(
        [ChatMessage("system", agent.system_prompt), *history],
        window * CHARS_PER_TOKEN_BOUND,
        lambda run: sum(len(m.content) + len(m.tool_calls) * 64 for m in run),
        lambda m: (m.role, bool(m.tool_calls)),
    )


async def request_reply(
    chat: ChatModel,
    model: str,
    agent: Agent,
    history: Sequence[ChatMessage],
    *,
    on_text: Callable[[str], Awaitable[None]],
    request_id: str | None = None,
) -> ModelReply:
    """Ask ``model`` to continue ``history`` as ``agent``, with the agent's tools.

    Each non-empty text delta is passed to ``on_text`` as it arrives; tool
    calls are put together from their fragments and named by the runtime.
    Raises what ``chat`` raises (:class:`~runtime.errors.UpstreamError`).
    Safe to cancel: the model call is closed with it.
    """
    messages = prompt(agent, history, await chat.context_window(model))
    tools = [TOOLS[name].spec() for name in sorted(agent.tools)]
    reply = ModelReply()
    parts: list[str] = []
    drafts: dict[int, _CallDraft] = {}
    async with contextlib.aclosing(
        chat.stream_chat(model, messages, tools, request_id=request_id)
    ) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, TextChunk):
                if chunk.text:
                    parts.append(chunk.text)
                    await on_text(chunk.text)
            elif isinstance(chunk, ToolCallChunk):
                draft = drafts.setdefault(chunk.index, _CallDraft())
                draft.name = draft.name or chunk.name
                draft.arguments.append(chunk.arguments_fragment)
            elif isinstance(chunk, StreamEnd):
                reply.usage = chunk.usage
    reply.text = "".join(parts)
    for index in sorted(drafts):
        draft = drafts[index]
        # The runtime names every call itself: ids are then unique across
        # sessions and turns whatever the provider sends (some send none,
        # a deterministic model repeats them), and the IDE cannot guess them.
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        reply.calls.append(ToolCallRequest(call_id, draft.name, "".join(draft.arguments)))
    return reply
